/**
 * The rest of what matrix-js-sdk's startClient() touches: push rules, account data, presence,
 * TURN, end-to-end key endpoints and pushers. Account data and presence are real and persisted;
 * the others answer minimal valid documents because this server does no push or E2EE.
 */
import { z } from 'zod';

import { fail } from '../../lib/errors.js';
import type { Router } from '../../lib/http.js';
import {
  anyObject,
  body,
  CS,
  eventTypeSchema,
  optionalBody,
  pathParams,
  queryParams,
  requireSelf,
  roomIdSchema,
  type Services,
  userIdSchema,
} from './common.js';

/** An empty but valid push ruleset: clients render notifications from their own defaults. */
const PUSH_RULES = {
  global: { override: [], content: [], room: [], sender: [], underride: [] },
};

const presenceState = z.enum(['online', 'offline', 'unavailable']);

export function registerClientMiscRoutes(router: Router, s: Services): void {
  const { auth, store } = s;

  router.add('GET', `${CS}/pushrules/`, (ctx) => {
    auth.requester(ctx);
    return { body: PUSH_RULES };
  });
  router.add('GET', `${CS}/pushrules/global/`, (ctx) => {
    auth.requester(ctx);
    return { body: PUSH_RULES.global };
  });
  router.add('GET', `${CS}/pushers`, (ctx) => {
    auth.requester(ctx);
    return { body: { pushers: [] } };
  });
  router.add('GET', `${CS}/voip/turnServer`, (ctx) => {
    auth.requester(ctx);
    return { body: {} };
  });

  const writeAccountData = (userId: string, roomId: string, type: string, content: Record<string, unknown>) => {
    const text = JSON.stringify(content);
    if (Buffer.byteLength(text) > 65_536) throw fail.tooLarge('Account data is too large');
    store.upsertAccountData(userId, roomId, type, text, s.notifier.next());
    s.notifier.notify();
  };
  const readAccountData = (userId: string, roomId: string, type: string) => {
    const text = store.getAccountData(userId, roomId, type);
    if (text === undefined) throw fail.notFound('Account data not found');
    return { body: JSON.parse(text) as unknown };
  };
  const globalParams = z.object({ userId: userIdSchema, type: eventTypeSchema });
  const roomParams = globalParams.extend({ roomId: roomIdSchema });
  router.add('GET', `${CS}/user/:userId/account_data/:type`, (ctx) => {
    const r = auth.requester(ctx);
    const p = pathParams(ctx, globalParams);
    requireSelf(p.userId, r.userId);
    return readAccountData(r.userId, '', p.type);
  });
  router.add('PUT', `${CS}/user/:userId/account_data/:type`, async (ctx) => {
    const r = auth.requester(ctx);
    const p = pathParams(ctx, globalParams);
    requireSelf(p.userId, r.userId);
    writeAccountData(r.userId, '', p.type, await body(ctx, anyObject));
    return { body: {} };
  });
  router.add('GET', `${CS}/user/:userId/rooms/:roomId/account_data/:type`, (ctx) => {
    const r = auth.requester(ctx);
    const p = pathParams(ctx, roomParams);
    requireSelf(p.userId, r.userId);
    return readAccountData(r.userId, p.roomId, p.type);
  });
  router.add('PUT', `${CS}/user/:userId/rooms/:roomId/account_data/:type`, async (ctx) => {
    const r = auth.requester(ctx);
    const p = pathParams(ctx, roomParams);
    requireSelf(p.userId, r.userId);
    const content = await body(ctx, anyObject);
    if (!s.rooms.roomExists(p.roomId)) throw fail.notFound('Unknown room');
    writeAccountData(r.userId, p.roomId, p.type, content);
    return { body: {} };
  });

  router.add('GET', `${CS}/presence/:userId/status`, (ctx) => {
    auth.requester(ctx);
    const { userId } = pathParams(ctx, z.object({ userId: userIdSchema }));
    if (!store.getUser(userId)) throw fail.notFound('Unknown user');
    const p = store.getPresence(userId);
    return {
      body: {
        presence: p?.presence ?? 'offline',
        ...(p?.status_msg ? { status_msg: p.status_msg } : {}),
        ...(p ? { last_active_ago: Math.max(0, s.clock.now() - p.updated_ts) } : {}),
      },
    };
  });
  router.add('PUT', `${CS}/presence/:userId/status`, async (ctx) => {
    const r = auth.requester(ctx);
    const { userId } = pathParams(ctx, z.object({ userId: userIdSchema }));
    requireSelf(userId, r.userId);
    const req = await body(ctx, z.object({ presence: presenceState, status_msg: z.string().max(1024).optional() }));
    store.upsertPresence(r.userId, req.presence, req.status_msg ?? null, s.clock.now());
    return { body: {} };
  });

  // End-to-end encryption is out of scope; these answers keep clients' crypto setup quiet.
  router.add('POST', `${CS}/keys/upload`, async (ctx) => {
    auth.requester(ctx);
    await optionalBody(ctx, anyObject);
    return { body: { one_time_key_counts: { signed_curve25519: 0 } } };
  });
  router.add('POST', `${CS}/keys/query`, async (ctx) => {
    auth.requester(ctx);
    const req = await body(ctx, z.object({ device_keys: z.record(z.string(), z.array(z.string())) }));
    return {
      body: {
        device_keys: Object.fromEntries(Object.keys(req.device_keys).map((u) => [u, {}])),
        failures: {},
        master_keys: {},
        self_signing_keys: {},
        user_signing_keys: {},
      },
    };
  });
  router.add('GET', `${CS}/keys/changes`, (ctx) => {
    auth.requester(ctx);
    queryParams(ctx, z.object({ from: z.string().max(255), to: z.string().max(255) }));
    return { body: { changed: [], left: [] } };
  });
}
