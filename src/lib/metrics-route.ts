/** `GET /metrics` for a prom-client registry: the one handler the agent and the homeserver serve. */
import type { Registry } from 'prom-client';

import type { Handler } from './http.js';

export function metricsHandler(registry: Registry): Handler {
  return async () => ({ raw: await registry.metrics(), headers: { 'content-type': registry.contentType } });
}
