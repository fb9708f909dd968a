// A real redis-server on a free loopback port (Debian's package, provisioned by
// scripts/provision-redis.sh), with its append-only file in the test's directory so it can be
// stopped and started again with its data, as a production Redis restarts.
import { freeTcpPort, type ManagedProcess, PrerequisiteMissing, spawnManaged, waitFor } from '../e2e/support/proc.js';
import { type Provisioned, provisionOnce } from './provision.js';

/** The redis-server binary, or why the tests that need one are skipped (a failure with CI=true). */
export function ensureRedis(): Promise<Provisioned> {
  return provisionOnce('redis', 'Redis');
}

export interface RedisServer {
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** SIGTERM (Redis writes its files) and wait. */
  stop(): Promise<void>;
  /** SIGKILL. */
  kill(): Promise<void>;
  /** Start again on the same port with the same data directory. */
  start(): Promise<void>;
  /** Stop for good (same as stop; the directory belongs to the caller). */
  close(): Promise<void>;
  logs(): string;
}

export interface RedisOptions {
  /** appendonly yes + appendfsync (default everysec, as a production Redis would run). */
  appendfsync?: 'always' | 'everysec' | 'no';
}

/** Starts redis-server with its data in `dir` (which the caller owns and removes). */
export async function startRedis(dir: string, opts: RedisOptions = {}): Promise<RedisServer> {
  const bin = await ensureRedis();
  if (!bin.path) throw new PrerequisiteMissing(bin.skip);
  const port = await freeTcpPort();
  let proc: ManagedProcess | undefined;
  let history = '';
  const args = [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
    '--appendonly', 'yes', '--appendfsync', opts.appendfsync ?? 'everysec', '--daemonize', 'no',
  ];
  const start = async () => {
    const p = spawnManaged(bin.path, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    proc = p;
    await waitFor('redis-server to accept connections', () => p.logs().includes('Ready to accept connections'), {
      timeoutMs: 15_000,
      intervalMs: 20,
      abort: () => (p.hasExited() ? `redis-server exited:\n${p.logs()}` : undefined),
    });
  };
  const halt = async (how: 'stop' | 'kill') => {
    const p = proc;
    proc = undefined;
    if (!p) return;
    if (how === 'stop') await p.stop(10_000);
    else await p.kill();
    history += p.logs();
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: () => halt('stop'),
    kill: () => halt('kill'),
    start,
    close: () => halt('stop'),
    logs: () => history + (proc?.logs() ?? ''),
  };
}
