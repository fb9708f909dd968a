/**
 * Loads a configuration. Precedence, highest first: environment variables (canonical LASTWILL_*
 * names, then aliases), the YAML file, `LASTWILL_DEFAULT_*` variables (defaults an image or a
 * packager sets), the schema's defaults; then zod validation. `env` is a parameter so tests never
 * touch process.env.
 */
import { readFileSync } from 'node:fs';

import { parse as parseYaml } from 'yaml';

import { type Group, type Infer, parseEnvValue, settingsOf, toZod } from './define.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A value set from outside the declared settings (multi-variable lk-jwt-service forms). */
export interface EnvOverride {
  path: string[];
  value: unknown;
  source: string;
}

export interface LoadOptions {
  /** Path of a YAML file; absent means embedded defaults plus environment. */
  file?: string | undefined;
  env?: Readonly<Record<string, string | undefined>>;
  /** Extra environment handling (files named by variables, conflicting names, …). */
  envHook?: (env: Readonly<Record<string, string | undefined>>) => EnvOverride[];
}

export function loadConfig<G extends Group>(root: G, opts: LoadOptions = {}): Infer<G> {
  return resolveConfig(root, opts).config;
}

/** A loaded configuration and where each value that is not the schema's default came from. */
export interface ResolvedConfig<G extends Group> {
  config: Infer<G>;
  /**
   * By dotted key (`agent.livekit.url`): `from LIVEKIT_URL`, `in FILE` or `from LASTWILL_DEFAULT_…`;
   * absent for a schema default.
   */
  sources: ReadonlyMap<string, string>;
}

/** {@link loadConfig}, also telling where each value came from. */
export function resolveConfig<G extends Group>(root: G, opts: LoadOptions = {}): ResolvedConfig<G> {
  const env = opts.env ?? {};
  const sources = new Map<string, string>();
  let tree: Record<string, unknown> = {};

  if (opts.file !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`config file ${opts.file}: cannot be read (${(err as Error).message})`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (err) {
      throw new ConfigError(`config file ${opts.file}: not valid YAML (${(err as Error).message})`);
    }
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new ConfigError(`config file ${opts.file}: the top level must be a mapping`);
      }
      tree = parsed as Record<string, unknown>;
    }
  }

  for (const info of settingsOf(root)) {
    const key = info.path.join('.');
    if (getPath(tree, info.path) !== undefined) {
      sources.set(key, `in ${opts.file}`);
    } else {
      const raw = env[info.defaultEnvName];
      if (raw !== undefined && raw !== '') {
        setPath(tree, info.path, parseEnvValue(info.setting.env, raw));
        sources.set(key, `from ${info.defaultEnvName}`);
      }
    }
    const candidates = [
      { name: info.envName, parse: undefined as ((raw: string) => unknown) | undefined },
      ...(info.setting.aliases ?? []).map((a) => ({ name: a.name, parse: a.parse })),
    ];
    for (const c of candidates) {
      const raw = env[c.name];
      if (raw === undefined || raw === '') continue;
      let value: unknown;
      try {
        value = c.parse ? c.parse(raw) : parseEnvValue(info.setting.env, raw);
      } catch (err) {
        throw new ConfigError(`${key} (from ${c.name}): ${(err as Error).message}`);
      }
      setPath(tree, info.path, value);
      sources.set(key, `from ${c.name}`);
      break;
    }
  }

  for (const o of opts.envHook?.(env) ?? []) {
    setPath(tree, o.path, o.value);
    sources.set(o.path.join('.'), `from ${o.source}`);
  }

  const result = toZod(root).safeParse(tree);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const key = issue.path.join('.') || '(top level)';
      const unknownKeys = issue.code === 'unrecognized_keys' ? `: unknown key(s) ${issue.keys.join(', ')}` : '';
      const source = sources.get(key) ?? (opts.file ? `in ${opts.file}` : 'default');
      return unknownKeys ? `${key}${unknownKeys} (${source})` : `${key} (${source}): ${issue.message}`;
    });
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  return { config: result.data as Infer<G>, sources };
}

function getPath(tree: Record<string, unknown>, path: string[]): unknown {
  let node: unknown = tree;
  for (const key of path) {
    if (typeof node !== 'object' || node === null || Array.isArray(node)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node ?? undefined;
}

function setPath(tree: Record<string, unknown>, path: string[], value: unknown): void {
  let node = tree;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}
