// The soak, short: each mode for a couple of minutes with a fixed seed and every fault, failing on
// any violation. `npm run soak` runs the long ones (docs/reliability.md).
import { describe, expect, it } from 'vitest';

import { flowSkipReason } from '../e2e/support/flow.js';
import { ensureRedis } from '../support/redis.js';
import { FAULT_KINDS, runSoak, type SoakReport } from './run.js';
import type { SoakMode } from './world.js';

const bundledSkip = await flowSkipReason('bundled');
const clusterSkip = bundledSkip ?? (await ensureRedis()).skip;
const skipped = (reason: string | undefined) => (reason ? ` (skipped: ${reason})` : '');

const DURATION_S = 150;
/**
 * Enough memberships to be worth checking. A busy CI machine gets through fewer in 150 s (14 once),
 * so the workload goes on past the duration, without new faults, until this many were handed over.
 */
const MIN_CHECKED = 15;

async function shortSoak(mode: SoakMode, seed: number): Promise<SoakReport> {
  const report = await runSoak({ mode, homeserver: 'bundled', seed, durationS: DURATION_S, size: 6, faults: FAULT_KINDS, minChecked: MIN_CHECKED });
  // On failure the replays say what happened (seed, faults, the membership's timeline).
  expect(report.replays.join('\n\n')).toBe('');
  expect(report.violations).toEqual([]);
  // It did something worth checking: memberships of every kind of departure, and faults.
  expect(report.checked).toBeGreaterThanOrEqual(MIN_CHECKED);
  expect(report.counts.clean + report.counts.crash).toBeGreaterThanOrEqual(4);
  expect(report.faultSchedule.length).toBeGreaterThanOrEqual(3);
  expect(report.latency.crash.count + report.latency.freeze.count).toBeGreaterThanOrEqual(1);
  return report;
}

describe.skipIf(!!bundledSkip)(`the soak, single-node${skipped(bundledSkip)}`, () => {
  it('keeps every promise under the fault schedule of seed 1', { timeout: 600_000 }, async () => {
    await shortSoak('single', 1);
  });
});

describe.skipIf(!!clusterSkip)(`the soak, three replicas${skipped(clusterSkip)}`, () => {
  it('keeps every promise under the fault schedule of seed 2', { timeout: 600_000 }, async () => {
    await shortSoak('cluster', 2);
  });
});
