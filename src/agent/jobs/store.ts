/**
 * What the job engine needs from a store, and nothing about how it keeps it: the engine runs the
 * same on the embedded SQLite store (sqlite-store.ts) as on any other implementation. One job per
 * row; at most one live row per (room, identity), so a replacement and the job it replaces can
 * never both be restored as the key's job. A replaced job is restored as `cancelling` until it has
 * cancelled its delayed event. Finished rows stay for the retention period, then go.
 */
import type { Delegation, JobState } from '../contracts.js';

export interface JobRow {
  id: number;
  room: string;
  identity: string;
  delay_id: string;
  delay_ms: number;
  server_name: string;
  user_id: string;
  scoped_token: string | null;
  source: Delegation['source'];
  state: JobState;
  sid: string | null;
  since_ms: number | null;
  ended_sid: string | null;
  deadline_ms: number;
  created_ms: number;
  changed_ms: number;
  /** 1 when deadline_ms was set by a successful restart (the homeserver's own timer), else 0. */
  restarted: number;
}

/** The mutable part of a job that survives a restart. */
export interface JobProgress {
  state: JobState;
  sid: string | undefined;
  sinceMs: number | undefined;
  endedSid: string | undefined;
  /** Undefined keeps the stored deadline (a finished job has none in memory). */
  deadlineMs: number | undefined;
  /**
   * The deadline was set by a successful restart, so the last restart happened at deadline −
   * delay and the next one is due at its normal time after a restore. False while the deadline
   * is only our estimate (armed on connect, before the first restart answered).
   */
  restarted: boolean;
  changedMs: number;
}

/** The delayed event a job restarts and sends. */
export interface JobTarget {
  delayId: string;
  scopedToken?: string;
}

/** A job as the store finds it: its id, and its room (which share of the store it lives in). */
export interface JobRef {
  id: number;
  room: string;
}

export interface ProgressChange extends JobRef {
  progress: JobProgress;
}

export interface JobStore {
  /**
   * Inserts the delegation as waiting and, where the store keeps one live job per key, marks the
   * key's live job cancelling (its delayed event must still be cancelled); resolves with the new
   * job's id once both are durable (before the client is answered). A store without that rule
   * (Redis) leaves the old job to the engine, which replaces it when it takes the new one up, or
   * when a restore finds both live.
   */
  insert(d: Delegation, waitDeadlineMs: number, nowMs: number): Promise<number>;
  /**
   * Writes the latest progress of the jobs changed in one turn. It need not be synced before it
   * resolves: every effect is safe to repeat if the last progress is lost (see Engine.persist).
   * A row already final is never brought back, nor a cancelling one made live again.
   */
  writeProgress(changes: readonly ProgressChange[]): Promise<void>;
  /** Deletes finished jobs whose retention passed. */
  remove(jobs: readonly JobRef[]): Promise<void>;
  /**
   * The delayed event a job restarts and sends, read when it does instead of kept in memory for
   * every job.
   */
  target(job: JobRef): Promise<JobTarget>;
  /** What only diagnostics need, when the store can tell at once (undefined otherwise). */
  details(id: number): { source: Delegation['source']; createdMs: number } | undefined;
  /** Every stored job: finished ones first, oldest first (the purge order), then the live ones. */
  loadAll(): Promise<JobRow[]>;
  close(): Promise<void>;
}
