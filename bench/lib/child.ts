/**
 * The system under test as a child process: `node dist/cli.js agent|homeserver` with env config,
 * so memory and CPU are the process's own. RSS and CPU come from /proc; the V8 heap comes from the
 * child's inspector (loopback, `--inspect=127.0.0.1:0`), which the bench asks for a GC and
 * process.memoryUsage() without changing the program.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import path from 'node:path';

import WebSocket from 'ws';

import { cleanEnv, nodeForChildren, REPO_ROOT, spawnManaged, waitFor, type ManagedProcess } from '../../test/e2e/support/proc.js';

export const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');
const CLK_TCK = 100;

export interface MemoryUsage {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

export interface CliChild {
  readonly proc: ManagedProcess;
  readonly pid: number;
  /** ms (performance.timeOrigin-based epoch) when the process was spawned. */
  readonly spawnedAt: number;
  /** Resident set size from /proc/<pid>/status, bytes. */
  rss(): number;
  /** Peak resident set size (VmHWM), bytes. */
  peakRss(): number;
  /** utime + stime, seconds. */
  cpuSeconds(): number;
  /** process.memoryUsage() in the child after a full GC (needs `inspect`). */
  heapAfterGc(): Promise<MemoryUsage>;
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

/** High-resolution wall clock in epoch ms, comparable across the processes of one machine. */
export const nowMs = (): number => performance.timeOrigin + performance.now();

export async function spawnCli(
  command: 'agent' | 'homeserver',
  env: Record<string, string>,
  opts: { readyUrl: string; inspect?: boolean; readyTimeoutMs?: number; cwd?: string },
): Promise<CliChild> {
  let inspectorUrl: string | undefined;
  // BENCH_CPU_PROF=<dir> profiles the child (written when it exits gracefully, see stop()).
  const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  // BENCH_NODE_ARGS="--trace-gc ..." adds Node flags; with BENCH_CHILD_LOG=<file> the child's output
  // is appended there (diagnosis only: neither changes what is measured otherwise).
  const extra = process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(' ').filter(Boolean) : [];
  const childLog = process.env.BENCH_CHILD_LOG;
  const args = [...prof, ...extra, ...(opts.inspect ? ['--inspect=127.0.0.1:0'] : []), CLI, command];
  const spawnedAt = nowMs();
  const proc = spawnManaged(nodeForChildren(), args, {
    env: { ...cleanEnv(/^NODE_OPTIONS$/), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    onLine: (line) => {
      if (childLog) appendFileSync(childLog, `${line}\n`);
      const m = /Debugger listening on (ws:\/\/\S+)/.exec(line);
      if (m) inspectorUrl = m[1];
    },
  });
  await waitFor(
    `${command} ready at ${opts.readyUrl}`,
    async () => (await fetch(opts.readyUrl, { signal: AbortSignal.timeout(2000) })).ok,
    {
      timeoutMs: opts.readyTimeoutMs ?? 120_000,
      intervalMs: 20,
      abort: () => (proc.hasExited() ? `${command} exited early:\n${proc.logs().slice(-4000)}` : undefined),
    },
  );
  const pid = proc.pid;
  const status = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  };
  return {
    proc,
    pid,
    spawnedAt,
    rss: () => status('VmRSS'),
    peakRss: () => status('VmHWM'),
    cpuSeconds() {
      // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
      const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
      return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
    },
    async heapAfterGc() {
      if (!inspectorUrl) throw new Error('child was not started with inspect');
      return inspectorEval(inspectorUrl);
    },
    async kill9() {
      await proc.kill();
    },
    async stop() {
      await proc.stop(20_000);
    },
  };
}

/** One inspector session: full GC, then process.memoryUsage(). */
async function inspectorEval(url: string): Promise<MemoryUsage> {
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  let id = 0;
  const pending = new Map<number, (msg: any) => void>();
  ws.on('message', (data) => {
    const msg = JSON.parse(String(data));
    if (msg.id !== undefined) pending.get(msg.id)?.(msg);
  });
  const call = (method: string, params: unknown = {}) =>
    new Promise<any>((resolve) => {
      const n = ++id;
      pending.set(n, resolve);
      ws.send(JSON.stringify({ id: n, method, params }));
    });
  try {
    await call('HeapProfiler.collectGarbage');
    const r = await call('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    });
    return JSON.parse(r.result.result.value) as MemoryUsage;
  } finally {
    ws.close();
  }
}
