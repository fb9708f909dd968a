/**
 * Benchmark 6, capacity and catch-up (our homeserver).
 *  - memory: resident set and V8 heap (after a full GC) with M delayed events scheduled;
 *  - catch-up: K events due within a few seconds, kill -9 before the first is due, start again
 *    once all are overdue; the time from spawning the new process until every one is sent, and
 *    whether they went out in due order (finalisation sequence vs due_at, read-only from SQLite).
 */
import { DatabaseSync } from 'node:sqlite';
import path from 'node:path';

import { nowMs } from './lib/child.js';
import { runConcurrent, sleep } from './lib/http.js';
import { startTarget } from './lib/hs-world.js';

export interface CapacityParams {
  scheduled: number;
  overdue: number;
  log?: (msg: string) => void;
}

const CONCURRENCY = 16;

export async function hsCapacity(p: CapacityParams): Promise<Record<string, number>> {
  const log = p.log ?? (() => undefined);
  const out: Record<string, number> = {};
  let rate = 1000;
  {
    const hs = await startTarget('lastwill', { users: 8, connections: CONCURRENCY, inspect: true });
    try {
      const child = hs.child!;
      const heap0 = await child.heapAfterGc();
      const rss0 = child.rss();
      const t0 = nowMs();
      await runConcurrent(p.scheduled, CONCURRENCY, async (i) => {
        const u = hs.users[i % 8]!;
        await hs.schedule(u, `_${u.userId}_D${i % 100}`, { i, 'm.call.intent': 'video' }, 20 * 3_600_000 + i);
      });
      rate = p.scheduled / ((nowMs() - t0) / 1000);
      await sleep(1000);
      const heap = await child.heapAfterGc();
      const rss = child.rss();
      log(`  ${p.scheduled} scheduled at ${rate.toFixed(0)}/s: RSS ${(rss / 2 ** 20).toFixed(0)} MiB`);
      Object.assign(out, {
        scheduled: p.scheduled,
        schedule_per_s: rate,
        rss_mib: rss / 2 ** 20,
        peak_rss_mib: child.peakRss() / 2 ** 20,
        heap_used_mib: heap.heapUsed / 2 ** 20,
        bytes_per_event_rss: (rss - rss0) / p.scheduled,
        bytes_per_event_heap: (heap.heapUsed - heap0.heapUsed) / p.scheduled,
      });
    } finally {
      await hs.close();
    }
  }
  {
    const k = p.overdue;
    const hs = await startTarget('lastwill', { users: 8, connections: CONCURRENCY });
    try {
      const leadMs = (k / rate) * 1500 + 3000;
      const base = nowMs() + leadMs;
      await runConcurrent(k, CONCURRENCY, async (i) => {
        const u = hs.users[i % 8]!;
        await hs.schedule(u, `_${u.userId}_D${i % 100}`, { i, 'm.call.intent': 'video' }, base + (5000 * i) / k - nowMs());
      });
      const killedAt = nowMs();
      await hs.crash();
      log(`  ${k} scheduled, killed ${((base - killedAt) / 1000).toFixed(1)} s before the first was due`);
      const dbFile = path.join(hs.dataDir!, 'homeserver.db');
      const ro = () => new DatabaseSync(dbFile, { readOnly: true });
      let db = ro();
      const sentBeforeKill = (db.prepare("SELECT count(*) AS c FROM delayed_events WHERE status != 'scheduled' AND content LIKE '%m.call.intent%'").get() as { c: number }).c;
      db.close();
      // Everything overdue, then the restart.
      await sleep(Math.max(0, base + 5000 - nowMs()) + 1000);
      const child = await hs.restart();
      const spawned = child.spawnedAt;
      const readyAt = nowMs();
      db = ro();
      const left = db.prepare("SELECT count(*) AS c FROM delayed_events WHERE status = 'scheduled'");
      const end = Date.now() + 120_000;
      while ((left.get() as { c: number }).c > 0 && Date.now() < end) await sleep(20);
      const rows = db.prepare("SELECT due_at, finalised_ts, fin_seq, status FROM delayed_events WHERE finalised_ts IS NOT NULL ORDER BY fin_seq").all() as Array<{ due_at: number; finalised_ts: number; fin_seq: number; status: string }>;
      const remaining = (left.get() as { c: number }).c;
      db.close();
      // Only this restart's sends (finalised after the spawn); the server keeps the newest 1000 per user.
      const after = rows.filter((r) => r.finalised_ts >= spawned - 1);
      let inversions = 0;
      for (let i = 1; i < after.length; i++) if (after[i]!.due_at < after[i - 1]!.due_at) inversions++;
      const lastSent = Math.max(...after.map((r) => r.finalised_ts));
      Object.assign(out, {
        overdue: k,
        sent_before_kill: sentBeforeKill,
        catchup_ready_s: (readyAt - spawned) / 1000,
        catchup_all_sent_s: (lastSent - spawned) / 1000,
        catchup_sends_per_s: (k - sentBeforeKill) / ((lastSent - spawned) / 1000),
        catchup_still_scheduled: remaining,
        catchup_order_inversions: inversions,
        catchup_failed: after.filter((r) => r.status !== 'sent').length,
      });
      log(`  caught up in ${((lastSent - spawned) / 1000).toFixed(2)} s`);
      return out;
    } finally {
      await hs.close();
    }
  }
}
