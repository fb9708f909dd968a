import { afterEach, describe, expect, it } from 'vitest';

import { startTestHomeserver, type TestHomeserver } from './harness.js';

let t: TestHomeserver | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

describe('discovery', () => {
  it('advertises spec versions and MSC4140 when delayed events are enabled', async () => {
    t = await startTestHomeserver();
    const res = await t.request('GET', '/_matrix/client/versions');
    expect(res.status).toBe(200);
    for (let minor = 1; minor <= 12; minor++) expect(res.body.versions).toContain(`v1.${minor}`);
    expect(res.body.unstable_features['org.matrix.msc4140']).toBe(true);
    expect(res.headers['access-control-allow-origin']).toBe('*');
  });

  it('does not advertise MSC4140 when the per-user limit is 0', async () => {
    t = await startTestHomeserver({ delayed_events: { max_scheduled_per_user: 0 } });
    const res = await t.request('GET', '/_matrix/client/versions');
    expect(res.body.unstable_features['org.matrix.msc4140']).toBe(false);
  });

  it('reports capabilities with the delayed-event limits', async () => {
    t = await startTestHomeserver({ max_delay_ms: 3_600_000, delayed_events: { max_scheduled_per_user: 7 } });
    const s = await t.register('cap');
    const res = await t.request('GET', '/_matrix/client/v3/capabilities', { token: s.accessToken });
    expect(res.status).toBe(200);
    expect(res.body.capabilities['m.change_password']).toEqual({ enabled: false });
    expect(res.body.capabilities['org.matrix.msc4140.delayed_events']).toEqual({
      max_delay_ms: 3_600_000,
      max_scheduled: 7,
    });
    expect(res.body.capabilities['m.delayed_events']).toEqual({ max_delay_ms: 3_600_000, max_scheduled: 7 });
    expect(res.body.capabilities['m.room_versions'].default).toBe('10');
    expect((await t.request('GET', '/_matrix/client/v3/capabilities')).status).toBe(401);
  });

  it('serves .well-known with the listening URL', async () => {
    t = await startTestHomeserver();
    const client = await t.request('GET', '/.well-known/matrix/client');
    expect(client.body).toEqual({ 'm.homeserver': { base_url: t.url } });
    const server = await t.request('GET', '/.well-known/matrix/server');
    expect(server.body).toEqual({ 'm.server': `127.0.0.1:${new URL(t.url).port}` });
  });

  it('prefers public_base_url when configured', async () => {
    t = await startTestHomeserver({ public_base_url: 'https://matrix.example.com' });
    const client = await t.request('GET', '/.well-known/matrix/client');
    expect(client.body['m.homeserver'].base_url).toBe('https://matrix.example.com');
  });

  it('answers unknown paths and wrong methods with M_UNRECOGNIZED', async () => {
    t = await startTestHomeserver();
    const unknown = await t.request('GET', '/_matrix/client/v1/auth_metadata');
    expect(unknown.status).toBe(404);
    expect(unknown.body.errcode).toBe('M_UNRECOGNIZED');
    const method = await t.request('DELETE', '/_matrix/client/versions');
    expect(method.status).toBe(405);
    expect(method.body.errcode).toBe('M_UNRECOGNIZED');
  });
});
