// Issue 15, the local stack: `npm start` (scripts/stack.ts, run the way package.json's start script
// runs it once dist/ is built) on free ports in a temporary directory, with the real LiveKit of the
// e2e tests; `npm run participant` (scripts/participant.ts) joins a call and leaves; a separate
// Matrix client, another user, watches the room over /sync. Then SIGTERM: every process the stack
// started (LiveKit, its namespace holder and forwarders, `lastwill all`) is gone and it exits 0.
// A LiveKit that dies stops the stack with an error; with LIVEKIT_URL set no LiveKit is started.
//
// Skips with a reason when LiveKit cannot run here (Go, root for the namespace), except with
// CI=true where it fails; the external-SFU case needs neither.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { createCallRoom, registerWithSharedSecret, startObserver } from '../../scripts/lib/matrixrtc.js';
import { DEFAULT_STATE_FILE, readStackState, type StackState } from '../../scripts/lib/stack-state.js';
import { Metrics } from './support/flow.js';
import { ensureLiveKitBinary } from './support/livekit.js';
import { cleanEnv, type ExitInfo, freePorts, type ManagedProcess, REPO_ROOT, spawnManaged, waitFor } from './support/proc.js';

const livekit = await ensureLiveKitBinary();
if (livekit.skip) console.warn(`[local-stack] skipping the stack with LiveKit: ${livekit.skip}`);

const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
const TSX = join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs');

/** An npm script's `tsx scripts/….ts` command as argv; `npm start` runs its part after `&& exec`. */
function scriptCommand(script: string): [string, string[]] {
  const command = script.replace(/^npm run build --silent && exec /, '');
  const [tool, file, ...rest] = command.split(' ');
  if (tool !== 'tsx' || !file?.endsWith('.ts')) throw new Error(`unexpected npm script: ${script}`);
  return [process.execPath, [TSX, join(REPO_ROOT, file), ...rest]];
}

const log = (...a: unknown[]) => console.log('[local-stack]', ...a);

/** Every process below `pid`, read from /proc (the stack is tsx → node → its children). */
function descendants(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parents.set(ppid, [...(parents.get(ppid) ?? []), Number(entry)]);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const child of parents.get(p) ?? []) {
      out.push(child);
      walk(child);
    }
  };
  walk(pid);
  return out;
}

/** The processes of `pids` still running (zombies count as gone), with their command lines. */
function stillRunning(pids: number[]): string[] {
  return pids.flatMap((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return [];
      return [`${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 160)}`];
    } catch {
      return [];
    }
  });
}

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });

interface RunningStack {
  proc: ManagedProcess;
  /** Its processes once ready, to find any that outlive it. */
  tree: number[];
  dir: string;
  stateFile: string;
  state: StackState;
  hsPort: number;
  agentPort: number;
  livekitPort: number;
}

const running: RunningStack[] = [];
const spawned: ManagedProcess[] = [];

/** `npm start` after the build, in a fresh directory (its default data dirs and state file land there). */
async function startStack(env: Record<string, string> = {}): Promise<RunningStack> {
  const dir = mkdtempSync(join(os.tmpdir(), 'lastwill-local-stack-'));
  const [hsPort, agentPort, livekitPort] = (await freePorts(3, 'tcp')) as [number, number, number];
  const [cmd, args] = scriptCommand(pkg.scripts.start!);
  const proc = spawnManaged(cmd, [...args, '--livekit-port', String(livekitPort)], {
    cwd: dir,
    env: {
      ...cleanEnv(),
      LASTWILL_HS_BIND: `127.0.0.1:${hsPort}`,
      // lk-jwt-service's name for the agent's address.
      LIVEKIT_JWT_BIND: `127.0.0.1:${agentPort}`,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  spawned.push(proc);
  await waitFor('the stack to print ready', () => /^\[stack\] ready$/m.test(proc.logs()), {
    timeoutMs: 240_000, // a cold LiveKit build takes minutes (the skip check above usually did it)
    intervalMs: 100,
    abort: () => (proc.hasExited() ? `the stack exited:\n${proc.logs().slice(-6000)}` : undefined),
  });
  const stateFile = join(dir, DEFAULT_STATE_FILE);
  const state = readStackState(stateFile);
  const stack = { proc, tree: descendants(proc.pid), dir, stateFile, state, hsPort, agentPort, livekitPort };
  running.push(stack);
  return stack;
}

/** What is still running of `tree` once its parent exited (the kernel may take a moment to reap the last). */
async function leftOf(tree: number[]): Promise<string[]> {
  await waitFor('the processes to be gone', () => stillRunning(tree).length === 0, { timeoutMs: 5_000 }).catch(() => undefined);
  return stillRunning(tree);
}

/** SIGTERM, and what is left of the stack's processes afterwards. */
async function terminate(stack: RunningStack): Promise<{ exit: ExitInfo; left: string[] }> {
  const tree = descendants(stack.proc.pid);
  stack.proc.signal('SIGTERM');
  const exit = await Promise.race([
    stack.proc.exited,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the stack did not exit within 90 s')), 90_000)),
  ]);
  return { exit, left: await leftOf(tree) };
}

afterEach(async (ctx) => {
  const failed = ctx.task.result?.state === 'fail';
  for (const p of spawned.splice(0)) {
    if (failed) log(`output of pid ${p.pid}:\n${p.logs().slice(-8000)}`);
    if (p.hasExited()) continue;
    const tree = descendants(p.pid);
    await p.stop(60_000);
    for (const line of stillRunning(tree)) process.kill(Number(line.split(' ')[0]), 'SIGKILL');
  }
  for (const s of running.splice(0)) {
    // Whatever outlived a failed stop (reparented, so no longer below it).
    for (const line of stillRunning(s.tree)) process.kill(Number(line.split(' ')[0]), 'SIGKILL');
    if (process.env.LASTWILL_E2E_KEEP !== '1') rmSync(s.dir, { recursive: true, force: true });
  }
});

describe.skipIf(!!livekit.skip)('npm start: the local stack with LiveKit', () => {
  it('a participant joins and leaves, the agent\'s hangup reaches the room, SIGTERM stops everything', async () => {
    const stack = await startStack();
    const { state } = stack;
    const hs = { baseUrl: `http://127.0.0.1:${stack.hsPort}` };
    expect(state.homeserver.url).toBe(hs.baseUrl);
    expect(state.agent.url).toBe(`http://127.0.0.1:${stack.agentPort}`);
    expect(state.livekit).toMatchObject({ url: `ws://127.0.0.1:${stack.livekitPort}`, started: true });
    expect(state.livekit.netnsHolderPid).toBeGreaterThan(0);
    const tree = descendants(stack.proc.pid);
    expect(tree).toEqual(expect.arrayContaining([state.livekit.pid, state.livekit.netnsHolderPid]));
    const provisioned = /^\[stack\] LiveKit: (provisioning the server binary|the binary LIVEKIT_SERVER_BIN names)/m;
    expect(stack.proc.logs()).toMatch(provisioned);
    // What to do next, printed.
    expect(stack.proc.logs()).toContain('npm run participant');
    expect(stack.proc.logs()).toContain(`${state.agent.url}/metrics`);

    // The watcher: another user in the room, its own client, over /sync.
    const suffix = randomBytes(3).toString('hex');
    const bob = await registerWithSharedSecret(hs.baseUrl, state.homeserver.registrationSharedSecret, `bob-${suffix}`);
    const roomId = await createCallRoom(hs, bob, 'local stack test');
    const observer = await startObserver(hs, bob, roomId);
    try {
      const [cmd, args] = scriptCommand(pkg.scripts.participant!);
      const participant = spawnManaged(cmd, [...args, '--room', roomId, '--name', `alice-${suffix}`], {
        cwd: stack.dir,
        env: cleanEnv(),
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      spawned.push(participant);
      await waitFor('the participant to connect', () => /^commands:/m.test(participant.logs()), {
        timeoutMs: 60_000,
        abort: () => (participant.hasExited() ? `the participant exited:\n${participant.logs()}` : undefined),
      });
      const [, userId, deviceId] = /registered (@\S+) \(device (\S+)\)/.exec(participant.logs()) ?? [];
      expect(userId).toBe(`@alice-${suffix}:localhost`);
      await waitFor('bob to see alice in the call', () => observer.sees(userId!, deviceId!), { timeoutMs: 15_000 });
      const metrics = async () => new Metrics(await (await fetch(state.agent.metricsUrl)).text());
      const before = await metrics();
      expect(before.delegations('get_token')).toBe(1);

      participant.child.stdin!.write('leave\n');
      const t0 = Date.now();
      const goneAt = await observer.waitGone(userId!, deviceId!, 30_000);
      log(`membership gone for bob ${goneAt - t0} ms after "leave"`);
      expect(await participant.exited).toEqual({ code: 0, signal: null });
      expect(participant.logs()).toMatch(/hangup seen .* \(the delayed leave: outcome send, reason action\)/);
      // The hangup was the agent's: its send, after LiveKit's signed participant_left webhook.
      const after = await metrics();
      expect(after.sendsOk() - before.sendsOk()).toBe(1);
      expect(after.webhooks('participant_left')).toBeGreaterThanOrEqual(1);
      expect(after.sum('lastwill_agent_webhooks_total', { verdict: 'rejected' })).toBe(0);
    } finally {
      observer.close();
    }

    const { exit, left } = await terminate(stack);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(left).toEqual([]);
    expect(existsSync(stack.stateFile)).toBe(false);
    expect(await refused(stack.livekitPort)).toBe(true);
    expect(await refused(stack.agentPort)).toBe(true);
  }, 360_000);

  it('stops everything with an error when LiveKit dies', async () => {
    const stack = await startStack();
    const tree = descendants(stack.proc.pid);
    process.kill(stack.state.livekit.pid!, 'SIGKILL');
    const exit = await stack.proc.exited;
    expect(exit).toEqual({ code: 1, signal: null });
    expect(stack.proc.logs()).toContain('[stack] LiveKit exited unexpectedly (signal SIGKILL): stopping the rest');
    expect(await leftOf(tree)).toEqual([]);
    expect(existsSync(stack.stateFile)).toBe(false);
  }, 300_000);
});

describe('npm start: the local stack with another SFU', () => {
  it('starts no LiveKit when LIVEKIT_URL names one, and stops on SIGTERM', async () => {
    const url = 'ws://127.0.0.1:9'; // nothing listens: the agent needs LiveKit only for rooms
    const stack = await startStack({ LIVEKIT_URL: url });
    expect(stack.proc.logs()).toContain(`[stack] LiveKit: ${url} (from LIVEKIT_URL), not started here`);
    expect(stack.proc.logs()).not.toMatch(/LiveKit: (provisioning|the binary)/);
    expect(stack.state.livekit).toEqual({ url, started: false });
    const { exit, left } = await terminate(stack);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(left).toEqual([]);
  }, 120_000);
});
