// promtool (Debian's prometheus package, provisioned by scripts/provision-promtool.sh) for the
// checks of deploy/prometheus/.
import { expect } from 'vitest';

import { execFileText } from '../e2e/support/proc.js';
import { type Provisioned, provisionOnce } from './provision.js';

/** The promtool binary, or why the tests that need it are skipped (a failure with CI=true). */
export function ensurePromtool(): Promise<Provisioned> {
  return provisionOnce('promtool', 'promtool');
}

/** Runs promtool and fails the test, with promtool's output, unless it exits 0; returns its stdout. */
export async function promtoolSucceeds(bin: string, ...args: string[]): Promise<string> {
  const r = await execFileText(bin, args, { timeoutMs: 60_000 });
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return r.stdout;
}
