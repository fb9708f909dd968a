/**
 * `lastwill all`: the homeserver and the agent in one process, wired to each other so the whole
 * flow works on embedded defaults: the agent treats the bundled homeserver as a named full-access
 * server at its loopback URL, and the homeserver forwards MSC4195 delegations to the agent with a
 * shared secret (generated per start unless configured).
 */
import { randomBytes } from 'node:crypto';

import type { Logger } from 'pino';

import { startAgent } from './agent/main.js';
import type { AgentConfig } from './config/agent.js';
import { localUrl, splitHostPort } from './config/common.js';
import type { HomeserverConfig } from './config/homeserver.js';
import { startHomeserver } from './homeserver/main.js';
import type { RunningService } from './lib/service.js';

/** Completes both configurations so each component knows the other. */
export function wireTogether(
  hs: HomeserverConfig,
  agent: AgentConfig,
  secret: string = randomBytes(32).toString('base64url'),
): { hs: HomeserverConfig; agent: AgentConfig } {
  const sharedSecret = hs.rtc.agent_secret ?? agent.homeserver_secret ?? secret;
  const agentUrl = hs.rtc.agent_url ?? localUrl(agent.bind);
  const hsUrl = localUrl(hs.bind);
  const { host: agentHost } = splitHostPort(agent.bind);
  const agentAddress = agentHost === '0.0.0.0' || agentHost === 'localhost' ? '127.0.0.1' : agentHost;
  return {
    hs: {
      ...hs,
      rtc: {
        ...hs.rtc,
        agent_url: agentUrl,
        agent_secret: sharedSecret,
        livekit_service_url: hs.rtc.livekit_service_url ?? agentUrl,
        sfu_urls: hs.rtc.sfu_urls.length > 0 ? hs.rtc.sfu_urls : [agent.livekit.url],
      },
      rate_limits: {
        ...hs.rate_limits,
        trusted_addresses: [...new Set([...hs.rate_limits.trusted_addresses, agentAddress])],
      },
    },
    agent: {
      ...agent,
      homeserver_secret: sharedSecret,
      full_access_homeservers:
        agent.full_access_homeservers.length > 0 ? agent.full_access_homeservers : [hs.server_name],
      cs_api_url_overrides: { [hs.server_name]: hsUrl, ...agent.cs_api_url_overrides },
      // The bundled homeserver serves federation's OpenID userinfo on its one listener, which
      // federation resolution of its name would not find (no TLS, no port 8448): say so explicitly.
      federation_url_overrides: { [hs.server_name]: hsUrl, ...agent.federation_url_overrides },
    },
  };
}

export async function startAll(
  hsConfig: HomeserverConfig,
  agentConfig: AgentConfig,
  log: Logger,
): Promise<RunningService> {
  const wired = wireTogether(hsConfig, agentConfig);
  const homeserver = await startHomeserver(wired.hs, log.child({ service: 'homeserver' }));
  let agent: RunningService;
  try {
    agent = await startAgent(
      wired.agent,
      log.child({ service: 'agent' }, { level: wired.agent.log_level }),
    );
  } catch (err) {
    await homeserver.close();
    throw err;
  }
  log.info({ homeserver: homeserver.url, agent: agent.url }, 'lastwill all: homeserver and agent running');
  return {
    url: homeserver.url,
    async close() {
      // The agent first: it must not call a homeserver that is already gone.
      await agent.close();
      await homeserver.close();
    },
  };
}
