// The programs the tests take from Debian packages (scripts/provision-<name>.sh, built on
// scripts/lib/debian-package.sh): provisioned once per test process, and either found or skipped
// with the script's own one-line reason (a failure under CI=true).
import { runProvisionScript, skipOrThrow } from '../e2e/support/proc.js';

export type Provisioned = { path: string; skip?: undefined } | { path?: undefined; skip: string };

const provisioned = new Map<string, Promise<Provisioned>>();

/** Runs scripts/provision-`name`.sh once; `label` names the program in the skip reason. */
export function provisionOnce(name: string, label: string): Promise<Provisioned> {
  let result = provisioned.get(name);
  if (!result) {
    result = (async (): Promise<Provisioned> => {
      const found = await runProvisionScript(name);
      return found.path ? { path: found.path } : { skip: skipOrThrow(`${label} unavailable: ${found.error}`) };
    })();
    provisioned.set(name, result);
  }
  return result;
}
