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
    // The fake answers 403 unless the token's grant names the request's room.
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

  it('reuses one signed token per room for most of its life', async () => {
    const seen: Array<{ auth: string; body: string }> = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += String(c)));
      req.on('end', () => {
        seen.push({ auth: req.headers.authorization ?? '', body });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"participants":[]}');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
    let now = 1_000_000;
    const r = rooms(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, () => now);
    await r.listParticipants('room-a');
    await r.listParticipants('room-a');
    await r.listParticipants('room-b');
    now += 8 * 60_000 - 1;
    await r.listParticipants('room-a');
    expect(seen.map((s) => s.body)).toEqual(['{"room":"room-a"}', '{"room":"room-a"}', '{"room":"room-b"}', '{"room":"room-a"}']);
    const [a1, a2, b, a3] = seen.map((s) => s.auth);
    expect([a2, a3]).toEqual([a1, a1]);
    expect(b).not.toBe(a1);
    const grant = await new TokenVerifier(creds.key, creds.secret).verify(a1!.replace(/^Bearer /, ''));
    expect(grant.video).toMatchObject({ roomAdmin: true, room: 'room-a' });
  });
});
