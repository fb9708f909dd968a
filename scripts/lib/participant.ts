// A real @livekit/rtc-node participant in its own child process (participant-child.ts, run by
// Node 24 with native type stripping), so tests and the participant tool (scripts/participant.ts)
// can end it cleanly, kill it, or freeze it.
//
//   const p = await startParticipant({ url: lk.url, token });   // resolves once connected
//   p.sid, p.identity, p.connectMs
//   await p.disconnect();   // room.disconnect() in the child -> participant_left CLIENT_INITIATED
//   await p.kill();         // SIGKILL, no goodbye          -> participant_left after ICE timeouts
//   p.stop(); p.cont();     // SIGSTOP / SIGCONT            -> frozen process, later resume/rejoin
//   await p.exited;
//
// If the LiveKit server was started in a private network namespace (livekit.ts), the child is
// started inside it (nsenter), so its ICE candidates are all loopback; a namespace another process
// holds is named with `netns: enterNetns(holderPid)`.
import path from 'node:path';
import { nodeForChildren, spawnManaged, LIB_DIR, waitFor, type ExitInfo } from './proc.js';
import { netnsForUrl } from './livekit.js';
import type { NetnsEntry } from './netns.js';

export interface StartParticipantOptions {
  url: string;
  token: string;
  /** Namespace to run in; default: the one the server at `url` runs in. null = root namespace (needs allowRootNamespace). */
  netns?: NetnsEntry | null;
  connectTimeoutMs?: number;
  /** Allow running outside a namespace of ours (signalling-only experiments, a remote SFU). Default false. */
  allowRootNamespace?: boolean;
}

export interface ChildMessage {
  type: string;
  [k: string]: unknown;
}

export interface Participant {
  sid: string;
  identity: string;
  pid: number;
  /** ms the child's room.connect() took. */
  connectMs: number;
  /** Date.now() when the connected line arrived. */
  connectedAt: number;
  /** Every JSON line the child printed so far. */
  messages: ChildMessage[];
  logs(): string;
  /** Clean leave: room.disconnect() + dispose() in the child; resolves on exit. */
  disconnect(timeoutMs?: number): Promise<ExitInfo>;
  /** SIGKILL; resolves on exit. */
  kill(): Promise<ExitInfo>;
  /** SIGSTOP (freeze). */
  stop(): void;
  /** SIGCONT (thaw). */
  cont(): void;
  exited: Promise<ExitInfo>;
  /** Resolves with the first message matching pred (past or future). */
  waitForMessage(pred: (m: ChildMessage) => boolean, timeoutMs?: number): Promise<ChildMessage>;
}

export async function startParticipant(opts: StartParticipantOptions): Promise<Participant> {
  const node = nodeForChildren();
  const script = path.join(LIB_DIR, 'participant-child.ts');
  const netns = opts.netns === undefined ? netnsForUrl(opts.url) : opts.netns;
  if (!netns && !opts.allowRootNamespace) {
    throw new Error(
      `no network namespace of ours for ${opts.url}: start the server with startLiveKit() (netns mode). ` +
        'In the root namespace libwebrtc would gather eth0 candidates (non-loopback traffic) and ICE cannot connect on lo.',
    );
  }
  const [cmd, args] = netns ? netns.wrap(node, [script]) : [node, [script]];
  const messages: ChildMessage[] = [];
  const waiters = new Set<{ pred: (m: ChildMessage) => boolean; resolve: (m: ChildMessage) => void }>();
  const proc = spawnManaged(cmd, args, {
    env: {
      ...process.env,
      LASTWILL_PARTICIPANT: JSON.stringify({ url: opts.url, token: opts.token }),
      NODE_NO_WARNINGS: '1', // silences the type-stripping ExperimentalWarning on some 24.x builds
    },
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return;
      let m: ChildMessage;
      try {
        m = JSON.parse(line) as ChildMessage;
      } catch {
        return;
      }
      if (typeof m.type !== 'string') return; // rtc-node's own pino log lines
      messages.push(m);
      for (const w of waiters) {
        if (w.pred(m)) {
          waiters.delete(w);
          w.resolve(m);
        }
      }
    },
  });

  const waitForMessage = (pred: (m: ChildMessage) => boolean, timeoutMs = 30_000): Promise<ChildMessage> => {
    const seen = messages.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (m: ChildMessage) => {
          clearTimeout(t);
          resolve(m);
        },
      };
      const t = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`participant: no matching message in ${timeoutMs} ms; messages: ${JSON.stringify(messages)}\n${proc.logs().slice(-3000)}`));
      }, timeoutMs);
      waiters.add(w);
    });
  };

  let first: ChildMessage;
  try {
    first = await Promise.race([
      waitForMessage((m) => m.type === 'connected' || m.type === 'error', opts.connectTimeoutMs ?? 30_000),
      proc.exited.then((e) => {
        // let a final stdout line be parsed first
        return waitFor('participant result', () => messages.find((m) => m.type === 'connected' || m.type === 'error'), {
          timeoutMs: 200,
        }).catch(() => {
          throw new Error(`participant child exited (${JSON.stringify(e)}) before connecting:\n${proc.logs().slice(-3000)}`);
        });
      }),
    ]);
  } catch (err) {
    await proc.kill();
    throw err;
  }
  if (first.type === 'error') {
    await proc.kill();
    throw new Error(`participant failed to connect: ${String(first.message)}\n${proc.logs().slice(-3000)}`);
  }

  return {
    sid: String(first.sid),
    identity: String(first.identity),
    pid: proc.pid,
    connectMs: Number(first.connectMs),
    connectedAt: Date.now(),
    messages,
    logs: () => proc.logs(),
    async disconnect(timeoutMs = 15_000) {
      if (proc.hasExited()) return proc.exited;
      proc.signal('SIGCONT');
      proc.child.stdin?.write(JSON.stringify({ cmd: 'disconnect' }) + '\n');
      const t = setTimeout(() => proc.signal('SIGKILL'), timeoutMs);
      const e = await proc.exited;
      clearTimeout(t);
      return e;
    },
    kill: () => proc.kill(),
    stop: () => proc.signal('SIGSTOP'),
    cont: () => proc.signal('SIGCONT'),
    exited: proc.exited,
    waitForMessage,
  };
}
