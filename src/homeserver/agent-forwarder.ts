/**
 * The homeserver's one outbound call: handing an MSC4195 delegation to the lastwill agent over its
 * server-to-server endpoint, authenticated with the shared secret. The agent URL is the operator's
 * own configuration, so no address guard applies; the pool keeps the connection alive.
 */
import type { Logger } from 'pino';
import { Pool } from 'undici';

import type { ForwardedDelegation } from '../agent/requests.js';
import { fail } from '../lib/errors.js';

const TIMEOUT_MS = 5000;

export class AgentForwarder {
  private readonly pool: Pool;
  private readonly path: string;

  constructor(
    agentUrl: string,
    private readonly secret: string,
    private readonly log: Logger,
  ) {
    const url = new URL('/_lastwill/v1/delegations', agentUrl);
    this.pool = new Pool(url.origin, { connections: 8 });
    this.path = url.pathname;
  }

  /**
   * Resolves once the agent has stored the delegation. The agent's 4xx answers (for example a
   * homeserver it does not serve) become 400 M_INVALID_PARAM; an unreachable or failing agent is 503.
   */
  async forward(delegation: ForwardedDelegation): Promise<void> {
    let status: number;
    let text: string;
    try {
      const res = await this.pool.request({
        path: this.path,
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${this.secret}` },
        body: JSON.stringify(delegation),
        headersTimeout: TIMEOUT_MS,
        bodyTimeout: TIMEOUT_MS,
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'agent unreachable for a forwarded delegation');
      throw fail.unavailable('The delegate agent is unavailable');
    }
    if (status === 200) return;
    this.log.warn({ status }, 'agent refused a forwarded delegation');
    if (status >= 400 && status < 500) {
      throw fail.invalidParam(`The delegate agent refused the delegation: ${errorText(text)}`);
    }
    throw fail.unavailable('The delegate agent is unavailable');
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

function errorText(text: string): string {
  try {
    const parsed = JSON.parse(text) as { error?: unknown };
    if (typeof parsed.error === 'string') return parsed.error.slice(0, 200);
  } catch {
    // Not a Matrix error body; fall through.
  }
  return 'unknown error';
}
