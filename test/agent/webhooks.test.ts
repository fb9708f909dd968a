import { createHash, createHmac } from 'node:crypto';

import { WebhookEvent, WebhookReceiver } from 'livekit-server-sdk';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

import { readWebhook, RecentIds, toParticipantSignal, WebhookVerifier } from '../../src/livekit/webhooks.js';
import { type FakeSfu, startFakeSfu } from '../fakes/fake-sfu.js';

const creds = { key: 'testkey', secret: 'testsecret-long-enough-for-hs256' };
let sfu: FakeSfu;
const verifier = new WebhookVerifier(creds);

beforeAll(async () => {
  sfu = await startFakeSfu(creds);
});
afterAll(() => sfu.close());

describe('webhook verification', () => {
  it('accepts a genuinely signed webhook and decodes the participant', async () => {
    const { body, headers } = await sfu.signWebhook({
      event: 'participant_left',
      room: 'ROOM',
      identity: 'IDENT',
      sid: 'PA_1',
      disconnectReason: 'CLIENT_INITIATED',
      createdAtSeconds: 1_700_000_100,
    });
    const hook = await verifier.verify(body, headers.authorization);
    expect(hook.signal).toMatchObject({
      kind: 'left',
      livekitRoom: 'ROOM',
      session: { identity: 'IDENT', sid: 'PA_1' },
      disconnectReason: 'CLIENT_INITIATED',
      createdAtMs: 1_700_000_100_000,
    });
  });

  it.each([
    ['a tampered body', { tamper: true }],
    ['a wrong secret', { secret: 'another-secret-of-enough-length' }],
    ['a Bearer prefix', { bearer: true }],
    ['no Authorization header', { unsigned: true }],
  ])('rejects %s', async (_name, opts) => {
    const { body, headers } = await sfu.signWebhook({ event: 'participant_joined', room: 'R', identity: 'I', sid: 'PA_2' }, opts);
    await expect(verifier.verify(body, headers.authorization)).rejects.toThrow();
  });
});

describe('webhook verification without the SDK round trip', () => {
  afterEach(() => vi.restoreAllMocks());
  const sdkCalls = () => vi.spyOn(WebhookReceiver.prototype, 'receive');

  /** A compact JWS like LiveKit's, with a chosen algorithm and claims (over the defaults). */
  function token(body: string, opts: { alg?: 'HS256' | 'HS512'; claims?: Record<string, unknown>; secret?: string } = {}) {
    const now = Math.floor(Date.now() / 1000);
    const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const alg = opts.alg ?? 'HS256';
    const claims = { iss: creds.key, nbf: now, exp: now + 300, sha256: createHash('sha256').update(body).digest('base64'), ...opts.claims };
    const signed = `${part({ alg, typ: 'JWT' })}.${part(claims)}`;
    const mac = createHmac(alg === 'HS256' ? 'sha256' : 'sha512', opts.secret ?? creds.secret).update(signed).digest('base64url');
    return `${signed}.${mac}`;
  }

  it('accepts what LiveKit signs without asking the SDK, with the same decoded event', async () => {
    const { body, headers } = await sfu.signWebhook({ event: 'participant_joined', room: 'R', identity: 'I', sid: 'PA_9' });
    const spy = sdkCalls();
    const decode = vi.spyOn(WebhookEvent, 'fromJson');
    const hook = await verifier.verify(body, headers.authorization);
    expect(spy).not.toHaveBeenCalled();
    expect(decode).not.toHaveBeenCalled();
    const bySdk = await new WebhookReceiver(creds.key, creds.secret).receive(body, headers.authorization);
    expect(hook).toEqual({ event: bySdk.event, id: bySdk.id, signal: toParticipantSignal(bySdk) });
    expect(hook.signal?.session.joinedAtMs).toBeGreaterThan(0);
  });

  it('leaves bodies the direct read is unsure of to the SDK decoder, whose verdict stands', async () => {
    const participant = { identity: 'I', sid: 'PA_1', disconnectReason: 'SIGNAL_CLOSE' };
    const left = (p: Record<string, unknown>) => JSON.stringify({ event: 'participant_left', id: 'EV', room: { name: 'R' }, participant: p });
    const verify = (body: string) => verifier.verify(body, token(body));
    const decode = vi.spyOn(WebhookEvent, 'fromJson');
    // A reason name newer than this code: the SDK ignores it (the zero value).
    await expect(verify(left({ ...participant, disconnectReason: 'SOME_FUTURE_REASON' }))).resolves.toMatchObject({
      signal: { kind: 'left', disconnectReason: 'UNKNOWN_REASON' },
    });
    expect(decode).toHaveBeenCalledTimes(1);
    // Wrong types and lone surrogates: the SDK rejects them, so the webhook is rejected.
    for (const body of [
      left({ ...participant, identity: 5 }),
      left({ ...participant, joinedAtMs: '12x' }),
      left({ ...participant, sid: 'PA_\uD800' }),
      JSON.stringify({ event: 'participant_left', room: 'R', participant }),
      JSON.stringify({ event: 'participant_left', createdAt: 1.5, room: { name: 'R' }, participant }),
    ]) {
      await expect(verify(body)).rejects.toThrow();
    }
    expect(decode).toHaveBeenCalledTimes(6);
  });

  it('leaves every other token to the SDK: it accepts an HS512 one, and its verdicts stand', async () => {
    const body = JSON.stringify({ event: 'room_started', room: { name: 'R' } });
    const spy = sdkCalls();
    await expect(verifier.verify(body, token(body, { alg: 'HS512' }))).resolves.toMatchObject({ event: 'room_started' });
    expect(spy).toHaveBeenCalledTimes(1);
    const past = Math.floor(Date.now() / 1000) - 60;
    for (const bad of [
      token(body, { claims: { exp: past } }),
      token(body, { claims: { iss: 'another-key' } }),
      token(body, { claims: { nbf: past + 3600 } }),
      token(body, { claims: { iat: 'yesterday' } }),
      token(body, { secret: 'a-different-secret-of-enough-length' }),
      token(`${body} `),
    ]) {
      await expect(verifier.verify(body, bad)).rejects.toThrow();
    }
    expect(spy).toHaveBeenCalledTimes(7);
  });
});

describe('webhook decoding', () => {
  const decode = async (init: Parameters<FakeSfu['signWebhook']>[0]) => {
    const { body, headers } = await sfu.signWebhook(init);
    return (await verifier.verify(body, headers.authorization)).signal;
  };

  it('defaults an absent disconnect reason (protojson zero value) to UNKNOWN_REASON', async () => {
    expect((await decode({ event: 'participant_left', room: 'R', identity: 'I', sid: 'PA_3' }))?.disconnectReason).toBe(
      'UNKNOWN_REASON',
    );
  });

  it('maps participant_connection_aborted to aborted', async () => {
    expect(
      await decode({ event: 'participant_connection_aborted', room: 'R', identity: 'I', sid: 'PA_4', disconnectReason: 'SIGNAL_CLOSE' }),
    ).toMatchObject({ kind: 'aborted', disconnectReason: 'SIGNAL_CLOSE' });
  });

  it('joined carries no reason', async () => {
    const s = await decode({ event: 'participant_joined', room: 'R', identity: 'I', sid: 'PA_5' });
    expect(s?.kind).toBe('joined');
    expect(s?.disconnectReason).toBeUndefined();
    expect(s?.session.joinedAtMs).toBeGreaterThan(0);
  });

  it('ignores room events', async () => {
    expect(await decode({ event: 'room_started', room: 'R' })).toBeUndefined();
  });

  it('reads what the SDK decodes, in either field spelling, or leaves it to the SDK', () => {
    const bodies: unknown[] = [
      { event: 'participant_left', id: 'EV_1', createdAt: '1700000000', room: { name: 'R', sid: 'RM' }, participant: { identity: 'I', sid: 'PA', joinedAtMs: '1700000000123', disconnectReason: 'DUPLICATE_IDENTITY', state: 'DISCONNECTED' } },
      { event: 'participant_connection_aborted', created_at: 1_700_000_000, room: { name: 'R' }, participant: { identity: 'I', sid: 'PA', joined_at: 1_699_999_999, disconnect_reason: 14 } },
      { event: 'participant_joined', room: { name: 'R' }, participant: { identity: 'I', joined_at_ms: '0', joined_at: '1699999999' }, unknownField: [1] },
      { event: 'participant_left', room: { name: 'R' }, participant: { identity: 'I', sid: 'PA', disconnectReason: 42 } },
      { event: 'participant_left', createdAt: '-5', room: { name: '' }, participant: { identity: 'I' } },
      { event: 'participant_left', room: { name: 'R' }, participant: { identity: '' } },
      { event: 'participant_left', room: { name: 'R' } },
      { event: 'track_published', id: 'EV_2', room: { name: 'R' }, participant: { identity: 'I' } },
      {},
      // Left to the SDK:
      { event: 'participant_left', createdAt: '1700000000', created_at: '1700000001', room: { name: 'R' }, participant: { identity: 'I' } },
      { event: 'participant_left', createdAt: '12345678901234567', room: { name: 'R' }, participant: { identity: 'I' } },
      { event: 'participant_left', room: { name: 'R' }, participant: { identity: 'I', joinedAtMs: null, joined_at_ms: '1700000000123' } },
      { event: 'participant_left', room: null, participant: { identity: 'I' } },
      { event: 'participant_left', room: { name: 'R' }, participant: { identity: 'I', disconnectReason: 'NOT_A_REASON' } },
    ];
    let read = 0;
    for (const json of bodies) {
      const bySdk = WebhookEvent.fromJson(json as never, { ignoreUnknownFields: true });
      const direct = readWebhook(json);
      if (direct === undefined) continue;
      read++;
      expect(direct).toEqual({ event: bySdk.event, id: bySdk.id, signal: toParticipantSignal(bySdk) });
    }
    expect(read).toBe(9);
  });
});

describe('RecentIds', () => {
  it('reports repeats within the TTL only', () => {
    let now = 0;
    const ids = new RecentIds(1000, 10, () => now);
    expect(ids.firstSighting('a')).toBe(true);
    expect(ids.firstSighting('a')).toBe(false);
    now = 1001;
    expect(ids.firstSighting('a')).toBe(true);
  });

  it('stays within its capacity, dropping the oldest', () => {
    const ids = new RecentIds(60_000, 3, () => 0);
    for (const id of ['a', 'b', 'c', 'd']) ids.firstSighting(id);
    expect(ids.size).toBe(3);
    expect(ids.firstSighting('a')).toBe(true);
    expect(ids.firstSighting('d')).toBe(false);
  });
});
