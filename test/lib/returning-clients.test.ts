import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';

import { waitFor } from '../e2e/support/proc.js';
import { createHttpApp, type HttpApp, Router } from '../../src/lib/http.js';
import { silentLogger } from '../../src/lib/logger.js';
import { type Connection, ReturningClients } from '../../src/lib/returning-clients.js';

describe('ReturningClients over real keep-alive connections', () => {
  let app: HttpApp | undefined;
  const clients: Client[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.destroy()));
    await app?.close(1000);
    app = undefined;
  });

  /** A server whose GET /expected answers what the tracker said while that request ran. */
  async function serve(): Promise<{ connect: () => { expected: () => Promise<boolean>; close: () => Promise<void> } }> {
    const returning = new ReturningClients(60_000);
    const router = new Router();
    router.add('GET', '/expected', () => ({ body: { expected: returning.anyExpected() } }));
    app = createHttpApp({ router, log: silentLogger(), returning });
    const { url } = await app.listen('127.0.0.1', 0);
    return {
      connect: () => {
        // One connection per client, kept alive between requests.
        const client = new Client(url, { pipelining: 1 });
        clients.push(client);
        return {
          expected: async () => {
            const res = await client.request({ method: 'GET', path: '/expected' });
            return ((await res.body.json()) as { expected: boolean }).expected;
          },
          close: () => client.destroy(),
        };
      },
    };
  }

  it('a lone client is never waited for: its own connection is busy with the request', async () => {
    const { connect } = await serve();
    const alone = connect();
    for (let i = 0; i < 3; i++) expect(await alone.expected()).toBe(false);
  });

  it('another client answered a moment ago and quiet since is expected, until it asks again', async () => {
    const { connect } = await serve();
    const a = connect();
    const b = connect();
    expect(await a.expected()).toBe(false);
    // a was answered and has not asked again.
    expect(await b.expected()).toBe(true);
    // Now b was answered and is quiet, a is asking: a sees b.
    expect(await a.expected()).toBe(true);
  });

  it('a client that closed its connection is not expected', async () => {
    const { connect } = await serve();
    const a = connect();
    const b = connect();
    await a.expected();
    await a.close();
    // The server learns of the close asynchronously.
    await waitFor('the closed connection to stop counting', async () => !(await b.expected()), { timeoutMs: 5000 });
  });
});

describe('ReturningClients window', () => {
  it('forgets answers older than the window', () => {
    let now = 0;
    const returning = new ReturningClients(2, () => now);
    const connection: Connection = { destroyed: false };
    returning.requestStarted(connection);
    returning.answeredOn(connection);
    now = 1.5;
    expect(returning.anyExpected()).toBe(true);
    now = 2.5;
    expect(returning.anyExpected()).toBe(false);
  });

  it('keeps only answers inside the window however many it has seen', () => {
    let now = 0;
    const returning = new ReturningClients(2, () => now);
    const connection: Connection = { destroyed: false };
    for (let i = 0; i < 10_000; i++) {
      now = i;
      returning.requestStarted(connection);
      returning.answeredOn(connection);
    }
    // The latest answer is inside the window; every older one is stale twice over (time, generation).
    expect(returning.anyExpected()).toBe(true);
    expect(returning.held).toBeLessThanOrEqual(3);
  });
});
