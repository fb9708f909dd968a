// The agent object in-process: what close() releases when start() never ran.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { buildAgent } from '../../src/agent/app.js';
import { agentEnvHook } from '../../src/config/agent-env.js';
import { agentSettings } from '../../src/config/agent.js';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/lib/logger.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('Agent.close()', () => {
  it('closes the job store even when start() never ran', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'lastwill-agent-app-'));
    dirs.push(dataDir);
    const env = { LASTWILL_AGENT_DATA_DIR: dataDir };
    const config = loadConfig(agentSettings, { env, envHook: agentEnvHook });
    const agent = buildAgent({ config, log: silentLogger() });
    // SQLite removes the WAL file when the last connection to the database closes.
    const wal = join(dataDir, 'agent.sqlite-wal');
    expect(existsSync(wal)).toBe(true);
    await agent.close();
    expect(existsSync(wal)).toBe(false);
    const delegation = {
      livekitRoom: 'r',
      identity: 'i',
      delayId: 'd',
      delayTimeoutMs: 1000,
      serverName: 'hs.test',
      userId: '@u:hs.test',
      source: 'get_token',
    } as const;
    await expect(agent.engine.delegate(delegation)).rejects.toThrow();
  });
});
