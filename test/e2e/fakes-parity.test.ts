// The loopback fakes checked against the real programs they stand for. A fake encodes assumptions;
// these tests send the same requests to the fake and to the real thing and compare what comes back,
// so a wrong assumption (a fake answering OpenID where Synapse does not, a Twirp shape LiveKit never
// writes) fails here instead of hiding behind green tests that use the fake.
// - test/fakes/fake-homeserver.ts against a real Synapse laid out the same way (federation with
//   OpenID userinfo on a TLS listener of its own, the client API on a plain one);
// - test/fakes/fake-sfu.ts against a real LiveKit server, in both Twirp encodings.
import {
  CreateRoomRequest,
  ListParticipantsRequest,
  ListParticipantsResponse,
  Room,
  RoomParticipantIdentity,
} from '@livekit/protocol';
import { AccessToken } from 'livekit-server-sdk';
import { readFileSync } from 'node:fs';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type FakeHomeserver, startFakeHomeserver } from '../fakes/fake-homeserver.js';
import { type FakeSfu, startFakeSfu } from '../fakes/fake-sfu.js';
import { ensureLiveKitBinary, type LiveKitServer, startLiveKit } from './support/livekit.js';
import { ensureSynapse, startSynapse, type SynapseServer } from './support/synapse.js';

const lkBin = await ensureLiveKitBinary();
const synapsePy = await ensureSynapse();
const skipped = (why: string | undefined) => (why ? ` (skipped: ${why})` : '');

/** Status and errcode of an answer: what callers of these APIs branch on. */
async function verdict(res: Response): Promise<[number, string | undefined]> {
  const text = await res.text();
  let errcode: string | undefined;
  try {
    errcode = (JSON.parse(text) as { errcode?: string }).errcode;
  } catch {
    errcode = undefined;
  }
  return [res.status, errcode];
}

describe.skipIf(!!synapsePy.skip)(`the homeserver fake against Synapse${skipped(synapsePy.skip)}`, () => {
  let synapse: SynapseServer;
  let fake: FakeHomeserver;
  let tls: { synapse: Agent; fake: Agent };
  /** A valid OpenID token and its user on each. */
  const openid = { synapse: { token: '', userId: '' }, fake: { token: 'fake-openid-token', userId: '' } };

  beforeAll(async () => {
    [synapse, fake] = await Promise.all([startSynapse(), startFakeHomeserver()]);
    tls = {
      synapse: new Agent({ connect: { ca: readFileSync(synapse.caFile) } }),
      fake: new Agent({ connect: { ca: readFileSync(fake.certFile) } }),
    };
    const alice = await synapse.registerUser('parity');
    const res = await fetch(`${synapse.baseUrl}/_matrix/client/v3/user/${encodeURIComponent(alice.userId)}/openid/request_token`, {
      method: 'POST',
      headers: { authorization: `Bearer ${alice.accessToken}`, 'content-type': 'application/json' },
      body: '{}',
    });
    openid.synapse = { token: ((await res.json()) as { access_token: string }).access_token, userId: alice.userId };
    openid.fake.userId = `@parity:${fake.serverName}`;
    fake.addOpenIdToken(openid.fake.token, openid.fake.userId);
  }, 120_000);
  afterAll(async () => {
    await Promise.all([synapse?.stop(), fake?.close(), tls?.synapse.close(), tls?.fake.close()]);
  }, 30_000);

  /** The same request to both; `at` picks the listener. */
  async function both(at: 'federation' | 'client', path: (which: 'synapse' | 'fake') => string, init: RequestInit = {}) {
    const base = {
      synapse: at === 'federation' ? synapse.federationUrl : synapse.baseUrl,
      fake: at === 'federation' ? fake.federationUrl : fake.url,
    };
    const one = async (which: 'synapse' | 'fake') =>
      verdict(await fetch(`${base[which]}${path(which)}`, { ...init, dispatcher: tls[which] } as RequestInit));
    return { synapse: await one('synapse'), fake: await one('fake') };
  }

  const userinfo = (token: (which: 'synapse' | 'fake') => string) => (which: 'synapse' | 'fake') =>
    `/_matrix/federation/v1/openid/userinfo?access_token=${encodeURIComponent(token(which))}`;

  it('serves the server name at its TLS federation listener, which answers OpenID userinfo', async () => {
    expect(synapse.serverName).toBe(`localhost:${synapse.federationPort}`);
    expect(fake.serverName).toBe(`127.0.0.1:${fake.federationPort}`);
    const ok = await both('federation', userinfo((which) => openid[which].token));
    expect(ok).toEqual({ synapse: [200, undefined], fake: [200, undefined] });
    const bad = await both('federation', userinfo(() => 'not-a-token'));
    expect(bad.fake).toEqual(bad.synapse);
  });

  it('does not answer OpenID userinfo on the client listener', async () => {
    const r = await both('client', userinfo((which) => openid[which].token));
    expect(r.synapse[0]).toBe(404);
    expect(r.fake).toEqual(r.synapse);
  });

  it('serves no .well-known at the federation listener, and no client API there', async () => {
    for (const path of ['/.well-known/matrix/client', '/.well-known/matrix/server']) {
      const r = await both('federation', () => path);
      expect([path, r.fake[0]]).toEqual([path, r.synapse[0]]);
    }
    const restart = await both('federation', () => '/_matrix/client/unstable/org.matrix.msc4140/delayed_events/x/restart', {
      method: 'POST',
      body: '{}',
    });
    expect(restart.synapse[0]).toBe(404);
    expect(restart.fake[0]).toBe(404);
  });
});

describe.skipIf(!!lkBin.skip)(`the SFU fake against LiveKit${skipped(lkBin.skip)}`, () => {
  const KEY = 'devkey';
  const SECRET = 'parity-secret-0123456789abcdef0123456789';
  let lk: LiveKitServer;
  let fake: FakeSfu;

  beforeAll(async () => {
    [lk, fake] = await Promise.all([
      startLiveKit({ apiKey: KEY, apiSecret: SECRET, netns: false }),
      startFakeSfu({ key: KEY, secret: SECRET }),
    ]);
  }, 180_000);
  afterAll(async () => {
    await Promise.all([lk?.stop(), fake?.close()]);
  }, 30_000);

  async function token(grant: { roomCreate?: boolean; roomAdmin?: boolean; room?: string }): Promise<string> {
    const at = new AccessToken(KEY, SECRET, { ttl: '5m' });
    at.addGrant(grant);
    return at.toJwt();
  }

  type Encoding = 'json' | 'protobuf';
  /** One Twirp call to both; the decoded body (JSON object, or the protobuf message) and the Twirp error code. */
  async function both<T>(
    method: string,
    encoding: Encoding,
    request: { toJsonString(): string; toBinary(): Uint8Array },
    jwt: string | undefined,
    decode: (bytes: Uint8Array) => T,
  ) {
    const one = async (base: string) => {
      const res = await fetch(`${base}/twirp/livekit.RoomService/${method}`, {
        method: 'POST',
        headers: {
          'content-type': encoding === 'json' ? 'application/json' : 'application/protobuf',
          ...(jwt ? { authorization: `Bearer ${jwt}` } : {}),
        },
        body: encoding === 'json' ? request.toJsonString() : Buffer.from(request.toBinary()),
      });
      const bytes = new Uint8Array(await res.arrayBuffer());
      const isJson = (res.headers.get('content-type') ?? '').includes('json');
      if (res.status !== 200) {
        return { status: res.status, code: (JSON.parse(Buffer.from(bytes).toString()) as { code?: string }).code };
      }
      return { status: 200, body: isJson ? (JSON.parse(Buffer.from(bytes).toString()) as unknown) : decode(bytes) };
    };
    return { livekit: await one(lk.httpUrl), fake: await one(fake.url) };
  }

  it.each(['json', 'protobuf'] as const)('CreateRoom (%s) answers the room by name', async (encoding) => {
    const name = `parity-${encoding}-${Date.now()}`;
    const r = await both('CreateRoom', encoding, new CreateRoomRequest({ name }), await token({ roomCreate: true }), (b) =>
      Room.fromBinary(b),
    );
    expect(r.livekit.status).toBe(200);
    expect(r.fake.status).toBe(200);
    const nameOf = (body: unknown) => (body as { name: string }).name;
    expect(nameOf(r.fake.body)).toBe(nameOf(r.livekit.body));
  });

  it.each(['json', 'protobuf'] as const)('GetParticipant (%s) of someone absent is a Twirp not_found', async (encoding) => {
    const room = `parity-absent-${encoding}`;
    await both('CreateRoom', 'json', new CreateRoomRequest({ name: room }), await token({ roomCreate: true }), (b) => b);
    const r = await both(
      'GetParticipant',
      encoding,
      new RoomParticipantIdentity({ room, identity: 'nobody' }),
      await token({ roomAdmin: true, room }),
      (b) => b,
    );
    expect(r.livekit).toEqual({ status: 404, code: 'not_found' });
    expect(r.fake).toEqual(r.livekit);
  });

  it.each(['json', 'protobuf'] as const)('ListParticipants (%s) of an empty room is an empty list', async (encoding) => {
    const room = `parity-empty-${encoding}`;
    await both('CreateRoom', 'json', new CreateRoomRequest({ name: room }), await token({ roomCreate: true }), (b) => b);
    const r = await both('ListParticipants', encoding, new ListParticipantsRequest({ room }), await token({ roomAdmin: true, room }), (b) =>
      ListParticipantsResponse.fromBinary(b).participants,
    );
    expect(r.livekit.status).toBe(200);
    // JSON: LiveKit writes the empty list out; protobuf: an empty message.
    expect(r.fake).toEqual(r.livekit);
  });

  it('refuses a call without a token, and one without the grant it needs', async () => {
    const room = 'parity-grants';
    const unauthenticated = await both('ListParticipants', 'json', new ListParticipantsRequest({ room }), undefined, (b) => b);
    expect(unauthenticated.livekit.status).toBe(401);
    expect(unauthenticated.fake).toEqual(unauthenticated.livekit);
    const noGrant = await both('CreateRoom', 'json', new CreateRoomRequest({ name: room }), await token({ roomAdmin: true, room }), (b) => b);
    expect(noGrant.livekit.status).toBe(401);
    expect(noGrant.fake).toEqual(noGrant.livekit);
    const otherRoom = await both('ListParticipants', 'json', new ListParticipantsRequest({ room }), await token({ roomAdmin: true, room: 'another' }), (b) => b);
    expect(otherRoom.fake).toEqual(otherRoom.livekit);
  });
});
