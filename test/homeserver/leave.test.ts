/**
 * Rooms a user has left, been kicked from or banned from, as Synapse serves them: the `rooms.leave`
 * section of /sync (initial with and without `include_leave`, incremental) and reading the room's
 * history and state up to the leave.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startWithUsers, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
let alice: Session;

beforeAll(async () => {
  ({ t, users: { alice } } = await startWithUsers({ users: ['alice'] }));
});
afterAll(async () => {
  await t?.close();
});

interface Ev {
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
}

const room = (roomId: string, rest: string) => `/_matrix/client/v3/rooms/${enc(roomId)}${rest}`;
const INCLUDE_LEAVE = enc(JSON.stringify({ room: { include_leave: true } }));
const sync = (s: Session, query = '') => t.request('GET', `/_matrix/client/v3/sync${query}`, { token: s.accessToken });
const say = async (s: Session, roomId: string, body: string) => {
  const res = await t.request('POST', room(roomId, '/send/m.room.message'), {
    token: s.accessToken,
    body: { msgtype: 'm.text', body },
  });
  expect(res.status).toBe(200);
  return res.body.event_id as string;
};
const setName = (s: Session, roomId: string, name: string) =>
  t.request('PUT', room(roomId, '/state/m.room.name/'), { token: s.accessToken, body: { name } });
const membership = (s: Session, roomId: string, action: string, body: Record<string, unknown> = {}) =>
  t.request('POST', room(roomId, `/${action}`), { token: s.accessToken, body });
const bodies = (events: Ev[]) => events.filter((e) => e.type === 'm.room.message').map((e) => e.content.body);
const typesOf = (events: Ev[]) => events.map((e) => e.type);

/** A public room of alice's that `member` joined and heard `before` in; returns the room id. */
async function sharedRoom(member: Session, name: string, before: string[]): Promise<string> {
  const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat', name });
  await t.join(member.accessToken, roomId);
  for (const b of before) await say(alice, roomId, b);
  return roomId;
}

describe('rooms.leave in /sync', () => {
  it('an initial sync lists rooms the user was kicked or banned from; rooms they left only with include_leave', async () => {
    const bob = await t.register('bob-initial');
    const kicked = await sharedRoom(bob, 'Kicked', ['k1']);
    const banned = await sharedRoom(bob, 'Banned', ['b1']);
    const left = await sharedRoom(bob, 'Left', ['l1']);
    expect((await membership(alice, kicked, 'kick', { user_id: bob.userId, reason: 'bye' })).status).toBe(200);
    expect((await membership(alice, banned, 'ban', { user_id: bob.userId })).status).toBe(200);
    expect((await membership(bob, left, 'leave')).status).toBe(200);

    const plain = await sync(bob);
    expect(Object.keys(plain.body.rooms.leave).sort()).toEqual([banned, kicked].sort());
    expect(plain.body.rooms.join).toEqual({});
    const withLeave = await sync(bob, `?filter=${INCLUDE_LEAVE}`);
    expect(Object.keys(withLeave.body.rooms.leave).sort()).toEqual([banned, kicked, left].sort());

    const entry = withLeave.body.rooms.leave[kicked];
    expect(Object.keys(entry).sort()).toEqual(['account_data', 'state', 'timeline']);
    const last = entry.timeline.events.at(-1);
    expect(last).toMatchObject({ type: 'm.room.member', state_key: bob.userId, sender: alice.userId });
    expect(last.content).toEqual({ membership: 'leave', reason: 'bye' });
    expect(bodies(entry.timeline.events)).toEqual(['k1']);
    // Full state at the leave: what the timeline does not already hold.
    const all = [...entry.state.events, ...entry.timeline.events] as Ev[];
    expect(typesOf(all)).toEqual(expect.arrayContaining(['m.room.create', 'm.room.power_levels', 'm.room.name']));
    const timelineIds = new Set(entry.timeline.events.map((e: Ev) => e.event_id));
    expect(entry.state.events.some((e: Ev) => timelineIds.has(e.event_id))).toBe(false);
    expect(withLeave.body.rooms.leave[left].timeline.events.at(-1).content.membership).toBe('leave');
    expect(withLeave.body.rooms.leave[banned].timeline.events.at(-1).content.membership).toBe('ban');
  });

  it('holds the history up to and including the leave and the state as it was then, not what came after', async () => {
    const bob = await t.register('bob-cut');
    const roomId = await sharedRoom(bob, 'Before', ['one', 'two']);
    await membership(alice, roomId, 'kick', { user_id: bob.userId });
    await say(alice, roomId, 'after the kick');
    expect((await setName(alice, roomId, 'After')).status).toBe(200);

    const entry = (await sync(bob)).body.rooms.leave[roomId];
    expect(bodies(entry.timeline.events)).toEqual(['one', 'two']);
    expect(entry.timeline.events.at(-1).content.membership).toBe('leave');
    const all = [...entry.state.events, ...entry.timeline.events] as Ev[];
    expect(all.filter((e) => e.type === 'm.room.name').map((e) => e.content)).toEqual([{ name: 'Before' }]);
    expect(all.filter((e) => e.content.body === 'after the kick')).toEqual([]);
  });

  it('an incremental sync shows a room left since the token without include_leave, with the state changed in a gap', async () => {
    const bob = await t.register('bob-incremental');
    const roomId = await sharedRoom(bob, 'Old name', []);
    const base = (await sync(bob)).body.next_batch as string;
    expect((await setName(alice, roomId, 'New name')).status).toBe(200);
    for (const b of ['m1', 'm2', 'm3', 'm4']) await say(alice, roomId, b);
    await membership(bob, roomId, 'leave');
    await say(alice, roomId, 'not for bob');

    const limit2 = enc(JSON.stringify({ room: { timeline: { limit: 2 } } }));
    const res = await sync(bob, `?since=${base}&filter=${limit2}`);
    const entry = res.body.rooms.leave[roomId];
    expect(res.body.rooms.join[roomId]).toBeUndefined();
    expect(entry.timeline.limited).toBe(true);
    expect(bodies(entry.timeline.events)).toEqual(['m4']);
    expect(entry.timeline.events.at(-1).content.membership).toBe('leave');
    // The gap held a name change: the client learns it from `state`.
    expect(entry.state.events.map((e: Ev) => [e.type, e.content])).toEqual([['m.room.name', { name: 'New name' }]]);

    // The next sync has nothing more about the room.
    const next = await sync(bob, `?since=${res.body.next_batch}`);
    expect(next.body.rooms.leave).toEqual({});
  });

  it('a room the user joined and left between two syncs comes with its full state', async () => {
    const bob = await t.register('bob-brief');
    const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat', name: 'Brief' });
    const base = (await sync(bob)).body.next_batch as string;
    await t.join(bob.accessToken, roomId);
    for (let i = 0; i < 12; i++) await say(alice, roomId, `m${i}`);
    await membership(bob, roomId, 'leave');
    const entry = (await sync(bob, `?since=${base}`)).body.rooms.leave[roomId];
    expect(entry.timeline.limited).toBe(true);
    const all = [...entry.state.events, ...entry.timeline.events] as Ev[];
    expect(typesOf(all)).toEqual(expect.arrayContaining(['m.room.create', 'm.room.name', 'm.room.join_rules']));
  });

  it('a forgotten room no longer appears with include_leave', async () => {
    const bob = await t.register('bob-forget');
    const roomId = await sharedRoom(bob, 'Forgettable', []);
    await membership(bob, roomId, 'leave');
    expect((await sync(bob, `?filter=${INCLUDE_LEAVE}`)).body.rooms.leave[roomId]).toBeDefined();
    expect((await membership(bob, roomId, 'forget')).status).toBe(200);
    expect((await sync(bob, `?filter=${INCLUDE_LEAVE}`)).body.rooms.leave[roomId]).toBeUndefined();
  });

  it('refuses a filter whose include_leave is not a boolean', async () => {
    const res = await sync(alice, `?filter=${enc(JSON.stringify({ room: { include_leave: 'yes' } }))}`);
    expect(res.status).toBe(400);
    expect(res.body.errcode).toBe('M_INVALID_PARAM');
  });
});

describe('reading a room after leaving it', () => {
  it('/messages returns the history up to the leave, in both directions', async () => {
    const bob = await t.register('bob-messages');
    const roomId = await sharedRoom(bob, 'History', ['h1', 'h2', 'h3']);
    await membership(alice, roomId, 'kick', { user_id: bob.userId });
    await say(alice, roomId, 'after');

    const back = await t.request('GET', room(roomId, '/messages?dir=b&limit=100'), { token: bob.accessToken });
    expect(back.status).toBe(200);
    expect(back.body.chunk[0].content.membership).toBe('leave');
    expect(bodies(back.body.chunk)).toEqual(['h3', 'h2', 'h1']);
    const fwd = await t.request('GET', room(roomId, '/messages?dir=f&from=s0&limit=100'), { token: bob.accessToken });
    expect(fwd.status).toBe(200);
    expect(bodies(fwd.body.chunk)).toEqual(['h1', 'h2', 'h3']);
    expect(fwd.body.chunk.at(-1).content.membership).toBe('leave');
    expect(fwd.body.end).toBeUndefined();
    // A token from the future of the room (alice's) does not reach past the leave either.
    const newest = await t.request('GET', room(roomId, '/messages?dir=b&limit=1'), { token: alice.accessToken });
    const fromLater = await t.request('GET', room(roomId, `/messages?dir=b&limit=2&from=${newest.body.start}`), {
      token: bob.accessToken,
    });
    expect(fromLater.body.chunk[0].content.membership).toBe('leave');
  });

  it('/state, /state/{type}/{key}, /members and /event answer as of the leave; /joined_members is 403', async () => {
    const bob = await t.register('bob-state');
    const roomId = await sharedRoom(bob, 'As it was', ['seen']);
    const seenId = await say(alice, roomId, 'also seen');
    await membership(bob, roomId, 'leave');
    expect((await setName(alice, roomId, 'Renamed')).status).toBe(200);
    const laterId = await say(alice, roomId, 'unseen');
    const get = (path: string) => t.request('GET', room(roomId, path), { token: bob.accessToken });

    expect((await get('/state/m.room.name/')).body).toEqual({ name: 'As it was' });
    const own = await get(`/state/m.room.member/${enc(bob.userId)}`);
    expect(own.body.membership).toBe('leave');
    const state = await get('/state');
    expect(state.status).toBe(200);
    expect(state.body.find((e: Ev) => e.type === 'm.room.name').content).toEqual({ name: 'As it was' });
    expect(state.body.filter((e: Ev) => e.type === 'm.room.name')).toHaveLength(1);
    const members = await get('/members');
    expect(Object.fromEntries(members.body.chunk.map((e: Ev) => [e.state_key, e.content.membership]))).toEqual({
      [alice.userId]: 'join',
      [bob.userId]: 'leave',
    });
    expect((await get(`/event/${enc(seenId)}`)).body.content.body).toBe('also seen');
    const later = await get(`/event/${enc(laterId)}`);
    expect(later.status).toBe(404);
    expect(later.body.errcode).toBe('M_NOT_FOUND');
    expect((await get('/state/m.room.topic/')).status).toBe(404);
    const joined = await get('/joined_members');
    expect(joined.status).toBe(403);
    expect(joined.body.errcode).toBe('M_FORBIDDEN');
  });

  it('a banned user, a forgotten room and a stranger get 403; rejoining makes the room readable again', async () => {
    const bob = await t.register('bob-denied');
    const carol = await t.register('carol-denied');
    const stranger = await t.register('stranger');
    const banned = await sharedRoom(bob, 'Ban', ['x']);
    await membership(alice, banned, 'ban', { user_id: bob.userId });
    const forgotten = await sharedRoom(carol, 'Forget', ['y']);
    await membership(carol, forgotten, 'leave');
    expect((await membership(carol, forgotten, 'forget')).status).toBe(200);
    const denied = [
      [bob, banned],
      [carol, forgotten],
      [stranger, forgotten],
    ] as const;
    for (const [who, roomId] of denied) {
      for (const path of ['/messages?dir=b', '/state', '/state/m.room.name/', '/members']) {
        const res = await t.request('GET', room(roomId, path), { token: who.accessToken });
        expect(res.status, `${who.userId} ${path}`).toBe(403);
        expect(res.body.errcode).toBe('M_FORBIDDEN');
      }
    }
    await t.join(carol.accessToken, forgotten);
    await membership(carol, forgotten, 'leave');
    const again = await t.request('GET', room(forgotten, '/messages?dir=b'), { token: carol.accessToken });
    expect(again.status).toBe(200);
    expect(bodies(again.body.chunk)).toEqual(['y']);
  });
});
