/**
 * node:sqlite with the settings every store here wants (WAL, a busy timeout, foreign keys), a
 * group-commit writer (writes queued in the same tick share one transaction and one fsync, and
 * each caller's promise resolves only after that commit, so "durable before the reply" stays
 * cheap), and `WalCheckpointer`, which takes checkpoints out of the event loop.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { Worker } from 'node:worker_threads';

export type Synchronous = 'off' | 'normal' | 'full';

/** How long a connection opened here waits for a lock before a statement fails. */
const BUSY_TIMEOUT_MS = 5000;
const SQLITE_BUSY = 5;
const LOCK_POLL_MS = 0.1;
const lockPollCell = new Int32Array(new SharedArrayBuffer(4));

export function openDatabase(path: string, synchronous: Synchronous = 'full'): DatabaseSync {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path);
  db.exec('PRAGMA journal_mode = WAL');
  db.exec(`PRAGMA synchronous = ${synchronous.toUpperCase()}`);
  db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
  db.exec('PRAGMA foreign_keys = ON');
  return db;
}

/**
 * Adds a column that stores created by an older version lack (`CREATE TABLE IF NOT EXISTS` leaves
 * their tables as they were). `definition` is the column's type and constraints.
 */
export function addColumnIfMissing(db: DatabaseSync, table: string, column: string, definition: string): void {
  const columns = db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>;
  if (!columns.some((c) => c.name === column)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
}

/** The statements `beginImmediate` runs on one connection, prepared once. */
interface BeginStatements {
  begin: StatementSync;
  noWait: StatementSync;
  restoreWait: StatementSync;
}
const beginStatements = new WeakMap<DatabaseSync, BeginStatements>();

/**
 * BEGIN IMMEDIATE that waits for the write lock in 0.1 ms steps. SQLite's own busy handler sleeps
 * 1, 2, 5, 10 … ms between attempts, so a checkpoint (from the checkpoint worker) that held the
 * lock for 3 ms kept a writer, and with it the event loop, waiting 8 ms: the largest share of late
 * timed sends. The connection's busy timeout is 0 only for this statement; the overall wait is
 * still bounded by the usual timeout.
 */
function beginImmediate(db: DatabaseSync): void {
  const stmts = statementsFor(db);
  stmts.noWait.run();
  try {
    const deadline = performance.now() + BUSY_TIMEOUT_MS;
    for (;;) {
      try {
        stmts.begin.run();
        return;
      } catch (err) {
        if ((err as { errcode?: number }).errcode !== SQLITE_BUSY || performance.now() > deadline) throw err;
        Atomics.wait(lockPollCell, 0, 0, LOCK_POLL_MS);
      }
    }
  } finally {
    stmts.restoreWait.run();
  }
}

function statementsFor(db: DatabaseSync): BeginStatements {
  let stmts = beginStatements.get(db);
  if (!stmts) {
    stmts = {
      begin: db.prepare('BEGIN IMMEDIATE'),
      noWait: db.prepare('PRAGMA busy_timeout = 0'),
      restoreWait: db.prepare(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`),
    };
    beginStatements.set(db, stmts);
  }
  return stmts;
}

/** Runs `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back when it throws. */
export function transaction<T>(db: DatabaseSync, fn: () => T): T {
  beginImmediate(db);
  try {
    const result = fn();
    db.exec('COMMIT');
    return result;
  } catch (err) {
    db.exec('ROLLBACK');
    throw err;
  }
}

/**
 * Like `transaction`, but nestable: when a transaction is already open, `fn` runs inside a
 * SAVEPOINT instead, and only its own changes are rolled back when it throws. The enclosing
 * transaction decides whether anything commits.
 */
export function atomically<T>(db: DatabaseSync, fn: () => T): T {
  if (!db.isTransaction) return transaction(db, fn);
  // SQLite resolves a reused savepoint name to the innermost one, so nesting needs no counter.
  db.exec('SAVEPOINT atomically');
  try {
    const result = fn();
    db.exec('RELEASE atomically');
    return result;
  } catch (err) {
    db.exec('ROLLBACK TO atomically');
    db.exec('RELEASE atomically');
    throw err;
  }
}

/**
 * Waiting for more writers before a commit: worth it only when the commit fsyncs.
 */
export interface GatherOptions {
  /** Whether more writes are expected soon (e.g. `ReturningClients.anyExpected`). */
  expected: () => boolean;
  /** The longest a commit waits for them. */
  maxWaitMs: number;
}

/**
 * Group commit. `write(fn)` queues `fn`; all queued functions run in one transaction on the next
 * turn of the event loop. A function that throws rejects only its own promise (its changes are
 * rolled back with a savepoint); the others still commit.
 *
 * With `gather`, a commit first lets the event loop turn again (reading whatever arrived) while
 * more writers are expected, up to `maxWaitMs`. Eight clients that each wait for their answer
 * otherwise settle into two groups taking turns, each paying a whole fsync for four writes; waiting
 * a few hundred microseconds for the other group halves the fsyncs. Node's timers cannot wait that
 * briefly, hence the turns of the loop.
 */
export class BatchWriter {
  private queue: Array<{ fn: () => unknown; resolve: (v: unknown) => void; reject: (e: unknown) => void }> = [];
  private scheduled = false;
  private closed = false;
  /** When the queued batch started waiting for more writers (0: it has not). */
  private gatheringSince = 0;

  // Prepared once: at thousands of writes a second, re-parsing these per item cost more than the writes.
  private readonly commit: StatementSync;
  private readonly rollback: StatementSync;
  private readonly savepoint: StatementSync;
  private readonly release: StatementSync;
  private readonly rollbackTo: StatementSync;

  constructor(
    private readonly db: DatabaseSync,
    private readonly gather?: GatherOptions,
  ) {
    this.commit = db.prepare('COMMIT');
    this.rollback = db.prepare('ROLLBACK');
    this.savepoint = db.prepare('SAVEPOINT item');
    this.release = db.prepare('RELEASE item');
    this.rollbackTo = db.prepare('ROLLBACK TO item');
  }

  write<T>(fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new Error('store is closed'));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.commitWhenReady);
      }
    });
  }

  /** The turn's commit, passed to setImmediate as is (bound once, not a closure per batch). */
  private readonly commitWhenReady = (): void => {
    if (this.gather && !this.closed) {
      const now = performance.now();
      if (this.gatheringSince === 0) this.gatheringSince = now;
      if (now - this.gatheringSince < this.gather.maxWaitMs && this.gather.expected()) {
        setImmediate(this.commitWhenReady);
        return;
      }
      this.gatheringSince = 0;
    }
    this.flush();
  };

  /** Commits whatever is queued now. */
  private flush(): void {
    this.scheduled = false;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    const results: Array<{ ok: boolean; value: unknown }> = [];
    try {
      beginImmediate(this.db);
      for (const item of batch) {
        this.savepoint.run();
        try {
          results.push({ ok: true, value: item.fn() });
          this.release.run();
        } catch (err) {
          this.rollbackTo.run();
          this.release.run();
          results.push({ ok: false, value: err });
        }
      }
      this.commit.run();
    } catch (err) {
      try {
        this.rollback.run();
      } catch {
        // Nothing to roll back when BEGIN itself failed.
      }
      for (const item of batch) item.reject(err);
      return;
    }
    batch.forEach((item, i) => {
      const r = results[i]!;
      if (r.ok) item.resolve(r.value);
      else item.reject(r.value);
    });
  }

  close(): void {
    this.flush();
    this.closed = true;
  }
}

/** Runs in the checkpoint worker (CommonJS, evaluated): its own connection, its own timer. */
const CHECKPOINT_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { DatabaseSync } = require('node:sqlite');
const { closeSync, fdatasyncSync, openSync } = require('node:fs');
const db = new DatabaseSync(workerData.path);
const dbFile = openSync(workerData.path, 'r+');
// No waiting: a RESTART checkpoint holds writers off while it waits for readers, so one that
// cannot finish at once gives up (SQLITE_BUSY) and the next round tries again.
db.exec('PRAGMA busy_timeout = 0');
const passive = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const restart = db.prepare('PRAGMA wal_checkpoint(RESTART)');
const timer = setInterval(() => {
  try {
    if (passive.get().log >= workerData.restartFrames) {
      // The passive rounds left their pages in the database file unsynced. Syncing them here,
      // before the RESTART takes the write lock, leaves the RESTART's own sync little to do: the
      // lock (which every commit of the server waits for) was held half as long.
      fdatasyncSync(dbFile);
      restart.get();
    }
  } catch {
    // Busy or a transient I/O error: the next round tries again (the backstop covers the rest).
  }
}, workerData.everyMs);
parentPort.once('message', () => {
  clearInterval(timer);
  closeSync(dbFile);
  db.close();
  parentPort.close();
});
`;

/**
 * Checkpoints the WAL from a worker thread. A checkpoint copies the WAL's pages into the database
 * and syncs both; run by the committing connection (SQLite's auto-checkpoint) it stalled the
 * event loop for 50–110 ms every 32 MiB of WAL, which made due events late.
 *
 * The worker's PASSIVE checkpoints never block the writer (they copy only frames every reader is
 * past). But the WAL only starts over from its beginning when a write finds it wholly copied,
 * which under steady writes almost never happens, and a WAL that keeps growing makes every fsync
 * of it slower. So once `restartFrames` are in it, the worker follows a passive round with a
 * RESTART checkpoint: it holds writers off only while it copies what the passive round left (a
 * few milliseconds of writes) and syncs, and the next write starts the WAL over.
 *
 * The owning connection's auto-checkpoint stays as a backstop at `backstopPages`, should the
 * worker fall behind or die. Durability is SQLite's own: a checkpoint syncs the WAL before it
 * copies and the database before the WAL may be reused.
 */
export class WalCheckpointer {
  private readonly worker: Worker;
  private readonly exited: Promise<void>;

  /**
   * @param onError - the worker failed (it is gone; the backstop checkpoints from then on).
   */
  constructor(
    db: DatabaseSync,
    path: string,
    onError: (err: unknown) => void,
    opts: { everyMs?: number; restartFrames?: number; backstopPages?: number } = {},
  ) {
    db.exec(`PRAGMA wal_autocheckpoint = ${opts.backstopPages ?? 65_536}`);
    const workerData = { path, everyMs: opts.everyMs ?? 20, restartFrames: opts.restartFrames ?? 4096 };
    this.worker = new Worker(CHECKPOINT_WORKER, { eval: true, workerData });
    this.worker.on('error', onError);
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    // The worker never holds the process open on its own; the server does.
    this.worker.unref();
  }

  /** Closes the worker's connection; await before the owning connection closes. */
  async close(): Promise<void> {
    this.worker.ref();
    this.worker.postMessage('close');
    await this.exited;
  }
}
