/**
 * The job engine: it drives each job's FSM (fsm.ts). Everything that happens to a job arrives as
 * a signal and every side effect is one of the table's actions, so this file is the plumbing
 * between them: classifying webhooks by session, one timer heap for every due time, persisting
 * each change, restoring jobs. Its parts: restart pacing per homeserver (pacing.ts), presence
 * lookups and the sanity poll (presence.ts), the in-memory model (model.ts) and a store it only
 * knows by its interface (store.ts).
 *
 * Memory: a job is one small object of scalars and shared references (its room and homeserver are
 * interned), at most three entries in a typed-array timer heap, one slot in a dense array, and no
 * closures while it is idle. What only diagnostics and the homeserver calls need (source, creation
 * time, delay id, scoped token) stays in the store, and the deadline lives in the timer heap only.
 * About 360 bytes per connected job, strings included (test/agent/jobs/memory.measure.ts).
 */
import type { Logger } from 'pino';

import { fail } from '../../lib/errors.js';
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
} from '../contracts.js';
import { Fifo } from './fifo.js';
import {
  type Action,
  type FsmCell,
  type FsmVariant,
  fsmTable,
  isActive,
  isLive,
  isRestarting,
  JOB_STATES,
  renderFsmMarkdown,
  type Signal,
  step,
} from './fsm.js';
import type { EngineObserver, EngineOptions, EngineSettings, JobSnapshot, Ownership, StoreOperation } from './index.js';
import {
  EVICTED,
  FROM_CONNECTED,
  type Homeserver,
  IN_FLIGHT,
  Job,
  type JobTimers,
  PERSIST_QUEUED,
  RESTARTED,
  Room,
  TIMER_ACTION,
  TIMER_DEADLINE,
  TIMER_LOOKUP,
  TIMERS,
} from './model.js';
import { type PacingCounts, RestartPacing } from './pacing.js';
import { PresenceTracker } from './presence.js';
import type { JobRef, JobRow, JobStore } from './store.js';

/**
 * The engine's own timers live in `heap`, keyed by negative numbers: the purge, the sanity poll,
 * and one pacer wake-up per homeserver (PACER_KEY_BASE − index). Per-job timers live in `timers`
 * (see model.ts).
 */
const PURGE_KEY = -2;
const POLL_KEY = -3;
const PACER_KEY_BASE = -16;

/** Restarts come due up to this fraction early, so jobs created together drift apart. */
const RESTART_JITTER = 0.05;

/** What a signal carries besides its name. */
export interface SignalContext {
  session?: ParticipantSession;
  /** When the signal happened according to its source (webhook createdAt). */
  atMs?: number;
  retryAfterMs?: number;
}

/**
 * How a call ended, as performed() sees it: the homeserver's answer, or `unneeded` for a cancel
 * that was not made because the key's newer job carries the same delay id.
 */
type Performed = ActionOutcome | { kind: 'unneeded' };

function outcomeSignal(action: DelayedAction, outcome: Performed): Signal {
  if (action === 'cancel') {
    switch (outcome.kind) {
      case 'ok':
        return 'cancel_ok';
      case 'not_found':
        return 'cancel_not_found';
      case 'unneeded':
        return 'cancel_unneeded';
      case 'rate_limited':
        return 'cancel_rate_limited';
      default:
        // As for sends: a passing DNS or .well-known failure must not leave the event scheduled;
        // the deadline bounds the retries.
        return 'cancel_failed';
    }
  }
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
  private readonly store: JobStore;
  private readonly ownership: Ownership | undefined;
  private readonly heap: TimerHeap<number>;
  private readonly timers: TimerHeap<number>;
  private readonly jobTimers: JobTimers;
  private readonly pacing: RestartPacing;
  private readonly presence: PresenceTracker;
  private readonly rooms = new Map<string, Room>();
  /**
   * Every job in memory (live or retained), by slot: a dense array whose free slots are reused,
   * so a timer finds its job without a Map entry per job.
   */
  private readonly jobSlots: Array<Job | undefined> = [];
  private readonly freeSlots: number[] = [];
  /** Finished jobs in the order they finished; retention is constant, so this is purge order. */
  private readonly finished = new Fifo<Job>();
  /**
   * Replaced jobs still cancelling their delayed event, by id. They are in no key's place (the
   * key's job is their replacement), so this is how a repeated restore recognises them.
   */
  private readonly cancelling = new Map<number, Job>();
  private readonly stateCounts = Object.fromEntries(JOB_STATES.map((s) => [s, 0])) as Record<
    JobState,
    number
  >;
  private readonly fsmVariant: FsmVariant;
  /** Jobs whose progress changed this turn; written together in one commit (see commitProgress). */
  private dirty: Job[] = [];
  /** The progress write in flight, so stop() can wait for it. */
  private writing: Promise<void> = Promise.resolve();
  private started = false;
  private stopped = false;

  constructor(opts: EngineOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.log = opts.log;
    this.settings = opts.settings;
    this.observer = opts.observer ?? {};
    this.actions = opts.actions;
    this.store = opts.store;
    this.ownership = opts.ownership;
    this.heap = new TimerHeap<number>((key) => this.onDue(key), this.clock);
    this.timers = new TimerHeap<number>((key) => this.onJobTimer(key), this.clock, new IntKeyIndex());
    const key = (job: Job, timer: number) => job.slot * TIMERS + timer;
    this.jobTimers = {
      schedule: (job, timer, at) => this.timers.schedule(key(job, timer), at),
      cancel: (job, timer) => this.timers.cancel(key(job, timer)),
      dueOf: (job, timer) => this.timers.dueOf(key(job, timer)),
    };
    this.pacing = new RestartPacing({
      clock: this.clock,
      pacing: this.settings.pacing,
      maxInFlight: this.settings.maxRestartsInFlight,
      timers: this.jobTimers,
      wakeAt: (hs, at) => this.heap.schedule(PACER_KEY_BASE - hs.index, at),
      perform: (job) => this.perform(job, 'restart'),
      backoff: (attempt) => this.backoff(attempt),
    });
    this.presence = new PresenceTracker({
      clock: this.clock,
      presence: opts.presence,
      log: this.log,
      sanityCheckIntervalMs: this.settings.sanityCheckIntervalMs,
      sanityCheckMaxPerSecond: this.settings.sanityCheckMaxPerSecond,
      wakeAt: (at) => this.heap.schedule(POLL_KEY, at),
      deliver: (job, signal, session) => this.signal(job, signal, session ? { session } : {}),
      isCurrent: (room) => this.rooms.get(room.name) === room,
      forgetIfIdle: (room) => this.forgetRoomIfIdle(room),
      isStopped: () => this.stopped,
      ...(this.observer.lookup ? { observe: this.observer.lookup } : {}),
    });
    this.fsmVariant = { disconnectGrace: this.settings.disconnectGraceMs > 0 };
  }

  // ---------------------------------------------------------------- public API

  async delegate(d: Delegation): Promise<void> {
    const { id, now, waitUntil } = await this.record(d);
    // Committed: a stopped engine leaves the job to the next start().
    if (this.stopped) return;
    const job = new Job(id, this.roomOf(d.livekitRoom), d.identity, d.delayTimeoutMs, this.pacing.homeserver(d.serverName));
    job.stateSince = now;
    this.take(job, waitUntil, now);
  }

  /**
   * Stores a delegation durably without taking it up: delegate() takes it up next; in cluster mode
   * the store announces it to the owner of its partition, which takes it up with accept().
   */
  async record(d: Delegation): Promise<{ id: number; now: number; waitUntil: number }> {
    if (this.stopped) throw fail.unavailable('The delegate agent is shutting down');
    if (!Number.isSafeInteger(d.delayTimeoutMs) || d.delayTimeoutMs <= 0) {
      throw fail.badJson('delay_timeout must be a positive integer');
    }
    const now = this.clock.now();
    const waitUntil = now + Math.min(this.settings.maxWaitingMs, d.delayTimeoutMs);
    const id = await this.timedWrite('insert', () => this.store.insert(d, waitUntil, now));
    return { id, now, waitUntil };
  }

  /**
   * A delegation committed elsewhere (cluster mode: by any replica, handed to this partition's
   * owner through its inbox), taken up as delegate() takes up its own once committed. Ids only
   * grow, so a repeated one (an inbox replayed after a takeover) or one older than the key's
   * current job changes nothing.
   */
  accept(row: JobRow): void {
    if (this.stopped) return;
    const current = this.rooms.get(row.room)?.jobs.get(row.identity);
    if (current && current.id >= row.id) return;
    const now = this.clock.now();
    // One committed long before it was taken up (a backlog after an outage) may have lapsed.
    if (row.created_ms + row.delay_ms <= now) return this.adopt([row]);
    const job = this.jobFromRow(row);
    this.take(job, row.deadline_ms, now);
  }

  /**
   * Jobs restored from the store, with the time they have left (see restore): all of them at
   * start(), or one partition's when this replica takes it over.
   */
  adopt(rows: readonly JobRow[]): void {
    const now = this.clock.now();
    for (const row of rows) {
      // Not the key's job, whatever the key holds now: its cancel is still owed.
      if (row.state === 'cancelling') {
        if (!this.cancelling.has(row.id)) this.restore(this.jobFromRow(row), row, now);
        continue;
      }
      const current = this.rooms.get(row.room)?.jobs.get(row.identity);
      if (current && current.id >= row.id) continue;
      // A store without a unique index (Redis) may hold a key's replacement before the job it
      // replaced was marked: the newer one wins and the older one cancels, as when it was taken up.
      if (current && isLive(current.state) && isLive(row.state)) this.signal(current, 'replace');
      this.restore(this.jobFromRow(row), row, now);
    }
  }

  /**
   * Drops the jobs of the given partitions from memory, without writing anything: another replica
   * owns them now, or will once their lease runs out. Calls in flight for them are ignored when
   * they answer.
   */
  evict(partitions: ReadonlySet<number>): number {
    let evicted = 0;
    for (const job of this.jobSlots) {
      if (!job || !partitions.has(job.room.partition)) continue;
      for (const timer of [TIMER_DEADLINE, TIMER_ACTION, TIMER_LOOKUP]) this.jobTimers.cancel(job, timer);
      this.pacing.unqueue(job);
      job.flags = (job.flags & IN_FLIGHT) | EVICTED;
      job.epoch++;
      this.cancelling.delete(job.id);
      this.jobSlots[job.slot] = undefined;
      this.freeSlots.push(job.slot);
      this.stateCounts[job.state]--;
      if (job.room.jobs.get(job.identity) === job) job.room.jobs.delete(job.identity);
      this.forgetRoomIfIdle(job.room);
      evicted++;
    }
    return evicted;
  }

  /** A new job's first steps: it replaces the key's live job and looks for its participant. */
  private take(job: Job, waitUntil: number, now: number): void {
    const old = job.room.jobs.get(job.identity);
    let inherited: ParticipantSession | undefined;
    if (old) {
      job.endedSid = old.endedSid;
      if (old.state === 'connected' && old.sid !== undefined) {
        inherited = { identity: old.identity, sid: old.sid, joinedAtMs: old.sinceMs };
      }
      if (isLive(old.state)) this.signal(old, 'replace');
    }
    this.register(job);
    this.log.debug({ room: job.room.name, identity: job.identity, replaced: old !== undefined }, 'delegation accepted');
    // A wait that already ran out (a delegation taken up late) gets the abort grace to turn up.
    this.setDeadline(job, waitUntil > now ? waitUntil : now + this.settings.abortGraceMs);
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
    // Delegations accepted before start() are already in memory.
    const known = new Set(this.jobSlots.map((job) => job?.id));
    const rows = (await this.store.loadAll()).filter((row) => !known.has(row.id));
    this.adopt(rows);
    this.purge();
    this.log.info({ restored: rows.length, ...this.counts() }, 'job engine started');
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.heap.stop();
    this.timers.stop();
    this.commitProgress();
    await this.writing;
    await this.store.close();
    this.log.info({ ...this.counts() }, 'job engine stopped');
  }

  /** Writes the progress pending now and waits for it (before a partition is handed over). */
  async flush(): Promise<void> {
    this.commitProgress();
    await this.writing;
  }

  counts(): Record<JobState, number> {
    return { ...this.stateCounts };
  }

  /** The restart pacing of every homeserver together (for the metrics). */
  pacingCounts(): PacingCounts {
    return this.pacing.counts();
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
    const details = this.store.details(job.id);
    return {
      jobId: job.id,
      livekitRoom: job.room.name,
      identity: job.identity,
      state: job.state,
      serverName: job.server.name,
      delayTimeoutMs: job.delayMs,
      ...(job.sid !== undefined ? { sid: job.sid } : {}),
      ...(isActive(job.state) && deadline !== undefined ? { deadlineMs: deadline } : {}),
      ...(details ? { source: details.source, createdAtMs: details.createdMs } : {}),
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
    this.jobTimers.cancel(job, TIMER_LOOKUP);
    // Between connected and leaving the delayed event must stay alive: its restart schedule
    // (timer, queue place, backoff) carries over.
    if (!isRestarting(from) || !isRestarting(to)) {
      job.tries = 0;
      this.pacing.unqueue(job);
      this.jobTimers.cancel(job, TIMER_ACTION);
    }
    if (to === 'connected') this.presence.armPoll(job.room);
    if (to === 'sending') {
      if (isRestarting(from)) job.flags |= FROM_CONNECTED;
      // A job that never connected has no known event deadline: keep trying for one delay
      // (at most maxWaitingMs); past that the homeserver has fired the event on its own.
      else this.setDeadline(job, now + this.sendBudget(job));
    }
    // Out of connected, leaving or sending the deadline stays what it was (the event's, or the
    // send's budget); a job that was still waiting gets the budget a send would.
    if (to === 'cancelling') {
      this.cancelling.set(job.id, job);
      if (from === 'waiting') this.setDeadline(job, now + this.sendBudget(job));
    }
    if (from === 'cancelling') this.cancelling.delete(job.id);
    if (!isActive(to)) {
      this.jobTimers.cancel(job, TIMER_DEADLINE);
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
        this.jobTimers.cancel(job, TIMER_LOOKUP);
        this.presence.lookup(job);
        return false;
      case 'retryLookup':
        this.jobTimers.schedule(job, TIMER_LOOKUP, now + this.backoff(job.lookupTries++));
        return false;
      case 'grace': {
        const until = now + this.settings.abortGraceMs;
        if (until >= (this.deadlineOf(job) ?? Infinity)) return false;
        this.setDeadline(job, until);
        return true;
      }
      case 'leaveGrace':
        this.jobTimers.schedule(job, TIMER_LOOKUP, now + this.settings.disconnectGraceMs);
        return false;
      case 'armDeadline':
        // Our estimate only: the client scheduled the event before it joined.
        job.flags &= ~RESTARTED;
        this.setDeadline(job, now + job.delayMs);
        return true;
      case 'restart':
        this.pacing.queue(job);
        return false;
      case 'scheduleRestart': {
        job.tries = 0;
        job.server.pauseTries = 0;
        job.flags |= RESTARTED;
        this.setDeadline(job, now + job.delayMs);
        this.jobTimers.schedule(job, TIMER_ACTION, this.nextRestartAfter(job, now));
        return true;
      }
      case 'backoffRestart':
      case 'backoffSend':
      case 'backoffCancel':
        this.jobTimers.schedule(job, TIMER_ACTION, now + this.backoff(job.tries++));
        return false;
      case 'pauseRestarts':
        this.jobTimers.schedule(job, TIMER_ACTION, this.pacing.pause(job.server, ctx.retryAfterMs));
        return false;
      case 'retryAfterSend':
      // Synapse counts cancels, restarts and sends in one management bucket.
      case 'retryAfterCancel': {
        this.pacing.pause(job.server, ctx.retryAfterMs);
        const wait = ctx.retryAfterMs ?? this.backoff(job.tries++);
        this.jobTimers.schedule(job, TIMER_ACTION, now + wait);
        return false;
      }
      case 'send':
        this.perform(job, 'send');
        return false;
      case 'cancel':
        this.perform(job, 'cancel');
        return false;
    }
  }

  // ---------------------------------------------------------------- restarts and sends

  /** When the next periodic restart is due after one that succeeded at `restartedAt`. */
  private nextRestartAfter(job: Job, restartedAt: number): number {
    const period = this.settings.restartFraction * job.delayMs;
    return restartedAt + Math.round(period * (1 - RESTART_JITTER * this.random()));
  }

  /** Starts a restart (through the pacing, which counts it in flight), a send or a cancel. */
  private perform(job: Job, action: DelayedAction): void {
    job.flags |= IN_FLIGHT;
    const started = this.clock.now();
    if (this.ownership && !this.ownership.mayAct(job.room.partition)) {
      // The lease is in doubt (a renewal late, Redis unreachable): act only once it is held
      // again, through the action's ordinary retry; if another replica took the partition over,
      // this job is evicted before then.
      const outcome: ActionOutcome = { kind: 'transient', detail: 'partition lease not held' };
      queueMicrotask(() => this.performed(job, action, outcome, started));
      return;
    }
    this.store
      .target({ id: job.id, room: job.room.name })
      .then(async (target): Promise<Performed> => {
        if (action === 'cancel' && (await this.keptByNewerJob(job, target.delayId))) return { kind: 'unneeded' };
        return this.actions.perform(action, { serverName: job.server.name, ...target });
      })
      .catch((err: unknown): ActionOutcome => ({ kind: 'transient', detail: describeError(err) }))
      .then((outcome) => this.performed(job, action, outcome, started))
      .catch((err: unknown) => this.log.error({ err }, 'job engine failed to apply an outcome'));
  }

  /**
   * Whether the key's current job (the replacement, or one newer still) carries this delay id: a
   * client that repeats its delegation (Element Call asks /sfu/get again on every reconnect) hands
   * over the same one, and cancelling it would leave the live membership without its hangup.
   * Asked when the cancel is made, not when the job was replaced, so it also holds after a
   * restore, and the delay ids stay in the store.
   */
  private async keptByNewerJob(job: Job, delayId: string): Promise<boolean> {
    const current = this.rooms.get(job.room.name)?.jobs.get(job.identity);
    if (!current || current === job) return false;
    const kept = await this.store.target({ id: current.id, room: current.room.name });
    return kept.delayId === delayId;
  }

  private performed(job: Job, action: DelayedAction, outcome: Performed, started: number): void {
    job.flags &= ~IN_FLIGHT;
    if (action === 'restart') this.pacing.release(job);
    if (this.stopped || job.flags & EVICTED) return;
    const now = this.clock.now();
    // No call was made for an unneeded cancel.
    if (outcome.kind !== 'unneeded') this.observer.action?.(action, outcome.kind, now - started);
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
    if (action === 'restart') this.pacing.drain(job.server);
  }

  // ---------------------------------------------------------------- timers, store, restore

  /** Waiting: the wait's end; other live states: the delayed event's deadline (heap-only). */
  private deadlineOf(job: Job): number | undefined {
    return this.jobTimers.dueOf(job, TIMER_DEADLINE);
  }

  private setDeadline(job: Job, at: number): void {
    this.jobTimers.schedule(job, TIMER_DEADLINE, at);
  }

  private onDue(key: number): void {
    if (this.stopped) return;
    if (key === PURGE_KEY) return this.purge();
    if (key === POLL_KEY) return this.presence.pollDueRooms();
    const hs: Homeserver | undefined = this.pacing.byIndex(PACER_KEY_BASE - key);
    if (hs) this.pacing.drain(hs);
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
   * - a delegation: before delegate() resolves, so before the client's reply (see delegate),
   *   together with the replaced job's duty to cancel (JobStore.insert; in cluster mode a restore
   *   that finds both jobs live replaces the older one again);
   * - progress (state, session, deadline): all jobs changed during one event-loop turn are
   *   written in one statement batch, one savepoint and one commit at the end of that turn, each
   *   job once with its latest state, however often it changed.
   * No effect waits for a progress commit, because every effect is safe to repeat after a crash
   * loses the last turn's progress: a lost `sending` restores as connected/leaving, is reconciled
   * with LiveKit and sends again (a repeated send answers 404, which counts as done); a lost
   * restart success restores with the older deadline and only restarts earlier than needed; a lost
   * `sent` or `expired` sends once more and gets 404; a lost `replaced` cancels once more and gets
   * 404. So a send may go out in the same turn its state is queued, and sends stay at most once at
   * the homeserver.
   *
   * For the same reason a progress write need not be synced before the next one (see
   * JobStore.writeProgress).
   */
  private persist(job: Job): void {
    if (this.stopped || job.flags & PERSIST_QUEUED) return;
    job.flags |= PERSIST_QUEUED;
    this.dirty.push(job);
    if (this.dirty.length > 1) return;
    setImmediate(() => this.commitProgress());
  }

  /** Hands the latest progress of every job marked since the last commit to the store. */
  private commitProgress(): void {
    if (this.dirty.length === 0) return;
    const jobs = this.dirty;
    this.dirty = [];
    // Cleared first: if the write fails it is logged and dropped, and the next change re-marks.
    for (const job of jobs) job.flags &= ~PERSIST_QUEUED;
    const changes = jobs.map((job) => ({
      id: job.id,
      room: job.room.name,
      progress: {
        state: job.state,
        sid: job.sid,
        sinceMs: job.sinceMs,
        endedSid: job.endedSid,
        // Absent once finished: the stored one stays.
        deadlineMs: this.deadlineOf(job),
        restarted: (job.flags & RESTARTED) !== 0,
        changedMs: job.stateSince,
      },
    }));
    const previous = this.writing;
    this.writing = previous
      .then(() => this.timedWrite('progress', () => this.store.writeProgress(changes)))
      .catch((err: unknown) => this.log.error({ err }, 'job store write failed'));
  }

  /**
   * Runs a store write and reports how long it took to become durable or fail. Timed by
   * performance.now(), not the engine's clock: it measures the store's I/O, which an injected
   * clock does not see.
   */
  private async timedWrite<T>(operation: StoreOperation, write: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const result = await write();
      this.observer.storeCommit?.(operation, performance.now() - started, true);
      return result;
    } catch (err) {
      this.observer.storeCommit?.(operation, performance.now() - started, false);
      throw err;
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
    const gone: JobRef[] = [];
    for (let job = this.finished.peek(); job && job.stateSince <= cutoff; job = this.finished.peek()) {
      this.finished.shift();
      // Its partition went to another replica, which purges it.
      if (job.flags & EVICTED) continue;
      gone.push({ id: job.id, room: job.room.name });
      // A finished job has no timers left, so its slot is free for reuse.
      this.jobSlots[job.slot] = undefined;
      this.freeSlots.push(job.slot);
      this.stateCounts[job.state]--;
      if (job.room.jobs.get(job.identity) === job) job.room.jobs.delete(job.identity);
      this.forgetRoomIfIdle(job.room);
    }
    if (gone.length > 0) {
      this.timedWrite('remove', () => this.store.remove(gone)).catch((err: unknown) => this.log.error({ err }, 'job purge failed'));
    }
    this.schedulePurge();
  }

  /**
   * Gives the job a slot and, unless a live job holds it, its key's place. A restored cancelling
   * job takes only an empty place: it was replaced, so whatever holds the key is newer.
   */
  private register(job: Job): void {
    job.slot = this.freeSlots.pop() ?? this.jobSlots.length;
    this.jobSlots[job.slot] = job;
    this.stateCounts[job.state]++;
    if (job.state === 'cancelling') this.cancelling.set(job.id, job);
    const current = job.room.jobs.get(job.identity);
    const takesPlace = job.state === 'cancelling' ? !current : !current || !isLive(current.state);
    if (takesPlace || current === job) job.room.jobs.set(job.identity, job);
  }

  private jobFromRow(row: JobRow): Job {
    const job = new Job(
      row.id,
      this.roomOf(row.room),
      row.identity,
      row.delay_ms,
      this.pacing.homeserver(row.server_name),
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
    if (!isActive(job.state)) {
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
        if (job.state === 'connected') this.presence.armPoll(job.room);
        this.resumeRestarts(job, deadline, now);
        // Meanwhile ask LiveKit whether the participant is still there.
        this.runAction(job, 'lookup', {});
        return;
      case 'sending':
        this.setDeadline(job, deadline > now ? deadline : now + this.sendBudget(job));
        if (deadline <= now) this.persist(job);
        this.runAction(job, 'send', {});
        return;
      // Like an interrupted send, and not lapsed past its deadline: a cancel too many answers
      // 404, one too few ends a membership. Its stored deadline may also be the wait of the
      // waiting job it was when the store replaced it, if the crash came before its progress.
      case 'cancelling':
        this.setDeadline(job, deadline > now ? deadline : now + this.sendBudget(job));
        if (deadline <= now) this.persist(job);
        this.runAction(job, 'cancel', {});
        return;
    }
  }

  /** A restored job's next restart: at its normal time if the stored deadline is confirmed. */
  private resumeRestarts(job: Job, deadline: number, now: number): void {
    const due = job.flags & RESTARTED ? this.nextRestartAfter(job, deadline - job.delayMs) : now;
    if (due > now) this.jobTimers.schedule(job, TIMER_ACTION, due);
    else this.runAction(job, 'restart', {});
  }

  private roomOf(name: string): Room {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name, this.ownership?.partitionOf(name) ?? 0);
      this.rooms.set(name, room);
    }
    return room;
  }

  private forgetRoomIfIdle(room: Room): void {
    if (room.idle && this.rooms.get(room.name) === room) this.rooms.delete(room.name);
  }
}
