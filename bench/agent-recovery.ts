/**
 * Benchmark 3, recovery: N live (connected) jobs, kill -9, start the agent again on the same data
 * dir. Reports the time from spawning the new process until it is ready (/readyz: every job
 * restored from SQLite and back in the engine), until every job's delayed event has been
 * restarted (the restore restarts first, because the event kept counting down while the agent was
 * away), until LiveKit has been asked about every room, and until every job is connected again.
 * Restart pacing is raised: at the default 20/s per homeserver the restarts alone take N / (20 ×
 * homeservers) seconds, which the report states separately.
 */
import { AgentWorld } from './lib/agent-world.js';
import { nowMs } from './lib/child.js';
import { sleep } from './lib/http.js';

export interface RecoveryParams {
  /** Extra LASTWILL_AGENT_* settings (e.g. LASTWILL_AGENT_SQLITE_SYNCHRONOUS). */
  env?: Record<string, string>;
  jobs: number;
  homeservers?: number;
  log?: (msg: string) => void;
}

export async function agentRecovery(p: RecoveryParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const w = new AgentWorld({
    jobs: p.jobs,
    roomSize: 10,
    homeservers: p.homeservers ?? 8,
    delayMs: 3_600_000,
    env: { LASTWILL_AGENT_ENGINE_PACING_PER_SECOND: '1000000', LASTWILL_AGENT_ENGINE_PACING_BURST: '1000000', ...p.env },
  });
  const timeout = Math.max(120_000, p.jobs * 2);
  try {
    await w.startFakes();
    await w.startAgent();
    w.joinAll();
    log(`  setting up ${p.jobs} connected jobs`);
    await w.delegateAll();
    await w.until('all connected', async () => ((await w.jobCounts()).connected ?? 0) >= p.jobs, timeout, 100);
    await w.until('all first restarts', () => w.counts.restart >= p.jobs, timeout, 20);
    // Let the last state changes commit, then crash.
    await sleep(1500);
    await w.agent.kill9();
    const restarts0 = w.counts.restart;
    const lists0 = w.counts.listParticipants;
    const t0 = nowMs();
    const agent = await w.startAgent();
    const spawnedAt = agent.spawnedAt;
    const tReady = nowMs();
    const tRestarted = await w.until('every restart after recovery', () => w.counts.restart - restarts0 >= p.jobs, timeout, 10);
    const tListed = await w.until('every room looked up', () => w.counts.listParticipants - lists0 >= w.rooms, timeout, 10);
    const tConnected = await w.until('all connected again', async () => ((await w.jobCounts()).connected ?? 0) >= p.jobs, timeout, 50);
    const reconciled = Math.max(tRestarted, tListed, tConnected);
    log(`  ready after ${((tReady - spawnedAt) / 1000).toFixed(2)} s, reconciled after ${((reconciled - spawnedAt) / 1000).toFixed(2)} s`);
    return {
      jobs: p.jobs,
      ready_s: (tReady - spawnedAt) / 1000,
      all_restarted_s: (tRestarted - spawnedAt) / 1000,
      all_rooms_looked_up_s: (tListed - spawnedAt) / 1000,
      all_connected_s: (tConnected - spawnedAt) / 1000,
      reconciled_s: (reconciled - spawnedAt) / 1000,
      restart_wave_per_s: p.jobs / ((tRestarted - t0) / 1000),
      default_pacing_restart_s: p.jobs / (20 * (p.homeservers ?? 8)),
      rss_after_mib: agent.rss() / 2 ** 20,
      extra_restarts: w.counts.restart - restarts0 - p.jobs,
    };
  } finally {
    await w.close();
  }
}
