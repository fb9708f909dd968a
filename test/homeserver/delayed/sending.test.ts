/**
 * Sending: timed sends on the real clock (Complement-style, generous waits), due-order sending,
 * power levels at send time, `unsigned` delay ids and the seed's state-cancellation rule.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { sleep, waitFor } from '../../e2e/support/proc.js';
import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import {
  act,
  ALICE_AND_BOB,
  DELAY_PARAM,
  delayIdOf,
  MANY_MANAGEMENT_CALLS,
  newTxn,
  roomPath,
  scheduleMessage,
  scheduleState,
  timeline,
  U,
  V1,
} from './support.js';

const scheduledCount = async (t: TestHomeserver, s: Session): Promise<number> => {
  const res = await t.request('GET', `${U}/delayed_events`, { token: s.accessToken });
  return (res.body.delayed_events as unknown[]).length;
};

describe('timed sends on the real clock', () => {
  let t: TestHomeserver;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: MANY_MANAGEMENT_CALLS,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('message events are sent on timeout, in order, with the content verbatim (Complement)', async () => {
    const ids: string[] = [];
    for (const [i, delay] of [700, 800, 900].entries()) {
      const txn = newTxn();
      const path = roomPath(roomId, `/send/com.example.test/${txn}?${DELAY_PARAM}=${delay}`);
      const first = await t.request('PUT', path, { token: alice.accessToken, body: { count: i + 1 } });
      expect(first.status).toBe(200);
      const repeat = await t.request('PUT', path, { token: alice.accessToken });
      expect(repeat.body.delay_id).toBe(first.body.delay_id);
      ids.push(first.body.delay_id);
    }
    expect(await scheduledCount(t, alice)).toBe(3);
    expect(await scheduledCount(t, bob)).toBe(0);
    await waitFor('all three sent', async () => (await scheduledCount(t, alice)) === 0);
    const events = await timeline(t, alice, roomId, 'com.example.test');
    expect(events.map((e) => e.content)).toEqual([{ count: 1 }, { count: 2 }, { count: 3 }]);
    expect(events.map((e) => e.unsigned?.['org.matrix.msc4140.delay_id'])).toEqual(ids);
    // Other readers never see the delay id.
    const bobsView = await timeline(t, bob, roomId, 'com.example.test');
    expect(bobsView.map((e) => e.unsigned?.['org.matrix.msc4140.delay_id'])).toEqual([undefined, undefined, undefined]);
  });

  it('state events are sent on timeout (Complement)', async () => {
    await delayIdOf(scheduleState(t, alice, roomId, 900, { setter: alice.userId }, 'com.example.state', 'timeout'));
    const statePath = roomPath(roomId, '/state/com.example.state/timeout');
    expect((await t.request('GET', statePath, { token: alice.accessToken })).status).toBe(404);
    const state = await waitFor('state event', async () => {
      const r = await t.request('GET', statePath, { token: alice.accessToken });
      return r.status === 200 ? r.body : undefined;
    });
    expect(state).toEqual({ setter: alice.userId });
  });

  it('a cancelled event is never sent; a restarted one is sent later (Complement)', async () => {
    const cancelled = await delayIdOf(scheduleState(t, alice, roomId, 800, { v: 'c' }, 'com.example.state', 'cancelled'));
    expect((await act(t, cancelled, 'cancel')).status).toBe(200);
    const restarted = await delayIdOf(scheduleState(t, alice, roomId, 2000, { v: 'r' }, 'com.example.state', 'restarted'));
    await sleep(1000);
    expect((await act(t, restarted, 'restart')).status).toBe(200);
    await sleep(1000);
    // 2 s after scheduling with a 2 s delay: the restart at ~1 s moved it to ~3 s.
    expect((await t.request('GET', roomPath(roomId, '/state/com.example.state/restarted'), { token: alice.accessToken })).status).toBe(404);
    await waitFor('restarted event', async () => {
      const r = await t.request('GET', roomPath(roomId, '/state/com.example.state/restarted'), { token: alice.accessToken });
      return r.status === 200;
    });
    expect((await t.request('GET', roomPath(roomId, '/state/com.example.state/cancelled'), { token: alice.accessToken })).status).toBe(404);
  });
});

describe('due order and send-time checks (manual clock)', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: MANY_MANAGEMENT_CALLS,
      clock,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('events falling due together are sent in due order (ties: first scheduled first)', async () => {
    const start = clock.now();
    for (const [label, delay] of [
      ['c', 3_000],
      ['a', 1_000],
      ['b', 2_000],
      ['a2', 1_000],
      ['d', 4_000],
    ] as const) {
      await delayIdOf(scheduleMessage(t, label === 'b' ? bob : alice, roomId, delay, { label }, 'com.example.other'));
    }
    clock.advance(5_000);
    const events = await timeline(t, alice, roomId, 'com.example.other');
    expect(events.map((e) => e.content.label)).toEqual(['a', 'a2', 'b', 'c', 'd']);
    expect(events.map((e) => e.origin_server_ts - start)).toEqual([1_000, 1_000, 2_000, 3_000, 4_000]);
    expect(events.find((e) => e.content.label === 'b')!.sender).toBe(bob.userId);
  });

  it('power levels are checked at send time: a non-member may schedule and succeeds after joining', async () => {
    const carol = await t.register('carol');
    const id = await delayIdOf(scheduleMessage(t, carol, roomId, 1_000, { who: 'carol' }));
    const join = await t.request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: carol.accessToken, body: {} });
    expect(join.status).toBe(200);
    clock.advance(1_000);
    const sent = (await timeline(t, alice, roomId, 'com.example.test')).filter((e) => e.content.who === 'carol');
    expect(sent).toHaveLength(1);
    expect(sent[0]!.sender).toBe(carol.userId);
    const one = await t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: carol.accessToken });
    expect(one.body.event_id).toBe(sent[0]!.event_id);
  });

  it('a non-member whose event falls due is refused with M_FORBIDDEN (recorded)', async () => {
    const dave = await t.register('dave');
    const id = await delayIdOf(scheduleMessage(t, dave, roomId, 1_000, { who: 'dave' }));
    clock.advance(1_000);
    const one = await t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: dave.accessToken });
    expect(one.body.error.errcode).toBe('M_FORBIDDEN');
    expect((await timeline(t, alice, roomId)).filter((e) => e.content.who === 'dave')).toHaveLength(0);
  });

  describe('state cancellation (seed rule)', () => {
    const slot = (key: string) => roomPath(roomId, `/state/com.example.state/${enc(key)}`);
    const lookup = (s: Session, id: string) => t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: s.accessToken });

    it('a state update by another user cancels the delayed state event', async () => {
      const id = await delayIdOf(scheduleState(t, alice, roomId, 10_000, { leave: true }, 'com.example.state', 'k1'));
      expect((await t.request('PUT', slot('k1'), { token: bob.accessToken, body: { bob: 1 } })).status).toBe(200);
      const one = await lookup(alice, id);
      expect(one.body.finalised_ts).toBeTypeOf('number');
      expect(one.body.event_id).toBeUndefined();
      clock.advance(10_000);
      expect((await t.request('GET', slot('k1'), { token: alice.accessToken })).body).toEqual({ bob: 1 });
      expect((await act(t, id, 'send')).status).toBe(404);
      const terminated = await t.request('GET', `${U}/delayed_events/terminated`, { token: alice.accessToken });
      expect(terminated.body.terminated_events[0]).toMatchObject({
        delayed_event: { delay_id: id, state_key: 'k1' },
        termination_reason: 'canceled',
        error: { errcode: 'M_CANCELLED_BY_STATE_UPDATE' },
      });
      const finalised = await t.request('GET', `${U}/delayed_events?status=finalised&delay_id=${enc(id)}`, { token: alice.accessToken });
      expect(finalised.body.finalised).toEqual([
        expect.objectContaining({ outcome: 'cancel', reason: 'error', error: expect.objectContaining({ errcode: 'M_CANCELLED_BY_STATE_UPDATE' }) }),
      ]);
    });

    it('a state update by the same user leaves it scheduled', async () => {
      const id = await delayIdOf(scheduleState(t, alice, roomId, 10_000, { leave: true }, 'com.example.state', 'k2'));
      expect((await t.request('PUT', slot('k2'), { token: alice.accessToken, body: { joined: true } })).status).toBe(200);
      expect((await lookup(alice, id)).body.finalised_ts).toBeUndefined();
      clock.advance(10_000);
      expect((await t.request('GET', slot('k2'), { token: alice.accessToken })).body).toEqual({ leave: true });
    });

    it('other state keys and message events are not affected', async () => {
      const state = await delayIdOf(scheduleState(t, alice, roomId, 10_000, { v: 1 }, 'com.example.state', 'k3'));
      const msg = await delayIdOf(scheduleMessage(t, alice, roomId, 10_000, { v: 2 }, 'com.example.state'));
      expect((await t.request('PUT', slot('k3-other'), { token: bob.accessToken, body: {} })).status).toBe(200);
      expect((await t.request('PUT', roomPath(roomId, '/state/com.example.state/'), { token: bob.accessToken, body: {} })).status).toBe(200);
      expect((await lookup(alice, state)).body.finalised_ts).toBeUndefined();
      expect((await lookup(alice, msg)).body.finalised_ts).toBeUndefined();
      clock.advance(10_000);
    });

    it("another user's delayed state event, when sent, cancels it too", async () => {
      const mine = await delayIdOf(scheduleState(t, alice, roomId, 5_000, { who: 'alice' }, 'com.example.state', 'k4'));
      const bobs = await delayIdOf(scheduleState(t, bob, roomId, 1_000, { who: 'bob' }, 'com.example.state', 'k4'));
      clock.advance(5_000);
      expect((await lookup(bob, bobs)).body.event_id).toMatch(/^\$/);
      const alices = await lookup(alice, mine);
      expect(alices.body.finalised_ts).toBeTypeOf('number');
      expect(alices.body.event_id).toBeUndefined();
      expect((await t.request('GET', slot('k4'), { token: alice.accessToken })).body).toEqual({ who: 'bob' });
    });
  });
});
