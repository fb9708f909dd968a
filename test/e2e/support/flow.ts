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
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  ClientEvent,
  createClient,
  EventType,
  type MatrixClient,
  type MatrixEvent,
  type Room,
  SyncState,
} from 'matrix-js-sdk';
import { logger as sdkRootLogger } from 'matrix-js-sdk/lib/logger.js';
import {
  type MatrixRTCSession,
  MatrixRTCSessionEvent,
  MembershipManagerEvent,
  Status,
} from 'matrix-js-sdk/lib/matrixrtc/index.js';

import { partitionOf, preferredOwner } from '../../../src/agent/cluster/partitions.js';
import { type RedisServer, startRedis } from '../../support/redis.js';
import { startBalancer } from './balancer.js';
import { ensureLiveKitBinary, startLiveKit, type LiveKitServer } from './livekit.js';
import { startParticipant, type Participant } from './participant.js';
import {
  cleanupStack,
  freeTcpPort,
  nodeForChildren,
  PrerequisiteMissing,
  REPO_ROOT,
  SUPPORT_DIR,
  skipOrThrow,
  spawnManaged,
  waitFor,
  type ExitInfo,
  type ManagedProcess,
} from './proc.js';
import { ensureSynapse, registerWithSharedSecret, startSynapse, type RegisteredUser, type SynapseServer } from './synapse.js';
import { startWebhookSink, type ReceivedWebhook, type WebhookSink } from './webhook-sink.js';

/** Element Call's `delegatedDelayedLeave` preset: the client restarts only every 5 min. */
export const DELEGATED_PRESET = {
  delayedLeaveEventDelayMs: 3_600_000,
  delayedLeaveEventRestartMs: 300_000,
} as const;
/** The slot every Element Call room call uses (application m.call, id ROOM). */
export const SLOT_ID = 'm.call#ROOM';
/** The legacy call member state event type that MembershipManager sends. */
export const CALL_MEMBER_TYPE = 'org.matrix.msc3401.call.member';
/** How long js-sdk 43 keeps a sticky membership sticky (MembershipManager's MEMBERSHIP_STICKY_DURATION_MS). */
export const STICKY_MEMBERSHIP_MS = 3_600_000;
export const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');
export const MSC4140 = '/_matrix/client/unstable/org.matrix.msc4140';
const MSC4195_DELEGATE = '/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave';
const MSC4143_TRANSPORTS = '/_matrix/client/unstable/org.matrix.msc4143/rtc/transports';

/**
 * unpadded_base64(SHA-256(JSON array)): how lk-jwt-service (and so the agent) names LiveKit rooms
 * ([room_id, slot_id]) and identities ([mxid, device, member id]). Computed here independently of
 * the agent's code so the e2e checks the agent against the documented derivation.
 */
export function hashJsonArray(parts: readonly string[]): string {
  return createHash('sha256').update(JSON.stringify(parts), 'utf8').digest('base64').replace(/=+$/, '');
}

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

/** The parent's environment minus every setting of ours, so a developer's shell cannot leak in. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(LASTWILL_HS_|LASTWILL_AGENT_|LIVEKIT_)/.test(k)) env[k] = v;
  }
  return env;
}

// ---------------------------------------------------------------------------------------------
// Timeline

export type Actor = 'client' | 'agent' | 'livekit' | 'participant' | 'homeserver' | 'observer' | 'browser' | 'test';

export interface TimelineEntry {
  /** ms since the timeline started. */
  t: number;
  actor: Actor;
  text: string;
  /** Commands to do (or check) this step by hand. */
  commands: string[];
}

/** What each party did, when, and how to reproduce it; `vars` are the shell variables the commands use. */
export class Timeline {
  readonly t0 = Date.now();
  readonly entries: TimelineEntry[] = [];
  readonly vars = new Map<string, string>();
  private readonly listeners = new Set<(e: TimelineEntry) => void>();
  private readonly varListeners = new Set<(name: string, value: string) => void>();

  mark(actor: Actor, text: string, commands: string[] = []): TimelineEntry {
    const e = { t: Date.now() - this.t0, actor, text, commands };
    this.entries.push(e);
    for (const l of this.listeners) l(e);
    return e;
  }

  setVar(name: string, value: string): void {
    if (this.vars.get(name) === value) return;
    this.vars.set(name, value);
    for (const l of this.varListeners) l(name, value);
  }

  onEntry(l: (e: TimelineEntry) => void): void {
    this.listeners.add(l);
  }

  onVar(l: (name: string, value: string) => void): void {
    this.varListeners.add(l);
  }

  /** One line per entry, e.g. `  +12.345s agent       sent the hangup`. */
  render({ commands = false }: { commands?: boolean } = {}): string {
    return this.entries.map((e) => formatEntry(e, commands)).join('\n');
  }
}

export function formatEntry(e: TimelineEntry, withCommands: boolean): string {
  const head = `  +${(e.t / 1000).toFixed(3).padStart(8)}s  ${e.actor.padEnd(11)} ${e.text}`;
  if (!withCommands || e.commands.length === 0) return head;
  return [head, ...e.commands.map((c) => `              $ ${c}`)].join('\n');
}

/** A curl command line; `url` and header values may reference the timeline's shell variables. */
export function curl(method: string, url: string, opts: { token?: string; body?: unknown } = {}): string {
  const parts = ['curl -sS'];
  if (method !== 'GET') parts.push(`-X ${method}`);
  parts.push(`"${url}"`);
  if (opts.token) parts.push(`-H "Authorization: Bearer ${opts.token}"`);
  if (opts.body !== undefined) parts.push(`-H 'Content-Type: application/json' -d '${JSON.stringify(opts.body)}'`);
  return parts.join(' ');
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
// matrix-js-sdk clients

const sdkLog: string[] = [];
/** The SDK logs every request at debug; keep its output in a ring for failure dumps instead. */
function captureSdkLogs(): void {
  const root = sdkRootLogger as unknown as {
    methodFactory: (method: string) => (...args: unknown[]) => void;
    rebuild(): void;
  };
  root.methodFactory = (method: string) => (...args: unknown[]) => {
    sdkLog.push(`${method}: ${args.map((a) => (a instanceof Error ? a.message : String(a))).join(' ')}`);
    if (sdkLog.length > 2000) sdkLog.splice(0, 500);
  };
  root.rebuild();
}
captureSdkLogs();

export function sdkLogTail(): string {
  return sdkLog.slice(-200).join('\n');
}

/** A client's network: cut it and the app that crashed sends nothing more. */
interface NetworkGate {
  online: boolean;
  /** `METHOD /path` of every request that got an answer. */
  answered: string[];
}

/** A matrix-js-sdk client whose requests pass through `gate`. */
function matrixClient(hs: MatrixServer, user: RegisteredUser, gate: NetworkGate): MatrixClient {
  const fetchFn: typeof fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!gate.online) throw new TypeError('fetch failed (the app is gone)');
    const res = await fetch(input, init);
    gate.answered.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
    return res;
  };
  return createClient({
    baseUrl: hs.baseUrl,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    fetchFn,
    logger: sdkRootLogger.getChild(`[${user.userId}]`),
  });
}

async function startSyncing(client: MatrixClient, roomId: string): Promise<Room> {
  const synced = new Promise<void>((resolve, reject) => {
    const onSync = (state: SyncState) => {
      if (state === SyncState.Prepared || state === SyncState.Syncing) {
        client.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === SyncState.Error) {
        client.off(ClientEvent.Sync, onSync);
        reject(new Error('initial sync failed'));
      }
    };
    client.on(ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 5 });
  await synced;
  return waitFor(`room ${roomId} in the client's store`, () => client.getRoom(roomId) ?? undefined, {
    timeoutMs: 15_000,
  });
}

/** One request with an optional JSON body: the status and the parsed answer (`{raw}` when not JSON). */
export async function requestJson(
  method: string,
  url: string,
  opts: { token?: string; body?: unknown } = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(url, {
    method,
    headers: {
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
  });
  const text = await r.text();
  let body: Record<string, unknown>;
  try {
    body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    body = { raw: text };
  }
  return { status: r.status, body };
}

async function okJson(
  method: string,
  url: string,
  opts: { token?: string; body?: unknown } = {},
): Promise<Record<string, unknown>> {
  const r = await requestJson(method, url, opts);
  if (r.status !== 200) throw new Error(`${method} ${url} -> ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

// ---------------------------------------------------------------------------------------------
// One call: the app (Element Call's role) and an observer

export interface DelayedEventListing {
  delay_id: string;
  running_since: number;
  delay: number;
  room_id: string;
  type: string;
  state_key?: string;
}

export interface JoinedApp {
  user: RegisteredUser;
  client: MatrixClient;
  session: MatrixRTCSession;
  memberId: string;
  /** The delay_id of the delayed leave scheduled at the join. */
  delayId: string;
  /**
   * The delay_id matrix-js-sdk holds now: it schedules a new delayed leave (and forgets the old one)
   * when a restart finds its delayed leave gone, or when it joins again after its membership ended.
   */
  currentDelayId(): string | undefined;
  /** Called with each new delay_id after the first (js-sdk's DelayIdChanged), as Element Call listens. */
  onDelayIdChanged(listener: (delayId: string) => void): void;
  /** State key of the app's call member event. */
  stateKey: string;
  /** running_since of the delayed leave right after the client scheduled it. */
  scheduledRunningSince: number;
  /** The identity the agent must derive: hash of [mxid, device, member id]. */
  identity: string;
  livekitRoom: string;
  /** Restart/send requests the client made after setupCall returned (answered ones). */
  clientRestartsSinceSetup(): string[];
  /** POST /get_token (with the current delay_id when `delegate`), as Element Call does. */
  getToken(o: { delegate: boolean }): Promise<{ url: string; jwt: string }>;
  /** POST /delegate_delayed_leave on the agent, with the current delay_id. */
  delegateToAgent(): Promise<void>;
  /**
   * The LiveKit service the homeserver offers (MSC4143 rtc/transports), as a client discovers the
   * `url` it names in MSC4195 requests; undefined when the homeserver offers none.
   */
  livekitServiceUrl(): Promise<string | undefined>;
  /** POST the MSC4195 endpoint of the homeserver; resolves with the raw answer (it may not exist). */
  delegateViaHomeserver(url: string): Promise<{ status: number; body: Record<string, unknown> }>;
  /** The app dies without leaving: its network is cut, then the client is stopped. */
  crash(): void;
  crashed(): boolean;
  /** The latest delayed leave, if still scheduled, as the homeserver lists it (read with the user's token). */
  listing(): Promise<DelayedEventListing | undefined>;
  /**
   * The finalised delayed leave (`?status=finalised`, the bundled homeserver's MSC4140 revision):
   * `{delayed_event, outcome, reason, event_id?, origin_server_ts?}`. Synapse 1.157 has no such listing.
   */
  finalised(): Promise<Record<string, unknown> | undefined>;
}

export interface Observer {
  user: RegisteredUser;
  client: MatrixClient;
  /** Whether the observer's MatrixRTCSession lists a membership of that user and device. */
  sees(userId: string, deviceId: string): boolean;
  /** Date.now() when the membership was last seen disappearing, if it has. */
  goneAt(userId: string, deviceId: string): number | undefined;
  /** Waits for the membership to disappear; resolves with that moment (Date.now()). */
  waitGone(userId: string, deviceId: string, timeoutMs: number): Promise<number>;
  /** The call member state event's content, read over HTTP with the observer's token. */
  stateContent(stateKey: string): Promise<Record<string, unknown> | undefined>;
  /** The current sticky `m.rtc.member` of that user and sticky key, as the observer's client holds it. */
  stickyMembership(userId: string, stickyKey: string): MatrixEvent | undefined;
  /** Its content. */
  stickyContent(userId: string, stickyKey: string): Record<string, unknown> | undefined;
}

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

function roomPath(roomId: string): string {
  return `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}`;
}

/** Paths of the app's call member state event (legacy `m.call.member` form, room-level slot). */
function memberStatePath(roomId: string, stateKey: string): string {
  return `${roomPath(roomId)}/state/${CALL_MEMBER_TYPE}/${encodeURIComponent(stateKey)}`;
}

/**
 * A second user's client that watches the call memberships through its own MatrixRTCSession;
 * `onChange` hears every change of the set of `<user>|<device>` memberships (the soak's record).
 */
export async function startObserver(
  hs: MatrixServer,
  user: RegisteredUser,
  roomId: string,
  onChange?: (memberships: ReadonlySet<string>, at: number) => void,
): Promise<Observer & { close(): void }> {
  const client = matrixClient(hs, user, { online: true, answered: [] });
  let room: Room;
  try {
    room = await startSyncing(client, roomId);
  } catch (err) {
    client.stopClient();
    throw err;
  }
  const session = client.matrixRTC.getRoomSession(room);
  const key = (u: string, d: string) => `${u}|${d}`;
  const goneAt = new Map<string, number>();
  let current = new Set<string>();
  session.on(MatrixRTCSessionEvent.MembershipsChanged, (_old, now) => {
    const next = new Set(now.map((m) => key(m.sender, m.deviceId)));
    for (const k of current) if (!next.has(k)) goneAt.set(k, Date.now());
    for (const k of next) goneAt.delete(k);
    current = next;
    onChange?.(next, Date.now());
  });
  const stickyMembership = (userId: string, stickyKey: string) =>
    room._unstable_getKeyedStickyEvent(userId, EventType.RTCMembership, stickyKey);
  return {
    user,
    client,
    sees: (u, d) => session.memberships.some((m) => m.sender === u && m.deviceId === d),
    goneAt: (u, d) => goneAt.get(key(u, d)),
    waitGone: (u, d, timeoutMs) =>
      waitFor(`membership of ${u}/${d} to end (seen by ${user.userId})`, () => goneAt.get(key(u, d)), {
        timeoutMs,
        intervalMs: 20,
      }),
    async stateContent(stateKey) {
      const r = await requestJson('GET', `${hs.baseUrl}${memberStatePath(roomId, stateKey)}`, {
        token: user.accessToken,
      });
      return r.status === 200 ? r.body : undefined;
    },
    stickyMembership,
    stickyContent: (userId, stickyKey) => stickyMembership(userId, stickyKey)?.getContent(),
    close: () => client.stopClient(),
  };
}

/**
 * The app in Element Call's role: joins the MatrixRTC session with the given timing, waits for
 * its delay_id and for the observer to see the membership, and then acts on the agent like
 * Element Call (token requests, delegations).
 */
export async function startApp(
  stack: Pick<FlowStack, 'hs' | 'agent' | 'timeline'>,
  user: RegisteredUser,
  roomId: string,
  observer: Observer,
  timing: { delayMs: number; restartMs: number; sticky: boolean },
): Promise<JoinedApp & { close(): void }> {
  const { hs, agent, timeline } = stack;
  const gate: NetworkGate = { online: true, answered: [] };
  const client = matrixClient(hs, user, gate);
  const close = () => {
    gate.online = false; // stopClient() would otherwise send the leave
    client.stopClient();
  };
  try {
    const room = await startSyncing(client, roomId);
    const session = client.matrixRTC.getRoomSession(room);
    const memberId = `${user.userId}:${user.deviceId}`; // what the deprecated joinRoomSession() uses
    const delayIdKnown = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no delay_id within 15 s; sdk log:\n${sdkLogTail()}`)),
        15_000,
      );
      const onDelayId = (id: string | undefined) => {
        if (!id) return;
        clearTimeout(timer);
        session.off(MembershipManagerEvent.DelayIdChanged, onDelayId);
        resolve(id);
      };
      session.on(MembershipManagerEvent.DelayIdChanged, onDelayId);
    });
    const transport = { type: 'livekit', livekit_service_url: agent.url };
    session.joinRTCSession(
      { userId: user.userId, deviceId: user.deviceId, memberId },
      [transport],
      // The sticky form publishes the transport it uses; js-sdk 43 needs it named there.
      timing.sticky ? transport : undefined,
      {
        delayedLeaveEventDelayMs: timing.delayMs,
        delayedLeaveEventRestartMs: timing.restartMs,
        manageMediaKeys: false,
        ...(timing.sticky ? { unstableSendStickyEvents: true } : {}),
      },
    );
    const delayId = await delayIdKnown;
    timeline.setVar('DELAY_ID', delayId);
    let currentDelayId: string | undefined = delayId;
    /** The last delay_id js-sdk held, for the listings (it forgets it once it has sent it). */
    let lastDelayId = delayId;
    const delayIdListeners: Array<(id: string) => void> = [];
    session.on(MembershipManagerEvent.DelayIdChanged, (id: string | undefined) => {
      if (id === currentDelayId) return;
      currentDelayId = id;
      if (id === undefined) return;
      lastDelayId = id;
      timeline.mark('client', `scheduled a new delayed leave (${id}) in place of the old one`);
      for (const listener of delayIdListeners) listener(id);
    });
    const connected = () => session.membershipStatus === Status.Connected;
    await waitFor('the app to report its membership as Connected', connected, { timeoutMs: 15_000 });
    const seen = () => observer.sees(user.userId, user.deviceId);
    await waitFor(`${observer.user.userId} to see ${user.userId}'s call membership`, seen, { timeoutMs: 15_000 });
    const stateKey = `_${user.userId}_${user.deviceId}_m.call`;
    // MembershipManager restarts the delayed leave once right after publishing the membership;
    // let that settle so running_since below is the client's last word.
    const isRestart = (r: string) => r.startsWith('POST') && r.includes('/delayed_events/');
    await waitFor('the client\'s first restart', () => gate.answered.some(isRestart), { timeoutMs: 5_000 }).catch(
      () => undefined,
    );
    const answeredAtSetup = gate.answered.length;

    const listing = async (): Promise<DelayedEventListing | undefined> => {
      const body = await okJson('GET', `${hs.baseUrl}${MSC4140}/delayed_events`, { token: user.accessToken });
      return ((body.delayed_events ?? []) as DelayedEventListing[]).find((d) => d.delay_id === lastDelayId);
    };
    const finalised = async (): Promise<Record<string, unknown> | undefined> => {
      const body = await okJson('GET', `${hs.baseUrl}${MSC4140}/delayed_events?status=finalised`, {
        token: user.accessToken,
      });
      const list = (body.finalised ?? []) as Array<Record<string, unknown>>;
      return list.find((f) => (f.delayed_event as DelayedEventListing | undefined)?.delay_id === lastDelayId);
    };
    const scheduled = await listing();
    if (!scheduled) throw new Error(`the homeserver does not list delay_id ${delayId} as scheduled`);
    const statePath = memberStatePath(roomId, stateKey);
    const stickyPath = `${roomPath(roomId)}/send/${EventType.RTCMembership}/$(date +%s%N)`;
    const sticky = `org.matrix.msc4354.sticky_duration_ms=${STICKY_MEMBERSHIP_MS}`;
    const [scheduleHangup, publishMembership] = timing.sticky
      ? [
          curl('PUT', `$HS${stickyPath}?org.matrix.msc4140.delay=${timing.delayMs}&${sticky}`, {
            token: '$ALICE_TOKEN',
            body: { slot_id: SLOT_ID, msc4354_sticky_key: memberId },
          }),
          curl('PUT', `$HS${stickyPath}?${sticky}`, {
            token: '$ALICE_TOKEN',
            body: observer.stickyContent(user.userId, memberId) ?? {},
          }),
        ]
      : [
          curl('PUT', `$HS${statePath}?org.matrix.msc4140.delay=${timing.delayMs}`, {
            token: '$ALICE_TOKEN',
            body: {},
          }),
          curl('PUT', `$HS${statePath}`, {
            token: '$ALICE_TOKEN',
            body: (await observer.stateContent(stateKey)) ?? {},
          }),
        ];
    timeline.mark(
      'client',
      `joined the MatrixRTC session (joinRTCSession, delay ${timing.delayMs} ms, restart every ` +
        `${timing.restartMs} ms${timing.sticky ? ', sticky events' : ''}): scheduled the hangup ` +
        `(delayed leave ${delayId}) and published the membership`,
      [scheduleHangup, publishMembership, curl('GET', `$HS${MSC4140}/delayed_events`, { token: '$ALICE_TOKEN' })],
    );

    const member = { id: memberId, claimed_user_id: user.userId, claimed_device_id: user.deviceId };
    const openid = async () => {
      const t = await client.getOpenIdToken();
      return {
        access_token: t.access_token,
        token_type: t.token_type,
        matrix_server_name: t.matrix_server_name,
        expires_in: t.expires_in,
      };
    };
    const openidPath = `/_matrix/client/v3/user/${encodeURIComponent(user.userId)}/openid/request_token`;
    const openidCurl = curl('POST', `$HS${openidPath}`, { token: '$ALICE_TOKEN', body: {} });
    /** The body as a curl line, with the short-lived OpenID token left for the reader to fill in. */
    const agentCurl = (route: string, body: { openid_token: Record<string, unknown> }) =>
      curl('POST', `$AGENT${route}`, {
        body: { ...body, openid_token: { ...body.openid_token, access_token: '<from request_token>' } },
      });
    /** The delegation fields with the delay_id js-sdk holds now (none while it schedules a new one). */
    const delay = () => {
      if (currentDelayId === undefined) throw new Error('no delayed leave is scheduled right now');
      return { delay_id: currentDelayId, delay_timeout: timing.delayMs };
    };
    let crashed = false;

    return {
      user,
      client,
      session,
      memberId,
      delayId,
      currentDelayId: () => currentDelayId,
      onDelayIdChanged: (listener) => void delayIdListeners.push(listener),
      stateKey,
      scheduledRunningSince: scheduled.running_since,
      identity: hashJsonArray([user.userId, user.deviceId, memberId]),
      livekitRoom: hashJsonArray([roomId, SLOT_ID]),
      clientRestartsSinceSetup: () => gate.answered.slice(answeredAtSetup).filter(isRestart),
      async getToken({ delegate }) {
        const body = {
          room_id: roomId,
          slot_id: SLOT_ID,
          openid_token: await openid(),
          member,
          ...(delegate ? delay() : {}),
        };
        const res = await okJson('POST', `${agent.url}/get_token`, { body });
        timeline.mark(
          'client',
          `asked the agent for a LiveKit token${delegate ? ', handing over the delay_id' : ''} (/get_token)`,
          [openidCurl, agentCurl('/get_token', body)],
        );
        if (typeof res.jwt !== 'string' || typeof res.url !== 'string') {
          throw new Error(`bad /get_token answer ${JSON.stringify(res)}`);
        }
        timeline.setVar('JWT', res.jwt);
        return { url: res.url, jwt: res.jwt };
      },
      async delegateToAgent() {
        const body = { room_id: roomId, slot_id: SLOT_ID, openid_token: await openid(), member, ...delay() };
        await okJson('POST', `${agent.url}/delegate_delayed_leave`, { body });
        timeline.mark('client', 'handed the delay_id to the agent (/delegate_delayed_leave)', [
          openidCurl,
          agentCurl('/delegate_delayed_leave', body),
        ]);
      },
      async livekitServiceUrl() {
        const r = await requestJson('GET', `${hs.baseUrl}${MSC4143_TRANSPORTS}`, { token: user.accessToken });
        const transports = (r.body.rtc_transports ?? []) as Array<Record<string, unknown>>;
        const url = transports.find((t) => t.type === 'livekit')?.livekit_service_url;
        timeline.mark('client', `asked its homeserver for RTC transports -> ${r.status} ${JSON.stringify(r.body)}`, [
          curl('GET', `$HS${MSC4143_TRANSPORTS}`, { token: '$ALICE_TOKEN' }),
        ]);
        return typeof url === 'string' ? url : undefined;
      },
      async delegateViaHomeserver(url) {
        const body = {
          url,
          room_id: roomId,
          slot_id: SLOT_ID,
          member: { id: memberId, claimed_device_id: user.deviceId },
          delay_id: delayId,
        };
        const res = await requestJson('POST', `${hs.baseUrl}${MSC4195_DELEGATE}`, {
          token: user.accessToken,
          body,
        });
        const outcome = res.status === 200 ? '200' : `${res.status} ${JSON.stringify(res.body)}`;
        timeline.mark('client', `handed the delay_id to its homeserver (MSC4195) -> ${outcome}`, [
          curl('POST', `$HS${MSC4195_DELEGATE}`, { token: '$ALICE_TOKEN', body }),
        ]);
        return res;
      },
      crash() {
        if (crashed) return;
        crashed = true;
        close();
        timeline.mark(
          'client',
          'the app died without leaving (network cut, client stopped): it will never restart the hangup',
        );
      },
      crashed: () => crashed,
      listing,
      finalised,
      close,
    };
  } catch (err) {
    close();
    throw err;
  }
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
  await okJson('POST', `${hs.baseUrl}/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {
    token: bob.accessToken,
    body: {},
  });
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
      const child = path.relative(process.cwd(), path.join(SUPPORT_DIR, 'participant-child.ts'));
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

