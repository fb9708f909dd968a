/**
 * lk-jwt-service environment forms that do not map to a single setting: LIVEKIT_KEY_FILE (one file
 * holding `key: secret`) and the refused combination LIVEKIT_JWT_BIND + LIVEKIT_JWT_PORT.
 */
import { readFileSync } from 'node:fs';

import { ConfigError, type EnvOverride } from './load.js';

type Env = Readonly<Record<string, string | undefined>>;

const isSet = (env: Env, name: string): boolean => (env[name] ?? '') !== '';

/** Parses the `key: secret` line of a LIVEKIT_KEY_FILE (livekit-server's keys file format). */
export function parseKeyFile(text: string, path: string): { key: string; secret: string } {
  const line = text.split('\n').map((l) => l.trim()).find((l) => l.length > 0 && !l.startsWith('#'));
  const m = line === undefined ? null : /^([^:\s]+)\s*:\s*(\S+)$/.exec(line);
  if (!m) throw new ConfigError(`livekit.key (from LIVEKIT_KEY_FILE): ${path} must hold "key: secret"`);
  return { key: m[1]!, secret: m[2]! };
}

export function agentEnvHook(env: Env): EnvOverride[] {
  if (isSet(env, 'LIVEKIT_JWT_BIND') && isSet(env, 'LIVEKIT_JWT_PORT')) {
    throw new ConfigError(
      'bind: LIVEKIT_JWT_BIND and the deprecated LIVEKIT_JWT_PORT are both set; keep only LIVEKIT_JWT_BIND',
    );
  }
  const keyFile = env.LIVEKIT_KEY_FILE;
  if (keyFile === undefined || keyFile === '') return [];
  const competing = ['LIVEKIT_KEY', 'LIVEKIT_SECRET', 'LIVEKIT_KEY_FROM_FILE', 'LIVEKIT_SECRET_FROM_FILE'].filter(
    (name) => isSet(env, name),
  );
  if (competing.length > 0) {
    throw new ConfigError(`livekit.key: LIVEKIT_KEY_FILE cannot be combined with ${competing.join(', ')}`);
  }
  let text: string;
  try {
    text = readFileSync(keyFile, 'utf8');
  } catch (err) {
    throw new ConfigError(`livekit.key (from LIVEKIT_KEY_FILE): cannot read ${keyFile} (${(err as Error).message})`);
  }
  const { key, secret } = parseKeyFile(text, keyFile);
  return [
    { path: ['livekit', 'key'], value: key, source: 'LIVEKIT_KEY_FILE' },
    { path: ['livekit', 'secret'], value: secret, source: 'LIVEKIT_KEY_FILE' },
  ];
}

/** `lastwill all` reads the agent's lk-jwt-service variables into its `agent:` section. */
export function allEnvHook(env: Env): EnvOverride[] {
  return agentEnvHook(env).map((o) => ({ ...o, path: ['agent', ...o.path] }));
}
