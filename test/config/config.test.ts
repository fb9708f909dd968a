import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';

import { agentSettings } from '../../src/config/agent.js';
import { group, setting } from '../../src/config/define.js';
import { generatedFiles } from '../../src/config/generated.js';
import { homeserverSettings } from '../../src/config/homeserver.js';
import { ConfigError, loadConfig, resolveConfig } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'lastwill-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('homeserver configuration', () => {
  it('has working embedded defaults', () => {
    const config = loadConfig(homeserverSettings, { env: {} });
    expect(config.bind).toBe('127.0.0.1:8008');
    expect(config.max_delay_ms).toBe(86_400_000);
    expect(config.rate_limits.management).toEqual({ per_second: 1, burst: 20 });
    expect(config.open_registration).toBe(false);
  });

  it('lets the environment override the file, which overrides defaults', () => {
    const path = file('hs.yaml', 'server_name: file.example\nopen_registration: true\nmax_delay_ms: 5000\n');
    const config = loadConfig(homeserverSettings, {
      file: path,
      env: {
        LASTWILL_HS_SERVER_NAME: 'env.example',
        LASTWILL_HS_BIND: '0.0.0.0:9000',
        LASTWILL_HS_RATE_LIMITS_MANAGEMENT_BURST: '7',
        LASTWILL_HS_RATE_LIMITS_TRUSTED_ADDRESSES: '127.0.0.1, 10.0.0.1',
      },
    });
    expect(config.server_name).toBe('env.example');
    expect(config.bind).toBe('0.0.0.0:9000');
    expect(config.open_registration).toBe(true);
    expect(config.max_delay_ms).toBe(5000);
    expect(config.rate_limits.management.burst).toBe(7);
    expect(config.rate_limits.trusted_addresses).toEqual(['127.0.0.1', '10.0.0.1']);
  });

  it.each([
    [{ LASTWILL_HS_MAX_DELAY_MS: '99999999999' }, /max_delay_ms \(from LASTWILL_HS_MAX_DELAY_MS\)/],
    [{ LASTWILL_HS_BIND: 'nohost' }, /bind \(from LASTWILL_HS_BIND\): must be host:port/],
    [{ LASTWILL_HS_OPEN_REGISTRATION: 'maybe' }, /open_registration \(from LASTWILL_HS_OPEN_REGISTRATION\)/],
  ])('names the key and the problem for bad environment values %#', (env, message) => {
    expect(() => loadConfig(homeserverSettings, { env })).toThrow(message);
  });

  it('rejects unknown keys, bad YAML and unreadable files with the file named', () => {
    expect(() => loadConfig(homeserverSettings, { file: file('u.yaml', 'bnid: x\n'), env: {} })).toThrow(/unknown key\(s\) bnid/);
    expect(() => loadConfig(homeserverSettings, { file: file('b.yaml', 'a: [\n'), env: {} })).toThrow(/not valid YAML/);
    expect(() => loadConfig(homeserverSettings, { file: join(dir, 'missing.yaml'), env: {} })).toThrow(ConfigError);
    expect(() => loadConfig(homeserverSettings, { file: file('n.yaml', '- 1\n'), env: {} })).toThrow(/top level must be a mapping/);
  });

  it('puts a LASTWILL_DEFAULT_ variable below the file and every other variable', () => {
    const root = group(
      {
        url: setting(z.string().default('x'), { doc: 'u', env: 'string', aliases: [{ name: 'OLD_URL' }] }),
        size: setting(z.number().default(1), { doc: 's', env: 'number' }),
      },
      { envPrefix: 'LASTWILL_T_' },
    );
    const defaults = { LASTWILL_DEFAULT_T_URL: 'image', LASTWILL_DEFAULT_T_SIZE: '5' };
    expect(loadConfig(root, { env: defaults })).toEqual({ url: 'image', size: 5 });
    expect(loadConfig(root, { env: { ...defaults, OLD_URL: 'old' } }).url).toBe('old');
    expect(loadConfig(root, { env: { ...defaults, LASTWILL_T_URL: 'new' } }).url).toBe('new');
    const path = file('t.yaml', 'url: file\n');
    expect(loadConfig(root, { file: path, env: defaults })).toEqual({ url: 'file', size: 5 });
    const { sources } = resolveConfig(root, { file: path, env: { ...defaults, LASTWILL_T_SIZE: '6' } });
    expect(Object.fromEntries(sources)).toEqual({ url: `in ${path}`, size: 'from LASTWILL_T_SIZE' });
  });

  it('applies aliases after the canonical name and custom parsers', () => {
    const root = group(
      {
        url: setting(z.string().default('x'), { doc: 'u', env: 'string', aliases: [{ name: 'OLD_URL' }] }),
        port: setting(z.number().default(1), { doc: 'p', env: 'number', aliases: [{ name: 'OLD_PORT', parse: (v) => Number(v) * 2 }] }),
      },
      { envPrefix: 'T_' },
    );
    expect(loadConfig(root, { env: { OLD_URL: 'old', OLD_PORT: '21' } })).toEqual({ url: 'old', port: 42 });
    expect(loadConfig(root, { env: { T_URL: 'new', OLD_URL: 'old' } }).url).toBe('new');
  });
});

describe('generated files', () => {
  it('are committed exactly as the schema renders them (run `npm run gen:config`)', () => {
    for (const f of generatedFiles()) {
      expect(readFileSync(f.path, 'utf8'), f.path).toBe(f.text);
    }
  });

  it.each([
    ['config/homeserver.example.yaml', homeserverSettings],
    ['config/agent.example.yaml', agentSettings],
  ] as const)('the sample %s loads to the defaults', (path, root) => {
    expect(loadConfig(root, { file: path, env: {} })).toEqual(loadConfig(root, { env: {} }));
  });
});
