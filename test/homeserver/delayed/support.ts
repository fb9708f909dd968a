/** Shared helpers of the delayed-events tests: paths, scheduling calls, rooms, the timeline. */
import { Writable } from 'node:stream';

import type { Logger } from 'pino';

import { createLogger, type LogLevel } from '../../../src/lib/logger.js';
import { enc, type Session, type TestHomeserver, type TestResponse } from '../harness.js';

export const U = '/_matrix/client/unstable/org.matrix.msc4140';
export const V1 = '/_matrix/client/v1';
export const DELAY_PARAM = 'org.matrix.msc4140.delay';

export const roomPath = (roomId: string, rest: string): string => `/_matrix/client/v3/rooms/${enc(roomId)}${rest}`;

let txnCounter = 0;
export const newTxn = (): string => `txn-${process.pid}-${++txnCounter}`;

/** `PUT /send/{type}/{txn}?org.matrix.msc4140.delay=` (the seed's query form). */
export function scheduleMessage(
  t: TestHomeserver,
  s: Session,
  roomId: string,
  delay: number,
  content: Record<string, unknown> = { body: 'later' },
  type = 'com.example.test',
  txn = newTxn(),
): Promise<TestResponse> {
  return t.request('PUT', roomPath(roomId, `/send/${enc(type)}/${enc(txn)}?${DELAY_PARAM}=${delay}`), {
    token: s.accessToken,
    body: content,
  });
}

/** `PUT /state/{type}/{key}?org.matrix.msc4140.delay=`. */
export function scheduleState(
  t: TestHomeserver,
  s: Session,
  roomId: string,
  delay: number,
  content: Record<string, unknown>,
  type = 'com.example.state',
  stateKey = '',
): Promise<TestResponse> {
  return t.request('PUT', roomPath(roomId, `/state/${enc(type)}/${enc(stateKey)}?${DELAY_PARAM}=${delay}`), {
    token: s.accessToken,
    body: content,
  });
}

/** The generation-C dedicated PUT. */
export function scheduleDedicated(
  t: TestHomeserver,
  s: Session,
  roomId: string,
  body: unknown,
  opts: { type?: string; txn?: string; prefix?: string; raw?: boolean } = {},
): Promise<TestResponse> {
  const prefix = opts.prefix ?? '/_matrix/client/v3';
  const path = `${prefix}/rooms/${enc(roomId)}/delayed_event/${enc(opts.type ?? 'com.example.test')}/${enc(opts.txn ?? newTxn())}`;
  return t.request('PUT', path, { token: s.accessToken, ...(body === undefined ? {} : { body }) });
}

/** Schedules through the query form and returns the delay id (fails the test otherwise). */
export async function delayIdOf(res: Promise<TestResponse>): Promise<string> {
  const r = await res;
  if (r.status !== 200 || typeof r.body?.delay_id !== 'string') {
    throw new Error(`scheduling failed: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body.delay_id as string;
}

/** `POST {prefix}/delayed_events/{id}/{action}`, with or without a token. */
export function act(
  t: TestHomeserver,
  delayId: string,
  action: string,
  token?: string,
  prefix = U,
): Promise<TestResponse> {
  return t.request('POST', `${prefix}/delayed_events/${enc(delayId)}/${action}`, {
    ...(token !== undefined ? { token } : {}),
    body: {},
  });
}

export interface RoomEvent {
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
  origin_server_ts: number;
  unsigned?: Record<string, unknown>;
}

/** The room's timeline oldest first, optionally only one event type. */
export async function timeline(t: TestHomeserver, s: Session, roomId: string, type?: string): Promise<RoomEvent[]> {
  const res = await t.request('GET', roomPath(roomId, '/messages?dir=f&limit=1000'), { token: s.accessToken });
  if (res.status !== 200) throw new Error(`/messages failed: ${res.status} ${JSON.stringify(res.body)}`);
  const chunk = res.body.chunk as RoomEvent[];
  return type === undefined ? chunk : chunk.filter((e) => e.type === type);
}

/** createRoom body of a room where everyone may send `com.example.*` events and state. */
export const OPEN_ROOM = {
  preset: 'public_chat',
  power_level_content_override: {
    events: { 'com.example.test': 0, 'com.example.state': 0, 'com.example.other': 0 },
  },
};

/** startWithRoom options: alice and bob, both members of an OPEN_ROOM that alice created. */
export const ALICE_AND_BOB = { users: ['alice', 'bob'], room: OPEN_ROOM, members: ['bob'] } as const;

/** Limits for tests making many management calls from one user (the limit is tested apart). */
/** One timed send per user, then none for ~17 min: the next due event takes the rate-limited path. */
export const ONE_SEND_PER_USER = { rate_limits: { send: { per_second: 0.001, burst: 1 } } };

/** One turn of the event loop (a timed send's drain runs on setImmediate). */
export { nextTurn } from '../../support/next-turn.js';

export const MANY_MANAGEMENT_CALLS = { rate_limits: { management: { per_second: 1000, burst: 1000 } } };

/** Another OPEN_ROOM, created by `owner` and joined by `members`. */
export async function openRoom(t: TestHomeserver, owner: Session, members: Session[] = []): Promise<string> {
  const roomId = await t.createRoom(owner.accessToken, OPEN_ROOM);
  for (const m of members) await t.join(m.accessToken, roomId);
  return roomId;
}

/** A logger whose JSON lines are collected, so a test can assert what was logged (and at which level). */
export function capturingLogger(level: LogLevel = 'error'): { log: Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { log: createLogger({ level }, sink), lines };
}
