// The homeserver side of the agent in-process: SSRF guard, discovery, OpenID over HTTP and TLS,
// and restart/send classification, against the loopback fake homeserver.
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

let hs: FakeHomeserver;
let tlsHs: FakeHomeserver;
const clients: OutboundHttp[] = [];

beforeAll(async () => {
  hs = await startFakeHomeserver();
  tlsHs = await startFakeHomeserver({ tls: true });
});
afterAll(async () => {
  await hs.close();
  await tlsHs.close();
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

function setup(
  overrides: Record<string, string>,
  opts: { insecure?: boolean; named?: string[]; idleMs?: number; maxBodyBytes?: number; directory?: Partial<DirectoryOptions> } = {},
) {
  const guard = OutboundGuard.fromConfig(
    { full_access_homeservers: opts.named ?? [], cs_api_url_overrides: overrides },
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
  const directory = new HomeserverDirectory({ http, overrides, cacheTtlMs: 60_000, ...opts.directory });
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
      expect(() => guard.checkLiteral(`[${address}]`)).toThrow(/not a public address/);
    },
  );

  it('lets a NAT64 answer for a public address through', async () => {
    const guard = new OutboundGuard([], answering('64:ff9b::808:808', 6));
    expect(await lookupVia(guard, 'dns64.test')).toBeNull();
    expect(() => guard.checkLiteral('[64:ff9b::808:808]')).not.toThrow();
  });


  it('refuses a server name that resolves to loopback unless it is named', async () => {
    const { openid } = setup({});
    hs.addOpenIdToken('tok-guard', '@a:evil.test');
    const before = hs.requests.length;
    await expect(openid.verify(`evil.test:${hs.port}`, 'tok-guard')).rejects.toMatchObject({ errcode: 'M_UNAUTHORIZED' });
    await expect(openid.verify(`127.0.0.1:${hs.port}`, 'tok-guard')).rejects.toMatchObject({ errcode: 'M_UNAUTHORIZED' });
    expect(hs.requests.length).toBe(before);
  });

  it('classifies a refused homeserver URL as unresolvable, without contacting it', async () => {
    const { actions } = setup({});
    const before = hs.requests.length;
    expect(await actions.perform('send', { serverName: `127.0.0.1:${hs.port}`, delayId: 'd-guard' })).toMatchObject({
      kind: 'unresolvable',
    });
    expect(hs.requests.length).toBe(before);
  });
});

describe('OpenID', () => {
  it('verifies through an override over plain http', async () => {
    const { openid } = setup({ 'hs.test': hs.url });
    hs.addOpenIdToken('tok-1', '@alice:hs.test');
    expect(await openid.verify('hs.test', 'tok-1')).toBe('@alice:hs.test');
  });

  it('rejects an unknown token and a sub of another server', async () => {
    const { openid } = setup({ 'hs.test': hs.url });
    hs.addOpenIdToken('tok-2', '@mallory:other.test');
    await expect(openid.verify('hs.test', 'nope')).rejects.toMatchObject({ status: 401, errcode: 'M_UNAUTHORIZED' });
    await expect(openid.verify('hs.test', 'tok-2')).rejects.toMatchObject({ status: 401 });
  });

  it.each(['hs.test/x', 'hs.test:1:2', 'user@hs.test', '', 'hs test', '[not-v6]:80'])(
    'rejects the malformed server name %j with 401 without any request',
    async (name) => {
      const { openid } = setup({ 'hs.test': hs.url, [name]: hs.url });
      hs.addOpenIdToken('tok-bad-name', `@a:${name}`);
      const before = hs.requests.length;
      await expect(openid.verify(name, 'tok-bad-name')).rejects.toMatchObject({ status: 401, errcode: 'M_UNAUTHORIZED' });
      expect(hs.requests.length).toBe(before);
    },
  );

  it('refuses a self-signed certificate unless verification is skipped', async () => {
    tlsHs.addOpenIdToken('tok-3', '@bob:tls.test');
    await expect(setup({ 'tls.test': tlsHs.url }).openid.verify('tls.test', 'tok-3')).rejects.toMatchObject({ status: 401 });
    expect(await setup({ 'tls.test': tlsHs.url }, { insecure: true }).openid.verify('tls.test', 'tok-3')).toBe('@bob:tls.test');
  });
});

describe('discovery', () => {
  it('reads m.homeserver.base_url of a named server and caches it', async () => {
    const { directory } = setup({}, { named: ['127.0.0.1'] });
    const plainName = `127.0.0.1:${hs.port}`;
    hs.setClientWellKnown({ 'm.homeserver': { base_url: `${hs.url}/` } });
    // The .well-known is fetched over https, which the plain fake does not speak: unresolvable.
    await expect(directory.clientBaseUrl(plainName)).rejects.toThrow();
    hs.setClientWellKnown(undefined);
    const tls = setup({}, { named: ['127.0.0.1'], insecure: true }).directory;
    const name = `127.0.0.1:${tlsHs.port}`;
    expect(await tls.clientBaseUrl(name)).toBe(tlsHs.url);
    const count = tlsHs.requests.filter((r) => r.path === '/.well-known/matrix/client').length;
    await tls.clientBaseUrl(name);
    expect(tlsHs.requests.filter((r) => r.path === '/.well-known/matrix/client').length).toBe(count);
  });

  const wellKnownCount = () => tlsHs.requests.filter((r) => r.path === '/.well-known/matrix/client').length;
  /** A directory over https to the TLS fake, for any of `names` (all resolve to loopback). */
  const tlsDirectory = (names: string[], options: Partial<DirectoryOptions> = {}) =>
    setup({}, { named: names, insecure: true, directory: options }).directory;

  it('shares one in-flight .well-known lookup among concurrent callers', async () => {
    const directory = tlsDirectory(['shared.test']);
    const before = wellKnownCount();
    const bases = await Promise.all(Array.from({ length: 20 }, () => directory.clientBaseUrl(`shared.test:${tlsHs.port}`)));
    expect(new Set(bases)).toEqual(new Set([tlsHs.url]));
    expect(wellKnownCount()).toBe(before + 1);
  });

  it('remembers a failed lookup briefly, then asks again', async () => {
    let now = 1_000_000;
    const directory = tlsDirectory(['broken.test'], { now: () => now, failureTtlMs: 60_000 });
    const name = `broken.test:${tlsHs.port}`;
    tlsHs.setClientWellKnown({ 'm.homeserver': {} });
    try {
      const before = wellKnownCount();
      await expect(directory.clientBaseUrl(name)).rejects.toThrow(/base_url/);
      now += 59_000;
      await expect(directory.clientBaseUrl(name)).rejects.toThrow(/base_url/);
      expect(wellKnownCount()).toBe(before + 1);
      tlsHs.setClientWellKnown(undefined);
      now += 2_000;
      expect(await directory.clientBaseUrl(name)).toBe(tlsHs.url);
      expect(wellKnownCount()).toBe(before + 2);
    } finally {
      tlsHs.setClientWellKnown(undefined);
    }
  });

  it('keeps a bounded cache, dropping the least recently used server', async () => {
    const names = ['a.test', 'b.test', 'c.test'];
    const directory = tlsDirectory(names, { maxEntries: 2 });
    const [a, b, c] = names.map((n) => `${n}:${tlsHs.port}`) as [string, string, string];
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
});

describe('restart/send classification', () => {
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
    const { http } = setup({}, { named: ['127.0.0.1'] });
    const res = await http.request(url, { method: 'POST', body: '{}' });
    expect(res).toMatchObject({ status: 500, headers: { 'x-extra': 'yes' } });
    expect(JSON.parse(res.text)).toEqual({ errcode: 'M_UNKNOWN', error });
    const small = setup({}, { named: ['127.0.0.1'], maxBodyBytes: 1000 }).http;
    await expect(small.request(url, { method: 'POST', body: '{}' })).rejects.toThrow('response body too large');
  });


  it('drops an origin once its connections have been idle', async () => {
    const { http } = setup({}, { named: ['127.0.0.1'], idleMs: 200 });
    const res = await http.request(new URL('/.well-known/matrix/server', hs.url), { method: 'GET' });
    expect(res.status).toBe(404);
    expect(http.openOrigins()).toEqual([hs.url]);
    await waitFor('the idle origin to be dropped', () => http.openOrigins().length === 0, { timeoutMs: 10_000, intervalMs: 50 });
  });
});
