import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startTestHomeserver, startWithRoom, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
let alice: Session;
let bob: Session;
let roomId: string;

beforeAll(async () => {
  ({ t, roomId, users: { alice, bob } } = await startWithRoom({
    users: ['alice', 'bob'],
    room: { preset: 'public_chat' },
    members: ['bob'],
  }));
});
afterAll(async () => {
  await t?.close();
});

const send = (txn: string) => `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/${txn}`;
const eventCount = () => (t.hs.db.prepare('SELECT COUNT(*) AS n FROM events').get() as { n: number }).n;

describe('transaction idempotency', () => {
  it('returns the same event id for a repeated PUT, even one without a body', async () => {
    const first = await t.request('PUT', send('txn-1'), { token: alice.accessToken, body: { body: 'once' } });
    expect(first.status).toBe(200);
    const count = eventCount();
    const again = await t.request('PUT', send('txn-1'), { token: alice.accessToken, body: { body: 'twice' } });
    const bodiless = await t.request('PUT', send('txn-1'), { token: alice.accessToken });
    const withQuery = await t.request('PUT', `${send('txn-1')}?foo=bar`, { token: alice.accessToken });
    expect(again.body).toEqual(first.body);
    expect(bodiless.body).toEqual(first.body);
    expect(withQuery.body).toEqual(first.body);
    expect(eventCount()).toBe(count);
  });

  it('runs concurrent duplicates once', async () => {
    const count = eventCount();
    const results = await Promise.all(
      Array.from({ length: 5 }, () => t.request('PUT', send('txn-par'), { token: alice.accessToken, body: { n: 1 } })),
    );
    expect(new Set(results.map((r) => r.body.event_id)).size).toBe(1);
    expect(eventCount()).toBe(count + 1);
  });

  it('keys transactions per requester and per path', async () => {
    const a = await t.request('PUT', send('shared'), { token: alice.accessToken, body: { who: 'a' } });
    const b = await t.request('PUT', send('shared'), { token: bob.accessToken, body: { who: 'b' } });
    const c = await t.request('PUT', send('other'), { token: alice.accessToken, body: { who: 'a' } });
    expect(new Set([a.body.event_id, b.body.event_id, c.body.event_id]).size).toBe(3);
  });

  it('does not remember failures', async () => {
    const bad = await t.request('PUT', send('txn-fail'), { token: alice.accessToken, rawBody: '{nope' });
    expect(bad.status).toBe(400);
    expect(bad.body.errcode).toBe('M_NOT_JSON');
    const good = await t.request('PUT', send('txn-fail'), { token: alice.accessToken, body: { ok: 1 } });
    expect(good.status).toBe(200);
    expect(good.body.event_id).toMatch(/^\$/);
  });

  it('survives a restart', async () => {
    const dir = await startTestHomeserver();
    const s = await dir.register('zed');
    const r = await dir.createRoom(s.accessToken);
    const path = `/_matrix/client/v3/rooms/${enc(r)}/send/m.room.message/persist`;
    const first = await dir.request('PUT', path, { token: s.accessToken, body: { x: 1 } });
    await dir.hs.close();
    const again = await startTestHomeserver({}, { dataDir: dir.dataDir });
    try {
      const repeat = await again.request('PUT', path, { token: s.accessToken });
      expect(repeat.body).toEqual(first.body);
    } finally {
      await again.close();
      await dir.close();
    }
  });
});

describe('delayed scheduling through /send and /state', () => {
  it('returns a delay_id and the same one for a body-less repeat', async () => {
    const path = `${send('delayed-1')}?org.matrix.msc4140.delay=60000`;
    const first = await t.request('PUT', path, { token: alice.accessToken, body: { body: 'later' } });
    expect(first.status).toBe(200);
    expect(Object.keys(first.body)).toEqual(['delay_id']);
    const repeat = await t.request('PUT', path, { token: alice.accessToken });
    expect(repeat.body).toEqual(first.body);
  });

  it('schedules state with an empty state key and POST sends', async () => {
    const state = await t.request(
      'PUT',
      `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.s/?org.matrix.msc4140.delay=0`,
      { token: alice.accessToken, body: { v: 1 } },
    );
    expect(state.status).toBe(200);
    expect(typeof state.body.delay_id).toBe('string');
    const post = await t.request(
      'POST',
      `/_matrix/client/r0/rooms/${enc(roomId)}/send/m.room.message?org.matrix.msc4140.delay=5000`,
      { token: alice.accessToken, body: { body: 'p' } },
    );
    expect(post.status).toBe(200);
    expect(typeof post.body.delay_id).toBe('string');
  });

  it('refuses malformed delays with M_INVALID_PARAM', async () => {
    for (const bad of ['-1', 'abc', '1.5', '', '1e3']) {
      const res = await t.request('PUT', `${send(`bad-${bad}`)}?org.matrix.msc4140.delay=${bad}`, {
        token: alice.accessToken,
        body: {},
      });
      expect(res.status, bad).toBe(400);
      expect(res.body.errcode, bad).toBe('M_INVALID_PARAM');
    }
  });

  it('shows the delay id in unsigned only to the sender once the event is sent', async () => {
    const scheduled = await t.request(
      'PUT',
      `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.visible/k?org.matrix.msc4140.delay=0`,
      { token: alice.accessToken, body: { v: 2 } },
    );
    const delayId = scheduled.body.delay_id as string;
    const get = (token: string) =>
      t.request('GET', `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.visible/k?format=event`, { token });
    const deadline = Date.now() + 5000;
    let ev = await get(alice.accessToken);
    while (ev.status !== 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      ev = await get(alice.accessToken);
    }
    expect(ev.status).toBe(200);
    expect(ev.body.unsigned['org.matrix.msc4140.delay_id']).toBe(delayId);
    const forBob = await get(bob.accessToken);
    expect(forBob.body.unsigned).not.toHaveProperty('org.matrix.msc4140.delay_id');
  });
});
