/**
 * The agent under load: the real CLI (`node dist/cli.js agent`) in a child process, wired to the
 * test fakes (test/fakes/fake-sfu.ts, fake-homeserver.ts) on loopback. Delegations go through the
 * server-to-server endpoint `POST /_lastwill/v1/delegations` with the homeserver secret: it skips
 * the OpenID check (one federation round trip per delegation that would measure the fake, not the
 * agent) and is otherwise the same path into the job engine as the client routes.
 *
 * The fakes record every request in an array for tests; at a million requests that array is the
 * bench's own memory problem, so the world replaces the arrays' push with counters and hooks.
 *
 * Each homeserver name gets a fake of its own (its own port, so its own origin): the agent keeps
 * a connection pool per origin, and one fake behind every name would have measured one pool's
 * connection cap instead of the agent.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { startFakeHomeserver, type FakeHomeserver, type RecordedRequest } from '../../test/fakes/fake-homeserver.js';
import { startFakeSfu, type FakeSfu, type TwirpCall } from '../../test/fakes/fake-sfu.js';
import { freeTcpPort } from '../../test/e2e/support/proc.js';
import { type RedisServer, startRedis } from '../../test/support/redis.js';
import { spawnCli, nowMs, type CliChild } from './child.js';
import { Client, runConcurrent, sleep } from './http.js';

export const LK = { key: 'benchkey', secret: 'bench-secret-bench-secret-bench-secret-0123' };
const HS_SECRET = 'bench-homeserver-secret-0123456789';
const DELAYED_PREFIX = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events/';

export interface WorldOptions {
  /** Participants (= delegations). */
  jobs: number;
  roomSize: number;
  /** Distinct homeserver server names, each served by a fake of its own; pacing is per name. */
  homeservers: number;
  delayMs: number;
  /** Extra LASTWILL_AGENT_* settings. */
  env?: Record<string, string>;
  /** Delegation requests in flight. */
  concurrency?: number;
  /**
   * Cluster mode: this many replicas on a real redis-server of the world's own; delegations and
   * webhooks are spread over them round-robin, as a load balancer would.
   */
  replicas?: number;
}

export interface ActionHit {
  delayId: string;
  action: string;
  at: number;
}

export class AgentWorld {
  sfu!: FakeSfu;
  homeservers: FakeHomeserver[] = [];
  agent!: CliChild;
  client!: Client;
  agentUrl = '';
  /** Cluster mode: every replica (the first is also `agent`), their clients and their Redis. */
  agents: CliChild[] = [];
  clients: Client[] = [];
  agentUrls: string[] = [];
  redis: RedisServer | undefined;
  readonly dataDir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-bench-agent-'));
  readonly counts = { restart: 0, send: 0, other: 0, listParticipants: 0 };
  firstRestartAt = 0;
  lastRestartAt = 0;
  /** Called for every restart/send arrival at the fake homeserver. */
  onAction: ((hit: ActionHit) => void) | undefined;
  /** Generation of delay ids and sids, bumped by redelegate. */
  gen = 0;
  private port = 0;
  private env: Record<string, string> = {};

  constructor(readonly opts: WorldOptions) {}

  room(i: number): string {
    return `bench-room-${Math.floor(i / this.opts.roomSize)}`;
  }
  server(i: number): string {
    return `hs${i % this.opts.homeservers}.bench`;
  }
  identity(i: number): string {
    return `@u${i}:${this.server(i)}:DEV${i}`;
  }
  sid(i: number): string {
    return `PA_${this.gen}_${i}`;
  }
  delayId(i: number): string {
    return `bench_${this.gen}_${i}`;
  }
  get rooms(): number {
    return Math.ceil(this.opts.jobs / this.opts.roomSize);
  }

  async startFakes(): Promise<void> {
    this.sfu = await startFakeSfu(LK);
    (this.sfu.calls as TwirpCall[]).push = (...calls: TwirpCall[]) => {
      for (const c of calls) if (c.method === 'ListParticipants') this.counts.listParticipants++;
      return 0;
    };
    for (let k = 0; k < this.opts.homeservers; k++) {
      const hs = await startFakeHomeserver();
      (hs.requests as RecordedRequest[]).push = (...reqs: RecordedRequest[]) => {
        const at = nowMs();
        for (const r of reqs) this.record(r.path, at);
        return 0;
      };
      this.homeservers.push(hs);
    }
    this.port = await freeTcpPort();
    this.agentUrl = `http://127.0.0.1:${this.port}`;
    if (this.opts.replicas) this.redis = await startRedis(this.dataDir);
    const names = Array.from({ length: this.opts.homeservers }, (_, k) => `hs${k}.bench`);
    this.env = {
      LASTWILL_AGENT_BIND: `127.0.0.1:${this.port}`,
      LIVEKIT_URL: this.sfu.url,
      LIVEKIT_KEY: LK.key,
      LIVEKIT_SECRET: LK.secret,
      LASTWILL_AGENT_FULL_ACCESS_HOMESERVERS: names.join(','),
      LASTWILL_AGENT_CS_API_URL_OVERRIDES: names.map((n, k) => `${n}=${this.homeservers[k]!.url}`).join(','),
      LASTWILL_AGENT_HOMESERVER_SECRET: HS_SECRET,
      LASTWILL_AGENT_DATA_DIR: this.dataDir,
      // info logs two lines per delegation; the benchmark measures the agent, not pino.
      LASTWILL_AGENT_LOG_LEVEL: 'warn',
      ...(this.redis ? { LIVEKIT_REDIS_URL: this.redis.url } : {}),
      ...this.opts.env,
    };
  }

  private record(p: string, at: number): void {
    if (!p.startsWith(DELAYED_PREFIX)) {
      this.counts.other++;
      return;
    }
    const [id, action] = p.slice(DELAYED_PREFIX.length).split('/');
    if (action === 'restart') {
      this.counts.restart++;
      if (this.firstRestartAt === 0) this.firstRestartAt = at;
      this.lastRestartAt = at;
    } else if (action === 'send') {
      this.counts.send++;
    }
    this.onAction?.({ delayId: decodeURIComponent(id ?? ''), action: action ?? '', at });
  }

  async startAgent(): Promise<CliChild> {
    if (this.opts.replicas) {
      for (let i = 0; i < this.opts.replicas; i++) await this.startReplica(i);
      return this.agent;
    }
    this.agent = await spawnCli('agent', this.env, { readyUrl: `${this.agentUrl}/readyz`, inspect: true, cwd: this.dataDir });
    this.agents = [this.agent];
    this.agentUrls = [this.agentUrl];
    this.client ??= new Client(this.agentUrl, this.opts.concurrency ?? 64);
    this.clients = [this.client];
    return this.agent;
  }

  /** Cluster mode: starts replica `i` (again) on its own port. */
  async startReplica(i: number): Promise<CliChild> {
    const url = (this.agentUrls[i] ??= `http://127.0.0.1:${i === 0 ? this.port : await freeTcpPort()}`);
    const env = { ...this.env, LASTWILL_AGENT_BIND: url.slice('http://'.length), LASTWILL_AGENT_CLUSTER_REPLICA_ID: `replica-${i}` };
    const child = await spawnCli('agent', env, { readyUrl: `${url}/readyz`, inspect: true, cwd: this.dataDir });
    this.agents[i] = child;
    this.clients[i] ??= new Client(url, this.opts.concurrency ?? 64);
    if (i === 0) {
      this.agent = child;
      this.client = this.clients[0]!;
    }
    return child;
  }

  /** Cluster mode: waits until the running replicas own all `partitions` between them. */
  async shared(partitions: number, timeoutMs = 60_000): Promise<void> {
    await this.until('the partitions shared out', async () => {
      let owned = 0;
      for (const [i, a] of this.agents.entries()) {
        if (a.proc.hasExited()) continue;
        const r = await this.clients[i]!.request('GET', '/metrics');
        owned += Number(/^lastwill_agent_cluster_partitions_owned (\d+)/m.exec(r.text)?.[1] ?? 0);
      }
      return owned === partitions;
    }, timeoutMs, 100);
  }

  /** The clients of the running replicas. */
  live(): Client[] {
    return this.clients.filter((_, i) => !this.agents[i]?.proc.hasExited());
  }

  /** Puts every participant into its LiveKit room (what ListParticipants will answer). */
  joinAll(): void {
    const now = Date.now();
    for (let i = 0; i < this.opts.jobs; i++) this.sfu.join(this.room(i), { identity: this.identity(i), sid: this.sid(i), joinedAtMs: now });
  }

  leaveAll(): void {
    for (let i = 0; i < this.opts.jobs; i++) this.sfu.leave(this.room(i), this.identity(i));
  }

  /** Delegates every participant; resolves when all are accepted (durable). Returns ms taken. */
  async delegateAll(): Promise<number> {
    const t0 = nowMs();
    const clients = this.live();
    await runConcurrent(this.opts.jobs, this.opts.concurrency ?? 64, async (i) => {
      const r = await clients[i % clients.length]!.request(
        'POST',
        '/_lastwill/v1/delegations',
        {
          livekit_room: this.room(i),
          identity: this.identity(i),
          delay_id: this.delayId(i),
          delay_timeout: this.opts.delayMs,
          server_name: this.server(i),
          user_id: `@u${i}:${this.server(i)}`,
        },
        { authorization: `Bearer ${HS_SECRET}` },
      );
      if (r.status !== 200) throw new Error(`delegation ${i}: ${r.status} ${r.text}`);
    });
    return nowMs() - t0;
  }

  /** Jobs by state, over every running replica. */
  async jobCounts(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const text of await this.metricsTexts()) {
      for (const m of text.matchAll(/^lastwill_agent_jobs\{state="(\w+)"\} (\d+)/gm)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    }
    return out;
  }

  /** Restart or send calls whose answer the agent has handled, whatever the outcome (all replicas). */
  async actionsAnswered(action: 'restart' | 'send'): Promise<number> {
    let n = 0;
    for (const text of await this.metricsTexts()) {
      for (const m of text.matchAll(/^lastwill_agent_delayed_event_actions_total\{([^}]*)\} (\d+)/gm)) {
        if (m[1]!.includes(`action="${action}"`)) n += Number(m[2]);
      }
    }
    return n;
  }

  private async metricsTexts(): Promise<string[]> {
    return Promise.all(this.live().map(async (c) => (await c.request('GET', '/metrics')).text));
  }

  /** Polls until `check` holds; returns the time it first held (epoch ms). */
  async until(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs = 50): Promise<number> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (await check()) return nowMs();
      if (!this.opts.replicas && this.agent?.proc.hasExited()) throw new Error(`agent exited while waiting for ${what}:\n${this.agent.proc.logs().slice(-3000)}`);
      if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (counts ${JSON.stringify(this.counts)})`);
      await sleep(intervalMs);
    }
  }

  async close(): Promise<void> {
    for (const c of this.clients) await c.close().catch(() => undefined);
    for (const agent of this.agents) {
      if (!agent || agent.proc.hasExited()) continue;
      // A profiled child must exit gracefully to write its profile.
      if (process.env.BENCH_CPU_PROF) await agent.stop();
      else await agent.kill9();
    }
    await this.redis?.close();
    await this.sfu?.close();
    for (const hs of this.homeservers) await hs.close();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
