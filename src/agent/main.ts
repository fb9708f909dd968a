/**
 * `lastwill agent`: builds the agent from a validated configuration, says loudly what is unsafe or
 * unimplemented in it, starts the engine and listens. Signals are handled by cli.ts, which calls
 * close(): jobs stay stored and nothing is sent on SIGTERM.
 */
import type { Logger } from 'pino';

import {
  type AgentConfig,
  DEV_LIVEKIT_KEY,
  DEV_LIVEKIT_SECRET,
  INSECURE_TLS_SENTINEL,
} from '../config/agent.js';
import { splitHostPort } from '../config/common.js';
import type { RunningService } from '../lib/service.js';
import { buildAgent } from './app.js';

/** Startup warnings for settings that are legal but dangerous or not implemented. */
export function configWarnings(config: AgentConfig, log: Logger): void {
  if (config.livekit.key === DEV_LIVEKIT_KEY && config.livekit.secret === DEV_LIVEKIT_SECRET) {
    log.warn(
      '!!! USING THE LIVEKIT DEV CREDENTIALS (devkey/secret): anyone can mint tokens and forge webhooks. ' +
        'Set LIVEKIT_KEY and LIVEKIT_SECRET (or livekit.key/livekit.secret) for any real deployment !!!',
    );
  }
  if (config.insecure_skip_verify_tls === INSECURE_TLS_SENTINEL) {
    log.warn(
      '!!! TLS CERTIFICATE VERIFICATION OF HOMESERVER CALLS IS DISABLED (insecure_skip_verify_tls). ' +
        'OpenID checks can be spoofed by anyone on the network path. Never use this in production !!!',
    );
  } else if (config.insecure_skip_verify_tls !== '') {
    log.warn('insecure_skip_verify_tls is set to something other than the sentinel value and is ignored');
  }
  if (config.full_access_homeservers.length === 0) {
    log.warn('no full_access_homeservers configured: rooms are not created and delegations are refused');
  }
  if (config.sanity_check_interval_seconds === 0) {
    log.warn('sanity_check_interval_seconds is 0: a missed webhook is never corrected by polling');
  }
}

export async function startAgent(config: AgentConfig, log: Logger): Promise<RunningService> {
  configWarnings(config, log);
  const agent = buildAgent({ config, log });
  try {
    await agent.start();
    const { host, port } = splitHostPort(config.bind);
    const { url } = await agent.app.listen(host, port);
    log.info({ url, livekitUrl: config.livekit.url, dataDir: config.data_dir }, 'agent listening');
    return { url, close: () => agent.close() };
  } catch (err) {
    await agent.close().catch(() => undefined);
    throw err;
  }
}
