/** Load-generator plumbing: keep-alive undici pools and a bounded-concurrency runner. */
import { Pool } from 'undici';

export interface Reply {
  status: number;
  text: string;
}

export class Client {
  readonly pool: Pool;
  constructor(
    readonly origin: string,
    connections: number,
  ) {
    this.pool = new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000 });
  }

  async request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const res = await this.pool.request({
      path,
      method: method as 'GET',
      headers: payload !== undefined ? { 'content-type': 'application/json', ...headers } : headers,
      body: payload ?? null,
      headersTimeout: 120_000,
      bodyTimeout: 120_000,
    });
    return { status: res.statusCode, text: await res.body.text() };
  }

  async json(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<any> {
    const r = await this.request(method, path, body, headers);
    if (r.status !== 200) throw new Error(`${method} ${path}: ${r.status} ${r.text.slice(0, 300)}`);
    return JSON.parse(r.text);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Runs fn(i) for i in [0, count) with at most `concurrency` in flight; rejects on the first error. */
export async function runConcurrent(count: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined) {
      const i = next++;
      if (i >= count) return;
      try {
        await fn(i);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failed !== undefined) throw failed;
}

/** Runs fn repeatedly on `concurrency` workers until `durationMs` passes; returns completions. */
export async function runFor(durationMs: number, concurrency: number, fn: (worker: number, n: number) => Promise<void>): Promise<number> {
  const end = Date.now() + durationMs;
  let done = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      for (let n = 0; Date.now() < end; n++) {
        await fn(w, n);
        done++;
      }
    }),
  );
  return done;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
