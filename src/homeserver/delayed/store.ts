/**
 * SQLite persistence of delayed events: the schedule, the finalised record and scoped delegation
 * tokens (transaction ids of the dedicated PUT live in the core's `txns` table). Tables live in the core's database (prefix
 * `delayed_`) so a timed send can insert the room event and finalise its row in one commit.
 * Every statement is prepared once here.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';

import { addColumnIfMissing } from '../../lib/sqlite.js';

/** Lifecycle of a delayed event; only `scheduled` rows are ever sent. */
export type DelayedStatus = 'scheduled' | 'sent' | 'cancelled' | 'failed';

/** What finalised a row: the timer, a management action, or another user's state update. */
export type FinaliseCause = 'delay' | 'action' | 'state';

export interface DelayedRow {
  seq: number;
  delay_id: string;
  user_id: string;
  device_id: string | null;
  room_id: string;
  type: string;
  state_key: string | null;
  content: string;
  delay_ms: number;
  running_since: number;
  due_at: number;
  /** MSC4354: the event is sent as a sticky event of this duration. */
  sticky_duration_ms: number | null;
  status: DelayedStatus;
  cause: FinaliseCause | null;
  finalised_ts: number | null;
  /** Finalisation order: ties of `finalised_ts` list the later finalisation first. */
  fin_seq: number | null;
  event_id: string | null;
  origin_server_ts: number | null;
  /** JSON of the Matrix error body the send failed with (or the state-cancellation reason). */
  error: string | null;
  /** HTTP status of that error, so a retried `send` answers exactly as the first one did. */
  error_status: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS delayed_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  delay_id TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL,
  device_id TEXT,
  room_id TEXT NOT NULL,
  type TEXT NOT NULL,
  state_key TEXT,
  content TEXT NOT NULL,
  delay_ms INTEGER NOT NULL,
  running_since INTEGER NOT NULL,
  due_at INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('scheduled', 'sent', 'cancelled', 'failed')),
  cause TEXT CHECK (cause IN ('delay', 'action', 'state')),
  finalised_ts INTEGER,
  fin_seq INTEGER,
  event_id TEXT,
  origin_server_ts INTEGER,
  error TEXT,
  error_status INTEGER,
  sticky_duration_ms INTEGER
);
-- A user's scheduled events, for the listing and its count. due_at is left out on purpose: a
-- restart then rewrites only the row's own page, not two index pages as well (12.5 WAL pages per
-- commit of 4 restarts fell to 4, and a commit syncs them all). A listing sorts at most
-- max_scheduled_per_user rows instead. The older index with due_at is dropped.
DROP INDEX IF EXISTS delayed_events_scheduled;
CREATE INDEX IF NOT EXISTS delayed_events_scheduled_by_user
  ON delayed_events (user_id, seq) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS delayed_events_finalised
  ON delayed_events (user_id, finalised_ts, fin_seq) WHERE status <> 'scheduled';
CREATE INDEX IF NOT EXISTS delayed_events_finalised_age
  ON delayed_events (finalised_ts) WHERE status <> 'scheduled';
CREATE TABLE IF NOT EXISTS delayed_scoped_tokens (
  token_hash TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  delay_ids TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS delayed_scoped_tokens_expiry ON delayed_scoped_tokens (expires_at);
`;

/** A page query: `ids` is a JSON array of delay ids to keep, or null for all. */
interface PageParams {
  user: string;
  ids: string | null;
  a: number;
  b: number;
  limit: number;
}

/** What scheduling writes; the rest of the row is filled in by SQLite or at finalisation. */
export type NewRow = Pick<
  DelayedRow,
  | 'delay_id'
  | 'user_id'
  | 'device_id'
  | 'room_id'
  | 'type'
  | 'state_key'
  | 'content'
  | 'delay_ms'
  | 'running_since'
  | 'due_at'
  | 'sticky_duration_ms'
>;

/** The outcome written when a row leaves the schedule. */
export interface FinaliseFields {
  status: Exclude<DelayedStatus, 'scheduled'>;
  cause: FinaliseCause;
  now: number;
  finSeq: number;
  eventId?: string;
  originServerTs?: number;
  error?: { status: number; body: Record<string, unknown> };
}

export class DelayedStore {
  private readonly insertStmt: StatementSync;
  private readonly getStmt: StatementSync;
  private readonly loadScheduledStmt: StatementSync;
  private readonly restartStmt: StatementSync;
  private readonly finaliseStmt: StatementSync;
  private readonly trimUserStmt: StatementSync;
  private readonly countFinalisedStmt: StatementSync;
  private readonly trimOldestStmt: StatementSync;
  private readonly pruneAgeStmt: StatementSync;
  private readonly scheduledPageStmt: StatementSync;
  private readonly finalisedPageStmt: StatementSync;
  private readonly insertTokenStmt: StatementSync;
  private readonly getTokenStmt: StatementSync;
  private readonly pruneTokensStmt: StatementSync;
  private readonly deleteTokenStmt: StatementSync;
  private readonly maxFinSeqStmt: StatementSync;

  constructor(readonly db: DatabaseSync) {
    db.exec(SCHEMA);
    addColumnIfMissing(db, 'delayed_events', 'sticky_duration_ms', 'INTEGER');
    this.insertStmt = db.prepare(
      `INSERT INTO delayed_events (delay_id, user_id, device_id, room_id, type, state_key, content,
         delay_ms, running_since, due_at, sticky_duration_ms, status)
       VALUES ($delay_id, $user_id, $device_id, $room_id, $type, $state_key, $content,
         $delay_ms, $running_since, $due_at, $sticky_duration_ms, 'scheduled')`,
    );
    this.getStmt = db.prepare('SELECT * FROM delayed_events WHERE delay_id = ?');
    this.loadScheduledStmt = db.prepare(
      "SELECT * FROM delayed_events WHERE status = 'scheduled' ORDER BY due_at, seq",
    );
    this.restartStmt = db.prepare(
      `UPDATE delayed_events SET running_since = $now, due_at = $due
       WHERE delay_id = $delay_id AND status = 'scheduled'`,
    );
    this.finaliseStmt = db.prepare(
      `UPDATE delayed_events SET status = $status, cause = $cause, finalised_ts = $now, fin_seq = $fin_seq,
         event_id = $event_id, origin_server_ts = $origin_server_ts, error = $error,
         error_status = $error_status
       WHERE delay_id = $delay_id AND status = 'scheduled'`,
    );
    // Walks the user's finalised index newest first and drops everything past the cap.
    this.trimUserStmt = db.prepare(
      `DELETE FROM delayed_events WHERE seq IN (
         SELECT seq FROM delayed_events WHERE user_id = $user AND status <> 'scheduled'
         ORDER BY finalised_ts DESC, fin_seq DESC LIMIT -1 OFFSET $keep)`,
    );
    this.countFinalisedStmt = db.prepare(
      "SELECT COUNT(*) AS n FROM delayed_events WHERE user_id = ? AND status <> 'scheduled'",
    );
    // The same order from the other end: visits only the rows it deletes.
    this.trimOldestStmt = db.prepare(
      `DELETE FROM delayed_events WHERE seq IN (
         SELECT seq FROM delayed_events WHERE user_id = $user AND status <> 'scheduled'
         ORDER BY finalised_ts ASC, fin_seq ASC LIMIT $excess)`,
    );
    this.pruneAgeStmt = db.prepare(
      "DELETE FROM delayed_events WHERE status <> 'scheduled' AND finalised_ts < ?",
    );
    this.scheduledPageStmt = db.prepare(
      `SELECT * FROM delayed_events
       WHERE user_id = $user AND status = 'scheduled'
         AND ($ids IS NULL OR delay_id IN (SELECT value FROM json_each($ids)))
         AND (due_at > $a OR (due_at = $a AND seq > $b))
       ORDER BY due_at, seq LIMIT $limit`,
    );
    this.finalisedPageStmt = db.prepare(
      `SELECT * FROM delayed_events
       WHERE user_id = $user AND status <> 'scheduled' AND finalised_ts >= $oldest
         AND ($ids IS NULL OR delay_id IN (SELECT value FROM json_each($ids)))
         AND (finalised_ts < $a OR (finalised_ts = $a AND fin_seq < $b))
       ORDER BY finalised_ts DESC, fin_seq DESC LIMIT $limit`,
    );
    this.insertTokenStmt = db.prepare(
      'INSERT INTO delayed_scoped_tokens (token_hash, user_id, delay_ids, expires_at) VALUES (?, ?, ?, ?)',
    );
    this.getTokenStmt = db.prepare(
      'SELECT user_id, delay_ids, expires_at FROM delayed_scoped_tokens WHERE token_hash = ?',
    );
    this.pruneTokensStmt = db.prepare('DELETE FROM delayed_scoped_tokens WHERE expires_at < ?');
    this.deleteTokenStmt = db.prepare('DELETE FROM delayed_scoped_tokens WHERE token_hash = ?');
    this.maxFinSeqStmt = db.prepare('SELECT COALESCE(MAX(fin_seq), 0) AS n FROM delayed_events');
  }

  insert(row: NewRow): void {
    this.insertStmt.run({ ...row });
  }

  get(delayId: string): DelayedRow | undefined {
    return this.getStmt.get(delayId) as DelayedRow | undefined;
  }

  loadScheduled(): DelayedRow[] {
    return this.loadScheduledStmt.all() as unknown as DelayedRow[];
  }

  restart(delayId: string, now: number, due: number): void {
    this.restartStmt.run({ delay_id: delayId, now, due });
  }

  /** Finalises a still-scheduled row; false when it was no longer scheduled. */
  finalise(delayId: string, fields: FinaliseFields): boolean {
    const result = this.finaliseStmt.run({
      delay_id: delayId,
      status: fields.status,
      cause: fields.cause,
      now: fields.now,
      fin_seq: fields.finSeq,
      event_id: fields.eventId ?? null,
      origin_server_ts: fields.originServerTs ?? null,
      error: fields.error ? JSON.stringify(fields.error.body) : null,
      error_status: fields.error?.status ?? null,
    });
    return result.changes === 1;
  }

  /** The highest finalisation sequence number used so far. */
  maxFinSeq(): number {
    return (this.maxFinSeqStmt.get() as { n: number }).n;
  }

  /** Keeps only the newest `keep` finalised rows of a user. */
  trimUser(userId: string, keep: number): void {
    this.trimUserStmt.run({ user: userId, keep });
  }

  /** How many finalised rows the user has. */
  countFinalised(userId: string): number {
    return (this.countFinalisedStmt.get(userId) as { n: number }).n;
  }

  /**
   * Deletes the user's `excess` oldest finalised rows (the same ones `trimUser` drops when the
   * user has `keep + excess`); returns how many were deleted.
   */
  trimOldest(userId: string, excess: number): number {
    return Number(this.trimOldestStmt.run({ user: userId, excess }).changes);
  }

  /** Drops finalised rows and tokens that are past their retention. */
  prune(finalisedBefore: number, now: number): void {
    this.pruneAgeStmt.run(finalisedBefore);
    this.pruneTokensStmt.run(now);
  }

  scheduledPage(p: PageParams): DelayedRow[] {
    return this.scheduledPageStmt.all({ ...p }) as unknown as DelayedRow[];
  }

  finalisedPage(p: PageParams & { oldest: number }): DelayedRow[] {
    return this.finalisedPageStmt.all({ ...p }) as unknown as DelayedRow[];
  }

  insertToken(hash: string, userId: string, delayIds: string[], expiresAt: number): void {
    this.insertTokenStmt.run(hash, userId, JSON.stringify(delayIds), expiresAt);
  }

  deleteToken(hash: string): void {
    this.deleteTokenStmt.run(hash);
  }

  token(hash: string): { userId: string; delayIds: string[]; expiresAt: number } | undefined {
    const row = this.getTokenStmt.get(hash) as
      | { user_id: string; delay_ids: string; expires_at: number }
      | undefined;
    if (!row) return undefined;
    return { userId: row.user_id, delayIds: JSON.parse(row.delay_ids) as string[], expiresAt: row.expires_at };
  }
}
