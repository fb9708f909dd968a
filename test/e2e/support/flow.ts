// The full MatrixRTC delegation flow, shared by test/e2e/flow.test.ts and scripts/demo.ts:
//
//   homeserver (bundled `lastwill homeserver` or a real Synapse)
//     ^  restart/send of the delayed leave           ^ OpenID userinfo
//     |                                               |
//   agent (`lastwill agent`, child process) <- webhooks -- LiveKit (test-owned netns)
//     ^ /get_token, /delegate_delayed_leave                 ^ WebRTC
//   app (matrix-js-sdk MatrixRTCSession, in process)   participant (@livekit/rtc-node child)
//   observer (a second matrix-js-sdk client watching the call membership)
//
//   const stack = await startFlowStack({ homeserver: 'bundled' });
//   const call = await setupCall(stack);              // app joined, delay_id known, observer synced
//   const { jwt } = await call.app.getToken({ delegate: true });
//   const p = await call.connectParticipant(jwt);
//   await call.app.crash();                           // the app dies without leaving
//   …
//   await call.close(); await stack.close();
//
// Every step is recorded on a Timeline (relative timestamps, who did what, and a curl command to
// redo it by hand), which the tests print and the demo renders live.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { partitionOf, preferredOwner } from '../../../src/agent/cluster/partitions.js';
import {
  DELEGATED_PRESET,
  type JoinedApp,
  joinRoom,
  memberStatePath,
  MSC4140,
  okJson,
  type Observer,
  registerWithSharedSecret,
  type RegisteredUser,
  roomPath,
  sdkLogTail,
  startApp,
  startObserver,
} from '../../../scripts/lib/matrixrtc.js';
import { startParticipant, type Participant } from '../../../scripts/lib/participant.js';
import { curl, Timeline } from '../../../scripts/lib/timeline.js';
import { type RedisServer, startRedis } from '../../support/redis.js';
import { startBalancer } from './balancer.js';
import { ensureLiveKitBinary, startLiveKit, type LiveKitServer } from './livekit.js';
import {
  cleanEnv,
  cleanupStack,
  freeTcpPort,
  LIB_DIR,
  nodeForChildren,
  REPO_ROOT,
  spawnManaged,
  waitFor,
  type ExitInfo,
  type ManagedProcess,
} from './proc.js';
import { ensureSynapse, startSynapse, type SynapseServer } from './synapse.js';
import { startWebhookSink, type ReceivedWebhook, type WebhookSink } from './webhook-sink.js';

export const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');

/** The payload of a JWT (no verification: LiveKit verifies it when the participant joins). */
export function jwtPayload(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// Prerequisites

export type HomeserverKind = 'bundled' | 'synapse';

/**
 * undefined when the flow can run here, else the reason to skip (throws under CI=true, like the
 * rest of the e2e support). Provisions LiveKit/Synapse into .cache/ when missing.
 */
export async function flowSkipReason(kind: HomeserverKind): Promise<string | undefined> {
  const lk = await ensureLiveKitBinary();
  if (lk.skip) return lk.skip;
  if (kind === 'synapse') {
    const py = await ensureSynapse();
    if (py.skip) return py.skip;
  }
  // dist/ is not a prerequisite one may lack: `npm test` builds it first.
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Homeservers

export interface MatrixServer {
  kind: HomeserverKind;
  label: string;
  /** The client-server API (what the agent's CS-API override names). */
  baseUrl: string;
  serverName: string;
  /**
   * How the agent reaches the federation API for the OpenID check: federation resolution of the
   * server name, trusting this CA (Synapse's TLS federation listener), or an explicit federation
   * override (the bundled homeserver serves userinfo on its one plain listener, as `lastwill all` wires it).
   */
  federation: { caFile: string } | { overrideUrl: string };
  registerUser(name: string): Promise<RegisteredUser>;
  /** How to start this server by hand, for the demo. */
  runCommand: string;
  /** SIGKILL, and start again with the same data (the soak's faults). */
  kill?(): Promise<void>;
  start?(): Promise<void>;
  logs(): string;
  stop(): Promise<void>;
}

/** `VAR=value … node dist/cli.js <command>` (single-quoted values). */
function envCommand(env: Record<string, string>, tail: string): string {
  return `${Object.entries(env)
    .map(([k, v]) => `${k}='${v}'`)
    .join(' ')} ${tail}`;
}

export interface BundledHomeserverOptions {
  serverName?: string;
  /** The agent's server-to-server delegation endpoint and its shared secret (MSC4195 forwarding). */
  agentUrl?: string;
  agentSecret?: string;
  livekitServiceUrl?: string;
}

/** `node dist/cli.js homeserver` on a free loopback port, state in a temp dir. */
export async function startBundledHomeserver(opts: BundledHomeserverOptions = {}): Promise<MatrixServer> {
  const port = await freeTcpPort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-e2e-hs-'));
  const secret = randomBytes(16).toString('hex');
  const serverName = opts.serverName ?? 'localhost';
  const settings: Record<string, string> = {
    LASTWILL_HS_BIND: `127.0.0.1:${port}`,
    LASTWILL_HS_SERVER_NAME: serverName,
    LASTWILL_HS_DATA_DIR: dir,
    LASTWILL_HS_OPEN_REGISTRATION: 'true',
    LASTWILL_HS_REGISTRATION_SHARED_SECRET: secret,
    // The agent's unauthenticated restarts come from loopback: give them the trusted bucket.
    LASTWILL_HS_RATE_LIMITS_TRUSTED_ADDRESSES: '127.0.0.1,::1,::ffff:127.0.0.1',
    LASTWILL_HS_LOG_LEVEL: 'info',
    ...(opts.agentUrl ? { LASTWILL_HS_RTC_AGENT_URL: opts.agentUrl } : {}),
    ...(opts.agentSecret ? { LASTWILL_HS_RTC_AGENT_SECRET: opts.agentSecret } : {}),
    ...(opts.livekitServiceUrl ? { LASTWILL_HS_RTC_LIVEKIT_SERVICE_URL: opts.livekitServiceUrl } : {}),
  };
  const env = { ...cleanEnv(), ...settings };
  const baseUrl = `http://127.0.0.1:${port}`;
  let history = '';
  const launch = async () => {
    const p = spawnManaged(nodeForChildren(), [CLI, 'homeserver'], { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    proc = p;
    const up = async () => (await fetch(`${baseUrl}/_matrix/client/versions`)).ok;
    await waitFor('bundled homeserver /versions', up, {
      timeoutMs: 20_000,
      abort: () => (p.hasExited() ? `homeserver exited early:\n${p.logs().slice(-4000)}` : undefined),
    });
  };
  let proc!: ManagedProcess;
  try {
    await launch();
  } catch (err) {
    await proc.kill();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    kind: 'bundled',
    label: 'lastwill homeserver',
    baseUrl,
    serverName,
    federation: { overrideUrl: baseUrl },
    registerUser: (name) => registerWithSharedSecret(baseUrl, secret, name),
    runCommand: envCommand(settings, 'npx node dist/cli.js homeserver'),
    logs: () => history + proc.logs(),
    async kill() {
      await proc.kill();
      history += proc.logs();
    },
    start: launch,
    async stop() {
      await proc.stop(5000);
      if (process.env.LASTWILL_E2E_KEEP !== '1') rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The agent as a child process (so it can be SIGTERMed, SIGKILLed and started again)

/** Synapse as a MatrixServer: the client API plain, OpenID userinfo on its TLS federation listener. */
export function synapseServer(syn: SynapseServer): MatrixServer {
  return {
    kind: 'synapse',
    label: `Synapse ${syn.version}`,
    baseUrl: syn.baseUrl,
    serverName: syn.serverName,
    federation: { caFile: syn.caFile },
    registerUser: (name) => syn.registerUser(name),
    runCommand: `.cache/synapse-venv/bin/python -m synapse.app.homeserver -c ${syn.configFile}`,
    logs: () => syn.logs(),
    kill: () => syn.crash(),
    start: () => syn.launch(),
    stop: () => syn.stop(),
  };
}

export interface AgentOptions {
  port: number;
  livekit: Pick<LiveKitServer, 'url' | 'apiKey' | 'apiSecret'>;
  /** The homeserver whose users delegate (full-access; its client API named by an override). */
  homeserver: Pick<MatrixServer, 'serverName' | 'baseUrl' | 'federation'>;
  /** Enables the server-to-server delegation endpoint the bundled homeserver forwards MSC4195 to. */
  homeserverSecret?: string;
  /** More environment (cluster mode: the Redis URL, the replica's name). */
  env?: Record<string, string>;
}

export interface AgentProcess {
  url: string;
  dataDir: string;
  /** The environment it runs with (lk-jwt-service names), for the demo's "run it yourself". */
  env: Record<string, string>;
  running(): boolean;
  /** Starts it (again, same port and data dir) and waits for /readyz. */
  start(): Promise<void>;
  /** SIGTERM (graceful: jobs stay stored, nothing is sent). */
  stop(): Promise<ExitInfo>;
  /** SIGKILL. */
  kill(): Promise<ExitInfo>;
  /** Sends a signal to the running process (the soak freezes it with SIGSTOP, thaws with SIGCONT). */
  signal(sig: NodeJS.Signals): void;
  /** Current /metrics, parsed. */
  metrics(): Promise<Metrics>;
  /** Logs of every run so far. */
  logs(): string;
  /** Removes the data dir; the process must be stopped. */
  dispose(): void;
}

export async function createAgent(opts: AgentOptions): Promise<AgentProcess> {
  const hs = opts.homeserver;
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-e2e-agent-'));
  const url = `http://127.0.0.1:${opts.port}`;
  const env: Record<string, string> = {
    LIVEKIT_URL: opts.livekit.url,
    LIVEKIT_KEY: opts.livekit.apiKey,
    LIVEKIT_SECRET: opts.livekit.apiSecret,
    LIVEKIT_FULL_ACCESS_HOMESERVERS: hs.serverName,
    LIVEKIT_JWT_BIND: `127.0.0.1:${opts.port}`,
    LIVEKIT_CS_API_URL_OVERRIDES: `${hs.serverName}=${hs.baseUrl}`,
    ...('caFile' in hs.federation
      ? { NODE_EXTRA_CA_CERTS: hs.federation.caFile }
      : { LASTWILL_AGENT_FEDERATION_URL_OVERRIDES: `${hs.serverName}=${hs.federation.overrideUrl}` }),
    LASTWILL_AGENT_DATA_DIR: dataDir,
    LIVEKIT_LOG_LEVEL: 'debug',
    ...(opts.homeserverSecret ? { LASTWILL_AGENT_HOMESERVER_SECRET: opts.homeserverSecret } : {}),
    ...opts.env,
  };
  return cliService('agent', { url, dataDir, env, readiness: [`${url}/readyz`] });
}

/**
 * `node dist/cli.js <command>` as a restartable child process: the agent alone, or `lastwill all`
 * (the agent's routes are at `url` either way). Started by `start()`, ready once every readiness
 * URL answers 200.
 */
function cliService(
  command: 'agent' | 'all',
  o: { url: string; dataDir: string; env: Record<string, string>; readiness: string[] },
): AgentProcess {
  const { url, dataDir, env } = o;
  let proc: ManagedProcess | undefined;
  let history = '';
  const service: AgentProcess = {
    url,
    dataDir,
    env,
    running: () => proc !== undefined && !proc.hasExited(),
    async start() {
      if (service.running()) throw new Error(`${command} already running`);
      if (proc) history += proc.logs();
      const p = spawnManaged(nodeForChildren(), [CLI, command], {
        env: { ...cleanEnv(), ...env },
        cwd: dataDir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      proc = p;
      const ready = async () => (await Promise.all(o.readiness.map(async (u) => (await fetch(u)).ok))).every(Boolean);
      await waitFor(`${command}: ${o.readiness.join(', ')}`, ready, {
        timeoutMs: 20_000,
        intervalMs: 50,
        abort: () => (p.hasExited() ? `${command} exited early:\n${p.logs().slice(-4000)}` : undefined),
      });
    },
    async stop() {
      if (!proc) return { code: null, signal: null };
      return proc.stop(15_000);
    },
    async kill() {
      if (!proc) return { code: null, signal: null };
      return proc.kill();
    },
    signal(sig) {
      if (proc && !proc.hasExited()) proc.signal(sig);
    },
    async metrics() {
      const r = await fetch(`${url}/metrics`);
      if (!r.ok) throw new Error(`GET ${url}/metrics: ${r.status}`);
      return new Metrics(await r.text());
    },
    logs: () => history + (proc?.logs() ?? ''),
    dispose() {
      if (process.env.LASTWILL_E2E_KEEP !== '1') rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return service;
}

/** `lastwill all`: the bundled homeserver and the agent in one process, wired by the CLI itself. */
export interface LastwillAll {
  /** The homeserver half (its `stop()` stops the whole process). */
  hs: MatrixServer;
  /** The process as the agent: `start()`/`stop()`/`kill()` start and end both halves. */
  agent: AgentProcess;
}

/**
 * `node dist/cli.js all` on the given loopback ports with the LiveKit server's credentials and
 * nothing else about the wiring: the CLI itself names the homeserver to the agent (CS-API and
 * federation overrides, full access) and announces the agent at /rtc/transports. Not started yet.
 */
export function createLastwillAll(opts: {
  hsPort: number;
  agentPort: number;
  livekit: Pick<LiveKitServer, 'url' | 'apiKey' | 'apiSecret'>;
}): LastwillAll {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-e2e-all-'));
  const secret = randomBytes(16).toString('hex');
  const hsUrl = `http://127.0.0.1:${opts.hsPort}`;
  const url = `http://127.0.0.1:${opts.agentPort}`;
  const serverName = 'localhost';
  const env: Record<string, string> = {
    LASTWILL_HS_BIND: `127.0.0.1:${opts.hsPort}`,
    LASTWILL_HS_SERVER_NAME: serverName,
    LASTWILL_HS_DATA_DIR: path.join(dataDir, 'homeserver'),
    LASTWILL_HS_REGISTRATION_SHARED_SECRET: secret,
    LIVEKIT_URL: opts.livekit.url,
    LIVEKIT_KEY: opts.livekit.apiKey,
    LIVEKIT_SECRET: opts.livekit.apiSecret,
    LIVEKIT_JWT_BIND: `127.0.0.1:${opts.agentPort}`,
    LASTWILL_AGENT_DATA_DIR: path.join(dataDir, 'agent'),
    LIVEKIT_LOG_LEVEL: 'debug',
  };
  const agent = cliService('all', { url, dataDir, env, readiness: [`${url}/readyz`, `${hsUrl}/_matrix/client/versions`] });
  const hs: MatrixServer = {
    kind: 'bundled',
    label: 'lastwill all (homeserver)',
    baseUrl: hsUrl,
    serverName,
    federation: { overrideUrl: hsUrl },
    registerUser: (name) => registerWithSharedSecret(hsUrl, secret, name),
    runCommand: envCommand(env, 'npx node dist/cli.js all'),
    logs: () => agent.logs(),
    async stop() {
      await agent.stop();
      agent.dispose();
    },
  };
  return { hs, agent };
}

/** Cluster mode: replicas on one Redis, behind one address. */
export interface AgentCluster {
  /** The replicas, by index (replica id `replica-<index>`). */
  replicas: AgentProcess[];
  /** Their Redis (the soak restarts it). */
  redis: RedisServer;
  /** The whole cluster as one agent: the balancer's address, metrics summed over the replicas. */
  facade: AgentProcess;
  /** The replica that owns a LiveKit room's jobs, once the running replicas have shared them out. */
  ownerOf(livekitRoom: string): AgentProcess;
  close(): Promise<void>;
}

export const CLUSTER_PARTITIONS = 64;

/**
 * `count` agent replicas in cluster mode on a real Redis of their own, behind a round-robin
 * balancer on `opts.port` (what clients, the homeserver and LiveKit's webhooks use).
 */
export async function createAgentCluster(count: number, opts: AgentOptions & { leaseMs: number }): Promise<AgentCluster> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-e2e-redis-'));
  const redis = await startRedis(dir);
  const replicas: AgentProcess[] = [];
  for (let i = 0; i < count; i++) {
    replicas.push(
      await createAgent({
        ...opts,
        port: await freeTcpPort(),
        env: {
          LIVEKIT_REDIS_URL: redis.url,
          LASTWILL_AGENT_CLUSTER_REPLICA_ID: `replica-${i}`,
          LASTWILL_AGENT_CLUSTER_LEASE_MS: String(opts.leaseMs),
          LASTWILL_AGENT_CLUSTER_PARTITIONS: String(CLUSTER_PARTITIONS),
          ...opts.env,
        },
      }),
    );
  }
  const balancer = await startBalancer(opts.port, () => replicas.filter((r) => r.running()).map((r) => r.url));
  const running = () => replicas.filter((r) => r.running());
  const facade: AgentProcess = {
    url: balancer.url,
    dataDir: dir,
    env: replicas[0]!.env,
    // All of them: a test that killed one gets it started again (see useStack).
    running: () => replicas.every((r) => r.running()),
    async start() {
      for (const r of replicas) if (!r.running()) await r.start();
    },
    async stop() {
      const exits = await Promise.all(running().map((r) => r.stop()));
      return exits[0] ?? { code: null, signal: null };
    },
    async kill() {
      const exits = await Promise.all(running().map((r) => r.kill()));
      return exits[0] ?? { code: null, signal: null };
    },
    signal(sig) {
      for (const r of running()) r.signal(sig);
    },
    async metrics() {
      const texts = await Promise.all(running().map(async (r) => (await r.metrics()).text));
      return new Metrics(texts.join('\n'));
    },
    logs: () => replicas.map((r, i) => `--- replica ${i} ---\n${r.logs().slice(-6000)}`).join('\n'),
    dispose() {
      for (const r of replicas) r.dispose();
      if (process.env.LASTWILL_E2E_KEEP !== '1') rmSync(dir, { recursive: true, force: true });
    },
  };
  return {
    replicas,
    redis,
    facade,
    ownerOf(livekitRoom) {
      const live = replicas.flatMap((r, i) => (r.running() ? [`replica-${i}`] : []));
      const owner = preferredOwner(partitionOf(livekitRoom, CLUSTER_PARTITIONS), live);
      return replicas[Number(owner?.slice('replica-'.length))]!;
    },
    async close() {
      await balancer.close();
      await redis.close();
    },
  };
}

/** A parsed Prometheus text exposition. */
export class Metrics {
  readonly samples: Array<{ name: string; labels: Record<string, string>; value: number }> = [];

  constructor(readonly text: string) {
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
      if (!m) continue;
      const labels: Record<string, string> = {};
      for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k!] = v!;
      this.samples.push({ name: m[1]!, labels, value: Number(m[3]) });
    }
  }

  /** Sum of the samples of `name` whose labels include `labels`. */
  sum(name: string, labels: Record<string, string> = {}): number {
    return this.samples
      .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((a, s) => a + s.value, 0);
  }

  restartsOk(): number {
    return this.sum('lastwill_agent_delayed_event_actions_total', { action: 'restart', outcome: 'ok' });
  }

  sendsOk(): number {
    return this.sum('lastwill_agent_delayed_event_actions_total', { action: 'send', outcome: 'ok' });
  }

  sends(): number {
    return this.sum('lastwill_agent_delayed_event_actions_total', { action: 'send' });
  }

  delegations(source?: string): number {
    return this.sum('lastwill_agent_delegations_total', source ? { source } : {});
  }

  webhooks(event: string, verdict = 'accepted'): number {
    return this.sum('lastwill_agent_webhooks_total', { event, verdict });
  }

  jobs(state: string): number {
    return this.sum('lastwill_agent_jobs', { state });
  }
}

// ---------------------------------------------------------------------------------------------
// The stack

export interface FlowStack {
  hs: MatrixServer;
  lk: LiveKitServer;
  /** A second webhook consumer next to the agent: LiveKit's own view, for measuring detection. */
  sink: WebhookSink;
  agent: AgentProcess;
  /** Cluster mode only: the replicas behind `agent` (a balancer). */
  cluster: AgentCluster | undefined;
  timeline: Timeline;
  /** Everything each part logged, for failure dumps. */
  dumpLogs(): string;
  close(): Promise<void>;
}

export async function startFlowStack(opts: {
  homeserver: HomeserverKind;
  timeline?: Timeline;
  /** Extra Synapse config (`startSynapse`'s `extraConfig`), e.g. `SYNAPSE_MSC4354`; Synapse only. */
  synapseConfig?: Record<string, unknown>;
  /** Cluster mode: this many agent replicas on a Redis, behind a balancer at the agent's address. */
  cluster?: { replicas: number; leaseMs: number };
}): Promise<FlowStack> {
  const timeline = opts.timeline ?? new Timeline();
  const cleanups = cleanupStack('[flow]');
  const close = cleanups.close;
  try {
    const agentPort = await freeTcpPort();
    const agentUrl = `http://127.0.0.1:${agentPort}`;
    const agentSecret = randomBytes(24).toString('hex');

    const sink = await startWebhookSink();
    cleanups.push(() => sink.close());

    let hs: MatrixServer;
    if (opts.homeserver === 'bundled') {
      hs = await startBundledHomeserver({ agentUrl, agentSecret, livekitServiceUrl: agentUrl });
    } else {
      hs = synapseServer(await startSynapse(opts.synapseConfig ? { extraConfig: opts.synapseConfig } : {}));
    }
    cleanups.push(() => hs.stop());
    timeline.setVar('HS', hs.baseUrl);
    timeline.mark('homeserver', `${hs.label} up at ${hs.baseUrl} (server name ${hs.serverName})`, [
      hs.runCommand,
      curl('GET', '$HS/_matrix/client/versions'),
    ]);

    const lk = await startLiveKit({ webhookUrls: [`${agentUrl}/sfu_webhook`, sink.url] });
    cleanups.push(() => lk.stop());
    sink.setCredentials(lk.apiKey, lk.apiSecret);
    timeline.setVar('LK', lk.httpUrl);
    timeline.mark('livekit', `LiveKit up at ${lk.url}, webhooks to the agent and to a test sink`);

    const agentOptions: AgentOptions = {
      port: agentPort,
      livekit: lk,
      homeserver: hs,
      ...(hs.kind === 'bundled' ? { homeserverSecret: agentSecret } : {}),
    };
    const cluster = opts.cluster
      ? await createAgentCluster(opts.cluster.replicas, { ...agentOptions, leaseMs: opts.cluster.leaseMs })
      : undefined;
    if (cluster) cleanups.push(() => cluster.close());
    const agent = cluster?.facade ?? (await createAgent(agentOptions));
    cleanups.push(() => agent.dispose());
    cleanups.push(async () => {
      await agent.stop();
    });
    await agent.start();
    timeline.setVar('AGENT', agent.url);
    timeline.mark('agent', `agent up at ${agent.url}`, [
      envCommand({ ...agent.env, LASTWILL_AGENT_DATA_DIR: '<a fresh dir>' }, 'npx node dist/cli.js agent'),
      curl('GET', '$AGENT/healthz'),
    ]);

    cleanups.push(markWebhooks(sink, timeline));

    return {
      hs,
      lk,
      sink,
      agent,
      cluster,
      timeline,
      dumpLogs: () =>
        [
          `--- agent log (tail) ---\n${agent.logs().slice(-8000)}`,
          `--- homeserver log (tail) ---\n${hs.logs().slice(-6000)}`,
          `--- livekit log (tail) ---\n${lk.logs().slice(-4000)}`,
          `--- matrix-js-sdk log (tail) ---\n${sdkLogTail().slice(-4000)}`,
        ].join('\n'),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Marks LiveKit's participant webhooks (as the sink receives them) on the timeline; returns the unsubscribe. */
export function markWebhooks(sink: WebhookSink, timeline: Timeline): () => void {
  return sink.onReceive((w) => {
    const p = w.event.participant;
    if (!p || !w.event.event.startsWith('participant_')) return;
    const reason = (w.json.participant as Record<string, unknown> | undefined)?.disconnectReason;
    const why = reason ? ` reason=${String(reason)}` : '';
    timeline.mark('livekit', `webhook ${w.event.event} sid=${p.sid} identity=${p.identity}${why}`);
  });
}

// ---------------------------------------------------------------------------------------------
// One call: the app (Element Call's role, scripts/lib/matrixrtc.ts), an observer, participants

export interface Call {
  roomId: string;
  app: JoinedApp;
  observer: Observer;
  participants: Participant[];
  /** Starts a real participant with the token (and waits until it is connected). */
  connectParticipant(jwt: string): Promise<Participant>;
  /** Whether the observer still sees the app's membership. */
  membershipPresent(): boolean;
  /** Waits for the app's membership to end; resolves with that moment. */
  waitMembershipGone(timeoutMs: number): Promise<number>;
  close(): Promise<void>;
}

export interface SetupCallOptions {
  delayedLeaveEventDelayMs?: number;
  delayedLeaveEventRestartMs?: number;
  /**
   * Publish the membership as MSC4354 sticky `m.rtc.member` events (js-sdk's
   * `unstableSendStickyEvents`), the hangup as a delayed sticky event, instead of call member state.
   */
  stickyEvents?: boolean;
}


/**
 * Registers two users, makes a room, has the app (first user) join the MatrixRTC session with the
 * delegated timing preset (unless overridden), and waits until the observer (second user) sees the
 * membership and the app knows its delay_id.
 */
export async function setupCall(stack: FlowStack, opts: SetupCallOptions = {}): Promise<Call> {
  const { hs, timeline } = stack;
  const suffix = randomBytes(3).toString('hex');
  const alice = await hs.registerUser(`alice-${suffix}`);
  const bob = await hs.registerUser(`bob-${suffix}`);
  timeline.setVar('ALICE_TOKEN', alice.accessToken);
  timeline.setVar('BOB_TOKEN', bob.accessToken);
  const created = await okJson('POST', `${hs.baseUrl}/_matrix/client/v3/createRoom`, {
    token: alice.accessToken,
    body: { preset: 'public_chat', name: 'lastwill e2e call' },
  });
  const roomId = String(created.room_id);
  await joinRoom(hs, bob, roomId);
  timeline.mark('client', `${alice.userId} created ${roomId}; ${bob.userId} joined it`);

  // The observer first, so it sees the membership arrive.
  const observer = await startObserver(hs, bob, roomId);
  let app: JoinedApp & { close(): void };
  try {
    app = await startApp(stack, alice, roomId, observer, {
      delayMs: opts.delayedLeaveEventDelayMs ?? DELEGATED_PRESET.delayedLeaveEventDelayMs,
      restartMs: opts.delayedLeaveEventRestartMs ?? DELEGATED_PRESET.delayedLeaveEventRestartMs,
      sticky: opts.stickyEvents ?? false,
    });
  } catch (err) {
    observer.close();
    throw err;
  }
  const participants: Participant[] = [];
  return {
    roomId,
    app,
    observer,
    participants,
    async connectParticipant(jwt) {
      const p = await startParticipant({ url: stack.lk.url, token: jwt });
      participants.push(p);
      const child = path.relative(process.cwd(), path.join(LIB_DIR, 'participant-child.ts'));
      const what = `connected to LiveKit as ${p.identity} (sid ${p.sid}, connect ${p.connectMs} ms)`;
      timeline.mark('participant', what, [
        `LASTWILL_PARTICIPANT='{"url":"${stack.lk.url}","token":"'"$JWT"'"}' ` +
          `nsenter -t ${stack.lk.netns?.holderPid ?? '<netns holder pid>'} -n -- npx node ${child}`,
      ]);
      return p;
    },
    membershipPresent: () => observer.sees(alice.userId, alice.deviceId),
    async waitMembershipGone(timeoutMs) {
      const at = await observer.waitGone(alice.userId, alice.deviceId, timeoutMs);
      const check = opts.stickyEvents
        ? `${roomPath(roomId)}/messages?dir=b&limit=1`
        : memberStatePath(roomId, app.stateKey);
      timeline.mark('observer', `${bob.userId} saw ${alice.userId}'s membership end`, [
        curl('GET', `$HS${check}`, { token: '$BOB_TOKEN' }),
      ]);
      return at;
    },
    async close() {
      // A clean leave, so LiveKit does not report a timeout into the next test 20 s later.
      await Promise.all(participants.map((p) => p.disconnect(5_000)));
      app.close();
      observer.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Watching the agent from outside: /metrics counters turned into timeline entries

/**
 * Polls the agent's /metrics and marks delegations, restarts and sends on the timeline as they
 * happen (counters restart from zero with the agent; the watcher follows). Call the result to stop.
 */
export function watchAgent(stack: Pick<FlowStack, 'agent' | 'timeline'>, intervalMs = 100): () => void {
  const zero = { restarts: 0, sends: 0, delegations: 0 };
  let last = zero;
  let stopped = false;
  const actionCurl = (action: string) =>
    curl('POST', `$HS${MSC4140}/delayed_events/$DELAY_ID/${action}`, { body: {} });
  const poll = async () => {
    const m = await stack.agent.metrics();
    const now = { restarts: m.restartsOk(), sends: m.sendsOk(), delegations: m.delegations() };
    if (now.restarts < last.restarts || now.sends < last.sends || now.delegations < last.delegations) last = zero;
    const { timeline } = stack;
    if (now.delegations > last.delegations) {
      timeline.mark('agent', `took the delegation (seen in /metrics: ${now.delegations} accepted)`, [
        'curl -sS "$AGENT/metrics" | grep lastwill_agent_delegations_total',
      ]);
    }
    if (now.restarts > last.restarts) {
      const what = `restarted the delayed leave on the homeserver (seen in /metrics: ${now.restarts} ok)`;
      timeline.mark('agent', what, [actionCurl('restart')]);
    }
    if (now.sends > last.sends) {
      timeline.mark('agent', 'sent the hangup: the delayed leave, now (seen in /metrics)', [actionCurl('send')]);
    }
    last = now;
  };
  void (async () => {
    while (!stopped) {
      if (stack.agent.running()) await poll().catch(() => undefined); // between runs of the agent
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return () => {
    stopped = true;
  };
}

export interface HandOver {
  jwt: string;
  /** The LiveKit URL the agent answered with. */
  url: string;
  participant: Participant;
}

/**
 * What Element Call does after joining: get a LiveKit token from the agent (handing over the
 * delay_id with it when `viaGetToken`), connect to LiveKit with it, then hand the delay_id over
 * again through /delegate_delayed_leave when `viaDelegate`.
 */
export async function handOver(call: Call, o: { viaGetToken: boolean; viaDelegate: boolean }): Promise<HandOver> {
  const { url, jwt } = await call.app.getToken({ delegate: o.viaGetToken });
  const participant = await call.connectParticipant(jwt);
  if (o.viaDelegate) await call.app.delegateToAgent();
  return { jwt, url, participant };
}

/** Waits for the webhook sink to receive a participant event for `sid`. */
export function waitForWebhook(
  stack: FlowStack,
  event: string,
  sid: string,
  timeoutMs: number,
): Promise<ReceivedWebhook> {
  return stack.sink.waitFor((w) => w.event.event === event && w.event.participant?.sid === sid, timeoutMs);
}

