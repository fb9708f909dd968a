/**
 * Scoped delegation tokens: minted for the caller's own scheduled events, usable only for
 * restart/send of those ids (path and body forms), refused everywhere else with 403.
 */
import { createHash } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { DelayedEventsModule } from '../../../src/homeserver/delayed/index.js';
import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import { act, ALICE_AND_BOB, delayIdOf, roomPath, scheduleMessage, U, V1 } from './support.js';

const MINT = '/_matrix/client/unstable/io.lastwill.delegation/scoped_token';

describe('scoped delegation tokens', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let bob: Session;
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: {
        delayed_events: { scoped_token_max_ms: 3_600_000 },
        rate_limits: { management: { per_second: 1000, burst: 1000 } },
      },
      clock,
    }));
  });
  afterAll(async () => {
    await t?.close();
  });

  const mint = (s: Session, body: unknown) => t.request('POST', MINT, { token: s.accessToken, body });
  const lookup = (id: string) => t.request('GET', `${V1}/delayed_events/${enc(id)}`, { token: alice.accessToken });

  it('mints a token for own scheduled events; only its hash is stored', async () => {
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    const res = await mint(alice, { delay_ids: [id], expires_in_ms: 60_000 });
    expect(res.status).toBe(200);
    expect(res.body.token).toMatch(/^lwst_[A-Za-z0-9_-]{43}$/);
    expect(res.body.expires_at).toBe(clock.now() + 60_000);
    const stored = (t.hs.db.prepare('SELECT * FROM delayed_scoped_tokens').all() as Array<Record<string, unknown>>)
      .flatMap((r) => Object.values(r).map(String));
    expect(stored).toContain(createHash('sha256').update(res.body.token).digest('base64url'));
    expect(stored.some((v) => v.includes(res.body.token))).toBe(false);
  });

  it('allows restart and send of the listed ids, in path and body form', async () => {
    const a = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000, { n: 'a' }));
    const b = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000, { n: 'b' }));
    const { token } = (await mint(alice, { delay_ids: [a, b] })).body;
    clock.advance(1_000);
    expect(await act(t, a, 'restart', token)).toMatchObject({ status: 200, body: {} });
    expect((await lookup(a)).body.scheduled_at).toBe(clock.now());
    const viaBody = await t.request('POST', `${V1}/delayed_events/${enc(b)}`, { token, body: { action: 'restart' } });
    expect(viaBody.status).toBe(200);
    expect(await act(t, a, 'send', token, V1)).toMatchObject({ status: 200, body: {} });
    expect((await lookup(a)).body.event_id).toMatch(/^\$/);
    const sendBody = await t.request('POST', `${U}/delayed_events/${enc(b)}`, { token, body: { action: 'send' } });
    expect(sendBody.status).toBe(200);
    expect((await lookup(b)).body.event_id).toMatch(/^\$/);
  });

  it('refuses cancel, other ids and every other endpoint with 403 M_FORBIDDEN', async () => {
    const inScope = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    const outside = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    const { token } = (await mint(alice, { delay_ids: [inScope] })).body;
    const refusals = [
      await act(t, inScope, 'cancel', token),
      await t.request('POST', `${U}/delayed_events/${enc(inScope)}`, { token, body: { action: 'cancel' } }),
      await act(t, outside, 'restart', token),
      await act(t, outside, 'send', token),
      await t.request('POST', `${U}/delayed_events/${enc(outside)}`, { token, body: { action: 'send' } }),
      await t.request('GET', `${U}/delayed_events`, { token }),
      await t.request('GET', `${V1}/delayed_events/${enc(inScope)}`, { token }),
      await t.request('GET', `${V1}/delayed_events/terminated`, { token }),
      await t.request('POST', MINT, { token, body: { delay_ids: [inScope] } }),
      await t.request('PUT', roomPath(roomId, '/send/com.example.test/scoped1'), { token, body: {} }),
      await t.request('GET', '/_matrix/client/v3/account/whoami', { token }),
    ];
    for (const res of refusals) {
      expect(res.status).toBe(403);
      expect(res.body.errcode).toBe('M_FORBIDDEN');
    }
    expect((await lookup(inScope)).body.finalised_ts).toBeUndefined();
    expect((await lookup(outside)).body.finalised_ts).toBeUndefined();
  });

  it('expires', async () => {
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    const { token } = (await mint(alice, { delay_ids: [id], expires_in_ms: 5_000 })).body;
    clock.advance(5_000);
    const res = await act(t, id, 'restart', token);
    expect(res.status).toBe(401);
    expect(res.body.errcode).toBe('M_UNKNOWN_TOKEN');
  });

  it('caps the lifetime at scoped_token_max_ms', async () => {
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    const res = await mint(alice, { delay_ids: [id], expires_in_ms: 10 * 3_600_000 });
    expect(res.body.expires_at).toBe(clock.now() + 3_600_000);
  });

  it.each([
    ['no delay_ids', {}, 'M_MISSING_PARAM'],
    ['an empty list', { delay_ids: [] }, 'M_INVALID_PARAM'],
    ['101 ids', { delay_ids: Array.from({ length: 101 }, (_, i) => `id${i}`) }, 'M_INVALID_PARAM'],
    ['an unknown id', { delay_ids: ['nope'] }, 'M_INVALID_PARAM'],
    ['a bad expiry', { delay_ids: ['nope'], expires_in_ms: -1 }, 'M_INVALID_PARAM'],
  ])('rejects %s with 400', async (_what, body, errcode) => {
    const res = await mint(alice, body);
    expect(res.status).toBe(400);
    expect(res.body.errcode).toBe(errcode);
  });

  it("refuses another user's id and finalised ids", async () => {
    const bobs = await delayIdOf(scheduleMessage(t, bob, roomId, 600_000));
    const mine = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    expect((await mint(alice, { delay_ids: [mine, bobs] })).status).toBe(400);
    await act(t, mine, 'cancel');
    expect((await mint(alice, { delay_ids: [mine] })).status).toBe(400);
    expect((await t.request('POST', MINT, { body: { delay_ids: [bobs] } })).status).toBe(401);
  });

  it('the module API mints tokens and looks up owned events (for MSC4195)', async () => {
    const module = t.hs.delayed as DelayedEventsModule;
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000, { via: 'module' }));
    expect(module.lookupOwned(alice.userId, id)).toMatchObject({ delayId: id, roomId, contentJson: JSON.stringify({ via: 'module' }) });
    expect(module.lookupOwned(bob.userId, id)).toBeUndefined();
    const { token, expiresAt } = await module.mintScopedToken(alice.userId, [id], 1_000);
    expect(expiresAt).toBe(clock.now() + 1_000);
    expect(module.resolveScopedToken(token)).toMatchObject({ userId: alice.userId, scope: { expiresAt } });
    expect(module.resolveScopedToken('not-a-scoped-token')).toBeUndefined();
    expect((await act(t, id, 'send', token)).status).toBe(200);
    expect(module.lookupOwned(alice.userId, id)).toBeUndefined();
  });
});
