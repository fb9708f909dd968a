// The programs the tests take from Debian packages (scripts/provision-<name>.sh, built on
// scripts/lib/debian-package.sh): provisioned once per test process, and either found or skipped
// with the script's own one-line reason (a failure under CI=true).
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { execFileText, REPO_ROOT, skipOrThrow } from '../e2e/support/proc.js';

export type Provisioned = { path: string; skip?: undefined } | { path?: undefined; skip: string };

const provisioned = new Map<string, Promise<Provisioned>>();

/** Runs scripts/provision-`name`.sh once; `label` names the program in the skip reason. */
export function provisionOnce(name: string, label: string): Promise<Provisioned> {
  let result = provisioned.get(name);
  if (!result) {
    result = (async (): Promise<Provisioned> => {
      const r = await execFileText('bash', [join(REPO_ROOT, 'scripts', `provision-${name}.sh`)], { stderrToParent: true });
      const path = r.stdout.trim().split('\n').pop() ?? '';
      if (r.code === 0 && path && existsSync(path)) return { path };
      const why = r.stderr.trim().split('\n').filter((l) => l.startsWith(`provision-${name}:`)).pop() ?? `exit ${r.code}`;
      return { skip: skipOrThrow(`${label} unavailable: ${why}`) };
    })();
    provisioned.set(name, result);
  }
  return result;
}
