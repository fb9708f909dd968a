// Black-box harness: starts `lastwill agent` (dist/, built once by vitest's globalSetup) as a
// child process with lk-jwt-service-style environment variables against the loopback fakes, and
// speaks to it only over HTTP. On a failed test the child's log is printed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { type ManagedProcess, REPO_ROOT, spawnManaged, waitFor } from '../../e2e/support/proc.js';
import { type FakeHomeserver, startFakeHomeserver } from '../../fakes/fake-homeserver.js';
import { type FakeSfu, startFakeSfu } from '../../fakes/fake-sfu.js';

export const SERVER_NAME = 'hs.test';
export const CREDS = { key: 'lastwill-test-key', secret: 'lastwill-test-secret-0123456789abcdef' };

export interface HttpResult {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

export async function http(url: string, init: RequestInit = {}): Promise<HttpResult> {
  const res = await fetch(url, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export interface AgentChild {
  readonly url: string;
  readonly proc: ManagedProcess;
  logs(): string;
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<HttpResult>;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
}

/** Starts `node dist/cli.js agent` and waits for its "agent listening" log line. */
export async function spawnAgent(env: Record<string, string>): Promise<AgentChild> {
  let url: string | undefined;
  const proc = spawnManaged(process.execPath, [join(REPO_ROOT, 'dist/cli.js'), 'agent'], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    onLine(line) {
      if (url !== undefined || !line.includes('agent listening')) return;
      try {
        url = (JSON.parse(line) as { url?: string }).url;
      } catch {
        /* not JSON */
      }
    },
  });
  try {
    await waitFor('the agent to listen', () => url, {
      timeoutMs: 20_000,
      intervalMs: 25,
      abort: () => (proc.hasExited() ? 'the agent exited during startup' : undefined),
    });
  } catch (err) {
    await proc.kill();
    throw new Error(`${(err as Error).message}\n--- agent log ---\n${proc.logs()}`);
  }
  const base = url!;
  return {
    url: base,
    proc,
    logs: () => proc.logs(),
    post: (path, body, headers = {}) =>
      http(`${base}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }),
    async metric(name, labels = {}) {
      const text = (await http(`${base}/metrics`)).text;
      let total = 0;
      for (const line of text.split('\n')) {
        const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
        if (!m || m[1] !== name) continue;
        const lbl = m[2] ?? '';
        if (Object.entries(labels).every(([k, v]) => lbl.includes(`${k}="${v}"`))) total += Number(m[3]);
      }
      return total;
    },
  };
}

export interface World {
  hs: FakeHomeserver;
  sfu: FakeSfu;
  dataDir: string;
  env: Record<string, string>;
  agent: AgentChild;
  /** Starts a new agent process on the same data dir (after a kill or stop). */
  restartAgent(): Promise<AgentChild>;
  close(): Promise<void>;
}

export async function startWorld(extraEnv: Record<string, string> = {}): Promise<World> {
  const hs = await startFakeHomeserver();
  const sfu = await startFakeSfu(CREDS);
  const dataDir = mkdtempSync(join(tmpdir(), 'lastwill-agent-bb-'));
  const env: Record<string, string> = {
    LIVEKIT_URL: sfu.wsUrl,
    LIVEKIT_KEY: CREDS.key,
    LIVEKIT_SECRET: CREDS.secret,
    LIVEKIT_FULL_ACCESS_HOMESERVERS: SERVER_NAME,
    LIVEKIT_CS_API_URL_OVERRIDES: `${SERVER_NAME}=${hs.url}`,
    LIVEKIT_JWT_BIND: '127.0.0.1:0',
    LIVEKIT_LOG_LEVEL: 'debug',
    LASTWILL_AGENT_DATA_DIR: dataDir,
    LASTWILL_AGENT_SQLITE_SYNCHRONOUS: 'normal',
    // Short retries keep the scenarios fast; the engine's defaults are tested in its own suite.
    LASTWILL_AGENT_ENGINE_BACKOFF_INITIAL_MS: '200',
    LASTWILL_AGENT_ENGINE_BACKOFF_MAX_MS: '1000',
    LASTWILL_AGENT_ENGINE_ABORT_GRACE_MS: '1000',
    ...extraEnv,
  };
  const world: World = {
    hs,
    sfu,
    dataDir,
    env,
    agent: await spawnAgent(env),
    async restartAgent() {
      world.agent = await spawnAgent(env);
      return world.agent;
    },
    async close() {
      if (!world.agent.proc.hasExited()) await world.agent.proc.kill();
      await hs.close();
      await sfu.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return world;
}

let userCounter = 0;

/** A fresh user with an OpenID token known to the fake homeserver. */
export function newUser(hs: FakeHomeserver, name = 'user'): { userId: string; token: string } {
  const n = ++userCounter;
  const userId = `@${name}${n}:${SERVER_NAME}`;
  const token = `openid-${n}-${Math.random().toString(36).slice(2)}`;
  hs.addOpenIdToken(token, userId);
  return { userId, token };
}

export function openIdToken(token: string, serverName = SERVER_NAME) {
  return { access_token: token, token_type: 'Bearer', matrix_server_name: serverName, expires_in: 3600 };
}

/** A `/get_token` / `/delegate_delayed_leave` body for a user. */
export function tokenBody(
  user: { userId: string; token: string },
  extra: Record<string, unknown> = {},
  ids: { roomId?: string; slotId?: string; device?: string; member?: string } = {},
): Record<string, unknown> {
  return {
    room_id: ids.roomId ?? '!room:hs.test',
    slot_id: ids.slotId ?? 'm.call#ROOM',
    openid_token: openIdToken(user.token),
    member: { id: ids.member ?? 'member1', claimed_user_id: user.userId, claimed_device_id: ids.device ?? 'DEVICE' },
    ...extra,
  };
}
