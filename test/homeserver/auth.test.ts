import { createHmac } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startTestHomeserver, TEST_SHARED_SECRET, type TestHomeserver } from './harness.js';

let t: TestHomeserver;
beforeAll(async () => {
  t = await startTestHomeserver();
});
afterAll(async () => {
  await t?.close();
});

const userCount = () => (t.hs.db.prepare('SELECT COUNT(*) AS n FROM users').get() as { n: number }).n;

function mac(nonce: string, user: string, password: string, admin: boolean, userType?: string): string {
  const parts = [nonce, user, password, admin ? 'admin' : 'notadmin', ...(userType ? [userType] : [])];
  return createHmac('sha1', TEST_SHARED_SECRET).update(parts.join('\0')).digest('hex');
}

describe('open registration', () => {
  it('answers the UIA flow when auth is missing, then registers with m.login.dummy', async () => {
    const first = await t.request('POST', '/_matrix/client/v3/register', {
      body: { username: 'dora', password: 'pw' },
    });
    expect(first.status).toBe(401);
    expect(first.body.flows).toEqual([{ stages: ['m.login.dummy'] }]);
    expect(typeof first.body.session).toBe('string');
    const second = await t.request('POST', '/_matrix/client/v3/register', {
      body: { username: 'dora', password: 'pw', auth: { type: 'm.login.dummy', session: first.body.session } },
    });
    expect(second.status).toBe(200);
    expect(second.body).toMatchObject({ user_id: '@dora:localhost', home_server: 'localhost' });
    expect(second.body.access_token).toMatch(/^lw_/);
    const whoami = await t.request('GET', '/_matrix/client/v3/account/whoami', { token: second.body.access_token });
    expect(whoami.body).toEqual({ user_id: '@dora:localhost', device_id: second.body.device_id, is_guest: false });
  });

  it('refuses taken and invalid user names, and guests', async () => {
    await t.register('erin');
    const taken = await t.request('POST', '/_matrix/client/v3/register', {
      body: { username: 'erin', password: 'pw', auth: { type: 'm.login.dummy' } },
    });
    expect(taken.status).toBe(400);
    expect(taken.body.errcode).toBe('M_USER_IN_USE');
    const invalid = await t.request('POST', '/_matrix/client/v3/register', {
      body: { username: 'bad name!', auth: { type: 'm.login.dummy' } },
    });
    expect(invalid.body.errcode).toBe('M_INVALID_USERNAME');
    const guest = await t.request('POST', '/_matrix/client/v3/register?kind=guest', { body: {} });
    expect(guest.status).toBe(403);
    expect(guest.body.errcode).toBe('M_FORBIDDEN');
  });

  it('is refused when open registration is off', async () => {
    const closed = await startTestHomeserver({ open_registration: false });
    try {
      const res = await closed.request('POST', '/_matrix/client/v3/register', {
        body: { username: 'x', auth: { type: 'm.login.dummy' } },
      });
      expect(res.status).toBe(403);
    } finally {
      await closed.close();
    }
  });
});

describe('shared-secret registration', () => {
  it('registers with a correct MAC, once per nonce', async () => {
    const { body } = await t.request('GET', '/_synapse/admin/v1/register');
    const nonce = body.nonce as string;
    const req = { nonce, username: 'frank', password: 'pw', admin: true, mac: mac(nonce, 'frank', 'pw', true) };
    const ok = await t.request('POST', '/_synapse/admin/v1/register', { body: req });
    expect(ok.status).toBe(200);
    expect(ok.body.user_id).toBe('@frank:localhost');
    const reused = await t.request('POST', '/_synapse/admin/v1/register', { body: { ...req, username: 'frank2' } });
    expect(reused.status).toBe(400);
  });

  it('covers user_type in the MAC and refuses a wrong MAC without creating the user', async () => {
    const n1 = (await t.request('GET', '/_synapse/admin/v1/register')).body.nonce as string;
    const typed = await t.request('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n1, username: 'gina', password: 'pw', user_type: 'bot', mac: mac(n1, 'gina', 'pw', false, 'bot') },
    });
    expect(typed.status).toBe(200);
    const before = userCount();
    const n2 = (await t.request('GET', '/_synapse/admin/v1/register')).body.nonce as string;
    const wrong = await t.request('POST', '/_synapse/admin/v1/register', {
      body: { nonce: n2, username: 'hank', password: 'pw', admin: true, mac: mac(n2, 'hank', 'pw', false) },
    });
    expect(wrong.status).toBe(403);
    expect(wrong.body.errcode).toBe('M_FORBIDDEN');
    expect(userCount()).toBe(before);
  });

  it('expires nonces after 60 s', async () => {
    let now = 1_000_000;
    const clock = { now: () => now, setTimeout: () => 0, clearTimeout: () => undefined };
    const fake = await startTestHomeserver({}, { clock });
    try {
      const nonce = (await fake.request('GET', '/_synapse/admin/v1/register')).body.nonce as string;
      now += 61_000;
      const res = await fake.request('POST', '/_synapse/admin/v1/register', {
        body: { nonce, username: 'ivy', password: 'pw', mac: mac(nonce, 'ivy', 'pw', false) },
      });
      expect(res.status).toBe(400);
    } finally {
      await fake.close();
    }
  });
});

describe('login and tokens', () => {
  it('logs in with identifier.user or user, and rejects wrong passwords', async () => {
    await t.register('jack', 'secret-1');
    const flows = await t.request('GET', '/_matrix/client/v3/login');
    expect(flows.body.flows).toContainEqual({ type: 'm.login.password' });
    const byIdentifier = await t.request('POST', '/_matrix/client/v3/login', {
      body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: 'jack' }, password: 'secret-1' },
    });
    expect(byIdentifier.status).toBe(200);
    expect(byIdentifier.body.user_id).toBe('@jack:localhost');
    const byUser = await t.request('POST', '/_matrix/client/r0/login', {
      body: { type: 'm.login.password', user: '@jack:localhost', password: 'secret-1' },
    });
    expect(byUser.status).toBe(200);
    const wrong = await t.request('POST', '/_matrix/client/v3/login', {
      body: { type: 'm.login.password', user: 'jack', password: 'nope' },
    });
    expect(wrong.status).toBe(403);
  });

  it('accepts the token in the header or the query, and refuses it after logout', async () => {
    const s = await t.register('kate');
    const viaQuery = await t.request('GET', `/_matrix/client/v3/account/whoami?access_token=${s.accessToken}`);
    expect(viaQuery.body.user_id).toBe(s.userId);
    const missing = await t.request('GET', '/_matrix/client/v3/account/whoami');
    expect(missing.status).toBe(401);
    expect(missing.body.errcode).toBe('M_MISSING_TOKEN');
    const bogus = await t.request('GET', '/_matrix/client/v3/account/whoami', { token: 'nope' });
    expect(bogus.status).toBe(401);
    expect(bogus.body.errcode).toBe('M_UNKNOWN_TOKEN');
    expect((await t.request('POST', '/_matrix/client/v3/logout', { token: s.accessToken })).status).toBe(200);
    const after = await t.request('GET', '/_matrix/client/v3/account/whoami', { token: s.accessToken });
    expect(after.body.errcode).toBe('M_UNKNOWN_TOKEN');
  });

  it('logs out every session with logout/all', async () => {
    const a = await t.register('liam', 'pw');
    const b = await t.request('POST', '/_matrix/client/v3/login', {
      body: { type: 'm.login.password', user: 'liam', password: 'pw' },
    });
    await t.request('POST', '/_matrix/client/v3/logout/all', { token: a.accessToken });
    for (const token of [a.accessToken, b.body.access_token]) {
      expect((await t.request('GET', '/_matrix/client/v3/account/whoami', { token })).status).toBe(401);
    }
  });
});

describe('openid', () => {
  it('issues tokens that userinfo resolves to the user, and nothing else', async () => {
    const s = await t.register('mia');
    const res = await t.request('POST', `/_matrix/client/v3/user/${encodeURIComponent(s.userId)}/openid/request_token`, {
      token: s.accessToken,
      body: {},
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ token_type: 'Bearer', matrix_server_name: 'localhost' });
    expect(res.body.expires_in).toBeGreaterThan(0);
    const info = await t.request(
      'GET',
      `/_matrix/federation/v1/openid/userinfo?access_token=${encodeURIComponent(res.body.access_token)}`,
    );
    expect(info.body).toEqual({ sub: s.userId });
    // An access token is not an OpenID token.
    const wrong = await t.request('GET', `/_matrix/federation/v1/openid/userinfo?access_token=${s.accessToken}`);
    expect(wrong.status).toBe(401);
    expect(wrong.body.errcode).toBe('M_UNKNOWN_TOKEN');
    const none = await t.request('GET', '/_matrix/federation/v1/openid/userinfo');
    expect(none.status).toBe(401);
    const other = await t.request('POST', '/_matrix/client/v3/user/%40someone%3Alocalhost/openid/request_token', {
      token: s.accessToken,
      body: {},
    });
    expect(other.status).toBe(403);
  });
});

describe('profile', () => {
  it('reads and sets the display name', async () => {
    const s = await t.register('nina');
    const path = `/_matrix/client/v3/profile/${encodeURIComponent(s.userId)}`;
    expect((await t.request('GET', path)).body).toEqual({ displayname: 'nina' });
    const put = await t.request('PUT', `${path}/displayname`, { token: s.accessToken, body: { displayname: 'Nina' } });
    expect(put.status).toBe(200);
    expect((await t.request('GET', `${path}/displayname`)).body).toEqual({ displayname: 'Nina' });
    expect((await t.request('GET', '/_matrix/client/v3/profile/%40ghost%3Alocalhost')).status).toBe(404);
  });
});
