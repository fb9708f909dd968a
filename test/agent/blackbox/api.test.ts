// Black-box: the lk-jwt-service-compatible HTTP contract of the service under test (lastwill agent,
// or another program named by LASTWILL_BLACKBOX_SERVICE; see harness.ts), run as a child process
// with lk-jwt-service environment variables against the loopback fakes in the reference topology.
import { spawnSync } from 'node:child_process';

import { TokenVerifier } from 'livekit-server-sdk';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { legacyIdentity, legacyRoomAlias, participantIdentity, roomAlias } from '../../../src/livekit/identity.js';
import { type FakeHomeserver, startFakeHomeserver } from '../../fakes/fake-homeserver.js';
import {
  CREDS,
  differs,
  http,
  legacyBody,
  newUser,
  openIdToken,
  SERVICE_COMMAND,
  startWorld,
  tokenBody,
  type User,
  type World,
} from './harness.js';

const HS_SECRET = 'homeserver-shared-secret-0123456789';
let w: World;
/** Reachable (an override names its client API) but not full-access. */
let restricted: FakeHomeserver;
/** Full-access, but nothing names its client API and it serves no .well-known/matrix/client. */
let noClientApi: FakeHomeserver;
/** Full-access, its client API found through its .well-known only. */
let discovered: FakeHomeserver;

beforeAll(async () => {
  w = await startWorld({ LASTWILL_AGENT_HOMESERVER_SECRET: HS_SECRET }, [
    { fullAccess: false, override: true },
    { fullAccess: true, override: false },
    { fullAccess: true, override: false },
  ]);
  [restricted, noClientApi, discovered] = w.others as [FakeHomeserver, FakeHomeserver, FakeHomeserver];
});
afterAll(() => w?.close());
afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.log(`--- service log ---\n${w.agent.logs()}`);
});

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST',
  'access-control-allow-headers': 'Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token',
};

function expectCors(headers: Headers): void {
  for (const [k, v] of Object.entries(CORS)) expect(headers.get(k)).toBe(v);
}

const USERINFO = '/_matrix/federation/v1/openid/userinfo';
const withDelay = (delayId: string) => ({ delay_id: delayId, delay_timeout: 60_000 });

describe('the reference topology: federation on its own TLS listener, the client API behind an override', () => {
  it('verifies OpenID at the federation listener, never at the client API the override names', async () => {
    const before = w.hs.requests.length;
    const res = await w.agent.post('/get_token', tokenBody(newUser(w.hs)));
    expect(res.status).toBe(200);
    const seen = w.hs.requests.slice(before);
    expect(seen.filter((r) => r.path === USERINFO).map((r) => [r.listener, r.status])).toEqual([['federation', 200]]);
    expect(seen.filter((r) => r.listener === 'client')).toEqual([]);
  });

  it('sends restarts and sends to the client API the override names', async () => {
    const u = newUser(w.hs);
    const ids = { roomId: '!topology:hs.test', device: 'TOPO', member: 'topo' };
    w.sfu.join(roomAlias(ids.roomId, 'm.call#ROOM'), { identity: participantIdentity(u.userId, ids.device, ids.member), sid: 'PA_topo' });
    expect((await w.agent.post('/delegate_delayed_leave', tokenBody(u, withDelay('topo-delay'), ids))).status).toBe(200);
    const [restart] = await w.hs.waitForRequests('topo-delay', 'restart', 1);
    expect(restart!.listener).toBe('client');
  });

  it.each(['/get_token', '/sfu/get'])(
    '%s resolves the client API before creating the room: unresolvable is 400 M_BAD_JSON and leaves no room',
    async (route) => {
      const u = newUser(noClientApi);
      const body = route === '/get_token' ? tokenBody(u, withDelay(`unresolvable${route}`)) : legacyBody(u, withDelay(`unresolvable${route}`));
      const rooms = w.sfu.createdRooms.length;
      const res = await w.agent.post(route, body);
      expect([res.status, res.json?.errcode]).toEqual([400, 'M_BAD_JSON']);
      expectCors(res.headers);
      expect(w.sfu.createdRooms.length).toBe(rooms);
      // Without delegation the same user gets a token and a room: only the delegation needed the client API.
      const plain = { ...body };
      delete plain.delay_id;
      delete plain.delay_timeout;
      expect((await w.agent.post(route, plain)).status).toBe(200);
      expect(w.sfu.createdRooms.length).toBe(rooms + 1);
    },
  );

  differs('outbound guard').each(['127.0.0.1', 'localhost'])(
    'refuses a server %s:<port> on another port of a host the operator named, without contacting it',
    async (host) => {
    const stranger = await startFakeHomeserver();
    try {
      const u = newUser(stranger);
      const res = await w.agent.post('/get_token', { ...tokenBody(u), openid_token: openIdToken(u.token, `${host}:${stranger.federationPort}`) });
      expect([res.status, res.json?.errcode]).toEqual([401, 'M_UNAUTHORIZED']);
      expect(stranger.requests).toEqual([]);
    } finally {
      await stranger.close();
    }
  },
  );

  differs('outbound guard')("refuses a named server's .well-known pointing at an unnamed port of a named host", async () => {
    const stranger = await startFakeHomeserver();
    discovered.setClientWellKnown({ 'm.homeserver': { base_url: stranger.url } });
    try {
      const res = await w.agent.post('/delegate_delayed_leave', tokenBody(newUser(discovered), withDelay('wk-stranger')));
      expect([res.status, res.json?.errcode]).toEqual([400, 'M_BAD_JSON']);
      // The same server's own .well-known was read: only the address it named was refused.
      expect(discovered.requests.filter((r) => r.path === '/.well-known/matrix/client')).toHaveLength(1);
      expect(stranger.requests).toEqual([]);
    } finally {
      discovered.setClientWellKnown(undefined);
      await stranger.close();
    }
  });
});

describe('TLS verification of the federation listener (self-signed here)', () => {
  it.each([
    ['unset', undefined, 401],
    ['set to another value', 'yes', 401],
    ['set to the sentinel', 'YES_I_KNOW_WHAT_I_AM_DOING', 200],
  ])('with LIVEKIT_INSECURE_SKIP_VERIFY_TLS %s, a token request answers %i', async (_n, value, status) => {
    const world = await startWorld({ LIVEKIT_INSECURE_SKIP_VERIFY_TLS: value ?? '' });
    try {
      const res = await world.agent.post('/get_token', tokenBody(newUser(world.hs)));
      expect(res.status).toBe(status);
    } finally {
      await world.close();
    }
  });
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
    expect(grants.video).toMatchObject({ room, roomJoin: true, canPublish: true, canSubscribe: true, canUpdateOwnMetadata: true });
    expect(grants.video?.roomCreate ?? false).toBe(false);
    expect(w.sfu.createdRooms).toContain(room);
  });

  differs('unknown JSON fields')('ignores unknown extra fields (deliberately lenient)', async () => {
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
    const body = tokenBody({ userId: `@x:${w.hs.serverName}`, token: 'not-a-token', serverName: w.hs.serverName });
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
    const u = newUser(restricted);
    const before = w.sfu.createdRooms.length;
    const ok = await w.agent.post('/get_token', tokenBody(u));
    expect(ok.status).toBe(200);
    expect(w.sfu.createdRooms.length).toBe(before);
    const refused = await w.agent.post('/get_token', tokenBody(u, { delay_id: 'r-delay', delay_timeout: 5000 }));
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
    const res = await w.agent.post('/delegate_delayed_leave', tokenBody(newUser(restricted), { delay_id: 'd', delay_timeout: 1000 }));
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe('M_FORBIDDEN');
  });

  it('rejects a bad OpenID token with 401', async () => {
    const bad: User = { userId: `@x:${w.hs.serverName}`, token: 'bad', serverName: w.hs.serverName };
    const res = await w.agent.post('/delegate_delayed_leave', tokenBody(bad, { delay_id: 'd', delay_timeout: 1000 }));
    expect(res.status).toBe(401);
  });
});

describe('POST /sfu/get (legacy)', () => {
  it('hashes [room, m.call#ROOM], uses mxid:device and skips the claimed-user check', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/sfu/get', legacyBody(u));
    expect(res.status).toBe(200);
    const grants = await new TokenVerifier(CREDS.key, CREDS.secret).verify(res.json.jwt);
    expect(grants.sub).toBe(legacyIdentity(u.userId, 'LD'));
    expect(grants.video?.room).toBe(legacyRoomAlias('!legacy:hs.test'));
  });

  it('accepts an empty device_id', async () => {
    const u = newUser(w.hs);
    const res = await w.agent.post('/sfu/get', legacyBody(u, { device_id: '' }));
    expect(res.status).toBe(200);
  });

  it.each([
    ['missing room', (b: any) => delete b.room, 'M_BAD_JSON'],
    ['missing openid_token', (b: any) => delete b.openid_token, 'M_BAD_JSON'],
    ['a lone delay_id', (b: any) => (b.delay_id = 'x'), 'M_BAD_JSON'],
    ['device_id of the wrong type', (b: any) => (b.device_id = 7), 'M_NOT_JSON'],
  ])('rejects %s', async (_n, mutate, errcode) => {
    const body: any = legacyBody(newUser(w.hs));
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

  it('answers OPTIONS on /healthz like any other method, 405 without CORS', async () => {
    const healthz = await http(`${w.agent.url}/healthz`, { method: 'OPTIONS' });
    expect(healthz.status).toBe(405);
    expect(healthz.text).toBe('');
    expect(healthz.headers.get('access-control-allow-origin')).toBeNull();
  });

  differs('error bodies')('answers OPTIONS elsewhere with a Matrix error, without CORS', async () => {
    const metrics = await http(`${w.agent.url}/metrics`, { method: 'OPTIONS' });
    expect(metrics.status).toBe(405);
    expect(metrics.json.errcode).toBe('M_UNRECOGNIZED');
    const unknown = await http(`${w.agent.url}/nowhere`, { method: 'OPTIONS' });
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe('M_UNRECOGNIZED');
    for (const res of [metrics, unknown]) expect(res.headers.get('access-control-allow-origin')).toBeNull();
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

  differs('additions')('/readyz is 200 once started', async () => {
    expect((await http(`${w.agent.url}/readyz`)).status).toBe(200);
  });

  differs('additions')('/metrics exposes the documented families without user data', async () => {
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
    expect(text).not.toContain(w.hs.serverName);
    expect(text).not.toContain('dl-ok');
  });
});

describe('webhook authentication', () => {
  differs('forged webhooks').each([
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

describe('POST /_lastwill/v1/delegations (homeserver forward)', () => {
  const it = differs('additions');
  const body = (delayId: string) => ({
    livekit_room: 'fwd-room',
    identity: 'fwd-identity',
    delay_id: delayId,
    delay_timeout: 60_000,
    server_name: w.hs.serverName,
    user_id: `@fwd:${w.hs.serverName}`,
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
  /** Runs the service with a valid environment plus `env`; it must stop by itself. */
  function startWith(env: Record<string, string>) {
    const [command, ...args] = SERVICE_COMMAND;
    const valid = { LIVEKIT_URL: w.env.LIVEKIT_URL!, LIVEKIT_KEY: CREDS.key, LIVEKIT_SECRET: CREDS.secret, LIVEKIT_FULL_ACCESS_HOMESERVERS: '*' };
    const r = spawnSync(command, args, {
      env: { PATH: process.env.PATH ?? '', LIVEKIT_JWT_BIND: '127.0.0.1:0', ...valid, ...env },
      encoding: 'utf8',
      timeout: 10_000,
    });
    return { exited: r.signal === null, status: r.status, output: `${r.stdout}${r.stderr}` };
  }

  it.each([
    [{ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '-3' }, 'LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS'],
    [{ LIVEKIT_JWT_BIND: ':8080', LIVEKIT_JWT_PORT: '8080' }, 'LIVEKIT_JWT_PORT'],
  ])('exits non-zero naming the variable for %o', (env, variable) => {
    const r = startWith(env);
    expect([r.exited, r.status === 0]).toEqual([true, false]);
    expect(r.output).toContain(variable);
  });

  differs('strict configuration')('refuses an unknown log level instead of defaulting', () => {
    const r = startWith({ LIVEKIT_LOG_LEVEL: 'chatty' });
    expect([r.exited, r.status]).toEqual([true, 78]);
    expect(r.output).toContain('LIVEKIT_LOG_LEVEL');
  });
});
