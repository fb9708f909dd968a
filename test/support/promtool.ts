// promtool (Debian's prometheus package, provisioned by scripts/provision-promtool.sh) for the
// checks of deploy/prometheus/.
import { type Provisioned, provisionOnce } from './provision.js';

export type EnsurePromtool = Provisioned;

/** The promtool binary, or why the tests that need it are skipped (a failure with CI=true). */
export function ensurePromtool(): Promise<EnsurePromtool> {
  return provisionOnce('promtool', 'promtool');
}
