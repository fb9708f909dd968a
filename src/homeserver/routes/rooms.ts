/**
 * Room endpoints: createRoom, membership, sending (with MSC4140 `?org.matrix.msc4140.delay=`
 * scheduling handed to the delayed-events module), state, single events, members and /messages.
 */
import { z } from 'zod';

import { fail } from '../../lib/errors.js';
import type { RequestContext, Router } from '../../lib/http.js';
import type { Requester } from '../contracts.js';
import { STICKY, stickyDurationFor, toClientEvent } from '../events.js';
import type { Remember } from '../txns.js';
import {
  anyObject,
  body,
  CS,
  CS_ROOMS,
  eventTypeSchema,
  intString,
  optionalBody,
  pathParams,
  queryParams,
  roomIdSchema,
  type Services,
  stickyQuery,
  streamToken,
  tokenOfPosition,
  userIdSchema,
} from './common.js';

/** The unstable MSC4140 scheduling parameter on /send and /state. */
export const DELAY_PARAM = 'org.matrix.msc4140.delay';

const stateContent = z.record(z.string(), z.unknown());

const createRoomBody = z.object({
  visibility: z.enum(['public', 'private']).optional(),
  room_alias_name: z.string().max(255).optional(),
  name: z.string().max(255).optional(),
  topic: z.string().max(4096).optional(),
  invite: z.array(userIdSchema).max(100).optional(),
  invite_3pid: z.array(z.unknown()).max(0, 'third-party invites are not supported').optional(),
  room_version: z.string().min(1).max(32).optional(),
  creation_content: stateContent.optional(),
  initial_state: z
    .array(z.object({ type: eventTypeSchema, state_key: z.string().max(255).default(''), content: stateContent }))
    .max(100)
    .optional(),
  preset: z.enum(['private_chat', 'public_chat', 'trusted_private_chat']).optional(),
  is_direct: z.boolean().optional(),
  power_level_content_override: stateContent.optional(),
});

const roomParam = z.object({ roomId: roomIdSchema });
const reasonBody = z.object({ reason: z.string().max(1024).optional() });
const targetBody = z.object({ user_id: userIdSchema, reason: z.string().max(1024).optional() });

/** `?org.matrix.msc4140.delay=` (a non-negative integer, 0 accepted like Synapse) and the sticky duration. */
const sendQuery = stickyQuery.extend({ [DELAY_PARAM]: intString(Number.MAX_SAFE_INTEGER).optional() });

const messagesQuery = z.object({
  from: streamToken.optional(),
  to: streamToken.optional(),
  dir: z.enum(['b', 'f']).default('b'),
  limit: intString(1_000_000).optional(),
  filter: z.string().max(8192).optional(),
});

export function registerRoomRoutes(router: Router, s: Services): void {
  const { rooms, store, auth } = s;

  router.add('POST', `${CS}/createRoom`, async (ctx) => {
    const r = auth.requester(ctx);
    const req = await body(ctx, createRoomBody);
    const roomId = rooms.createRoom(r.userId, {
      preset: req.preset,
      visibility: req.visibility,
      name: req.name,
      topic: req.topic,
      invite: req.invite,
      roomVersion: req.room_version,
      creationContent: req.creation_content,
      initialState: req.initial_state,
      powerLevelOverride: req.power_level_content_override,
      isDirect: req.is_direct,
    });
    return { body: { room_id: roomId } };
  });

  const join = async (ctx: RequestContext, roomIdOrAlias: string) => {
    const r = auth.requester(ctx);
    await optionalBody(ctx, anyObject);
    if (roomIdOrAlias.startsWith('#')) throw fail.notFound('Room alias not found');
    const { roomId } = parseWith404(roomIdOrAlias);
    rooms.setOwnMembership(roomId, r.userId, 'join');
    return { body: { room_id: roomId } };
  };
  router.add('POST', `${CS}/join/:roomIdOrAlias`, (ctx) => join(ctx, ctx.params.roomIdOrAlias!));
  router.add('POST', `${CS_ROOMS}/join`, (ctx) => join(ctx, ctx.params.roomId!));

  router.add('POST', `${CS_ROOMS}/leave`, async (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    const req = await optionalBody(ctx, reasonBody);
    rooms.setOwnMembership(roomId, r.userId, 'leave', req.reason);
    return { body: {} };
  });
  router.add('POST', `${CS_ROOMS}/forget`, async (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    await optionalBody(ctx, anyObject);
    const membership = rooms.membership(roomId, r.userId);
    if (membership === 'join' || membership === 'invite') throw fail.badJson('You must leave the room first');
    if (membership !== undefined) store.forgetRoom(r.userId, roomId);
    return { body: {} };
  });
  for (const [action, membership] of [
    ['invite', 'invite'],
    ['kick', 'leave'],
    ['ban', 'ban'],
    ['unban', 'leave'],
  ] as const) {
    router.add('POST', `${CS_ROOMS}/${action}`, async (ctx) => {
      const r = auth.requester(ctx);
      const { roomId } = pathParams(ctx, roomParam);
      const req = await body(ctx, targetBody);
      if (action === 'unban' && rooms.membership(roomId, req.user_id) !== 'ban') {
        throw fail.forbidden('The user is not banned');
      }
      rooms.setMembershipOf(roomId, r.userId, req.user_id, membership, req.reason);
      return { body: {} };
    });
  }

  /**
   * Shared by /send and /state: immediate send, or MSC4140 scheduling when `delay` is given; either
   * may be an MSC4354 sticky event.
   */
  const sendOrSchedule = async (
    ctx: RequestContext,
    requester: Requester,
    target: { roomId: string; type: string; stateKey?: string },
    remember?: Remember,
  ): Promise<Record<string, unknown>> => {
    const query = queryParams(ctx, sendQuery);
    const delayMs = query[DELAY_PARAM];
    const stickyDurationMs = stickyDurationFor(target.type, query[STICKY.param]);
    const sticky = stickyDurationMs !== undefined ? { stickyDurationMs } : {};
    const content = await body(ctx, stateContent);
    if (delayMs !== undefined) {
      const { delayId } = await s.delayed.schedule({
        requester,
        ...target,
        content,
        delayMs,
        ...sticky,
        form: 'query',
        ...(remember ? { inCommit: (id: string) => remember({ delay_id: id }) } : {}),
      });
      return { delay_id: delayId };
    }
    const { eventId } = rooms.sendEvent({ ...target, sender: requester.userId, content, ...sticky }, (id) =>
      remember?.({ event_id: id }),
    );
    return { event_id: eventId };
  };

  const sendHandler = async (ctx: RequestContext) => {
    const requester = auth.requester(ctx);
    const { roomId, type, txnId } = pathParams(
      ctx,
      z.object({ roomId: roomIdSchema, type: eventTypeSchema, txnId: z.string().max(255).optional() }),
    );
    const target = { roomId, type };
    if (txnId === undefined) return { body: await sendOrSchedule(ctx, requester, target) };
    // Looked up before the body is read: a repeat may come without one (MSC4140 clients do that).
    const response = await s.txns.once(s.txns.key(requester, ctx.path), (remember) =>
      sendOrSchedule(ctx, requester, target, remember),
    );
    return { body: response };
  };
  router.add('PUT', `${CS_ROOMS}/send/:type/:txnId`, sendHandler);
  router.add('POST', `${CS_ROOMS}/send/:type`, sendHandler);

  const stateParams = z.object({ roomId: roomIdSchema, type: eventTypeSchema, stateKey: z.string().max(255) });
  router.add('PUT', `${CS_ROOMS}/state/:type/:stateKey?`, async (ctx) => {
    const requester = auth.requester(ctx);
    const { roomId, type, stateKey } = pathParams(ctx, stateParams);
    return { body: await sendOrSchedule(ctx, requester, { roomId, type, stateKey }) };
  });
  router.add('GET', `${CS_ROOMS}/state/:type/:stateKey?`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId, type, stateKey } = pathParams(ctx, stateParams);
    const { format } = queryParams(ctx, z.object({ format: z.enum(['content', 'event']).default('content') }));
    const upTo = rooms.readableUpTo(roomId, r.userId);
    const row =
      upTo === undefined ? rooms.stateEvent(roomId, type, stateKey) : store.stateEventAt(roomId, type, stateKey, upTo);
    if (!row) throw fail.notFound('Event not found');
    const ev = toClientEvent(row, r.userId, s.clock.now());
    return { body: format === 'event' ? ev : ev.content };
  });
  /** The room's state (of one type, if given) as the user may see it: current while joined, else as of the leave. */
  const readableState = (roomId: string, userId: string, type?: string) => {
    const upTo = rooms.readableUpTo(roomId, userId);
    if (upTo === undefined) return type === undefined ? store.roomState(roomId) : store.roomStateOfType(roomId, type);
    const rows = store.stateBetween(roomId, 0, upTo);
    return type === undefined ? rows : rows.filter((row) => row.type === type);
  };
  router.add('GET', `${CS_ROOMS}/state`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    const now = s.clock.now();
    return { body: readableState(roomId, r.userId).map((row) => toClientEvent(row, r.userId, now)) };
  });
  router.add('GET', `${CS_ROOMS}/event/:eventId`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId, eventId } = pathParams(ctx, z.object({ roomId: roomIdSchema, eventId: z.string().max(255) }));
    const upTo = rooms.readableUpTo(roomId, r.userId);
    const row = store.getEvent(eventId);
    // Like Synapse, an event the user may not see is as unknown as one that does not exist.
    if (!row || row.room_id !== roomId || (upTo !== undefined && row.stream > upTo)) {
      throw fail.notFound('Event not found');
    }
    return { body: toClientEvent(row, r.userId, s.clock.now()) };
  });
  router.add('GET', `${CS_ROOMS}/members`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    const q = queryParams(
      ctx,
      z.object({
        membership: z.enum(['join', 'invite', 'leave', 'ban', 'knock']).optional(),
        not_membership: z.enum(['join', 'invite', 'leave', 'ban', 'knock']).optional(),
        at: z.string().max(255).optional(),
      }),
    );
    const now = s.clock.now();
    const chunk = readableState(roomId, r.userId, 'm.room.member')
      .filter((row) => {
        const m = (JSON.parse(row.content) as { membership?: string }).membership;
        const wanted = q.membership === undefined || m === q.membership;
        return wanted && (q.not_membership === undefined || m !== q.not_membership);
      })
      .map((row) => toClientEvent(row, r.userId, now));
    return { body: { chunk } };
  });
  router.add('GET', `${CS_ROOMS}/joined_members`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    rooms.requireJoined(roomId, r.userId);
    const joined: Record<string, unknown> = {};
    for (const row of store.roomStateOfType(roomId, 'm.room.member')) {
      const c = JSON.parse(row.content) as { membership?: string; displayname?: string; avatar_url?: string };
      if (c.membership === 'join') joined[row.state_key!] = { display_name: c.displayname, avatar_url: c.avatar_url };
    }
    return { body: { joined } };
  });

  router.add('GET', `${CS_ROOMS}/messages`, (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    const q = queryParams(ctx, messagesQuery);
    // A departed user's history ends with their leave, whichever way they page.
    const newest = rooms.readableUpTo(roomId, r.userId) ?? s.notifier.current;
    const limit = Math.min(Math.max(q.limit ?? 10, 1), 1000);
    const now = s.clock.now();
    let rows;
    let start: number;
    if (q.dir === 'b') {
      start = Math.min(q.from ?? newest, newest);
      rows = store.eventsBackward(roomId, start, q.to ?? 0, limit + 1);
    } else {
      start = q.from ?? 0;
      rows = store.eventsForward(roomId, start, Math.min(q.to ?? newest, newest), limit + 1);
    }
    const more = rows.length > limit;
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    const end = last === undefined ? undefined : q.dir === 'b' ? last.stream - 1 : last.stream;
    return {
      body: {
        start: tokenOfPosition(start),
        ...(more && end !== undefined ? { end: tokenOfPosition(end) } : {}),
        chunk: page.map((row) => toClientEvent(row, r.userId, now)),
        state: [],
      },
    };
  });

  router.add('GET', `${CS}/joined_rooms`, (ctx) => {
    const r = auth.requester(ctx);
    const joined = store
      .membershipsOfUser(r.userId)
      .filter((m) => m.membership === 'join')
      .map((m) => m.room_id);
    return { body: { joined_rooms: joined } };
  });

  // Read markers, receipts and typing are accepted and validated; this server does not relay them.
  router.add('POST', `${CS_ROOMS}/read_markers`, async (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(ctx, roomParam);
    await body(ctx, anyObject);
    rooms.requireJoined(roomId, r.userId);
    return { body: {} };
  });
  router.add('POST', `${CS_ROOMS}/receipt/:receiptType/:eventId`, async (ctx) => {
    const r = auth.requester(ctx);
    const { roomId } = pathParams(
      ctx,
      z.object({
        roomId: roomIdSchema,
        receiptType: z.enum(['m.read', 'm.read.private', 'm.fully_read']),
        eventId: z.string().max(255),
      }),
    );
    await optionalBody(ctx, anyObject);
    rooms.requireJoined(roomId, r.userId);
    return { body: {} };
  });
  router.add('PUT', `${CS_ROOMS}/typing/:userId`, async (ctx) => {
    const r = auth.requester(ctx);
    const { roomId, userId } = pathParams(ctx, z.object({ roomId: roomIdSchema, userId: userIdSchema }));
    await body(ctx, z.object({ typing: z.boolean(), timeout: z.number().int().min(0).optional() }));
    if (userId !== r.userId) throw fail.forbidden('You can only set your own typing state');
    rooms.requireJoined(roomId, r.userId);
    return { body: {} };
  });
}

/** A join target that is not a room id is simply not a room here. */
function parseWith404(value: string): { roomId: string } {
  const parsed = roomIdSchema.safeParse(value);
  if (!parsed.success) throw fail.notFound('No known room');
  return { roomId: parsed.data };
}
