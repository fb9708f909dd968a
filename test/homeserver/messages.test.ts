import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startWithRoom, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
let alice: Session;
let roomId: string;

beforeAll(async () => {
  ({ t, roomId, users: { alice } } = await startWithRoom({ users: ['alice'] }));
  for (let i = 1; i <= 25; i++) {
    await t.request('PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/send/com.example.count/t${i}`, {
      token: alice.accessToken,
      body: { count: i },
    });
  }
});
afterAll(async () => {
  await t?.close();
});

const messages = (query: string) =>
  t.request('GET', `/_matrix/client/v3/rooms/${enc(roomId)}/messages?${query}`, { token: alice.accessToken });
const counts = (chunk: Array<{ type: string; content: { count?: number } }>) =>
  chunk.filter((e) => e.type === 'com.example.count').map((e) => e.content.count);

describe('/messages', () => {
  it('pages backwards from the newest event until the start', async () => {
    const seen: number[] = [];
    let from: string | undefined;
    for (let page = 0; page < 10; page++) {
      const res = await messages(`dir=b&limit=10${from ? `&from=${from}` : ''}`);
      expect(res.status).toBe(200);
      seen.push(...(counts(res.body.chunk) as number[]));
      if (res.body.end === undefined) break;
      from = res.body.end;
    }
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => 25 - i));
  });

  it('pages forwards from the start in order', async () => {
    const seen: number[] = [];
    let from = 's0';
    for (let page = 0; page < 10; page++) {
      const res = await messages(`dir=f&limit=7&from=${from}`);
      seen.push(...(counts(res.body.chunk) as number[]));
      if (res.body.end === undefined) break;
      from = res.body.end;
    }
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
  });

  it('continues backwards from a forward page and honours `to`', async () => {
    const fwd = await messages('dir=f&limit=3&from=s0');
    expect(fwd.body.chunk).toHaveLength(3);
    const back = await messages(`dir=b&limit=100&from=${fwd.body.end}`);
    expect(back.body.chunk.map((e: { event_id: string }) => e.event_id)).toEqual(
      [...fwd.body.chunk].reverse().map((e: { event_id: string }) => e.event_id),
    );
    const newest = await messages('dir=b&limit=1');
    const bounded = await messages(`dir=f&from=s0&to=${fwd.body.end}&limit=100`);
    expect(bounded.body.chunk).toHaveLength(3);
    expect(newest.body.chunk[0].content.count).toBe(25);
  });

  it('accepts a filter and refuses bad parameters', async () => {
    const filtered = await messages(`dir=b&limit=2&filter=${enc('{"lazy_load_members":true}')}`);
    expect(filtered.status).toBe(200);
    for (const q of ['dir=x', 'limit=-1', 'from=garbage', 'limit=ten']) {
      const res = await messages(q);
      expect(res.status, q).toBe(400);
      expect(res.body.errcode, q).toBe('M_INVALID_PARAM');
    }
  });
});
