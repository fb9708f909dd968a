/**
 * Listing and lookup: the generation-B list (with js-sdk's scheduled/finalised shape), the seed's
 * scheduled/terminated pair with pagination, retention caps, and the generation-C single lookup.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import { act, ALICE_AND_BOB, delayIdOf, openRoom, scheduleMessage, scheduleState, U, V1 } from './support.js';

const DAY = 24 * 3600 * 1000;

describe('listing', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: {
        max_delay_ms: 30 * DAY,
        delayed_events: { max_scheduled_per_user: 2000 },
        rate_limits: {
          management: { per_second: 0, burst: 0 },
          schedule: { per_second: 0, burst: 0 },
          send: { per_second: 0, burst: 0 },
        },
      },
      clock,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  const get = (s: Session | undefined, path: string) =>
    t.request('GET', path, s ? { token: s.accessToken } : {});

  it('is empty at first', async () => {
    for (const prefix of [U, V1]) {
      expect((await get(alice, `${prefix}/delayed_events`)).body).toEqual({ delayed_events: [], scheduled: [] });
      expect((await get(alice, `${prefix}/delayed_events/scheduled`)).body).toEqual({ delayed_events: [] });
      expect((await get(alice, `${prefix}/delayed_events/terminated`)).body).toEqual({ terminated_events: [] });
    }
  });

  it('needs an access token: 401', async () => {
    for (const path of ['/delayed_events', '/delayed_events/scheduled', '/delayed_events/terminated', '/delayed_events/abc']) {
      const res = await get(undefined, `${U}${path}`);
      expect(res.status).toBe(401);
      expect(res.body.errcode).toBe('M_MISSING_TOKEN');
    }
  });

  it('lists only the requester’s scheduled events, soonest due first', async () => {
    const start = clock.now();
    const ids: Record<string, string> = {};
    for (const [label, delay] of [['late', 9_000], ['soon', 3_000], ['mid', 6_000]] as const) {
      ids[label] = await delayIdOf(scheduleMessage(t, alice, roomId, delay, { label }));
    }
    clock.advance(100);
    ids.state = await delayIdOf(scheduleState(t, alice, roomId, 2_000, { s: 1 }, 'com.example.state', 'k'));
    await delayIdOf(scheduleMessage(t, bob, roomId, 1_000, { bob: true }));
    const res = await get(alice, `${U}/delayed_events`);
    expect(res.body.delayed_events.map((e: { delay_id: string }) => e.delay_id)).toEqual([ids.state, ids.soon, ids.mid, ids.late]);
    expect(res.body.scheduled).toEqual(res.body.delayed_events);
    expect(res.body.delayed_events[0]).toEqual({
      delay_id: ids.state,
      room_id: roomId,
      type: 'com.example.state',
      state_key: 'k',
      delay: 2_000,
      running_since: start + 100,
      delay_ms: 2_000,
      scheduled_at: start + 100,
      content: { s: 1 },
    });
    const seed = await get(alice, `${V1}/delayed_events/scheduled`);
    expect(seed.body.delayed_events).toEqual(res.body.delayed_events);
    // Restarting the soonest moves it behind the others.
    clock.advance(1_000);
    expect((await act(t, ids.state!, 'restart')).status).toBe(200);
    const after = await get(alice, `${U}/delayed_events?status=scheduled`);
    expect(after.body.delayed_events.map((e: { delay_id: string }) => e.delay_id)).toEqual([ids.soon, ids.state, ids.mid, ids.late]);
    for (const id of Object.values(ids)) await act(t, id, 'cancel');
  });

  it('every listing item carries the single lookup’s delay_ms and scheduled_at, also after a restart', async () => {
    const hal = await t.register('hal');
    const room = await openRoom(t, hal);
    const msg = await delayIdOf(scheduleMessage(t, hal, room, 8_000, { m: 1 }));
    const state = await delayIdOf(scheduleState(t, hal, room, 9_000, { s: 1 }, 'com.example.state', 'h'));
    clock.advance(1_500);
    expect((await act(t, msg, 'restart')).status).toBe(200);
    const lookup = async (id: string) => {
      const one = (await get(hal, `${V1}/delayed_events/${enc(id)}`)).body;
      return { ...one, delay: one.delay_ms, running_since: one.scheduled_at };
    };
    const expected = [await lookup(state), await lookup(msg)];
    expect(expected[1]).toMatchObject({ delay_ms: 8_000, scheduled_at: clock.now() });
    for (const prefix of [U, V1]) {
      expect((await get(hal, `${prefix}/delayed_events`)).body.delayed_events, prefix).toEqual(expected);
      expect((await get(hal, `${prefix}/delayed_events/scheduled`)).body.delayed_events, prefix).toEqual(expected);
    }
    // Finalised entries describe the event with the same fields.
    const cancelled = await lookup(msg);
    expect((await act(t, msg, 'cancel')).status).toBe(200);
    const finalised = (await get(hal, `${U}/delayed_events?status=finalised`)).body.finalised;
    expect(finalised[0].delayed_event).toEqual(cancelled);
    const terminated = (await get(hal, `${U}/delayed_events/terminated`)).body.terminated_events;
    expect(terminated[0].delayed_event).toEqual(cancelled);
    await act(t, state, 'cancel');
  });

  it('filters by repeated delay_id', async () => {
    const a = await delayIdOf(scheduleMessage(t, alice, roomId, 5_000));
    const b = await delayIdOf(scheduleMessage(t, alice, roomId, 6_000));
    const c = await delayIdOf(scheduleMessage(t, alice, roomId, 7_000));
    const res = await get(alice, `${U}/delayed_events?delay_id=${enc(c)}&delay_id=${enc(a)}`);
    expect(res.body.delayed_events.map((e: { delay_id: string }) => e.delay_id)).toEqual([a, c]);
    const none = await get(bob, `${U}/delayed_events?delay_id=${enc(a)}`);
    expect(none.body.delayed_events).toEqual([]);
    for (const id of [a, b, c]) await act(t, id, 'cancel');
  });

  it('finalised entries carry outcome and reason (js-sdk shape) and terminated ones the seed reason', async () => {
    const carol = await t.register('carol');
    const room2 = await openRoom(t, alice, [carol]);
    const timed = await delayIdOf(scheduleMessage(t, carol, room2, 1_000, { k: 'timed' }));
    clock.advance(1_000);
    const sent = await delayIdOf(scheduleMessage(t, carol, room2, 9_000, { k: 'sent' }));
    clock.advance(1);
    expect((await act(t, sent, 'send')).status).toBe(200);
    clock.advance(1);
    const cancelled = await delayIdOf(scheduleMessage(t, carol, room2, 9_000, { k: 'cancelled' }));
    expect((await act(t, cancelled, 'cancel')).status).toBe(200);
    clock.advance(1);
    const failed = await delayIdOf(scheduleState(t, carol, room2, 1_000, { k: 'failed' }, 'm.room.power_levels', ''));
    clock.advance(1_000);

    const terminated = await get(carol, `${V1}/delayed_events/terminated`);
    const byId = new Map(terminated.body.terminated_events.map((e: any) => [e.delayed_event.delay_id, e]));
    expect(terminated.body.terminated_events.map((e: any) => e.delayed_event.delay_id)).toEqual([failed, cancelled, sent, timed]);
    expect(byId.get(timed)).toMatchObject({ termination_reason: 'timeout', event_id: expect.stringMatching(/^\$/), origin_server_ts: expect.any(Number) });
    expect(byId.get(sent)).toMatchObject({ termination_reason: 'send', event_id: expect.stringMatching(/^\$/) });
    expect(byId.get(cancelled)).toEqual({ delayed_event: expect.objectContaining({ content: { k: 'cancelled' } }), termination_reason: 'canceled' });
    expect(byId.get(failed)).toMatchObject({ termination_reason: 'error', error: { errcode: 'M_FORBIDDEN' } });
    expect((byId.get(failed) as any).event_id).toBeUndefined();

    const finalised = await get(carol, `${U}/delayed_events?status=finalised`);
    expect(finalised.body.finalised.map((e: any) => [e.delayed_event.delay_id, e.outcome, e.reason])).toEqual([
      [failed, 'send', 'delay'],
      [cancelled, 'cancel', 'action'],
      [sent, 'send', 'action'],
      [timed, 'send', 'delay'],
    ]);
    expect(finalised.body.finalised[0].error.errcode).toBe('M_FORBIDDEN');
    expect(finalised.body.finalised[3].event_id).toBe((byId.get(timed) as any).event_id);
    expect(finalised.body.delayed_events).toBeUndefined();
  });

  it('the single lookup (generation C) shows each state and hides other users’ events', async () => {
    const dave = await t.register('dave');
    const room3 = await openRoom(t, dave);
    const scheduledAt = clock.now();
    const s = await delayIdOf(scheduleState(t, dave, room3, 5_000, { a: 1 }, 'com.example.state', 'x'));
    const one = await get(dave, `${V1}/delayed_events/${enc(s)}`);
    expect(one.body).toEqual({
      delay_id: s,
      room_id: room3,
      type: 'com.example.state',
      state_key: 'x',
      delay_ms: 5_000,
      scheduled_at: scheduledAt,
      content: { a: 1 },
    });
    expect((await get(alice, `${U}/delayed_events/${enc(s)}`)).status).toBe(404);
    expect((await get(dave, `${U}/delayed_events/nope`)).status).toBe(404);
    clock.advance(5_000);
    const sent = await get(dave, `${U}/delayed_events/${enc(s)}`);
    expect(sent.body).toMatchObject({ finalised_ts: scheduledAt + 5_000, event_id: expect.stringMatching(/^\$/) });
    expect(sent.body.error).toBeUndefined();
    const c = await delayIdOf(scheduleMessage(t, dave, room3, 5_000));
    await act(t, c, 'cancel');
    const cancelled = await get(dave, `${U}/delayed_events/${enc(c)}`);
    expect(cancelled.body.finalised_ts).toBeTypeOf('number');
    expect(cancelled.body.event_id).toBeUndefined();
    expect(cancelled.body.error).toBeUndefined();
  });

  it('paginates scheduled events by 100 with next_batch', async () => {
    const erin = await t.register('erin');
    const ids: string[] = [];
    for (let i = 0; i < 105; i++) ids.push(await delayIdOf(scheduleMessage(t, erin, roomId, 10_000 + i, { i })));
    for (const [path, key] of [['/delayed_events', 'delayed_events'], ['/delayed_events/scheduled', 'delayed_events']] as const) {
      const first = await get(erin, `${U}${path}`);
      expect(first.body[key]).toHaveLength(100);
      expect(first.body.next_batch).toBeTypeOf('string');
      const second = await get(erin, `${U}${path}?from=${enc(first.body.next_batch)}`);
      expect(second.body[key]).toHaveLength(5);
      expect(second.body.next_batch).toBeUndefined();
      expect([...first.body[key], ...second.body[key]].map((e: { delay_id: string }) => e.delay_id)).toEqual(ids);
    }
  });

  it('paginates terminated events by 10, newest first, and keeps at most 1000 per user', async () => {
    const fay = await t.register('fay');
    const ids: string[] = [];
    for (let i = 0; i < 1005; i++) {
      const id = await delayIdOf(scheduleMessage(t, fay, roomId, 60_000, { i }));
      clock.advance(1);
      expect((await act(t, id, 'cancel')).status).toBe(200);
      ids.push(id);
    }
    const seen: string[] = [];
    let from: string | undefined;
    let pages = 0;
    do {
      const res = await get(fay, `${U}/delayed_events/terminated${from ? `?from=${enc(from)}` : ''}`);
      expect(res.status).toBe(200);
      expect(res.body.terminated_events.length).toBeLessThanOrEqual(10);
      seen.push(...res.body.terminated_events.map((e: any) => e.delayed_event.delay_id));
      from = res.body.next_terminated_batch;
      pages++;
    } while (from !== undefined);
    expect(pages).toBe(100);
    expect(seen).toEqual(ids.slice(5).reverse());
    // The five oldest are gone entirely.
    expect((await get(fay, `${U}/delayed_events/${enc(ids[0]!)}`)).status).toBe(404);
    expect((await act(t, ids[0]!, 'cancel')).status).toBe(404);
    const finalised = await get(fay, `${U}/delayed_events?status=finalised`);
    expect(finalised.body.finalised).toHaveLength(10);
    expect(finalised.body.next_batch).toBeTypeOf('string');
  });

  it('forgets finalised events after terminated_keep_ms (7 days)', async () => {
    const gus = await t.register('gus');
    const id = await delayIdOf(scheduleMessage(t, gus, roomId, 1_000));
    await act(t, id, 'cancel');
    clock.advance(7 * DAY - 1);
    expect((await get(gus, `${U}/delayed_events/terminated`)).body.terminated_events).toHaveLength(1);
    clock.advance(2);
    expect((await get(gus, `${U}/delayed_events/terminated`)).body.terminated_events).toHaveLength(0);
    expect((await get(gus, `${U}/delayed_events/${enc(id)}`)).status).toBe(404);
    expect((await act(t, id, 'cancel')).status).toBe(404);
    // The 10-minute sweep deletes the row itself.
    clock.advance(10 * 60 * 1000);
    const rows = t.hs.db.prepare('SELECT COUNT(*) AS n FROM delayed_events WHERE delay_id = ?').get(id) as { n: number };
    expect(rows.n).toBe(0);
  });

  it.each([
    ['garbage from', '/delayed_events/scheduled?from=%%%'],
    ['base64 of junk', `/delayed_events/scheduled?from=${Buffer.from('junk').toString('base64url')}`],
    ['a terminated token on the scheduled list', `/delayed_events/scheduled?from=${Buffer.from('["f",1,1]').toString('base64url')}`],
    ['an empty from', '/delayed_events/terminated?from='],
    ['a bad status', '/delayed_events?status=everything'],
    ['a bad token on the js-sdk list', '/delayed_events?status=finalised&from=abc'],
  ])('rejects %s with 400 M_INVALID_PARAM', async (_what, path) => {
    const res = await get(alice, `${U}${path}`);
    expect(res.status).toBe(400);
    expect(res.body.errcode).toBe('M_INVALID_PARAM');
  });
});
