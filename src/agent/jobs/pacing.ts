/**
 * Restart pacing per homeserver: a token bucket and a FIFO, a cap on restarts in flight, pauses on
 * 429, and the urgency rule that keeps pacing from ever causing an expiry. Sends never come here:
 * a hang-up is never queued behind restarts.
 */
import { RateLimiter } from '../../lib/rate-limit.js';
import type { Clock } from '../../lib/timer-heap.js';
import { isRestarting } from './fsm.js';
import type { Fifo } from './fifo.js';
import {
  Homeserver,
  IN_FLIGHT,
  type Job,
  type JobTimers,
  QUEUED,
  RESTART_QUEUED,
  TIMER_ACTION,
  TIMER_DEADLINE,
  URGENT_QUEUED,
} from './model.js';

/**
 * A queued restart whose deadline is closer than max(this fraction of the delay, URGENT_MIN_MS)
 * skips the pacing: pacing protects the homeserver from bursts, but a restart it holds back past
 * the deadline hangs up a participant who is still in the call. Only a real 429 (with its
 * Retry-After) still holds it back. With the default restartFraction (0.8) a periodic restart has
 * 20 % of the delay left when it comes due, so it queues for at most half of that before it goes.
 */
const URGENT_FRACTION = 0.1;
const URGENT_MIN_MS = 30_000;

export interface PacingOptions {
  clock: Clock;
  pacing: { perSecond: number; burst: number };
  /** Restarts in flight per homeserver; further ones wait for a free slot, urgent ones first. */
  maxInFlight: number;
  timers: JobTimers;
  /** Asks to be woken (`drain`) for the homeserver at `at`. */
  wakeAt(hs: Homeserver, at: number): void;
  /** Starts the restart call. */
  perform(job: Job): void;
  /** The retry backoff for an attempt (for pauses without a Retry-After). */
  backoff(attempt: number): number;
}

/** The pacing of every homeserver together, for the metrics (no homeserver is named). */
export interface PacingCounts {
  /** Restarts waiting behind the pacing's rate. */
  queued: number;
  /** Restarts past their urgency point, waiting only for a free in-flight slot. */
  urgent: number;
  /** Restart calls awaiting their answer. */
  inFlight: number;
  /** Homeservers whose restarts are paused after a 429. */
  paused: number;
}

/** Which count a job's queue flags put it in: urgent wins when it waits in both queues. */
const NOT_QUEUED = 0;
const PACED = 1;
const URGENT = 2;
function queueOf(flags: number): number {
  return flags & URGENT_QUEUED ? URGENT : flags & RESTART_QUEUED ? PACED : NOT_QUEUED;
}

export class RestartPacing {
  private readonly servers = new Map<string, Homeserver>();
  private readonly serversByIndex: Homeserver[] = [];
  private readonly bucket: RateLimiter;
  /**
   * Jobs per queueOf() value, and restarts in flight, over every homeserver. Kept as the flags
   * change, because the queues themselves hold stale entries until they reach the head.
   */
  private readonly waiting = [0, 0, 0];
  private inFlight = 0;

  constructor(private readonly opts: PacingOptions) {
    this.bucket = new RateLimiter(opts.pacing, opts.clock);
  }

  /** The homeserver's pacing state, interned by name. */
  homeserver(name: string): Homeserver {
    let hs = this.servers.get(name);
    if (!hs) {
      hs = new Homeserver(name, this.serversByIndex.length);
      this.servers.set(name, hs);
      this.serversByIndex.push(hs);
    }
    return hs;
  }

  byIndex(index: number): Homeserver | undefined {
    return this.serversByIndex[index];
  }

  counts(): PacingCounts {
    const now = this.opts.clock.now();
    let paused = 0;
    for (const hs of this.serversByIndex) if (hs.pausedUntil > now) paused++;
    return { queued: this.waiting[PACED]!, urgent: this.waiting[URGENT]!, inFlight: this.inFlight, paused };
  }

  /** Takes the job out of the queues (its entries go stale; see nextQueued). */
  unqueue(job: Job): void {
    this.setQueued(job, job.flags & ~QUEUED);
  }

  /**
   * Queues a restart behind the homeserver's pacing, or starts it at once when its deadline is
   * near. A queued restart keeps a timer for the moment it becomes urgent, so however long the
   * queue (restart demand above `pacing`), no restart waits in it past that point. Restarts in
   * flight per homeserver are capped, so a burst (a restore, a raised pacing) holds its jobs
   * here instead of as pending requests; an urgent restart that finds no free slot goes ahead of
   * every paced one and takes the next slot that frees (each is freed within one request timeout).
   */
  queue(job: Job): void {
    if (job.flags & IN_FLIGHT) return;
    const { timers } = this.opts;
    const now = this.opts.clock.now();
    const hs = job.server;
    const urgentAt = this.urgentAt(job, now);
    if (urgentAt <= now) {
      if (hs.pausedUntil > now) {
        // The homeserver asked us to back off (429): honour it, then go ahead of the queue.
        timers.schedule(job, TIMER_ACTION, hs.pausedUntil);
        return;
      }
      timers.cancel(job, TIMER_ACTION);
      if (hs.restartsInFlight < this.opts.maxInFlight) {
        // Its place in a queue, if any, is skipped by the drain once the flags are gone.
        this.unqueue(job);
        this.start(job);
      } else if (!(job.flags & URGENT_QUEUED)) {
        this.setQueued(job, job.flags | URGENT_QUEUED);
        hs.urgent.push(job);
      }
      return;
    }
    if (!(job.flags & RESTART_QUEUED)) {
      this.setQueued(job, job.flags | RESTART_QUEUED);
      hs.queue.push(job);
    }
    timers.schedule(job, TIMER_ACTION, urgentAt);
    this.drain(hs);
  }

  /**
   * Starts the homeserver's queued restarts while it has free in-flight slots: urgent ones first
   * and unpaced, then paced ones as fast as the pacing allows; a 429 pause holds back both.
   * A freed slot (see release) drains again.
   */
  drain(hs: Homeserver): void {
    const now = this.opts.clock.now();
    for (;;) {
      const urgent = nextQueued(hs.urgent, URGENT_QUEUED);
      const job = urgent ?? nextQueued(hs.queue, RESTART_QUEUED);
      if (!job || hs.restartsInFlight >= this.opts.maxInFlight) return;
      if (hs.pausedUntil > now) {
        this.opts.wakeAt(hs, hs.pausedUntil);
        return;
      }
      if (!urgent) {
        const verdict = this.bucket.take(hs.name);
        if (!verdict.ok) {
          this.opts.wakeAt(hs, now + verdict.retryAfterMs);
          return;
        }
      }
      (urgent ? hs.urgent : hs.queue).shift();
      this.unqueue(job);
      // Its urgency timer is moot; the restart's outcome sets the next one.
      this.opts.timers.cancel(job, TIMER_ACTION);
      this.start(job);
    }
  }

  /** A restart call ended: its slot is free (drain the homeserver once its outcome is applied). */
  release(job: Job): void {
    job.server.restartsInFlight--;
    this.inFlight--;
  }

  /** Pauses the homeserver's restarts (429 is back-pressure); returns when they resume. */
  pause(hs: Homeserver, retryAfterMs: number | undefined): number {
    const until = this.opts.clock.now() + (retryAfterMs ?? this.opts.backoff(hs.pauseTries++));
    if (until > hs.pausedUntil) hs.pausedUntil = until;
    return hs.pausedUntil;
  }

  private start(job: Job): void {
    job.server.restartsInFlight++;
    this.inFlight++;
    this.opts.perform(job);
  }

  private setQueued(job: Job, flags: number): void {
    const from = queueOf(job.flags);
    const to = queueOf(flags);
    job.flags = flags;
    if (from === to) return;
    this.waiting[from]!--;
    this.waiting[to]!++;
  }

  /** From when a restart may no longer wait for the pacing (see URGENT_FRACTION). */
  private urgentAt(job: Job, now: number): number {
    const window = Math.max(URGENT_FRACTION * job.delayMs, URGENT_MIN_MS);
    return (this.opts.timers.dueOf(job, TIMER_DEADLINE) ?? now) - window;
  }
}

/** The queue's first job still waiting for a restart; drops entries that went stale. */
function nextQueued(queue: Fifo<Job>, flag: number): Job | undefined {
  for (let job = queue.peek(); job; job = queue.peek()) {
    if (isRestarting(job.state) && job.flags & flag) return job;
    queue.shift();
  }
  return undefined;
}
