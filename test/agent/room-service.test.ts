import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

import { TokenVerifier } from 'livekit-server-sdk';
import { afterEach, describe, expect, it } from 'vitest';

import { LiveKitRooms } from '../../src/livekit/room-service.js';
import { startFakeSfu, type FakeSfu } from '../fakes/fake-sfu.js';

const creds = { key: 'testkey', secret: 'test-secret-test-secret-test-secret-0123' };
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function sfu(): Promise<FakeSfu> {
  const s = await startFakeSfu(creds);
  cleanups.push(() => s.close());
  return s;
}

function rooms(url: string, now?: () => number): LiveKitRooms {
  const r = new LiveKitRooms({ url, ...creds, timeoutSeconds: 2, ...(now ? { now } : {}) });
  cleanups.push(() => r.close());
  return r;
}

describe('LiveKitRooms.listParticipants', () => {
  it('lists the sessions with a roomAdmin grant for that room; an unknown room is empty', async () => {
    const s = await sfu();
    s.join('room-a', { identity: 'alice', sid: 'PA_1', joinedAtMs: 1_700_000_000_123 });
    const r = rooms(s.wsUrl);
    expect(await r.listParticipants('room-a')).toEqual([
      { identity: 'alice', sid: 'PA_1', joinedAtMs: 1_700_000_000_123 },
    ]);
    expect(await r.listParticipants('room-b')).toEqual([]);
    // The fake (like LiveKit) answers 401 unless the token's grant names the request's room.
    expect(s.calls.map((c) => [c.method, c.room, c.status])).toEqual([
      ['ListParticipants', 'room-a', 200],
      ['ListParticipants', 'room-b', 200],
    ]);
  });

  it('throws on failures instead of reporting an empty room', async () => {
    const s = await sfu();
    s.setFailing(true);
    await expect(rooms(s.url).listParticipants('room-a')).rejects.toMatchObject({ status: 500, code: 'internal' });
    const wrong = new LiveKitRooms({ url: s.url, key: creds.key, secret: 'another-secret-another-secret-0123456' });
    cleanups.push(() => wrong.close());
    await expect(wrong.listParticipants('room-a')).rejects.toMatchObject({ status: 401 });
  });

  it('signs each call a roomAdmin token for its room that LiveKit accepts, from the clock', async () => {
    const seen: Array<{ auth: string; body: string }> = [];
    const port = await answering(seen, '{"participants":[]}');
    const now = Date.now() - 60_000;
    const r = rooms(`http://127.0.0.1:${port}`, () => now);
    await r.listParticipants('room-a');
    await r.listParticipants('room-b');
    expect(seen.map((s) => s.body)).toEqual(['{"room":"room-a"}', '{"room":"room-b"}']);
    const verifier = new TokenVerifier(creds.key, creds.secret);
    const [a, b] = await Promise.all(seen.map((s) => verifier.verify(s.auth.replace(/^Bearer /, ''))));
    expect(a).toMatchObject({ iss: creds.key, nbf: Math.floor(now / 1000), exp: Math.floor(now / 1000) + 600 });
    expect(a!.video).toEqual({ roomAdmin: true, room: 'room-a' });
    expect(b!.video).toEqual({ roomAdmin: true, room: 'room-b' });
  });

  it('reads either JSON field spelling, 64-bit times as strings, and seconds from older servers', async () => {
    const port = await answering(
      [],
      JSON.stringify({
        participants: [
          { identity: 'a', sid: 'PA_a', joinedAtMs: '1700000000123', joinedAt: '1700000000', tracks: [{ sid: 'TR' }] },
          { identity: 'b', sid: 'PA_b', joined_at_ms: '1700000000456', state: 'ACTIVE' },
          { identity: 'c', sid: 'PA_c', joined_at: 1_700_000_001 },
          { identity: 'd', sid: 'PA_d', joinedAtMs: '0' },
        ],
      }),
    );
    expect(await rooms(`http://127.0.0.1:${port}`).listParticipants('room-a')).toEqual([
      { identity: 'a', sid: 'PA_a', joinedAtMs: 1_700_000_000_123 },
      { identity: 'b', sid: 'PA_b', joinedAtMs: 1_700_000_000_456 },
      { identity: 'c', sid: 'PA_c', joinedAtMs: 1_700_000_001_000 },
      { identity: 'd', sid: 'PA_d' },
    ]);
  });

  it('fails a call the SFU never answers after the timeout', async () => {
    const server = createServer(() => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
    server.on('connection', (socket) => cleanups.push(async () => void socket.destroy()));
    const r = new LiveKitRooms({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, ...creds, timeoutSeconds: 0.2 });
    cleanups.push(() => r.close());
    await expect(r.listParticipants('room-a')).rejects.toThrow(/timeout/i);
  });

  it('fails on a garbled answer instead of reporting an empty room', async () => {
    for (const body of ['{"participants":[{"sid":"PA_1"}]}', 'not json']) {
      const port = await answering([], body);
      await expect(rooms(`http://127.0.0.1:${port}`).listParticipants('room-a')).rejects.toThrow();
    }
  });
});

/** A Twirp endpoint that records each request and answers 200 with `answer`. */
async function answering(seen: Array<{ auth: string; body: string }>, answer: string): Promise<number> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += String(c)));
    req.on('end', () => {
      seen.push({ auth: req.headers.authorization ?? '', body });
      res.writeHead(200, { 'content-type': 'application/json' }).end(answer);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}
