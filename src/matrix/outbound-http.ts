/**
 * The one HTTP client for homeserver calls: an undici Pool per origin (keep-alive, a per-origin
 * connection cap so one slow homeserver cannot take every socket), fixed timeouts, the SSRF guard
 * in the connection's DNS lookup, and no redirects.
 */
import type { Logger } from 'pino';
import { Pool } from 'undici';

import { OutboundGuard } from './outbound-guard.js';

export interface OutboundHttpOptions {
  guard: OutboundGuard;
  timeoutMs: number;
  maxConnectionsPerOrigin: number;
  /** Skip TLS verification (the operator's explicit, sentinel-guarded choice). */
  insecureTls: boolean;
  log: Logger;
  /** Largest response body read; homeserver answers here are tiny. */
  maxBodyBytes?: number;
}

export interface OutboundResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

export interface OutboundRequest {
  method: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
}

export class OutboundHttp {
  private readonly pools = new Map<string, Pool>();
  private closed = false;

  constructor(private readonly opts: OutboundHttpOptions) {}

  /** Sends one request; throws on transport errors, timeouts and refused destinations. */
  async request(url: URL, req: OutboundRequest): Promise<OutboundResponse> {
    this.opts.guard.checkLiteral(url.hostname);
    const pool = this.poolFor(url.origin);
    const res = await pool.request({
      path: `${url.pathname}${url.search}`,
      method: req.method,
      headers: { 'user-agent': 'lastwill-agent', ...req.headers },
      body: req.body ?? null,
      headersTimeout: this.opts.timeoutMs,
      bodyTimeout: this.opts.timeoutMs,
    });
    const text = await readLimited(res.body, this.opts.maxBodyBytes ?? 64 * 1024);
    return { status: res.statusCode, headers: res.headers, text };
  }

  private poolFor(origin: string): Pool {
    if (this.closed) throw new Error('outbound client closed');
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, {
        connections: this.opts.maxConnectionsPerOrigin,
        keepAliveTimeout: 30_000,
        connect: {
          timeout: this.opts.timeoutMs,
          rejectUnauthorized: !this.opts.insecureTls,
          lookup: this.opts.guard.lookup,
        },
      });
      this.pools.set(origin, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.allSettled(pools.map((p) => p.destroy()));
  }
}

async function readLimited(body: AsyncIterable<Buffer> & { destroy?(): unknown }, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) {
      body.destroy?.();
      throw new Error('response body too large');
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The parsed JSON object of a response, or undefined when it is not a JSON object. */
export function jsonObjectOf(res: OutboundResponse): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(res.text);
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}
