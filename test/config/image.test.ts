/**
 * The container image's settings are defaults: the Dockerfile's environment, read from the
 * Dockerfile itself, loaded by the real configuration loader. lk-jwt-service's LIVEKIT_JWT_BIND and
 * LIVEKIT_JWT_PORT, a config file and the LASTWILL_* variables all win over them (an operator
 * swapping lk-jwt-service out keeps the variables they had), and they apply when nothing else is set.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { agentEnvHook, allEnvHook } from '../../src/config/agent-env.js';
import { settingsOf } from '../../src/config/define.js';
import { agentSettings, allSettings, homeserverSettings, loadConfig } from '../../src/config/index.js';
import { resolveConfig } from '../../src/config/load.js';
import { finalStage } from '../support/dockerfile.js';

const image = finalStage().env;
const dir = mkdtempSync(join(tmpdir(), 'lastwill-image-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The agent as `docker run … lastwill agent` starts it, with `extra` added by the operator. */
const agent = (extra: Record<string, string> = {}, file?: string) =>
  loadConfig(agentSettings, { env: { ...image, ...extra }, envHook: agentEnvHook, file });

describe('the container image', () => {
  it('sets only LASTWILL_DEFAULT_ variables that a setting reads, never a LASTWILL_ setting itself', () => {
    const ours = Object.keys(image).filter((name) => name.startsWith('LASTWILL_'));
    expect(ours.length).toBeGreaterThan(0);
    const defaults = new Set([...settingsOf(allSettings)].map((info) => info.defaultEnvName));
    expect(ours.filter((name) => !defaults.has(name))).toEqual([]);
  });

  it('listens on every interface at 8080 (agent) and 8008 (homeserver) with its stores under /data', () => {
    const config = agent();
    expect(config.bind).toBe('0.0.0.0:8080');
    expect(config.data_dir).toBe('/data/agent');
    const hs = loadConfig(homeserverSettings, { env: image });
    expect(hs.bind).toBe('0.0.0.0:8008');
    expect(hs.data_dir).toBe('/data/homeserver');
    const all = loadConfig(allSettings, { env: image, envHook: allEnvHook });
    expect([all.agent.bind, all.homeserver.bind]).toEqual(['0.0.0.0:8080', '0.0.0.0:8008']);
  });

  it("lets lk-jwt-service's LIVEKIT_JWT_PORT and LIVEKIT_JWT_BIND win over its bind", () => {
    expect(agent({ LIVEKIT_JWT_PORT: '9000' }).bind).toBe('0.0.0.0:9000');
    expect(agent({ LIVEKIT_JWT_BIND: '127.0.0.1:9001' }).bind).toBe('127.0.0.1:9001');
    expect(agent({ LIVEKIT_JWT_BIND: ':7000' }).bind).toBe('0.0.0.0:7000');
    const all = loadConfig(allSettings, { env: { ...image, LIVEKIT_JWT_BIND: ':7001' }, envHook: allEnvHook });
    expect(all.agent.bind).toBe('0.0.0.0:7001');
  });

  it('lets a config file and the LASTWILL_ variables win over its defaults', () => {
    const file = join(dir, 'agent.yaml');
    writeFileSync(file, 'bind: 127.0.0.1:9100\ndata_dir: /srv/agent\n');
    expect(agent({}, file)).toMatchObject({ bind: '127.0.0.1:9100', data_dir: '/srv/agent' });
    expect(agent({ LASTWILL_AGENT_BIND: '127.0.0.1:9200' }, file).bind).toBe('127.0.0.1:9200');
    expect(agent({ LASTWILL_AGENT_DATA_DIR: '/var/lib/lastwill' }).data_dir).toBe('/var/lib/lastwill');
  });

  it('names the image default as the source of a value, and of a bad one', () => {
    const { sources } = resolveConfig(agentSettings, { env: image, envHook: agentEnvHook });
    expect(sources.get('bind')).toBe('from LASTWILL_DEFAULT_AGENT_BIND');
    expect(() => agent({ LASTWILL_DEFAULT_AGENT_BIND: 'nowhere' })).toThrow(
      /bind \(from LASTWILL_DEFAULT_AGENT_BIND\): must be host:port/,
    );
  });
});
