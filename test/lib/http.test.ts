import { connect } from 'node:net';

import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';

import { fail } from '../../src/lib/errors.js';
import { createHttpApp, type HttpApp, jsonObject, parseWith, Router } from '../../src/lib/http.js';
import { silentLogger } from '../../src/lib/logger.js';

let app: HttpApp | undefined;
afterEach(async () => {
  await app?.close(1000);
  app = undefined;
});

async function serve(router: Router): Promise<string> {
  app = createHttpApp({ router, log: silentLogger(), maxBodyBytes: 1024 });
  return (await app.listen('127.0.0.1', 0)).url;
}

describe('Router', () => {
  it('matches literals, parameters, choices and an optional tail', () => {
    const r = new Router();
    const h = () => ({});
    r.add('PUT', '/_matrix/client/:v(r0|v3)/rooms/:roomId/state/:type/:stateKey?', h);
    const m = r.match('PUT', '/_matrix/client/v3/rooms/%21a%3Ab/state/m.x/');
    expect(m && 'params' in m && m.params).toEqual({ v: 'v3', roomId: '!a:b', type: 'm.x', stateKey: '' });
    const m2 = r.match('PUT', '/_matrix/client/r0/rooms/!a/state/m.x');
    expect(m2 && 'params' in m2 && m2.params.stateKey).toBe('');
    expect(r.match('PUT', '/_matrix/client/v4/rooms/!a/state/m.x/k')).toBeUndefined();
    expect(r.match('GET', '/_matrix/client/v3/rooms/!a/state/m.x/k')).toEqual({ allowed: ['PUT'] });
    expect(r.match('PUT', '/_matrix/client/v3/rooms/%E0%A4%A/state/m.x/k')).toBeUndefined();
  });

  it('refuses duplicate registrations', () => {
    const r = new Router();
    r.add('GET', '/a', () => ({}));
    expect(() => r.add('GET', '/a', () => ({}))).toThrow(/duplicate/);
  });
});

describe('createHttpApp', () => {
  it('renders Matrix errors for unknown paths, wrong methods, bad JSON and large bodies', async () => {
    const r = new Router();
    r.add('POST', '/echo', async (ctx) => ({ body: await jsonObject(ctx) }));
    r.add('GET', '/boom', () => {
      throw new Error('bug');
    });
    r.add('POST', '/boom-after-body', async (ctx) => {
      await jsonObject(ctx);
      throw new Error('bug');
    });
    r.add('GET', '/gone', () => {
      throw fail.notFound('nope');
    });
    const url = await serve(r);
    const res = async (path: string, init?: RequestInit) => {
      const resp = await fetch(url + path, init);
      return { status: resp.status, body: (await resp.json().catch(() => undefined)) as any };
    };
    expect(await res('/nowhere')).toEqual({ status: 404, body: { errcode: 'M_UNRECOGNIZED', error: expect.any(String) } });
    expect((await res('/echo')).status).toBe(405);
    expect((await res('/echo', { method: 'POST', body: '{bad' })).body.errcode).toBe('M_NOT_JSON');
    expect((await res('/echo', { method: 'POST', body: '[1]' })).body.errcode).toBe('M_NOT_JSON');
    expect((await res('/echo', { method: 'POST', body: 'x'.repeat(2048) })).status).toBe(413);
    expect(await res('/echo', { method: 'POST', body: '{"a":1}' })).toEqual({ status: 200, body: { a: 1 } });
    expect(await res('/gone')).toEqual({ status: 404, body: { errcode: 'M_NOT_FOUND', error: 'nope' } });
    expect((await res('/boom')).body.errcode).toBe('M_UNKNOWN');
    // Once its body is read, node marks the request destroyed; a bug after that is still a 500.
    expect(await res('/boom-after-body', { method: 'POST', body: '{}' })).toEqual({
      status: 500,
      body: { errcode: 'M_UNKNOWN', error: expect.any(String) },
    });
  });

  it('parseWith names the failing field and distinguishes missing from wrong', () => {
    const schema = z.object({ a: z.string(), b: z.number() });
    expect(() => parseWith(schema, { b: 1 })).toThrow(expect.objectContaining({ errcode: 'M_MISSING_PARAM' }));
    expect(() => parseWith(schema, { a: 1, b: 1 })).toThrow(expect.objectContaining({ errcode: 'M_BAD_JSON', message: expect.stringMatching(/^a: /) }));
    expect(parseWith(schema, { a: 'x', b: 2, extra: true })).toEqual({ a: 'x', b: 2 });
  });

  it('answers 503 once closing and lets in-flight requests finish', async () => {
    const r = new Router();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    r.add('GET', '/slow', async () => {
      await gate;
      return { body: { done: true } };
    });
    const url = await serve(r);
    const inFlight = fetch(`${url}/slow`).then((resp) => resp.json());
    await new Promise((resolve) => setTimeout(resolve, 50));
    const closing = app!.close(5000);
    release();
    expect(await inFlight).toEqual({ done: true });
    await closing;
    app = undefined;
  });

  it('does not wait for a connection that never sent a request', async () => {
    const url = new URL(await serve(new Router()));
    // What an HTTP client's aborted or speculative connect leaves behind.
    const unused = connect(Number(url.port), url.hostname);
    await new Promise((resolve) => unused.once('connect', resolve));
    const ended = new Promise((resolve) => unused.once('close', resolve));
    // Far beyond this test's timeout: only closing that connection lets close() return in time.
    await app!.close(600_000);
    app = undefined;
    await ended;
  }, 20_000);
});
