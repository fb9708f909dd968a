/**
 * The one HTTP client for homeserver calls: undici keep-alive pools with a per-origin connection
 * cap (so one slow homeserver cannot take every socket), fixed timeouts, the SSRF guard, and no
 * redirects. Origins the operator named go through a pool that may connect anywhere; every other
 * origin through one whose DNS lookup refuses non-public addresses. Origins come from
 * unauthenticated clients' server names, so undici's habit of dropping an origin's pool once its
 * last connection closes is what keeps the client's memory bounded: an origin costs nothing after
 * its idle timeout.
 */
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';

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
  /** How long an idle keep-alive connection (and so its origin's pool) is kept. */
  idleMs?: number;
}

/** Idle keep-alive connections are closed after this long (a homeserver's hint may shorten it). */
const DEFAULT_IDLE_MS = 30_000;

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
  /** For origins the operator named: any address. */
  private readonly named: Agent;
  /** For every other origin: public addresses only. */
  private readonly guarded: Agent;
  private closed = false;

  constructor(private readonly opts: OutboundHttpOptions) {
    const idleMs = opts.idleMs ?? DEFAULT_IDLE_MS;
    const pool = (lookup: OutboundGuard['lookup']) =>
      new Agent({
        connections: opts.maxConnectionsPerOrigin,
        keepAliveTimeout: idleMs,
        keepAliveMaxTimeout: idleMs,
        connect: {
          timeout: opts.timeoutMs,
          rejectUnauthorized: !opts.insecureTls,
          lookup,
        },
      });
    this.named = pool(opts.guard.namedLookup);
    this.guarded = pool(opts.guard.lookup);
  }

  /**
   * Sends one request; throws on transport errors, timeouts and refused destinations.
   *
   * Through undici's dispatch with a handler of its own rather than `request()`: the answers here
   * are tiny and read whole, and request()'s response stream, async resource and the async
   * iterator that drained it cost about a third of a call's CPU, which at a mass disconnect (one
   * send per participant) was a tenth of the agent's work.
   */
  request(url: URL, req: OutboundRequest): Promise<OutboundResponse> {
    if (this.closed) return Promise.reject(new Error('outbound client closed'));
    try {
      this.opts.guard.checkLiteral(url);
    } catch (err) {
      return Promise.reject(err);
    }
    const pool = this.opts.guard.isNamed(url.origin) ? this.named : this.guarded;
    const max = this.opts.maxBodyBytes ?? 64 * 1024;
    return new Promise<OutboundResponse>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let status = 0;
      let headers: OutboundResponse['headers'] = {};
      const handler: Dispatcher.DispatchHandler = {
        // Its presence is what marks this handler as one of undici's controller-style handlers.
        onRequestStart() {},
        onResponseStart(_controller, statusCode, responseHeaders) {
          status = statusCode;
          headers = responseHeaders;
        },
        onResponseData(controller, chunk) {
          size += chunk.length;
          if (size > max) controller.abort(new Error('response body too large'));
          else chunks.push(chunk);
        },
        onResponseEnd() {
          resolve({ status, headers, text: Buffer.concat(chunks).toString('utf8') });
        },
        onResponseError(_controller, err) {
          reject(err);
        },
      };
      pool.dispatch(
        {
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method: req.method,
          headers: { 'user-agent': 'lastwill-agent', ...req.headers },
          body: req.body ?? null,
          headersTimeout: this.opts.timeoutMs,
          bodyTimeout: this.opts.timeoutMs,
        },
        handler,
      );
    });
  }

  /** Resolves when requests to `url` would pass the SSRF guard; rejects otherwise. */
  admits(url: URL): Promise<void> {
    return this.opts.guard.admits(url);
  }

  /** Origins that currently hold a connection pool. */
  openOrigins(): string[] {
    return [...Object.keys(this.named.stats), ...Object.keys(this.guarded.stats)];
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([this.named, this.guarded].map((pool) => pool.destroy().catch(() => undefined)));
  }
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
