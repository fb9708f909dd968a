/**
 * The configuration framework. Each component declares its settings once, as a tree of `setting`s
 * inside `group`s; from that one declaration come the zod validation (with defaults), the
 * environment-variable names, the sample YAML files in config/ and docs/configuration.md.
 */
import { z } from 'zod';

/** How a string from the environment becomes the value handed to the zod schema. */
export type EnvKind = 'string' | 'number' | 'boolean' | 'list' | 'map' | 'json';

export interface EnvAlias {
  /** The variable name, e.g. `LIVEKIT_URL`. */
  name: string;
  /** Marks a legacy name that still works but should be replaced. */
  deprecated?: boolean;
  /** Custom conversion; defaults to the setting's `env` kind. */
  parse?: (raw: string) => unknown;
}

export interface Setting<T extends z.ZodType = z.ZodType> {
  readonly kind: 'setting';
  /** Validation, including `.default(...)` where the setting has one. */
  readonly schema: T;
  readonly doc: string;
  readonly env: EnvKind;
  /** Extra environment names (lk-jwt-service compatibility), checked after the canonical one. */
  readonly aliases?: readonly EnvAlias[];
  /** Shown in the sample file for settings without a default. */
  readonly example?: unknown;
  /** Never printed: the sample shows a placeholder instead of the default. */
  readonly secret?: boolean;
}

export interface Group<C extends Record<string, Node> = Record<string, Node>> {
  readonly kind: 'group';
  readonly doc?: string;
  readonly children: C;
  /** Prefix for environment names below this group, e.g. `LASTWILL_HS_`. */
  readonly envPrefix?: string;
}

export type Node = Setting | Group;

export function setting<T extends z.ZodType>(
  schema: T,
  opts: Omit<Setting<T>, 'kind' | 'schema'>,
): Setting<T> {
  return { kind: 'setting', schema, ...opts };
}

export function group<C extends Record<string, Node>>(
  children: C,
  opts: { doc?: string; envPrefix?: string } = {},
): Group<C> {
  return { kind: 'group', children, ...opts };
}

export type Infer<N> =
  N extends Setting<infer T>
    ? z.output<T>
    : N extends Group<infer C>
      ? { [K in keyof C]: Infer<C[K]> }
      : never;

/** The zod schema of a node: strict objects, so a misspelt key is an error rather than ignored. */
export function toZod(node: Node): z.ZodType {
  if (node.kind === 'setting') return node.schema;
  const shape: Record<string, z.ZodType> = {};
  for (const [key, child] of Object.entries(node.children)) shape[key] = toZod(child);
  // An absent section, or one whose keys are all commented out (YAML null), is parsed as {} so
  // the defaults inside it apply.
  return z.preprocess((v) => (v === null ? undefined : v), z.strictObject(shape).prefault({}));
}

export interface SettingInfo {
  path: string[];
  setting: Setting;
  /** Canonical environment name. */
  envName: string;
  /**
   * The variable that sets only a default (below the file and every other variable): the canonical
   * name with `DEFAULT_` after `LASTWILL_`. A container image sets its listen addresses and data
   * directories this way, so what an operator brings (a file, lk-jwt-service's variables) still wins.
   */
  defaultEnvName: string;
  /** The default value, or undefined when the setting is required or optional without one. */
  defaultValue: unknown;
  hasDefault: boolean;
}

/** Every setting below `root`, depth first in declaration order. */
export function settingsOf(root: Node, prefix = '', path: string[] = [], envPath: string[] = []): SettingInfo[] {
  if (root.kind === 'setting') {
    const parsed = root.schema.safeParse(undefined);
    const hasDefault = parsed.success && parsed.data !== undefined;
    const envName = prefix + envPath.join('_').toUpperCase();
    return [
      {
        path,
        setting: root,
        envName,
        defaultEnvName: envName.replace(/^(LASTWILL_)?/, 'LASTWILL_DEFAULT_'),
        defaultValue: hasDefault ? parsed.data : undefined,
        hasDefault,
      },
    ];
  }
  const ownPrefix = root.envPrefix ?? prefix;
  const resetEnvPath = root.envPrefix !== undefined;
  return Object.entries(root.children).flatMap(([key, child]) =>
    settingsOf(child, ownPrefix, [...path, key], [...(resetEnvPath ? [] : envPath), key]),
  );
}

/** Converts an environment string by kind; unconvertible input is returned as-is for zod to reject. */
export function parseEnvValue(kind: EnvKind, raw: string): unknown {
  const value = raw.trim();
  switch (kind) {
    case 'string':
      return raw;
    case 'number':
      return /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : raw;
    case 'boolean':
      if (/^(true|1|yes|on)$/i.test(value)) return true;
      if (/^(false|0|no|off)$/i.test(value)) return false;
      return raw;
    case 'list':
      return value.split(/[\s,]+/).filter((s) => s.length > 0);
    case 'map': {
      const out: Record<string, string> = {};
      for (const pair of value.split(/[\s,]+/).filter((s) => s.length > 0)) {
        const eq = pair.indexOf('=');
        if (eq <= 0) return raw;
        out[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      return out;
    }
    case 'json':
      try {
        return JSON.parse(value);
      } catch {
        return raw;
      }
  }
}
