/**
 * What the agent and the homeserver share of their HTTP metrics: the `GET /metrics` handler for a
 * prom-client registry, and the two request families every listener of theirs records.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

import type { Handler, ResponseInfo } from './http.js';

export function metricsHandler(registry: Registry): Handler {
  return async () => ({ raw: await registry.metrics(), headers: { 'content-type': registry.contentType } });
}

/** `<prefix>_http_requests_total` and `<prefix>_http_request_duration_seconds`, fed by onResponse. */
export class HttpMetrics {
  readonly requests: Counter<'route' | 'method' | 'status'>;
  readonly duration: Histogram<'route'>;

  constructor(registry: Registry, opts: { prefix: string; durationHelp: string; buckets: number[] }) {
    this.requests = new Counter({
      name: `${opts.prefix}_http_requests_total`,
      help: 'HTTP requests by route pattern, method and status.',
      labelNames: ['route', 'method', 'status'],
      registers: [registry],
    });
    this.duration = new Histogram({
      name: `${opts.prefix}_http_request_duration_seconds`,
      help: opts.durationHelp,
      labelNames: ['route'],
      buckets: opts.buckets,
      registers: [registry],
    });
  }

  /** The HTTP app's onResponse hook. */
  readonly onResponse = ({ route, method, status, ms }: ResponseInfo): void => {
    this.requests.inc({ route, method, status: String(status) });
    this.duration.observe({ route }, ms / 1000);
  };
}
