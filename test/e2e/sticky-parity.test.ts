// MSC4354 sticky events: the bundled homeserver checked against a real Synapse with
// `msc4354_enabled`. Both get the same requests from fresh users in a fresh room, and the test
// compares what a client can observe: status codes and errcodes, the `msc4354_sticky` event field
// and the TTL in `unsigned` wherever an event is served, and the per-room `msc4354_sticky` /sync
// section. Values that legitimately differ (event ids, timestamps, a TTL read a moment later) are
// reduced to what must hold on both. Where the two differ on purpose (docs/homeserver.md, "Sticky events"),
// the test asserts each side's documented behaviour, so a change on either side shows up here.
import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { MSC4140, type RegisteredUser, requestJson } from '../../scripts/lib/matrix-http.js';
import { type MatrixServer, startBundledHomeserver } from './support/flow.js';
import { sleep, waitFor } from './support/proc.js';
import {
  ensureSynapse,
  startSynapse,
  SYNAPSE_MSC4354,
  SYNAPSE_VERSION,
  type SynapseServer,
} from './support/synapse.js';

const synapsePy = await ensureSynapse();
const skipped = synapsePy.skip ? ` (skipped: ${synapsePy.skip})` : '';

const STICKY = 'org.matrix.msc4354.sticky_duration_ms';
const DELAY = 'org.matrix.msc4140.delay';
const TTL = 'msc4354_sticky_duration_ttl_ms';
const HOUR = 3_600_000;
/** MatrixRTC memberships are sticky `m.rtc.member` events (js-sdk 43's unstableSendStickyEvents). */
const RTC = 'm.rtc.member';
/** A custom state type: alice creates the room, so she may send it. */
const STATE = 'com.example.test';
/**
 * How far below the capped duration a TTL may read and still count as "the full stickiness of an
 * event sent a moment ago": only a tolerance for a slow machine, nothing here measures speed.
 */
const TTL_SLACK_MS = 60_000;

type Side = 'synapse' | 'bundled';
const SIDES: readonly Side[] = ['synapse', 'bundled'];

interface Ev {
  event_id: string;
  type: string;
  state_key?: string;
  content: Record<string, unknown>;
  unsigned?: Record<string, unknown>;
  msc4354_sticky?: { duration_ms: number };
}

interface SyncRoom {
  timeline: { events: Ev[]; limited: boolean };
  state: { events: Ev[] };
  msc4354_sticky?: { events: Ev[] };
}

/** Two users (alice sends, bob reads) in a fresh public room on one server. */
interface Scene {
  side: Side;
  alice: RegisteredUser;
  bob: RegisteredUser;
  roomId: string;
  req(method: string, path: string, token: string, body?: unknown): Promise<{ status: number; body: any }>;
}

const enc = encodeURIComponent;
const newTxn = () => `t${randomBytes(6).toString('hex')}`;
const roomPath = (s: Scene, rest: string) => `/_matrix/client/v3/rooms/${enc(s.roomId)}${rest}`;
/** A /sync filter: timeline window of `limit` (Synapse's default is 10). */
const limitFilter = (limit: number) => `filter=${enc(JSON.stringify({ room: { timeline: { limit } } }))}`;

/** Status and errcode: what a client branches on. */
const verdict = (r: { status: number; body: any }): [number, string | undefined] => [r.status, r.body?.errcode];

function send(s: Scene, content: Record<string, unknown>, query: string, o: { type?: string; post?: boolean } = {}) {
  const type = o.type ?? RTC;
  return o.post
    ? s.req('POST', roomPath(s, `/send/${type}?${query}`), s.alice.accessToken, content)
    : s.req('PUT', roomPath(s, `/send/${type}/${newTxn()}?${query}`), s.alice.accessToken, content);
}
const sendState = (s: Scene, key: string, content: Record<string, unknown>, query: string) =>
  s.req('PUT', roomPath(s, `/state/${STATE}/${enc(key)}?${query}`), s.alice.accessToken, content);
/** Synapse insists on msgtype for m.room.message; the bundled homeserver does not care. */
const chatter = async (s: Scene, n: number) => {
  for (let i = 0; i < n; i++) {
    const r = await send(s, { msgtype: 'm.text', body: `chatter ${i}` }, '', { type: 'm.room.message' });
    expect(r.status).toBe(200);
  }
};
async function eventIdOf(res: Promise<{ status: number; body: any }>): Promise<string> {
  const r = await res;
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.event_id as string;
}
async function syncAs(s: Scene, user: RegisteredUser, query: string): Promise<{ next_batch: string; rooms: any }> {
  const r = await s.req('GET', `/_matrix/client/v3/sync?${query}`, user.accessToken);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body;
}
const syncRoom = async (s: Scene, query: string): Promise<SyncRoom | undefined> =>
  (await syncAs(s, s.bob, query)).rooms?.join?.[s.roomId];
/** The `k` of each event of the room's sticky section, in order. */
const stickyKeys = (room: SyncRoom | undefined) => (room?.msc4354_sticky?.events ?? []).map((e) => e.content.k);
const timelineKeys = (room: SyncRoom | undefined) => (room?.timeline.events ?? []).map((e) => e.content.k ?? e.type);

/**
 * The sticky part of an event as both servers must serve it: the field as the sender asked, and
 * whether the TTL is absent or the capped duration counting down (else the raw value, which fails
 * any comparison).
 */
function stickiness(e: Ev | undefined): { sticky: unknown; ttl: 'absent' | 'live' | number } {
  if (!e) return { sticky: 'no such event', ttl: 'absent' };
  const ttl = e.unsigned?.[TTL];
  const capped = Math.min(e.msc4354_sticky?.duration_ms ?? 0, HOUR);
  const live = typeof ttl === 'number' && ttl <= capped && ttl > capped - TTL_SLACK_MS;
  return { sticky: e.msc4354_sticky ?? 'absent', ttl: ttl === undefined ? 'absent' : live ? 'live' : (ttl as number) };
}

describe.skipIf(!!synapsePy.skip)(`sticky events (MSC4354): the bundled homeserver against Synapse${skipped}`, () => {
  let synapse: SynapseServer;
  let bundled: MatrixServer;
  const servers = {} as Record<Side, { baseUrl: string; registerUser(name: string): Promise<RegisteredUser> }>;

  beforeAll(async () => {
    [synapse, bundled] = await Promise.all([startSynapse({ extraConfig: SYNAPSE_MSC4354 }), startBundledHomeserver()]);
    // The pinned version is what the findings in docs/homeserver.md were checked against.
    expect(synapse.version).toBe(SYNAPSE_VERSION);
    servers.synapse = synapse;
    servers.bundled = bundled;
  }, 120_000);
  afterAll(async () => {
    await Promise.all([synapse?.stop(), bundled?.stop()]);
  }, 30_000);

  async function scene(side: Side): Promise<Scene> {
    const server = servers[side];
    const req = async (method: string, path: string, token: string, body?: unknown) =>
      requestJson(method, `${server.baseUrl}${path}`, { token, ...(body !== undefined ? { body } : {}) });
    const suffix = randomBytes(4).toString('hex');
    const alice = await server.registerUser(`alice-${suffix}`);
    const bob = await server.registerUser(`bob-${suffix}`);
    const created = await req('POST', '/_matrix/client/v3/createRoom', alice.accessToken, { preset: 'public_chat' });
    expect(created.status).toBe(200);
    const roomId = String(created.body.room_id);
    expect((await req('POST', `/_matrix/client/v3/join/${enc(roomId)}`, bob.accessToken, {})).status).toBe(200);
    return { side, alice, bob, roomId, req };
  }

  /** The same steps on Synapse, then on the bundled homeserver (one at a time: a small machine). */
  async function onBoth<T>(steps: (s: Scene) => Promise<T>): Promise<Record<Side, T>> {
    const out = {} as Record<Side, T>;
    for (const side of SIDES) out[side] = await steps(await scene(side));
    return out;
  }

  it('/versions advertises org.matrix.msc4354', async () => {
    const r = await onBoth(async (s) => (await s.req('GET', '/_matrix/client/versions', s.bob.accessToken)).body);
    expect(r.synapse.unstable_features['org.matrix.msc4354']).toBe(true);
    expect(r.bundled.unstable_features['org.matrix.msc4354']).toBe(true);
  });

  it('the duration on /send (PUT, POST) and /state becomes msc4354_sticky, with the capped TTL, in /event, /messages, /sync and /state; m.room.member ignores it', async () => {
    const r = await onBoth(async (s) => {
      const base = (await syncAs(s, s.bob, 'timeout=0')).next_batch;
      const ids: Record<string, string> = {
        ten: await eventIdOf(send(s, { k: 'ten' }, `${STICKY}=600000`)),
        twoHours: await eventIdOf(send(s, { k: 'twoHours' }, `${STICKY}=${2 * HOUR}`)),
        zero: await eventIdOf(send(s, { k: 'zero' }, `${STICKY}=0`, { post: true })),
        state: await eventIdOf(sendState(s, 'k', { k: 'state' }, `${STICKY}=120000`)),
        plain: await eventIdOf(send(s, { k: 'plain' }, '')),
        member: await eventIdOf(
          s.req('PUT', roomPath(s, `/state/m.room.member/${enc(s.bob.userId)}?${STICKY}=600000`), s.bob.accessToken, {
            membership: 'join',
            displayname: 'Bob',
          }),
        ),
      };
      const byId = (events: Ev[]) => (name: string) => events.find((e) => e.event_id === ids[name]);
      const views: Record<string, (name: string) => Ev | undefined> = {};
      const single: Record<string, Ev> = {};
      for (const name of Object.keys(ids)) {
        single[name] = (await s.req('GET', roomPath(s, `/event/${enc(ids[name]!)}`), s.bob.accessToken)).body;
      }
      views.event = (name) => single[name];
      views.messages = byId((await s.req('GET', roomPath(s, '/messages?dir=b&limit=20'), s.bob.accessToken)).body.chunk);
      views.sync = byId((await syncRoom(s, `since=${base}&timeout=0&${limitFilter(20)}`))?.timeline.events ?? []);
      const state = (await s.req('GET', roomPath(s, `/state/${STATE}/k?format=event`), s.bob.accessToken)).body as Ev;
      const fullState = (await s.req('GET', roomPath(s, '/state'), s.bob.accessToken)).body as Ev[];
      const out: Record<string, unknown> = {};
      for (const [where, find] of Object.entries(views)) {
        for (const name of Object.keys(ids)) out[`${where} ${name}`] = stickiness(find(name));
      }
      out['state/{type}/{key}'] = stickiness(state);
      out['state (all)'] = stickiness(fullState.find((e) => e.type === STATE));
      return out;
    });
    const live = (duration: number) => ({ sticky: { duration_ms: duration }, ttl: 'live' });
    const plain = { sticky: 'absent', ttl: 'absent' };
    for (const where of ['event', 'messages', 'sync']) {
      expect(r.synapse, where).toMatchObject({
        [`${where} ten`]: live(600_000),
        // Asked for two hours: the field says so, the TTL counts down from one.
        [`${where} twoHours`]: live(2 * HOUR),
        [`${where} zero`]: { sticky: { duration_ms: 0 }, ttl: 'absent' },
        [`${where} state`]: live(120_000),
        [`${where} plain`]: plain,
        [`${where} member`]: plain,
      });
    }
    expect(r.synapse).toMatchObject({ 'state/{type}/{key}': live(120_000), 'state (all)': live(120_000) });
    expect(r.bundled).toEqual(r.synapse);
  });

  describe('refusals', () => {
    /** Every form a sticky duration may come with; `bad` goes into each. */
    const forms = (s: Scene, bad: string) => {
      const q = `${STICKY}=${enc(bad)}`;
      return {
        'PUT send': () => send(s, { k: 'x' }, q),
        'POST send': () => send(s, { k: 'x' }, q, { post: true }),
        state: () => sendState(s, 'bad', { k: 'x' }, q),
        'delayed send': () => send(s, { k: 'x' }, `${DELAY}=1000&${q}`),
        'delayed state': () => sendState(s, 'bad', { k: 'x' }, `${DELAY}=1000&${q}`),
        // Parsed before membership events go their own way, so refused there too.
        'm.room.member': () =>
          s.req('PUT', roomPath(s, `/state/m.room.member/${enc(s.alice.userId)}?${q}`), s.alice.accessToken, {
            membership: 'join',
          }),
      };
    };
    const latestEventId = async (s: Scene) =>
      (await s.req('GET', roomPath(s, '/messages?dir=b&limit=1'), s.bob.accessToken)).body.chunk[0]?.event_id;
    const scheduled = async (s: Scene) =>
      (await s.req('GET', `${MSC4140}/delayed_events`, s.alice.accessToken)).body.delayed_events as unknown[];

    it('a duration that is no integer, or negative, is 400 M_INVALID_PARAM on both, and nothing is sent or scheduled', async () => {
      const r = await onBoth(async (s) => {
        const before = await latestEventId(s);
        const out: Record<string, unknown> = {};
        for (const bad of ['-1', '1.5', 'soon', '', '1e3', '0x10']) {
          for (const [form, go] of Object.entries(forms(s, bad))) out[`${JSON.stringify(bad)} ${form}`] = verdict(await go());
        }
        out.unchanged = (await latestEventId(s)) === before;
        out.scheduled = await scheduled(s);
        return out;
      });
      expect(Object.keys(r.synapse)).toHaveLength(6 * 6 + 2);
      for (const [what, v] of Object.entries(r.synapse)) {
        if (what !== 'unchanged' && what !== 'scheduled') expect(v, what).toEqual([400, 'M_INVALID_PARAM']);
      }
      expect(r.synapse).toMatchObject({ unchanged: true, scheduled: [] });
      expect(r.bundled).toEqual(r.synapse);
    });

    it('documented difference: Synapse also takes what Python int() reads (+5, " 5", 1_000, -0); we take digits only', async () => {
      const r = await onBoth(async (s) => {
        const out: Record<string, unknown> = {};
        for (const lenient of ['+5', ' 5', '1_000', '-0']) {
          out[lenient] = verdict(await send(s, { k: lenient }, `${STICKY}=${enc(lenient)}`));
        }
        return out;
      });
      expect(r.synapse).toEqual({ '+5': [200, undefined], ' 5': [200, undefined], '1_000': [200, undefined], '-0': [200, undefined] });
      const refused = [400, 'M_INVALID_PARAM'];
      expect(r.bundled).toEqual({ '+5': refused, ' 5': refused, '1_000': refused, '-0': refused });
    });

    it('documented difference: 2^53 ms and more is refused by both when sent (Synapse: M_BAD_JSON), but only we refuse to schedule it', async () => {
      const huge = '9007199254740992';
      const r = await onBoth(async (s) => {
        const now = verdict(await send(s, { k: 'huge' }, `${STICKY}=${huge}`));
        const delayed = await send(s, { k: 'huge-delayed' }, `${DELAY}=500&${STICKY}=${huge}`);
        // Synapse takes the schedule and its send then fails: wait for the timer to have run.
        if (delayed.status === 200) await waitFor('the delayed send to run', async () => (await scheduled(s)).length === 0);
        const chunk = (await s.req('GET', roomPath(s, '/messages?dir=b&limit=10'), s.bob.accessToken)).body.chunk as Ev[];
        return { now, delayed: verdict(delayed), sent: chunk.filter((e) => String(e.content.k).startsWith('huge')).length };
      });
      // The event's JSON may hold no integer beyond 2^53 - 1 (canonical JSON), so Synapse fails to build it.
      expect(r.synapse).toEqual({ now: [400, 'M_BAD_JSON'], delayed: [200, undefined], sent: 0 });
      expect(r.bundled).toEqual({ now: [400, 'M_INVALID_PARAM'], delayed: [400, 'M_INVALID_PARAM'], sent: 0 });
    });
  });

  it('/sync: msc4354_sticky holds the live sticky events a limited timeline skipped, once each, oldest first; a sticky state event is in state too', async () => {
    const r = await onBoth(async (s) => {
      const base = (await syncAs(s, s.bob, 'timeout=0')).next_batch;
      await eventIdOf(send(s, { k: 'a' }, `${STICKY}=600000`));
      await eventIdOf(sendState(s, 'k', { k: 's' }, `${STICKY}=600000`));
      await chatter(s, 4);
      const initial = await syncRoom(s, limitFilter(3));
      const incremental = await syncAs(s, s.bob, `since=${base}&timeout=0&${limitFilter(3)}`);
      const room = incremental.rooms.join[s.roomId] as SyncRoom;
      const entry = room.msc4354_sticky?.events[0];
      // One that fits the next window comes in the timeline only.
      await eventIdOf(send(s, { k: 'c' }, `${STICKY}=600000`));
      const fits = await syncAs(s, s.bob, `since=${incremental.next_batch}&timeout=0&${limitFilter(3)}`);
      // The window after: only what is new (a, s are not repeated); e expires before the sync.
      await eventIdOf(send(s, { k: 'd' }, `${STICKY}=600000`));
      const e = await eventIdOf(send(s, { k: 'e' }, `${STICKY}=1000`));
      await chatter(s, 4);
      await sleep(1_500);
      const later = await syncRoom(s, `since=${fits.next_batch}&timeout=0&${limitFilter(3)}`);
      const expired = (await s.req('GET', roomPath(s, `/event/${enc(e)}`), s.bob.accessToken)).body as Ev;
      return {
        initial: { limited: initial?.timeline.limited, sticky: stickyKeys(initial) },
        incremental: {
          limited: room.timeline.limited,
          sticky: stickyKeys(room),
          stateEntry: stickiness(room.state.events.find((x) => x.type === STATE)),
        },
        // Compared without room_id: neither server's choice for /sync events is about sticky events.
        entryFields: Object.keys(entry ?? {})
          .filter((k) => k !== 'room_id')
          .sort(),
        entry: stickiness(entry),
        fits: {
          timeline: timelineKeys(fits.rooms.join[s.roomId]),
          section: fits.rooms.join[s.roomId]?.msc4354_sticky,
        },
        later: stickyKeys(later),
        expired: stickiness(expired),
      };
    });
    expect(r.synapse).toEqual({
      initial: { limited: true, sticky: ['a', 's'] },
      incremental: { limited: true, sticky: ['a', 's'], stateEntry: { sticky: { duration_ms: 600_000 }, ttl: 'live' } },
      entryFields: ['content', 'event_id', 'msc4354_sticky', 'origin_server_ts', 'sender', 'type', 'unsigned'],
      entry: { sticky: { duration_ms: 600_000 }, ttl: 'live' },
      fits: { timeline: ['c'], section: undefined },
      later: ['d'],
      expired: { sticky: { duration_ms: 1000 }, ttl: 'absent' },
    });
    expect(r.bundled).toEqual(r.synapse);
  });

  it('a delayed sticky event arrives sticky, sent by its timer (message and state) or by the send action; only our listing shows the duration', async () => {
    const r = await onBoth(async (s) => {
      const base = (await syncAs(s, s.bob, 'timeout=0')).next_batch;
      const delayIdOf = async (res: Promise<{ status: number; body: any }>) => {
        const x = await res;
        expect(x.status, JSON.stringify(x.body)).toBe(200);
        return x.body.delay_id as string;
      };
      await delayIdOf(send(s, { k: 'timer' }, `${DELAY}=1000&${STICKY}=600000`));
      await delayIdOf(sendState(s, 'delayed', { k: 'timer-state' }, `${DELAY}=1000&${STICKY}=600000`));
      const action = await delayIdOf(send(s, { k: 'action' }, `${DELAY}=${HOUR}&${STICKY}=${HOUR}`));
      const listed = ((await s.req('GET', `${MSC4140}/delayed_events`, s.alice.accessToken)).body.delayed_events as Array<
        Record<string, unknown>
      >).find((d) => d.delay_id === action);
      const sent = await s.req('POST', `${MSC4140}/delayed_events/${enc(action)}/send`, s.alice.accessToken, {});
      expect(sent.status, JSON.stringify(sent.body)).toBe(200);
      const keys = ['timer', 'timer-state', 'action'];
      const arrived = async () => {
        const chunk = (await s.req('GET', roomPath(s, '/messages?dir=b&limit=10'), s.bob.accessToken)).body.chunk as Ev[];
        return keys.every((k) => chunk.some((e) => e.content.k === k));
      };
      await waitFor('the delayed sticky events to be sent', arrived, { timeoutMs: 20_000, intervalMs: 200 });
      const timeline = (await syncRoom(s, `since=${base}&timeout=0&${limitFilter(20)}`))?.timeline.events ?? [];
      const out: Record<string, unknown> = { listedDuration: listed?.msc4354_sticky ?? 'absent' };
      for (const k of keys) out[k] = stickiness(timeline.find((e) => e.content.k === k));
      return out;
    });
    const synapseView = {
      timer: { sticky: { duration_ms: 600_000 }, ttl: 'live' },
      'timer-state': { sticky: { duration_ms: 600_000 }, ttl: 'live' },
      action: { sticky: { duration_ms: HOUR }, ttl: 'live' },
    };
    expect(r.synapse).toEqual({ ...synapseView, listedDuration: 'absent' });
    // Our choice (docs/homeserver.md): listings show the duration the send will carry.
    expect(r.bundled).toEqual({ ...synapseView, listedDuration: { duration_ms: HOUR } });
  });

  it('documented difference: with 101 live sticky events Synapse sends 100 and the rest in the next /sync; we send all in one', async () => {
    const r = await onBoth(async (s) => {
      for (let i = 0; i < 101; i++) await eventIdOf(send(s, { k: i }, `${STICKY}=600000`));
      await chatter(s, 3);
      const first = await syncAs(s, s.bob, limitFilter(3));
      const second = await syncAs(s, s.bob, `since=${first.next_batch}&timeout=0&${limitFilter(3)}`);
      return [first, second].map((b) => stickyKeys(b.rooms?.join?.[s.roomId]));
    });
    const upTo = (n: number) => Array.from({ length: n }, (_, i) => i);
    expect(r.synapse).toEqual([upTo(100), [100]]);
    expect(r.bundled).toEqual([upTo(101), []]);
  });

  it('documented difference: a user who joins gets the room\'s live sticky events from us, from Synapse only those newer than their token', async () => {
    const r = await onBoth(async (s) => {
      const carol = await servers[s.side].registerUser(`carol-${randomBytes(4).toString('hex')}`);
      await eventIdOf(send(s, { k: 'live' }, `${STICKY}=600000`));
      await chatter(s, 4);
      const base = (await syncAs(s, carol, 'timeout=0')).next_batch;
      expect((await s.req('POST', `/_matrix/client/v3/join/${enc(s.roomId)}`, carol.accessToken, {})).status).toBe(200);
      const joined = (await syncAs(s, carol, `since=${base}&timeout=0&${limitFilter(3)}`)).rooms.join[s.roomId] as SyncRoom;
      return { limited: joined.timeline.limited, sticky: stickyKeys(joined) };
    });
    expect(r.synapse).toEqual({ limited: true, sticky: [] });
    expect(r.bundled).toEqual({ limited: true, sticky: ['live'] });
  });
});
