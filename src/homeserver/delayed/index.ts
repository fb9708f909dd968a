/**
 * The MSC4140 delayed-events module of lastwill's homeserver. The core wires it in through
 * `createDelayedEvents`; the MSC4195 delegation endpoint additionally uses `mintScopedToken` and
 * `lookupOwned`. Behaviour per generation is tabulated in docs/homeserver.md.
 */
import type { GatherOptions } from '../../lib/sqlite.js';
import type { Auth, DelayedEvents, HomeserverDeps, RoomEngine } from '../contracts.js';
import type { TxnCache } from '../txns.js';
import { type DelayedObserver, DelayedEngine, type ScheduledEvent } from './engine.js';
import { registerDelayedRoutes } from './routes.js';
import { DelayedStore } from './store.js';

export type { ActionOutcome, DelayedObserver, FinalStatus, ScheduledEvent } from './engine.js';

/** `DelayedEvents` plus what the MSC4195 delegation endpoint needs. */
export interface DelayedEventsModule extends DelayedEvents {
  /**
   * Mints a scoped delegation token that may only `restart` and `send` the given delayed events,
   * all of which must be the user's own and still scheduled (else 400 M_INVALID_PARAM). Only a
   * SHA-256 hash of the token is stored; it is durable when the promise resolves.
   * @param ttlMs - lifetime; capped at `delayed_events.scoped_token_max_ms` (default 24 h).
   */
  mintScopedToken(
    userId: string,
    delayIds: readonly string[],
    ttlMs?: number,
  ): Promise<{ token: string; expiresAt: number }>;
  /** Withdraws a scoped token that was never handed out. */
  revokeScopedToken(token: string): Promise<void>;
  /** The user's own still-scheduled delayed event, or undefined (unknown, finalised, or not theirs). */
  lookupOwned(userId: string, delayId: string): ScheduledEvent | undefined;
  /** Delayed events scheduled now. */
  scheduledCount(): number;
}

/**
 * Builds the module over the core's database. `txns` is the core's transaction cache: the
 * dedicated PUT's transaction ids are remembered there, exactly like those of `/send`.
 */
export function createDelayedEvents(
  deps: HomeserverDeps & { rooms: RoomEngine; auth: Auth; txns: TxnCache; gather?: GatherOptions; observer?: DelayedObserver },
): DelayedEventsModule {
  const { config, clock, rooms, auth, txns } = deps;
  const observer = deps.observer ?? {};
  const log = deps.log.child({ component: 'delayed-events' });
  const store = new DelayedStore(deps.db);
  const engine = new DelayedEngine({ config, store, rooms, clock, log, observer, ...(deps.gather ? { gather: deps.gather } : {}) });
  return {
    schedule: (req) => engine.schedule(req).then((delayId) => ({ delayId })),
    resolveScopedToken: (token) => engine.resolveScopedToken(token),
    registerRoutes: (router) => registerDelayedRoutes(router, { engine, auth, txns, config, clock, observer }),
    start: () => engine.start(),
    stop: async () => engine.stop(),
    mintScopedToken: (userId, delayIds, ttlMs) => engine.mintScopedToken(userId, delayIds, ttlMs),
    lookupOwned: (userId, delayId) => engine.lookupOwned(userId, delayId),
    revokeScopedToken: (token) => engine.revokeScopedToken(token),
    scheduledCount: () => engine.scheduledCount,
  };
}
