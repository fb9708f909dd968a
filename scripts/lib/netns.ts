// A throw-away network namespace whose only interface is `lo`, for running LiveKit and its
// WebRTC participants so that NO packet can leave the machine, whatever the ICE agents try.
//
// Addresses used: 127.0.0.1 (lo, server + forwarders) and 127.0.0.2 (lw0, client candidates),
// both only inside the namespace.
//
// Why: LiveKit always hands clients STUN servers (Google's by default, pkg/service/roommanager.go
// iceServersForParticipant), and libwebrtc (inside @livekit/rtc-node) gathers host candidates on
// every interface (here eth0 192.0.2.2 and fd00::2), which the server then probes. Inside a
// namespace with only lo, every candidate is 127.0.0.1/::1 and any other destination fails
// locally with ENETUNREACH before a packet exists.
//
// How (no `ip netns add`, so nothing named can leak): a holder process
//   unshare --net -- sh -c 'ip link set lo up; <veth with 127.0.0.2, see HOLDER_SCRIPT>; exec cat'
// owns the namespace; it dies when its stdin pipe closes (i.e. with the process that made it: a
// test worker, or the local stack of `npm start`).
// Other processes join it with `nsenter -t <holder pid> -n -- cmd…` (nsenter execs, so the pid
// we hold is the real process's pid: SIGKILL/SIGSTOP reach it directly).
// The root namespace and the namespace are joined only by TCP-over-Unix-socket forwarders
// (netns-bridge.mjs), using the SAME port number on 127.0.0.1 on both sides, so a URL such as
// ws://127.0.0.1:PORT means the same service in both namespaces.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnManaged, which, nodeForChildren, LIB_DIR, waitFor, type ManagedProcess } from './proc.js';

/**
 * Runs in the fresh namespace. libwebrtc (the engine of @livekit/rtc-node) never gathers host
 * candidates on IFF_LOOPBACK interfaces, so with only `lo` the client offers NO candidate and ICE
 * stays in "checking" forever (verified: empty offer, no client trickle). The fix is a second,
 * non-loopback interface that still carries a loopback-range address: a veth pair that exists
 * only inside this namespace, with 127.0.0.2/32 on lw0. The client then offers
 * `127.0.0.2 typ host`, the server (pion, enable_loopback_candidate) offers 127.0.0.1, and the
 * pair connects. 127.0.0.2/32 is a local address, so its packets are delivered via lo; the veth
 * peer lw1 is a dead end inside the namespace. (`ip link add … type dummy` would be nicer but
 * this kernel has no dummy driver.)
 */
const HOLDER_SCRIPT = [
  'set -e',
  'ip link set lo up',
  'ip link add lw0 type veth peer name lw1',
  'ip addr add 127.0.0.2/32 dev lw0',
  'ip link set lw1 up',
  'ip link set lw0 up',
  'echo ready',
  'exec cat >/dev/null', // lives until the parent closes our stdin
].join('\n');

/** How to run a command inside a namespace someone else holds (another process's, by its holder pid). */
export interface NetnsEntry {
  holderPid: number;
  /** Prefix to run a command inside the namespace: [cmd, ...args] -> [...prefix, cmd, ...args]. */
  wrap(cmd: string, args: string[]): [string, string[]];
}

export interface Netns extends NetnsEntry {
  /** Make 127.0.0.1:port inside the namespace reachable as 127.0.0.1:port in the root namespace. */
  exposePort(port: number): Promise<void>;
  /** Make 127.0.0.1:port of the root namespace reachable as 127.0.0.1:port inside the namespace. */
  importPort(port: number): Promise<void>;
  destroy(): Promise<void>;
}

/** undefined when namespaces can be used here, else the reason they cannot. */
export function netnsUnavailableReason(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces need root (unshare/nsenter)';
  for (const t of ['unshare', 'nsenter', 'ip']) if (!which(t)) return `${t} not found (util-linux / iproute2)`;
  return undefined;
}

/** Runs commands in the namespace held by `holderPid` (`nsenter -t <pid> -n`; needs root). */
export function enterNetns(holderPid: number): NetnsEntry {
  const nsenter = which('nsenter');
  if (!nsenter) throw new Error('nsenter not found (util-linux)');
  return { holderPid, wrap: (cmd, args) => [nsenter, ['-t', String(holderPid), '-n', '--', cmd, ...args]] };
}

export async function createNetns(): Promise<Netns> {
  const why = netnsUnavailableReason();
  if (why) throw new Error(why);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-netns-'));
  const holder = spawnManaged(which('unshare')!, ['--net', '--', 'sh', '-c', HOLDER_SCRIPT]);
  let ready = false;
  holder.child.stdout?.on('data', (d: Buffer) => {
    if (d.toString().includes('ready')) ready = true;
  });
  await waitFor('netns holder', () => ready, {
    timeoutMs: 10_000,
    abort: () => (holder.hasExited() ? `unshare failed: ${holder.logs()}` : undefined),
  });
  const { wrap } = enterNetns(holder.pid);
  const bridges: ManagedProcess[] = [];
  let n = 0;

  async function startBridge(inside: boolean, routes: unknown[]): Promise<void> {
    const node = nodeForChildren();
    const script = path.join(LIB_DIR, 'netns-bridge.mjs');
    const [cmd, args] = inside ? wrap(node, [script, JSON.stringify({ routes })]) : [node, [script, JSON.stringify({ routes })]];
    const p = spawnManaged(cmd, args);
    bridges.push(p);
    let ok = false;
    p.child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) ok = true;
    });
    await waitFor(`netns bridge (${inside ? 'inside' : 'root'})`, () => ok, {
      timeoutMs: 10_000,
      abort: () => (p.hasExited() ? `bridge exited: ${p.logs()}` : undefined),
    });
  }

  return {
    holderPid: holder.pid,
    wrap,
    async exposePort(port) {
      const sock = path.join(dir, `in-${port}-${n++}.sock`);
      await startBridge(true, [{ listen: { unix: sock }, connect: { tcp: port } }]);
      await startBridge(false, [{ listen: { tcp: port }, connect: { unix: sock } }]);
    },
    async importPort(port) {
      const sock = path.join(dir, `out-${port}-${n++}.sock`);
      await startBridge(false, [{ listen: { unix: sock }, connect: { tcp: port } }]);
      await startBridge(true, [{ listen: { tcp: port }, connect: { unix: sock } }]);
    },
    async destroy() {
      await Promise.all(bridges.map((b) => b.kill()));
      holder.child.stdin?.end();
      await holder.stop(2000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
