// A throwaway redis-server on a free loopback port, for tests that need a real Redis (Debian's
// redis-server package). Nothing is persisted: the tests only need it to outlive the processes
// that use it.
import { freeTcpPort, PrerequisiteMissing, spawnManaged, waitFor, which } from '../e2e/support/proc.js';

export interface RedisServer {
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  close(): Promise<void>;
}

export async function startRedis(dir: string): Promise<RedisServer> {
  const bin = which('redis-server');
  if (!bin) throw new PrerequisiteMissing('redis-server is not installed (Debian package redis-server)');
  const port = await freeTcpPort();
  const proc = spawnManaged(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await waitFor('redis-server to accept connections', () => proc.logs().includes('Ready to accept connections'), {
    timeoutMs: 10_000,
    intervalMs: 25,
    abort: () => (proc.hasExited() ? `redis-server exited:\n${proc.logs()}` : undefined),
  });
  return { url: `redis://127.0.0.1:${port}`, close: async () => void (await proc.stop(5000)) };
}
