// promtool (Debian's prometheus package, provisioned by scripts/provision-promtool.sh) for the
// checks of deploy/prometheus/.
import { join } from 'node:path';

import { execFileText, REPO_ROOT, skipOrThrow } from '../e2e/support/proc.js';

export type EnsurePromtool = { path: string; skip?: undefined } | { path?: undefined; skip: string };

let ensured: Promise<EnsurePromtool> | undefined;

/** The promtool binary, or why the tests that need it are skipped (a failure with CI=true). */
export function ensurePromtool(): Promise<EnsurePromtool> {
  ensured ??= (async (): Promise<EnsurePromtool> => {
    const r = await execFileText('bash', [join(REPO_ROOT, 'scripts', 'provision-promtool.sh')], { stderrToParent: true });
    const path = r.stdout.trim();
    if (r.code === 0 && path) return { path };
    const why = r.stderr.trim().split('\n').filter((l) => l.startsWith('provision-promtool:')).pop() ?? `exit ${r.code}`;
    return { skip: skipOrThrow(`promtool unavailable: ${why}`) };
  })();
  return ensured;
}
