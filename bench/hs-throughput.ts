/**
 * Benchmark 5, throughput: schedule, restart and send operations per second with 8 concurrent
 * keep-alive clients (8 users, one room each), each phase for a fixed time. Restarts and sends use
 * the unauthenticated path form the agent uses (our server: from a trusted address with its
 * limit raised). Every send creates a room event. Each client is a lean connection of its own
 * (`RawConnection`): with undici the load generator's own CPU set the pace.
 */
import { nowMs } from './lib/child.js';
import { runFor } from './lib/http.js';
import { startTarget } from './lib/hs-world.js';
import { distribution } from './lib/stats.js';

export interface ThroughputParams {
  target: 'lastwill' | 'synapse';
  phaseSeconds?: number;
  clients?: number;
  /** Extra environment for our server (LASTWILL_HS_*), e.g. another sqlite_synchronous. */
  env?: Record<string, string>;
  log?: (msg: string) => void;
}

export async function hsThroughput(p: ThroughputParams): Promise<Record<string, number>> {
  const clients = p.clients ?? 8;
  const phaseMs = (p.phaseSeconds ?? 10) * 1000;
  const hs = await startTarget(p.target, { users: clients, connections: clients, ...(p.env ? { env: p.env } : {}) });
  const lanes = await Promise.all(Array.from({ length: clients }, () => hs.lane()));
  const ids: string[][] = Array.from({ length: clients }, () => []);
  const out: Record<string, number> = {};
  const phase = async (name: string, op: (worker: number, n: number) => Promise<boolean>) => {
    const lat: number[] = [];
    let errors = 0;
    const cpu0 = hs.child?.cpuSeconds();
    const loadCpu0 = process.cpuUsage();
    const t0 = nowMs();
    const count = await runFor(phaseMs, clients, async (w, n) => {
      const s = nowMs();
      const ok = await op(w, n);
      lat.push(nowMs() - s);
      if (!ok) errors++;
    });
    const wall = (nowMs() - t0) / 1000;
    const d = distribution(lat);
    out[`${name}_per_s`] = count / wall;
    out[`${name}_p50_ms`] = d.p50;
    out[`${name}_p99_ms`] = d.p99;
    out[`${name}_errors`] = errors;
    if (cpu0 !== undefined) out[`${name}_cpu_pct`] = (100 * (hs.child!.cpuSeconds() - cpu0)) / wall;
    // The load generator shares the machine: its own CPU shows when it, not the server, is the limit.
    const loadCpu = process.cpuUsage(loadCpu0);
    out[`${name}_load_cpu_pct`] = (100 * (loadCpu.user + loadCpu.system)) / 1e6 / wall;
    p.log?.(
      `  ${p.target} ${name}: ${(count / wall).toFixed(0)}/s (p99 ${d.p99.toFixed(1)} ms, errors ${errors}, ` +
        `server cpu ${out[`${name}_cpu_pct`]?.toFixed(0) ?? '?'} %, load generator cpu ${out[`${name}_load_cpu_pct`]!.toFixed(0)} %)`,
    );
  };
  try {
    await phase('schedule', async (w, n) => {
      const u = hs.users[w]!;
      ids[w]!.push(await lanes[w]!.schedule(u, `_${u.userId}_D${n % 100}`, { n, 'm.call.intent': 'video' }, 3_600_000));
      return true;
    });
    await phase('restart', async (w, n) => {
      const mine = ids[w]!;
      return (await lanes[w]!.manage(mine[n % mine.length]!, 'restart')) === 200;
    });
    const sent = new Array<number>(clients).fill(0);
    await phase('send', async (w) => {
      const mine = ids[w]!;
      const i = sent[w]!++;
      if (i >= mine.length) return true;
      return (await lanes[w]!.manage(mine[i]!, 'send')) === 200;
    });
    out.scheduled_total = ids.reduce((a, l) => a + l.length, 0);
    return out;
  } finally {
    for (const lane of lanes) lane.close();
    await hs.close();
  }
}
