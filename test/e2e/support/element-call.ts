// Element Call itself, in headless Chromium, against `lastwill all` and a real LiveKit server.
//
//   browser (Debian's chromium, driven by playwright-core, inside LiveKit's network namespace)
//     host page (/host/index.html: matrix-js-sdk + matrix-widget-api, test/e2e/element-call/host.ts)
//       └─ iframe: Element Call (/element-call/index.html, @element-hq/element-call-embedded, pinned)
//            ├─ widget API (postMessage) → host → homeserver: state, delayed events, OpenID, /rtc/transports
//            ├─ POST <agent>/sfu/get with its delay_id → token; the agent keeps the hangup from then on
//            └─ WebRTC → LiveKit
//   `lastwill all` (homeserver + agent, one process) ← LiveKit webhooks
//
//   const stack = await startElementCallStack();
//   const browser = await stack.launchBrowser('shared');
//   const alice = await stack.openCall(browser, user, roomId, 'Alice');
//   await alice.waitSees(bob); await alice.screenshot(file); await alice.closeTab();
//
// Everything the browser talks to is on 127.0.0.1 inside the namespace: LiveKit natively, the web
// server, homeserver and agent through the namespace's port forwarders (netns.ts). The browser
// cannot reach anything else (the namespace has no route out), and is told not to try (flags below).
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { build } from 'esbuild';
import { type Browser, type BrowserContext, chromium, type Frame, type Page } from 'playwright-core';

import { createCallRoom, joinRoom, type RegisteredUser } from '../../../scripts/lib/matrix-http.js';
import type { Netns } from '../../../scripts/lib/netns.js';
import { Timeline } from '../../../scripts/lib/timeline.js';
import { createLastwillAll, markWebhooks, type AgentProcess, type MatrixServer } from './flow.js';
import { type Provisioned, provisionOnce } from '../../support/provision.js';
import type { HostState } from '../element-call/host.js';
import { startLiveKit, type LiveKitServer } from './livekit.js';
import { cleanupStack, freeTcpPort, REPO_ROOT, waitFor, which } from './proc.js';
import { startWebhookSink, type WebhookSink } from './webhook-sink.js';

const EC_PACKAGE = path.join(REPO_ROOT, 'node_modules', '@element-hq', 'element-call-embedded');
const EC_DIST = path.join(EC_PACKAGE, 'dist');
/** The Element Call version that runs (package.json pins it exactly). */
export const ELEMENT_CALL_VERSION = (JSON.parse(readFileSync(path.join(EC_PACKAGE, 'package.json'), 'utf8')) as { version: string })
  .version;
const HOST_ENTRY = path.join(REPO_ROOT, 'test', 'e2e', 'element-call', 'host.ts');

/**
 * Chromium switches added to Playwright's own defaults. Playwright already switches off background
 * networking, component updates, sync, the first-run UI, crash reporting, and timer throttling and
 * backgrounding of pages that are not in front (two pages share this browser), and adds --headless
 * and, as root, --no-sandbox. The camera/microphone permission is granted per context
 * (grantPermissions), as a user allows it once, so no --use-fake-ui-for-media-stream. ICE needs no
 * switch (no --allow-loopback-in-peer-connection): in LiveKit's namespace the browser gathers its
 * host candidate on lw0 (127.0.0.2, not a loopback interface), as the rtc-node participants do.
 * Each switch below was checked by running without it:
 */
export const CHROMIUM_FLAGS = [
  // A camera (a moving test pattern) and a microphone (a beep) that exist without hardware. Without
  // it getUserMedia finds no device and Element Call joins with camera and microphone off.
  '--use-fake-device-for-media-stream',
  // No host name resolves except localhost; IP literals (every URL of the tests) are untouched.
  // Even with Playwright's switches Chromium still asks for accounts.google.com (ListAccounts) and
  // update.googleapis.com (seen in a --log-net-log); this ends them inside the browser, before any
  // DNS query (the namespace would drop them anyway: it has no route out).
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost',
];

/** Debian's chromium, installed by scripts/provision-chromium.sh when missing (a failure under CI=true). */
export function ensureChromium(): Promise<Provisioned> {
  return provisionOnce('chromium', 'Chromium');
}

// ---------------------------------------------------------------------------------------------
// The web server: Element Call's files, its config.json, and the host page

/** Element Call's config.json: the package's own, plus what these tests change and why. */
export function elementCallConfig(): Record<string, unknown> {
  const shipped = JSON.parse(readFileSync(path.join(EC_DIST, 'config.json'), 'utf8')) as Record<string, unknown>;
  return {
    ...shipped,
    // No livekit.livekit_service_url: Element Call must find the agent where the homeserver
    // announces it (/rtc/transports, through the host), as in production.
    // Low video quality: two calls on a two-core machine.
    media_quality: {
      video_codec: 'vp8',
      video: { max_resolution: 240, max_bitrate: 150_000, max_framerate: 10 },
      screen_share: { max_resolution: 480, max_bitrate: 300_000, max_framerate: 5 },
    },
  };
}

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.webm': 'audio/webm',
  '.tflite': 'application/octet-stream',
  '.map': 'application/json',
};

const HOST_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lastwill widget host</title>
<style>
  html, body { margin: 0; height: 100%; background: #101317; color: #c8ccd2; font: 12px system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  #status { padding: 4px 8px; border-bottom: 1px solid #2b2f36; white-space: nowrap; overflow: hidden; }
  #call { flex: 1; display: flex; } #call iframe { flex: 1; border: 0; }
</style></head>
<body><div id="status">widget host starting</div><div id="call"></div>
<script type="module" src="./host.js"></script></body></html>
`;

/** The host page bundled for the browser: file name → contents (esbuild, in memory). */
async function bundleHost(): Promise<Map<string, Uint8Array>> {
  const out = await build({
    entryPoints: { host: HOST_ENTRY },
    bundle: true,
    format: 'esm',
    splitting: true,
    platform: 'browser',
    target: 'es2022',
    outdir: '/host',
    write: false,
    logLevel: 'silent',
    // matrix-js-sdk imports its Rust crypto lazily; the host never starts crypto (unencrypted rooms).
    external: ['@matrix-org/matrix-sdk-crypto-wasm'],
    define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  });
  return new Map(out.outputFiles.map((f) => [path.basename(f.path), f.contents]));
}

export interface WebServer {
  /** http://127.0.0.1:port */
  url: string;
  port: number;
  /** Every path requested, in order (Element Call and the host fetch nothing from anywhere else). */
  requests: string[];
  close(): Promise<void>;
}

/** One loopback origin serving /element-call/* (the package's dist, our config.json) and /host/*. */
export async function startWebServer(): Promise<WebServer> {
  const host = await bundleHost();
  const config = JSON.stringify(elementCallConfig());
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push(url.pathname);
    const send = (status: number, type: string, body: string | Uint8Array) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
    };
    if (url.pathname === '/host/' || url.pathname === '/host/index.html') return send(200, MIME['.html']!, HOST_HTML);
    if (url.pathname.startsWith('/host/')) {
      const file = host.get(url.pathname.slice('/host/'.length));
      return file ? send(200, MIME['.js']!, file) : send(404, 'text/plain', 'not found');
    }
    if (url.pathname === '/element-call/config.json') return send(200, MIME['.json']!, config);
    if (url.pathname.startsWith('/element-call/')) {
      const rel = decodeURIComponent(url.pathname.slice('/element-call/'.length)) || 'index.html';
      const file = path.resolve(EC_DIST, rel);
      if (!file.startsWith(EC_DIST + path.sep) || !existsSync(file)) return send(404, 'text/plain', 'not found');
      return send(200, MIME[path.extname(file)] ?? 'application/octet-stream', readFileSync(file));
    }
    send(404, 'text/plain', 'not found');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// The browser

export interface ChromiumProcess {
  browser: Browser;
  /** The browser process (the wrapper execs nsenter, which execs chromium: same pid). */
  pid: number;
  /** SIGKILL of the browser process: no unload, no goodbye to LiveKit. */
  kill(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Chromium inside the namespace: Playwright starts a wrapper script as the "browser executable";
 * it records its pid and execs `nsenter -t <holder> -n -- chromium "$@"` (pipes 3 and 4, Playwright's
 * connection, pass through both execs).
 */
export async function launchChromium(netns: Netns, o: { dir: string; name: string }): Promise<ChromiumProcess> {
  const bin = await ensureChromium();
  if (!bin.path) throw new Error(bin.skip);
  const pidFile = path.join(o.dir, `${o.name}.pid`);
  const wrapper = path.join(o.dir, `chromium-${o.name}.sh`);
  writeFileSync(wrapper, `#!/bin/sh\necho $$ > '${pidFile}'\nexec '${which('nsenter')}' -t ${netns.holderPid} -n -- '${bin.path}' "$@"\n`);
  chmodSync(wrapper, 0o755);
  const browser = await chromium.launch({ executablePath: wrapper, headless: true, args: CHROMIUM_FLAGS, timeout: 60_000 });
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return {
    browser,
    pid,
    async kill() {
      const gone = new Promise<void>((resolve) => browser.once('disconnected', () => resolve()));
      process.kill(pid, 'SIGKILL');
      await gone;
    },
    async close() {
      if (browser.isConnected()) await browser.close().catch(() => undefined);
    },
  };
}

/** What the host page publishes, its memberships read out. */
export type HostSnapshot = Omit<HostState, 'memberships'> & { memberships: string[] };

/** One tile of Element Call's call view, as the page renders it. */
export interface Tile {
  name: string;
  /** data-video-enabled of the tile. */
  videoEnabled: boolean;
  videoWidth: number;
  videoHeight: number;
  /** The <video>'s currentTime (s): it advances while frames arrive. */
  currentTime: number;
}

export interface CallPage {
  name: string;
  user: RegisteredUser;
  context: BrowserContext;
  page: Page;
  /** The host's state: actions logged, memberships it sees, delay ids. */
  host(): Promise<HostSnapshot>;
  /** Element Call's tiles (empty while it is not in the call view). */
  tiles(): Promise<Tile[]>;
  /** Waits until the host sees `other`'s call membership and Element Call plays `other`'s video. */
  waitSees(other: CallPage, timeoutMs?: number): Promise<void>;
  /** Waits until this page's host no longer lists `other`'s membership; resolves with Date.now(). */
  waitMembershipGone(other: CallPage, timeoutMs: number): Promise<number>;
  sees(other: CallPage): Promise<boolean>;
  screenshot(file: string): Promise<void>;
  /** Closes the tab as a user does (beforeunload and pagehide run). */
  closeTab(): Promise<void>;
  /** Reloads the host page (and with it Element Call) and waits for the host to sync again. */
  reload(): Promise<void>;
  /** The last console lines of the page and its frames (for failure dumps). */
  consoleTail(): string;
  close(): Promise<void>;
}

const memberKey = (u: RegisteredUser) => `${u.userId}|${u.deviceId}`;

/** Opens the host page for `user` in a fresh browser context (own storage, as another person's browser). */
export async function openCall(
  browser: Browser,
  o: { webUrl: string; hs: MatrixServer; user: RegisteredUser; roomId: string; name: string },
): Promise<CallPage> {
  const context = await browser.newContext({ viewport: { width: 800, height: 640 }, deviceScaleFactor: 1 });
  await context.grantPermissions(['camera', 'microphone'], { origin: o.webUrl });
  const page = await context.newPage();
  const consoleLines: string[] = [];
  page.on('console', (m) => {
    consoleLines.push(`${m.type()}: ${m.text().slice(0, 400)}`);
    if (consoleLines.length > 600) consoleLines.splice(0, 200);
  });
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const fragment = new URLSearchParams({
    baseUrl: o.hs.baseUrl,
    accessToken: o.user.accessToken,
    userId: o.user.userId,
    deviceId: o.user.deviceId,
    roomId: o.roomId,
    ecUrl: `${o.webUrl}/element-call/index.html`,
  });
  const hostUrl = `${o.webUrl}/host/index.html#${fragment.toString()}`;
  const waitHost = () =>
    waitFor(`${o.name}'s widget host to start`, async () => {
      const phase = await page.evaluate(() => (window as unknown as { lastwillHost?: HostState }).lastwillHost?.phase);
      if (phase?.startsWith('failed')) throw new Error(phase);
      return phase === 'syncing' || phase === 'widget-ready';
    }, { timeoutMs: 30_000, intervalMs: 200 });
  await page.goto(hostUrl);
  await waitHost();

  const ecFrame = (): Frame | undefined => page.frames().find((f) => f.url().includes('/element-call/'));
  const call: CallPage = {
    name: o.name,
    user: o.user,
    context,
    page,
    async host() {
      return page.evaluate(() => {
        const h = (window as unknown as { lastwillHost: HostState }).lastwillHost;
        const { memberships, ...rest } = h;
        return JSON.parse(JSON.stringify({ ...rest, memberships: memberships() })) as HostSnapshot;
      });
    },
    async tiles() {
      const f = ecFrame();
      if (!f) return [];
      return f.evaluate(() =>
        Array.from(document.querySelectorAll<HTMLElement>('[data-testid="videoTile"]'), (t) => {
          const v = t.querySelector('video');
          return {
            name: t.querySelector('[data-testid="name_tag"]')?.textContent ?? '',
            videoEnabled: t.dataset.videoEnabled === 'true',
            videoWidth: v?.videoWidth ?? 0,
            videoHeight: v?.videoHeight ?? 0,
            currentTime: v?.currentTime ?? 0,
          };
        }),
      );
    },
    async sees(other) {
      return (await call.host()).memberships.includes(memberKey(other.user));
    },
    async waitSees(other, timeoutMs = 60_000) {
      await waitFor(`${o.name} to see ${other.name}'s call membership`, () => call.sees(other), { timeoutMs, intervalMs: 200 });
      // A media track: the other's tile has a video that has size and whose playback advances.
      const playing = async () => {
        const before = (await call.tiles()).find((t) => t.name.startsWith(other.name) && t.videoWidth > 0);
        if (!before) return false;
        await new Promise((r) => setTimeout(r, 300));
        const after = (await call.tiles()).find((t) => t.name.startsWith(other.name));
        return !!after && after.currentTime > before.currentTime;
      };
      await waitFor(`${o.name} to play ${other.name}'s video`, playing, { timeoutMs, intervalMs: 200 });
    },
    waitMembershipGone(other, timeoutMs) {
      return waitFor(`${o.name} to see ${other.name}'s membership end`, async () => (!(await call.sees(other)) ? Date.now() : 0), {
        timeoutMs,
        intervalMs: 50,
      });
    },
    async screenshot(file) {
      await page.screenshot({ path: file, type: 'png' });
    },
    async closeTab() {
      await page.close({ runBeforeUnload: true });
      await waitFor(`${o.name}'s tab to close`, () => page.isClosed(), { timeoutMs: 10_000 });
    },
    async reload() {
      await page.reload();
      await waitHost();
    },
    consoleTail: () => consoleLines.slice(-150).join('\n'),
    async close() {
      // As a tab closing (Element Call's LiveKit client leaves on pagehide), so LiveKit does not
      // report this participant's timeout into a later test.
      if (!page.isClosed()) await page.close({ runBeforeUnload: true }).catch(() => undefined);
      await context.close().catch(() => undefined);
    },
  };
  return call;
}

// ---------------------------------------------------------------------------------------------
// The stack

export interface ElementCallStack {
  lk: LiveKitServer;
  /** LiveKit's webhooks as a second consumer sees them (when LiveKit noticed a participant leave). */
  sink: WebhookSink;
  hs: MatrixServer;
  /** `lastwill all` as a process (start/stop/kill/metrics). */
  agent: AgentProcess;
  web: WebServer;
  timeline: Timeline;
  /** A browser inside LiveKit's namespace; closed with the stack. */
  launchBrowser(name: string): Promise<ChromiumProcess>;
  /** Registers a user with a display name (the name on Element Call's tile). */
  registerUser(name: string): Promise<RegisteredUser>;
  /** Creates a public room as `creator`; every other user joins it. */
  createRoom(creator: RegisteredUser, others: RegisteredUser[], name: string): Promise<string>;
  openCall(browser: Browser, user: RegisteredUser, roomId: string, name: string): Promise<CallPage>;
  dumpLogs(): string;
  close(): Promise<void>;
}

export async function startElementCallStack(opts: { timeline?: Timeline } = {}): Promise<ElementCallStack> {
  const timeline = opts.timeline ?? new Timeline();
  const cleanups = cleanupStack('[element-call]');
  const close = cleanups.close;
  try {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-e2e-ec-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const [hsPort, agentPort] = [await freeTcpPort(), await freeTcpPort()];
    const agentUrl = `http://127.0.0.1:${agentPort}`;

    const sink = await startWebhookSink();
    cleanups.push(() => sink.close());
    const lk = await startLiveKit({ webhookUrls: [`${agentUrl}/sfu_webhook`, sink.url] });
    cleanups.push(() => lk.stop());
    sink.setCredentials(lk.apiKey, lk.apiSecret);
    cleanups.push(markWebhooks(sink, timeline));
    if (!lk.netns) throw new Error('Element Call needs LiveKit in a network namespace (ICE on loopback)');
    const netns = lk.netns;
    timeline.mark('livekit', `LiveKit up at ${lk.url} in a private network namespace`);

    const { hs, agent } = createLastwillAll({ hsPort, agentPort, livekit: lk });
    cleanups.push(() => hs.stop());
    await agent.start();
    timeline.mark('homeserver', `lastwill all up: homeserver ${hs.baseUrl}, agent ${agent.url}`, [hs.runCommand]);

    const web = await startWebServer();
    cleanups.push(() => web.close());
    // The browser runs inside the namespace: make the homeserver and the web server reachable
    // there at the same addresses (the agent's port is already forwarded for LiveKit's webhooks).
    await netns.importPort(hsPort);
    await netns.importPort(web.port);
    timeline.mark('test', `Element Call ${ELEMENT_CALL_VERSION} served at ${web.url}/element-call/, widget host at ${web.url}/host/`);

    const browsers: ChromiumProcess[] = [];
    cleanups.push(async () => {
      for (const b of browsers) await b.close();
    });
    const stack: ElementCallStack = {
      lk,
      sink,
      hs,
      agent,
      web,
      timeline,
      async launchBrowser(name) {
        const b = await launchChromium(netns, { dir, name });
        browsers.push(b);
        timeline.mark('test', `Chromium ${b.browser.version()} started (pid ${b.pid}) inside LiveKit's namespace`);
        return b;
      },
      async registerUser(name) {
        const user = await hs.registerUser(`${name.toLowerCase()}-${Math.random().toString(36).slice(2, 8)}`);
        const r = await fetch(`${hs.baseUrl}/_matrix/client/v3/profile/${encodeURIComponent(user.userId)}/displayname`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${user.accessToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ displayname: name }),
        });
        if (!r.ok) throw new Error(`set displayname: ${r.status} ${await r.text()}`);
        return user;
      },
      async createRoom(creator, others, name) {
        // Unencrypted: Element Call encrypts media only in encrypted rooms, and the host has no crypto.
        // Call member events at power level 0 (createCallRoom), as Element Web creates rooms with
        // calls: otherwise only the creator may publish a membership and the others' joins fail 403.
        const roomId = await createCallRoom(hs, creator, name);
        for (const u of others) await joinRoom(hs, u, roomId);
        return roomId;
      },
      openCall: (browser, user, roomId, name) => openCall(browser, { webUrl: web.url, hs, user, roomId, name }),
      dumpLogs: () =>
        [
          `--- lastwill all log (tail) ---\n${agent.logs().slice(-10000)}`,
          `--- livekit log (tail) ---\n${lk.logs().slice(-4000)}`,
        ].join('\n'),
      close,
    };
    return stack;
  } catch (err) {
    await close();
    throw err;
  }
}
