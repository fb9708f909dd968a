// The homeserver side of the agent in-process: SSRF guard, discovery, OpenID over TLS, and
// restart/send classification, against the loopback fake homeserver (federation over TLS at its
// server name, the client API on a separate plain listener).
import type { lookup as dnsLookup } from 'node:dns';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { silentLogger } from '../../src/lib/logger.js';
import { DelayedEventsClient } from '../../src/matrix/delayed-events-client.js';
import { type DirectoryOptions, HomeserverDirectory } from '../../src/matrix/discovery.js';
import { OpenIdVerifier } from '../../src/matrix/openid.js';
import { isPublicAddress, OutboundGuard } from '../../src/matrix/outbound-guard.js';
import { OutboundHttp } from '../../src/matrix/outbound-http.js';
import { waitFor } from '../e2e/support/proc.js';
import { type FakeHomeserver, startFakeHomeserver } from '../fakes/fake-homeserver.js';

describe('isPublicAddress', () => {
  it.each([
    '127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0',
    '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fe80::1%eth0', 'fd00::1', 'ff02::1',
    '2001:db8::1', 'not-an-ip',
    // IPv4-mapped, in every spelling
    '::ffff:127.0.0.1', '::FFFF:7F00:1', '::ffff:10.0.0.1', '::ffff:7f00:1', '::ffff:0:0', '0:0:0:0:0:ffff:7f00:1',
    // SIIT (IPv4-translated) and IPv4-compatible
    '::ffff:0:7f00:1', '::ffff:0:127.0.0.1', '::7f00:1', '::127.0.0.1', '::a9fe:a9fe',
    // NAT64 well-known prefix embedding a private address; local-use and unassigned NAT64 space
    '64:ff9b::a9fe:a9fe', '64:ff9b::169.254.169.254', '64:ff9b::a00:1', '64:ff9b::7f00:1',
    '64:ff9b:1::808:808', '64:ff9b:0:1::808:808',
    // 6to4 and Teredo are refused whatever they embed
    '2002:7f00:1::1', '2002:a9fe:a9fe::', '2002:808:808::1', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001::1',
  ])('%s is not public', (ip) => expect(isPublicAddress(ip)).toBe(false));

  it.each([
    '1.1.1.1', '93.184.216.34', '2606:4700:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808', '64:ff9b::1.1.1.1',
  ])('%s is public', (ip) => expect(isPublicAddress(ip)).toBe(true));
});

/** Resolves every name to loopback, as a hostile DNS answer would. */
const toLoopback = ((_host: string, _opts: unknown, cb: (e: null, a: Array<{ address: string; family: number }>) => void) =>
  cb(null, [{ address: '127.0.0.1', family: 4 }])) as unknown as typeof dnsLookup;

/** Federation over TLS at its server name, the client API on a separate plain listener. */
let hs: FakeHomeserver;
const clients: OutboundHttp[] = [];

beforeAll(async () => {
  hs = await startFakeHomeserver();
});
afterAll(async () => {
  await hs.close();
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

function setup(
  overrides: Record<string, string>,
  opts: {
    insecure?: boolean;
    named?: string[];
    federationOverrides?: Record<string, string>;
    idleMs?: number;
    maxBodyBytes?: number;
    directory?: Partial<DirectoryOptions>;
  } = {},
) {
  const federationOverrides = opts.federationOverrides ?? {};
  const guard = OutboundGuard.fromConfig(
    { full_access_homeservers: opts.named ?? [], cs_api_url_overrides: overrides, federation_url_overrides: federationOverrides },
    toLoopback,
  );
  const http = new OutboundHttp({
    guard,
    timeoutMs: 2000,
    maxConnectionsPerOrigin: 4,
    insecureTls: opts.insecure ?? false,
    log: silentLogger(),
    ...(opts.idleMs !== undefined ? { idleMs: opts.idleMs } : {}),
    ...(opts.maxBodyBytes !== undefined ? { maxBodyBytes: opts.maxBodyBytes } : {}),
  });
  clients.push(http);
  const directory = new HomeserverDirectory({ http, overrides, federationOverrides, cacheTtlMs: 60_000, ...opts.directory });
  return {
    http,
    directory,
    openid: new OpenIdVerifier({ http, directory, log: silentLogger() }),
    actions: new DelayedEventsClient({ http, directory }),
  };
}

describe('outbound guard', () => {
  const answering = (address: string, family: number) =>
    ((_host: string, _opts: unknown, cb: (e: null, a: Array<{ address: string; family: number }>) => void) =>
      cb(null, [{ address, family }])) as unknown as typeof dnsLookup;
  const lookupVia = (guard: OutboundGuard, host: string) =>
    new Promise<unknown>((resolve) => guard.lookup(host, {}, (err) => resolve(err)));

  it.each(['64:ff9b::a9fe:a9fe', '::ffff:0:a00:1', '::7f00:1', '2002:a9fe:a9fe::1'])(
    'refuses a DNS answer of %s and the literal itself',
    async (address) => {
      const guard = new OutboundGuard([], answering(address, 6));
      expect(await lookupVia(guard, 'evil.test')).toMatchObject({ code: 'ERR_LASTWILL_OUTBOUND_REFUSED' });
      expect(() => guard.checkLiteral(new URL(`https://[${address}]/`))).toThrow(/not a public address/);
    },
  );

  it('lets a NAT64 answer for a public address through', async () => {
    const guard = new OutboundGuard([], answering('64:ff9b::808:808', 6));
    expect(await lookupVia(guard, 'dns64.test')).toBeNull();
    expect(() => guard.checkLiteral(new URL('https://[64:ff9b::808:808]/'))).not.toThrow();
  });

  it('names exactly the origins the operator named: scheme, host and port', () => {
    const guard = OutboundGuard.fromConfig({
      full_access_homeservers: ['*', 'example.com', 'ported.example:8009', '[::1]:99'],
      cs_api_url_overrides: { 'internal.example': 'http://127.0.0.1:8008/' },
      federation_url_overrides: { 'fed.example': 'https://10.0.0.7:8448' },
    });
    for (const origin of [
      'https://example.com', // .well-known
      'https://example.com:8448', // federation's default port
      'https://ported.example:8009',
      'https://[::1]:99',
      'http://127.0.0.1:8008',
      'https://internal.example',
      'https://internal.example:8448',
      'https://10.0.0.7:8448',
      'https://fed.example',
    ]) {
      expect([origin, guard.isNamed(origin)]).toEqual([origin, true]);
    }
    for (const origin of [
      'http://127.0.0.1:8009', // another port of a named host
      'https://127.0.0.1:8008', // another scheme
      'http://127.0.0.1',
      'https://example.com:8443',
      'http://example.com',
      'https://ported.example',
      'https://ported.example:8448',
      'https://10.0.0.7',
    ]) {
      expect([origin, guard.isNamed(origin)]).toEqual([origin, false]);
    }
    expect(() => guard.checkLiteral(new URL('http://127.0.0.1:8008/x'))).not.toThrow();
    expect(() => guard.checkLiteral(new URL('http://127.0.0.1:8009/x'))).toThrow(/not a public address/);
  });

  it('refuses a server name that resolves to loopback unless it is named', async () => {
    const { openid } = setup({});
    hs.addOpenIdToken('tok-guard', '@a:evil.test');
    const before = hs.requests.length;
    await expect(openid.verify(`evil.test:${hs.federationPort}`, 'tok-guard')).rejects.toMatchObject({ errcode: 'M_UNAUTHORIZED' });
    await expect(openid.verify(`127.0.0.1:${hs.federationPort}`, 'tok-guard')).rejects.toMatchObject({ errcode: 'M_UNAUTHORIZED' });
    expect(hs.requests.length).toBe(before);
  });

  it('refuses another port of a host that is named only on one port', async () => {
    // The client listener's host and port are named by the override; the federation port is not.
    const { openid, http } = setup({ 'cs.test': hs.url }, { insecure: true });
    hs.addOpenIdToken('tok-port', `@a:127.0.0.1:${hs.federationPort}`);
    const before = hs.requests.length;
    await expect(openid.verify(`127.0.0.1:${hs.federationPort}`, 'tok-port')).rejects.toMatchObject({ errcode: 'M_UNAUTHORIZED' });
    await expect(http.request(new URL('/x', `http://localhost:${hs.port}`), { method: 'GET' })).rejects.toMatchObject({
      code: 'ERR_LASTWILL_OUTBOUND_REFUSED',
    });
    expect(hs.requests.length).toBe(before);
  });

  it('classifies a refused homeserver URL as unresolvable, without contacting it', async () => {
    const { actions } = setup({});
    const before = hs.requests.length;
    expect(await actions.perform('send', { serverName: `127.0.0.1:${hs.federationPort}`, delayId: 'd-guard' })).toMatchObject({
      kind: 'unresolvable',
    });
    expect(hs.requests.length).toBe(before);
  });
});

describe('OpenID', () => {
  it('verifies at the federation listener of the server name, over TLS', async () => {
    const { openid } = setup({}, { named: [hs.serverName], insecure: true });
    hs.addOpenIdToken('tok-1', `@alice:${hs.serverName}`);
    expect(await openid.verify(hs.serverName, 'tok-1')).toBe(`@alice:${hs.serverName}`);
    expect(hs.userInfoRequests().at(-1)).toMatchObject({ listener: 'federation', status: 200 });
  });

  it('never moves the check to the client API named by a CS-API override', async () => {
    const { openid } = setup({ [hs.serverName]: hs.url }, { insecure: true });
    hs.addOpenIdToken('tok-cs', `@carol:${hs.serverName}`);
    const before = hs.requests.length;
    expect(await openid.verify(hs.serverName, 'tok-cs')).toBe(`@carol:${hs.serverName}`);
    expect(hs.requests.slice(before).map((r) => r.listener)).toEqual(['federation']);
  });

  it('follows an explicit federation override', async () => {
    // The federation listener is reached through a name that federation resolution would not find.
    const { openid } = setup({}, { federationOverrides: { 'fed.test': hs.federationUrl }, insecure: true });
    hs.addOpenIdToken('tok-fed', '@dave:fed.test');
    expect(await openid.verify('fed.test', 'tok-fed')).toBe('@dave:fed.test');
  });

  it('rejects an unknown token and a sub of another server', async () => {
    const { openid } = setup({}, { named: [hs.serverName], insecure: true });
    hs.addOpenIdToken('tok-2', '@mallory:other.test');
    await expect(openid.verify(hs.serverName, 'nope')).rejects.toMatchObject({ status: 401, errcode: 'M_UNAUTHORIZED' });
    await expect(openid.verify(hs.serverName, 'tok-2')).rejects.toMatchObject({ status: 401 });
  });

  it.each(['hs.test/x', 'hs.test:1:2', 'user@hs.test', '', 'hs test', '[not-v6]:80'])(
    'rejects the malformed server name %j with 401 without any request',
    async (name) => {
      const { openid } = setup({ 'hs.test': hs.url }, { federationOverrides: { 'hs.test': hs.federationUrl, [name]: hs.federationUrl } });
      hs.addOpenIdToken('tok-bad-name', `@a:${name}`);
      const before = hs.requests.length;
      await expect(openid.verify(name, 'tok-bad-name')).rejects.toMatchObject({ status: 401, errcode: 'M_UNAUTHORIZED' });
      expect(hs.requests.length).toBe(before);
    },
  );

  it('refuses a self-signed certificate unless verification is skipped', async () => {
    hs.addOpenIdToken('tok-3', `@bob:${hs.serverName}`);
    await expect(setup({}, { named: [hs.serverName] }).openid.verify(hs.serverName, 'tok-3')).rejects.toMatchObject({ status: 401 });
    expect(await setup({}, { named: [hs.serverName], insecure: true }).openid.verify(hs.serverName, 'tok-3')).toBe(`@bob:${hs.serverName}`);
  });
});

describe('discovery', () => {
  const wellKnownCount = () => hs.requests.filter((r) => r.path === '/.well-known/matrix/client').length;
  /**
   * A directory over https to the fake's federation listener, for any of `names` (all resolve to
   * loopback); the client listener the .well-known announces is named too (by an override of
   * another server), as the guard lets a .well-known point only at named or public origins.
   */
  const tlsDirectory = (names: string[], options: Partial<DirectoryOptions> = {}) =>
    setup({ 'client-listener.test': hs.url }, { named: names, insecure: true, directory: options }).directory;
  const announceClientApi = () => hs.setClientWellKnown({ 'm.homeserver': { base_url: `${hs.url}/` } });
  afterEach(() => hs.setClientWellKnown(undefined));

  it('reads m.homeserver.base_url at the server name and caches it', async () => {
    announceClientApi();
    const directory = tlsDirectory([hs.serverName]);
    expect(await directory.clientBaseUrl(hs.serverName)).toBe(hs.url);
    const count = wellKnownCount();
    await directory.clientBaseUrl(hs.serverName);
    expect(wellKnownCount()).toBe(count);
  });

  it('refuses a .well-known that announces an unnamed private origin', async () => {
    announceClientApi();
    const directory = setup({}, { named: [hs.serverName], insecure: true }).directory;
    await expect(directory.clientBaseUrl(hs.serverName)).rejects.toMatchObject({ code: 'ERR_LASTWILL_OUTBOUND_REFUSED' });
    const viaDns = setup({}, { named: [hs.serverName], insecure: true }).directory;
    hs.setClientWellKnown({ 'm.homeserver': { base_url: `http://internal.test:${hs.port}` } });
    await expect(viaDns.clientBaseUrl(hs.serverName)).rejects.toMatchObject({ code: 'ERR_LASTWILL_OUTBOUND_REFUSED' });
  });

  it('finds no client API where the server name serves no .well-known (as a Synapse federation listener)', async () => {
    await expect(tlsDirectory([hs.serverName]).clientBaseUrl(hs.serverName)).rejects.toThrow(/404/);
  });

  it('shares one in-flight .well-known lookup among concurrent callers', async () => {
    announceClientApi();
    const name = `shared.test:${hs.federationPort}`;
    const directory = tlsDirectory([name]);
    const before = wellKnownCount();
    const bases = await Promise.all(Array.from({ length: 20 }, () => directory.clientBaseUrl(name)));
    expect(new Set(bases)).toEqual(new Set([hs.url]));
    expect(wellKnownCount()).toBe(before + 1);
  });

  it('remembers a failed lookup briefly, then asks again', async () => {
    let now = 1_000_000;
    const name = `broken.test:${hs.federationPort}`;
    const directory = tlsDirectory([name], { now: () => now, failureTtlMs: 60_000 });
    hs.setClientWellKnown({ 'm.homeserver': {} });
    const before = wellKnownCount();
    await expect(directory.clientBaseUrl(name)).rejects.toThrow(/base_url/);
    now += 59_000;
    await expect(directory.clientBaseUrl(name)).rejects.toThrow(/base_url/);
    expect(wellKnownCount()).toBe(before + 1);
    announceClientApi();
    now += 2_000;
    expect(await directory.clientBaseUrl(name)).toBe(hs.url);
    expect(wellKnownCount()).toBe(before + 2);
  });

  it('keeps a bounded cache, dropping the least recently used server', async () => {
    announceClientApi();
    const [a, b, c] = ['a.test', 'b.test', 'c.test'].map((n) => `${n}:${hs.federationPort}`) as [string, string, string];
    const directory = tlsDirectory([a, b, c], { maxEntries: 2 });
    for (const name of [a, b, a, c]) await directory.clientBaseUrl(name);
    const before = wellKnownCount();
    await directory.clientBaseUrl(a);
    await directory.clientBaseUrl(c);
    expect(wellKnownCount()).toBe(before);
    await directory.clientBaseUrl(b);
    expect(wellKnownCount()).toBe(before + 1);
  });

  it('uses an explicit port or IP literal as the federation origin', async () => {
    const { directory } = setup({});
    expect(await directory.federationOrigin('example.com:8449')).toBe('https://example.com:8449');
    expect(await directory.federationOrigin('10.0.0.1')).toBe('https://10.0.0.1:8448');
    expect(await directory.federationOrigin('[::1]:99')).toBe('https://[::1]:99');
  });

  it('resolves federation independently of the CS-API override', async () => {
    const { directory } = setup({ 'example.com:8449': 'http://10.0.0.9:8008' });
    expect(await directory.federationOrigin('example.com:8449')).toBe('https://example.com:8449');
    expect(await directory.clientBaseUrl('example.com:8449')).toBe('http://10.0.0.9:8008');
  });
});

describe('restart/send/cancel classification', () => {
  const target = (delayId: string, scopedToken?: string) => ({
    serverName: 'hs.test',
    delayId,
    ...(scopedToken ? { scopedToken } : {}),
  });

  it('posts {} to the path form without Authorization and escapes the delay id', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    expect(await actions.perform('restart', target('a/b c'))).toEqual({ kind: 'ok' });
    const [req] = hs.actionRequests('a/b c', 'restart');
    expect(req).toMatchObject({ form: 'path', body: '{}' });
    expect(req!.path).toContain('/delayed_events/a%2Fb%20c/restart');
    expect(req!.authorization).toBeUndefined();
  });

  it.each([
    [{ status: 404, body: { errcode: 'M_NOT_FOUND', error: 'x' } }, { kind: 'not_found' }],
    [{ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' }, headers: { 'retry-after': '3' } }, { kind: 'rate_limited', retryAfterMs: 3000 }],
    [{ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 1500 } }, { kind: 'rate_limited', retryAfterMs: 2000 }],
    [{ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' } }, { kind: 'rate_limited' }],
    [{ status: 500 }, { kind: 'transient', detail: 'HTTP 500' }],
    [{ status: 302 }, { kind: 'transient', detail: 'HTTP 302' }],
    [{ status: 204 }, { kind: 'ok' }],
  ] as const)('%o → %o', async (answer, outcome) => {
    const { actions } = setup({ 'hs.test': hs.url });
    const id = `cls-${Math.random()}`;
    hs.script(id, 'send', [answer]);
    expect(await actions.perform('send', target(id))).toEqual(outcome);
  });

  it('takes a cancel of an event already sent (409, as the latest MSC answers) for done, and a send 409 for a failure', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    const conflict = { status: 409, body: { errcode: 'M_UNKNOWN', error: 'already sent' } };
    hs.script('sent-already', 'cancel', [conflict]);
    expect(await actions.perform('cancel', target('sent-already'))).toEqual({ kind: 'not_found' });
    expect(hs.actionRequests('sent-already', 'cancel')[0]!.path).toContain('/delayed_events/sent-already/cancel');
    hs.script('conflict', 'send', [conflict]);
    expect(await actions.perform('send', target('conflict'))).toEqual({ kind: 'transient', detail: 'HTTP 409' });
  });

  it('reads an HTTP-date Retry-After', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    hs.script('date', 'send', [{ status: 429, headers: { 'retry-after': new Date(Date.now() + 10_000).toUTCString() } }]);
    const outcome = await actions.perform('send', target('date'));
    expect(outcome.kind).toBe('rate_limited');
    expect((outcome as { retryAfterMs: number }).retryAfterMs).toBeGreaterThan(5000);
  });

  it('times out a hanging homeserver as transient', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    hs.script('hang', 'restart', ['hang']);
    expect((await actions.perform('restart', target('hang'))).kind).toBe('transient');
  });

  it('sends the scoped token and falls back to the action-in-body form on M_UNRECOGNIZED', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    hs.script('scoped', 'restart', [{ status: 404, body: { errcode: 'M_UNRECOGNIZED', error: 'no' } }]);
    expect(await actions.perform('restart', target('scoped', 'syt_scoped'))).toEqual({ kind: 'ok' });
    const reqs = hs.actionRequests('scoped', 'restart');
    expect(reqs.map((r) => r.form)).toEqual(['path', 'body']);
    expect(reqs.every((r) => r.authorization === 'Bearer syt_scoped')).toBe(true);
    expect(JSON.parse(reqs[1]!.body)).toEqual({ action: 'restart' });
  });

  it('cancels without the scoped token, which does not cover a cancel', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    expect(await actions.perform('cancel', target('scoped-cancel', 'scoped-token-1'))).toEqual({ kind: 'ok' });
    const [req] = hs.actionRequests('scoped-cancel', 'cancel');
    expect(req).toMatchObject({ form: 'path', body: '{}' });
    expect(req!.authorization).toBeUndefined();
  });

  it('drops an expired scoped token and goes on with the unauthenticated path form', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    hs.expireToken('syt_expired');
    expect(await actions.perform('send', target('expired', 'syt_expired'))).toEqual({ kind: 'ok' });
    const reqs = hs.actionRequests('expired', 'send');
    expect(reqs.map((r) => [r.form, r.authorization, r.status])).toEqual([
      ['path', 'Bearer syt_expired', 401],
      ['path', undefined, 200],
    ]);
  });

  it('does not retry a 401 without a scoped token, nor one that is not about the token', async () => {
    const { actions } = setup({ 'hs.test': hs.url });
    hs.script('plain401', 'send', [{ status: 401, body: { errcode: 'M_UNKNOWN_TOKEN', error: 'x' } }]);
    expect(await actions.perform('send', target('plain401'))).toEqual({ kind: 'transient', detail: 'HTTP 401' });
    hs.script('forbidden', 'send', [{ status: 403, body: { errcode: 'M_FORBIDDEN', error: 'x' } }]);
    expect(await actions.perform('send', target('forbidden', 'syt_ok'))).toEqual({ kind: 'transient', detail: 'HTTP 403' });
    expect(hs.actionRequests('plain401')).toHaveLength(1);
    expect(hs.actionRequests('forbidden')).toHaveLength(1);
  });

  it('reports transport errors as transient', async () => {
    const { actions } = setup({ 'dead.test': 'http://127.0.0.1:1' });
    expect((await actions.perform('send', { serverName: 'dead.test', delayId: 'x' })).kind).toBe('transient');
  });
});

describe('outbound connections', () => {
  it('reads an answer whole, and refuses one larger than the limit', async () => {
    const id = `big-${Math.random()}`;
    const error = 'x'.repeat(2000);
    hs.script(id, 'send', [{ status: 500, body: { errcode: 'M_UNKNOWN', error }, headers: { 'x-extra': 'yes' } }], { status: 500, body: { errcode: 'M_UNKNOWN', error } });
    const url = new URL(`/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${id}/send`, hs.url);
    const { http } = setup({ 'hs.test': hs.url });
    const res = await http.request(url, { method: 'POST', body: '{}' });
    expect(res).toMatchObject({ status: 500, headers: { 'x-extra': 'yes' } });
    expect(JSON.parse(res.text)).toEqual({ errcode: 'M_UNKNOWN', error });
    const small = setup({ 'hs.test': hs.url }, { maxBodyBytes: 1000 }).http;
    await expect(small.request(url, { method: 'POST', body: '{}' })).rejects.toThrow('response body too large');
  });


  it('drops an origin once its connections have been idle', async () => {
    const { http } = setup({ 'hs.test': hs.url }, { idleMs: 200 });
    const res = await http.request(new URL('/.well-known/matrix/server', hs.url), { method: 'GET' });
    expect(res.status).toBe(404);
    expect(http.openOrigins()).toEqual([hs.url]);
    await waitFor('the idle origin to be dropped', () => http.openOrigins().length === 0, { timeoutMs: 10_000, intervalMs: 50 });
  });
});
