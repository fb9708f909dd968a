/**
 * Cluster mode beside single-node mode, in the same run (benchmark 4):
 *
 * - `clusterScale`: N delegations of connected participants with 1 h delays, over the replicas
 *   (round-robin, as a load balancer spreads them); time to accept them, until every first restart
 *   reached the homeserver, Redis memory per job (INFO used_memory), the replicas' resident memory
 *   per job, and their idle CPU over a window with the sanity poll in it. `replicas: 1` without
 *   Redis is the single-node baseline.
 * - `clusterTakeover`: every participant of one replica's jobs vanishes from LiveKit at the moment
 *   that replica is killed (kill -9); a job is "driven again" when its send reaches the homeserver,
 *   after another replica took its partition over, restored it and asked LiveKit. Per job: time
 *   from the kill to that send. The single-node baseline kills the agent and starts it again at
 *   once, so the same figure includes its restart.
 *
 * The mass-disconnect burst in cluster mode is `agentDisconnect` with `replicas`.
 */
import { createClient } from '@redis/client';

import { partitionOf, preferredOwner } from '../src/agent/cluster/partitions.js';
import { AgentWorld } from './lib/agent-world.js';
import { nowMs } from './lib/child.js';
import { sleep } from './lib/http.js';
import { distribution, flat } from './lib/stats.js';

const HOUR = 3_600_000;
/** The default partition count (config cluster.partitions). */
const PARTITIONS = 256;

export interface ClusterParams {
  jobs: number;
  /** 1 without Redis is single-node mode. */
  replicas: number;
  idleSeconds?: number;
  /** Extra LASTWILL_AGENT_* settings (e.g. a shorter cluster.lease_ms). */
  env?: Record<string, string>;
  log?: (msg: string) => void;
}

function world(p: ClusterParams): AgentWorld {
  return new AgentWorld({
    jobs: p.jobs,
    roomSize: 10,
    homeservers: 8,
    delayMs: HOUR,
    env: { LASTWILL_AGENT_ENGINE_PACING_PER_SECOND: '1000000', LASTWILL_AGENT_ENGINE_PACING_BURST: '1000000', ...p.env },
    ...(p.replicas > 1 ? { replicas: p.replicas } : {}),
  });
}

async function redisUsedMemory(url: string): Promise<number> {
  const client = createClient({ url });
  await client.connect();
  try {
    const info = await client.info('memory');
    return Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? NaN);
  } finally {
    await client.close();
  }
}

/** The world with its fakes and agent(s) up and, in cluster mode, the partitions shared out. */
async function started(w: AgentWorld, p: ClusterParams): Promise<void> {
  await w.startFakes();
  await w.startAgent();
  if (p.replicas > 1) await w.shared(PARTITIONS);
}

export async function clusterScale(p: ClusterParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const w = world(p);
  const timeout = Math.max(120_000, p.jobs * 3);
  try {
    await started(w, p);
    const rss0 = w.agents.reduce((sum, a) => sum + a.rss(), 0);
    const redis0 = w.redis ? await redisUsedMemory(w.redis.url) : 0;
    w.joinAll();
    const t0 = nowMs();
    log(`  delegating ${p.jobs} over ${p.replicas} replica(s)`);
    const acceptMs = await w.delegateAll();
    const tRestarted = await w.until('all first restarts', () => w.counts.restart >= p.jobs, timeout, 20);
    log(`  accepted in ${(acceptMs / 1000).toFixed(1)} s, all restarted after ${((tRestarted - t0) / 1000).toFixed(1)} s`);
    // Let the answers and progress writes settle before measuring memory.
    await sleep(3000);
    const heap = await Promise.all(w.agents.map((a) => a.heapAfterGc()));
    const rss = w.agents.reduce((sum, a) => sum + a.rss(), 0);
    const redisBytes = w.redis ? (await redisUsedMemory(w.redis.url)) - redis0 : 0;
    const idleS = p.idleSeconds ?? 31;
    const cpu0 = w.agents.reduce((sum, a) => sum + a.cpuSeconds(), 0);
    const restarts0 = w.counts.restart;
    await sleep(idleS * 1000);
    const idleCpu = w.agents.reduce((sum, a) => sum + a.cpuSeconds(), 0) - cpu0;
    return {
      jobs: p.jobs,
      replicas: p.replicas,
      accept_s: acceptMs / 1000,
      accept_per_s: p.jobs / (acceptMs / 1000),
      all_restarted_s: (tRestarted - t0) / 1000,
      agents_rss_mib: rss / 2 ** 20,
      agents_rss_bytes_per_job: (rss - rss0) / p.jobs,
      agents_heap_used_mib: heap.reduce((sum, h) => sum + h.heapUsed, 0) / 2 ** 20,
      redis_used_mib: redisBytes / 2 ** 20,
      redis_bytes_per_job: redisBytes / p.jobs,
      // Summed over the replicas: a share of one core.
      idle_cpu_pct: (100 * idleCpu) / idleS,
      restarts_in_idle_window: w.counts.restart - restarts0,
    };
  } finally {
    await w.close();
  }
}

export async function clusterTakeover(p: ClusterParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const w = world(p);
  const timeout = Math.max(120_000, p.jobs * 3);
  try {
    await started(w, p);
    w.joinAll();
    await w.delegateAll();
    await w.until('all first restarts', () => w.counts.restart >= p.jobs, timeout, 20);
    // Let progress writes settle: the takeover restores what the owner last wrote.
    await sleep(3000);
    const replicaIds = Array.from({ length: p.replicas }, (_, i) => `replica-${i}`);
    const ownerOf = (i: number) =>
      p.replicas > 1 ? Number(preferredOwner(partitionOf(w.room(i), PARTITIONS), replicaIds)!.slice('replica-'.length)) : 0;
    const victim = ownerOf(0);
    const theirs = Array.from({ length: p.jobs }, (_, i) => i).filter((i) => ownerOf(i) === victim);
    const sendAt = new Map<string, number>();
    const prefix = `bench_${w.gen}_`;
    w.onAction = (hit) => {
      if (hit.action === 'send' && hit.delayId.startsWith(prefix) && !sendAt.has(hit.delayId)) sendAt.set(hit.delayId, hit.at);
    };
    const sends0 = w.counts.send;
    log(`  killing replica ${victim}, owner of ${theirs.length} of ${p.jobs} jobs; their participants vanish`);
    for (const i of theirs) w.sfu.leave(w.room(i), w.identity(i));
    const tKill = nowMs();
    await w.agents[victim]!.kill9();
    if (p.replicas === 1) await w.startAgent();
    await w.until('every taken-over job sent', () => sendAt.size >= theirs.length, timeout, 20);
    await sleep(2000);
    const latencies = theirs.map((i) => sendAt.get(`${prefix}${i}`)! - tKill);
    const d = distribution(latencies);
    return {
      jobs: p.jobs,
      replicas: p.replicas,
      taken_over_jobs: theirs.length,
      ...flat('kill_to_send_ms', d),
      duplicate_or_extra_sends: w.counts.send - sends0 - theirs.length,
    };
  } finally {
    await w.close();
  }
}
