/**
 * Measures the job engine's memory per connected job (not a test: vitest does not collect it).
 *
 *   npx node --expose-gc --import tsx test/agent/jobs/memory.measure.ts [jobs]
 *
 * Realistic strings (hashed rooms and identities, Synapse-style delay ids, LiveKit sids) are
 * generated before the baseline, so the figures include the strings a job keeps.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Engine } from '../../../src/agent/jobs/engine.js';
import { SqliteJobStore } from '../../../src/agent/jobs/sqlite-store.js';
import { DEFAULT_ENGINE_SETTINGS } from '../../../src/agent/jobs/index.js';
import { silentLogger } from '../../../src/lib/logger.js';

const JOBS = Number(process.argv[2] ?? 200_000);
const PER_ROOM = 8;
const SERVERS = 50;

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
const settle = () => new Promise((r) => setImmediate(r));
function measure(): { heap: number; heapTotal: number; rss: number } {
  for (let i = 0; i < 3; i++) gc!();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, heapTotal: m.heapTotal, rss: m.rss };
}

// Strings arrive from JSON bodies and webhooks as fresh copies; copy them so the engine's
// interning (if any) is measured, not the generator's sharing. The generated inputs stay alive
// until after the last measurement, so only what the engine keeps is counted.
const fresh = (s: string) => Buffer.from(s).toString();
const hash = () => randomBytes(32).toString('base64url');
const rooms = Array.from({ length: Math.ceil(JOBS / PER_ROOM) }, hash);
const servers = Array.from({ length: SERVERS }, (_, i) => `hs${i}.example.org`);
const inputs = Array.from({ length: JOBS }, (_, i) => ({
  room: rooms[Math.floor(i / PER_ROOM)]!,
  identity: hash(),
  delayId: `syd_${randomBytes(15).toString('base64url')}`,
  sid: `PA_${randomBytes(9).toString('base64url')}`,
  server: servers[i % SERVERS]!,
}));

const dir = mkdtempSync(join(tmpdir(), 'lastwill-jobs-mem-'));
const engine = new Engine({
  store: new SqliteJobStore(join(dir, 'jobs.sqlite'), 'normal'),
  actions: { perform: () => Promise.resolve({ kind: 'ok' }) },
  presence: { listParticipants: async () => [] },
  log: silentLogger(),
  settings: {
    ...DEFAULT_ENGINE_SETTINGS,
    sanityCheckIntervalMs: 0,
    pacing: { perSecond: 1e9, burst: 1e9 },
  },
});
await engine.start();
await settle();
const before = measure();

for (let start = 0; start < JOBS; start += 5_000) {
  const batch = inputs.slice(start, start + 5_000);
  await Promise.all(
    batch.map((d) =>
      engine.delegate({
        livekitRoom: fresh(d.room),
        identity: fresh(d.identity),
        delayId: fresh(d.delayId),
        delayTimeoutMs: 3_600_000,
        serverName: fresh(d.server),
        userId: fresh(`@u:${d.server}`),
        source: 'get_token',
      }),
    ),
  );
  for (const d of batch) {
    engine.onParticipant({
      kind: 'joined',
      livekitRoom: fresh(d.room),
      session: { identity: fresh(d.identity), sid: fresh(d.sid), joinedAtMs: Date.now() },
    });
  }
  for (let i = 0; i < 5; i++) await settle();
}
for (let i = 0; i < 20; i++) await settle();
const connected = engine.counts().connected;
if (connected !== JOBS) throw new Error(`only ${connected} of ${JOBS} jobs connected`);
const after = measure();
const perJob = (a: number, b: number) => Math.round((a - b) / JOBS);
console.log(
  JSON.stringify({
    jobs: JOBS,
    heapPerJobBytes: perJob(after.heap, before.heap),
    heapTotalPerJobBytes: perJob(after.heapTotal, before.heapTotal),
    rssPerJobBytes: perJob(after.rss, before.rss),
    heapUsedMiB: Math.round(after.heap / 2 ** 20),
    rssMiB: Math.round(after.rss / 2 ** 20),
  }),
);
await engine.stop();
inputs.length = 0;
rmSync(dir, { recursive: true, force: true });
