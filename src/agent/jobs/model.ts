/**
 * The engine's in-memory model, shared by its parts (engine.ts drives the FSM, pacing.ts paces
 * restarts per homeserver, presence.ts batches LiveKit lookups per room): small objects of scalars
 * and shared references, so a million jobs fit in a few hundred MiB.
 */
import type { JobState } from '../contracts.js';
import { Fifo } from './fifo.js';

/**
 * A job's timers live in one heap keyed job slot × TIMERS + timer, so a timer finds its job by
 * arithmetic instead of a Map entry per job.
 */
export const TIMERS = 3;
export const TIMER_DEADLINE = 0;
/**
 * The restart/send timer. While a restart waits in the homeserver's paced queue it holds the
 * moment the restart becomes urgent and bypasses the pacing.
 */
export const TIMER_ACTION = 1;
export const TIMER_LOOKUP = 2;

/** Job flags (one small integer instead of several booleans per job). */
export const RESTART_QUEUED = 1;
export const IN_FLIGHT = 2;
export const LOOKUP_QUEUED = 4;
export const FROM_CONNECTED = 8;
export const PERSIST_QUEUED = 16;
/** The deadline was set by a successful restart (persisted as `restarted`). */
export const RESTARTED = 32;
/** In its homeserver's urgent queue (see RestartPacing.queue). */
export const URGENT_QUEUED = 64;
export const QUEUED = RESTART_QUEUED | URGENT_QUEUED;
/** Dropped from memory with its partition (cluster mode); whatever still refers to it lets go. */
export const EVICTED = 128;

export class Room {
  readonly jobs = new Map<string, Job>();
  /** In the poll queue, due at `pollDue`. */
  polled = false;
  pollDue = 0;
  /** Jobs waiting for this room's next listParticipants. */
  batch: Job[] = [];
  /** In the ready queue. */
  ready = false;
  /** A listParticipants for this room is in flight; the next batch waits for it. */
  busy = false;
  constructor(
    readonly name: string,
    /** Which share of the jobs it belongs to (cluster mode; always 0 on a single node). */
    readonly partition: number,
  ) {}

  /** Nothing refers to the room any more, so it can be forgotten. */
  get idle(): boolean {
    return this.jobs.size === 0 && this.batch.length === 0 && !this.busy && !this.ready;
  }
}

export class Homeserver {
  readonly queue = new Fifo<Job>();
  /** Restarts past their urgency point that found no free in-flight slot; served first. */
  readonly urgent = new Fifo<Job>();
  restartsInFlight = 0;
  pausedUntil = 0;
  pauseTries = 0;
  constructor(
    readonly name: string,
    readonly index: number,
  ) {}
}

export class Job {
  state: JobState = 'waiting';
  sid: string | undefined = undefined;
  /** When the current session started (joinedAtMs, else the webhook's time, else ours). */
  sinceMs: number | undefined = undefined;
  /** The last session known to have ended, so its late or repeated events are recognised. */
  endedSid: string | undefined = undefined;
  /**
   * When the job entered its state. A send that follows a disconnect grace counts from the left
   * webhook (the grace and the send are one hang-up), so disconnect→send latency includes it.
   */
  stateSince = 0;
  tries = 0;
  lookupTries = 0;
  /** Bumped whenever the state, the session, or the question being asked changes. */
  epoch = 0;
  /** The epoch the queued lookup was asked in. */
  lookupEpoch = 0;
  flags = 0;
  /** Index in the engine's job slots; its timers' heap keys derive from it. */
  slot = -1;

  constructor(
    readonly id: number,
    readonly room: Room,
    readonly identity: string,
    readonly delayMs: number,
    readonly server: Homeserver,
  ) {}
}

/** The per-job timers, as the engine's parts see them. */
export interface JobTimers {
  schedule(job: Job, timer: number, at: number): void;
  cancel(job: Job, timer: number): void;
  /** When the timer is due, if armed. */
  dueOf(job: Job, timer: number): number | undefined;
}
