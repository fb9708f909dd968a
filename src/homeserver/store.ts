/**
 * The core's SQLite schema and its prepared statements, created once per database. Every table the
 * core owns lives here; the delayed-events module keeps its own tables in the same file.
 */
import type { DatabaseSync, SQLInputValue, StatementSync } from 'node:sqlite';

import { addColumnIfMissing } from '../lib/sqlite.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
  user_id TEXT PRIMARY KEY,
  password_hash TEXT,
  admin INTEGER NOT NULL DEFAULT 0,
  displayname TEXT,
  avatar_url TEXT,
  created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS access_tokens (
  token TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(user_id),
  device_id TEXT NOT NULL,
  created_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_tokens_user ON access_tokens(user_id);
CREATE TABLE IF NOT EXISTS rooms (
  room_id TEXT PRIMARY KEY,
  creator TEXT NOT NULL,
  room_version TEXT NOT NULL,
  created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  stream INTEGER PRIMARY KEY,
  event_id TEXT NOT NULL UNIQUE,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  sender TEXT NOT NULL,
  type TEXT NOT NULL,
  state_key TEXT,
  content TEXT NOT NULL,
  origin_server_ts INTEGER NOT NULL,
  delay_id TEXT,
  sticky_duration_ms INTEGER
);
CREATE INDEX IF NOT EXISTS events_room ON events(room_id, stream);
-- MSC4354 sticky events while they are sticky: what /sync delivers beside the timeline. Rows past
-- expires_at are ignored at once and deleted now and then.
CREATE TABLE IF NOT EXISTS sticky_events (
  stream INTEGER PRIMARY KEY,
  room_id TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sticky_events_room ON sticky_events(room_id, stream);
CREATE INDEX IF NOT EXISTS sticky_events_expiry ON sticky_events(expires_at);
CREATE TABLE IF NOT EXISTS current_state (
  room_id TEXT NOT NULL,
  type TEXT NOT NULL,
  state_key TEXT NOT NULL,
  event_id TEXT NOT NULL,
  stream INTEGER NOT NULL,
  membership TEXT,
  PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX IF NOT EXISTS current_state_member ON current_state(state_key, type);
CREATE TABLE IF NOT EXISTS account_data (
  user_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  type TEXT NOT NULL,
  content TEXT NOT NULL,
  stream INTEGER NOT NULL,
  PRIMARY KEY (user_id, room_id, type)
);
CREATE TABLE IF NOT EXISTS filters (
  user_id TEXT NOT NULL,
  filter_id INTEGER NOT NULL,
  filter TEXT NOT NULL,
  PRIMARY KEY (user_id, filter_id)
);
CREATE TABLE IF NOT EXISTS txns (
  txn_key TEXT PRIMARY KEY,
  response TEXT NOT NULL,
  expires_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS txns_expires ON txns(expires_ts);
CREATE TABLE IF NOT EXISTS openid_tokens (
  token TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  expires_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten_rooms (
  user_id TEXT NOT NULL,
  room_id TEXT NOT NULL,
  PRIMARY KEY (user_id, room_id)
);
CREATE TABLE IF NOT EXISTS presence (
  user_id TEXT PRIMARY KEY,
  presence TEXT NOT NULL,
  status_msg TEXT,
  updated_ts INTEGER NOT NULL
);
`;

/** The tables above, for tests that check a rejected request changed nothing. */
export const CORE_TABLES = [
  'users',
  'access_tokens',
  'rooms',
  'events',
  'sticky_events',
  'current_state',
  'account_data',
  'filters',
  'txns',
  'openid_tokens',
  'forgotten_rooms',
  'presence',
] as const;

export interface UserRow {
  user_id: string;
  password_hash: string | null;
  admin: number;
  displayname: string | null;
  avatar_url: string | null;
}

export interface EventRow {
  stream: number;
  event_id: string;
  room_id: string;
  sender: string;
  type: string;
  state_key: string | null;
  content: string;
  origin_server_ts: number;
  delay_id: string | null;
  /** MSC4354: the sticky duration the sender asked for; null for a normal event. */
  sticky_duration_ms: number | null;
}

export interface MembershipRow {
  room_id: string;
  membership: string;
  /** Stream position of the membership event. */
  stream: number;
  event_id: string;
}

export interface AccountDataRow {
  room_id: string;
  type: string;
  content: string;
}

/** Typed wrappers over prepared statements; one instance per database. */
export class CoreStore {
  private readonly s: Record<string, StatementSync>;

  constructor(readonly db: DatabaseSync) {
    db.exec(SCHEMA);
    addColumnIfMissing(db, 'events', 'sticky_duration_ms', 'INTEGER');
    const prep = (sql: string) => db.prepare(sql);
    this.s = {
      insertUser: prep(
        'INSERT INTO users (user_id, password_hash, admin, displayname, created_ts) VALUES (?, ?, ?, ?, ?)',
      ),
      getUser: prep('SELECT user_id, password_hash, admin, displayname, avatar_url FROM users WHERE user_id = ?'),
      setDisplayname: prep('UPDATE users SET displayname = ? WHERE user_id = ?'),
      setAvatar: prep('UPDATE users SET avatar_url = ? WHERE user_id = ?'),
      insertToken: prep('INSERT INTO access_tokens (token, user_id, device_id, created_ts) VALUES (?, ?, ?, ?)'),
      getToken: prep('SELECT user_id, device_id FROM access_tokens WHERE token = ?'),
      deleteToken: prep('DELETE FROM access_tokens WHERE token = ?'),
      deleteUserTokens: prep('DELETE FROM access_tokens WHERE user_id = ?'),
      insertRoom: prep('INSERT INTO rooms (room_id, creator, room_version, created_ts) VALUES (?, ?, ?, ?)'),
      roomExists: prep('SELECT 1 AS x FROM rooms WHERE room_id = ?'),
      insertEvent: prep(
        `INSERT INTO events (stream, event_id, room_id, sender, type, state_key, content, origin_server_ts, delay_id,
           sticky_duration_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      insertSticky: prep('INSERT INTO sticky_events (stream, room_id, expires_at) VALUES (?, ?, ?)'),
      pruneSticky: prep('DELETE FROM sticky_events WHERE expires_at <= ?'),
      stickyBetween: prep(
        `SELECT e.* FROM sticky_events s JOIN events e ON e.stream = s.stream
         WHERE s.room_id = ? AND s.stream > ? AND s.stream <= ? AND s.expires_at > ? ORDER BY s.stream`,
      ),
      getEvent: prep('SELECT * FROM events WHERE event_id = ?'),
      upsertState: prep(
        `INSERT INTO current_state (room_id, type, state_key, event_id, stream, membership) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,
           stream = excluded.stream, membership = excluded.membership`,
      ),
      stateEvent: prep(
        `SELECT e.* FROM current_state c JOIN events e ON e.event_id = c.event_id
         WHERE c.room_id = ? AND c.type = ? AND c.state_key = ?`,
      ),
      roomState: prep(
        `SELECT e.* FROM current_state c JOIN events e ON e.event_id = c.event_id
         WHERE c.room_id = ? ORDER BY c.stream`,
      ),
      roomStateOfType: prep(
        `SELECT e.* FROM current_state c JOIN events e ON e.event_id = c.event_id
         WHERE c.room_id = ? AND c.type = ? ORDER BY c.stream`,
      ),
      membershipOf: prep(
        "SELECT membership, stream FROM current_state WHERE room_id = ? AND type = 'm.room.member' AND state_key = ?",
      ),
      membershipsOfUser: prep(
        `SELECT room_id, membership, stream, event_id FROM current_state
         WHERE state_key = ? AND type = 'm.room.member'`,
      ),
      // The newest state event per (type, state_key) in a stream range: the room's state as of
      // `upTo` (with `after` 0), or what changed in a range. Walks the room's events once.
      stateBetween: prep(
        `SELECT e.* FROM events e JOIN (
           SELECT MAX(stream) AS stream FROM events
           WHERE room_id = ? AND state_key IS NOT NULL AND stream > ? AND stream <= ?
           GROUP BY type, state_key
         ) newest ON e.stream = newest.stream
         ORDER BY e.stream`,
      ),
      stateEventAt: prep(
        `SELECT * FROM events WHERE room_id = ? AND type = ? AND state_key = ? AND stream <= ?
         ORDER BY stream DESC LIMIT 1`,
      ),
      forgetRoom: prep('INSERT OR IGNORE INTO forgotten_rooms (user_id, room_id) VALUES (?, ?)'),
      unforgetRoom: prep('DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?'),
      isForgotten: prep('SELECT 1 AS x FROM forgotten_rooms WHERE user_id = ? AND room_id = ?'),
      maxEventStream: prep('SELECT COALESCE(MAX(stream), 0) AS m FROM events'),
      maxAccountDataStream: prep('SELECT COALESCE(MAX(stream), 0) AS m FROM account_data'),
      eventsBackward: prep(
        'SELECT * FROM events WHERE room_id = ? AND stream <= ? AND stream > ? ORDER BY stream DESC LIMIT ?',
      ),
      eventsForward: prep(
        'SELECT * FROM events WHERE room_id = ? AND stream > ? AND stream <= ? ORDER BY stream ASC LIMIT ?',
      ),
      countEventsBetween: prep('SELECT COUNT(*) AS n FROM events WHERE room_id = ? AND stream > ? AND stream <= ?'),
      stateEventsBetween: prep(
        `SELECT e.* FROM current_state c JOIN events e ON e.event_id = c.event_id
         WHERE c.room_id = ? AND c.stream > ? ORDER BY c.stream`,
      ),
      upsertAccountData: prep(
        `INSERT INTO account_data (user_id, room_id, type, content, stream) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream = excluded.stream`,
      ),
      getAccountData: prep('SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?'),
      accountDataSince: prep(
        'SELECT room_id, type, content FROM account_data WHERE user_id = ? AND stream > ? AND stream <= ?',
      ),
      nextFilterId: prep('SELECT COALESCE(MAX(filter_id), -1) + 1 AS n FROM filters WHERE user_id = ?'),
      insertFilter: prep('INSERT INTO filters (user_id, filter_id, filter) VALUES (?, ?, ?)'),
      getFilter: prep('SELECT filter FROM filters WHERE user_id = ? AND filter_id = ?'),
      getTxn: prep('SELECT response FROM txns WHERE txn_key = ? AND expires_ts > ?'),
      insertTxn: prep('INSERT OR REPLACE INTO txns (txn_key, response, expires_ts) VALUES (?, ?, ?)'),
      pruneTxns: prep('DELETE FROM txns WHERE expires_ts <= ?'),
      insertOpenid: prep('INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES (?, ?, ?)'),
      getOpenid: prep('SELECT user_id FROM openid_tokens WHERE token = ? AND expires_ts > ?'),
      pruneOpenid: prep('DELETE FROM openid_tokens WHERE expires_ts <= ?'),
      upsertPresence: prep(
        `INSERT INTO presence (user_id, presence, status_msg, updated_ts) VALUES (?, ?, ?, ?)
         ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, status_msg = excluded.status_msg,
           updated_ts = excluded.updated_ts`,
      ),
      getPresence: prep('SELECT presence, status_msg, updated_ts FROM presence WHERE user_id = ?'),
    };
  }

  private get<T>(name: string, ...args: SQLInputValue[]): T | undefined {
    return this.s[name]!.get(...args) as T | undefined;
  }

  private all<T>(name: string, ...args: SQLInputValue[]): T[] {
    return this.s[name]!.all(...args) as T[];
  }

  private run(name: string, ...args: SQLInputValue[]): number {
    return Number(this.s[name]!.run(...args).changes);
  }

  insertUser(userId: string, passwordHash: string | null, admin: boolean, displayname: string, now: number): void {
    this.run('insertUser', userId, passwordHash, admin ? 1 : 0, displayname, now);
  }
  getUser(userId: string): UserRow | undefined {
    return this.get('getUser', userId);
  }
  setDisplayname(userId: string, name: string | null): void {
    this.run('setDisplayname', name, userId);
  }
  setAvatar(userId: string, url: string | null): void {
    this.run('setAvatar', url, userId);
  }

  insertToken(token: string, userId: string, deviceId: string, now: number): void {
    this.run('insertToken', token, userId, deviceId, now);
  }
  getToken(token: string): { user_id: string; device_id: string } | undefined {
    return this.get('getToken', token);
  }
  deleteToken(token: string): void {
    this.run('deleteToken', token);
  }
  deleteUserTokens(userId: string): void {
    this.run('deleteUserTokens', userId);
  }

  insertRoom(roomId: string, creator: string, version: string, now: number): void {
    this.run('insertRoom', roomId, creator, version, now);
  }
  roomExists(roomId: string): boolean {
    return this.get('roomExists', roomId) !== undefined;
  }

  insertEvent(row: EventRow): void {
    this.run(
      'insertEvent',
      row.stream,
      row.event_id,
      row.room_id,
      row.sender,
      row.type,
      row.state_key,
      row.content,
      row.origin_server_ts,
      row.delay_id,
      row.sticky_duration_ms,
    );
  }
  /** Records a sticky event (already inserted at `stream`) until it expires. */
  insertSticky(stream: number, roomId: string, expiresAt: number): void {
    this.run('insertSticky', stream, roomId, expiresAt);
  }
  pruneSticky(now: number): void {
    this.run('pruneSticky', now);
  }
  /** The room's events with `after < stream <= upTo` that are still sticky at `now`, oldest first. */
  stickyBetween(roomId: string, after: number, upTo: number, now: number): EventRow[] {
    return this.all('stickyBetween', roomId, after, upTo, now);
  }
  getEvent(eventId: string): EventRow | undefined {
    return this.get('getEvent', eventId);
  }
  upsertState(
    roomId: string,
    type: string,
    stateKey: string,
    eventId: string,
    stream: number,
    membership: string | null,
  ): void {
    this.run('upsertState', roomId, type, stateKey, eventId, stream, membership);
  }
  stateEvent(roomId: string, type: string, stateKey: string): EventRow | undefined {
    return this.get('stateEvent', roomId, type, stateKey);
  }
  roomState(roomId: string): EventRow[] {
    return this.all('roomState', roomId);
  }
  roomStateOfType(roomId: string, type: string): EventRow[] {
    return this.all('roomStateOfType', roomId, type);
  }
  membershipOf(roomId: string, userId: string): string | undefined {
    return this.membershipRowOf(roomId, userId)?.membership;
  }
  /** The user's current membership in the room and the stream position of its event. */
  membershipRowOf(roomId: string, userId: string): { membership: string; stream: number } | undefined {
    return this.get('membershipOf', roomId, userId);
  }
  membershipsOfUser(userId: string): MembershipRow[] {
    return this.all('membershipsOfUser', userId);
  }
  maxStream(): number {
    const a = this.get<{ m: number }>('maxEventStream')!.m;
    const b = this.get<{ m: number }>('maxAccountDataStream')!.m;
    return Math.max(a, b);
  }
  /** Newest first: events with `after < stream <= upTo`. */
  eventsBackward(roomId: string, upTo: number, after: number, limit: number): EventRow[] {
    return this.all('eventsBackward', roomId, upTo, after, limit);
  }
  /** Oldest first: events with `from < stream <= upTo`. */
  eventsForward(roomId: string, from: number, upTo: number, limit: number): EventRow[] {
    return this.all('eventsForward', roomId, from, upTo, limit);
  }
  countEventsBetween(roomId: string, after: number, upTo: number): number {
    return this.get<{ n: number }>('countEventsBetween', roomId, after, upTo)!.n;
  }
  /** The room's state as of position `upTo`, or with `after` > 0 only what changed after it. */
  stateBetween(roomId: string, after: number, upTo: number): EventRow[] {
    return this.all('stateBetween', roomId, after, upTo);
  }
  /** The state event at (type, state_key) as of position `upTo`. */
  stateEventAt(roomId: string, type: string, stateKey: string, upTo: number): EventRow | undefined {
    return this.get('stateEventAt', roomId, type, stateKey, upTo);
  }
  /** Current state entries that changed after `after`. */
  stateChangedSince(roomId: string, after: number): EventRow[] {
    return this.all('stateEventsBetween', roomId, after);
  }

  upsertAccountData(userId: string, roomId: string, type: string, content: string, stream: number): void {
    this.run('upsertAccountData', userId, roomId, type, content, stream);
  }
  getAccountData(userId: string, roomId: string, type: string): string | undefined {
    return this.get<{ content: string }>('getAccountData', userId, roomId, type)?.content;
  }
  accountDataSince(userId: string, after: number, upTo: number): AccountDataRow[] {
    return this.all('accountDataSince', userId, after, upTo);
  }

  forgetRoom(userId: string, roomId: string): void {
    this.run('forgetRoom', userId, roomId);
  }
  /** A new membership brings a forgotten room back. */
  unforgetRoom(userId: string, roomId: string): void {
    this.run('unforgetRoom', userId, roomId);
  }
  isForgotten(userId: string, roomId: string): boolean {
    return this.get('isForgotten', userId, roomId) !== undefined;
  }

  insertFilter(userId: string, filter: string): number {
    const id = this.get<{ n: number }>('nextFilterId', userId)!.n;
    this.run('insertFilter', userId, id, filter);
    return id;
  }
  getFilter(userId: string, filterId: number): string | undefined {
    return this.get<{ filter: string }>('getFilter', userId, filterId)?.filter;
  }

  /** A remembered transaction response that has not expired at `now`. */
  getTxn(key: string, now: number): string | undefined {
    return this.get<{ response: string }>('getTxn', key, now)?.response;
  }
  insertTxn(key: string, response: string, expiresTs: number): void {
    this.run('insertTxn', key, response, expiresTs);
  }
  pruneTxns(now: number): void {
    this.run('pruneTxns', now);
  }

  insertOpenid(token: string, userId: string, expires: number): void {
    this.run('insertOpenid', token, userId, expires);
  }
  getOpenid(token: string, now: number): string | undefined {
    return this.get<{ user_id: string }>('getOpenid', token, now)?.user_id;
  }
  pruneOpenid(now: number): void {
    this.run('pruneOpenid', now);
  }

  upsertPresence(userId: string, presence: string, statusMsg: string | null, now: number): void {
    this.run('upsertPresence', userId, presence, statusMsg, now);
  }
  getPresence(userId: string): { presence: string; status_msg: string | null; updated_ts: number } | undefined {
    return this.get('getPresence', userId);
  }
}
