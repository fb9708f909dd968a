/**
 * Benchmark 4, timer precision: N delayed state events from 8 users, due times spread evenly
 * over `spreadSeconds`, all scheduled before the first is due. Two observations of each send:
 *  - `finalised` (our homeserver only): the row's finalised_ts, written by the server's clock in
 *    the transaction that creates the room event, minus its due_at: the scheduler's own lateness,
 *    read from the SQLite file after the run (read-only).
 *  - `sync`: when a /sync long-poll of the sender (one per user, in this process) delivers the
 *    event, minus the due time the server reported (running_since + delay): what other clients
 *    see, including notification and /sync. This is the one comparable with Synapse, which has
 *    no finalised_ts at 1.157.
 */
import { DatabaseSync } from 'node:sqlite';
import path from 'node:path';

import { nowMs } from './lib/child.js';
import { Client, runConcurrent, sleep } from './lib/http.js';
import { startTarget, type BenchUser, type HsTarget } from './lib/hs-world.js';
import { distribution, flat } from './lib/stats.js';

export interface TimerParams {
  target: 'lastwill' | 'synapse';
  events: number;
  spreadSeconds?: number;
  users?: number;
  log?: (msg: string) => void;
}

const SYNC_FILTER = encodeURIComponent(JSON.stringify({ room: { timeline: { limit: 10000 } }, presence: { types: [] } }));

export async function hsTimers(p: TimerParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const n = p.events;
  const spreadMs = (p.spreadSeconds ?? 60) * 1000;
  const hs = await startTarget(p.target, { users: p.users ?? 8, connections: 8 });
  const arrival = new Float64Array(n).fill(NaN);
  const due = new Float64Array(n).fill(NaN);
  let syncing = true;
  let limitedSyncs = 0;
  const syncLoops: Promise<void>[] = [];
  // Long polls get connections of their own, so they never queue behind the load.
  const syncClient = new Client(hs.baseUrl, hs.users.length);
  try {
    // Calibrate the scheduling rate with events that never fire in this run.
    const warm = Math.min(2000, Math.max(200, Math.round(n / 20)));
    const w0 = nowMs();
    await runConcurrent(warm, 8, async (i) => {
      await hs.schedule(hs.users[i % hs.users.length]!, `warm${i}`, { warm: i }, 3_600_000);
    });
    const rate = warm / ((nowMs() - w0) / 1000);
    const leadMs = Math.round((n / rate) * 1300 + 3000);
    log(`  ${p.target}: schedule rate ≈ ${rate.toFixed(0)}/s, first due in ${(leadMs / 1000).toFixed(1)} s`);

    for (const u of hs.users) syncLoops.push(syncLoop(hs, u));
    await sleep(500);

    const base = nowMs() + leadMs;
    const delayIds: string[] = new Array(n);
    const s0 = nowMs();
    await runConcurrent(n, 8, async (i) => {
      const u = hs.users[i % hs.users.length]!;
      const intended = base + (spreadMs * i) / n;
      due[i] = intended;
      delayIds[i] = await hs.schedule(u, `_${u.userId}_D${i % 100}`, { bench_id: i, 'm.call.intent': 'video' }, intended - nowMs());
    });
    const scheduleS = (nowMs() - s0) / 1000;
    const lateStart = nowMs() > base;
    log(`  scheduled ${n} in ${scheduleS.toFixed(1)} s${lateStart ? ' (LATE: some were due before scheduling ended)' : ''}`);

    // The server's own due times.
    const byId = new Map(delayIds.map((id, i) => [id, i]));
    if (hs.kind === 'synapse') {
      for (const u of hs.users) {
        const list = await hs.client.json('GET', '/_matrix/client/unstable/org.matrix.msc4140/delayed_events', undefined, { authorization: `Bearer ${u.token}` });
        for (const d of list.delayed_events as Array<{ delay_id: string; delay: number; running_since: number }>) {
          const i = byId.get(d.delay_id);
          if (i !== undefined) due[i] = d.running_since + d.delay;
        }
      }
    }
    const cpu0 = hs.child?.cpuSeconds();
    const lastDue = base + spreadMs;
    // The server keeps only the newest finalised rows per user (terminated_keep_per_user), so
    // they are read while the run goes on, read-only, from the SQLite file.
    const rows = new Map<string, { due_at: number; finalised_ts: number | null; status: string }>();
    const db = hs.dataDir ? new DatabaseSync(path.join(hs.dataDir, 'homeserver.db'), { readOnly: true }) : undefined;
    const finalised = db?.prepare(
      // The status condition lets SQLite use the server's partial index on finalised_ts: a table
      // scan here, every 250 ms, held a read snapshot long enough to delay the server's checkpoints.
      "SELECT delay_id, due_at, finalised_ts, status FROM delayed_events WHERE status <> 'scheduled' AND finalised_ts >= ?",
    );
    let seenUpTo = 0;
    const collect = () => {
      if (!finalised) return;
      for (const r of finalised.all(seenUpTo) as Array<{ delay_id: string; due_at: number; finalised_ts: number; status: string }>) {
        if (byId.has(r.delay_id)) rows.set(r.delay_id, r);
        seenUpTo = Math.max(seenUpTo, r.finalised_ts - 1000);
      }
    };
    while (nowMs() < lastDue + 60_000) {
      collect();
      let have = 0;
      for (const a of arrival) if (!Number.isNaN(a)) have++;
      if (have >= n && nowMs() > lastDue && (!db || rows.size >= n)) break;
      await sleep(250);
    }
    await sleep(500);
    collect();
    db?.close();
    const cpuDuring = cpu0 !== undefined ? hs.child!.cpuSeconds() - cpu0 : NaN;
    syncing = false;

    const out: Record<string, number> = {
      events: n,
      spread_s: spreadMs / 1000,
      schedule_per_s: n / scheduleS,
      scheduled_before_first_due: lateStart ? 0 : 1,
      limited_syncs: limitedSyncs,
    };
    if (hs.kind === 'lastwill') {
      const late: number[] = [];
      let failed = n - rows.size;
      for (const [id, r] of rows) {
        const i = byId.get(id);
        if (i !== undefined) due[i] = r.due_at;
        if (r.status === 'sent' && r.finalised_ts !== null) late.push(r.finalised_ts - r.due_at);
        else failed++;
      }
      Object.assign(out, flat('finalised_late_ms', distribution(late)), { not_sent: failed, cpu_pct_during: (100 * cpuDuring) / ((spreadMs + 1000) / 1000) });
    }
    const syncLate: number[] = [];
    for (let i = 0; i < n; i++) if (!Number.isNaN(arrival[i]!)) syncLate.push(arrival[i]! - due[i]!);
    Object.assign(out, flat('sync_late_ms', distribution(syncLate)), { sync_missing: n - syncLate.length });
    return out;
  } finally {
    syncing = false;
    await hs.close();
    await Promise.allSettled(syncLoops);
    await syncClient.close().catch(() => undefined);
  }

  async function syncLoop(_t: HsTarget, u: BenchUser): Promise<void> {
    const auth = { authorization: `Bearer ${u.token}` };
    let since = (await syncClient.json('GET', `/_matrix/client/v3/sync?timeout=0&filter=${SYNC_FILTER}`, undefined, auth)).next_batch as string;
    while (syncing) {
      let body: any;
      try {
        body = await syncClient.json('GET', `/_matrix/client/v3/sync?timeout=5000&since=${encodeURIComponent(since)}&filter=${SYNC_FILTER}`, undefined, auth);
      } catch {
        if (!syncing) return;
        await sleep(50);
        continue;
      }
      const at = nowMs();
      since = body.next_batch;
      for (const room of Object.values((body.rooms?.join ?? {}) as Record<string, any>)) {
        if (room.timeline?.limited) limitedSyncs++;
        for (const ev of room.timeline?.events ?? []) {
          const id = ev.content?.bench_id;
          if (typeof id === 'number' && Number.isNaN(arrival[id]!)) arrival[id] = at;
        }
      }
    }
  }
}
