/**
 * Rooms: creation, the event authorisation rules (membership and power levels) and persistence.
 * This is the core's implementation of the `RoomEngine` seam; every event, whoever sends it,
 * passes through `sendEvent` (or, for the events that found a room, `createRoom`).
 */
import type { Logger } from 'pino';

import { fail, type MatrixError } from '../lib/errors.js';
import { atomically, transaction } from '../lib/sqlite.js';
import type { Clock } from '../lib/timer-heap.js';
import type { EventToSend, RoomEngine } from './contracts.js';
import { checkTypeAndKey, serialiseContent, stickyExpiresAt } from './events.js';
import { newEventId, newRoomId, parseUserId } from './ids.js';
import type { StreamNotifier } from './notifier.js';
import {
  checkPowerLevelsChange,
  defaultPowerLevels,
  effectiveLevels,
  type PowerLevels,
  requiredLevel,
  userLevel,
} from './power-levels.js';
import type { CoreStore, EventRow } from './store.js';

export const SUPPORTED_ROOM_VERSIONS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11'];
export const DEFAULT_ROOM_VERSION = '10';

const MEMBERSHIPS = new Set(['join', 'invite', 'leave', 'ban', 'knock']);
/** Expired rows are ignored by every read; deleting them is only housekeeping. */
const STICKY_PRUNE_EVERY_MS = 60_000;

type StateListener = (ev: { roomId: string; type: string; stateKey: string; sender: string }) => void;

export interface CreateRoomOptions {
  preset?: 'private_chat' | 'public_chat' | 'trusted_private_chat' | undefined;
  visibility?: 'public' | 'private' | undefined;
  name?: string | undefined;
  topic?: string | undefined;
  invite?: string[] | undefined;
  roomVersion?: string | undefined;
  creationContent?: Record<string, unknown> | undefined;
  initialState?: Array<{ type: string; state_key: string; content: Record<string, unknown> }> | undefined;
  powerLevelOverride?: Record<string, unknown> | undefined;
  isDirect?: boolean | undefined;
}

export class Rooms implements RoomEngine {
  private readonly stateListeners: StateListener[] = [];
  /**
   * Effective power levels per room: parsing and validating them again for every event was a
   * large share of a send. Dropped when a power_levels (or create) event is stored, and wholly
   * when a write fails, since a rolled-back change may have been read inside its transaction.
   */
  private readonly levelsCache = new Map<string, PowerLevels>();
  /** When `recordSticky` next deletes expired sticky rows. */
  private nextStickyPrune = 0;

  constructor(
    private readonly store: CoreStore,
    private readonly notifier: StreamNotifier,
    private readonly clock: Clock,
    private readonly serverName: string,
    private readonly log: Logger,
  ) {}

  roomExists(roomId: string): boolean {
    return this.store.roomExists(roomId);
  }

  onStateEvent(listener: StateListener): void {
    this.stateListeners.push(listener);
  }

  sendEvent(ev: EventToSend, inTransaction?: (eventId: string) => void): { eventId: string } {
    checkTypeAndKey(ev.type, ev.stateKey);
    const content = serialiseContent(ev.content);
    // Inside `batch` this is a savepoint, and /sync is woken by the batch once it has committed.
    const nested = this.store.db.isTransaction;
    const eventId = this.rollingBack(() =>
      atomically(this.store.db, () => {
        this.authorise(ev);
        const id = this.persist(ev, content);
        inTransaction?.(id);
        return id;
      }),
    );
    if (!nested) this.notifier.notify();
    return { eventId };
  }

  batch<T>(fn: () => T): T {
    const result = this.rollingBack(() => transaction(this.store.db, fn));
    this.notifier.notify();
    return result;
  }

  /** Creates a room with the preset's state, initial state and invites, all in one commit. */
  createRoom(creator: string, opts: CreateRoomOptions): string {
    const version = opts.roomVersion ?? DEFAULT_ROOM_VERSION;
    if (!SUPPORTED_ROOM_VERSIONS.includes(version)) {
      // The registry has no M_UNSUPPORTED_ROOM_VERSION; a 400 still tells the client it was refused.
      throw fail.badJson(`Unsupported room version ${version}`);
    }
    const invites = opts.invite ?? [];
    for (const user of invites) {
      if (!parseUserId(user)) throw fail.invalidParam('invite entries must be user ids');
    }
    for (const s of opts.initialState ?? []) {
      if (s.type === 'm.room.create' || s.type === 'm.room.member') {
        throw fail.badJson(`initial_state may not contain ${s.type}`);
      }
    }
    const preset = opts.preset ?? (opts.visibility === 'public' ? 'public_chat' : 'private_chat');
    const roomId = newRoomId(this.serverName);
    const plContent = { ...defaultPowerLevels(creator), ...opts.powerLevelOverride };
    if (preset === 'trusted_private_chat') {
      const users = { ...(plContent.users as Record<string, number>) };
      for (const user of invites) users[user] = 100;
      plContent.users = users;
    }
    const joinRule = preset === 'public_chat' ? 'public' : 'invite';
    const events: Array<Omit<EventToSend, 'roomId' | 'sender'>> = [
      { type: 'm.room.create', stateKey: '', content: { ...opts.creationContent, creator, room_version: version } },
      { type: 'm.room.member', stateKey: creator, content: { membership: 'join', ...this.profileOf(creator) } },
      { type: 'm.room.power_levels', stateKey: '', content: plContent },
      { type: 'm.room.join_rules', stateKey: '', content: { join_rule: joinRule } },
      { type: 'm.room.history_visibility', stateKey: '', content: { history_visibility: 'shared' } },
      {
        type: 'm.room.guest_access',
        stateKey: '',
        content: { guest_access: preset === 'public_chat' ? 'forbidden' : 'can_join' },
      },
      ...(opts.initialState ?? []).map((s) => ({ type: s.type, stateKey: s.state_key, content: s.content })),
      ...(opts.name !== undefined ? [{ type: 'm.room.name', stateKey: '', content: { name: opts.name } }] : []),
      ...(opts.topic !== undefined ? [{ type: 'm.room.topic', stateKey: '', content: { topic: opts.topic } }] : []),
    ];
    const serialised = events.map((e) => {
      checkTypeAndKey(e.type, e.stateKey);
      return { ev: { ...e, roomId, sender: creator }, text: serialiseContent(e.content) };
    });
    this.rollingBack(() => transaction(this.store.db, () => {
      this.store.insertRoom(roomId, creator, version, this.clock.now());
      for (const { ev, text } of serialised) {
        // The founding events are the creator's by definition; power levels are validated only.
        if (ev.type === 'm.room.power_levels') {
          checkPowerLevelsChange(effectiveLevels(undefined, creator), ev.content, creator, Infinity);
        }
        this.persist(ev, text);
      }
      for (const target of invites) {
        const ev: EventToSend = {
          roomId,
          sender: creator,
          type: 'm.room.member',
          stateKey: target,
          content: { membership: 'invite', ...(opts.isDirect ? { is_direct: true } : {}) },
        };
        this.authorise(ev);
        this.persist(ev, serialiseContent(ev.content));
      }
    }));
    this.notifier.notify();
    this.log.debug({ room_version: version, preset }, 'room created');
    return roomId;
  }

  /** Sets the user's own membership (join/leave), with their profile on joins. */
  setOwnMembership(roomId: string, userId: string, membership: 'join' | 'leave', reason?: string): string {
    if (!this.store.roomExists(roomId)) throw fail.notFound('Unknown room');
    const content: Record<string, unknown> = { membership, ...(membership === 'join' ? this.profileOf(userId) : {}) };
    if (reason !== undefined) content.reason = reason;
    return this.sendEvent({ roomId, sender: userId, type: 'm.room.member', stateKey: userId, content }).eventId;
  }

  /** Membership of another user: invite, kick (leave) or ban. */
  setMembershipOf(
    roomId: string,
    sender: string,
    target: string,
    membership: 'invite' | 'leave' | 'ban',
    reason?: string,
  ): string {
    if (!this.store.roomExists(roomId)) throw fail.notFound('Unknown room');
    const content: Record<string, unknown> = { membership };
    if (reason !== undefined) content.reason = reason;
    return this.sendEvent({ roomId, sender, type: 'm.room.member', stateKey: target, content }).eventId;
  }

  membership(roomId: string, userId: string): string | undefined {
    return this.store.membershipOf(roomId, userId);
  }

  /** Acting in a room needs current membership; an unknown room and a foreign room look alike. */
  requireJoined(roomId: string, userId: string): void {
    if (this.store.membershipOf(roomId, userId) !== 'join') throw notJoined();
  }

  /**
   * How far the user may read the room (Synapse's rule for departed users): everything while
   * joined (undefined), up to and including their leave event once they left or were kicked and
   * have not forgotten the room. Banned users, forgotten rooms and strangers get 403.
   */
  readableUpTo(roomId: string, userId: string): number | undefined {
    const own = this.store.membershipRowOf(roomId, userId);
    if (own?.membership === 'join') return undefined;
    if (own?.membership === 'leave' && !this.store.isForgotten(userId, roomId)) return own.stream;
    throw notJoined();
  }

  stateEvent(roomId: string, type: string, stateKey: string): EventRow | undefined {
    return this.store.stateEvent(roomId, type, stateKey);
  }

  /** The levels in force (shared and cached: callers must not modify them). */
  powerLevels(roomId: string): Readonly<PowerLevels> {
    const cached = this.levelsCache.get(roomId);
    if (cached) return cached;
    const pl = this.store.stateEvent(roomId, 'm.room.power_levels', '');
    const create = this.store.stateEvent(roomId, 'm.room.create', '');
    const levels = effectiveLevels(
      pl ? (JSON.parse(pl.content) as Record<string, unknown>) : undefined,
      create?.sender ?? '',
    );
    this.levelsCache.set(roomId, levels);
    return levels;
  }

  /** Runs a write; when it throws (and so rolled back), forgets every cached level. */
  private rollingBack<T>(write: () => T): T {
    try {
      return write();
    } catch (err) {
      this.levelsCache.clear();
      throw err;
    }
  }

  private profileOf(userId: string): Record<string, unknown> {
    const user = this.store.getUser(userId);
    return {
      ...(user?.displayname ? { displayname: user.displayname } : {}),
      ...(user?.avatar_url ? { avatar_url: user.avatar_url } : {}),
    };
  }

  /** The auth rules for a new event given the room's current state. Throws and writes nothing. */
  private authorise(ev: EventToSend): void {
    if (!this.store.roomExists(ev.roomId)) throw fail.notFound('Unknown room');
    if (ev.type === 'm.room.create') throw fail.forbidden('The room already has a create event');
    const pl = this.powerLevels(ev.roomId);
    const senderLevel = userLevel(pl, ev.sender);
    const senderMembership = this.store.membershipOf(ev.roomId, ev.sender);
    if (ev.type === 'm.room.member') {
      if (ev.stateKey === undefined) throw fail.badJson('m.room.member must be a state event');
      this.authoriseMembership(ev, pl, senderLevel, senderMembership);
      return;
    }
    if (senderMembership !== 'join') throw fail.forbidden('You are not joined to this room');
    const isState = ev.stateKey !== undefined;
    if (senderLevel < requiredLevel(pl, ev.type, isState)) {
      throw fail.forbidden('You do not have permission to send this event');
    }
    if (isState && ev.stateKey!.startsWith('@') && ev.stateKey !== ev.sender) {
      throw fail.forbidden('State keys starting with @ are reserved for that user');
    }
    if (ev.type === 'm.room.power_levels') checkPowerLevelsChange(pl, ev.content, ev.sender, senderLevel);
  }

  private authoriseMembership(
    ev: EventToSend,
    pl: PowerLevels,
    senderLevel: number,
    senderMembership: string | undefined,
  ): void {
    const target = ev.stateKey!;
    if (!parseUserId(target)) throw fail.badJson('The state key of a membership event must be a user id');
    const membership = ev.content.membership;
    if (typeof membership !== 'string' || !MEMBERSHIPS.has(membership)) {
      throw fail.badJson('content.membership must be join, invite, leave, ban or knock');
    }
    const targetMembership = this.store.membershipOf(ev.roomId, target);
    const targetLevel = userLevel(pl, target);
    switch (membership) {
      case 'join': {
        if (ev.sender !== target) throw fail.forbidden('You cannot join on behalf of someone else');
        if (targetMembership === 'ban') throw fail.forbidden('You are banned from this room');
        const rules = this.store.stateEvent(ev.roomId, 'm.room.join_rules', '');
        const joinRule = rules ? (JSON.parse(rules.content) as { join_rule?: unknown }).join_rule : 'invite';
        if (joinRule === 'public' || targetMembership === 'invite' || targetMembership === 'join') return;
        throw fail.forbidden('You are not invited to this room');
      }
      case 'invite':
        if (senderMembership !== 'join') throw fail.forbidden('You are not joined to this room');
        if (targetMembership === 'ban') throw fail.forbidden('The user is banned from this room');
        if (targetMembership === 'join') throw fail.forbidden('The user is already in the room');
        if (senderLevel < pl.invite) throw fail.forbidden('You do not have permission to invite');
        return;
      case 'leave':
        if (ev.sender === target) {
          if (targetMembership === 'join' || targetMembership === 'invite' || targetMembership === 'knock') return;
          throw fail.forbidden('You are not in this room');
        }
        if (senderMembership !== 'join') throw fail.forbidden('You are not joined to this room');
        if (targetMembership === 'ban') {
          if (senderLevel < pl.ban) throw fail.forbidden('You do not have permission to unban');
          return;
        }
        if (targetMembership !== 'join' && targetMembership !== 'invite') {
          throw fail.forbidden('The user is not in the room');
        }
        if (senderLevel < pl.kick || senderLevel <= targetLevel) throw fail.forbidden('You cannot kick this user');
        return;
      case 'ban':
        if (senderMembership !== 'join') throw fail.forbidden('You are not joined to this room');
        if (senderLevel < pl.ban || senderLevel <= targetLevel) throw fail.forbidden('You cannot ban this user');
        return;
      default:
        throw fail.forbidden('Knocking is not supported in this room');
    }
  }

  /** Writes the event and, for state, the current-state row; caller holds the transaction. */
  private persist(ev: EventToSend, content: string): string {
    const eventId = newEventId();
    const stream = this.notifier.next();
    // A membership event also concerns its member, who may not be in the room yet.
    this.notifier.touch(ev.roomId, ev.type === 'm.room.member' ? ev.stateKey : undefined);
    const now = this.clock.now();
    const originServerTs = ev.originServerTs ?? now;
    this.store.insertEvent({
      stream,
      event_id: eventId,
      room_id: ev.roomId,
      sender: ev.sender,
      type: ev.type,
      state_key: ev.stateKey ?? null,
      content,
      origin_server_ts: originServerTs,
      delay_id: ev.delayId ?? null,
      sticky_duration_ms: ev.stickyDurationMs ?? null,
    });
    if (ev.stickyDurationMs !== undefined) {
      this.recordSticky(stream, ev.roomId, originServerTs, ev.stickyDurationMs, now);
    }
    if (ev.stateKey !== undefined) {
      if (ev.type === 'm.room.power_levels' || ev.type === 'm.room.create') this.levelsCache.delete(ev.roomId);
      const membership = ev.type === 'm.room.member' ? String(ev.content.membership) : null;
      this.store.upsertState(ev.roomId, ev.type, ev.stateKey, eventId, stream, membership);
      if (membership !== null) this.store.unforgetRoom(ev.stateKey, ev.roomId);
      const info = { roomId: ev.roomId, type: ev.type, stateKey: ev.stateKey, sender: ev.sender };
      for (const listener of this.stateListeners) listener(info);
    }
    return eventId;
  }

  /**
   * Indexes a sticky event for /sync while it stays sticky (one already expired, e.g. a delayed
   * event sent long after its due time, is an ordinary event), and now and then forgets expired ones.
   */
  private recordSticky(stream: number, roomId: string, originServerTs: number, durationMs: number, now: number): void {
    const expiresAt = stickyExpiresAt(originServerTs, durationMs);
    if (expiresAt <= now) return;
    this.store.insertSticky(stream, roomId, expiresAt);
    if (now >= this.nextStickyPrune) {
      this.store.pruneSticky(now);
      this.nextStickyPrune = now + STICKY_PRUNE_EVERY_MS;
    }
  }
}

function notJoined(): MatrixError {
  return fail.forbidden('You are not joined to this room');
}
