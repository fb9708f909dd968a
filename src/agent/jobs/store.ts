/**
 * The job store: one SQLite file of its own, one row per job. At most one live row per
 * (room, identity) is enforced by a partial unique index, so a replacement and the job it
 * replaces can never both be restored. Finished rows stay for the retention period, then go.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';

import type { Delegation } from '../contracts.js';
import type { JobState } from '../contracts.js';
import { LIVE_STATES } from './fsm.js';

const LIVE = `(${LIVE_STATES.map((s) => `'${s}'`).join(', ')})`;

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

/**
 * Prepared statements over the jobs table. Every method is synchronous and meant to run inside
 * a `BatchWriter.write` callback, so many of them share one commit.
 */
export class JobStore {
  private readonly replaceLiveStmt: StatementSync;
  private readonly insertStmt: StatementSync;
  private readonly updateStmt: StatementSync;
  private readonly deleteStmt: StatementSync;
  private readonly loadStmt: StatementSync;
  private readonly detailsStmt: StatementSync;
  private readonly targetStmt: StatementSync;

  constructor(private readonly db: DatabaseSync) {
    db.exec(SCHEMA);
    // Stores created before the column existed: their deadlines count as unconfirmed, so their
    // connected jobs restart at once after a restore (the behaviour those stores were written for).
    const columns = db.prepare('PRAGMA table_info(jobs)').all() as Array<{ name: string }>;
    if (!columns.some((c) => c.name === 'restarted')) {
      db.exec('ALTER TABLE jobs ADD COLUMN restarted INTEGER NOT NULL DEFAULT 0');
    }
    this.replaceLiveStmt = db.prepare(
      `UPDATE jobs SET state = 'replaced', changed_ms = ?
       WHERE room = ? AND identity = ? AND state IN ${LIVE}`,
    );
    this.insertStmt = db.prepare(
      `INSERT INTO jobs (room, identity, delay_id, delay_ms, server_name, user_id, scoped_token, source,
         state, deadline_ms, created_ms, changed_ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?)`,
    );
    // A row that is already final (e.g. replaced by a newer delegation) is never brought back.
    this.updateStmt = db.prepare(
      `UPDATE jobs SET state = ?, sid = ?, since_ms = ?, ended_sid = ?,
         deadline_ms = coalesce(?, deadline_ms), restarted = ?, changed_ms = ?
       WHERE id = ? AND state IN ${LIVE}`,
    );
    this.deleteStmt = db.prepare('DELETE FROM jobs WHERE id = ?');
    // Finished rows first, oldest first, so the engine's purge queue is in order; then live rows.
    this.loadStmt = db.prepare(
      `SELECT * FROM jobs ORDER BY state IN ${LIVE}, changed_ms, id`,
    );
    this.detailsStmt = db.prepare('SELECT source, created_ms FROM jobs WHERE id = ?');
    this.targetStmt = db.prepare('SELECT delay_id, scoped_token FROM jobs WHERE id = ?');
  }

  /** Marks the key's live row replaced and inserts the new delegation as waiting; returns its id. */
  replaceAndInsert(d: Delegation, waitDeadlineMs: number, nowMs: number): number {
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

  update(id: number, p: JobProgress): void {
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

  delete(id: number): void {
    this.deleteStmt.run(id);
  }

  /**
   * What only diagnostics need, so the engine need not keep it in memory for every job. The row
   * outlives the job in memory (purge deletes both together).
   */
  details(id: number): { source: Delegation['source']; createdMs: number } {
    const row = this.detailsStmt.get(id) as { source: Delegation['source']; created_ms: number };
    return { source: row.source, createdMs: row.created_ms };
  }

  /**
   * The delayed event a job restarts and sends, read when it does: a primary-key lookup per call
   * (hundreds a second at a million jobs) instead of the id and token strings kept in memory for
   * every job.
   */
  target(id: number): { delayId: string; scopedToken?: string } {
    const row = this.targetStmt.get(id) as { delay_id: string; scoped_token: string | null } | undefined;
    if (!row) throw new Error(`job ${id} is not in the store`);
    return row.scoped_token === null ? { delayId: row.delay_id } : { delayId: row.delay_id, scopedToken: row.scoped_token };
  }

  loadAll(): JobRow[] {
    return this.loadStmt.all() as unknown as JobRow[];
  }
}
