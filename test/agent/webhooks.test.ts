import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RecentIds, toParticipantSignal, WebhookVerifier } from '../../src/livekit/webhooks.js';
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
    const event = await verifier.verify(body, headers.authorization);
    expect(toParticipantSignal(event)).toMatchObject({
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

describe('webhook decoding', () => {
  const decode = async (init: Parameters<FakeSfu['signWebhook']>[0]) => {
    const { body, headers } = await sfu.signWebhook(init);
    return toParticipantSignal(await verifier.verify(body, headers.authorization));
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
