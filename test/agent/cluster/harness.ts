// Cluster mode, black-box: a real redis-server and several `lastwill agent` replicas as child
// processes on it, with lk-jwt-service's environment (LIVEKIT_REDIS_URL turns cluster mode on),
// against the same loopback fakes as the single-node black-box suite.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { partitionOf, preferredOwner } from '../../../src/agent/cluster/partitions.js';
import { freeTcpPort, waitFor } from '../../e2e/support/proc.js';
import { type FakeHomeserver, startFakeHomeserver } from '../../fakes/fake-homeserver.js';
import { type FakeSfu, startFakeSfu } from '../../fakes/fake-sfu.js';
import { type RedisOptions, type RedisServer, startRedis } from '../../support/redis.js';
import { type AgentChild, CREDS, http, referenceEnv, spawnAgent } from '../blackbox/harness.js';

/** Short leases keep takeovers within a test's patience; the default (3 s) is what operators get. */
export const LEASE_MS = 1500;
export const PARTITIONS = 64;

export const replicaId = (i: number) => `replica-${i}`;

export interface Cluster {
  hs: FakeHomeserver;
  sfu: FakeSfu;
  /** The cluster's own Redis (absent when the test brought one). */
  redis: RedisServer | undefined;
  dir: string;
  /** By index; undefined once stopped or killed. */
  replicas: Array<AgentChild | undefined>;
  /** Starts replica `i` (again) and waits until it is ready. */
  start(i: number): Promise<AgentChild>;
  replica(i: number): AgentChild;
  /** The replicas running now. */
  running(): AgentChild[];
  /** Each running replica's owned partitions, by index. */
  owned(): Promise<Map<number, number>>;
  /** Waits until the running replicas own every partition between them, each at least one. */
  settled(): Promise<void>;
  /** The index of the running replica that owns (once settled) a room's jobs. */
  ownerOf(room: string): number;
  close(): Promise<void>;
}

export async function startCluster(
  count: number,
  opts: { env?: Record<string, string>; redis?: RedisOptions; redisUrl?: string } = {},
): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'lastwill-cluster-'));
  const hs = await startFakeHomeserver();
  const sfu = await startFakeSfu(CREDS);
  // A Redis of the test's own (already holding data), or a fresh one of the cluster's.
  const redis: RedisServer | undefined = opts.redisUrl ? undefined : await startRedis(dir, opts.redis);
  const redisUrl = opts.redisUrl ?? redis!.url;
  const ports = await Promise.all(Array.from({ length: count }, () => freeTcpPort()));
  const envOf = (i: number): Record<string, string> => ({
    ...referenceEnv(hs, sfu, ports[i] ?? 0),
    LIVEKIT_REDIS_URL: redisUrl,
    LASTWILL_AGENT_CLUSTER_LEASE_MS: String(LEASE_MS),
    LASTWILL_AGENT_CLUSTER_PARTITIONS: String(PARTITIONS),
    LASTWILL_AGENT_CLUSTER_REPLICA_ID: replicaId(i),
    LASTWILL_AGENT_ENGINE_BACKOFF_INITIAL_MS: '200',
    LASTWILL_AGENT_ENGINE_BACKOFF_MAX_MS: '1000',
    LASTWILL_AGENT_ENGINE_ABORT_GRACE_MS: '1000',
    ...opts.env,
  });
  const cluster: Cluster = {
    hs,
    sfu,
    redis,
    dir,
    replicas: [],
    async start(i) {
      while (ports.length <= i) ports.push(await freeTcpPort());
      const agent = await spawnAgent(envOf(i));
      cluster.replicas[i] = agent;
      await waitFor(`replica ${i} ready`, async () => (await http(`${agent.url}/readyz`)).status === 200, {
        timeoutMs: 20_000,
        intervalMs: 50,
      });
      return agent;
    },
    replica(i) {
      const r = cluster.replicas[i];
      if (!r) throw new Error(`replica ${i} is not running`);
      return r;
    },
    running: () => cluster.replicas.filter((r): r is AgentChild => r !== undefined && !r.proc.hasExited()),
    async owned() {
      const owned = new Map<number, number>();
      for (const [i, r] of cluster.replicas.entries()) {
        if (r && !r.proc.hasExited()) owned.set(i, await r.metric('lastwill_agent_cluster_partitions_owned'));
      }
      return owned;
    },
    async settled() {
      await waitFor(
        'the partitions shared out',
        async () => {
          const owned = [...(await cluster.owned()).values()];
          return owned.length > 0 && owned.every((n) => n > 0) && owned.reduce((a, b) => a + b, 0) === PARTITIONS;
        },
        { timeoutMs: 20_000, intervalMs: 100 },
      );
    },
    ownerOf(room) {
      const live = cluster.replicas.flatMap((r, i) => (r && !r.proc.hasExited() ? [replicaId(i)] : []));
      const owner = preferredOwner(partitionOf(room, PARTITIONS), live);
      return Number(owner?.slice('replica-'.length));
    },
    async close() {
      for (const r of cluster.replicas) if (r && !r.proc.hasExited()) await r.proc.kill();
      await Promise.all([hs.close(), sfu.close(), redis?.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let i = 0; i < count; i++) await cluster.start(i);
  return cluster;
}
