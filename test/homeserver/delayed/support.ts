/** Shared helpers of the delayed-events tests: paths, scheduling calls, polling, a manual clock. */
import type { Clock } from '../../../src/lib/timer-heap.js';
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

/** Polls `probe` until it returns a value, or fails after `timeoutMs` (generous by default). */
export async function waitFor<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A room where everyone may send `com.example.*` events and state (power level 0). */
export async function openRoom(t: TestHomeserver, owner: Session, members: Session[] = []): Promise<string> {
  const roomId = await t.createRoom(owner.accessToken, {
    preset: 'public_chat',
    power_level_content_override: {
      events: { 'com.example.test': 0, 'com.example.state': 0, 'com.example.other': 0 },
    },
  });
  for (const m of members) {
    const res = await t.request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: m.accessToken, body: {} });
    if (res.status !== 200) throw new Error(`join failed: ${res.status} ${JSON.stringify(res.body)}`);
  }
  return roomId;
}

/**
 * A clock the test advances by hand: timers fire in due order as time passes them. Used where a
 * rule is about time (restart, retention, Retry-After) so the test never races the wall clock.
 */
export class ManualClock implements Clock {
  private t = 1_750_000_000_000;
  private nextId = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.nextId;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time forward, running every timer that falls due on the way, in due order. */
  advance(ms: number): void {
    const target = this.t + ms;
    for (;;) {
      let nextId: number | undefined;
      let nextAt = Infinity;
      for (const [id, timer] of this.timers) {
        if (timer.at <= target && timer.at < nextAt) {
          nextAt = timer.at;
          nextId = id;
        }
      }
      if (nextId === undefined) break;
      const timer = this.timers.get(nextId)!;
      this.timers.delete(nextId);
      this.t = Math.max(this.t, timer.at);
      timer.fn();
    }
    this.t = target;
  }
}
