/**
 * Malformed requests at every delayed-events route: never a 5xx, always a Matrix error body, and
 * the module's tables are exactly as before (the clock is frozen so nothing falls due meanwhile).
 */
import { createHash } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { FakeClock } from '../../support/fake-clock.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import { delayIdOf, OPEN_ROOM, scheduleMessage, U, V1 } from './support.js';

/** The module's tables and the core's transaction ids (which the dedicated PUT writes). */
const TABLES = ['delayed_events', 'delayed_scoped_tokens', 'txns'];

describe('bad input to the delayed-events routes', () => {
  let t: TestHomeserver;
  let alice: Session;
  let roomId: string;
  let id: string;

  beforeAll(async () => {
    ({ t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: OPEN_ROOM,
      overrides: { rate_limits: { management: { per_second: 0, burst: 0 } } },
      clock: new FakeClock(),
    }));
    id = await delayIdOf(scheduleMessage(t, alice, roomId, 60_000));
  });
  afterAll(async () => {
    await t?.close();
  });

  const snapshot = (): string =>
    createHash('sha256')
      .update(JSON.stringify(TABLES.map((table) => t.hs.db.prepare(`SELECT * FROM ${table} ORDER BY 1`).all())))
      .digest('hex');

  it('answers 4xx Matrix errors and changes nothing', async () => {
    const put = (prefix: string, room: string, type: string, txn: string) =>
      `${prefix}/rooms/${room}/delayed_event/${type}/${txn}`;
    const cases: Array<[string, string, { body?: unknown; rawBody?: string; auth?: boolean }]> = [
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a1'), { rawBody: '{', auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a2'), { rawBody: '\xff\xfe', auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a3'), { body: null, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a4'), { body: 'str', auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a5'), { body: { delay_ms: 1e300, content: {} }, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a6'), { body: { delay_ms: 10, content: null }, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a7'), { body: { delay_ms: 10, content: {}, state_key: null }, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x'.repeat(300), 'a8'), { body: { delay_ms: 10, content: {} }, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'a9'), { body: { delay_ms: 10, content: {}, state_key: 'k'.repeat(300) }, auth: true }],
      ['PUT', put('/_matrix/client/v3', '%E0%A4%A', 'x', 'b1'), { body: { delay_ms: 10, content: {} }, auth: true }],
      ['PUT', put('/_matrix/client/v3', enc('not a room'), 'x', 'b2'), { body: { delay_ms: 10, content: {} }, auth: true }],
      ['PUT', put(U, enc(roomId), 'x', 'b3'), { body: { delay_ms: 10, content: {} } }],
      ['PUT', put('/_matrix/client/v3', enc(roomId), 'x', 'b4'), { body: { delay_ms: 10, content: {} }, auth: false }],
      ['POST', `${U}/delayed_events/${enc(id)}`, { rawBody: '[', auth: true }],
      ['POST', `${U}/delayed_events/${enc(id)}`, { body: { action: ['send'] }, auth: true }],
      ['POST', `${U}/delayed_events/${enc(id)}`, { body: { action: 'cancel' } }],
      ['POST', `${U}/delayed_events/${'z'.repeat(5000)}/cancel`, {}],
      ['POST', `${U}/delayed_events/%ZZ/cancel`, {}],
      ['POST', `${U}/delayed_events/${enc(id)}/CANCEL`, {}],
      ['POST', `${V1}/delayed_events/${enc(id)}/send/extra`, {}],
      ['GET', `${U}/delayed_events/${enc(id)}/send`, { auth: true }],
      ['DELETE', `${U}/delayed_events/${enc(id)}`, { auth: true }],
      ['GET', `${U}/delayed_events?delay_id=`, { auth: true }],
      ['GET', `${U}/delayed_events?delay_id=${'q'.repeat(300)}`, { auth: true }],
      ['GET', `${U}/delayed_events?${Array.from({ length: 101 }, (_, i) => `delay_id=d${i}`).join('&')}`, { auth: true }],
      ['GET', `${U}/delayed_events/terminated?from=${Buffer.from('["f",1e400,1]').toString('base64url')}`, { auth: true }],
      ['GET', `${U}/delayed_events/scheduled?from=${Buffer.from('["s","a",1]').toString('base64url')}`, { auth: true }],
      ['GET', `${U}/delayed_events/scheduled?from=${'A'.repeat(600)}`, { auth: true }],
      ['POST', '/_matrix/client/unstable/io.lastwill.delegation/scoped_token', { body: { delay_ids: [id], expires_in_ms: 0 }, auth: true }],
      ['POST', '/_matrix/client/unstable/io.lastwill.delegation/scoped_token', { body: { delay_ids: 'x' }, auth: true }],
      ['POST', '/_matrix/client/unstable/io.lastwill.delegation/scoped_token', { rawBody: 'nope', auth: true }],
      ['POST', '/_matrix/client/unstable/io.lastwill.delegation/scoped_token', { body: { delay_ids: [id] } }],
    ];
    const before = snapshot();
    for (const [method, path, o] of cases) {
      const res = await t.request(method, path, {
        ...(o.auth ? { token: alice.accessToken } : {}),
        ...(o.body !== undefined ? { body: o.body } : {}),
        ...(o.rawBody !== undefined ? { rawBody: o.rawBody } : {}),
      });
      expect(res.status, `${method} ${path.slice(0, 120)}`).toBeGreaterThanOrEqual(400);
      expect(res.status, `${method} ${path.slice(0, 120)}`).toBeLessThan(500);
      expect(res.body.errcode, `${method} ${path.slice(0, 120)}`).toMatch(/^M_/);
      expect(res.body.error).toBeTypeOf('string');
    }
    expect(snapshot()).toBe(before);
  });
});
