// Black-box: the lk-jwt-service-compatible HTTP contract of `lastwill agent`, run as a child
// process with lk-jwt-service environment variables against the loopback fakes.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { legacyIdentity, legacyRoomAlias, participantIdentity, roomAlias } from '../../src/livekit/identity.js';
import { REPO_ROOT } from '../e2e/support/proc.js';
import { CREDS, http, newUser, openIdToken, SERVER_NAME, startWorld, tokenBody, type World } from './support/harness.js';

const RESTRICTED = 'restricted.test';
const HS_SECRET = 'homeserver-shared-secret-0123456789';
let w: World;

beforeAll(async () => {
  w = await startWorld();
  // The restricted server is reachable (named by an override) but has no full access.
  w.env.LIVEKIT_CS_API_URL_OVERRIDES = `${SERVER_NAME}=${w.hs.url},${RESTRICTED}=${w.hs.url}`;
  w.env.LASTWILL_AGENT_HOMESERVER_SECRET = HS_SECRET;
  await w.agent.proc.kill();
  await w.restartAgent();
});
afterAll(() => w?.close());
afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.log(`--- agent log ---\n${w.agent.logs()}`);
});

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST',
  'access-control-allow-headers': 'Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token',
};

function expectCors(headers: Headers): void {
  for (const [k, v] of Object.entries(CORS)) expect(headers.get(k)).toBe(v);
}

const restrictedUser = () => {
  const u = newUser(w.hs, 'r');
  const userId = u.userId.replace(`:${SERVER_NAME}`, `:${RESTRICTED}`);
  w.hs.addOpenIdToken(u.token, userId);
  return { userId, token: u.token };
};
const restrictedBody = (u: { userId: string; token: string }, extra: Record<string, unknown> = {}) => ({
  ...tokenBody(u, extra),
  openid_token: openIdToken(u.token, RESTRICTED),
});

describe('POST /get_token', () => {
  it('issues a join token for the hashed room and identity and creates the room', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/get_token', tokenBody(u, {}, { roomId: '!r1:hs.test', slotId: 's1', device: 'D1', member: 'm1' }));
    expect(res.status).toBe(200);
    expect(res.json.url).toBe(w.env.LIVEKIT_URL);
    expectCors(res.headers);
    const grants = await new TokenVerifier(CREDS.key, CREDS.secret).verify(res.json.jwt);
    const room = roomAlias('!r1:hs.test', 's1');
    expect(grants.sub).toBe(participantIdentity(u.userId, 'D1', 'm1'));
    expect(grants.video).toMatchObject({ room, roomJoin: true, roomCreate: false, canPublish: true, canSubscribe: true });
    expect(w.sfu.createdRooms).toContain(room);
  });

  it('ignores unknown extra fields (deliberately lenient)', async () => {
    const res = await w.agent.post('/get_token', tokenBody(newUser(w.hs), { some_future_field: { x: 1 } }));
    expect(res.status).toBe(200);
  });

  it.each([
    ['malformed JSON', '{"room_id":', 'M_NOT_JSON'],
    ['an array', '[]', 'M_NOT_JSON'],
    ['an empty body', '', 'M_NOT_JSON'],
  ])('answers %s with 400 %s', async (_n, body, errcode) => {
    const res = await w.agent.post('/get_token', body);
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe(errcode);
    expectCors(res.headers);
  });

  const cases: Array<[string, (b: any) => void, string]> = [
    ['room_id of the wrong type', (b) => (b.room_id = 5), 'M_NOT_JSON'],
    ['member of the wrong type', (b) => (b.member = 'x'), 'M_NOT_JSON'],
    ['a fractional delay_timeout', (b) => Object.assign(b, { delay_id: 'd', delay_timeout: 1.5 }), 'M_NOT_JSON'],
    ['missing room_id', (b) => delete b.room_id, 'M_BAD_JSON'],
    ['empty slot_id', (b) => (b.slot_id = ''), 'M_BAD_JSON'],
    ['missing openid_token', (b) => delete b.openid_token, 'M_BAD_JSON'],
    ['missing access_token', (b) => delete b.openid_token.access_token, 'M_BAD_JSON'],
    ['missing matrix_server_name', (b) => delete b.openid_token.matrix_server_name, 'M_BAD_JSON'],
    ['missing member', (b) => delete b.member, 'M_BAD_JSON'],
    ['missing member.id', (b) => delete b.member.id, 'M_BAD_JSON'],
    ['missing claimed_user_id', (b) => delete b.member.claimed_user_id, 'M_BAD_JSON'],
    ['missing claimed_device_id', (b) => delete b.member.claimed_device_id, 'M_BAD_JSON'],
    ['delay_id without delay_timeout', (b) => (b.delay_id = 'd'), 'M_BAD_JSON'],
    ['delay_timeout without delay_id', (b) => (b.delay_timeout = 1000), 'M_BAD_JSON'],
    ['a negative delay_timeout', (b) => Object.assign(b, { delay_id: 'd', delay_timeout: -5 }), 'M_BAD_JSON'],
  ];
  it.each(cases)('rejects %s', async (_n, mutate, errcode) => {
    const body = tokenBody(newUser(w.hs));
    mutate(body);
    const res = await w.agent.post('/get_token', body);
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe(errcode);
  });

  it('rejects an unknown OpenID token with 401 M_UNAUTHORIZED', async () => {
    const body = tokenBody({ userId: '@x:hs.test', token: 'not-a-token' });
    const res = await w.agent.post('/get_token', body);
    expect(res.status).toBe(401);
    expect(res.json.errcode).toBe('M_UNAUTHORIZED');
    expectCors(res.headers);
  });

  it.each(['hs.test/evil', 'hs.test:80:80', 'hs.test?x=1', '[::1'])(
    'answers the malformed matrix_server_name %j with 401 M_UNAUTHORIZED and no homeserver request',
    async (name) => {
      const u = newUser(w.hs);
      const before = w.hs.requests.length;
      const res = await w.agent.post('/get_token', { ...tokenBody(u), openid_token: openIdToken(u.token, name) });
      expect(res.status).toBe(401);
      expect(res.json.errcode).toBe('M_UNAUTHORIZED');
      expectCors(res.headers);
      expect(w.hs.requests.length).toBe(before);
    },
  );

  it('rejects a claimed user id that is not the verified one', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/get_token', tokenBody({ ...u, userId: '@someone-else:hs.test' }));
    expect(res.status).toBe(401);
    expect(res.json.errcode).toBe('M_UNAUTHORIZED');
  });

  it('gives a restricted homeserver a token but no room, and refuses its delay fields', async () => {
    const u = restrictedUser();
    const before = w.sfu.createdRooms.length;
    const ok = await w.agent.post('/get_token', restrictedBody(u, {}));
    expect(ok.status).toBe(200);
    expect(w.sfu.createdRooms.length).toBe(before);
    const refused = await w.agent.post('/get_token', restrictedBody(u, { delay_id: 'r-delay', delay_timeout: 5000 }));
    expect(refused.status).toBe(400);
    expect(refused.json.errcode).toBe('M_BAD_JSON');
  });
});

describe('POST /delegate_delayed_leave', () => {
  it('accepts a delegation with {}', async () => {
    const res = await w.agent.post('/delegate_delayed_leave', tokenBody(newUser(w.hs), { delay_id: 'dl-ok', delay_timeout: 60_000 }));
    expect(res.status).toBe(200);
    expect(res.json).toEqual({});
    expectCors(res.headers);
  });

  it('ignores delay_cs_api_url', async () => {
    const res = await w.agent.post(
      '/delegate_delayed_leave',
      tokenBody(newUser(w.hs), { delay_id: 'dl-cs', delay_timeout: 60_000, delay_cs_api_url: 'http://169.254.169.254/' }),
    );
    expect(res.status).toBe(200);
  });

  it.each([
    ['no delay fields', {}],
    ['delay_timeout 0', { delay_id: 'd', delay_timeout: 0 }],
    ['a negative delay_timeout', { delay_id: 'd', delay_timeout: -1 }],
    ['no delay_id', { delay_timeout: 1000 }],
  ])('rejects %s with 400 M_BAD_JSON', async (_n, extra) => {
    const res = await w.agent.post('/delegate_delayed_leave', tokenBody(newUser(w.hs), extra));
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe('M_BAD_JSON');
  });

  it('refuses a restricted homeserver with 403 M_FORBIDDEN', async () => {
    const res = await w.agent.post('/delegate_delayed_leave', restrictedBody(restrictedUser(), { delay_id: 'd', delay_timeout: 1000 }));
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe('M_FORBIDDEN');
  });

  it('rejects a bad OpenID token with 401', async () => {
    const res = await w.agent.post('/delegate_delayed_leave', tokenBody({ userId: '@x:hs.test', token: 'bad' }, { delay_id: 'd', delay_timeout: 1000 }));
    expect(res.status).toBe(401);
  });
});

describe('POST /sfu/get (legacy)', () => {
  it('hashes [room, m.call#ROOM], uses mxid:device and skips the claimed-user check', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/sfu/get', { room: '!legacy:hs.test', openid_token: openIdToken(u.token), device_id: 'LD' });
    expect(res.status).toBe(200);
    const grants = await new TokenVerifier(CREDS.key, CREDS.secret).verify(res.json.jwt);
    expect(grants.sub).toBe(legacyIdentity(u.userId, 'LD'));
    expect(grants.video?.room).toBe(legacyRoomAlias('!legacy:hs.test'));
  });

  it('accepts an empty device_id', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/sfu/get', { room: '!legacy:hs.test', openid_token: openIdToken(u.token), device_id: '' });
    expect(res.status).toBe(200);
  });

  it.each([
    ['missing room', (b: any) => delete b.room, 'M_BAD_JSON'],
    ['missing openid_token', (b: any) => delete b.openid_token, 'M_BAD_JSON'],
    ['a lone delay_id', (b: any) => (b.delay_id = 'x'), 'M_BAD_JSON'],
    ['device_id of the wrong type', (b: any) => (b.device_id = 7), 'M_NOT_JSON'],
  ])('rejects %s', async (_n, mutate, errcode) => {
    const body: any = { room: '!legacy:hs.test', openid_token: openIdToken(newUser(w.hs).token), device_id: 'D' };
    mutate(body);
    const res = await w.agent.post('/sfu/get', body);
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe(errcode);
  });
});

describe('CORS and method handling', () => {
  it.each(['/sfu/get', '/get_token', '/delegate_delayed_leave'])('OPTIONS %s is 200 with no body', async (path) => {
    const res = await http(`${w.agent.url}${path}`, { method: 'OPTIONS' });
    expect(res.status).toBe(200);
    expect(res.text).toBe('');
    expectCors(res.headers);
  });

  const clientRoutes = ['/sfu/get', '/get_token', '/delegate_delayed_leave'];
  it.each(clientRoutes.flatMap((path) => ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'].map((method) => [method, path])))(
    '%s %s is 405 with no body and CORS headers',
    async (method, path) => {
      const res = await http(`${w.agent.url}${path}`, { method });
      expect(res.status).toBe(405);
      expect(res.text).toBe('');
      expectCors(res.headers);
    },
  );

  it('answers OPTIONS elsewhere like any other method, without CORS', async () => {
    const healthz = await http(`${w.agent.url}/healthz`, { method: 'OPTIONS' });
    expect(healthz.status).toBe(405);
    expect(healthz.text).toBe('');
    const metrics = await http(`${w.agent.url}/metrics`, { method: 'OPTIONS' });
    expect(metrics.status).toBe(405);
    expect(metrics.json.errcode).toBe('M_UNRECOGNIZED');
    const unknown = await http(`${w.agent.url}/nowhere`, { method: 'OPTIONS' });
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe('M_UNRECOGNIZED');
    for (const res of [healthz, metrics, unknown]) expect(res.headers.get('access-control-allow-origin')).toBeNull();
  });
});

describe('operations endpoints', () => {
  it('/healthz answers GET and HEAD, 405 with no body otherwise', async () => {
    expect((await http(`${w.agent.url}/healthz`)).status).toBe(200);
    expect((await http(`${w.agent.url}/healthz`, { method: 'HEAD' })).status).toBe(200);
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      const res = await http(`${w.agent.url}/healthz`, { method });
      expect([method, res.status, res.text]).toEqual([method, 405, '']);
    }
  });

  it('/readyz is 200 once started', async () => {
    expect((await http(`${w.agent.url}/readyz`)).status).toBe(200);
  });

  it('/metrics exposes the documented families without user data', async () => {
    const text = (await http(`${w.agent.url}/metrics`)).text;
    for (const name of [
      'lastwill_agent_jobs',
      'lastwill_agent_webhooks_total',
      'lastwill_agent_delayed_event_actions_total',
      'lastwill_agent_disconnect_to_send_seconds',
      'lastwill_agent_http_requests_total',
    ]) {
      expect(text).toContain(`# TYPE ${name}`);
    }
    expect(text).not.toContain('hs.test');
    expect(text).not.toContain('dl-ok');
  });
});

describe('webhook authentication', () => {
  it.each([
    ['a tampered body', { tamper: true }],
    ['a wrong secret', { secret: 'not-the-secret-0123456789abcdef' }],
    ['no Authorization', { unsigned: true }],
  ])('answers %s with 401 and counts it', async (_n, opts) => {
    const before = await w.agent.metric('lastwill_agent_webhooks_total', { verdict: 'forged' });
    const status = await w.sfu.sendWebhook(`${w.agent.url}/sfu_webhook`, { event: 'participant_joined', room: 'R', identity: 'I', sid: 'PA_f' }, opts);
    expect(status).toBe(401);
    expect(await w.agent.metric('lastwill_agent_webhooks_total', { verdict: 'forged' })).toBe(before + 1);
  });

  it('answers a genuine webhook with 200', async () => {
    expect(await w.sfu.sendWebhook(`${w.agent.url}/sfu_webhook`, { event: 'room_started', room: 'R' })).toBe(200);
  });
});

describe('SSRF guard', () => {
  it.each(['127.0.0.1', 'localhost'])('refuses a server name %s:<port> that was never named', async (host) => {
    const u = newUser(w.hs);
    const before = w.hs.requests.length;
    const res = await w.agent.post('/get_token', {
      ...tokenBody(u),
      openid_token: openIdToken(u.token, `${host}:${w.hs.port}`),
    });
    expect(res.status).toBe(401);
    expect(w.hs.requests.length).toBe(before);
  });
});

describe('POST /_lastwill/v1/delegations (homeserver forward)', () => {
  const body = (delayId: string) => ({
    livekit_room: 'fwd-room',
    identity: 'fwd-identity',
    delay_id: delayId,
    delay_timeout: 60_000,
    server_name: SERVER_NAME,
    user_id: '@fwd:hs.test',
    scoped_token: 'scoped-fwd',
  });

  it('requires the shared secret', async () => {
    expect((await w.agent.post('/_lastwill/v1/delegations', body('f1'))).json.errcode).toBe('M_MISSING_TOKEN');
    const wrong = await w.agent.post('/_lastwill/v1/delegations', body('f1'), { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.json.errcode).toBe('M_UNKNOWN_TOKEN');
  });

  it('validates the body', async () => {
    const res = await w.agent.post('/_lastwill/v1/delegations', { ...body('f2'), delay_timeout: 'soon' }, { authorization: `Bearer ${HS_SECRET}` });
    expect(res.status).toBe(400);
  });

  it('rejects a server_name that is not a server name', async () => {
    const res = await w.agent.post(
      '/_lastwill/v1/delegations',
      { ...body('f2b'), server_name: 'hs.test/x', user_id: '@fwd:hs.test/x' },
      { authorization: `Bearer ${HS_SECRET}` },
    );
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe('M_BAD_JSON');
  });

  it('registers a job that restarts with the scoped token once the participant is present', async () => {
    w.sfu.join('fwd-room', { identity: 'fwd-identity', sid: 'PA_fwd' });
    const res = await w.agent.post('/_lastwill/v1/delegations', body('f3'), { authorization: `Bearer ${HS_SECRET}` });
    expect(res.status).toBe(200);
    const [restart] = await w.hs.waitForRequests('f3', 'restart', 1);
    expect(restart!.authorization).toBe('Bearer scoped-fwd');
  });
});

describe('configuration errors', () => {
  it.each([
    [{ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '-3' }, 'sanity_check_interval_seconds'],
    [{ LIVEKIT_JWT_BIND: ':8080', LIVEKIT_JWT_PORT: '8080' }, 'LIVEKIT_JWT_PORT'],
    [{ LIVEKIT_LOG_LEVEL: 'chatty' }, 'log_level'],
  ])('`lastwill agent` exits non-zero naming the key for %o', (env, key) => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'dist/cli.js'), 'agent'], {
      env: { PATH: process.env.PATH ?? '', ...env },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(key);
  });
});
