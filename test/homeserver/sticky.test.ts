/**
 * MSC4354 sticky events in Synapse's unstable wire forms: sending with
 * `org.matrix.msc4354.sticky_duration_ms`, the `msc4354_sticky` event field and its TTL in
 * `unsigned`, the per-room `msc4354_sticky` /sync section, expiry, and sticky delayed events.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { openDatabase } from '../../src/lib/sqlite.js';
import { FakeClock } from '../support/fake-clock.js';
import { act, delayIdOf, newTxn, OPEN_ROOM, scheduleDedicated, U, V1 } from './delayed/support.js';
import { enc, type Session, startTestHomeserver, startWithRoom, type TestHomeserver } from './harness.js';

const STICKY = 'org.matrix.msc4354.sticky_duration_ms';
const DELAY = 'org.matrix.msc4140.delay';
const TTL = 'msc4354_sticky_duration_ttl_ms';
const HOUR = 3_600_000;
const RTC = 'm.rtc.member';

interface Ev {
  event_id: string;
  type: string;
  content: Record<string, unknown>;
  origin_server_ts: number;
  unsigned: Record<string, unknown>;
  msc4354_sticky?: { duration_ms: number };
}

let t: TestHomeserver;
let clock: FakeClock;
let alice: Session;
let bob: Session;
let roomId: string;

beforeAll(async () => {
  clock = new FakeClock();
  ({ t, roomId, users: { alice, bob } } = await startWithRoom({
    users: ['alice', 'bob'],
    room: { ...OPEN_ROOM, power_level_content_override: { events: { [RTC]: 0, 'com.example.test': 0 } } },
    members: ['bob'],
    clock,
    overrides: { rate_limits: { management: { per_second: 1000, burst: 1000 } } },
  }));
});
afterAll(async () => {
  await t?.close();
});

const roomPath = (rest: string, room = roomId) => `/_matrix/client/v3/rooms/${enc(room)}${rest}`;
const sendSticky = async (s: Session, duration: number | string, content: Record<string, unknown>, room = roomId) =>
  t.request('PUT', roomPath(`/send/${RTC}/${newTxn()}?${STICKY}=${duration}`, room), { token: s.accessToken, body: content });
const eventIdOf = async (res: ReturnType<typeof sendSticky>) => {
  const r = await res;
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.event_id as string;
};
const say = (s: Session, body: string, room = roomId) =>
  t.request('PUT', roomPath(`/send/m.room.message/${newTxn()}`, room), { token: s.accessToken, body: { body } });
const getEvent = async (s: Session, eventId: string): Promise<Ev> =>
  (await t.request('GET', roomPath(`/event/${enc(eventId)}`), { token: s.accessToken })).body;
const sync = (s: Session, query: string) => t.request('GET', `/_matrix/client/v3/sync?${query}`, { token: s.accessToken });
const LIMIT_3 = `filter=${enc(JSON.stringify({ room: { timeline: { limit: 3 } } }))}`;
const stickyIds = (room: Record<string, any> | undefined) =>
  (room?.msc4354_sticky?.events ?? []).map((e: Ev) => e.event_id) as string[];
const timelineIds = (room: Record<string, any> | undefined) => (room?.timeline.events ?? []).map((e: Ev) => e.event_id);
const chatter = async (n: number) => {
  for (let i = 0; i < n; i++) await say(alice, `chatter ${i}`);
};

describe('sticky events (MSC4354)', () => {
  it('are advertised in /versions as org.matrix.msc4354', async () => {
    const res = await t.request('GET', '/_matrix/client/versions');
    expect(res.body.unstable_features['org.matrix.msc4354']).toBe(true);
  });

  it('carry msc4354_sticky as sent and the remaining stickiness in unsigned, capped at an hour', async () => {
    const sentAt = clock.now();
    const tenMin = await eventIdOf(sendSticky(alice, 600_000, { msc4354_sticky_key: 'a' }));
    const twoHours = await eventIdOf(sendSticky(alice, 2 * HOUR, { msc4354_sticky_key: 'b' }));
    const never = await eventIdOf(sendSticky(alice, 0, { msc4354_sticky_key: 'c' }));
    const stateRes = await t.request('PUT', roomPath(`/state/com.example.test/k?${STICKY}=120000`), {
      token: alice.accessToken,
      body: { on: true },
    });
    expect(stateRes.status).toBe(200);
    const plain = (await say(alice, 'not sticky')).body.event_id as string;
    // Membership events take no sticky duration, as in Synapse.
    const member = await t.request('PUT', roomPath(`/state/m.room.member/${enc(bob.userId)}?${STICKY}=600000`), {
      token: bob.accessToken,
      body: { membership: 'join', displayname: 'Bob' },
    });
    expect(member.status).toBe(200);

    const a = await getEvent(bob, tenMin);
    expect(a.msc4354_sticky).toEqual({ duration_ms: 600_000 });
    expect(a.origin_server_ts).toBe(sentAt);
    expect(a.unsigned[TTL]).toBe(600_000);
    expect((await getEvent(bob, twoHours)).msc4354_sticky).toEqual({ duration_ms: 2 * HOUR });
    expect((await getEvent(bob, twoHours)).unsigned[TTL]).toBe(HOUR);
    expect((await getEvent(bob, never)).msc4354_sticky).toEqual({ duration_ms: 0 });
    expect((await getEvent(bob, never)).unsigned[TTL]).toBeUndefined();
    const state = await getEvent(bob, stateRes.body.event_id);
    expect([state.msc4354_sticky, state.unsigned[TTL]]).toEqual([{ duration_ms: 120_000 }, 120_000]);
    expect((await getEvent(bob, plain)).msc4354_sticky).toBeUndefined();
    expect((await getEvent(bob, member.body.event_id)).msc4354_sticky).toBeUndefined();

    clock.advance(100_000);
    expect((await getEvent(bob, tenMin)).unsigned[TTL]).toBe(500_000);
    const messages = await t.request('GET', roomPath('/messages?dir=b&limit=10'), { token: bob.accessToken });
    const inMessages = messages.body.chunk.find((e: Ev) => e.event_id === tenMin);
    expect([inMessages.msc4354_sticky, inMessages.unsigned[TTL]]).toEqual([{ duration_ms: 600_000 }, 500_000]);
    clock.advance(HOUR);
    // Past its stickiness the event keeps what the sender asked for, and loses the TTL.
    const expired = await getEvent(bob, twoHours);
    expect([expired.msc4354_sticky, expired.unsigned[TTL]]).toEqual([{ duration_ms: 2 * HOUR }, undefined]);
  });

  it('/sync delivers the sticky events a limited timeline skipped in msc4354_sticky, once each', async () => {
    const base = (await sync(bob, 'timeout=0')).body.next_batch as string;
    const first = await eventIdOf(sendSticky(alice, 600_000, { msc4354_sticky_key: 'first' }));
    await chatter(5);

    const initial = (await sync(bob, LIMIT_3)).body.rooms.join[roomId];
    expect(initial.timeline.limited).toBe(true);
    expect(stickyIds(initial)).toContain(first);
    const incremental = await sync(bob, `since=${base}&${LIMIT_3}`);
    const room = incremental.body.rooms.join[roomId];
    expect(stickyIds(room)).toEqual([first]);
    expect(room.msc4354_sticky.events[0]).toMatchObject({
      type: RTC,
      sender: alice.userId,
      content: { msc4354_sticky_key: 'first' },
      msc4354_sticky: { duration_ms: 600_000 },
      unsigned: { [TTL]: 600_000 },
    });

    // The next window: only what is new, and one that fits the timeline is not repeated beside it.
    const second = await eventIdOf(sendSticky(alice, 600_000, { msc4354_sticky_key: 'second' }));
    const next = (await sync(bob, `since=${incremental.body.next_batch}&${LIMIT_3}`)).body;
    expect(timelineIds(next.rooms.join[roomId])).toEqual([second]);
    expect(next.rooms.join[roomId].msc4354_sticky).toBeUndefined();
    const third = await eventIdOf(sendSticky(alice, 600_000, { msc4354_sticky_key: 'third' }));
    await chatter(4);
    const later = (await sync(bob, `since=${next.next_batch}&${LIMIT_3}`)).body.rooms.join[roomId];
    expect(stickyIds(later)).toEqual([third]);
  });

  it('an expired sticky event is no longer delivered', async () => {
    const room = await t.createRoom(alice.accessToken, OPEN_ROOM);
    await t.join(bob.accessToken, room);
    const short = await eventIdOf(sendSticky(alice, 60_000, { k: 'short' }, room));
    const capped = await eventIdOf(sendSticky(alice, 5 * HOUR, { k: 'capped' }, room));
    for (let i = 0; i < 4; i++) await say(alice, `x${i}`, room);
    expect(stickyIds((await sync(bob, LIMIT_3)).body.rooms.join[room])).toEqual([short, capped]);
    clock.advance(60_000);
    expect(stickyIds((await sync(bob, LIMIT_3)).body.rooms.join[room])).toEqual([capped]);
    clock.advance(HOUR - 60_000);
    expect((await sync(bob, LIMIT_3)).body.rooms.join[room].msc4354_sticky).toBeUndefined();
  });

  it('a user who joins gets every live sticky event of the room in their next sync', async () => {
    const carol = await t.register('carol');
    const room = await t.createRoom(alice.accessToken, OPEN_ROOM);
    const live = await eventIdOf(sendSticky(alice, 600_000, { k: 'live' }, room));
    for (let i = 0; i < 4; i++) await say(alice, `y${i}`, room);
    const base = (await sync(carol, 'timeout=0')).body.next_batch as string;
    await t.join(carol.accessToken, room);
    const joined = (await sync(carol, `since=${base}&${LIMIT_3}`)).body.rooms.join[room];
    expect(stickyIds(joined)).toEqual([live]);
  });

  it.each(['-1', '1.5', 'soon', '99999999999999999', ''])('refuses a sticky duration of %j with 400 M_INVALID_PARAM, sending nothing', async (bad) => {
    const count = () => (t.hs.db.prepare('SELECT COUNT(*) AS n FROM events').get() as { n: number }).n;
    const before = count();
    const paths = [
      roomPath(`/send/${RTC}/${newTxn()}?${STICKY}=${bad}`),
      roomPath(`/send/${RTC}/${newTxn()}?${DELAY}=1000&${STICKY}=${bad}`),
      roomPath(`/state/com.example.test/bad?${STICKY}=${bad}`),
      `${U}/rooms/${enc(roomId)}/delayed_event/${RTC}/${newTxn()}?${STICKY}=${bad}`,
    ];
    for (const path of paths) {
      const body = path.includes('delayed_event') ? { delay_ms: 1000, content: {} } : { k: 1 };
      const res = await t.request('PUT', path, { token: alice.accessToken, body });
      expect(res.status, path).toBe(400);
      expect(res.body.errcode, path).toBe('M_INVALID_PARAM');
    }
    expect(count()).toBe(before);
    expect((await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken })).body.delayed_events).toEqual([]);
  });
});

describe('sticky delayed events', () => {
  it('a delayed event scheduled with a sticky duration lists it and is sent as a sticky event', async () => {
    const scheduledAt = clock.now();
    const res = await t.request('PUT', roomPath(`/send/${RTC}/${newTxn()}?${DELAY}=5000&${STICKY}=${HOUR}`), {
      token: alice.accessToken,
      body: { slot_id: 'm.call#ROOM', msc4354_sticky_key: 'dev' },
    });
    const id = await delayIdOf(Promise.resolve(res));
    const dedicated = await delayIdOf(
      t.request('PUT', `${U}/rooms/${enc(roomId)}/delayed_event/${RTC}/${newTxn()}?${STICKY}=1000`, {
        token: alice.accessToken,
        body: { delay_ms: 6000, content: { k: 'dedicated' } },
      }),
    );
    const plain = await delayIdOf(scheduleDedicated(t, alice, roomId, { delay_ms: 7000, content: { k: 'plain' } }));

    const listed = (await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken })).body.delayed_events;
    expect(listed.map((e: { delay_id: string }) => e.delay_id)).toEqual([id, dedicated, plain]);
    expect(listed[0]).toMatchObject({ delay_ms: 5000, scheduled_at: scheduledAt, msc4354_sticky: { duration_ms: HOUR } });
    expect(listed[1].msc4354_sticky).toEqual({ duration_ms: 1000 });
    expect(listed[2].msc4354_sticky).toBeUndefined();
    const lookup = (await t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: alice.accessToken })).body;
    expect(lookup.msc4354_sticky).toEqual({ duration_ms: HOUR });

    const base = (await sync(bob, 'timeout=0')).body.next_batch as string;
    clock.advance(5000);
    const synced = (await sync(bob, `since=${base}`)).body.rooms.join[roomId];
    const sent = synced.timeline.events.find((e: Ev) => e.type === RTC);
    expect(sent).toMatchObject({
      content: { slot_id: 'm.call#ROOM', msc4354_sticky_key: 'dev' },
      origin_server_ts: scheduledAt + 5000,
      msc4354_sticky: { duration_ms: HOUR },
      unsigned: { [TTL]: HOUR },
    });
    const finalised = (await t.request('GET', `${U}/delayed_events?status=finalised&delay_id=${enc(id)}`, { token: alice.accessToken })).body;
    expect(finalised.finalised[0].delayed_event.msc4354_sticky).toEqual({ duration_ms: HOUR });
    for (const other of [dedicated, plain]) await act(t, other, 'cancel');
  });
});

describe('persistence of sticky events', () => {
  let dataDir: string;
  beforeAll(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'lastwill-sticky-'));
  });
  afterAll(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('a store from before sticky events gains the columns; a delayed sticky event sent past its stickiness is ordinary', async () => {
    const first = new FakeClock();
    let hs: TestHomeserver | undefined = await startTestHomeserver({}, { clock: first, dataDir });
    let owner: Session;
    let room: string;
    try {
      owner = await hs.register('owner');
      room = await hs.createRoom(owner.accessToken, OPEN_ROOM);
      await hs.close();
      hs = undefined;
      // What an earlier version wrote: neither table has the column.
      const db = openDatabase(join(dataDir, 'homeserver.db'));
      db.exec('ALTER TABLE events DROP COLUMN sticky_duration_ms');
      db.exec('ALTER TABLE delayed_events DROP COLUMN sticky_duration_ms');
      db.close();

      hs = await startTestHomeserver({}, { clock: first, dataDir });
      const path = (delay: number, sticky: number) =>
        `/_matrix/client/v3/rooms/${enc(room)}/send/${RTC}/${newTxn()}?${DELAY}=${delay}&${STICKY}=${sticky}`;
      const put = (delay: number, sticky: number, k: string) =>
        hs!.request('PUT', path(delay, sticky), { token: owner.accessToken, body: { k } });
      await delayIdOf(put(1000, 60_000, 'stale'));
      await delayIdOf(put(200_000, 600_000, 'fresh'));
      await hs.close();
      hs = undefined;

      // Back 150 s later: 'stale' was due 149 s ago and its minute of stickiness is over.
      const second = new FakeClock(first.now() + 150_000);
      hs = await startTestHomeserver({}, { clock: second, dataDir });
      const timelineOf = async () =>
        (await hs!.request('GET', `/_matrix/client/v3/rooms/${enc(room)}/messages?dir=f&limit=100`, { token: owner.accessToken })).body
          .chunk.filter((e: Ev) => e.type === RTC) as Ev[];
      const [stale] = await timelineOf();
      expect([stale!.content.k, stale!.msc4354_sticky, stale!.unsigned[TTL]]).toEqual(['stale', { duration_ms: 60_000 }, undefined]);
      second.advance(50_000);
      const fresh = (await timelineOf())[1]!;
      expect([fresh.content.k, fresh.msc4354_sticky, fresh.unsigned[TTL]]).toEqual(['fresh', { duration_ms: 600_000 }, 600_000]);
      for (let i = 0; i < 4; i++) await hs.request('PUT', `/_matrix/client/v3/rooms/${enc(room)}/send/m.room.message/${newTxn()}`, { token: owner.accessToken, body: { i } });
      const joined = (await hs.request('GET', `/_matrix/client/v3/sync?${LIMIT_3}`, { token: owner.accessToken })).body.rooms.join[room];
      expect(stickyIds(joined)).toEqual([fresh.event_id]);
    } finally {
      await hs?.close();
    }
  });
});
