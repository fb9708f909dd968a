/**
 * `npm run bench`: builds, runs every benchmark (each in fresh child processes, repeated), writes
 * bench/results/<timestamp>.json and docs/benchmarks.md.
 *
 *   npm run bench                          default sizes (well under 30 min on 2 cores)
 *   npm run bench -- --size full           adds the 1 M agent delegations and 1 M scheduled events
 *   npm run bench -- --jobs 10000,100000   explicit agent scale sizes
 *   npm run bench -- --scheduled 1000000   the homeserver capacity size (default 100 000; 1 M with --size full)
 *   npm run bench -- --only scale,timers   a subset (scale sustain disconnect recovery cluster timers
 *                                          throughput capacity synapse)
 *   npm run bench -- --only cluster --cluster-jobs 1000000   cluster mode beside a single node
 *   npm run bench -- --runs 1              repeat count override; --no-build skips `npm run build`
 *   npm run bench -- --only scale --merge bench/results/<earlier>.json
 *                                          re-runs some benchmarks, keeping the others' earlier results
 *   BENCH_CPU_PROF=/tmp/prof npm run bench -- --only recovery   profiles the system under test
 *   BENCH_NODE_ARGS=--trace-gc BENCH_CHILD_LOG=/tmp/child.log npm run bench -- --only timers
 *                                          extra Node flags for the system under test, its output kept
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { REPO_ROOT } from '../test/e2e/support/proc.js';
import { ensureSynapse, SYNAPSE_VERSION } from '../test/e2e/support/synapse.js';
import { clusterScale, clusterTakeover } from './agent-cluster.js';
import { agentDisconnect } from './agent-disconnect.js';
import { agentRecovery } from './agent-recovery.js';
import { agentRestartSustain, agentScale } from './agent-scale.js';
import { renderReport } from './report.js';
import { hsCapacity } from './hs-capacity.js';
import { hsThroughput } from './hs-throughput.js';
import { hsTimers } from './hs-timers.js';
import { summarise, type Spread } from './lib/stats.js';

export interface BenchCase {
  bench: string;
  label: string;
  params: Record<string, unknown>;
  runs: Array<Record<string, number>>;
  summary: Record<string, Spread>;
  loadavg: number[][];
  error?: string;
}

export interface BenchResults {
  startedAt: string;
  finishedAt: string;
  args: string[];
  machine: Record<string, unknown>;
  cases: BenchCase[];
}

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    size: { type: 'string', default: 'small' },
    jobs: { type: 'string' },
    scheduled: { type: 'string' },
    only: { type: 'string' },
    runs: { type: 'string' },
    merge: { type: 'string' },
    'cluster-jobs': { type: 'string' },
    'no-build': { type: 'boolean' },
  },
});
const full = values.size === 'full';
const only = values.only ? new Set(values.only.split(',')) : undefined;
const want = (name: string) => !only || only.has(name);
const runsOverride = values.runs ? Number(values.runs) : undefined;
const scaleSizes = values.jobs ? values.jobs.split(',').map(Number) : full ? [10_000, 100_000, 1_000_000] : [10_000, 100_000];
const log = (msg: string) => process.stdout.write(`${msg}\n`);

function git(args: string[]): string {
  try {
    return execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  let osName = `${os.type()} ${os.release()}`;
  try {
    osName = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? osName;
  } catch {
    // Not Linux-like: keep the kernel string.
  }
  return {
    cores: cpus.length,
    model: cpus[0]?.model ?? 'unknown',
    memoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    os: osName,
    kernel: os.release(),
    synapse: SYNAPSE_VERSION,
    // Other work changes src/ while benchmarks run: record what was measured.
    commit: git(['rev-parse', '--short', 'HEAD']),
    uncommittedSrcFiles: git(['status', '--porcelain', 'src']).split('\n').filter(Boolean).length,
  };
}

const results: BenchResults = {
  startedAt: new Date().toISOString(),
  finishedAt: '',
  args: process.argv.slice(2),
  machine: machine(),
  cases: [],
};

async function measure(bench: string, label: string, params: Record<string, unknown>, runs: number, fn: () => Promise<Record<string, number>>): Promise<void> {
  const c: BenchCase = { bench, label, params, runs: [], summary: {}, loadavg: [] };
  results.cases.push(c);
  const n = runsOverride ?? runs;
  for (let i = 0; i < n; i++) {
    log(`[${bench}] ${label}: run ${i + 1}/${n}`);
    c.loadavg.push(os.loadavg().map((v) => +v.toFixed(2)));
    try {
      c.runs.push(await fn());
    } catch (err) {
      c.error = (err as Error).stack ?? String(err);
      log(`[${bench}] ${label}: FAILED: ${(err as Error).message}`);
      break;
    }
    c.summary = summarise(c.runs);
    save();
  }
}

const stamp = results.startedAt.replace(/[:.]/g, '-');
const jsonFile = path.join(REPO_ROOT, 'bench', 'results', `${stamp}.json`);
function save(): void {
  mkdirSync(path.dirname(jsonFile), { recursive: true });
  writeFileSync(jsonFile, JSON.stringify(results, null, 2));
}

async function main(): Promise<void> {
  if (!values['no-build']) {
    log('building (npm run build)');
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: REPO_ROOT, stdio: 'inherit' });
  }
  const t0 = Date.now();
  if (want('scale')) {
    for (const jobs of scaleSizes) {
      await measure('scale', `${jobs} delegations`, { jobs, roomSize: 10, homeservers: 8, idleSeconds: 31, sanitySeconds: 30 }, jobs >= 1_000_000 ? 1 : jobs >= 100_000 ? 2 : 3, () =>
        agentScale({ jobs, idleSeconds: 31, log }),
      );
    }
  }
  if (want('sustain')) {
    await measure('sustain', '10000 jobs, 10 s delays (pacing raised)', { jobs: 10_000, delayMs: 10_000 }, 2, () =>
      agentRestartSustain({ jobs: 10_000, delayMs: 10_000, log }),
    );
    await measure('sustain', '2000 jobs, 20 s delays, pacing 20/s (the old default), 1 homeserver', { jobs: 2000, delayMs: 20_000, homeservers: 1, pacing: 20 }, 1, () =>
      agentRestartSustain({ jobs: 2000, delayMs: 20_000, homeservers: 1, pacingPerSecond: 20, pacingBurst: 50, windowSeconds: 10, log }),
    );
  }
  if (want('disconnect')) {
    for (const graceMs of [undefined, 0]) {
      for (const mode of ['paced', 'burst'] as const) {
        const label = `10000 participants, ${mode === 'paced' ? '1000/s' : 'all at once'}, grace ${graceMs ?? '1000 (default)'} ms`;
        await measure('disconnect', label, { participants: 10_000, mode, graceMs: graceMs ?? 1000 }, 2, () =>
          agentDisconnect({ participants: 10_000, mode, ...(graceMs !== undefined ? { graceMs } : {}), log }),
        );
      }
    }
  }
  if (want('recovery')) {
    const jobs = 100_000;
    await measure('recovery', `${jobs} live jobs, kill -9, restart`, { jobs }, 2, () => agentRecovery({ jobs, log }));
  }
  if (want('cluster')) {
    const jobs = values['cluster-jobs'] ? Number(values['cluster-jobs']) : full ? 1_000_000 : 100_000;
    const modes = [1, 3] as const;
    const mode = (replicas: number) => (replicas === 1 ? 'single node' : `${replicas} replicas on Redis`);
    for (const replicas of modes) {
      await measure('cluster', `scale: ${jobs} delegations, ${mode(replicas)}`, { jobs, replicas }, 1, () => clusterScale({ jobs, replicas, log }));
    }
    for (const replicas of modes) {
      await measure('cluster', `takeover: 100000 jobs, kill -9, ${mode(replicas)}`, { jobs: 100_000, replicas }, 2, () =>
        clusterTakeover({ jobs: 100_000, replicas, log }),
      );
    }
    // The takeover waits out the dead owner's lease: the same with a longer one shows the knob.
    await measure('cluster', 'takeover: 100000 jobs, kill -9, 3 replicas on Redis, cluster.lease_ms 3000', { jobs: 100_000, replicas: 3, leaseMs: 3000 }, 2, () =>
      clusterTakeover({ jobs: 100_000, replicas: 3, env: { LASTWILL_AGENT_CLUSTER_LEASE_MS: '3000' }, log }),
    );
    for (const replicas of modes) {
      // Grace 0, as the single-node goal it is compared with: the grace would be part of every latency.
      await measure('cluster', `burst: 10000 disconnects at once, grace 0, ${mode(replicas)}`, { participants: 10_000, replicas, graceMs: 0 }, 2, () =>
        agentDisconnect({ participants: 10_000, mode: 'burst', graceMs: 0, ...(replicas > 1 ? { replicas } : {}), log }),
      );
    }
  }
  if (want('timers')) {
    await measure('timers', 'lastwill: 100000 events over 60 s', { target: 'lastwill', events: 100_000, spreadSeconds: 60 }, 2, () =>
      hsTimers({ target: 'lastwill', events: 100_000, spreadSeconds: 60, log }),
    );
  }
  if (want('throughput')) {
    await measure('throughput', 'lastwill: 8 clients, 10 s per operation', { target: 'lastwill', clients: 8, phaseSeconds: 10 }, 3, () =>
      hsThroughput({ target: 'lastwill', phaseSeconds: 10, log }),
    );
    // The same with commits that are not fsynced: still durable across kill -9 (the WAL is in the
    // page cache), not across a power loss. Shows what the per-commit fsync costs on this disk.
    await measure('throughput', 'lastwill: 8 clients, 10 s per operation, sqlite_synchronous normal', { target: 'lastwill', clients: 8, phaseSeconds: 10, sqliteSynchronous: 'normal' }, 3, () =>
      hsThroughput({ target: 'lastwill', phaseSeconds: 10, env: { LASTWILL_HS_SQLITE_SYNCHRONOUS: 'normal' }, log }),
    );
    // 8 clients that each wait for a durable answer before the next request make restarts a matter
    // of fsync latency: without group commit they settle into two groups taking turns, each paying
    // a whole fsync. The same run without it shows what it is worth.
    await measure('throughput', 'lastwill: 8 clients, 10 s per operation, group_commit.wait_ms 0', { target: 'lastwill', clients: 8, phaseSeconds: 10, groupCommitWaitMs: 0 }, 3, () =>
      hsThroughput({ target: 'lastwill', phaseSeconds: 10, env: { LASTWILL_HS_GROUP_COMMIT_WAIT_MS: '0' }, log }),
    );
    // 32 is what one agent keeps in flight per homeserver (engine.pacing.max_in_flight).
    await measure('throughput', 'lastwill: 32 clients, 10 s per operation', { target: 'lastwill', clients: 32, phaseSeconds: 10 }, 3, () =>
      hsThroughput({ target: 'lastwill', clients: 32, phaseSeconds: 10, log }),
    );
  }
  if (want('capacity')) {
    const scheduled = values.scheduled ? Number(values.scheduled) : full ? 1_000_000 : 100_000;
    await measure('capacity', `${scheduled} scheduled; 100000 overdue after kill -9`, { scheduled, overdue: 100_000 }, 1, () =>
      hsCapacity({ scheduled, overdue: 100_000, log }),
    );
  }
  if (want('synapse')) {
    const py = await ensureSynapse();
    if (py.skip) {
      log(`[synapse] skipped: ${py.skip}`);
      results.cases.push({ bench: 'synapse', label: 'skipped', params: {}, runs: [], summary: {}, loadavg: [], error: py.skip });
    } else {
      // Same run, same machine: our side at the Synapse size too, so the ratio compares like with like.
      for (const target of ['synapse', 'lastwill'] as const) {
        await measure('synapse', `${target}: timers, 3000 events over 60 s`, { target, events: 3000, spreadSeconds: 60 }, 2, () =>
          hsTimers({ target, events: 3000, spreadSeconds: 60, log }),
        );
      }
      await measure('synapse', 'synapse: throughput, 8 clients, 10 s per operation', { target: 'synapse', clients: 8, phaseSeconds: 10 }, 2, () =>
        hsThroughput({ target: 'synapse', phaseSeconds: 10, log }),
      );
    }
  }
  if (values.merge) {
    // Cases of benchmarks not re-run now come from the earlier file (marked in their label).
    const earlier = JSON.parse(readFileSync(values.merge, 'utf8')) as BenchResults;
    const rerun = new Set(results.cases.map((c) => c.bench));
    const kept = earlier.cases.filter((c) => !rerun.has(c.bench)).map((c) => ({ ...c, label: `${c.label} (from ${earlier.startedAt})` }));
    results.cases = [...results.cases, ...kept];
    results.args.push(`(merged with ${path.basename(values.merge)})`);
  }
  results.finishedAt = new Date().toISOString();
  save();
  const md = renderReport(results, path.relative(REPO_ROOT, jsonFile));
  writeFileSync(path.join(REPO_ROOT, 'docs', 'benchmarks.md'), md);
  log(`done in ${((Date.now() - t0) / 60_000).toFixed(1)} min: ${path.relative(REPO_ROOT, jsonFile)}, docs/benchmarks.md`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    save();
    process.exit(1);
  },
);
