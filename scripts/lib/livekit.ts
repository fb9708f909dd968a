// A real LiveKit server (v1.13.5, built from source by scripts/provision-livekit.sh), for the local
// stack (`npm start`) and the e2e tests (test/e2e/support/livekit.ts adds their skip rule).
//
//   const bin = await provisionLiveKit();                // {path} or {error}; progress on stderr
//   const lk = await startLiveKit({ bin: bin.path, apiKey, apiSecret, webhookUrls: ['http://127.0.0.1:PORT/hook'] });
//   … lk.url (ws://127.0.0.1:port), lk.httpUrl …
//   await lk.stop();                                     // or lk.kill(); lk.logs() for failure dumps
//
// Network isolation (see netns.ts): with `netns: true` (root + unshare/nsenter) the server runs
// in a private network namespace with only `lo`; its HTTP/WebSocket/Twirp port is forwarded to the
// same port on 127.0.0.1 of the root namespace, and each webhook URL's port is forwarded the other
// way, so URLs are identical in both namespaces. Participants started with startParticipant() join
// the namespace automatically (looked up by URL). ICE/UDP and ICE/TCP exist only inside it.
// Without it the server runs in the root namespace: fine for Twirp/webhook plumbing, but
// @livekit/rtc-node participants on this machine cannot connect media there (libwebrtc gathers no
// candidate on a loopback interface).
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  freeTcpPort,
  freePorts,
  isLoopbackHost,
  PrerequisiteMissing,
  type ProvisionResult,
  runProvisionScript,
  spawnManaged,
  waitFor,
  type ExitInfo,
} from './proc.js';
import { createNetns, netnsUnavailableReason, type Netns } from './netns.js';

export const LIVEKIT_VERSION = 'v1.13.5';

/**
 * Path of the LiveKit server binary, provisioning it with scripts/provision-livekit.sh (go install
 * into .cache/, ~2 min cold) when missing; the script's progress goes to this process's stderr.
 * LIVEKIT_SERVER_BIN overrides the binary (no version check).
 */
export async function provisionLiveKit(signal?: AbortSignal): Promise<ProvisionResult> {
  const override = process.env.LIVEKIT_SERVER_BIN;
  if (override) return existsSync(override) ? { path: override } : { error: `LIVEKIT_SERVER_BIN=${override} does not exist` };
  return runProvisionScript('livekit', { env: { LIVEKIT_VERSION }, ...(signal ? { signal } : {}) });
}

export interface StartLiveKitOptions {
  /** The server binary (provisionLiveKit()). */
  bin: string;
  apiKey: string;
  /** Shorter than 32 characters makes LiveKit log an error, unless `development`. */
  apiSecret: string;
  webhookUrls?: string[];
  /** The HTTP/WebSocket/Twirp port on 127.0.0.1; default: a free one. */
  port?: number;
  /** Run inside a private lo-only network namespace (needs root). Default true. */
  netns?: boolean;
  /** LiveKit's development mode (`--dev`): short secrets accepted silently. */
  development?: boolean;
  /** debug | info | warn. Default info. */
  logLevel?: string;
  /** Extra top-level config keys, replacing generated sections wholesale. */
  extraConfig?: Record<string, unknown>;
  /** Per-key overrides of the generated `rtc` section; a null value removes the key. */
  rtcOverrides?: Record<string, unknown>;
  readyTimeoutMs?: number;
  /** Keep the temporary directory (config and log) after stopping. */
  keepDir?: boolean;
}

export interface LiveKitServer {
  url: string;
  httpUrl: string;
  apiKey: string;
  apiSecret: string;
  port: number;
  /** The server's pid (inside the namespace, if any, but signalled as usual). */
  pid: number;
  /** null when running in the root namespace. */
  netns: Netns | null;
  configFile: string;
  logFile: string;
  logs(): string;
  /** Resolves when the server process ends, for whatever reason. */
  exited: Promise<ExitInfo>;
  /** Graceful stop (SIGTERM, SIGKILL after 5 s) and cleanup of namespace, forwarders and temp dir. */
  stop(): Promise<void>;
  /** SIGKILL and the same cleanup. */
  kill(): Promise<void>;
}

/** URL -> namespace, so participants started with only a URL join the right namespace. */
const byUrl = new Map<string, Netns>();
export function netnsForUrl(url: string): Netns | undefined {
  try {
    const u = new URL(url);
    return byUrl.get(`${u.hostname}:${u.port}`);
  } catch {
    return undefined;
  }
}

/**
 * The rtc section. Every setting below was checked against v1.13.5 in this repo's e2e runs
 * (mediatransportutil pkg/rtcconfig, livekit pkg/service/roommanager.go):
 */
function rtcConfig(tcpPort: number, udpPort: number, stunPort: number) {
  return {
    // Single-port ICE/UDP mux and ICE/TCP on picked ports (default 7882/7881 would collide
    // between parallel servers in the root namespace).
    udp_port: udpPort,
    tcp_port: tcpPort,
    // Advertise 127.0.0.1. Without node_ip the server looks for the first non-loopback
    // interface address (and inside an lo-only namespace finds none).
    node_ip: '127.0.0.1',
    // Adds loopback to the UDP mux and to the host candidates; without it pion drops
    // 127.0.0.1 candidates and ICE never connects on loopback.
    enable_loopback_candidate: true,
    // Never ask STUN servers for an external address.
    use_external_ip: false,
    // LiveKit ALWAYS sends clients ICE servers; with none configured it sends
    // stun:stun.l.google.com:19302 (rtcconfig.DefaultStunServers). Point them at a dead
    // loopback UDP port instead, so clients neither resolve nor contact anything outside.
    stun_servers: [`127.0.0.1:${stunPort}`],
    // Only gather server candidates on lo / 127.0.0.1.
    interfaces: { includes: ['lo'] },
    ips: { includes: ['127.0.0.1/32'] },
  };
}

export async function startLiveKit(opts: StartLiveKitOptions): Promise<LiveKitServer> {
  const { apiKey, apiSecret } = opts;
  const webhookUrls = opts.webhookUrls ?? [];
  for (const u of webhookUrls) {
    const { hostname, protocol } = new URL(u);
    if (!isLoopbackHost(hostname) || protocol !== 'http:') throw new Error(`webhook URL must be http on loopback: ${u}`);
  }

  const useNetns = opts.netns ?? true;
  if (useNetns && netnsUnavailableReason()) {
    throw new PrerequisiteMissing(`netns requested but unavailable: ${netnsUnavailableReason()}`);
  }

  const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-livekit-'));
  const logFile = path.join(dir, 'livekit.log');
  const configFile = path.join(dir, 'livekit.yaml');
  const port = opts.port ?? (await freeTcpPort());
  const tcpPort = await freeTcpPort();
  const [udpPort, stunPort] = (await freePorts(2, 'udp')) as [number, number];

  const config = {
    port,
    bind_addresses: ['127.0.0.1'],
    keys: { [apiKey]: apiSecret },
    ...(opts.development ? { development: true } : {}),
    log_level: opts.logLevel ?? 'info',
    rtc: Object.fromEntries(
      Object.entries({ ...rtcConfig(tcpPort, udpPort, stunPort), ...opts.rtcOverrides }).filter(([, v]) => v !== null),
    ),
    ...(webhookUrls.length ? { webhook: { api_key: apiKey, urls: webhookUrls } } : {}),
    ...opts.extraConfig,
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2)); // JSON is YAML

  let netns: Netns | null = null;
  const cleanups: Array<() => Promise<void> | void> = [];
  const cleanup = async () => {
    while (cleanups.length) await cleanups.pop()!();
  };
  try {
    if (useNetns) {
      netns = await createNetns();
      const ns = netns;
      cleanups.push(() => ns.destroy());
      await ns.exposePort(port);
      for (const p of new Set(webhookUrls.map((u) => Number(new URL(u).port || 80)))) await ns.importPort(p);
    }
    const [cmd, args] = netns ? netns.wrap(opts.bin, ['--config', configFile]) : [opts.bin, ['--config', configFile]];
    const proc = spawnManaged(cmd, args, { cwd: dir, logFile, stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(async () => {
      await proc.kill();
    });

    const httpUrl = `http://127.0.0.1:${port}`;
    const url = `ws://127.0.0.1:${port}`;
    await waitFor(
      'LiveKit HTTP readiness',
      async () => {
        const r = await fetch(httpUrl + '/', { signal: AbortSignal.timeout(1000) });
        return r.ok;
      },
      {
        timeoutMs: opts.readyTimeoutMs ?? 30_000,
        intervalMs: 100,
        abort: () => (proc.hasExited() ? `livekit-server exited early:\n${proc.logs().slice(-4000)}` : undefined),
      },
    );
    if (netns) byUrl.set(`127.0.0.1:${port}`, netns);

    let stopped = false;
    const finish = async (how: 'stop' | 'kill') => {
      if (stopped) return;
      stopped = true;
      byUrl.delete(`127.0.0.1:${port}`);
      if (how === 'stop') {
        // 1st SIGTERM waits for participants to leave; a 2nd forces exit.
        proc.signal('SIGTERM');
        const t1 = setTimeout(() => proc.signal('SIGTERM'), 1000);
        const t2 = setTimeout(() => proc.signal('SIGKILL'), 5000);
        await proc.exited;
        clearTimeout(t1);
        clearTimeout(t2);
      }
      await cleanup();
      if (!opts.keepDir) rmSync(dir, { recursive: true, force: true });
    };
    return {
      url,
      httpUrl,
      apiKey,
      apiSecret,
      port,
      pid: proc.pid,
      netns,
      configFile,
      logFile,
      logs: () => proc.logs(),
      exited: proc.exited,
      stop: () => finish('stop'),
      kill: () => finish('kill'),
    };
  } catch (err) {
    await cleanup();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
