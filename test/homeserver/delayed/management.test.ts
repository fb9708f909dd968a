/**
 * Management: path and body forms, both prefixes, token-less capability use, owner scoping, the
 * seed's retry-safe send semantics and the latest text's conflicts, and management rate limits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { waitFor } from '../../e2e/support/proc.js';
import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import {
  act,
  ALICE_AND_BOB,
  delayIdOf,
  MANY_MANAGEMENT_CALLS,
  ONE_SEND_PER_USER,
  OPEN_ROOM,
  openRoom,
  roomPath,
  scheduleDedicated,
  scheduleMessage,
  scheduleState,
  timeline,
  U,
  V1,
} from './support.js';

/** Raises the level needed for `type` so that ordinary members can no longer send it. */
async function restrict(t: TestHomeserver, admin: Session, roomId: string, type: string): Promise<void> {
  const pl = await t.request('GET', roomPath(roomId, '/state/m.room.power_levels/'), { token: admin.accessToken });
  const content = { ...pl.body, events: { ...pl.body.events, [type]: 100 } };
  const res = await t.request('PUT', roomPath(roomId, '/state/m.room.power_levels/'), { token: admin.accessToken, body: content });
  expect(res.status).toBe(200);
}

const lookup = (t: TestHomeserver, s: Session, id: string) =>
  t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: s.accessToken });

describe('management', () => {
  let t: TestHomeserver;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    // Many calls from one address and user: the management limit itself is tested further down.
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: MANY_MANAGEMENT_CALLS,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  const schedule = (s: Session = alice, content: Record<string, unknown> = { body: 'x' }, delay = 600_000) =>
    delayIdOf(scheduleMessage(t, s, roomId, delay, content));

  describe.each([
    ['unstable', U],
    ['v1', V1],
  ])('path form under the %s prefix', (_name, prefix) => {
    it('send without a token sends the event now, as the owner', async () => {
      const id = await schedule(alice, { marker: `send-${prefix}` });
      const res = await act(t, id, 'send', undefined, prefix);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({});
      const sent = (await timeline(t, alice, roomId, 'com.example.test')).filter((e) => e.content.marker === `send-${prefix}`);
      expect(sent).toHaveLength(1);
      expect(sent[0]!.sender).toBe(alice.userId);
      expect(sent[0]!.unsigned?.['org.matrix.msc4140.delay_id']).toBe(id);
    });

    it('cancel without a token: never sent', async () => {
      const id = await schedule(alice, { marker: `cancel-${prefix}` });
      expect(await act(t, id, 'cancel', undefined, prefix)).toMatchObject({ status: 200, body: {} });
      expect((await lookup(t, alice, id)).body.finalised_ts).toBeTypeOf('number');
      const sent = (await timeline(t, alice, roomId)).filter((e) => e.content.marker === `cancel-${prefix}`);
      expect(sent).toHaveLength(0);
    });

    it('restart with the owner token answers {}', async () => {
      const id = await schedule();
      expect(await act(t, id, 'restart', alice.accessToken, prefix)).toMatchObject({ status: 200, body: {} });
    });
  });

  it('with the token of another user every action is 404, and nothing changes', async () => {
    const id = await schedule(alice, { marker: 'not-bobs' });
    for (const action of ['send', 'cancel', 'restart']) {
      const res = await act(t, id, action, bob.accessToken);
      expect(res.status).toBe(404);
      expect(res.body.errcode).toBe('M_NOT_FOUND');
      const body = await t.request('POST', `${U}/delayed_events/${enc(id)}`, { token: bob.accessToken, body: { action } });
      expect(body.status).toBe(404);
    }
    expect((await lookup(t, bob, id)).status).toBe(404);
    const mine = await lookup(t, alice, id);
    expect(mine.status).toBe(200);
    expect(mine.body.finalised_ts).toBeUndefined();
  });

  it('unknown delay ids are 404 M_NOT_FOUND for every action, with and without token', async () => {
    for (const action of ['send', 'cancel', 'restart']) {
      for (const token of [undefined, alice.accessToken]) {
        const res = await act(t, 'abc', action, token);
        expect(res.status).toBe(404);
        expect(res.body.errcode).toBe('M_NOT_FOUND');
      }
    }
  });

  it('an unknown action segment or an empty id is 404 M_UNRECOGNIZED', async () => {
    const id = await schedule();
    const oops = await act(t, id, 'oops');
    expect(oops.status).toBe(404);
    expect(oops.body.errcode).toBe('M_UNRECOGNIZED');
    const empty = await t.request('POST', `${U}/delayed_events/`, { body: { action: 'send' } });
    expect(empty.status).toBe(404);
    expect((await lookup(t, alice, id)).body.finalised_ts).toBeUndefined();
  });

  describe('body form', () => {
    it('applies the action with a token', async () => {
      const id = await schedule(alice, { marker: 'body-send' });
      const res = await t.request('POST', `${V1}/delayed_events/${enc(id)}`, { token: alice.accessToken, body: { action: 'send' } });
      expect(res).toMatchObject({ status: 200, body: {} });
      expect((await lookup(t, alice, id)).body.event_id).toMatch(/^\$/);
    });

    it('needs a token: 401 M_MISSING_TOKEN', async () => {
      const id = await schedule();
      const res = await t.request('POST', `${U}/delayed_events/${enc(id)}`, { body: { action: 'cancel' } });
      expect(res.status).toBe(401);
      expect(res.body.errcode).toBe('M_MISSING_TOKEN');
      expect((await lookup(t, alice, id)).body.finalised_ts).toBeUndefined();
    });

    it.each([
      ['no body', undefined, undefined, 'M_NOT_JSON'],
      ['invalid JSON', undefined, '{"action":', 'M_NOT_JSON'],
      ['a JSON array', ['send'], undefined, 'M_NOT_JSON'],
      ['{}', {}, undefined, 'M_MISSING_PARAM'],
      ['a bad action', { action: 'explode' }, undefined, 'M_INVALID_PARAM'],
      ['a non-string action', { action: 1 }, undefined, 'M_INVALID_PARAM'],
    ])('rejects %s with 400 and changes nothing', async (_what, body, rawBody, errcode) => {
      const id = await schedule();
      const res = await t.request('POST', `${U}/delayed_events/${enc(id)}`, {
        token: alice.accessToken,
        ...(body !== undefined ? { body } : {}),
        ...(rawBody !== undefined ? { rawBody } : {}),
      });
      expect(res.status).toBe(400);
      expect(res.body.errcode).toBe(errcode);
      expect((await lookup(t, alice, id)).body.finalised_ts).toBeUndefined();
    });
  });

  describe('seed and latest-text semantics per state', () => {
    it('send on an already sent event answers 200 {} and sends nothing more', async () => {
      const id = await schedule(alice, { marker: 'twice' });
      expect((await act(t, id, 'send')).status).toBe(200);
      const again = await act(t, id, 'send');
      expect(again).toMatchObject({ status: 200, body: {} });
      expect((await act(t, id, 'send', alice.accessToken)).status).toBe(200);
      const sent = (await timeline(t, alice, roomId)).filter((e) => e.content.marker === 'twice');
      expect(sent).toHaveLength(1);
    });

    it('send on an event the timer already sent answers 200', async () => {
      const id = await delayIdOf(scheduleMessage(t, alice, roomId, 50, { marker: 'timed-then-send' }));
      await waitFor('timed send', async () => (await lookup(t, alice, id)).body.event_id !== undefined);
      expect(await act(t, id, 'send')).toMatchObject({ status: 200, body: {} });
    });

    it('cancel and restart on a sent event are 409 M_UNKNOWN', async () => {
      const id = await schedule();
      expect((await act(t, id, 'send')).status).toBe(200);
      for (const action of ['cancel', 'restart']) {
        const res = await act(t, id, action);
        expect(res.status).toBe(409);
        expect(res.body.errcode).toBe('M_UNKNOWN');
      }
    });

    it('send, restart and cancel on a cancelled event are 404', async () => {
      const id = await schedule();
      expect((await act(t, id, 'cancel')).status).toBe(200);
      for (const action of ['cancel', 'send', 'restart']) {
        const res = await act(t, id, action);
        expect(res.status).toBe(404);
        expect(res.body.errcode).toBe('M_NOT_FOUND');
      }
    });

    it('a refused manual send returns M_FORBIDDEN, then the same error on every retry', async () => {
      const room2 = await openRoom(t, alice, [bob]);
      const id = await delayIdOf(scheduleMessage(t, bob, room2, 600_000, { marker: 'forbidden' }, 'com.example.other'));
      await restrict(t, alice, room2, 'com.example.other');
      const first = await act(t, id, 'send', bob.accessToken);
      expect(first.status).toBe(403);
      expect(first.body.errcode).toBe('M_FORBIDDEN');
      for (let i = 0; i < 3; i++) {
        const retry = await act(t, id, 'send');
        expect(retry.status).toBe(403);
        expect(retry.body).toEqual(first.body);
      }
      const one = await lookup(t, bob, id);
      expect(one.body.error).toMatchObject({ errcode: 'M_FORBIDDEN' });
      expect(one.body.event_id).toBeUndefined();
      expect((await timeline(t, alice, room2)).filter((e) => e.content.marker === 'forbidden')).toHaveLength(0);
      // Finalised by the failure: restart conflicts, cancel keeps the outcome (latest text).
      expect((await act(t, id, 'restart')).status).toBe(409);
      expect(await act(t, id, 'cancel')).toMatchObject({ status: 200, body: {} });
      expect((await act(t, id, 'send')).status).toBe(403);
    });

    it('a timed send refused by power levels is recorded; send then returns that error', async () => {
      const room3 = await openRoom(t, alice, [bob]);
      const id = await delayIdOf(scheduleMessage(t, bob, room3, 300, { marker: 'timed-forbidden' }, 'com.example.other'));
      await restrict(t, alice, room3, 'com.example.other');
      const one = await waitFor('timed failure', async () => {
        const r = await lookup(t, bob, id);
        return r.body.finalised_ts ? r.body : undefined;
      });
      expect(one.error.errcode).toBe('M_FORBIDDEN');
      const res = await act(t, id, 'send');
      expect(res.status).toBe(403);
      expect(res.body.errcode).toBe('M_FORBIDDEN');
      const terminated = await t.request('GET', `${U}/delayed_events/terminated`, { token: bob.accessToken });
      expect(terminated.body.terminated_events.find((e: any) => e.delayed_event.delay_id === id)).toMatchObject({
        termination_reason: 'error',
        error: { errcode: 'M_FORBIDDEN' },
      });
    });
  });

  it('dedicated-PUT events are managed the same way', async () => {
    const res = await scheduleDedicated(t, alice, roomId, { delay_ms: 600_000, state_key: 'd', content: { on: 1 } }, { type: 'com.example.state' });
    const id = res.body.delay_id as string;
    expect((await act(t, id, 'send')).status).toBe(200);
    const state = await t.request('GET', roomPath(roomId, '/state/com.example.state/d'), { token: alice.accessToken });
    expect(state.body).toEqual({ on: 1 });
  });

  it('state events sent by action land in the room state', async () => {
    const id = await delayIdOf(scheduleState(t, alice, roomId, 600_000, { by: 'action' }, 'com.example.state', 'act'));
    const before = await t.request('GET', roomPath(roomId, '/state/com.example.state/act'), { token: alice.accessToken });
    expect(before.status).toBe(404);
    expect((await act(t, id, 'send')).status).toBe(200);
    const after = await t.request('GET', roomPath(roomId, '/state/com.example.state/act'), { token: alice.accessToken });
    expect(after.body).toEqual({ by: 'action' });
  });
});

describe('restart timing (manual clock)', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice } } = await startWithRoom({ users: ['alice'], room: OPEN_ROOM, clock }));
  });
  afterAll(async () => {
    await t?.close();
  });

  const isSent = async (id: string) =>
    (await t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: alice.accessToken })).body.event_id !== undefined;

  it('restart sets the due time to now + the original delay', async () => {
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 10_000));
    clock.advance(8_000);
    const scheduledAt = clock.now();
    expect((await act(t, id, 'restart')).status).toBe(200);
    const listed = await t.request('GET', `${U}/delayed_events/scheduled`, { token: alice.accessToken });
    expect(listed.body.delayed_events[0]).toMatchObject({ delay: 10_000, running_since: scheduledAt });
    clock.advance(9_999);
    expect(await isSent(id)).toBe(false);
    clock.advance(1);
    expect(await isSent(id)).toBe(true);
    const [ev] = (await timeline(t, alice, roomId, 'com.example.test')).slice(-1);
    expect(ev!.origin_server_ts).toBe(scheduledAt + 10_000);
  });

  it('never sends early, and a timed send carries its due time as origin_server_ts', async () => {
    const start = clock.now();
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 5_000, { marker: 'due' }));
    clock.advance(4_999);
    expect(await isSent(id)).toBe(false);
    clock.advance(3_000);
    const ev = (await timeline(t, alice, roomId)).find((e) => e.content.marker === 'due')!;
    expect(ev.origin_server_ts).toBe(start + 5_000);
  });
});

describe('management rate limits', () => {
  const limits = { management: { per_second: 1, burst: 2 }, trusted: { per_second: 1, burst: 50 } };

  async function setup(trusted: string[]) {
    const clock = new FakeClock();
    const { t, roomId, users } = await startWithRoom({
      users: ['alice', 'bob'],
      room: OPEN_ROOM,
      overrides: { rate_limits: { ...limits, trusted_addresses: trusted } },
      clock,
    });
    const id = await delayIdOf(scheduleMessage(t, users.alice, roomId, 600_000));
    return { t, clock, ...users, id };
  }

  it('is per user with a token and per client address without one', async () => {
    const { t, clock, alice, bob, id } = await setup([]);
    try {
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
      const limited = await act(t, id, 'restart', alice.accessToken);
      expect(limited.status).toBe(429);
      expect(limited.body).toMatchObject({ errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 1000 });
      expect(limited.headers['retry-after']).toBe('1');
      // Bob's bucket is his own (his request is a 404, but it is not throttled).
      expect((await act(t, id, 'restart', bob.accessToken)).status).toBe(404);
      // The address bucket is separate from alice's user bucket.
      expect((await act(t, id, 'restart')).status).toBe(200);
      expect((await act(t, id, 'restart')).status).toBe(200);
      expect((await act(t, id, 'restart')).status).toBe(429);
      const list = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
      expect(list.status).toBe(429);
      clock.advance(1_000);
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('unauthenticated calls from a trusted address use the trusted bucket', async () => {
    const { t, alice, id } = await setup(['127.0.0.1']);
    try {
      for (let i = 0; i < 40; i++) expect((await act(t, id, 'restart')).status).toBe(200);
      // Users with tokens still get the ordinary per-user bucket.
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
      expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(429);
    } finally {
      await t.close();
    }
  });

  it('manual sends over the send limit are 429 and leave the event scheduled', async () => {
    const { t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: OPEN_ROOM,
      overrides: { rate_limits: { send: { per_second: 1, burst: 1 } } },
      clock: new FakeClock(),
    });
    try {
      const a = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
      const b = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
      expect((await act(t, a, 'send')).status).toBe(200);
      const limited = await act(t, b, 'send');
      expect(limited.status).toBe(429);
      expect(limited.body.errcode).toBe('M_LIMIT_EXCEEDED');
      const one = await t.request('GET', `${V1}/delayed_events/${enc(b)}`, { token: alice.accessToken });
      expect(one.body.finalised_ts).toBeUndefined();
    } finally {
      await t.close();
    }
  });

  it('a timed send over the send limit is finalised with M_LIMIT_EXCEEDED; send replays it without a retry hint', async () => {
    const clock = new FakeClock();
    const { t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: OPEN_ROOM,
      overrides: ONE_SEND_PER_USER,
      clock,
    });
    try {
      const a = await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 1 }));
      const b = await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 2 }));
      clock.advance(1_000);
      const get = async (id: string) => (await t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: alice.accessToken })).body;
      expect((await get(a)).event_id).toMatch(/^\$/);
      const failed = await get(b);
      expect(failed.error.errcode).toBe('M_LIMIT_EXCEEDED');
      expect(failed.event_id).toBeUndefined();
      expect((await timeline(t, alice, roomId, 'com.example.test')).map((e) => e.content.n)).toEqual([1]);
      // The refusal is final: the same 429 again, but no stale invitation to retry.
      const replayed = await act(t, b, 'send');
      expect(replayed.status).toBe(429);
      expect(replayed.body.errcode).toBe('M_LIMIT_EXCEEDED');
      expect(replayed.body.retry_after_ms).toBeUndefined();
      expect(replayed.headers['retry-after']).toBeUndefined();
    } finally {
      await t.close();
    }
  });
});
