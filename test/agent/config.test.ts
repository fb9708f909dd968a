import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { agentEnvHook } from '../../src/config/agent-env.js';
import { agentSettings } from '../../src/config/agent.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { engineSettingsOf } from '../../src/agent/app.js';
import { DEFAULT_ENGINE_SETTINGS } from '../../src/agent/jobs/index.js';

const dir = mkdtempSync(join(tmpdir(), 'lastwill-agent-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const load = (env: Record<string, string>) => loadConfig(agentSettings, { env, envHook: agentEnvHook });
const fails = (env: Record<string, string>) => {
  try {
    load(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
};

describe('agent config: defaults', () => {
  it('runs on embedded defaults', () => {
    const c = load({});
    expect(c.bind).toBe('127.0.0.1:8080');
    expect(c.livekit.url).toBe('ws://127.0.0.1:7880');
    expect(c.livekit.key).toBe('devkey');
    expect(c.sanity_check_interval_seconds).toBe(30);
    expect(c.well_known_cache_ttl_seconds).toBe(4 * 3600);
    expect(c.outbound.timeout_ms).toBe(5000);
    expect(c.full_access_homeservers).toEqual([]);
    expect(c.log_level).toBe('info');
  });

  it('engine defaults equal the engine\'s own defaults', () => {
    expect(engineSettingsOf(load({}))).toEqual(DEFAULT_ENGINE_SETTINGS);
  });

  it('maps the poll budget and the restarts in flight onto the engine', () => {
    const settings = engineSettingsOf(
      load({ LASTWILL_AGENT_ENGINE_SANITY_CHECK_MAX_PER_SECOND: '250', LASTWILL_AGENT_ENGINE_PACING_MAX_IN_FLIGHT: '8' }),
    );
    expect(settings).toMatchObject({ sanityCheckMaxPerSecond: 250, maxRestartsInFlight: 8 });
  });
});

describe('agent config: lk-jwt-service environment', () => {
  it('reads the plain aliases', () => {
    const c = load({
      LIVEKIT_URL: 'wss://sfu.example.com',
      LIVEKIT_KEY: 'key1',
      LIVEKIT_SECRET: 'secret1',
      LIVEKIT_FULL_ACCESS_HOMESERVERS: 'example.com, matrix.org other.net',
      LIVEKIT_CS_API_URL_OVERRIDES: 'example.com=http://10.0.0.5:8008,matrix.org=https://m.example',
      LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '0',
      LIVEKIT_LOG_LEVEL: 'WARNING',
      LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING',
      LIVEKIT_REDIS_URL: 'redis://localhost:6379',
      LIVEKIT_JWT_BIND: ':9090',
    });
    expect(c.livekit).toEqual({ url: 'wss://sfu.example.com', key: 'key1', secret: 'secret1' });
    expect(c.full_access_homeservers).toEqual(['example.com', 'matrix.org', 'other.net']);
    expect(c.cs_api_url_overrides).toEqual({ 'example.com': 'http://10.0.0.5:8008', 'matrix.org': 'https://m.example' });
    expect(c.sanity_check_interval_seconds).toBe(0);
    expect(c.log_level).toBe('warn');
    expect(c.insecure_skip_verify_tls).toBe('YES_I_KNOW_WHAT_I_AM_DOING');
    expect(c.redis_url).toBe('redis://localhost:6379');
    expect(c.bind).toBe('0.0.0.0:9090');
  });

  it('maps the deprecated LIVEKIT_JWT_PORT to every interface', () => {
    expect(load({ LIVEKIT_JWT_PORT: '8081' }).bind).toBe('0.0.0.0:8081');
  });

  it('accepts * for full access', () => {
    expect(load({ LIVEKIT_FULL_ACCESS_HOMESERVERS: '*' }).full_access_homeservers).toEqual(['*']);
  });

  it('canonical names win over aliases', () => {
    expect(load({ LASTWILL_AGENT_LIVEKIT_URL: 'ws://a:1', LIVEKIT_URL: 'ws://b:2' }).livekit.url).toBe('ws://a:1');
  });

  it('reads *_FROM_FILE secrets without trailing newlines', () => {
    writeFileSync(join(dir, 'key'), 'filekey\n');
    writeFileSync(join(dir, 'secret'), 'filesecret\n');
    const c = load({ LIVEKIT_KEY_FROM_FILE: join(dir, 'key'), LIVEKIT_SECRET_FROM_FILE: join(dir, 'secret') });
    expect(c.livekit.key).toBe('filekey');
    expect(c.livekit.secret).toBe('filesecret');
  });

  it('reads LIVEKIT_KEY_FILE as "key: secret"', () => {
    writeFileSync(join(dir, 'keys.yaml'), 'k1: s1-very-secret\n');
    const c = load({ LIVEKIT_KEY_FILE: join(dir, 'keys.yaml') });
    expect(c.livekit.key).toBe('k1');
    expect(c.livekit.secret).toBe('s1-very-secret');
  });
});

describe('agent config: invalid values name the key', () => {
  it.each([
    [{ LIVEKIT_JWT_BIND: ':8080', LIVEKIT_JWT_PORT: '8080' }, /LIVEKIT_JWT_BIND.*LIVEKIT_JWT_PORT/],
    [{ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '-1' }, /sanity_check_interval_seconds \(from LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS\)/],
    [{ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '1.5' }, /sanity_check_interval_seconds/],
    [{ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: 'often' }, /sanity_check_interval_seconds/],
    [{ LIVEKIT_LOG_LEVEL: 'loud' }, /log_level \(from LIVEKIT_LOG_LEVEL\)/],
    [{ LIVEKIT_URL: 'not a url' }, /livekit\.url \(from LIVEKIT_URL\)/],
    [{ LIVEKIT_CS_API_URL_OVERRIDES: 'example.com' }, /cs_api_url_overrides/],
    [{ LIVEKIT_CS_API_URL_OVERRIDES: 'example.com=ftp://x' }, /cs_api_url_overrides/],
    [{ LIVEKIT_FULL_ACCESS_HOMESERVERS: 'bad name!' }, /full_access_homeservers/],
    [{ LIVEKIT_KEY_FROM_FILE: '/nonexistent/lastwill/key' }, /livekit\.key \(from LIVEKIT_KEY_FROM_FILE\)/],
    [{ LIVEKIT_KEY_FILE: '/nonexistent/lastwill/keys' }, /livekit\.key \(from LIVEKIT_KEY_FILE\)/],
    [{ LIVEKIT_JWT_BIND: 'nowhere' }, /bind \(from LIVEKIT_JWT_BIND\)/],
    [{ LASTWILL_AGENT_HOMESERVER_SECRET: 'short' }, /homeserver_secret/],
    [{ LASTWILL_AGENT_ENGINE_RESTART_FRACTION: '1.5' }, /engine\.restart_fraction/],
  ])('%o', (env, pattern) => {
    expect(fails(env)).toMatch(pattern);
  });

  it('refuses LIVEKIT_KEY_FILE together with LIVEKIT_KEY', () => {
    writeFileSync(join(dir, 'keys2.yaml'), 'k1: s1\n');
    expect(fails({ LIVEKIT_KEY_FILE: join(dir, 'keys2.yaml'), LIVEKIT_KEY: 'x' })).toMatch(/LIVEKIT_KEY_FILE.*LIVEKIT_KEY/);
  });

  it('refuses a malformed LIVEKIT_KEY_FILE', () => {
    writeFileSync(join(dir, 'keys3.yaml'), 'just-a-key\n');
    expect(fails({ LIVEKIT_KEY_FILE: join(dir, 'keys3.yaml') })).toMatch(/key: secret/);
  });
});
