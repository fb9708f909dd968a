/**
 * The job engine. Everything that happens to a job arrives as an FSM signal (fsm.ts) and every
 * side effect is one of the table's actions, so this file is plumbing: classifying webhooks by
 * session, batching presence lookups per room, pacing restarts per homeserver, one timer heap for
 * every due time, and persisting each change: delegations through the group-commit writer,
 * progress in one commit per turn (see commitProgress).
 *
 * Memory: a job is one small object of scalars and shared references (its room and homeserver are
 * interned), at most three entries in a typed-array timer heap, one slot in a dense array, and no
 * closures while it is idle. What only diagnostics and the homeserver calls need (source, creation
 * time, delay id, scoped token) stays in the store, and the deadline lives in the timer heap only.
 * About 360 bytes per connected job, strings included (test/agent/jobs/memory.measure.ts).
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';

import type { Logger } from 'pino';

import { fail } from '../../lib/errors.js';
import { RateLimiter } from '../../lib/rate-limit.js';
import { BatchWriter, openDatabase, transaction } from '../../lib/sqlite.js';
import { type Clock, IntKeyIndex, systemClock, TimerHeap } from '../../lib/timer-heap.js';
import type {
  JobState,
  ActionOutcome,
  DelayedAction,
  DelayedEventActions,
  Delegation,
  JobEngine,
  ParticipantSession,
  ParticipantSignal,
  PresenceLookup,
} from '../contracts.js';
import { Fifo } from './fifo.js';
import {
  type Action,
  type FsmCell,
  type FsmVariant,
  fsmTable,
  isLive,
  isRestarting,
  JOB_STATES,
  renderFsmMarkdown,
  type Signal,
  step,
} from './fsm.js';
import type { EngineObserver, EngineOptions, EngineSettings, JobSnapshot } from './index.js';
import { type JobRow, JobStore } from './store.js';

/**
 * Per-job timers live in `timers`, keyed job slot × TIMERS + timer. The engine's other timers live
 * in `heap`, keyed by negative numbers: the purge, the sanity poll, and one pacer wake-up per
 * homeserver (PACER_KEY_BASE − index).
 */
const TIMERS = 3;
const TIMER_DEADLINE = 0;
/**
 * The restart/send timer. While a restart waits in the homeserver's paced queue it holds the
 * moment the restart becomes urgent and bypasses the pacing.
 */
const TIMER_ACTION = 1;
const TIMER_LOOKUP = 2;
const PURGE_KEY = -2;
const POLL_KEY = -3;
const PACER_KEY_BASE = -16;

/** Job flags (one small integer instead of several booleans per job). */
const RESTART_QUEUED = 1;
const IN_FLIGHT = 2;
const LOOKUP_QUEUED = 4;
const FROM_CONNECTED = 8;
const PERSIST_QUEUED = 16;
/** The deadline was set by a successful restart (persisted as `restarted`). */
const RESTARTED = 32;
/** In its homeserver's urgent queue (see queueRestart). */
const URGENT_QUEUED = 64;
const QUEUED = RESTART_QUEUED | URGENT_QUEUED;

/** Room lookups allowed in flight at once, so a restore of many rooms does not flood LiveKit. */
const MAX_LOOKUPS_IN_FLIGHT = 32;
/**
 * The sanity poll wakes at most once per tick and polls every room then due. A wake-up per room
 * (every 10 ms at 100 rooms/s) cost about three times the CPU of the same calls made together:
 * each one paid for the timer, the event loop turn and cold caches on its own.
 */
const POLL_TICK_MS = 1000;
/** Restarts come due up to this fraction early, so jobs created together drift apart. */
const RESTART_JITTER = 0.05;
/**
 * A queued restart whose deadline is closer than max(this fraction of the delay, URGENT_MIN_MS)
 * skips the pacing: pacing protects the homeserver from bursts, but a restart it holds back past
 * the deadline hangs up a participant who is still in the call. Only a real 429 (with its
 * Retry-After) still holds it back. With the default restartFraction (0.8) a periodic restart has
 * 20 % of the delay left when it comes due, so it queues for at most half of that before it goes.
 */
const URGENT_FRACTION = 0.1;
const URGENT_MIN_MS = 30_000;

class Room {
  readonly jobs = new Map<string, Job>();
  /** In the engine's poll queue, due at `pollDue`. */
  polled = false;
  pollDue = 0;
  /** Jobs waiting for this room's next listParticipants. */
  batch: Job[] = [];
  /** In the ready queue. */
  ready = false;
  /** A listParticipants for this room is in flight; the next batch waits for it. */
  busy = false;
  constructor(readonly name: string) {}
}

class Homeserver {
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

class Job {
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

/** What a signal carries besides its name. */
export interface SignalContext {
  session?: ParticipantSession;
  /** When the signal happened according to its source (webhook createdAt). */
  atMs?: number;
  retryAfterMs?: number;
}

function outcomeSignal(action: DelayedAction, outcome: ActionOutcome): Signal {
  if (action === 'restart') {
    switch (outcome.kind) {
      case 'ok':
        return 'restart_ok';
      case 'not_found':
        return 'restart_not_found';
      case 'rate_limited':
        return 'restart_rate_limited';
      case 'unresolvable':
        return 'restart_unresolvable';
      default:
        return 'restart_failed';
    }
  }
  switch (outcome.kind) {
    case 'ok':
      return 'send_ok';
    case 'not_found':
      return 'send_not_found';
    case 'rate_limited':
      return 'send_rate_limited';
    default:
      // An unresolvable homeserver may be a passing DNS or .well-known failure; the deadline
      // bounds the retries, and after it the homeserver sends the event itself.
      return 'send_failed';
  }
}

function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class Engine implements JobEngine {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly settings: EngineSettings;
  private readonly observer: EngineObserver;
  private readonly actions: DelayedEventActions;
  private readonly presence: PresenceLookup;
  private readonly db: DatabaseSync;
  private readonly store: JobStore;
  private readonly writer: BatchWriter;
  /** With synchronous=FULL: the pragmas a progress commit runs around itself (see commitProgress). */
  private readonly progressPragmas: { skipFsync: StatementSync; restore: StatementSync } | undefined;
  private readonly heap: TimerHeap<number>;
  private readonly timers: TimerHeap<number>;
  private readonly pacer: RateLimiter;
  private readonly rooms = new Map<string, Room>();
  private readonly servers = new Map<string, Homeserver>();
  private readonly serversByIndex: Homeserver[] = [];
  /**
   * Every job in memory (live or retained), by slot: a dense array whose free slots are reused,
   * so a timer finds its job without a Map entry per job.
   */
  private readonly jobSlots: Array<Job | undefined> = [];
  private readonly freeSlots: number[] = [];
  /** Finished jobs in the order they finished; retention is constant, so this is purge order. */
  private readonly finished = new Fifo<Job>();
  private readonly stateCounts = Object.fromEntries(JOB_STATES.map((s) => [s, 0])) as Record<
    JobState,
    number
  >;
  private readonly fsmVariant: FsmVariant;
  private readonly readyRooms = new Fifo<Room>();
  /** Rooms with a connected job, in the order (and so the due order) of their next poll. */
  private readonly pollQueue = new Fifo<Room>();
  /** The latest poll due time handed out; the next one is at least one budget step later. */
  private lastPollDue = -Infinity;
  /** Jobs whose progress changed this turn; written together in one commit (see commitProgress). */
  private dirty: Job[] = [];
  private lookupsInFlight = 0;
  private lookupPumpScheduled = false;
  private started = false;
  private stopped = false;

  constructor(opts: EngineOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.log = opts.log;
    this.settings = opts.settings;
    this.observer = opts.observer ?? {};
    this.actions = opts.actions;
    this.presence = opts.presence;
    const synchronous = opts.synchronous ?? 'full';
    this.db = openDatabase(opts.dbPath, synchronous);
    this.progressPragmas =
      synchronous === 'full'
        ? { skipFsync: this.db.prepare('PRAGMA synchronous = NORMAL'), restore: this.db.prepare('PRAGMA synchronous = FULL') }
        : undefined;
    this.store = new JobStore(this.db);
    this.writer = new BatchWriter(this.db);
    this.heap = new TimerHeap<number>((key) => this.onDue(key), this.clock);
    this.timers = new TimerHeap<number>((key) => this.onJobTimer(key), this.clock, new IntKeyIndex());
    this.pacer = new RateLimiter(this.settings.pacing, this.clock);
    this.fsmVariant = { disconnectGrace: this.settings.disconnectGraceMs > 0 };
  }

  // ---------------------------------------------------------------- public API

  async delegate(d: Delegation): Promise<void> {
    if (this.stopped) throw fail.unavailable('The delegate agent is shutting down');
    if (!Number.isSafeInteger(d.delayTimeoutMs) || d.delayTimeoutMs <= 0) {
      throw fail.badJson('delay_timeout must be a positive integer');
    }
    const now = this.clock.now();
    const waitUntil = now + Math.min(this.settings.maxWaitingMs, d.delayTimeoutMs);
    const id = await this.writer.write(() => this.store.replaceAndInsert(d, waitUntil, now));
    // Committed: a stopped engine leaves the job to the next start().
    if (this.stopped) return;

    const room = this.roomOf(d.livekitRoom);
    const old = room.jobs.get(d.identity);
    const job = new Job(
      id,
      room,
      d.identity,
      d.delayTimeoutMs,
      this.serverOf(d.serverName),
    );
    job.stateSince = now;
    let inherited: ParticipantSession | undefined;
    if (old) {
      job.endedSid = old.endedSid;
      if (old.state === 'connected' && old.sid !== undefined) {
        inherited = { identity: old.identity, sid: old.sid, joinedAtMs: old.sinceMs };
      }
      if (isLive(old.state)) this.signal(old, 'replace');
    }
    this.register(job);
    this.log.debug(
      { room: room.name, identity: job.identity, source: d.source, replaced: old !== undefined },
      'delegation accepted',
    );
    this.setDeadline(job, waitUntil);
    // Clients re-delegate on every new delay id while in the call; the session the old job
    // followed is as good as a join, so the replacement restarts at once instead of waiting.
    if (inherited) this.signal(job, 'joined', { session: inherited });
    else this.runAction(job, 'lookup', {});
  }

  onParticipant(s: ParticipantSignal): void {
    if (this.stopped) return;
    const job = this.rooms.get(s.livekitRoom)?.jobs.get(s.session.identity);
    if (!job || !isLive(job.state)) return;
    const signal = this.classify(job, s);
    this.signal(job, signal, { session: s.session, atMs: s.createdAtMs });
  }

  async start(): Promise<void> {
    if (this.started || this.stopped) return;
    this.started = true;
    const now = this.clock.now();
    let restored = 0;
    // Delegations accepted before start() are already in memory.
    const known = new Set(this.jobSlots.map((job) => job?.id));
    for (const row of this.store.loadAll()) {
      if (known.has(row.id)) continue;
      this.restore(this.jobFromRow(row), row, now);
      restored++;
    }
    this.purge();
    this.log.info({ restored, ...this.counts() }, 'job engine started');
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.heap.stop();
    this.timers.stop();
    this.commitProgress();
    this.writer.close();
    this.db.close();
    this.log.info({ ...this.counts() }, 'job engine stopped');
  }

  counts(): Record<JobState, number> {
    return { ...this.stateCounts };
  }

  get(livekitRoom: string, identity: string): JobSnapshot | undefined {
    const job = this.rooms.get(livekitRoom)?.jobs.get(identity);
    return job && this.snapshot(job);
  }

  /** Like get(), by store id: reaches replaced jobs too, until they are purged. */
  getById(jobId: number): JobSnapshot | undefined {
    const job = this.findById(jobId);
    return job && this.snapshot(job);
  }

  /**
   * Test hook: feeds one FSM signal straight to a job (by id, so finished and replaced jobs are
   * reachable too), bypassing webhook classification. Returns false for an unknown id.
   */
  injectSignal(jobId: number, signal: Signal, ctx: SignalContext = {}): boolean {
    const job = this.findById(jobId);
    if (!job || this.stopped) return false;
    this.signal(job, signal, ctx);
    return true;
  }

  fsmTable(): FsmCell[] {
    return fsmTable(this.fsmVariant);
  }

  renderFsmMarkdown(): string {
    return renderFsmMarkdown();
  }

  /** Introspection only, so a linear scan instead of an index by id. */
  private findById(jobId: number): Job | undefined {
    return this.jobSlots.find((job) => job?.id === jobId);
  }

  private snapshot(job: Job): JobSnapshot {
    const deadline = this.deadlineOf(job);
    const { source, createdMs } = this.store.details(job.id);
    return {
      jobId: job.id,
      livekitRoom: job.room.name,
      identity: job.identity,
      state: job.state,
      source,
      serverName: job.server.name,
      delayTimeoutMs: job.delayMs,
      ...(job.sid !== undefined ? { sid: job.sid } : {}),
      ...(isLive(job.state) && deadline !== undefined ? { deadlineMs: deadline } : {}),
      createdAtMs: createdMs,
    };
  }

  // ---------------------------------------------------------------- the FSM

  /**
   * Maps a webhook to a signal by session. Only the current session's end is a disconnect; an
   * event for an older, unknown or already ended session says nothing about the identity now.
   */
  private classify(job: Job, s: ParticipantSignal): Signal {
    const { sid, joinedAtMs } = s.session;
    if (s.kind === 'joined') {
      if (sid === job.sid || sid === job.endedSid) return 'stale_session';
      const startedAt = joinedAtMs ?? s.createdAtMs;
      // A join older than the session we follow arrived late (out-of-order delivery).
      if (job.sinceMs !== undefined && startedAt !== undefined && startedAt < job.sinceMs) {
        return 'stale_session';
      }
      return 'joined';
    }
    if (sid === job.endedSid) return 'stale_session';
    const previousEnded = job.endedSid;
    job.endedSid = sid;
    const duplicate = s.disconnectReason === 'DUPLICATE_IDENTITY';
    if (job.sid === undefined || sid === job.sid) return duplicate ? 'left_unsure' : 'left';
    // A session newer than ours ended before we saw it join: ours is gone too, but an even newer
    // one may be present. Ask LiveKit instead of guessing.
    if (joinedAtMs !== undefined && job.sinceMs !== undefined && joinedAtMs > job.sinceMs) {
      return 'left_unsure';
    }
    // An old session's end is not worth forgetting a more relevant ended sid for.
    if (joinedAtMs !== undefined && job.sinceMs !== undefined) job.endedSid = previousEnded;
    return 'stale_session';
  }

  private signal(job: Job, signal: Signal, ctx: SignalContext = {}): void {
    const t = step(job.state, signal, this.fsmVariant);
    const from = job.state;
    if (!t) {
      this.log.debug({ room: job.room.name, identity: job.identity, state: from, signal }, 'signal ignored');
      return;
    }
    let dirty = false;
    if (t.to !== from) {
      this.enter(job, t.to);
      dirty = true;
    }
    for (const action of t.actions) if (this.runAction(job, action, ctx)) dirty = true;
    if (dirty) this.persist(job);
    this.observer.transition?.(from, t.to, signal);
    if (t.to !== from) {
      const fields = { room: job.room.name, identity: job.identity, from, to: t.to, signal };
      if (t.to === 'connected' || t.to === 'waiting') this.log.debug(fields, 'job state changed');
      else this.log.info(fields, 'job state changed');
    }
  }

  /** Bookkeeping common to every state change; the new state's own timers come from actions. */
  private enter(job: Job, to: JobState): void {
    const now = this.clock.now();
    const from = job.state;
    this.stateCounts[from]--;
    this.stateCounts[to]++;
    job.state = to;
    if (from !== 'leaving' || to !== 'sending') job.stateSince = now;
    job.epoch++;
    job.lookupTries = 0;
    job.flags &= ~FROM_CONNECTED;
    this.timers.cancel(this.key(job, TIMER_LOOKUP));
    // Between connected and leaving the delayed event must stay alive: its restart schedule
    // (timer, queue place, backoff) carries over.
    if (!isRestarting(from) || !isRestarting(to)) {
      job.tries = 0;
      job.flags &= ~QUEUED;
      this.timers.cancel(this.key(job, TIMER_ACTION));
    }
    if (to === 'connected') this.armRoomPoll(job.room);
    if (to === 'sending') {
      if (isRestarting(from)) job.flags |= FROM_CONNECTED;
      // A job that never connected has no known event deadline: keep trying for one delay
      // (at most maxWaitingMs); past that the homeserver has fired the event on its own.
      else this.setDeadline(job, now + this.sendBudget(job));
    }
    if (!isLive(to)) {
      this.timers.cancel(this.key(job, TIMER_DEADLINE));
      this.finished.push(job);
      if (!this.heap.has(PURGE_KEY)) this.schedulePurge();
    }
  }

  /** Runs one table action; returns whether persisted fields changed. */
  private runAction(job: Job, action: Action, ctx: SignalContext): boolean {
    const now = this.clock.now();
    switch (action) {
      case 'adopt': {
        const session = ctx.session;
        job.lookupTries = 0;
        if (!session || session.sid === job.sid) return false;
        job.sid = session.sid;
        job.sinceMs = session.joinedAtMs ?? ctx.atMs ?? now;
        job.epoch++;
        return true;
      }
      case 'lookup':
        job.lookupTries = 0;
        job.epoch++;
        this.timers.cancel(this.key(job, TIMER_LOOKUP));
        this.queueLookup(job);
        return false;
      case 'retryLookup':
        this.timers.schedule(this.key(job, TIMER_LOOKUP), now + this.backoff(job.lookupTries++));
        return false;
      case 'grace': {
        const until = now + this.settings.abortGraceMs;
        if (until >= (this.deadlineOf(job) ?? Infinity)) return false;
        this.setDeadline(job, until);
        return true;
      }
      case 'leaveGrace':
        this.timers.schedule(this.key(job, TIMER_LOOKUP), now + this.settings.disconnectGraceMs);
        return false;
      case 'armDeadline':
        // Our estimate only: the client scheduled the event before it joined.
        job.flags &= ~RESTARTED;
        this.setDeadline(job, now + job.delayMs);
        return true;
      case 'restart':
        this.queueRestart(job);
        return false;
      case 'scheduleRestart': {
        job.tries = 0;
        job.server.pauseTries = 0;
        job.flags |= RESTARTED;
        this.setDeadline(job, now + job.delayMs);
        this.timers.schedule(this.key(job, TIMER_ACTION), this.nextRestartAfter(job, now));
        return true;
      }
      case 'backoffRestart':
      case 'backoffSend':
        this.timers.schedule(this.key(job, TIMER_ACTION), now + this.backoff(job.tries++));
        return false;
      case 'pauseRestarts':
        this.timers.schedule(this.key(job, TIMER_ACTION), this.pause(job.server, ctx.retryAfterMs));
        return false;
      case 'retryAfterSend': {
        this.pause(job.server, ctx.retryAfterMs);
        const wait = ctx.retryAfterMs ?? this.backoff(job.tries++);
        this.timers.schedule(this.key(job, TIMER_ACTION), now + wait);
        return false;
      }
      case 'send':
        this.perform(job, 'send');
        return false;
    }
  }

  // ---------------------------------------------------------------- restarts and sends

  /** When the next periodic restart is due after one that succeeded at `restartedAt`. */
  private nextRestartAfter(job: Job, restartedAt: number): number {
    const period = this.settings.restartFraction * job.delayMs;
    return restartedAt + Math.round(period * (1 - RESTART_JITTER * this.random()));
  }

  /** From when a restart may no longer wait for the pacing (see URGENT_FRACTION). */
  private urgentAt(job: Job, now: number): number {
    const window = Math.max(URGENT_FRACTION * job.delayMs, URGENT_MIN_MS);
    return (this.deadlineOf(job) ?? now) - window;
  }

  /**
   * Queues a restart behind the homeserver's pacing, or starts it at once when its deadline is
   * near. A queued restart keeps a timer for the moment it becomes urgent, so however long the
   * queue (restart demand above `pacing`), no restart waits in it past that point. Restarts in
   * flight per homeserver are capped, so a burst (a restore, a raised pacing) holds its jobs
   * here instead of as pending requests; an urgent restart that finds no free slot goes ahead of
   * every paced one and takes the next slot that frees (each is freed within one request timeout).
   */
  private queueRestart(job: Job): void {
    if (job.flags & IN_FLIGHT) return;
    const now = this.clock.now();
    const hs = job.server;
    const urgentAt = this.urgentAt(job, now);
    if (urgentAt <= now) {
      if (hs.pausedUntil > now) {
        // The homeserver asked us to back off (429): honour it, then go ahead of the queue.
        this.timers.schedule(this.key(job, TIMER_ACTION), hs.pausedUntil);
        return;
      }
      this.timers.cancel(this.key(job, TIMER_ACTION));
      if (hs.restartsInFlight < this.settings.maxRestartsInFlight) {
        // Its place in a queue, if any, is skipped by the drain once the flags are gone.
        job.flags &= ~QUEUED;
        this.perform(job, 'restart');
      } else if (!(job.flags & URGENT_QUEUED)) {
        job.flags |= URGENT_QUEUED;
        hs.urgent.push(job);
      }
      return;
    }
    if (!(job.flags & RESTART_QUEUED)) {
      job.flags |= RESTART_QUEUED;
      hs.queue.push(job);
    }
    this.timers.schedule(this.key(job, TIMER_ACTION), urgentAt);
    this.drainRestarts(hs);
  }

  /**
   * Starts the homeserver's queued restarts while it has free in-flight slots: urgent ones first
   * and unpaced, then paced ones as fast as the pacing allows; a 429 pause holds back both.
   * A freed slot (see performed) drains again.
   */
  private drainRestarts(hs: Homeserver): void {
    const now = this.clock.now();
    for (;;) {
      const urgent = this.nextQueued(hs.urgent, URGENT_QUEUED);
      const job = urgent ?? this.nextQueued(hs.queue, RESTART_QUEUED);
      if (!job || hs.restartsInFlight >= this.settings.maxRestartsInFlight) return;
      if (hs.pausedUntil > now) {
        this.heap.schedule(PACER_KEY_BASE - hs.index, hs.pausedUntil);
        return;
      }
      if (!urgent) {
        const verdict = this.pacer.take(hs.name);
        if (!verdict.ok) {
          this.heap.schedule(PACER_KEY_BASE - hs.index, now + verdict.retryAfterMs);
          return;
        }
      }
      (urgent ? hs.urgent : hs.queue).shift();
      job.flags &= ~QUEUED;
      // Its urgency timer is moot; the restart's outcome sets the next one.
      this.timers.cancel(this.key(job, TIMER_ACTION));
      this.perform(job, 'restart');
    }
  }

  /** The queue's first job still waiting for a restart; drops entries that went stale. */
  private nextQueued(queue: Fifo<Job>, flag: number): Job | undefined {
    for (let job = queue.peek(); job; job = queue.peek()) {
      if (isRestarting(job.state) && job.flags & flag) return job;
      queue.shift();
    }
    return undefined;
  }

  /** Pauses the homeserver's restarts (429 is back-pressure); returns when they resume. */
  private pause(hs: Homeserver, retryAfterMs: number | undefined): number {
    const until = this.clock.now() + (retryAfterMs ?? this.backoff(hs.pauseTries++));
    if (until > hs.pausedUntil) hs.pausedUntil = until;
    return hs.pausedUntil;
  }

  private perform(job: Job, action: DelayedAction): void {
    job.flags |= IN_FLIGHT;
    if (action === 'restart') job.server.restartsInFlight++;
    const started = this.clock.now();
    let pending: Promise<ActionOutcome>;
    try {
      pending = this.actions.perform(action, { serverName: job.server.name, ...this.store.target(job.id) });
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending
      .catch((err: unknown): ActionOutcome => ({ kind: 'transient', detail: describeError(err) }))
      .then((outcome) => this.performed(job, action, outcome, started))
      .catch((err: unknown) => this.log.error({ err }, 'job engine failed to apply an outcome'));
  }

  private performed(job: Job, action: DelayedAction, outcome: ActionOutcome, started: number): void {
    job.flags &= ~IN_FLIGHT;
    if (action === 'restart') job.server.restartsInFlight--;
    if (this.stopped) return;
    const now = this.clock.now();
    this.observer.action?.(action, outcome.kind, now - started);
    if (outcome.kind === 'transient' || outcome.kind === 'unresolvable') {
      // The detail may quote a URL with the delay id in it: debug only.
      this.log.debug(
        {
          room: job.room.name,
          identity: job.identity,
          action,
          outcome: outcome.kind,
          detail: outcome.detail,
        },
        'delayed event call failed',
      );
    }
    const done = outcome.kind === 'ok' || outcome.kind === 'not_found';
    if (action === 'send' && done && job.state === 'sending' && job.flags & FROM_CONNECTED) {
      this.observer.disconnectToSend?.(now - job.stateSince);
    }
    const ctx: SignalContext =
      outcome.kind === 'rate_limited' && outcome.retryAfterMs !== undefined
        ? { retryAfterMs: outcome.retryAfterMs }
        : {};
    this.signal(job, outcomeSignal(action, outcome), ctx);
    if (action === 'restart') this.drainRestarts(job.server);
  }

  // ---------------------------------------------------------------- presence lookups

  private queueLookup(job: Job): void {
    job.lookupEpoch = job.epoch;
    if (job.flags & LOOKUP_QUEUED) return;
    job.flags |= LOOKUP_QUEUED;
    const room = job.room;
    room.batch.push(job);
    if (!room.ready && !room.busy) {
      room.ready = true;
      this.readyRooms.push(room);
    }
    this.scheduleLookupPump();
  }

  /** Lookups asked for in the same tick share one listParticipants per room. */
  private scheduleLookupPump(): void {
    if (this.lookupPumpScheduled || this.stopped) return;
    this.lookupPumpScheduled = true;
    setImmediate(() => {
      this.lookupPumpScheduled = false;
      this.pumpLookups();
    });
  }

  private pumpLookups(): void {
    while (!this.stopped && this.lookupsInFlight < MAX_LOOKUPS_IN_FLIGHT) {
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
      this.lookupsInFlight++;
      const started = this.clock.now();
      let pending: Promise<ParticipantSession[]>;
      try {
        pending = this.presence.listParticipants(room.name);
      } catch (err) {
        pending = Promise.reject(err);
      }
      pending
        .then(
          (sessions) => this.lookedUp(room, jobs, epochs, started, sessions, undefined),
          (err: unknown) => this.lookedUp(room, jobs, epochs, started, undefined, err),
        )
        .catch((err: unknown) => this.log.error({ err }, 'job engine failed to apply a lookup'));
    }
  }

  private lookedUp(
    room: Room,
    jobs: Job[],
    epochs: number[],
    started: number,
    sessions: ParticipantSession[] | undefined,
    err: unknown,
  ): void {
    this.lookupsInFlight--;
    room.busy = false;
    if (this.stopped) return;
    this.observer.lookup?.(sessions ? 'ok' : 'failed', this.clock.now() - started);
    if (room.batch.length > 0 && !room.ready) {
      room.ready = true;
      this.readyRooms.push(room);
    }
    if (!sessions) {
      // Debug only: in a LiveKit outage this repeats per room and backoff; the metric shows it.
      this.log.debug({ room: room.name, err: describeError(err) }, 'participant lookup failed');
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
      if (!sessions) return this.signal(job, 'lookup_failed');
      const session = this.pickSession(job, byIdentity.get(job.identity));
      if (session) this.signal(job, 'present', { session });
      else this.signal(job, 'absent');
    });
    this.pumpLookups();
    this.forgetRoomIfIdle(room);
  }

  /** The job's current session if listed, else the newest one not known to have ended. */
  private pickSession(job: Job, sessions: ParticipantSession[] | undefined): ParticipantSession | undefined {
    let best: ParticipantSession | undefined;
    for (const s of sessions ?? []) {
      if (s.sid === job.endedSid) continue;
      if (s.sid === job.sid) return s;
      if (!best || (s.joinedAtMs ?? 0) > (best.joinedAtMs ?? 0)) best = s;
    }
    return best;
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
  private armRoomPoll(room: Room): void {
    if (this.settings.sanityCheckIntervalMs <= 0 || room.polled) return;
    room.polled = true;
    this.enqueuePoll(room);
  }

  private enqueuePoll(room: Room): void {
    const step = 1000 / this.settings.sanityCheckMaxPerSecond;
    room.pollDue = Math.max(this.clock.now() + this.settings.sanityCheckIntervalMs, this.lastPollDue + step);
    this.lastPollDue = room.pollDue;
    this.pollQueue.push(room);
    if (this.pollQueue.length === 1) this.schedulePollTick(room.pollDue);
  }

  private schedulePollTick(due: number): void {
    this.heap.schedule(POLL_KEY, Math.ceil(due / POLL_TICK_MS) * POLL_TICK_MS);
  }

  /** Polls every room now due; each room's connected jobs share one request. */
  private pollDueRooms(): void {
    const now = this.clock.now();
    for (let room = this.pollQueue.peek(); room && room.pollDue <= now; room = this.pollQueue.peek()) {
      this.pollQueue.shift();
      // A forgotten room's entry is stale; the room may exist again as a new object.
      if (this.rooms.get(room.name) !== room) continue;
      let polled = false;
      for (const job of room.jobs.values()) {
        if (job.state !== 'connected') continue;
        this.queueLookup(job);
        polled = true;
      }
      if (polled) this.enqueuePoll(room);
      else room.polled = false;
    }
    const next = this.pollQueue.peek();
    if (next) this.schedulePollTick(next.pollDue);
  }

  // ---------------------------------------------------------------- timers, store, restore

  private key(job: Job, timer: number): number {
    return job.slot * TIMERS + timer;
  }

  /** Waiting: the wait's end; other live states: the delayed event's deadline (heap-only). */
  private deadlineOf(job: Job): number | undefined {
    return this.timers.dueOf(this.key(job, TIMER_DEADLINE));
  }

  private setDeadline(job: Job, at: number): void {
    this.timers.schedule(this.key(job, TIMER_DEADLINE), at);
  }

  private onDue(key: number): void {
    if (this.stopped) return;
    if (key === PURGE_KEY) return this.purge();
    if (key === POLL_KEY) return this.pollDueRooms();
    const hs = this.serversByIndex[PACER_KEY_BASE - key];
    if (hs) this.drainRestarts(hs);
  }

  private onJobTimer(key: number): void {
    if (this.stopped) return;
    const job = this.jobSlots[Math.floor(key / TIMERS)];
    if (!job) return;
    const timer = key % TIMERS;
    const signal =
      timer === TIMER_DEADLINE ? 'deadline' : timer === TIMER_ACTION ? 'action_due' : 'lookup_due';
    this.signal(job, signal);
  }

  private backoff(attempt: number): number {
    const { initialMs, factor, maxMs, jitter } = this.settings.backoff;
    const base = Math.min(maxMs, initialMs * factor ** attempt);
    return Math.max(0, Math.round(base * (1 + jitter * (2 * this.random() - 1))));
  }

  private sendBudget(job: Job): number {
    return Math.min(job.delayMs, this.settings.maxWaitingMs);
  }

  /**
   * Marks the job's progress for the next commit. What is committed when:
   * - a delegation: before delegate() resolves, so before the client's reply (see delegate);
   * - progress (state, session, deadline): all jobs changed during one event-loop turn are
   *   written in one statement batch, one savepoint and one commit at the end of that turn, each
   *   job once with its latest state, however often it changed.
   * No effect waits for a progress commit, because every effect is safe to repeat after a crash
   * loses the last turn's progress: a lost `sending` restores as connected/leaving, is reconciled
   * with LiveKit and sends again (a repeated send answers 404, which counts as done); a lost
   * restart success restores with the older deadline and only restarts earlier than needed; a lost
   * `sent` or `expired` sends once more and gets 404. So a send may go out in the same turn its
   * state is queued, and sends stay at most once at the homeserver.
   *
   * For the same reason a progress commit does not wait for its fsync (see commitProgress).
   */
  private persist(job: Job): void {
    if (this.stopped || job.flags & PERSIST_QUEUED) return;
    job.flags |= PERSIST_QUEUED;
    this.dirty.push(job);
    if (this.dirty.length > 1) return;
    setImmediate(() => this.commitProgress());
  }

  /**
   * Commits the turn's progress with synchronous=NORMAL: in WAL mode that survives a crash or
   * kill -9 of the agent (the pages are in the OS already) and skips only the fsync, so a power
   * loss may undo the last progress commits (safe, see persist) but never a delegation: the next
   * FULL commit (a delegation, a purge) or checkpoint syncs the WAL, and the WAL keeps commit
   * order. A mass disconnect commits progress every turn, and the fsync per turn blocked the
   * event loop longer than everything else the agent does for a webhook.
   */
  private commitProgress(): void {
    if (this.dirty.length === 0) return;
    this.progressPragmas?.skipFsync.run();
    try {
      transaction(this.db, () => this.writeDirty());
    } catch (err) {
      this.log.error({ err }, 'job store write failed');
    } finally {
      this.progressPragmas?.restore.run();
    }
  }

  /** Runs inside the group commit: the latest progress of every job marked since the last one. */
  private writeDirty(): void {
    const jobs = this.dirty;
    this.dirty = [];
    // Cleared first: if the batch fails it is logged and dropped, and the next change re-marks.
    for (const job of jobs) job.flags &= ~PERSIST_QUEUED;
    for (const job of jobs) {
      this.store.update(job.id, {
        state: job.state,
        sid: job.sid,
        sinceMs: job.sinceMs,
        endedSid: job.endedSid,
        // Absent once finished: the stored one stays.
        deadlineMs: this.deadlineOf(job),
        restarted: (job.flags & RESTARTED) !== 0,
        changedMs: job.stateSince,
      });
    }
  }

  private schedulePurge(): void {
    const head = this.finished.peek();
    if (head) this.heap.schedule(PURGE_KEY, head.stateSince + this.settings.terminalRetentionMs);
    else this.heap.cancel(PURGE_KEY);
  }

  /** Forgets finished jobs older than the retention, in memory and in the store. */
  private purge(): void {
    const cutoff = this.clock.now() - this.settings.terminalRetentionMs;
    const ids: number[] = [];
    for (let job = this.finished.peek(); job && job.stateSince <= cutoff; job = this.finished.peek()) {
      this.finished.shift();
      ids.push(job.id);
      // A finished job has no timers left, so its slot is free for reuse.
      this.jobSlots[job.slot] = undefined;
      this.freeSlots.push(job.slot);
      this.stateCounts[job.state]--;
      if (job.room.jobs.get(job.identity) === job) job.room.jobs.delete(job.identity);
      this.forgetRoomIfIdle(job.room);
    }
    if (ids.length > 0) {
      this.writer
        .write(() => {
          for (const id of ids) this.store.delete(id);
        })
        .catch((err: unknown) => this.log.error({ err }, 'job purge failed'));
    }
    this.schedulePurge();
  }

  private register(job: Job): void {
    job.slot = this.freeSlots.pop() ?? this.jobSlots.length;
    this.jobSlots[job.slot] = job;
    this.stateCounts[job.state]++;
    const current = job.room.jobs.get(job.identity);
    if (!current || !isLive(current.state) || current === job) job.room.jobs.set(job.identity, job);
  }

  private jobFromRow(row: JobRow): Job {
    const job = new Job(
      row.id,
      this.roomOf(row.room),
      row.identity,
      row.delay_ms,
      this.serverOf(row.server_name),
    );
    job.state = row.state;
    job.sid = row.sid ?? undefined;
    job.sinceMs = row.since_ms ?? undefined;
    job.endedSid = row.ended_sid ?? undefined;
    job.stateSince = row.changed_ms;
    if (row.restarted) job.flags |= RESTARTED;
    return job;
  }

  /**
   * Puts a stored job back to work with the time it has left. A job whose delayed event ran out
   * while the agent was down lapses (expired, no call: the homeserver has sent the leave itself,
   * so a long outage does not end in a burst of pointless sends): a connected job past its
   * deadline, and a never-connected one past its delay counted from the delegation
   * (lk-jwt-service's rule). A wait that ran out before the delay did (delays over maxWaitingMs)
   * is reconciled with LiveKit for abortGraceMs before it sends; an interrupted send sends.
   *
   * A connected job keeps its stored deadline and restarts at its normal time (restartFraction of
   * the delay after the last successful restart, jittered), not at once: a restore of 100 k jobs
   * on one homeserver would otherwise queue 100 k restarts behind that homeserver's pacing, longer
   * than the delays themselves. Only restarts already due, and jobs whose deadline is merely our
   * estimate (no restart had succeeded yet), restart promptly. Reconciliation with LiveKit is
   * immediate (one lookup per room for all its jobs).
   */
  private restore(job: Job, row: JobRow, now: number): void {
    const deadline = row.deadline_ms;
    this.register(job);
    if (!isLive(job.state)) {
      this.finished.push(job);
      return;
    }
    switch (job.state) {
      case 'waiting':
        if (row.created_ms + job.delayMs <= now) return this.signal(job, 'lapsed');
        this.setDeadline(job, deadline > now ? deadline : now + this.settings.abortGraceMs);
        this.runAction(job, 'lookup', {});
        return;
      // A job restored in its disconnect grace is reconciled like a connected one; the lookup's
      // answer ends the grace (the grace itself most likely passed while the agent was down).
      case 'connected':
      case 'leaving':
        if (deadline <= now) return this.signal(job, 'lapsed');
        this.setDeadline(job, deadline);
        if (job.state === 'connected') this.armRoomPoll(job.room);
        this.resumeRestarts(job, deadline, now);
        // Meanwhile ask LiveKit whether the participant is still there.
        this.runAction(job, 'lookup', {});
        return;
      case 'sending':
        this.setDeadline(job, deadline > now ? deadline : now + this.sendBudget(job));
        if (deadline <= now) this.persist(job);
        this.runAction(job, 'send', {});
        return;
    }
  }

  /** A restored job's next restart: at its normal time if the stored deadline is confirmed. */
  private resumeRestarts(job: Job, deadline: number, now: number): void {
    const due = job.flags & RESTARTED ? this.nextRestartAfter(job, deadline - job.delayMs) : now;
    if (due > now) this.timers.schedule(this.key(job, TIMER_ACTION), due);
    else this.runAction(job, 'restart', {});
  }

  private roomOf(name: string): Room {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name);
      this.rooms.set(name, room);
    }
    return room;
  }

  private forgetRoomIfIdle(room: Room): void {
    if (room.jobs.size === 0 && room.batch.length === 0 && !room.busy && !room.ready) {
      if (this.rooms.get(room.name) !== room) return;
      this.rooms.delete(room.name);
    }
  }

  private serverOf(name: string): Homeserver {
    let hs = this.servers.get(name);
    if (!hs) {
      hs = new Homeserver(name, this.serversByIndex.length);
      this.servers.set(name, hs);
      this.serversByIndex.push(hs);
    }
    return hs;
  }
}
