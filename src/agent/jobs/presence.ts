/**
 * Presence lookups and the sanity poll: every question about who is in a LiveKit room goes out as
 * one listParticipants per room, however many of its jobs asked in the same turn, with a cap on
 * calls in flight; the answers come back to the jobs as `present`, `absent` or `lookup_failed`.
 */
import type { Logger } from 'pino';

import type { Clock } from '../../lib/timer-heap.js';
import type { ParticipantSession, PresenceLookup } from '../contracts.js';
import { Fifo } from './fifo.js';
import { isLive, type Signal } from './fsm.js';
import { type Job, LOOKUP_QUEUED, type Room } from './model.js';

/** Room lookups allowed in flight at once, so a restore of many rooms does not flood LiveKit. */
const MAX_LOOKUPS_IN_FLIGHT = 32;
/**
 * The sanity poll wakes at most once per tick and polls every room then due. A wake-up per room
 * (every 10 ms at 100 rooms/s) cost about three times the CPU of the same calls made together:
 * each one paid for the timer, the event loop turn and cold caches on its own.
 */
const POLL_TICK_MS = 1000;

export interface PresenceOptions {
  clock: Clock;
  presence: PresenceLookup;
  log: Logger;
  /** Period of the reconciliation poll of connected jobs; 0 turns it off. */
  sanityCheckIntervalMs: number;
  /** At most this many room polls per second on average. */
  sanityCheckMaxPerSecond: number;
  /** Asks to be woken (`pollDueRooms`) at `at`. */
  wakeAt(at: number): void;
  /** Hands a lookup's answer to a job. */
  deliver(job: Job, signal: Signal, session?: ParticipantSession): void;
  /** Whether `room` is still the engine's room of that name (a forgotten one may exist anew). */
  isCurrent(room: Room): boolean;
  forgetIfIdle(room: Room): void;
  isStopped(): boolean;
  observe?(outcome: 'ok' | 'failed', ms: number): void;
}

export class PresenceTracker {
  private readonly readyRooms = new Fifo<Room>();
  /** Rooms with a connected job, in the order (and so the due order) of their next poll. */
  private readonly pollQueue = new Fifo<Room>();
  /** The latest poll due time handed out; the next one is at least one budget step later. */
  private lastPollDue = -Infinity;
  private inFlight = 0;
  private pumpScheduled = false;

  constructor(private readonly opts: PresenceOptions) {}

  /** Asks LiveKit about the job's identity in the next batch for its room. */
  lookup(job: Job): void {
    job.lookupEpoch = job.epoch;
    if (job.flags & LOOKUP_QUEUED) return;
    job.flags |= LOOKUP_QUEUED;
    const room = job.room;
    room.batch.push(job);
    if (!room.ready && !room.busy) {
      room.ready = true;
      this.readyRooms.push(room);
    }
    this.schedulePump();
  }

  /**
   * The periodic reconciliation: every room with a connected job is polled at most every
   * interval, and all rooms together at most `sanityCheckMaxPerSecond` times a second. Webhooks
   * are the primary signal and the poll only catches lost ones, so its cost must stay flat while
   * the rooms grow (a fixed period per room made idle CPU linear in rooms). The rooms wait in one
   * queue: each next due time is max(now + interval, the last one handed out + 1 / budget), which
   * only grows, so the queue is in due order, the calls spread evenly over the interval (in
   * POLL_TICK_MS steps) instead of arriving as one burst, and a room's period is
   * max(interval, rooms / budget) by itself.
   */
  armPoll(room: Room): void {
    if (this.opts.sanityCheckIntervalMs <= 0 || room.polled) return;
    room.polled = true;
    this.enqueuePoll(room);
  }

  /** Polls every room now due; each room's connected jobs share one request. */
  pollDueRooms(): void {
    const now = this.opts.clock.now();
    for (let room = this.pollQueue.peek(); room && room.pollDue <= now; room = this.pollQueue.peek()) {
      this.pollQueue.shift();
      // A forgotten room's entry is stale; the room may exist again as a new object.
      if (!this.opts.isCurrent(room)) continue;
      let polled = false;
      for (const job of room.jobs.values()) {
        if (job.state !== 'connected') continue;
        this.lookup(job);
        polled = true;
      }
      if (polled) this.enqueuePoll(room);
      else room.polled = false;
    }
    const next = this.pollQueue.peek();
    if (next) this.schedulePollTick(next.pollDue);
  }

  private enqueuePoll(room: Room): void {
    const step = 1000 / this.opts.sanityCheckMaxPerSecond;
    room.pollDue = Math.max(this.opts.clock.now() + this.opts.sanityCheckIntervalMs, this.lastPollDue + step);
    this.lastPollDue = room.pollDue;
    this.pollQueue.push(room);
    if (this.pollQueue.length === 1) this.schedulePollTick(room.pollDue);
  }

  private schedulePollTick(due: number): void {
    this.opts.wakeAt(Math.ceil(due / POLL_TICK_MS) * POLL_TICK_MS);
  }

  /** Lookups asked for in the same tick share one listParticipants per room. */
  private schedulePump(): void {
    if (this.pumpScheduled || this.opts.isStopped()) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (!this.opts.isStopped() && this.inFlight < MAX_LOOKUPS_IN_FLIGHT) {
      const room = this.readyRooms.shift();
      if (!room) return;
      room.ready = false;
      const jobs = room.batch;
      room.batch = [];
      if (jobs.length === 0) continue;
      const epochs = jobs.map((job) => {
        job.flags &= ~LOOKUP_QUEUED;
        return job.lookupEpoch;
      });
      room.busy = true;
      this.inFlight++;
      const started = this.opts.clock.now();
      let pending: Promise<ParticipantSession[]>;
      try {
        pending = this.opts.presence.listParticipants(room.name);
      } catch (err) {
        pending = Promise.reject(err);
      }
      pending
        .then(
          (sessions) => this.answered(room, jobs, epochs, started, sessions, undefined),
          (err: unknown) => this.answered(room, jobs, epochs, started, undefined, err),
        )
        .catch((err: unknown) => this.opts.log.error({ err }, 'job engine failed to apply a lookup'));
    }
  }

  private answered(
    room: Room,
    jobs: Job[],
    epochs: number[],
    started: number,
    sessions: ParticipantSession[] | undefined,
    err: unknown,
  ): void {
    this.inFlight--;
    room.busy = false;
    if (this.opts.isStopped()) return;
    this.opts.observe?.(sessions ? 'ok' : 'failed', this.opts.clock.now() - started);
    if (room.batch.length > 0 && !room.ready) {
      room.ready = true;
      this.readyRooms.push(room);
    }
    if (!sessions) {
      // Debug only: in a LiveKit outage this repeats per room and backoff; the metric shows it.
      this.opts.log.debug({ room: room.name, err: err instanceof Error ? err.message : String(err) }, 'participant lookup failed');
    }
    const byIdentity = new Map<string, ParticipantSession[]>();
    for (const s of sessions ?? []) {
      const list = byIdentity.get(s.identity);
      if (list) list.push(s);
      else byIdentity.set(s.identity, [s]);
    }
    jobs.forEach((job, i) => {
      // A result asked for in another state or about another session answers a stale question.
      if (job.epoch !== epochs[i] || !isLive(job.state)) return;
      if (!sessions) return this.opts.deliver(job, 'lookup_failed');
      const session = pickSession(job, byIdentity.get(job.identity));
      if (session) this.opts.deliver(job, 'present', session);
      else this.opts.deliver(job, 'absent');
    });
    this.pump();
    this.opts.forgetIfIdle(room);
  }
}

/** The job's current session if listed, else the newest one not known to have ended. */
function pickSession(job: Job, sessions: ParticipantSession[] | undefined): ParticipantSession | undefined {
  let best: ParticipantSession | undefined;
  for (const s of sessions ?? []) {
    if (s.sid === job.endedSid) continue;
    if (s.sid === job.sid) return s;
    if (!best || (s.joinedAtMs ?? 0) > (best.joinedAtMs ?? 0)) best = s;
  }
  return best;
}
