// The tests' process plumbing: scripts/lib/proc.ts (shared with the local stack and the participant
// tool) plus the tests' rule for a missing prerequisite.
import { PrerequisiteMissing } from '../../../scripts/lib/proc.js';

export * from '../../../scripts/lib/proc.js';

export const isCI = (): boolean => process.env.CI === 'true';

/**
 * The skip rule: outside CI a missing prerequisite yields a skip reason (string);
 * with CI=true it throws, so a CI run can never go green by skipping.
 */
export function skipOrThrow(reason: string): string {
  if (isCI()) throw new PrerequisiteMissing(`${reason} (CI=true: missing e2e prerequisites are fatal)`);
  return reason;
}
