// The homeserver module's metrics, observed after real requests and timed sends, and the metrics
// listener, which serves them only where `metrics_bind` says.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startHomeserver } from '../../src/homeserver/main.js';
import { silentLogger } from '../../src/lib/logger.js';
import { FakeClock } from '../support/fake-clock.js';
import { readMetric } from '../support/metrics.js';
import { enc, type Session, startWithRoom, type TestHomeserver, testConfig } from './harness.js';
import {
  act,
  ALICE_AND_BOB,
  delayIdOf,
  MANY_MANAGEMENT_CALLS,
  nextTurn,
  roomPath,
  scheduleMessage,
  scheduleState,
  U,
} from './delayed/support.js';

const ACTION_ROUTE = `${U}/delayed_events/:delayId/:action(send|cancel|restart)`;

describe('delayed-event metrics (manual clock)', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let alice: Session;
  let bob: Session;
  let roomId: string;
  const read = (name: string, labels: Record<string, string> = {}, sample?: '_count' | '_sum') =>
    readMetric(t.hs.metrics.registry, name, labels, sample);

  beforeAll(async () => {
    clock = new FakeClock();
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({ ...ALICE_AND_BOB, overrides: MANY_MANAGEMENT_CALLS, clock }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('count what is scheduled, managed and finalised, by status and cause, with no id in any label', async () => {
    const ids = [
      await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 1 })),
      await delayIdOf(scheduleMessage(t, alice, roomId, 2_000, { n: 2 })),
      await delayIdOf(scheduleMessage(t, alice, roomId, 3_000, { n: 3 })),
    ];
    expect(await read('lastwill_homeserver_delayed_events_created_total')).toBe(3);
    expect(await read('lastwill_homeserver_delayed_events_scheduled')).toBe(3);

    // The token-less path form, as a delegate agent calls it.
    expect((await act(t, ids[0]!, 'restart')).status).toBe(200);
    expect((await act(t, ids[1]!, 'cancel')).status).toBe(200);
    expect((await act(t, ids[1]!, 'cancel')).status).toBe(404);
    // The older body form counts the same.
    const bodyForm = await t.request('POST', `${U}/delayed_events/${enc(ids[0]!)}`, {
      token: alice.accessToken,
      body: { action: 'restart' },
    });
    expect(bodyForm.status).toBe(200);
    expect(await read('lastwill_homeserver_delayed_event_actions_total', { action: 'restart', outcome: 'ok' })).toBe(2);
    expect(await read('lastwill_homeserver_delayed_event_actions_total', { action: 'cancel', outcome: 'ok' })).toBe(1);
    expect(await read('lastwill_homeserver_delayed_event_actions_total', { action: 'cancel', outcome: 'not_found' })).toBe(1);
    expect(await read('lastwill_homeserver_delayed_events_finalised_total', { status: 'cancelled', cause: 'action' })).toBe(1);

    // The other two fire on time.
    clock.advance(3_000);
    await nextTurn();
    expect(await read('lastwill_homeserver_delayed_events_finalised_total', { status: 'sent', cause: 'delay' })).toBe(2);
    expect(await read('lastwill_homeserver_timed_send_lateness_seconds', {}, '_count')).toBe(2);
    expect(await read('lastwill_homeserver_delayed_events_scheduled')).toBe(0);

    // Another user's state update cancels a delayed state event (counted once it committed).
    const stateId = await delayIdOf(scheduleState(t, alice, roomId, 10_000, { leave: true }, 'com.example.state', 'm1'));
    const put = await t.request('PUT', roomPath(roomId, '/state/com.example.state/m1'), { token: bob.accessToken, body: {} });
    expect(put.status).toBe(200);
    expect(await read('lastwill_homeserver_delayed_events_finalised_total', { status: 'cancelled', cause: 'state' })).toBe(1);

    // A user not in the room: the timed send is refused and finalised as failed.
    const carol = await t.register('carol');
    await delayIdOf(scheduleMessage(t, carol, roomId, 1_000, { who: 'carol' }));
    clock.advance(1_000);
    await nextTurn();
    expect(await read('lastwill_homeserver_delayed_events_finalised_total', { status: 'failed', cause: 'delay' })).toBe(1);
    expect(await read('lastwill_homeserver_delayed_events_finalised_total')).toBe(5);

    expect(await read('lastwill_homeserver_http_requests_total', { route: ACTION_ROUTE, method: 'POST', status: '200' })).toBe(2);
    expect(await read('lastwill_homeserver_http_requests_total', { route: ACTION_ROUTE, method: 'POST', status: '404' })).toBe(1);
    expect(await read('lastwill_homeserver_http_request_duration_seconds', { route: ACTION_ROUTE }, '_count')).toBe(3);

    const text = await t.hs.metrics.registry.metrics();
    for (const secret of [...ids, stateId, alice.userId, bob.userId, carol.userId, roomId, alice.accessToken]) {
      expect(text).not.toContain(secret);
    }
    // Path parameters reach the labels only as their pattern.
    expect(text).not.toContain(enc(ids[0]!));
  });
});

describe('management outcomes under the rate limit', () => {
  let t: TestHomeserver;
  let alice: Session;
  let roomId: string;

  beforeAll(async () => {
    const oneCall = { rate_limits: { management: { per_second: 0.001, burst: 1 } } };
    ({ t, roomId, users: { alice } } = await startWithRoom({ ...ALICE_AND_BOB, overrides: oneCall }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('count a 429 as rate_limited for its action', async () => {
    const id = await delayIdOf(scheduleMessage(t, alice, roomId, 600_000));
    expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
    expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(429);
    const restarts = (outcome: string) =>
      readMetric(t.hs.metrics.registry, 'lastwill_homeserver_delayed_event_actions_total', { action: 'restart', outcome });
    expect(await restarts('ok')).toBe(1);
    expect(await restarts('rate_limited')).toBe(1);
  });
});

describe('the metrics listener', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const dataDir = () => {
    const d = mkdtempSync(join(tmpdir(), 'lastwill-hs-metrics-'));
    dirs.push(d);
    return d;
  };

  it('serves /metrics on metrics_bind only, never on the client API', async () => {
    const config = testConfig(dataDir(), { metrics_bind: '127.0.0.1:0' });
    const running = await startHomeserver(config, silentLogger());
    try {
      expect(running.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const scrape = await fetch(running.metricsUrl!);
      expect(scrape.status).toBe(200);
      expect(scrape.headers.get('content-type')).toMatch(/^text\/plain/);
      const first = await scrape.text();
      expect(first).toMatch(/^lastwill_homeserver_delayed_events_scheduled 0$/m);
      // Known label sets start at zero, so their first increment shows in rate().
      expect(first).toMatch(/^lastwill_homeserver_delayed_events_finalised_total\{status="sent",cause="delay"\} 0$/m);
      expect((await fetch(new URL('/_matrix/client/versions', running.metricsUrl)).then((r) => r.status))).toBe(404);
      expect((await fetch(`${running.url}/metrics`)).status).toBe(404);
      // The client API's requests are counted; the scrapes themselves are not.
      expect((await fetch(`${running.url}/_matrix/client/versions`)).status).toBe(200);
      const text = await (await fetch(running.metricsUrl!)).text();
      expect(text).toMatch(/^lastwill_homeserver_http_requests_total\{route="\/_matrix\/client\/versions",method="GET",status="200"\} 1$/m);
      expect(text).not.toMatch(/route="\/metrics"/);
    } finally {
      await running.close();
    }
    await expect(fetch(running.metricsUrl!)).rejects.toThrow();
  });

  it('has no metrics listener unless metrics_bind is set', async () => {
    const running = await startHomeserver(testConfig(dataDir()), silentLogger());
    try {
      expect(running.metricsUrl).toBeUndefined();
    } finally {
      await running.close();
    }
  });
});
