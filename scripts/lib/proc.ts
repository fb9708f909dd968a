// Process plumbing shared by the local stack (scripts/stack.ts), the participant tool and the
// tests (test/e2e/support/proc.ts adds the tests' skip rule): child processes with captured logs,
// free loopback ports, bounded waits, and a last-resort reaper so no child outlives its parent.
import { spawn, execFile, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** This folder: the child scripts (netns-bridge.mjs, participant-child.ts) live here. */
export const LIB_DIR = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(LIB_DIR, '../..');

/** Thrown when a prerequisite (Go, Python, root for netns, …) is missing. */
export class PrerequisiteMissing extends Error {
  override name = 'PrerequisiteMissing';
}

// ---------------------------------------------------------------------------------------
// Process registry: everything we spawn is SIGKILLed when this process exits, whatever happens.
const live = new Set<ChildProcess>();
let reaperInstalled = false;
function installReaper(): void {
  if (reaperInstalled) return;
  reaperInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGCONT'); // a SIGSTOPped child must be able to die
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcess {
  child: ChildProcess;
  pid: number;
  logFile: string | undefined;
  /** Everything the process wrote to stdout+stderr so far (last ~4 MB). */
  logs(): string;
  exited: Promise<ExitInfo>;
  hasExited(): boolean;
  signal(sig: NodeJS.Signals): void;
  /** SIGTERM, then SIGKILL after graceMs; resolves on exit. */
  stop(graceMs?: number): Promise<ExitInfo>;
  /** SIGKILL; resolves on exit. */
  kill(): Promise<ExitInfo>;
}

const MAX_LOG = 4 * 1024 * 1024;

export function spawnManaged(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { logFile?: string; onLine?: (line: string, stream: 'stdout' | 'stderr') => void } = {},
): ManagedProcess {
  installReaper();
  const { logFile, onLine, ...spawnOpts } = opts;
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...spawnOpts });
  // A spawn failure (ENOENT…) has no pid; it arrives through 'error' and is surfaced as an exit.
  live.add(child);
  let buf = '';
  let file: WriteStream | undefined;
  if (logFile) file = createWriteStream(logFile, { flags: 'a' });
  const partial: Record<'stdout' | 'stderr', string> = { stdout: '', stderr: '' };
  const sink = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
    const s = chunk.toString('utf8');
    buf += s;
    if (buf.length > MAX_LOG) buf = buf.slice(buf.length - MAX_LOG);
    file?.write(s);
    if (onLine) {
      partial[stream] += s;
      let i: number;
      while ((i = partial[stream].indexOf('\n')) >= 0) {
        const line = partial[stream].slice(0, i);
        partial[stream] = partial[stream].slice(i + 1);
        onLine(line, stream);
      }
    }
  };
  child.stdout?.on('data', sink('stdout'));
  child.stderr?.on('data', sink('stderr'));
  child.stdin?.on('error', () => {}); // EPIPE when the child is gone
  let done = false;
  const exited = new Promise<ExitInfo>((resolve) => {
    const finish = (info: ExitInfo) => {
      if (done) return;
      done = true;
      live.delete(child);
      file?.end();
      resolve(info);
    };
    child.once('exit', (code, signal) => finish({ code, signal }));
    child.once('error', (err) => {
      buf += `\n[spawn error] ${err.message}\n`;
      finish({ code: -1, signal: null });
    });
  });
  const signal = (sig: NodeJS.Signals) => {
    if (done) return;
    try {
      child.kill(sig);
    } catch {
      /* gone */
    }
  };
  return {
    child,
    pid: child.pid ?? -1,
    logFile,
    logs: () => buf,
    exited,
    hasExited: () => done,
    signal,
    async stop(graceMs = 5000) {
      if (done) return exited;
      signal('SIGCONT');
      signal('SIGTERM');
      const t = setTimeout(() => signal('SIGKILL'), graceMs);
      const info = await exited;
      clearTimeout(t);
      return info;
    },
    async kill() {
      if (done) return exited;
      signal('SIGKILL');
      return exited;
    },
  };
}

export function execFileText(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; stderrToParent?: boolean; signal?: AbortSignal } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = execFile(
      cmd,
      args,
      {
        env: opts.env ?? process.env,
        timeout: opts.timeoutMs ?? 0,
        maxBuffer: 64 * 1024 * 1024,
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 127) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.stderrToParent) c.stderr?.on('data', (d: Buffer) => process.stderr.write(d));
  });
}

/**
 * The parent's environment minus every setting of ours (and whatever `alsoDrop` matches), so a
 * developer's shell cannot leak into a child (LIVEKIT_SERVER_BIN, which names the test binary, stays).
 */
export function cleanEnv(alsoDrop?: RegExp): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    const ours = /^(LASTWILL_HS_|LASTWILL_AGENT_|LASTWILL_DEFAULT_|LIVEKIT_)/.test(k) && k !== 'LIVEKIT_SERVER_BIN';
    if (!ours && !alsoDrop?.test(k)) env[k] = v;
  }
  return env;
}

/** A provisioned program's path, or why there is none. */
export type ProvisionResult = { path: string; error?: undefined } | { path?: undefined; error: string };

/**
 * Runs scripts/provision-`name`.sh, its progress on this process's stderr. The script prints the
 * program's path as its last line, or says why not on a last line starting `provision-<name>:`.
 */
export async function runProvisionScript(
  name: string,
  opts: { env?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<ProvisionResult> {
  const script = path.join(REPO_ROOT, 'scripts', `provision-${name}.sh`);
  const r = await execFileText('bash', [script], {
    stderrToParent: true,
    env: { ...process.env, ...opts.env },
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const found = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code === 0 && found && existsSync(found)) return { path: found };
  const stderr = r.stderr.trim();
  const why = stderr.split('\n').filter((l) => l.startsWith(`provision-${name}:`)).pop() ?? stderr;
  return { error: why || `exit ${r.code}` };
}

export function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, cmd);
    if (dir && existsSync(p)) return p;
  }
  for (const dir of ['/usr/sbin', '/sbin', '/usr/bin', '/bin']) {
    const p = path.join(dir, cmd);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/**
 * Cleanups run last-in first-out by `close()`; one that fails is logged under `label` and the rest
 * still run (a stack of servers must come down whatever broke first).
 */
export function cleanupStack(label: string): { push(fn: () => Promise<void> | void): void; close(): Promise<void> } {
  const list: Array<() => Promise<void> | void> = [];
  return {
    push: (fn) => void list.push(fn),
    async close() {
      while (list.length) {
        try {
          await list.pop()!();
        } catch (err) {
          console.error(`${label} cleanup failed:`, err);
        }
      }
    },
  };
}

// ---------------------------------------------------------------------------------------
// Ports. Only 127.0.0.1 is ever probed.
export function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

/** A port free for both TCP and UDP on 127.0.0.1 (LiveKit's ICE/TCP and ICE/UDP each get one). */
export async function freePorts(n: number, kind: 'tcp' | 'udp'): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(kind === 'tcp' ? await freeTcpPort() : await freeUdpPort());
  return [...out];
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll fn until it returns truthy or the deadline passes. */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  { timeoutMs = 30_000, intervalMs = 100, abort }: { timeoutMs?: number; intervalMs?: number; abort?: () => string | undefined } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    const why = abort?.();
    if (why) throw new Error(`${what}: ${why}`);
    try {
      const v = await fn();
      if (v) return v as T;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${String(lastErr)})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** The Node binary for child scripts: must strip TypeScript types natively (Node >= 22.18 / 23.6). */
export function nodeForChildren(): string {
  const [maj, min] = process.versions.node.split('.').map(Number) as [number, number];
  if (maj >= 24 || (maj === 23 && min >= 6) || (maj === 22 && min >= 18)) return process.execPath;
  const local = path.join(REPO_ROOT, 'node_modules', '.bin', 'node');
  if (existsSync(local)) return local;
  throw new PrerequisiteMissing(`Node ${process.versions.node} cannot run .ts children; run the tests via npx (Node 24)`);
}
