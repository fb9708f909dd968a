import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startTestHomeserver, startWithUsers, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
let alice: Session;
let bob: Session;

beforeAll(async () => {
  ({ t, users: { alice, bob } } = await startWithUsers({ users: ['alice', 'bob'] }));
});
afterAll(async () => {
  await t?.close();
});

const sync = (token: string, query = '') => t.request('GET', `/_matrix/client/v3/sync${query}`, { token });
const sendMsg = (roomId: string, token: string, body: string) =>
  t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message`, {
    token,
    body: { msgtype: 'm.text', body },
  });

describe('/sync', () => {
  it('returns joined rooms with state and timeline on an initial sync', async () => {
    const roomId = await t.createRoom(alice.accessToken, { name: 'Initial' });
    await sendMsg(roomId, alice.accessToken, 'first');
    const res = await sync(alice.accessToken);
    expect(res.status).toBe(200);
    expect(res.body.next_batch).toMatch(/^s\d+$/);
    const room = res.body.rooms.join[roomId];
    expect(room.timeline.events.at(-1).content.body).toBe('first');
    expect(typeof room.timeline.prev_batch).toBe('string');
    expect(room.unread_notifications).toEqual({ notification_count: 0, highlight_count: 0 });
    const allTypes = [...room.state.events, ...room.timeline.events].map((e: { type: string }) => e.type);
    expect(allTypes).toEqual(expect.arrayContaining(['m.room.create', 'm.room.name', 'm.room.power_levels']));
  });

  it('limits the timeline per filter and marks it limited', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    for (let i = 0; i < 5; i++) await sendMsg(roomId, alice.accessToken, `m${i}`);
    const filter = enc(JSON.stringify({ room: { timeline: { limit: 2 } } }));
    const res = await sync(alice.accessToken, `?filter=${filter}`);
    const room = res.body.rooms.join[roomId];
    expect(room.timeline.events.map((e: { content: { body: string } }) => e.content.body)).toEqual(['m3', 'm4']);
    expect(room.timeline.limited).toBe(true);
    // State not in the timeline is still delivered.
    expect(room.state.events.some((e: { type: string }) => e.type === 'm.room.create')).toBe(true);
    // The uploaded-filter form gives the same window.
    const up = await t.request('POST', `/_matrix/client/v3/user/${enc(alice.userId)}/filter`, {
      token: alice.accessToken,
      body: { room: { timeline: { limit: 2 } } },
    });
    expect(up.body.filter_id).toMatch(/^\d+$/);
    const stored = await t.request('GET', `/_matrix/client/v3/user/${enc(alice.userId)}/filter/${up.body.filter_id}`, {
      token: alice.accessToken,
    });
    expect(stored.body).toEqual({ room: { timeline: { limit: 2 } } });
    const viaId = await sync(alice.accessToken, `?filter=${up.body.filter_id}`);
    expect(viaId.body.rooms.join[roomId].timeline.events).toHaveLength(2);
  });

  it('applies each filter as sent, however often and whichever came before it', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    for (let i = 0; i < 5; i++) await sendMsg(roomId, alice.accessToken, `m${i}`);
    const bodies = async (token: string, filter: unknown) => {
      const res = await sync(token, `?filter=${enc(typeof filter === 'string' ? filter : JSON.stringify(filter))}`);
      expect(res.status).toBe(200);
      return res.body.rooms.join[roomId].timeline.events.map((e: { content: { body?: string } }) => e.content.body);
    };
    const limit = (n: number) => ({ room: { timeline: { limit: n } } });
    for (const n of [3, 1, 3, 1]) expect(await bodies(alice.accessToken, limit(n))).toHaveLength(n);
    // A stored filter with the same text as an inline one, and the inline one again.
    const up = await t.request('POST', `/_matrix/client/v3/user/${enc(alice.userId)}/filter`, {
      token: alice.accessToken,
      body: limit(1),
    });
    expect(await bodies(alice.accessToken, up.body.filter_id)).toEqual(['m4']);
    expect(await bodies(alice.accessToken, limit(1))).toEqual(['m4']);
    // Another user's filter id stays unknown to bob, even once its text was parsed for alice.
    expect((await sync(bob.accessToken, `?filter=${up.body.filter_id}`)).status).toBe(400);
    // An invalid filter is refused every time, never remembered.
    for (let i = 0; i < 2; i++) {
      const bad = await sync(alice.accessToken, `?filter=${enc(JSON.stringify(limit(-1)))}`);
      expect(bad.status).toBe(400);
      expect(bad.body.errcode).toBe('M_INVALID_PARAM');
    }
  });

  it('returns only new events on an incremental sync', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    const first = await sync(alice.accessToken);
    await sendMsg(roomId, alice.accessToken, 'new one');
    const next = await sync(alice.accessToken, `?since=${first.body.next_batch}`);
    const room = next.body.rooms.join[roomId];
    expect(room.timeline.events.map((e: { content: { body: string } }) => e.content.body)).toEqual(['new one']);
    expect(room.timeline.limited).toBe(false);
    expect(room.state.events).toEqual([]);
    const idle = await sync(alice.accessToken, `?since=${next.body.next_batch}&timeout=0`);
    expect(idle.body.rooms.join).toEqual({});
  });

  it('returns the rooms written to since the token, whichever token', async () => {
    const roomA = await t.createRoom(alice.accessToken);
    const roomB = await t.createRoom(alice.accessToken);
    const first = (await sync(alice.accessToken)).body.next_batch as string;
    await sendMsg(roomA, alice.accessToken, 'in a');
    const second = await sync(alice.accessToken, `?since=${first}`);
    expect(Object.keys(second.body.rooms.join)).toEqual([roomA]);
    await sendMsg(roomB, alice.accessToken, 'in b');
    const third = await sync(alice.accessToken, `?since=${second.body.next_batch}`);
    expect(Object.keys(third.body.rooms.join)).toEqual([roomB]);
    const both = await sync(alice.accessToken, `?since=${first}`);
    expect(Object.keys(both.body.rooms.join).sort()).toEqual([roomA, roomB].sort());
    const none = await sync(alice.accessToken, `?since=${third.body.next_batch}`);
    expect(none.body.rooms.join).toEqual({});
  });

  it('delivers invites with stripped state, then the join, then the leave', async () => {
    const roomId = await t.createRoom(alice.accessToken, { name: 'Secret' });
    const start = await sync(bob.accessToken);
    await t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, {
      token: alice.accessToken,
      body: { user_id: bob.userId },
    });
    const invited = await sync(bob.accessToken, `?since=${start.body.next_batch}`);
    const inviteState = invited.body.rooms.invite[roomId].invite_state.events;
    expect(inviteState).toContainEqual(expect.objectContaining({ type: 'm.room.name', content: { name: 'Secret' } }));
    expect(inviteState).toContainEqual(
      expect.objectContaining({ type: 'm.room.member', state_key: bob.userId, content: { membership: 'invite' } }),
    );
    await t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/join`, { token: bob.accessToken });
    const joined = await sync(bob.accessToken, `?since=${invited.body.next_batch}`);
    const room = joined.body.rooms.join[roomId];
    expect([...room.state.events, ...room.timeline.events].some((e: { type: string }) => e.type === 'm.room.create')).toBe(
      true,
    );
    await t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/leave`, { token: bob.accessToken });
    const left = await sync(bob.accessToken, `?since=${joined.body.next_batch}`);
    expect(left.body.rooms.join[roomId]).toBeUndefined();
    expect(left.body.rooms.leave[roomId].timeline.events.at(-1).content.membership).toBe('leave');
  });

  it('wakes a long poll when an event arrives', async () => {
    const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat' });
    await t.request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: bob.accessToken });
    const base = await sync(bob.accessToken);
    const started = Date.now();
    const poll = sync(bob.accessToken, `?since=${base.body.next_batch}&timeout=20000`);
    await new Promise((r) => setTimeout(r, 100));
    await t.request('PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.live/`, {
      token: alice.accessToken,
      body: { on: true },
    });
    const res = await poll;
    expect(Date.now() - started).toBeLessThan(10_000);
    const ev = res.body.rooms.join[roomId].timeline.events;
    expect(ev.map((e: { type: string }) => e.type)).toEqual(['com.example.live']);
  });

  it('wakes a long poll for an invite to a room it was not in, not for events of other rooms', async () => {
    const base = await sync(bob.accessToken);
    const poll = sync(bob.accessToken, `?since=${base.body.next_batch}&timeout=20000`);
    let answered = false;
    void poll.then(() => (answered = true));
    // Alice's own room does not concern bob: his long poll keeps waiting.
    const roomId = await t.createRoom(alice.accessToken);
    await sendMsg(roomId, alice.accessToken, 'not for bob');
    await new Promise((r) => setTimeout(r, 200));
    expect(answered).toBe(false);
    await t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, {
      token: alice.accessToken,
      body: { user_id: bob.userId },
    });
    const res = await poll;
    expect(Object.keys(res.body.rooms.invite)).toEqual([roomId]);
  });

  it('answers an idle long poll after its timeout with nothing', async () => {
    const base = await sync(bob.accessToken);
    const started = Date.now();
    const res = await sync(bob.accessToken, `?since=${base.body.next_batch}&timeout=300`);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(res.body.rooms.join).toEqual({});
    expect(res.body.next_batch).toBe(base.body.next_batch);
  });

  it('ends long polls at once when the server closes', async () => {
    const other = await startTestHomeserver();
    const s = await other.register('quitter');
    const base = await other.request('GET', '/_matrix/client/v3/sync', { token: s.accessToken });
    const started = Date.now();
    const poll = other.request('GET', `/_matrix/client/v3/sync?since=${base.body.next_batch}&timeout=30000`, {
      token: s.accessToken,
    });
    await new Promise((r) => setTimeout(r, 100));
    const closing = other.close();
    const res = await poll;
    await closing;
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('syncs account data, global and per room', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    const base = await sync(alice.accessToken);
    const put = await t.request('PUT', `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/com.example.pref`, {
      token: alice.accessToken,
      body: { theme: 'dark' },
    });
    expect(put.status).toBe(200);
    await t.request(
      'PUT',
      `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/com.example.tag`,
      { token: alice.accessToken, body: { t: 1 } },
    );
    const next = await sync(alice.accessToken, `?since=${base.body.next_batch}`);
    expect(next.body.account_data.events).toEqual([{ type: 'com.example.pref', content: { theme: 'dark' } }]);
    expect(next.body.rooms.join[roomId].account_data.events).toEqual([{ type: 'com.example.tag', content: { t: 1 } }]);
    const get = await t.request('GET', `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/com.example.pref`, {
      token: alice.accessToken,
    });
    expect(get.body).toEqual({ theme: 'dark' });
    const foreign = await t.request('GET', `/_matrix/client/v3/user/${enc(bob.userId)}/account_data/com.example.pref`, {
      token: alice.accessToken,
    });
    expect(foreign.status).toBe(403);
  });

  it('refuses bad sync parameters', async () => {
    for (const q of ['?since=bogus', '?timeout=-5', '?filter=notjson', '?filter=999999', '?full_state=maybe']) {
      const res = await sync(alice.accessToken, q);
      expect(res.status, q).toBe(400);
      expect(typeof res.body.errcode, q).toBe('string');
    }
  });

  it('returns full state on request', async () => {
    const roomId = await t.createRoom(alice.accessToken, { name: 'Full' });
    const base = await sync(alice.accessToken);
    await sendMsg(roomId, alice.accessToken, 'x');
    const res = await sync(alice.accessToken, `?since=${base.body.next_batch}&full_state=true&set_presence=online`);
    expect(res.body.rooms.join[roomId].state.events.some((e: { type: string }) => e.type === 'm.room.name')).toBe(true);
  });
});
