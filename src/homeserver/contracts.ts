/**
 * The seam between the homeserver's core (accounts, rooms, events, sync) and its delayed-events
 * module. The core implements `RoomEngine` and `Auth`; the delayed-events module implements
 * `DelayedEvents`. `app.ts` wires both into one router and one SQLite database.
 */
import type { DatabaseSync } from 'node:sqlite';

import type { Logger } from 'pino';

import type { HomeserverConfig } from '../config/homeserver.js';
import type { RequestContext, Router } from '../lib/http.js';
import type { Clock } from '../lib/timer-heap.js';

/** Who made a request. */
export interface Requester {
  userId: string;
  /** Absent for scoped delegation tokens. */
  deviceId?: string;
  /** The access token itself, for transaction keys (never logged). */
  token: string;
  /** Set when the token is a scoped delegation token (see DelayedEvents.resolveScopedToken). */
  scope?: ScopedTokenScope;
}

export interface ScopedTokenScope {
  /** The delay ids the token may restart and send. */
  delayIds: ReadonlySet<string>;
  expiresAt: number;
}

export interface Auth {
  /**
   * The requester behind `Authorization: Bearer` (or `?access_token=`). Throws 401
   * M_MISSING_TOKEN / M_UNKNOWN_TOKEN. A scoped delegation token is refused with 403 M_FORBIDDEN
   * unless `allowScoped` is set (only the delayed-event restart/send routes set it).
   */
  requester(ctx: RequestContext, opts?: { allowScoped?: boolean }): Requester;
  /** Like `requester`, but undefined when the request carries no token at all. */
  optionalRequester(ctx: RequestContext, opts?: { allowScoped?: boolean }): Requester | undefined;
}

export interface EventToSend {
  roomId: string;
  sender: string;
  type: string;
  /** Present (possibly '') for state events. */
  stateKey?: string;
  content: Record<string, unknown>;
  /** Defaults to now. A timed delayed send uses its due time. */
  originServerTs?: number;
  /** The delay id this event came from: shown in `unsigned` to its sender only. */
  delayId?: string;
  /** MSC4354: makes the event sticky for this long (capped at one hour when judged). */
  stickyDurationMs?: number;
}

export interface RoomEngine {
  /**
   * Authorises (membership, power levels: users, events, state_default, events_default) and
   * persists an event, updates room state and wakes /sync. Throws a MatrixError (403 M_FORBIDDEN,
   * 404 M_NOT_FOUND for an unknown room, 400 for bad content) without changing anything.
   *
   * `inTransaction` runs inside the same SQLite transaction after the event row is written, so a
   * caller can record the outcome atomically with the event (the delayed-events module uses this
   * to make "event created" and "delayed event finalised" one commit). Inside `batch` it runs in
   * a savepoint instead, and the batch wakes /sync once it has committed.
   */
  sendEvent(ev: EventToSend, inTransaction?: (eventId: string) => void): { eventId: string };
  /**
   * Runs `fn` inside one SQLite transaction (one commit, one fsync). Every `sendEvent` in it runs
   * in a savepoint of its own, so a refused event (with whatever its `inTransaction` wrote) is
   * rolled back alone while the others commit; a throw from `fn` itself rolls back everything.
   * /sync is woken once, after the commit, so no uncommitted event is ever announced.
   */
  batch<T>(fn: () => T): T;
  /** Whether the room exists (unknown room → 404 when scheduling). */
  roomExists(roomId: string): boolean;
  /**
   * Called synchronously inside the transaction that stores a state event, after it is stored.
   * The delayed-events module uses it for the seed's state-cancellation rule.
   */
  onStateEvent(listener: (ev: { roomId: string; type: string; stateKey: string; sender: string }) => void): void;
}

/** The delayed-events module as the core sees it. */
export interface DelayedEvents {
  /**
   * Schedules an event; `?org.matrix.msc4140.delay=` on /send and /state calls this. Checks the
   * delay bounds, the per-user count and rate limit; returns the new delay id.
   */
  schedule(req: {
    requester: Requester;
    roomId: string;
    type: string;
    stateKey?: string;
    content: Record<string, unknown>;
    delayMs: number;
    /** MSC4354: the event, once sent, is sticky for this long. */
    stickyDurationMs?: number;
    /** Which wire form asked: the seed's query parameter or the dedicated PUT (generation C). */
    form: 'query' | 'dedicated';
    /**
     * Runs inside the transaction that stores the delayed event, so the core's transaction-id
     * record commits with it: a crash can never leave a scheduled event whose retry schedules again.
     */
    inCommit?: (delayId: string) => void;
  }): Promise<{ delayId: string }>;
  /** Resolves a scoped delegation token, or undefined when the string is not one. */
  resolveScopedToken(token: string): Requester | undefined;
  /** Adds the /delayed_events routes (all prefixes and forms) and the dedicated PUT. */
  registerRoutes(router: Router): void;
  /** Loads the schedule from the store and sends overdue events in due order. */
  start(): Promise<void>;
  /** Stops the timer; nothing is sent after this resolves. */
  stop(): Promise<void>;
}

/** Everything both halves are built from. */
export interface HomeserverDeps {
  config: HomeserverConfig;
  db: DatabaseSync;
  log: Logger;
  clock: Clock;
}
