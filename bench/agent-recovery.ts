/**
 * Benchmark 3, recovery: N live (connected) jobs, kill -9, start the agent again on the same data
 * dir. Reports the time from spawning the new process until it is ready (/readyz: every job
 * restored from SQLite and back in the engine), until LiveKit has been asked about every room, and
 * until every job is connected again (= reconciled). Restored jobs whose last restart was confirmed
 * keep their normal restart time, so a healthy recovery makes (almost) no restarts at once:
 * `restarts_during_recovery` counts those that did happen.
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
    const agent = await w.startAgent();
    const spawnedAt = agent.spawnedAt;
    const tReady = nowMs();
    const tListed = await w.until('every room looked up', () => w.counts.listParticipants - lists0 >= w.rooms, timeout, 10);
    const tConnected = await w.until('all connected again', async () => ((await w.jobCounts()).connected ?? 0) >= p.jobs, timeout, 50);
    const reconciled = Math.max(tListed, tConnected);
    log(`  ready after ${((tReady - spawnedAt) / 1000).toFixed(2)} s, reconciled after ${((reconciled - spawnedAt) / 1000).toFixed(2)} s`);
    return {
      jobs: p.jobs,
      ready_s: (tReady - spawnedAt) / 1000,
      all_rooms_looked_up_s: (tListed - spawnedAt) / 1000,
      all_connected_s: (tConnected - spawnedAt) / 1000,
      reconciled_s: (reconciled - spawnedAt) / 1000,
      restarts_during_recovery: w.counts.restart - restarts0,
      rss_after_mib: agent.rss() / 2 ** 20,
    };
  } finally {
    await w.close();
  }
}
