/**
 * Scheduling: the seed's query form on /send and /state, the generation-C dedicated PUT with its
 * transaction idempotency, and every limit in both error forms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { sleep } from '../../e2e/support/proc.js';
import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startTestHomeserver, startWithRoom, type TestHomeserver } from '../harness.js';
import {
  act,
  DELAY_PARAM,
  delayIdOf,
  newTxn,
  OPEN_ROOM,
  openRoom,
  roomPath,
  scheduleDedicated,
  scheduleMessage,
  scheduleState,
  U,
  V1,
} from './support.js';

const scheduledIds = async (t: TestHomeserver, s: Session): Promise<string[]> => {
  const res = await t.request('GET', `${U}/delayed_events`, { token: s.accessToken });
  expect(res.status).toBe(200);
  return (res.body.delayed_events as Array<{ delay_id: string }>).map((e) => e.delay_id);
};

describe('scheduling', () => {
  let t: TestHomeserver;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      users: ['alice', 'bob'],
      room: OPEN_ROOM,
      overrides: { max_delay_ms: 3_600_000 },
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('query form on /send answers only a delay id and lists the event', async () => {
    const res = await scheduleMessage(t, alice, roomId, 60_000, { body: 'hello', n: 1 });
    expect(res.status).toBe(200);
    expect(Object.keys(res.body)).toEqual(['delay_id']);
    expect(res.body.delay_id).toMatch(/^[A-Za-z0-9_-]{32}$/);
    const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
    const item = listed.body.delayed_events.find((e: { delay_id: string }) => e.delay_id === res.body.delay_id);
    expect(item).toMatchObject({ room_id: roomId, type: 'com.example.test', delay: 60_000, content: { body: 'hello', n: 1 } });
    expect(item.state_key).toBeUndefined();
  });

  it('query form on /state keeps the (possibly empty) state key', async () => {
    const res = await scheduleState(t, alice, roomId, 60_000, { v: 'ü→✓' }, 'com.example.state', '');
    expect(res.status).toBe(200);
    const withKey = await scheduleState(t, alice, roomId, 60_000, {}, 'com.example.state', alice.userId);
    const listed = await t.request('GET', `${V1}/delayed_events/scheduled`, { token: alice.accessToken });
    const byId = new Map(listed.body.delayed_events.map((e: { delay_id: string }) => [e.delay_id, e]));
    expect(byId.get(res.body.delay_id)).toMatchObject({ state_key: '', content: { v: 'ü→✓' } });
    expect(byId.get(withKey.body.delay_id)).toMatchObject({ state_key: alice.userId, content: {} });
  });

  it('delay ids are distinct, opaque and at least 128 bits', async () => {
    const ids = await Promise.all(
      Array.from({ length: 20 }, () => delayIdOf(scheduleMessage(t, bob, roomId, 60_000))),
    );
    expect(new Set(ids).size).toBe(20);
    for (const id of ids) {
      expect(id).not.toMatch(/^syd_/);
      expect(Buffer.from(id, 'base64url').length).toBeGreaterThanOrEqual(16);
    }
    for (const id of ids) expect((await act(t, id, 'cancel', bob.accessToken)).status).toBe(200);
  });

  it('needs no membership or power at scheduling time', async () => {
    const carol = await t.register('carol');
    const res = await scheduleMessage(t, carol, roomId, 60_000);
    expect(res.status).toBe(200);
    expect(await scheduledIds(t, carol)).toEqual([res.body.delay_id]);
  });

  it('unknown room is 404 and schedules nothing', async () => {
    const dave = await t.register('dave');
    const res = await scheduleMessage(t, dave, '!nope:localhost', 1000);
    expect(res.status).toBe(404);
    expect(res.body.errcode).toBe('M_NOT_FOUND');
    const dedicated = await scheduleDedicated(t, dave, '!nope:localhost', { delay_ms: 1000, content: {} });
    expect(dedicated.status).toBe(404);
    expect(await scheduledIds(t, dave)).toEqual([]);
  });

  describe('dedicated PUT (generation C)', () => {
    it('schedules message and state events under v3 and the unstable prefix', async () => {
      const msg = await scheduleDedicated(t, alice, roomId, { delay_ms: 50_000, content: { a: 1 } });
      expect(msg.status).toBe(200);
      expect(Object.keys(msg.body)).toEqual(['delay_id']);
      const state = await scheduleDedicated(
        t,
        alice,
        roomId,
        { delay_ms: 50_000, state_key: 'k', content: { b: 2 } },
        { prefix: U, type: 'com.example.state' },
      );
      expect(state.status).toBe(200);
      const one = await t.request('GET', `${V1}/delayed_events/${enc(state.body.delay_id)}`, { token: alice.accessToken });
      expect(one.body).toMatchObject({ type: 'com.example.state', state_key: 'k', delay_ms: 50_000, content: { b: 2 } });
      const other = await t.request('GET', `${V1}/delayed_events/${enc(msg.body.delay_id)}`, { token: alice.accessToken });
      expect(other.body.state_key).toBeUndefined();
    });

    it('a repeated PUT returns the same delay id, even with no body, and schedules once', async () => {
      const erin = await t.register('erin');
      const txn = newTxn();
      const first = await scheduleDedicated(t, erin, roomId, { delay_ms: 40_000, content: { once: true } }, { txn });
      expect(first.status).toBe(200);
      const again = await scheduleDedicated(t, erin, roomId, { delay_ms: 1, content: { other: true } }, { txn });
      const bodiless = await scheduleDedicated(t, erin, roomId, undefined, { txn });
      expect(again.body).toEqual(first.body);
      expect(bodiless.status).toBe(200);
      expect(bodiless.body).toEqual(first.body);
      expect(await scheduledIds(t, erin)).toEqual([first.body.delay_id]);
    });

    it('concurrent repeats of one transaction share one delay id', async () => {
      const fay = await t.register('fay');
      const txn = newTxn();
      const all = await Promise.all(
        Array.from({ length: 5 }, () => scheduleDedicated(t, fay, roomId, { delay_ms: 40_000, content: {} }, { txn })),
      );
      expect(new Set(all.map((r) => r.body.delay_id)).size).toBe(1);
      expect((await scheduledIds(t, fay)).length).toBe(1);
    });

    it('a repeat arriving while the first is still reading its body gets the same delay id', async () => {
      const fay = await t.register('fay2');
      const path = `/_matrix/client/v3/rooms/${enc(roomId)}/delayed_event/com.example.test/${newTxn()}`;
      const firstBody = { delay_ms: 40_000, content: { first: true } };
      // The first request's handler is left waiting for its body while the repeat arrives whole.
      const first = t.openRequest('PUT', path, { token: fay.accessToken, contentLength: JSON.stringify(firstBody).length });
      await sleep(100);
      const repeat = t.request('PUT', path, { token: fay.accessToken, body: { delay_ms: 40_000, content: {} } });
      await sleep(100);
      const [a, b] = await Promise.all([first.finish(firstBody), repeat]);
      expect([a.status, b.status]).toEqual([200, 200]);
      expect(b.body.delay_id).toBe(a.body.delay_id);
      expect(await scheduledIds(t, fay)).toEqual([a.body.delay_id]);
    });

    it('the same txn id from another user or another room is a new event', async () => {
      const txn = newTxn();
      const a = await scheduleDedicated(t, alice, roomId, { delay_ms: 40_000, content: {} }, { txn });
      const b = await scheduleDedicated(t, bob, roomId, { delay_ms: 40_000, content: {} }, { txn });
      const other = await openRoom(t, alice);
      const c = await scheduleDedicated(t, alice, other, { delay_ms: 40_000, content: {} }, { txn });
      expect(new Set([a.body.delay_id, b.body.delay_id, c.body.delay_id]).size).toBe(3);
    });

    it.each([
      ['no body', undefined, 400, 'M_NOT_JSON'],
      ['an array', [], 400, 'M_NOT_JSON'],
      ['no delay_ms', { content: {} }, 400, 'M_MISSING_PARAM'],
      ['no content', { delay_ms: 10 }, 400, 'M_MISSING_PARAM'],
      ['delay_ms 0', { delay_ms: 0, content: {} }, 400, 'M_INVALID_PARAM'],
      ['negative delay_ms', { delay_ms: -5, content: {} }, 400, 'M_INVALID_PARAM'],
      ['fractional delay_ms', { delay_ms: 1.5, content: {} }, 400, 'M_INVALID_PARAM'],
      ['string delay_ms', { delay_ms: '10', content: {} }, 400, 'M_INVALID_PARAM'],
      ['array content', { delay_ms: 10, content: [] }, 400, 'M_INVALID_PARAM'],
      ['numeric state_key', { delay_ms: 10, state_key: 1, content: {} }, 400, 'M_INVALID_PARAM'],
    ])('rejects %s without scheduling', async (_what, body, status, errcode) => {
      const gus = await t.register(`gus${Math.random().toString(36).slice(2, 8)}`);
      const res = await scheduleDedicated(t, gus, roomId, body);
      expect(res.status).toBe(status);
      expect(res.body.errcode).toBe(errcode);
      expect(await scheduledIds(t, gus)).toEqual([]);
    });

    it('rejects oversized content with 413', async () => {
      const res = await scheduleDedicated(t, bob, roomId, { delay_ms: 10, content: { big: 'x'.repeat(70_000) } });
      expect(res.status).toBe(413);
      expect(res.body.errcode).toBe('M_TOO_LARGE');
    });

    it('needs an access token', async () => {
      const res = await t.request('PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/delayed_event/x/${newTxn()}`, {
        body: { delay_ms: 10, content: {} },
      });
      expect(res.status).toBe(401);
      expect(res.body.errcode).toBe('M_MISSING_TOKEN');
    });
  });

  it('a txn id on the query form is idempotent too (core), and the repeat needs no body', async () => {
    const txn = newTxn();
    const first = await scheduleMessage(t, alice, roomId, 30_000, { x: 1 }, 'com.example.test', txn);
    const again = await t.request('PUT', roomPath(roomId, `/send/com.example.test/${txn}?${DELAY_PARAM}=30000`), {
      token: alice.accessToken,
    });
    expect(again.status).toBe(200);
    expect(again.body.delay_id).toBe(first.body.delay_id);
  });
});

describe('limits', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: OPEN_ROOM,
      overrides: { max_delay_ms: 10_000, delayed_events: { max_scheduled_per_user: 2 } },
      clock,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('delay above the maximum: seed form on the query parameter', async () => {
    const res = await scheduleMessage(t, alice, roomId, 10_001);
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({
      errcode: 'M_UNKNOWN',
      'org.matrix.msc4140.errcode': 'M_MAX_DELAY_EXCEEDED',
      'org.matrix.msc4140.max_delay': 10_000,
    });
    const state = await scheduleState(t, alice, roomId, 20_000, {});
    expect(state.body['org.matrix.msc4140.errcode']).toBe('M_MAX_DELAY_EXCEEDED');
  });

  it('delay above the maximum: 403 M_FORBIDDEN on the dedicated PUT', async () => {
    const res = await scheduleDedicated(t, alice, roomId, { delay_ms: 10_001, content: {} });
    expect(res.status).toBe(403);
    expect(res.body.errcode).toBe('M_FORBIDDEN');
    expect(await scheduleDedicated(t, alice, roomId, { delay_ms: 10_000, content: {} })).toMatchObject({ status: 200 });
    const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
    expect(listed.body.delayed_events).toHaveLength(1);
  });

  it('count limit: seed form on the query parameter, 429 with Retry-After on the dedicated PUT', async () => {
    // One scheduled above (due in 10 s); one more fills the quota of 2.
    clock.advance(1_000);
    expect((await scheduleMessage(t, alice, roomId, 5_000)).status).toBe(200);
    const seed = await scheduleMessage(t, alice, roomId, 5_000);
    expect(seed.status).toBe(400);
    expect(seed.body).toMatchObject({
      errcode: 'M_UNKNOWN',
      'org.matrix.msc4140.errcode': 'M_MAX_DELAYED_EVENTS_EXCEEDED',
    });
    clock.advance(1_500);
    const c = await scheduleDedicated(t, alice, roomId, { delay_ms: 100, content: {} });
    expect(c.status).toBe(429);
    expect(c.body.errcode).toBe('M_LIMIT_EXCEEDED');
    // The soonest of alice's events is due 3.5 s from now: Retry-After rounds up to 4.
    expect(c.body.retry_after_ms).toBe(3_500);
    expect(c.headers['retry-after']).toBe('4');
    const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
    expect(listed.body.delayed_events).toHaveLength(2);
  });

  it('a slot frees up once an event is sent', async () => {
    clock.advance(3_500);
    const res = await scheduleDedicated(t, alice, roomId, { delay_ms: 100, content: {} });
    expect(res.status).toBe(200);
  });
});

describe('feature disabled and scheduling rate limit', () => {
  it('max_scheduled_per_user 0 refuses both forms with 403', async () => {
    const t = await startTestHomeserver({ delayed_events: { max_scheduled_per_user: 0 } });
    try {
      const alice = await t.register('alice');
      const roomId = await openRoom(t, alice);
      const q = await scheduleMessage(t, alice, roomId, 1000);
      const d = await scheduleDedicated(t, alice, roomId, { delay_ms: 1000, content: {} });
      for (const r of [q, d]) {
        expect(r.status).toBe(403);
        expect(r.body.errcode).toBe('M_FORBIDDEN');
      }
    } finally {
      await t.close();
    }
  });

  it('scheduling is rate limited per user, in both forms', async () => {
    const clock = new FakeClock();
    const t = await startTestHomeserver({ rate_limits: { schedule: { per_second: 1, burst: 2 } } }, { clock });
    try {
      const alice = await t.register('alice');
      const bob = await t.register('bob');
      const roomId = await openRoom(t, alice);
      expect((await scheduleMessage(t, alice, roomId, 60_000)).status).toBe(200);
      expect((await scheduleDedicated(t, alice, roomId, { delay_ms: 60_000, content: {} })).status).toBe(200);
      const limited = await scheduleMessage(t, alice, roomId, 60_000);
      expect(limited.status).toBe(429);
      expect(limited.body.errcode).toBe('M_LIMIT_EXCEEDED');
      expect(limited.body.retry_after_ms).toBe(1000);
      expect(limited.headers['retry-after']).toBe('1');
      const limitedC = await scheduleDedicated(t, alice, roomId, { delay_ms: 60_000, content: {} });
      expect(limitedC.status).toBe(429);
      // Another user has a bucket of their own.
      expect((await scheduleMessage(t, bob, roomId, 60_000)).status).toBe(200);
      clock.advance(1_000);
      expect((await scheduleMessage(t, alice, roomId, 60_000)).status).toBe(200);
      const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
      expect(listed.body.delayed_events).toHaveLength(3);
    } finally {
      await t.close();
    }
  });
});
