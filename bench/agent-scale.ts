/**
 * Benchmark 1, the agent at scale: N delegations of connected participants with 1 h delays.
 * Measures the time to accept them (HTTP 200 = durable), until all are connected and their
 * first restart reached the homeserver, resident memory and V8 heap (after a full GC), and
 * idle CPU over a window that contains the periodic LiveKit sanity poll.
 *
 * `agentRestartSustain` measures the sustained restart rate separately: with short delays every
 * job restarts every 0.8 × delay, so the steady-state demand is known and the achieved rate, CPU
 * and missed deadlines (expired jobs) over a window are the agent's restart capacity.
 */
import { AgentWorld } from './lib/agent-world.js';
import { nowMs } from './lib/child.js';
import { sleep } from './lib/http.js';

export interface ScaleParams {
  /** Extra LASTWILL_AGENT_* settings (e.g. LASTWILL_AGENT_SQLITE_SYNCHRONOUS). */
  env?: Record<string, string>;
  jobs: number;
  roomSize?: number;
  homeservers?: number;
  idleSeconds?: number;
  sanitySeconds?: number;
  /** Restart pacing per homeserver (default raised so the initial restarts do not queue for hours). */
  pacingPerSecond?: number;
  log?: (msg: string) => void;
}

const HOUR = 3_600_000;

export async function agentScale(p: ScaleParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const pacing = p.pacingPerSecond ?? 1_000_000;
  const w = new AgentWorld({
    jobs: p.jobs,
    roomSize: p.roomSize ?? 10,
    homeservers: p.homeservers ?? 8,
    delayMs: HOUR,
    env: {
      LASTWILL_AGENT_ENGINE_PACING_PER_SECOND: String(pacing),
      LASTWILL_AGENT_ENGINE_PACING_BURST: String(Math.max(50, Math.round(pacing))),
      LASTWILL_AGENT_SANITY_CHECK_INTERVAL_SECONDS: String(p.sanitySeconds ?? 30),
      ...p.env,
    },
  });
  const timeout = Math.max(120_000, p.jobs * 2);
  try {
    await w.startFakes();
    const agent = await w.startAgent();
    const rssEmpty = agent.rss();
    w.joinAll();
    const cpu0 = agent.cpuSeconds();
    const t0 = nowMs();
    log(`  delegating ${p.jobs}`);
    const acceptMs = await w.delegateAll();
    const cpuAccept = agent.cpuSeconds() - cpu0;
    const tConnected = await w.until('all connected', async () => ((await w.jobCounts()).connected ?? 0) >= p.jobs, timeout, 100);
    const tRestarted = await w.until('all first restarts', () => w.counts.restart >= p.jobs, timeout, 20);
    const cpuSetup = agent.cpuSeconds() - cpu0;
    log(`  accepted in ${(acceptMs / 1000).toFixed(1)} s, all restarted after ${((tRestarted - t0) / 1000).toFixed(1)} s`);
    // The fake counts a restart when it arrives; the agent still has to take in the answers.
    await w.until('all restart answers handled', async () => (await w.actionsAnswered('restart')) >= p.jobs, timeout, 100);
    await sleep(2000);
    const heap = await agent.heapAfterGc();
    const rss = agent.rss();
    // Idle: nothing happens but timers and the sanity poll (restarts with 1 h delays are ~48 min
    // away). The first room's poll is due one interval after it connected: a window that opened
    // before then would count poll-free seconds as idle (small runs finish their setup sooner).
    const firstPollAt = t0 + (p.sanitySeconds ?? 30) * 1000 + 1000;
    if (nowMs() < firstPollAt) await sleep(firstPollAt - nowMs());
    const idleMs = (p.idleSeconds ?? 30) * 1000;
    log(`  idle window of ${idleMs / 1000} s`);
    const lists0 = w.counts.listParticipants;
    const restarts0 = w.counts.restart;
    const c0 = agent.cpuSeconds();
    const i0 = nowMs();
    await sleep(idleMs);
    const idleCpu = agent.cpuSeconds() - c0;
    const idleWall = (nowMs() - i0) / 1000;
    const counts = await w.jobCounts();
    return {
      jobs: p.jobs,
      accept_s: acceptMs / 1000,
      accept_per_s: p.jobs / (acceptMs / 1000),
      all_connected_s: (tConnected - t0) / 1000,
      all_first_restart_s: (tRestarted - t0) / 1000,
      setup_cpu_s: cpuSetup,
      accept_cpu_s: cpuAccept,
      cpu_ms_per_delegation: (cpuSetup * 1000) / p.jobs,
      rss_mib: rss / 2 ** 20,
      rss_empty_mib: rssEmpty / 2 ** 20,
      peak_rss_mib: agent.peakRss() / 2 ** 20,
      heap_used_mib: heap.heapUsed / 2 ** 20,
      bytes_per_job_rss: (rss - rssEmpty) / p.jobs,
      bytes_per_job_heap: heap.heapUsed / p.jobs,
      idle_cpu_pct: (100 * idleCpu) / idleWall,
      idle_list_participants: w.counts.listParticipants - lists0,
      idle_restarts: w.counts.restart - restarts0,
      connected_after_idle: counts.connected ?? 0,
      required_restarts_per_s_1h: p.jobs / ((0.8 * HOUR * 0.975) / 1000),
    };
  } finally {
    await w.close();
  }
}

export interface SustainParams {
  jobs: number;
  delayMs: number;
  windowSeconds?: number;
  homeservers?: number;
  pacingPerSecond?: number;
  pacingBurst?: number;
  log?: (msg: string) => void;
}

export async function agentRestartSustain(p: SustainParams): Promise<Record<string, number>> {
  const pacing = p.pacingPerSecond ?? 1_000_000;
  const w = new AgentWorld({
    jobs: p.jobs,
    roomSize: 10,
    homeservers: p.homeservers ?? 8,
    delayMs: p.delayMs,
    env: {
      LASTWILL_AGENT_ENGINE_PACING_PER_SECOND: String(pacing),
      LASTWILL_AGENT_ENGINE_PACING_BURST: String(p.pacingBurst ?? Math.max(50, Math.round(pacing))),
      // Only restarts in the window: the sanity poll is measured by agentScale.
      LASTWILL_AGENT_SANITY_CHECK_INTERVAL_SECONDS: '0',
    },
  });
  try {
    await w.startFakes();
    const agent = await w.startAgent();
    w.joinAll();
    await w.delegateAll();
    await w.until('all connected', async () => ((await w.jobCounts()).connected ?? 0) >= p.jobs, 120_000, 100);
    // Past the first periodic restart, so the schedule is in its steady state.
    await sleep(p.delayMs * 0.85);
    const r0 = w.counts.restart;
    const c0 = agent.cpuSeconds();
    const t0 = nowMs();
    // Every job connected at about the same moment, so restarts come in waves one mean period
    // apart; a window of whole periods holds the same number of waves whatever its phase.
    const period = 0.8 * p.delayMs * 0.975;
    await sleep(Math.max(1, Math.round(((p.windowSeconds ?? 20) * 1000) / period)) * period);
    const restarts = w.counts.restart - r0;
    const cpu = agent.cpuSeconds() - c0;
    const wall = (nowMs() - t0) / 1000;
    const counts = await w.jobCounts();
    const demand = p.jobs / (period / 1000);
    return {
      jobs: p.jobs,
      delay_s: p.delayMs / 1000,
      demand_restarts_per_s: demand,
      pacing_cap_per_s: pacing * (p.homeservers ?? 8),
      achieved_restarts_per_s: restarts / wall,
      cpu_pct: (100 * cpu) / wall,
      cpu_us_per_restart: restarts > 0 ? (cpu * 1e6) / restarts : NaN,
      expired_jobs: counts.expired ?? 0,
      connected_jobs: counts.connected ?? 0,
    };
  } finally {
    await w.close();
  }
}
