// The soak's system under test, all real: lastwill's homeserver or Synapse (restartable), a LiveKit
// server in a network namespace, and the agent as one process (single-node mode) or three replicas on a real
// Redis behind a round-robin balancer (cluster mode). The agent's three connections go through the
// fault proxies (proxies.ts). LiveKit also reports to a second webhook receiver that no fault
// touches: the checker's view of who was really in the calls.
import { randomBytes } from 'node:crypto';

import { Timeline } from '../../scripts/lib/timeline.js';
import { freeTcpPort } from '../e2e/support/proc.js';
import {
  type AgentCluster,
  type AgentProcess,
  createAgent,
  createAgentCluster,
  type MatrixServer,
  startBundledHomeserver,
  synapseServer,
} from '../e2e/support/flow.js';
import { type LiveKitServer, startLiveKit } from '../e2e/support/livekit.js';
import { startSynapse } from '../e2e/support/synapse.js';
import { startWebhookSink, type WebhookSink } from '../e2e/support/webhook-sink.js';
import { type HomeserverProxy, startHomeserverProxy, startTcpProxy, startWebhookProxy, type TcpProxy, type WebhookProxy } from './proxies.js';

export type SoakMode = 'single' | 'cluster';
export type SoakHomeserver = 'bundled' | 'synapse';

/** The lease in cluster mode; a paused replica is held past it. */
export const SOAK_LEASE_MS = 2000;
/** The sanity poll: a lost webhook is caught within about this (and the checker's bound allows it). */
export const SOAK_SANITY_S = 5;

export interface SoakWorld {
  mode: SoakMode;
  hs: MatrixServer & Required<Pick<MatrixServer, 'kill' | 'start'>>;
  lk: LiveKitServer;
  /** LiveKit's own report, untouched by faults. */
  truth: WebhookSink;
  webhooks: WebhookProxy;
  homeserverLink: HomeserverProxy;
  livekitLink: TcpProxy;
  /** What clients talk to: the agent, or the balancer in front of the replicas. */
  agent: AgentProcess;
  /** The agent processes: one, or the replicas. */
  agents: AgentProcess[];
  cluster: AgentCluster | undefined;
  timeline: Timeline;
  logs(): string;
  close(): Promise<void>;
}

/** A homeserver the soak can kill and start again, on the same database. */
async function startHomeserver(kind: SoakHomeserver, agentUrl: string, agentSecret: string): Promise<SoakWorld['hs']> {
  if (kind === 'bundled') {
    const hs = await startBundledHomeserver({ agentUrl, agentSecret, livekitServiceUrl: agentUrl });
    if (!hs.kill || !hs.start) throw new Error('the bundled homeserver cannot be restarted');
    return hs as SoakWorld['hs'];
  }
  // Synapse as deployed: OpenID userinfo on its TLS federation listener (the agent reaches it
  // directly), the client API (restart/send) through the fault proxy.
  const hs = synapseServer(await startSynapse());
  return hs as SoakWorld['hs'];
}

export async function startSoakWorld(mode: SoakMode, homeserver: SoakHomeserver, rng: () => number): Promise<SoakWorld> {
  const cleanups: Array<() => Promise<unknown> | unknown> = [];
  const close = async () => {
    while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
  };
  try {
    const agentPort = await freeTcpPort();
    const agentUrl = `http://127.0.0.1:${agentPort}`;
    const agentSecret = randomBytes(24).toString('hex');
    const hs = await startHomeserver(homeserver, agentUrl, agentSecret);
    cleanups.push(() => hs.stop());
    const homeserverLink = await startHomeserverProxy(await freeTcpPort(), hs.baseUrl);
    cleanups.push(() => homeserverLink.close());

    const truth = await startWebhookSink();
    cleanups.push(() => truth.close());
    const webhooks = await startWebhookProxy(await freeTcpPort(), () => agentUrl, rng);
    cleanups.push(() => webhooks.close());
    const lk = await startLiveKit({ webhookUrls: [`${webhooks.url}/sfu_webhook`, truth.url] });
    cleanups.push(() => lk.stop());
    truth.setCredentials(lk.apiKey, lk.apiSecret);
    const livekitLink = await startTcpProxy(await freeTcpPort(), lk.port);
    cleanups.push(() => livekitLink.close());

    const options = {
      port: agentPort,
      // RoomService through the cuttable link; participants connect to LiveKit directly.
      livekit: { url: `ws://127.0.0.1:${livekitLink.port}`, apiKey: lk.apiKey, apiSecret: lk.apiSecret },
      homeserver: {
        serverName: hs.serverName,
        baseUrl: homeserverLink.url,
        federation: 'caFile' in hs.federation ? hs.federation : { overrideUrl: homeserverLink.url },
      },
      ...(hs.kind === 'bundled' ? { homeserverSecret: agentSecret } : {}),
      env: { LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: String(SOAK_SANITY_S), LIVEKIT_LOG_LEVEL: 'info' },
    };
    const cluster = mode === 'cluster' ? await createAgentCluster(3, { ...options, leaseMs: SOAK_LEASE_MS }) : undefined;
    if (cluster) cleanups.push(() => cluster.close());
    const agent = cluster?.facade ?? (await createAgent(options));
    cleanups.push(() => agent.dispose());
    cleanups.push(() => agent.stop());
    await agent.start();
    const agents = cluster?.replicas ?? [agent];
    return {
      mode,
      hs,
      lk,
      truth,
      webhooks,
      homeserverLink,
      livekitLink,
      agent,
      agents,
      cluster,
      timeline: new Timeline(),
      logs: () =>
        [
          ...agents.map((a, i) => `--- agent ${i} (tail) ---\n${a.logs().slice(-6000)}`),
          `--- homeserver (tail) ---\n${hs.logs().slice(-4000)}`,
          `--- livekit (tail) ---\n${lk.logs().slice(-3000)}`,
        ].join('\n'),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
