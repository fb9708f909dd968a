import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startWithUsers, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
let alice: Session;
let bob: Session;
let carol: Session;

beforeAll(async () => {
  ({ t, users: { alice, bob, carol } } = await startWithUsers({ users: ['alice', 'bob', 'carol'] }));
});
afterAll(async () => {
  await t?.close();
});

const room = (roomId: string, rest: string) => `/_matrix/client/v3/rooms/${enc(roomId)}${rest}`;

describe('createRoom', () => {
  it('creates the founding state with the preset and options', async () => {
    const roomId = await t.createRoom(alice.accessToken, {
      preset: 'public_chat',
      name: 'Lobby',
      topic: 'Hello',
      initial_state: [{ type: 'com.example.setting', content: { on: true } }],
    });
    expect(roomId).toMatch(/^![A-Za-z0-9_-]+:localhost$/);
    const state = await t.request('GET', room(roomId, '/state'), { token: alice.accessToken });
    expect(state.status).toBe(200);
    const types = state.body.map((e: { type: string }) => e.type);
    expect(types).toEqual(
      expect.arrayContaining([
        'm.room.create',
        'm.room.member',
        'm.room.power_levels',
        'm.room.join_rules',
        'm.room.history_visibility',
        'm.room.name',
        'm.room.topic',
        'com.example.setting',
      ]),
    );
    const rules = await t.request('GET', room(roomId, '/state/m.room.join_rules/'), { token: alice.accessToken });
    expect(rules.body).toEqual({ join_rule: 'public' });
    const create = await t.request('GET', room(roomId, '/state/m.room.create?format=event'), {
      token: alice.accessToken,
    });
    expect(create.body.content).toMatchObject({ creator: alice.userId, room_version: '10' });
    expect(create.body.event_id).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
  });

  it('refuses unknown room versions and bad initial state without creating anything', async () => {
    const before = t.hs.db.prepare('SELECT COUNT(*) AS n FROM rooms').get() as { n: number };
    const bad = await t.request('POST', '/_matrix/client/v3/createRoom', {
      token: alice.accessToken,
      body: { room_version: '999' },
    });
    expect(bad.status).toBe(400);
    const member = await t.request('POST', '/_matrix/client/v3/createRoom', {
      token: alice.accessToken,
      body: { initial_state: [{ type: 'm.room.member', state_key: bob.userId, content: { membership: 'join' } }] },
    });
    expect(member.status).toBe(400);
    const after = t.hs.db.prepare('SELECT COUNT(*) AS n FROM rooms').get() as { n: number };
    expect(after.n).toBe(before.n);
  });
});

describe('membership', () => {
  it('lets anyone join a public room, and only invitees join a private one', async () => {
    const pub = await t.createRoom(alice.accessToken, { preset: 'public_chat' });
    const joined = await t.request('POST', `/_matrix/client/v3/join/${enc(pub)}`, { token: bob.accessToken, body: {} });
    expect(joined.status).toBe(200);
    expect(joined.body).toEqual({ room_id: pub });

    const priv = await t.createRoom(alice.accessToken, { preset: 'private_chat' });
    const refused = await t.request('POST', room(priv, '/join'), { token: bob.accessToken, body: {} });
    expect(refused.status).toBe(403);
    expect(refused.body.errcode).toBe('M_FORBIDDEN');
    const invite = await t.request('POST', room(priv, '/invite'), {
      token: alice.accessToken,
      body: { user_id: bob.userId },
    });
    expect(invite.status).toBe(200);
    expect((await t.request('POST', room(priv, '/join'), { token: bob.accessToken })).status).toBe(200);
    const members = await t.request('GET', room(priv, '/members'), { token: bob.accessToken });
    const joinedIds = members.body.chunk
      .filter((e: { content: { membership: string } }) => e.content.membership === 'join')
      .map((e: { state_key: string }) => e.state_key)
      .sort();
    expect(joinedIds).toEqual([alice.userId, bob.userId].sort());

    expect((await t.request('POST', room(priv, '/leave'), { token: bob.accessToken })).status).toBe(200);
    // A departed member still reads the room as it was when they left (Synapse), until they forget it.
    const afterLeave = await t.request('GET', room(priv, '/state'), { token: bob.accessToken });
    expect(afterLeave.status).toBe(200);
    expect(afterLeave.body.find((e: { state_key?: string }) => e.state_key === bob.userId).content.membership).toBe(
      'leave',
    );
    expect((await t.request('POST', room(priv, '/forget'), { token: bob.accessToken })).status).toBe(200);
    expect((await t.request('GET', room(priv, '/state'), { token: bob.accessToken })).status).toBe(403);
    const joinedRooms = await t.request('GET', '/_matrix/client/v3/joined_rooms', { token: bob.accessToken });
    expect(joinedRooms.body.joined_rooms).toContain(pub);
    expect(joinedRooms.body.joined_rooms).not.toContain(priv);
  });

  it('enforces kick and ban levels', async () => {
    const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat' });
    await t.request('POST', room(roomId, '/join'), { token: bob.accessToken });
    await t.request('POST', room(roomId, '/join'), { token: carol.accessToken });
    const bobKicks = await t.request('POST', room(roomId, '/kick'), {
      token: bob.accessToken,
      body: { user_id: carol.userId },
    });
    expect(bobKicks.status).toBe(403);
    const aliceBans = await t.request('POST', room(roomId, '/ban'), {
      token: alice.accessToken,
      body: { user_id: carol.userId, reason: 'spam' },
    });
    expect(aliceBans.status).toBe(200);
    const carolRejoins = await t.request('POST', room(roomId, '/join'), { token: carol.accessToken });
    expect(carolRejoins.status).toBe(403);
  });

  it('answers 404 for unknown rooms and aliases', async () => {
    const unknown = await t.request('POST', `/_matrix/client/v3/join/${enc('!nope:localhost')}`, {
      token: bob.accessToken,
    });
    expect(unknown.status).toBe(404);
    expect(unknown.body.errcode).toBe('M_NOT_FOUND');
    const alias = await t.request('POST', `/_matrix/client/v3/join/${enc('#nope:localhost')}`, {
      token: bob.accessToken,
    });
    expect(alias.status).toBe(404);
  });
});

describe('power levels', () => {
  it('refuses a state change below state_default and leaves state unchanged', async () => {
    const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat', name: 'Original' });
    await t.request('POST', room(roomId, '/join'), { token: bob.accessToken });
    const rename = await t.request('PUT', room(roomId, '/state/m.room.name/'), {
      token: bob.accessToken,
      body: { name: 'Hijacked' },
    });
    expect(rename.status).toBe(403);
    expect(rename.body.errcode).toBe('M_FORBIDDEN');
    const custom = await t.request('PUT', room(roomId, '/state/com.example.thing/'), {
      token: bob.accessToken,
      body: { x: 1 },
    });
    expect(custom.status).toBe(403);
    const name = await t.request('GET', room(roomId, '/state/m.room.name'), { token: bob.accessToken });
    expect(name.body).toEqual({ name: 'Original' });
    // Messages need only events_default (0).
    const msg = await t.request('PUT', room(roomId, '/send/m.room.message/t1'), {
      token: bob.accessToken,
      body: { msgtype: 'm.text', body: 'hi' },
    });
    expect(msg.status).toBe(200);
  });

  it('honours events and users levels from power_level_content_override', async () => {
    const roomId = await t.createRoom(alice.accessToken, {
      preset: 'public_chat',
      power_level_content_override: {
        events: { 'com.example.test': 0, 'm.room.message': 20 },
        users: { [alice.userId]: 100, [carol.userId]: 20 },
      },
    });
    await t.request('POST', room(roomId, '/join'), { token: bob.accessToken });
    await t.request('POST', room(roomId, '/join'), { token: carol.accessToken });
    const bobState = await t.request('PUT', room(roomId, '/state/com.example.test/'), {
      token: bob.accessToken,
      body: { ok: true },
    });
    expect(bobState.status).toBe(200);
    const bobMsg = await t.request('POST', room(roomId, '/send/m.room.message'), {
      token: bob.accessToken,
      body: { msgtype: 'm.text', body: 'x' },
    });
    expect(bobMsg.status).toBe(403);
    const carolMsg = await t.request('POST', room(roomId, '/send/m.room.message'), {
      token: carol.accessToken,
      body: { msgtype: 'm.text', body: 'x' },
    });
    expect(carolMsg.status).toBe(200);
  });

  it('stops users from raising themselves or editing peers at their level', async () => {
    const roomId = await t.createRoom(alice.accessToken, {
      preset: 'public_chat',
      power_level_content_override: {
        users: { [alice.userId]: 100, [bob.userId]: 50, [carol.userId]: 50 },
        events: { 'm.room.power_levels': 50 },
      },
    });
    await t.request('POST', room(roomId, '/join'), { token: bob.accessToken });
    const pl = await t.request('GET', room(roomId, '/state/m.room.power_levels/'), { token: bob.accessToken });
    const raise = await t.request('PUT', room(roomId, '/state/m.room.power_levels/'), {
      token: bob.accessToken,
      body: { ...pl.body, users: { ...pl.body.users, [bob.userId]: 100 } },
    });
    expect(raise.status).toBe(403);
    const demotePeer = await t.request('PUT', room(roomId, '/state/m.room.power_levels/'), {
      token: bob.accessToken,
      body: { ...pl.body, users: { ...pl.body.users, [carol.userId]: 0 } },
    });
    expect(demotePeer.status).toBe(403);
    const notInt = await t.request('PUT', room(roomId, '/state/m.room.power_levels/'), {
      token: alice.accessToken,
      body: { ...pl.body, users_default: '5' },
    });
    expect(notInt.status).toBe(400);
    const fine = await t.request('PUT', room(roomId, '/state/m.room.power_levels/'), {
      token: bob.accessToken,
      body: { ...pl.body, users_default: 10 },
    });
    expect(fine.status).toBe(200);
  });
});

describe('events', () => {
  it('fetches a single event and hides rooms from non-members', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    const sent = await t.request('POST', room(roomId, '/send/m.room.message'), {
      token: alice.accessToken,
      body: { msgtype: 'm.text', body: 'héllo ✓' },
    });
    const ev = await t.request('GET', room(roomId, `/event/${enc(sent.body.event_id)}`), {
      token: alice.accessToken,
    });
    expect(ev.status).toBe(200);
    expect(ev.body).toMatchObject({
      event_id: sent.body.event_id,
      room_id: roomId,
      sender: alice.userId,
      type: 'm.room.message',
      content: { msgtype: 'm.text', body: 'héllo ✓' },
    });
    expect(ev.body.unsigned).not.toHaveProperty('org.matrix.msc4140.delay_id');
    const foreign = await t.request('GET', room(roomId, `/event/${enc(sent.body.event_id)}`), {
      token: bob.accessToken,
    });
    expect(foreign.status).toBe(403);
    const missing = await t.request('GET', room(roomId, `/event/${enc('$nope')}`), { token: alice.accessToken });
    expect(missing.status).toBe(404);
  });

  it('refuses content over 64 KiB with 413 and stores nothing', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    const count = () => (t.hs.db.prepare('SELECT COUNT(*) AS n FROM events').get() as { n: number }).n;
    const before = count();
    const big = await t.request('POST', room(roomId, '/send/m.room.message'), {
      token: alice.accessToken,
      body: { body: 'x'.repeat(70_000) },
    });
    expect(big.status).toBe(413);
    expect(big.body.errcode).toBe('M_TOO_LARGE');
    expect(count()).toBe(before);
  });

  it('allows an empty state key and state keys with slashes', async () => {
    const roomId = await t.createRoom(alice.accessToken);
    const put = await t.request('PUT', room(roomId, `/state/com.example.k/${enc('a/b')}`), {
      token: alice.accessToken,
      body: { v: 1 },
    });
    expect(put.status).toBe(200);
    const get = await t.request('GET', room(roomId, `/state/com.example.k/${enc('a/b')}`), {
      token: alice.accessToken,
    });
    expect(get.body).toEqual({ v: 1 });
    const none = await t.request('GET', room(roomId, '/state/com.example.k/'), { token: alice.accessToken });
    expect(none.status).toBe(404);
    expect(none.body.errcode).toBe('M_NOT_FOUND');
  });
});
