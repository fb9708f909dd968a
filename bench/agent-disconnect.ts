/**
 * Benchmark 2, mass disconnect: N connected participants leave at once, as a failed SFU node
 * would cause. Every participant_left webhook is genuinely signed (fake-sfu's signWebhook, signed
 * before the clock starts so signing is not measured) and POSTed to the agent's /sfu_webhook; the
 * participants are gone from ListParticipants too. Latency per participant is from the moment its
 * webhook request is issued to the moment the `send` for its delay id arrives at the fake
 * homeserver (both stamped in this process with the same high-resolution clock).
 *
 * `burst` sends all N webhooks as fast as `concurrency` connections allow; `paced` issues them at
 * `ratePerSecond`.
 */
import { AgentWorld } from './lib/agent-world.js';
import { nowMs } from './lib/child.js';
import { Client, runConcurrent, sleep } from './lib/http.js';
import { distribution, flat } from './lib/stats.js';

export interface DisconnectParams {
  /** Extra LASTWILL_AGENT_* settings (e.g. LASTWILL_AGENT_SQLITE_SYNCHRONOUS). */
  env?: Record<string, string>;
  participants: number;
  /** LASTWILL_AGENT_ENGINE_DISCONNECT_GRACE_MS; undefined keeps the default (1000). */
  graceMs?: number;
  mode: 'burst' | 'paced';
  ratePerSecond?: number;
  concurrency?: number;
  /** Cluster mode: replicas on one Redis; the webhooks are spread over them round-robin. */
  replicas?: number;
  log?: (msg: string) => void;
}

export async function agentDisconnect(p: DisconnectParams): Promise<Record<string, number>> {
  const n = p.participants;
  const w = new AgentWorld({
    jobs: n,
    roomSize: 10,
    homeservers: 8,
    delayMs: 3_600_000,
    env: {
      LASTWILL_AGENT_ENGINE_PACING_PER_SECOND: '1000000',
      LASTWILL_AGENT_ENGINE_PACING_BURST: '1000000',
      ...(p.graceMs !== undefined ? { LASTWILL_AGENT_ENGINE_DISCONNECT_GRACE_MS: String(p.graceMs) } : {}),
      ...p.env,
    },
    ...(p.replicas ? { replicas: p.replicas } : {}),
  });
  const webhookAt = new Float64Array(n).fill(NaN);
  const sendAt = new Float64Array(n).fill(NaN);
  let hooks: Client[] = [];
  try {
    await w.startFakes();
    await w.startAgent();
    const agentCpu = () => w.agents.reduce((sum, a) => sum + a.cpuSeconds(), 0);
    w.joinAll();
    await w.delegateAll();
    await w.until('all first restarts', () => w.counts.restart >= n, 120_000, 20);
    const prefix = `bench_${w.gen}_`;
    w.onAction = (hit) => {
      if (hit.action !== 'send' || !hit.delayId.startsWith(prefix)) return;
      const i = Number(hit.delayId.slice(prefix.length));
      if (Number.isNaN(sendAt[i]!)) sendAt[i] = hit.at;
    };
    const signed = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        w.sfu.signWebhook({
          event: 'participant_left',
          room: w.room(i),
          identity: w.identity(i),
          sid: w.sid(i),
          disconnectReason: 'SIGNAL_CLOSE',
        }),
      ),
    );
    await sleep(500);
    // The node is gone: nobody is listed any more.
    w.leaveAll();
    // One client per replica, as a load balancer in front of them would spread the webhooks.
    const perReplica = Math.max(1, Math.round((p.concurrency ?? 64) / w.agentUrls.length));
    hooks = w.agentUrls.map((url) => new Client(url, perReplica));
    const fire = async (i: number) => {
      const { body, headers } = signed[i]!;
      webhookAt[i] = nowMs();
      const r = await hooks[i % hooks.length]!.request('POST', '/sfu_webhook', body, headers);
      if (r.status !== 200) throw new Error(`webhook ${i}: ${r.status} ${r.text}`);
    };
    const sends0 = w.counts.send;
    const agentCpu0 = agentCpu();
    const benchCpu0 = process.cpuUsage();
    const t0 = nowMs();
    if (p.mode === 'burst') {
      await runConcurrent(n, p.concurrency ?? 64, fire);
    } else {
      const rate = p.ratePerSecond ?? 1000;
      const pending: Promise<void>[] = [];
      let next = 0;
      while (next < n) {
        const due = Math.min(n, Math.floor(((nowMs() - t0) * rate) / 1000) + 1);
        while (next < due) pending.push(fire(next++));
        await sleep(2);
      }
      await Promise.all(pending);
    }
    const webhooksDone = nowMs();
    await w.until('every send', () => w.counts.send - sends0 >= n, 60_000, 5);
    // Which side was busy: the agent, or this process (webhook client and fakes on one thread).
    const windowS = (nowMs() - t0) / 1000;
    const agentCpuS = agentCpu() - agentCpu0;
    const benchCpu = process.cpuUsage(benchCpu0);
    const benchCpuS = (benchCpu.user + benchCpu.system) / 1e6;
    const latencies = Array.from(sendAt, (s, i) => s - webhookAt[i]!).filter((v) => Number.isFinite(v));
    const lastSend = Math.max(...sendAt);
    const firstHook = Math.min(...webhookAt);
    const d = distribution(latencies);
    return {
      participants: n,
      replicas: p.replicas ?? 1,
      webhooks_issued_s: (webhooksDone - firstHook) / 1000,
      all_sent_s: (lastSend - firstHook) / 1000,
      ...flat('latency_ms', d),
      duplicate_or_extra_sends: w.counts.send - sends0 - n,
      // Over all replicas, so above 100 % when they used more than one core between them.
      agent_cpu_pct: (100 * agentCpuS) / windowS,
      // The agent's whole cost of the disconnect, less noisy than the times on a shared machine.
      agent_cpu_s: agentCpuS,
      bench_cpu_pct: (100 * benchCpuS) / windowS,
    };
  } finally {
    for (const h of hooks) await h.close();
    await w.close();
  }
}
