/**
 * The delegate agent's job engine: one job per (LiveKit room, identity), an FSM kept as data
 * (fsm.ts), one timer heap for every due time, and a durable store behind an interface (store.ts;
 * the embedded one is sqlite-store.ts). The outside-facing half wires it through the seam in
 * ../contracts.ts.
 */
import type { Logger } from 'pino';

import type { Clock } from '../../lib/timer-heap.js';
import type {
  ActionOutcome,
  DelayedAction,
  DelayedEventActions,
  Delegation,
  JobEngine,
  JobState,
  PresenceLookup,
} from '../contracts.js';
import { Engine } from './engine.js';
import type { FsmCell } from './fsm.js';
import type { PacingCounts } from './pacing.js';
import type { JobStore } from './store.js';

export type { FsmCell, Signal, Action } from './fsm.js';
export type { PacingCounts } from './pacing.js';
export { fsmTable, renderFsmMarkdown, JOB_STATES, SIGNALS } from './fsm.js';

export interface EngineSettings {
  /** Restart at this fraction of the delay after a successful restart (0.8). */
  restartFraction: number;
  /** Never-joined jobs send after min(this, delay) (1 h). */
  maxWaitingMs: number;
  /**
   * A session that ends while the job is still waiting (aborted before connecting, or a left for
   * a session never seen connected) shortens the wait to now + this, so a client that retries is
   * still caught and a client that died is hung up soon (30 s).
   */
  abortGraceMs: number;
  /**
   * A left of a connected participant's session waits this long before the send, and a rejoin
   * (new sid) within it keeps the call: LiveKit's SDK does a full reconnect by leaving with the
   * old sid and joining again a few hundred ms later. After it, one lookup decides; 0 sends at
   * once (1 s).
   */
  disconnectGraceMs: number;
  /** Period of the reconciliation poll of connected jobs; 0 turns it off (30 s). */
  sanityCheckIntervalMs: number;
  /**
   * The poll's budget: at most this many room polls per second on average. With more rooms than
   * interval × budget, each room's period stretches to rooms / budget (100/s).
   */
  sanityCheckMaxPerSecond: number;
  /** Retry backoff for restarts, sends and lookups: initial, factor, cap, ± jitter fraction. */
  backoff: { initialMs: number; factor: number; maxMs: number; jitter: number };
  /**
   * Per-homeserver restart pacing; sends are never paced behind restarts, and a restart close to
   * its deadline is never held back by it (only a 429 holds it back; see URGENT_FRACTION).
   */
  pacing: { perSecond: number; burst: number };
  /**
   * Restarts in flight per homeserver; further ones wait for a free slot, urgent ones first.
   * Sends are not counted and never wait for a slot (32).
   */
  maxRestartsInFlight: number;
  /** How long finished jobs stay in the store before they are purged. */
  terminalRetentionMs: number;
}

export const DEFAULT_ENGINE_SETTINGS: EngineSettings = {
  restartFraction: 0.8,
  maxWaitingMs: 3_600_000,
  abortGraceMs: 30_000,
  disconnectGraceMs: 1000,
  sanityCheckIntervalMs: 30_000,
  sanityCheckMaxPerSecond: 100,
  backoff: { initialMs: 1000, factor: 1.5, maxMs: 60_000, jitter: 0.5 },
  // A homeserver with N connected jobs needs N / 2 880 restarts/s with 1 h delays (one restart per
  // 0.8 h), so 100/s carries 288 k connected jobs per homeserver before the near-deadline bypass
  // has to step in (pacing never causes an expiry). Synapse's documented calls setting
  // (rc_delayed_event_mgmt 1/s, burst 20 per address without a token) answers 429 above 1/s
  // whatever we pick: the 429 pauses restarts for its Retry-After, so a stock Synapse is not
  // flooded, but it carries only ≈ 2.9 k jobs until its operator raises the limit.
  // Kept equal to engine.pacing in src/config/agent.ts by a test.
  pacing: { perSecond: 100, burst: 200 },
  maxRestartsInFlight: 32,
  terminalRetentionMs: 24 * 3_600_000,
};

/** The store writes the engine times: a delegation's insert, a turn's progress, a purge. */
export type StoreOperation = 'insert' | 'progress' | 'remove';

/** Hooks for metrics; every method is optional and must not throw. */
export interface EngineObserver {
  transition?(from: JobState, to: JobState, signal: string): void;
  action?(action: DelayedAction, outcome: ActionOutcome['kind'], ms: number): void;
  /** Time from the left webhook (the start of the disconnect grace) to the successful send. */
  disconnectToSend?(ms: number): void;
  /** One listParticipants call (shared by every job of the room that asked). */
  lookup?(outcome: 'ok' | 'failed', ms: number): void;
  /**
   * One store write became durable (`ok`) or failed. A delegation's insert is one SQLite group
   * commit (fsynced) or one Redis script; progress is one transaction per turn or one fenced
   * script per partition.
   */
  storeCommit?(operation: StoreOperation, ms: number, ok: boolean): void;
}

/** A job as tests and metrics see it; the delay id and token are deliberately absent. */
export interface JobSnapshot {
  /** The store's row id; stable across restarts. */
  jobId: number;
  livekitRoom: string;
  identity: string;
  state: JobState;
  /** From the store, when it can tell at once. */
  source?: Delegation['source'];
  serverName: string;
  delayTimeoutMs: number;
  /** The participant session the job follows, once seen. */
  sid?: string;
  /** Waiting: when the wait ends; other live states: the delayed event's deadline. */
  deadlineMs?: number;
  /** From the store, when it can tell at once. */
  createdAtMs?: number;
}

/** Cluster mode: which replica drives which jobs. A single node owns everything. */
export interface Ownership {
  /** The partition a LiveKit room's jobs belong to. */
  partitionOf(livekitRoom: string): number;
  /**
   * Whether this replica may act (restart, send) on a partition's jobs now: it holds the
   * partition's lease and the lease has not run out by its own clock.
   */
  mayAct(partition: number): boolean;
}

export interface EngineOptions {
  /** Where jobs are kept; the engine knows it only by this interface. */
  store: JobStore;
  /** Cluster mode only. */
  ownership?: Ownership;
  clock?: Clock;
  /** Source of jitter in [0, 1); injectable so tests are deterministic. */
  random?: () => number;
  actions: DelayedEventActions;
  presence: PresenceLookup;
  log: Logger;
  settings: EngineSettings;
  observer?: EngineObserver;
}

export type JobEngineWithIntrospection = JobEngine & {
  /** The current (or last) job for the key; for tests and metrics. */
  get(livekitRoom: string, identity: string): JobSnapshot | undefined;
  /** The restart pacing of every homeserver together; for metrics. */
  pacingCounts(): PacingCounts;
  /** Every (state, signal) cell of the FSM. */
  fsmTable(): FsmCell[];
  /** The FSM as the Markdown tables in docs/agent.md. */
  renderFsmMarkdown(): string;
};

/** The engine over `store`; call start() next. */
export function createJobEngine(opts: EngineOptions): JobEngineWithIntrospection {
  return new Engine(opts);
}
