#!/usr/bin/env node
/**
 * The one entry point: `lastwill homeserver | agent | all | check-config | sample-config`.
 * Only this file touches process.argv, process.env, signals and exit codes.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';

import type { Logger } from 'pino';

import { type AgentConfig, type HomeserverConfig, agentSettings, allSettings, ConfigError, homeserverSettings, loadConfig } from './config/index.js';
import { agentEnvHook, allEnvHook } from './config/agent-env.js';
import { generatedFiles } from './config/generated.js';
import { createLogger, type LogLevel } from './lib/logger.js';
import type { RunningService } from './lib/service.js';

const USAGE = `Usage: lastwill <command> [--config FILE]

Commands:
  homeserver      run the bundled MSC4140 delayed-events homeserver
  agent           run the delegate agent beside the LiveKit SFU
  all             run both in one process on embedded defaults (\`npm start\` runs it beside LiveKit)
  check-config    validate the configuration of --for homeserver|agent|all and exit
  sample-config   print the generated sample configs; --write updates config/ and docs/

Every setting can also come from an environment variable; see docs/configuration.md.`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      for: { type: 'string' },
      write: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const command = positionals[0];
  if (values.help || command === undefined) {
    process.stdout.write(`${USAGE}\n`);
    return command === undefined && !values.help ? 2 : 0;
  }
  const env = process.env;
  const file = values.config;
  switch (command) {
    case 'homeserver': {
      const config = loadConfig(homeserverSettings, { file, env });
      const log = createLogger({ level: config.log_level as LogLevel });
      const { startHomeserver } = await import('./homeserver/main.js');
      return runUntilSignalled(log, () => startHomeserver(config, log));
    }
    case 'agent': {
      const config = loadConfig(agentSettings, { file, env, envHook: agentEnvHook });
      const log = createLogger({ level: config.log_level as LogLevel });
      const { startAgent } = await import('./agent/main.js');
      return runUntilSignalled(log, () => startAgent(config, log));
    }
    case 'all': {
      const config = loadConfig(allSettings, { file, env, envHook: allEnvHook });
      const log = createLogger({ level: config.homeserver.log_level as LogLevel });
      const { startAll } = await import('./all.js');
      return runUntilSignalled(log, () => startAll(config.homeserver as HomeserverConfig, config.agent as AgentConfig, log));
    }
    case 'check-config': {
      const target = values.for ?? 'homeserver';
      if (target === 'homeserver') loadConfig(homeserverSettings, { file, env });
      else if (target === 'agent') loadConfig(agentSettings, { file, env, envHook: agentEnvHook });
      else if (target === 'all') loadConfig(allSettings, { file, env, envHook: allEnvHook });
      else throw new ConfigError(`--for must be homeserver, agent or all (got ${target})`);
      process.stdout.write(`configuration for ${target} is valid\n`);
      return 0;
    }
    case 'sample-config':
      return writeSamples(values.write === true);
    default:
      process.stderr.write(`unknown command: ${command}\n\n${USAGE}\n`);
      return 2;
  }
}

function writeSamples(write: boolean): number {
  for (const f of generatedFiles()) {
    if (write) {
      mkdirSync(dirname(f.path), { recursive: true });
      writeFileSync(f.path, f.text);
      process.stdout.write(`wrote ${f.path}\n`);
    } else {
      process.stdout.write(`# ---- ${f.path}\n${f.text}\n`);
    }
  }
  return 0;
}

/**
 * Starts a service and keeps it until SIGTERM/SIGINT: the first signal drains (in-flight requests
 * finish, stores close) and exits 143/130; a second SIGINT forces the exit.
 */
async function runUntilSignalled(log: Logger, start: () => Promise<RunningService>): Promise<number> {
  const service = await start();
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals, code: number) => {
      if (stopping) {
        if (signal === 'SIGINT') {
          log.warn('second interrupt, exiting without draining');
          process.exit(code);
        }
        return;
      }
      stopping = true;
      log.info({ signal }, 'shutting down');
      service.close().then(
        () => {
          log.info('stopped');
          resolve(code);
        },
        (err: unknown) => {
          log.error({ err }, 'error while shutting down');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM', 143));
    process.on('SIGINT', () => stop('SIGINT', 130));
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`lastwill: ${err.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    if (err instanceof TypeError && (err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`lastwill: ${err.message}\n\n${USAGE}\n`);
      process.exit(2);
    }
    process.stderr.write(`lastwill: fatal: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
