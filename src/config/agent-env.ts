/**
 * lk-jwt-service environment forms that do not map to a single setting (key/secret files,
 * LIVEKIT_JWT_PORT vs LIVEKIT_JWT_BIND). Owned by the agent work.
 */
import type { EnvOverride } from './load.js';

export function agentEnvHook(_env: Readonly<Record<string, string | undefined>>): EnvOverride[] {
  return [];
}
