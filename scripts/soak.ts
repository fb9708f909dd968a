// `npm run soak -- [--mode single|cluster] [--homeserver bundled|synapse] [--duration 30m] [--seed N] [--size N] [--faults all|none|a,b] [--min-checked N]`
//
// Runs the soak (test/soak/run.ts) once, prints its summary, stores the report as
// bench/soak-results/<time>-<mode>.json and renders docs/reliability.md from every stored report.
// Exits 1 on any violation, with each one's replay (the seed, the faults and the timeline).
// Needs dist/ (the npm script builds it), Go for LiveKit and root for its network namespace.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { flowSkipReason } from '../test/e2e/support/flow.js';
import { renderReliability, RESULTS_DIR, readReports } from '../test/soak/report.js';
import { FAULT_KINDS, type FaultKind, runSoak } from '../test/soak/run.js';

const DOC = path.join(import.meta.dirname, '..', 'docs', 'reliability.md');

function duration(text: string): number {
  const m = /^(\d+)(s|m|h)?$/.exec(text);
  if (!m) throw new Error(`--duration: "${text}" is not like 90, 90s, 30m or 1h`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600 }[(m[2] ?? 's') as 's' | 'm' | 'h'];
}

function faults(text: string): FaultKind[] {
  if (text === 'all') return [...FAULT_KINDS];
  if (text === 'none') return [];
  const list = text.split(',').map((f) => f.trim());
  const unknown = list.filter((f) => !(FAULT_KINDS as readonly string[]).includes(f));
  if (unknown.length) throw new Error(`--faults: unknown ${unknown.join(', ')}; known: ${FAULT_KINDS.join(', ')}`);
  return list as FaultKind[];
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', default: 'single' },
      homeserver: { type: 'string', default: 'bundled' },
      duration: { type: 'string', default: '5m' },
      seed: { type: 'string', default: String(Date.now() % 100_000) },
      size: { type: 'string', default: '8' },
      faults: { type: 'string', default: 'all' },
      'min-checked': { type: 'string', default: '0' },
      'no-doc': { type: 'boolean', default: false },
    },
  });
  if (values.mode !== 'single' && values.mode !== 'cluster') throw new Error('--mode: single or cluster');
  if (values.homeserver !== 'bundled' && values.homeserver !== 'synapse') throw new Error('--homeserver: bundled or synapse');
  const seed = Number(values.seed);
  const size = Number(values.size);
  if (!Number.isInteger(seed) || seed < 0) throw new Error('--seed: a non-negative integer');
  if (!Number.isInteger(size) || size < 1 || size > 64) throw new Error('--size: 1 to 64 participants');
  const minChecked = Number(values['min-checked']);
  if (!Number.isInteger(minChecked) || minChecked < 0) throw new Error('--min-checked: a non-negative integer');
  const skip = await flowSkipReason(values.homeserver);
  if (skip) {
    console.error(`cannot run here: ${skip}`);
    return 2;
  }
  const report = await runSoak({
    mode: values.mode,
    homeserver: values.homeserver,
    seed,
    durationS: duration(values.duration),
    size,
    faults: faults(values.faults),
    minChecked,
    log: (line) => console.log(`[${new Date().toISOString()}] ${line}`),
  });
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${report.startedAt.replace(/[:.]/g, '-')}-${report.mode}-${values.homeserver}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`report: ${path.relative(process.cwd(), file)}`);
  if (!values['no-doc']) {
    writeFileSync(DOC, renderReliability(readReports()));
    console.log(`rendered ${path.relative(process.cwd(), DOC)}`);
  }
  const c = report.counts;
  console.log(
    `${report.mode}, seed ${report.seed}, ${report.durationS} s (workload ${report.workloadS} s): ${c.memberships} memberships, ${report.checked} checked, ` +
      `${Object.values(report.faults).reduce((a, b) => a + b, 0)} faults, ${report.violations.length} violations`,
  );
  for (const r of report.replays) console.log(`\n${r}`);
  return report.violations.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
