/**
 * The delayed-events scheduler: an in-memory mirror of the scheduled rows (the authority for every
 * decision, updated synchronously so concurrent requests never see a half-applied change), one
 * TimerHeap over their due times, and the SQLite store behind it.
 *
 * At-most-once sending: a send inserts the room event and finalises the row atomically
 * (`RoomEngine.sendEvent`'s `inTransaction`), and finalising only matches rows that are still
 * `scheduled`. Timed sends go out in batches: every event due in one turn (up to SENDS_PER_TURN,
 * or BATCH_BUDGET_MS of work) shares one transaction (`RoomEngine.batch`), each in a
 * savepoint of its own so a refused event is finalised as failed without touching the others. A
 * crash before the batch's commit leaves all of its rows scheduled and none of its events; a crash
 * after it leaves both. On start the still-scheduled overdue rows are sent in due order.
 */
import { createHash, randomBytes } from 'node:crypto';

import type { Logger } from 'pino';

import type { HomeserverConfig } from '../../config/homeserver.js';
import { CappedMap } from '../../lib/capped-map.js';
import { ERROR_KINDS, type ErrorKind, fail, isMatrixError, MatrixError, rateLimited } from '../../lib/errors.js';
import { bucketOf, RateLimiter } from '../../lib/rate-limit.js';
import { atomically, BatchWriter, type GatherOptions, transaction } from '../../lib/sqlite.js';
import { type Clock, TimerHeap } from '../../lib/timer-heap.js';
import type { DelayedEvents, Requester, RoomEngine } from '../contracts.js';
import { checkTypeAndKey, serialiseContent } from '../events.js';
import { randomToken } from '../ids.js';
import type { DelayedRow, DelayedStore, FinaliseCause, FinaliseFields } from './store.js';

/**
 * A delayed event that is still waiting to be sent. A million of these live in memory at once, so
 * the content stays in its stored, serialised form until the send, and the strings many events
 * share (user, device, room, type) are pooled (see `StringPool`).
 */
export interface ScheduledEvent {
  delayId: string;
  userId: string;
  deviceId: string | undefined;
  roomId: string;
  type: string;
  /** Present (possibly '') for state events. */
  stateKey: string | undefined;
  contentJson: string;
  delayMs: number;
  due: number;
  /** MSC4354: sent as a sticky event of this duration. */
  stickyDurationMs: number | undefined;
  /** False until the insert has committed; uncommitted rows are invisible to everything else. */
  committed: boolean;
}

export type DelayedAction = 'send' | 'cancel' | 'restart';

export type FinalStatus = Exclude<DelayedRow['status'], 'scheduled'>;

/** Hooks for metrics; every method is optional and must not throw. Told only of what committed. */
export interface DelayedObserver {
  /** A delayed event was scheduled (its row committed). */
  scheduled?(): void;
  /** `count` delayed events were finalised with this status and cause. */
  finalised?(status: FinalStatus, cause: FinaliseCause, count: number): void;
  /** A timed send committed this long after its due time (not the catch-up after a start). */
  timedSendLateness?(ms: number): void;
  /** A management request (restart, cancel, send) was answered with this outcome. */
  action?(action: DelayedAction, outcome: ActionOutcome): void;
}

/** How a management request ended, for the metrics: ok, or its error by HTTP status. */
export type ActionOutcome = 'ok' | 'not_found' | 'conflict' | 'rate_limited' | 'forbidden' | 'invalid' | 'error';

/**
 * The delayed state events at one (room, type, state_key). `owner` is their one owner, or undefined
 * once several users had events there (kept until the slot empties: only a shortcut).
 */
interface SlotEntry {
  owner: string | undefined;
  ids: Set<string>;
}

/** A due event waiting in the send queue; `catchUp` marks the backlog sent at start-up. */
interface DueItem {
  delayId: string;
  due: number;
  catchUp: boolean;
}

export type ScheduleRequest = Parameters<DelayedEvents['schedule']>[0];

/**
 * Most timed sends in one batch (one transaction) before yielding to the event loop, so HTTP stays
 * responsive when many fall due; BATCH_BUDGET_MS ends a batch early when its sends are slow. An
 * event falling due while a batch runs waits for it, so the budget bounds that lateness. The
 * catch-up at start-up runs before the server listens, so it fills its batches regardless of time:
 * fewer, fuller commits.
 */
export const SENDS_PER_TURN = 256;
/**
 * The catch-up's batches: nobody is waiting on the event loop yet, and a commit's cost is mostly
 * the index pages it rewrites (random delay and event ids touch a different page per event), so
 * fewer, larger commits write each page once per many events.
 */
const CATCH_UP_SENDS_PER_TURN = 4096;
const BATCH_BUDGET_MS = 4;
/** Most users whose finalised rows are counted in memory (see `finalisedCounts`). */
const MAX_COUNTED_USERS = 65_536;
/** How often expired finalised rows and scoped tokens are deleted. */
const SWEEP_EVERY_MS = 10 * 60 * 1000;
const SCOPED_TOKEN_PREFIX = 'lwst_';
const SCOPED_TOKEN_DEFAULT_TTL_MS = 24 * 3600 * 1000;
/** Most delay ids one scoped token may cover. */
export const SCOPED_TOKEN_MAX_IDS = 100;

/** The error recorded for the seed's state-cancellation rule (MSC text b8e317f0c). */
const CANCELLED_BY_STATE = fail.cancelledByStateUpdate('Cancelled by a state update of another user');

/** Thrown inside the send transaction when the row was finalised meanwhile: rolls the event back. */
class NoLongerScheduled extends Error {}

export interface EngineDeps {
  config: HomeserverConfig;
  store: DelayedStore;
  rooms: RoomEngine;
  clock: Clock;
  log: Logger;
  /** Lets commits of schedules and restarts wait briefly for more writers (see `BatchWriter`). */
  gather?: GatherOptions;
  observer?: DelayedObserver;
}

export class DelayedEngine {
  readonly store: DelayedStore;
  private readonly config: HomeserverConfig;
  private readonly rooms: RoomEngine;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly scheduled = new Map<string, ScheduledEvent>();
  private readonly strings = new StringPool();
  private readonly byUser = new Map<string, Set<string>>();
  /** (room, type, state_key) → delayed state events for the seed's state-cancellation rule. */
  private readonly bySlot = new Map<string, SlotEntry>();
  private readonly heap: TimerHeap<string>;
  private readonly writer: BatchWriter;
  private readonly scheduleLimiter: RateLimiter;
  private readonly sendLimiter: RateLimiter;
  private sweepHandle: unknown;
  private stopped = false;
  private finSeq: number;
  /** Due events waiting for their turn to be sent (FIFO = due order). */
  private dueQueue: DueItem[] = [];
  private dueHead = 0;
  /** The pending `setImmediate` of the next drain turn, if one is scheduled. */
  private drainHandle: NodeJS.Immediate | undefined;
  /** A drain turn is queued as a microtask (see `fire`). */
  private drainSoon = false;
  /** Resolved whenever the queue runs empty (or the engine stops), for `start()`. */
  private idleWaiters: Array<() => void> = [];
  private catchingUp = false;
  /**
   * While a batch is open: the users whose finalised history needs trimming as it ends (once per
   * batch), each with how many rows the batch finalised for them (NaN: not known, count again).
   */
  private pendingTrims: Map<string, number> | undefined;
  /**
   * Finalised rows per user as of the last commit, kept by the batches of timed sends: a user at
   * the cap then loses just their oldest rows, where `trimUser` walks past every kept one (a
   * tenth of the server's time at 1 700 timed sends a second). A count is either exact or
   * absent: every other write to a user's finalised rows forgets it, a failed batch or a prune
   * forgets them all, and the batch counts an absent one again inside its transaction.
   */
  private readonly finalisedCounts = new CappedMap<string, number>(MAX_COUNTED_USERS);
  private readonly observer: DelayedObserver;
  /**
   * While a batch is open: its finalisations (by status and cause) and its timed sends' due
   * times, told to the observer only once the batch has committed (a failed commit undid them).
   */
  private batchReport: { finalised: Map<string, number>; dueTimes: number[] } | undefined;

  constructor(deps: EngineDeps) {
    this.config = deps.config;
    this.store = deps.store;
    this.rooms = deps.rooms;
    this.clock = deps.clock;
    this.log = deps.log;
    this.observer = deps.observer ?? {};
    this.writer = new BatchWriter(this.store.db, deps.gather);
    this.finSeq = this.store.maxFinSeq();
    this.heap = new TimerHeap((delayId, due) => this.fire(delayId, due), this.clock);
    const limits = this.config.rate_limits;
    this.scheduleLimiter = new RateLimiter(bucketOf(limits.schedule), this.clock);
    this.sendLimiter = new RateLimiter(bucketOf(limits.send), this.clock);
    this.rooms.onStateEvent((ev) => this.onStateEvent(ev));
  }

  /**
   * Loads the schedule, sends everything overdue in due order (resolving once that backlog is
   * sent, so a server listens only after catching up), and leaves the timer armed.
   */
  async start(): Promise<void> {
    this.prune();
    for (const row of this.store.loadScheduled()) {
      const ev = fromRow(row, this.strings);
      this.remember(ev);
      this.heap.schedule(ev.delayId, ev.due);
    }
    this.log.info({ scheduled: this.scheduled.size }, 'delayed events loaded');
    this.catchingUp = true;
    try {
      this.heap.runDue();
    } finally {
      this.catchingUp = false;
    }
    this.armSweep();
    await this.idle();
  }

  stop(): void {
    this.stopped = true;
    this.heap.stop();
    // Queued sends stay scheduled on disk and go out at the next start.
    if (this.drainHandle !== undefined) clearImmediate(this.drainHandle);
    this.drainHandle = undefined;
    this.resetQueue();
    if (this.sweepHandle !== undefined) this.clock.clearTimeout(this.sweepHandle);
    this.sweepHandle = undefined;
    this.writer.close();
  }

  // ---- scheduling -------------------------------------------------------------------------

  /**
   * Checks limits (in Synapse's order: rate, feature, delay, room, count), commits the row and
   * only then arms it, so the timer can never fire for a row that is not durable.
   */
  async schedule(req: ScheduleRequest): Promise<string> {
    this.ensureRunning();
    const { requester, delayMs, form } = req;
    const userId = requester.userId;
    const limited = this.scheduleLimiter.take(userId);
    if (!limited.ok) throw rateLimited(limited.retryAfterMs);
    const maxScheduled = this.config.delayed_events.max_scheduled_per_user;
    if (maxScheduled === 0) throw fail.forbidden('Delayed events are disabled on this server');
    const maxDelay = this.config.max_delay_ms;
    if (!Number.isSafeInteger(delayMs) || delayMs < 0) {
      throw fail.invalidParam('The delay must be a non-negative integer');
    }
    if (delayMs > maxDelay) {
      const message = `The delay is longer than the maximum of ${maxDelay} ms`;
      if (form === 'dedicated') throw fail.forbidden(message);
      throw fail.unstableLimit(message, {
        'org.matrix.msc4140.errcode': 'M_MAX_DELAY_EXCEEDED',
        'org.matrix.msc4140.max_delay': maxDelay,
      });
    }
    checkTypeAndKey(req.type, req.stateKey);
    const contentText = serialiseContent(req.content);
    if (!this.rooms.roomExists(req.roomId)) throw fail.notFound('Unknown room');
    const mine = this.byUser.get(userId);
    if (mine && mine.size >= maxScheduled) {
      if (form === 'dedicated') {
        // Latest text: Retry-After says when the user's soonest event leaves the schedule.
        throw rateLimited(this.nextDueOf(mine) - this.clock.now(), 'Too many delayed events scheduled');
      }
      throw fail.unstableLimit(`At most ${maxScheduled} delayed events may be scheduled`, {
        'org.matrix.msc4140.errcode': 'M_MAX_DELAYED_EVENTS_EXCEEDED',
      });
    }

    const now = this.clock.now();
    const pool = this.strings;
    const ev: ScheduledEvent = {
      delayId: newDelayId(),
      userId: pool.intern(userId),
      deviceId: pool.internOptional(requester.deviceId),
      roomId: pool.intern(req.roomId),
      type: pool.intern(req.type),
      stateKey: req.stateKey,
      contentJson: contentText,
      delayMs,
      due: now + delayMs,
      stickyDurationMs: req.stickyDurationMs,
      committed: false,
    };
    this.remember(ev);
    const write = this.writer.write(() => {
      this.store.insert({
        delay_id: ev.delayId,
        user_id: userId,
        device_id: ev.deviceId ?? null,
        room_id: ev.roomId,
        type: ev.type,
        state_key: ev.stateKey ?? null,
        content: contentText,
        delay_ms: delayMs,
        running_since: now,
        due_at: ev.due,
        sticky_duration_ms: ev.stickyDurationMs ?? null,
      });
      req.inCommit?.(ev.delayId);
    });
    return write.then(
      () => {
        ev.committed = true;
        if (!this.stopped) this.heap.schedule(ev.delayId, ev.due);
        this.observer.scheduled?.();
        return ev.delayId;
      },
      (err: unknown) => {
        this.forget(ev);
        throw err;
      },
    );
  }

  // ---- management -------------------------------------------------------------------------

  /**
   * Applies a management action. `owner` is the authenticated user (undefined when the delay id
   * alone is the capability); someone else's event is answered exactly like an unknown one.
   */
  async act(delayId: string, action: DelayedAction, owner: string | undefined): Promise<void> {
    this.ensureRunning();
    const ev = this.scheduled.get(delayId);
    if (ev && ev.committed && (owner === undefined || owner === ev.userId)) {
      if (action === 'send') return void this.sendManually(ev);
      if (action === 'cancel') return this.cancel(ev);
      return this.restart(ev);
    }
    const row = ev ? undefined : this.visibleRow(delayId);
    if (!row || (owner !== undefined && owner !== row.user_id)) {
      throw fail.notFound('Unknown delayed event');
    }
    switch (row.status) {
      case 'scheduled':
        throw fail.notFound('Unknown delayed event');
      case 'cancelled':
        throw fail.notFound('The delayed event was cancelled');
      case 'sent':
        if (action === 'send') return;
        throw fail.conflict('The delayed event was already sent');
      case 'failed':
        if (action === 'send') throw replayError(row);
        if (action === 'cancel') return;
        throw fail.conflict('The delayed event already failed to send');
    }
  }

  private sendManually(ev: ScheduledEvent): string {
    const limited = this.sendLimiter.take(ev.userId);
    if (!limited.ok) throw rateLimited(limited.retryAfterMs);
    return this.sendNow(ev, 'action', this.clock.now());
  }

  private cancel(ev: ScheduledEvent): void {
    transaction(this.store.db, () => this.record(ev, { status: 'cancelled', cause: 'action' }));
    this.forget(ev);
  }

  private async restart(ev: ScheduledEvent): Promise<void> {
    const now = this.clock.now();
    ev.due = now + ev.delayMs;
    this.heap.schedule(ev.delayId, ev.due);
    const { delayId, due } = ev;
    await this.writer.write(() => this.store.restart(delayId, now, due));
  }

  /**
   * A stored row, or undefined once a finalised row is past `terminated_keep_ms` (the sweep that
   * deletes it runs every few minutes; until then it is already treated as gone).
   */
  visibleRow(delayId: string): DelayedRow | undefined {
    const row = this.store.get(delayId);
    if (!row || row.finalised_ts === null) return row;
    return row.finalised_ts < this.clock.now() - this.config.delayed_events.terminated_keep_ms ? undefined : row;
  }

  // ---- sending ----------------------------------------------------------------------------

  /**
   * Called by the heap in due order. Only queues: the heap fires every due entry in one
   * synchronous run, so sending here would let a mass expiry block HTTP for the whole backlog.
   */
  private fire(delayId: string, due: number): void {
    this.dueQueue.push({ delayId, due, catchUp: this.catchingUp });
    if (this.drainHandle !== undefined || this.drainSoon || this.stopped) return;
    // The first batch goes out as soon as the heap's run ends, in the same macrotask: behind a
    // setImmediate it waited for the whole poll phase, every /sync request that had arrived.
    // Later batches of a backlog still yield to the event loop in between (`scheduleDrain`).
    this.drainSoon = true;
    queueMicrotask(() => {
      this.drainSoon = false;
      if (this.drainHandle === undefined && !this.stopped) this.drainTurn();
    });
  }

  private scheduleDrain(): void {
    if (this.drainHandle !== undefined || this.stopped) return;
    this.drainHandle = setImmediate(() => {
      this.drainHandle = undefined;
      this.drainTurn();
    });
  }

  /**
   * Sends one batch of queued events in due order inside one transaction, then yields to the event
   * loop. /sync wakes only after the commit (`RoomEngine.batch`).
   */
  private drainTurn(): void {
    const catchUp = this.dueQueue[this.dueHead]?.catchUp === true;
    const deadline = catchUp ? Infinity : performance.now() + BATCH_BUDGET_MS;
    const maxSends = catchUp ? CATCH_UP_SENDS_PER_TURN : SENDS_PER_TURN;
    const attempted: ScheduledEvent[] = [];
    const trims = new Map<string, number>();
    this.pendingTrims = trims;
    const report = { finalised: new Map<string, number>(), dueTimes: [] as number[] };
    this.batchReport = report;
    try {
      this.rooms.batch(() => {
        while (attempted.length < maxSends && this.dueHead < this.dueQueue.length && !this.stopped) {
          const ev = this.sendDue(this.dueQueue[this.dueHead++]!);
          if (!ev) continue;
          attempted.push(ev);
          if (performance.now() >= deadline) break;
        }
        // Once per user and batch rather than per send: the cap still holds at every commit.
        for (const [userId, added] of trims) this.trimFinalised(userId, added);
      });
      this.tellCommitted(report);
    } catch (err) {
      // The commit failed, so nothing of the batch happened: its rows are still scheduled on disk
      // and go out at the next start, like a single send the database refused.
      this.log.error({ err, events: attempted.length }, 'committing a batch of timed delayed sends failed');
      this.finalisedCounts.clear();
      this.restoreScheduled(attempted);
    } finally {
      this.pendingTrims = undefined;
      this.batchReport = undefined;
    }
    if (this.dueHead < this.dueQueue.length && !this.stopped) {
      this.scheduleDrain();
      return;
    }
    this.resetQueue();
  }

  private resetQueue(): void {
    this.dueQueue = [];
    this.dueHead = 0;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Resolves once every queued due event has been handled (at once when none is queued). */
  private idle(): Promise<void> {
    if (this.dueHead >= this.dueQueue.length) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * One timed send inside the open batch; undefined when the event was skipped (gone, or restarted
   * while it waited). Never throws: an escaping error would roll back the whole batch.
   */
  private sendDue(item: DueItem): ScheduledEvent | undefined {
    const ev = this.scheduled.get(item.delayId);
    if (!ev || this.heap.has(item.delayId)) return undefined;
    try {
      // Catch-up after downtime is the server's debt, not the user's burst: no send limit.
      const limited = item.catchUp ? { ok: true as const } : this.sendLimiter.take(ev.userId);
      if (limited.ok) {
        this.sendNow(ev, 'delay', item.due);
        if (!item.catchUp) this.batchReport?.dueTimes.push(item.due);
      } else {
        // Latest MSC text: a timed send refused by the rate limit is not retried but finalised.
        this.finaliseFailure(ev, 'delay', rateLimited(limited.retryAfterMs, 'Delayed event send rate limited'));
      }
    } catch (err) {
      // A refusal was recorded as failed by sendNow and nobody waits for it. Anything else (the
      // database failing) leaves the row scheduled on disk: it is retried at the next start.
      if (!isMatrixError(err)) this.log.error({ err, room_id: ev.roomId }, 'a timed delayed send failed');
    }
    return ev;
  }

  /** Brings back into the schedule the events of a batch whose commit failed (not re-armed). */
  private restoreScheduled(events: readonly ScheduledEvent[]): void {
    for (const ev of events) {
      if (this.scheduled.has(ev.delayId) || this.store.get(ev.delayId)?.status !== 'scheduled') continue;
      this.remember(ev);
    }
  }

  /**
   * Sends the event as its owner (auth and power levels as of now) and finalises the row in the
   * same commit. A refusal is recorded and rethrown, so a later `send` can answer the same.
   */
  private sendNow(ev: ScheduledEvent, cause: FinaliseCause, originServerTs: number): string {
    try {
      const { eventId } = this.rooms.sendEvent(
        {
          roomId: ev.roomId,
          sender: ev.userId,
          type: ev.type,
          ...(ev.stateKey !== undefined ? { stateKey: ev.stateKey } : {}),
          content: JSON.parse(ev.contentJson) as Record<string, unknown>,
          originServerTs,
          delayId: ev.delayId,
          ...(ev.stickyDurationMs !== undefined ? { stickyDurationMs: ev.stickyDurationMs } : {}),
        },
        (id) => {
          if (!this.record(ev, { status: 'sent', cause, eventId: id, originServerTs })) throw new NoLongerScheduled();
        },
      );
      this.forget(ev);
      return eventId;
    } catch (err) {
      if (err instanceof NoLongerScheduled) {
        this.log.warn({ room_id: ev.roomId }, 'delayed event was finalised before its send committed');
        this.forget(ev);
        throw fail.notFound('Unknown delayed event');
      }
      if (isMatrixError(err)) {
        this.finaliseFailure(ev, cause, err);
        throw err;
      }
      this.log.error({ err, room_id: ev.roomId }, 'sending a delayed event failed unexpectedly');
      // A timed send has nobody to answer; record it so it is not retried forever.
      if (cause === 'delay') this.finaliseFailure(ev, cause, fail.internal('Sending the event failed'));
      throw err;
    }
  }

  /**
   * Finalises a still-scheduled row (inside the caller's transaction) and trims the owner's
   * finalised history to the configured cap (inside a batch: once per user as the batch ends);
   * false when the row was no longer scheduled.
   */
  private record(
    ev: ScheduledEvent,
    fields: Omit<FinaliseFields, 'now' | 'finSeq'>,
    opts: { mayRollBack?: boolean } = {},
  ): boolean {
    const ok = this.store.finalise(ev.delayId, { ...fields, now: this.clock.now(), finSeq: ++this.finSeq });
    if (!ok) return false;
    // One that may still roll back is counted once its fate is known (see onStateEvent).
    if (!opts.mayRollBack) this.tellFinalised(fields.status, fields.cause);
    const trims = this.pendingTrims;
    if (trims) {
      trims.set(ev.userId, opts.mayRollBack ? NaN : (trims.get(ev.userId) ?? 0) + 1);
    } else {
      this.finalisedCounts.delete(ev.userId);
      this.store.trimUser(ev.userId, this.config.delayed_events.terminated_keep_per_user);
    }
    return ok;
  }

  /** Inside the batch's transaction: trims the user's finalised rows to the cap, counting them. */
  private trimFinalised(userId: string, added: number): void {
    const keep = this.config.delayed_events.terminated_keep_per_user;
    const known = this.finalisedCounts.get(userId);
    let count = known === undefined || Number.isNaN(added) ? this.store.countFinalised(userId) : known + added;
    if (count > keep) count -= this.store.trimOldest(userId, count - keep);
    this.finalisedCounts.set(userId, count);
  }

  private finaliseFailure(ev: ScheduledEvent, cause: FinaliseCause, err: MatrixError): void {
    atomically(this.store.db, () => this.record(ev, { status: 'failed', cause, error: errorRecord(err) }));
    this.forget(ev);
  }

  /**
   * Seed rule: a new state event from a different user at the same (type, state_key) cancels the
   * scheduled delayed state events there. Runs inside the core's transaction that stores it.
   */
  private onStateEvent(ev: { roomId: string; type: string; stateKey: string; sender: string }): void {
    const entry = this.bySlot.get(slotKey(ev.roomId, ev.type, ev.stateKey));
    // The common case, a user's own event at a slot where only they have events scheduled, is
    // answered without visiting them (a timed send of each one would otherwise be quadratic).
    if (!entry || entry.owner === ev.sender) return;
    const cancelled: ScheduledEvent[] = [];
    for (const id of entry.ids) {
      const d = this.scheduled.get(id);
      if (d && d.committed && d.userId !== ev.sender) cancelled.push(d);
    }
    // Recorded after the walk: forgetting edits the sets being walked.
    for (const d of cancelled) {
      // Perhaps inside a timed send's savepoint, which rolls back if that send is then refused.
      this.record(d, { status: 'cancelled', cause: 'state', error: errorRecord(CANCELLED_BY_STATE) }, { mayRollBack: true });
      this.forget(d);
    }
    if (cancelled.length === 0) return;
    // The listener runs before the core's COMMIT; if that transaction rolled back, the rows are
    // still scheduled on disk and must come back into the schedule.
    queueMicrotask(() => {
      for (const d of cancelled) {
        const status = this.store.get(d.delayId)?.status;
        if (status === 'cancelled') this.observer.finalised?.('cancelled', 'state', 1);
        if (status !== 'scheduled' || this.scheduled.has(d.delayId)) continue;
        this.remember(d);
        if (!this.stopped) this.heap.schedule(d.delayId, d.due);
      }
    });
  }

  /** A finalisation, told now, or once its batch commits. */
  private tellFinalised(status: FinalStatus, cause: FinaliseCause): void {
    const report = this.batchReport;
    if (!report) return this.observer.finalised?.(status, cause, 1);
    const key = `${status} ${cause}`;
    report.finalised.set(key, (report.finalised.get(key) ?? 0) + 1);
  }

  private tellCommitted(report: NonNullable<DelayedEngine['batchReport']>): void {
    for (const [key, count] of report.finalised) {
      const [status, cause] = key.split(' ') as [FinalStatus, FinaliseCause];
      this.observer.finalised?.(status, cause, count);
    }
    if (!this.observer.timedSendLateness) return;
    // Late until the commit made them visible, so the commit's fsync counts too.
    const now = this.clock.now();
    for (const due of report.dueTimes) this.observer.timedSendLateness(now - due);
  }

  /** Delayed events scheduled now (for the metrics). */
  get scheduledCount(): number {
    return this.scheduled.size;
  }

  // ---- scoped delegation tokens -----------------------------------------------------------

  /** Mints a token that may only restart and send the given (own, scheduled) delayed events. */
  async mintScopedToken(
    userId: string,
    delayIds: readonly string[],
    ttlMs?: number,
  ): Promise<{ token: string; expiresAt: number }> {
    this.ensureRunning();
    const ids = [...new Set(delayIds)];
    if (ids.length === 0 || ids.length > SCOPED_TOKEN_MAX_IDS) {
      throw fail.invalidParam(`delay_ids must list 1 to ${SCOPED_TOKEN_MAX_IDS} delay ids`);
    }
    for (const id of ids) {
      if (!this.lookupOwned(userId, id)) {
        throw fail.invalidParam('delay_ids must be your own scheduled delayed events');
      }
    }
    const maxTtl = this.config.delayed_events.scoped_token_max_ms;
    const ttl = Math.min(ttlMs ?? Math.min(SCOPED_TOKEN_DEFAULT_TTL_MS, maxTtl), maxTtl);
    const token = SCOPED_TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const expiresAt = this.clock.now() + ttl;
    await this.writer.write(() => this.store.insertToken(hashToken(token), userId, ids, expiresAt));
    return { token, expiresAt };
  }

  /** Withdraws a token that was never handed out (its delegation failed); durable when resolved. */
  async revokeScopedToken(token: string): Promise<void> {
    await this.writer.write(() => this.store.deleteToken(hashToken(token)));
  }

  resolveScopedToken(token: string): Requester | undefined {
    if (!token.startsWith(SCOPED_TOKEN_PREFIX)) return undefined;
    const found = this.store.token(hashToken(token));
    if (!found || found.expiresAt <= this.clock.now()) return undefined;
    const scope = { delayIds: new Set(found.delayIds), expiresAt: found.expiresAt };
    return { userId: found.userId, token, scope };
  }

  /** The user's own still-scheduled delayed event, or undefined. */
  lookupOwned(userId: string, delayId: string): ScheduledEvent | undefined {
    const ev = this.scheduled.get(delayId);
    return ev && ev.committed && ev.userId === userId ? { ...ev } : undefined;
  }

  // ---- bookkeeping ------------------------------------------------------------------------

  private ensureRunning(): void {
    if (this.stopped) throw fail.unavailable('Server is shutting down');
  }

  private remember(ev: ScheduledEvent): void {
    this.scheduled.set(ev.delayId, ev);
    addTo(this.byUser, ev.userId, ev.delayId);
    if (ev.stateKey === undefined) return;
    const slot = slotKey(ev.roomId, ev.type, ev.stateKey);
    const entry = this.bySlot.get(slot);
    if (!entry) {
      this.bySlot.set(slot, { owner: ev.userId, ids: new Set([ev.delayId]) });
      return;
    }
    if (entry.owner !== ev.userId) entry.owner = undefined;
    entry.ids.add(ev.delayId);
  }

  private forget(ev: ScheduledEvent): void {
    if (this.scheduled.get(ev.delayId) !== ev) return;
    this.scheduled.delete(ev.delayId);
    this.heap.cancel(ev.delayId);
    removeFrom(this.byUser, ev.userId, ev.delayId);
    if (ev.stateKey === undefined) return;
    const slot = slotKey(ev.roomId, ev.type, ev.stateKey);
    const entry = this.bySlot.get(slot);
    if (!entry) return;
    entry.ids.delete(ev.delayId);
    if (entry.ids.size === 0) this.bySlot.delete(slot);
  }

  private nextDueOf(ids: ReadonlySet<string>): number {
    let next = Infinity;
    for (const id of ids) next = Math.min(next, this.scheduled.get(id)?.due ?? Infinity);
    return Number.isFinite(next) ? next : this.clock.now();
  }

  private prune(): void {
    const now = this.clock.now();
    this.store.prune(now - this.config.delayed_events.terminated_keep_ms, now);
    this.finalisedCounts.clear();
  }

  private armSweep(): void {
    this.sweepHandle = this.clock.setTimeout(() => {
      if (this.stopped) return;
      try {
        this.prune();
      } catch (err) {
        this.log.error({ err }, 'pruning finalised delayed events failed');
      }
      this.armSweep();
    }, SWEEP_EVERY_MS);
  }
}


/** 192 random bits: the delay id is a bearer capability in generation B, so it must be unguessable. */
function newDelayId(): string {
  return randomToken(24);
}

function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

/**
 * Makes equal strings one object: every request and every stored row brings its own copy of the
 * user id, room id and event type, which at a million scheduled events is most of their memory.
 * Bounded: past 65 536 distinct strings the pool starts over (later copies are simply not
 * shared with earlier ones; nothing depends on identity).
 */
class StringPool {
  private readonly pool = new CappedMap<string, string>(65_536);

  intern(s: string): string {
    const known = this.pool.get(s);
    if (known !== undefined) return known;
    this.pool.set(s, s);
    return s;
  }

  internOptional(s: string | undefined): string | undefined {
    return s === undefined ? undefined : this.intern(s);
  }
}

function slotKey(roomId: string, type: string, stateKey: string): string {
  return `${roomId}\u0000${type}\u0000${stateKey}`;
}

function addTo(map: Map<string, Set<string>>, key: string, id: string): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(id);
}

function removeFrom(map: Map<string, Set<string>>, key: string, id: string): void {
  const set = map.get(key);
  if (!set) return;
  set.delete(id);
  if (set.size === 0) map.delete(key);
}

function fromRow(row: DelayedRow, pool: StringPool): ScheduledEvent {
  return {
    delayId: row.delay_id,
    userId: pool.intern(row.user_id),
    deviceId: pool.internOptional(row.device_id ?? undefined),
    roomId: pool.intern(row.room_id),
    type: pool.intern(row.type),
    stateKey: row.state_key ?? undefined,
    contentJson: row.content,
    delayMs: row.delay_ms,
    due: row.due_at,
    stickyDurationMs: row.sticky_duration_ms ?? undefined,
    committed: true,
  };
}

function errorRecord(err: MatrixError): NonNullable<FinaliseFields['error']> {
  return { status: err.status, body: err.body() };
}

/**
 * Rebuilds the error a failed send answered with, so every retry of `send` gets the same status,
 * errcode, message and extra fields. One exception: a send refused by the rate limit is final, so
 * its stored `retry_after_ms` is dropped; a stale hint (without the `Retry-After` header that
 * `rateLimited()` pairs it with) would only invite a retry that can never succeed.
 */
function replayError(row: DelayedRow): MatrixError {
  const body = JSON.parse(row.error ?? '{}') as Record<string, unknown>;
  const { errcode, error, ...extra } = body;
  if (errcode === ERROR_KINDS.limitExceeded.errcode) delete extra.retry_after_ms;
  const kinds = Object.entries(ERROR_KINDS) as Array<[ErrorKind, { status: number; errcode: string }]>;
  const kind =
    kinds.find(([, k]) => k.status === row.error_status && k.errcode === errcode)?.[0] ??
    kinds.find(([, k]) => k.status === row.error_status)?.[0] ??
    'forbidden';
  return new MatrixError(kind, typeof error === 'string' ? error : 'Sending the delayed event failed', extra);
}
