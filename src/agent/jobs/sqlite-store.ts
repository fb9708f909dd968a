/**
 * The embedded job store: one SQLite file of its own (WAL), one row per job. At most one live row
 * per (room, identity) is enforced by a partial unique index. Delegations go through the
 * group-commit writer (synced before the reply); progress is written in one transaction per turn
 * without waiting for its fsync (see writeProgress).
 *
 * A replaced job's duty to cancel its delayed event is its row's state, `cancelling`, set in the
 * same commit as the replacement's insert, so it is as durable as the delegation itself. The state
 * lies outside the unique index (any number of a key's replaced jobs may still be cancelling
 * beside its one live job) and is restored like a live one: no separate outbox to keep in step
 * with the jobs, and the cancel reads its delay id where restarts and sends read theirs.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';

import { addColumnIfMissing, BatchWriter, openDatabase, transaction } from '../../lib/sqlite.js';
import type { Delegation } from '../contracts.js';
import { ACTIVE_STATES, LIVE_STATES } from './fsm.js';
import type { JobProgress, JobRef, JobRow, JobStore, JobTarget, ProgressChange } from './store.js';

const sqlList = (states: readonly string[]) => `(${states.map((s) => `'${s}'`).join(', ')})`;
const LIVE = sqlList(LIVE_STATES);
const ACTIVE = sqlList(ACTIVE_STATES);

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  room TEXT NOT NULL,
  identity TEXT NOT NULL,
  delay_id TEXT NOT NULL,
  delay_ms INTEGER NOT NULL,
  server_name TEXT NOT NULL,
  user_id TEXT NOT NULL,
  scoped_token TEXT,
  source TEXT NOT NULL,
  state TEXT NOT NULL,
  sid TEXT,
  since_ms INTEGER,
  ended_sid TEXT,
  deadline_ms INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  changed_ms INTEGER NOT NULL,
  restarted INTEGER NOT NULL DEFAULT 0
);
-- The first index's predicate predates the leaving state; replace it so leaving rows count too.
DROP INDEX IF EXISTS jobs_live_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_live_key_v2 ON jobs (room, identity) WHERE state IN ${LIVE};
`;

export class SqliteJobStore implements JobStore {
  private readonly db: DatabaseSync;
  private readonly writer: BatchWriter;
  /** With synchronous=FULL: the pragmas a progress commit runs around itself (see writeProgress). */
  private readonly progressPragmas: { skipFsync: StatementSync; restore: StatementSync } | undefined;
  private readonly replaceLiveStmt: StatementSync;
  private readonly insertStmt: StatementSync;
  private readonly updateStmt: StatementSync;
  private readonly deleteStmt: StatementSync;
  private readonly loadStmt: StatementSync;
  private readonly detailsStmt: StatementSync;
  private readonly targetStmt: StatementSync;

  constructor(path: string, synchronous: 'normal' | 'full' = 'full') {
    const db = openDatabase(path, synchronous);
    this.db = db;
    this.writer = new BatchWriter(db);
    this.progressPragmas =
      synchronous === 'full'
        ? { skipFsync: db.prepare('PRAGMA synchronous = NORMAL'), restore: db.prepare('PRAGMA synchronous = FULL') }
        : undefined;
    db.exec(SCHEMA);
    // Stores created before the column existed: their deadlines count as unconfirmed, so their
    // connected jobs restart at once after a restore (the behaviour those stores were written for).
    addColumnIfMissing(db, 'jobs', 'restarted', 'INTEGER NOT NULL DEFAULT 0');
    this.replaceLiveStmt = db.prepare(
      `UPDATE jobs SET state = 'cancelling', changed_ms = ?
       WHERE room = ? AND identity = ? AND state IN ${LIVE}`,
    );
    this.insertStmt = db.prepare(
      `INSERT INTO jobs (room, identity, delay_id, delay_ms, server_name, user_id, scoped_token, source,
         state, deadline_ms, created_ms, changed_ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?)`,
    );
    // A row that is already final is never brought back, and one the store marked cancelling
    // (replaced by a newer delegation) never goes live again: progress the engine made before it
    // took the replacement up would otherwise undo the replacement (and break the unique index).
    this.updateStmt = db.prepare(
      `UPDATE jobs SET state = ?1, sid = ?2, since_ms = ?3, ended_sid = ?4,
         deadline_ms = coalesce(?5, deadline_ms), restarted = ?6, changed_ms = ?7
       WHERE id = ?8 AND (state IN ${LIVE} OR (state = 'cancelling' AND ?1 NOT IN ${LIVE}))`,
    );
    this.deleteStmt = db.prepare('DELETE FROM jobs WHERE id = ?');
    // Finished rows first, oldest first, so the engine's purge queue is in order; then active rows.
    this.loadStmt = db.prepare(
      `SELECT * FROM jobs ORDER BY state IN ${ACTIVE}, changed_ms, id`,
    );
    this.detailsStmt = db.prepare('SELECT source, created_ms FROM jobs WHERE id = ?');
    this.targetStmt = db.prepare('SELECT delay_id, scoped_token FROM jobs WHERE id = ?');
  }

  insert(d: Delegation, waitDeadlineMs: number, nowMs: number): Promise<number> {
    return this.writer.write(() => this.replaceAndInsert(d, waitDeadlineMs, nowMs));
  }

  /**
   * Commits the turn's progress with synchronous=NORMAL: in WAL mode that survives a crash or
   * kill -9 of the agent (the pages are in the OS already) and skips only the fsync, so a power
   * loss may undo the last progress commits (safe, see Engine.persist) but never a delegation: the
   * next FULL commit (a delegation, a purge) or checkpoint syncs the WAL, and the WAL keeps commit
   * order. A mass disconnect commits progress every turn, and the fsync per turn blocked the
   * event loop longer than everything else the agent does for a webhook.
   */
  writeProgress(changes: readonly ProgressChange[]): Promise<void> {
    this.progressPragmas?.skipFsync.run();
    try {
      transaction(this.db, () => {
        for (const { id, progress } of changes) this.update(id, progress);
      });
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    } finally {
      this.progressPragmas?.restore.run();
    }
  }

  remove(jobs: readonly JobRef[]): Promise<void> {
    return this.writer.write(() => {
      for (const { id } of jobs) this.deleteStmt.run(id);
    });
  }

  async close(): Promise<void> {
    this.writer.close();
    this.db.close();
  }

  /**
   * Marks the key's live row cancelling and inserts the new delegation as waiting; returns its id.
   * Whether the cancel is needed at all (a repeated delay id) is the engine's to tell when it runs.
   */
  private replaceAndInsert(d: Delegation, waitDeadlineMs: number, nowMs: number): number {
    this.replaceLiveStmt.run(nowMs, d.livekitRoom, d.identity);
    const result = this.insertStmt.run(
      d.livekitRoom,
      d.identity,
      d.delayId,
      d.delayTimeoutMs,
      d.serverName,
      d.userId,
      d.scopedToken ?? null,
      d.source,
      waitDeadlineMs,
      nowMs,
      nowMs,
    );
    return Number(result.lastInsertRowid);
  }

  private update(id: number, p: JobProgress): void {
    this.updateStmt.run(
      p.state,
      p.sid ?? null,
      p.sinceMs ?? null,
      p.endedSid ?? null,
      p.deadlineMs ?? null,
      p.restarted ? 1 : 0,
      p.changedMs,
      id,
    );
  }

  /** The row outlives the job in memory (purge deletes both together). */
  details(id: number): { source: Delegation['source']; createdMs: number } | undefined {
    const row = this.detailsStmt.get(id) as { source: Delegation['source']; created_ms: number } | undefined;
    return row && { source: row.source, createdMs: row.created_ms };
  }

  /** A primary-key lookup per call (hundreds a second at a million jobs). */
  target({ id }: JobRef): Promise<JobTarget> {
    const row = this.targetStmt.get(id) as { delay_id: string; scoped_token: string | null } | undefined;
    if (!row) return Promise.reject(new Error(`job ${id} is not in the store`));
    return Promise.resolve(
      row.scoped_token === null ? { delayId: row.delay_id } : { delayId: row.delay_id, scopedToken: row.scoped_token },
    );
  }

  loadAll(): Promise<JobRow[]> {
    return Promise.resolve(this.loadStmt.all() as unknown as JobRow[]);
  }
}
