// The black-box harness. It starts the service under test as a child process with lk-jwt-service's
// environment variables, in the reference deployment's topology (lk-jwt-service's own integration
// tests are laid out the same way):
// - the homeserver fake serves federation (OpenID userinfo) over TLS on the address that is its
//   server name, and the client-server API on a separate plain-HTTP listener that only
//   LIVEKIT_CS_API_URL_OVERRIDES names;
// - the SFU fake speaks Twirp RoomService in JSON and protobuf and signs webhooks for real.
// It speaks to the service only over HTTP.
//
// The service is `lastwill agent` (dist/, built once by vitest's globalSetup) unless
// LASTWILL_BLACKBOX_SERVICE names another program, such as an lk-jwt-service binary built from
// its source: `LASTWILL_BLACKBOX_SERVICE=/tmp/lk-jwt-service npm run test:blackbox`. Tests of a
// behaviour where lastwill differs from lk-jwt-service on purpose are declared with `differs(id)`
// and run against lastwill only; each id is a row of the differences table in docs/migration.md
// (differences.test.ts keeps the two in step). On a failed test the child's log is printed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { it } from 'vitest';

import { freeTcpPort, type ManagedProcess, REPO_ROOT, spawnManaged, waitFor } from '../../e2e/support/proc.js';
import { type FakeHomeserver, startFakeHomeserver } from '../../fakes/fake-homeserver.js';
import { type FakeSfu, startFakeSfu } from '../../fakes/fake-sfu.js';
import { startRedis, type RedisServer } from '../../support/redis.js';

export const CREDS = { key: 'lastwill-test-key', secret: 'lastwill-test-secret-0123456789abcdef' };

/** The command line of the service under test. */
const externalService = process.env.LASTWILL_BLACKBOX_SERVICE?.trim() || undefined;
export const SERVICE_COMMAND: [string, ...string[]] = externalService
  ? (externalService.split(/\s+/) as [string, ...string[]])
  : [process.execPath, join(REPO_ROOT, 'dist/cli.js'), 'agent'];

/**
 * True when the service under test is lastwill (always so in CI). A command given in
 * LASTWILL_BLACKBOX_SERVICE is taken for the reference, lk-jwt-service, unless
 * LASTWILL_BLACKBOX_KIND=lastwill says it is another build of lastwill (an older commit, say).
 */
export const UNDER_TEST_IS_LASTWILL = externalService === undefined || process.env.LASTWILL_BLACKBOX_KIND === 'lastwill';

/**
 * LASTWILL_BLACKBOX_CLUSTER=1 runs lastwill in cluster mode (one replica on a real Redis): the same
 * contract must hold whichever store it runs on.
 */
export const CLUSTER_MODE = UNDER_TEST_IS_LASTWILL && process.env.LASTWILL_BLACKBOX_CLUSTER === '1';

/**
 * Where lastwill differs from lk-jwt-service on purpose. The keys are the first column of the
 * "Differences from lk-jwt-service" table in docs/migration.md.
 */
export const DIFFERENCES = [
  'unknown JSON fields',
  'forged webhooks',
  'disconnect grace',
  'abort grace',
  'sessions by sid',
  'replaced delegation',
  'restore',
  'sanity poll',
  'restart pacing',
  'retries',
  'delay_timeout cap',
  'outbound guard',
  'user of another server',
  'storage',
  'strict configuration',
  'shutdown',
  'logging',
  'error bodies',
  'additions',
] as const;
export type Difference = (typeof DIFFERENCES)[number];

/** `it` for a behaviour lastwill shares with lk-jwt-service; `it` against lastwill only otherwise. */
export function differs(_difference: Difference): typeof it {
  return UNDER_TEST_IS_LASTWILL ? it : (it.skip as unknown as typeof it);
}

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

/** Starts the service under test on LIVEKIT_JWT_BIND and waits until /healthz answers 200. */
export async function spawnAgent(env: Record<string, string>): Promise<AgentChild> {
  const base = `http://${env.LIVEKIT_JWT_BIND}`;
  const [command, ...args] = SERVICE_COMMAND;
  const proc = spawnManaged(command, args, {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
  });
  try {
    // lastwill listens only once its jobs are restored, so a healthy lastwill is also ready.
    await waitFor('the service to answer /healthz', async () => (await fetch(`${base}/healthz`)).status === 200, {
      timeoutMs: 20_000,
      intervalMs: 25,
      abort: () => (proc.hasExited() ? 'the service exited during startup' : undefined),
    });
  } catch (err) {
    await proc.kill();
    throw new Error(`${(err as Error).message}\n--- service log ---\n${proc.logs()}`);
  }
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
  /** The full-access homeserver whose client API an override names. */
  hs: FakeHomeserver;
  /** The homeservers asked for in `startWorld`'s `others`, in that order. */
  others: FakeHomeserver[];
  sfu: FakeSfu;
  dataDir: string;
  env: Record<string, string>;
  agent: AgentChild;
  /** Starts a new service process with the same environment and store (after a kill or stop). */
  restartAgent(): Promise<AgentChild>;
  close(): Promise<void>;
}

/** Another homeserver of the deployment: full access or restricted, its client API overridden or not. */
export interface OtherHomeserver {
  fullAccess: boolean;
  override: boolean;
}

/**
 * The lk-jwt-service environment of a deployment whose full-access homeserver `hs` has its client
 * API named by an override, plus `others` as configured.
 */
export function referenceEnv(
  hs: FakeHomeserver,
  sfu: FakeSfu,
  port: number,
  others: Array<OtherHomeserver & { hs: FakeHomeserver }> = [],
): Record<string, string> {
  const all = [{ hs, fullAccess: true, override: true }, ...others];
  return {
    LIVEKIT_URL: sfu.wsUrl,
    LIVEKIT_KEY: CREDS.key,
    LIVEKIT_SECRET: CREDS.secret,
    LIVEKIT_FULL_ACCESS_HOMESERVERS: all.filter((o) => o.fullAccess).map((o) => o.hs.serverName).join(','),
    LIVEKIT_CS_API_URL_OVERRIDES: all.filter((o) => o.override).map((o) => `${o.hs.serverName}=${o.hs.url}`).join(','),
    // The federation listener's certificate is self-signed, as in lk-jwt-service's own tests.
    LIVEKIT_INSECURE_SKIP_VERIFY_TLS: 'YES_I_KNOW_WHAT_I_AM_DOING',
    LIVEKIT_JWT_BIND: `127.0.0.1:${port}`,
    LIVEKIT_LOG_LEVEL: 'debug',
  };
}

export async function startWorld(extraEnv: Record<string, string> = {}, others: OtherHomeserver[] = []): Promise<World> {
  const hs = await startFakeHomeserver();
  const otherServers = await Promise.all(others.map(() => startFakeHomeserver()));
  const sfu = await startFakeSfu(CREDS);
  const dataDir = mkdtempSync(join(tmpdir(), 'lastwill-agent-bb-'));
  // lk-jwt-service keeps jobs across restarts only in Redis (its restore tests need one); lastwill
  // in its data dir, or in Redis too when the suite runs against cluster mode.
  const redis: RedisServer | undefined = UNDER_TEST_IS_LASTWILL && !CLUSTER_MODE ? undefined : await startRedis(dataDir);
  const closeFakes = () => Promise.all([hs, ...otherServers, sfu, redis].map((fake) => fake?.close()));
  const env: Record<string, string> = {
    ...referenceEnv(hs, sfu, await freeTcpPort(), others.map((o, i) => ({ ...o, hs: otherServers[i]! }))),
    ...(redis ? { LIVEKIT_REDIS_URL: redis.url } : {}),
    LASTWILL_AGENT_DATA_DIR: dataDir,
    LASTWILL_AGENT_SQLITE_SYNCHRONOUS: 'normal',
    // Short retries keep the scenarios fast; the engine's defaults are tested in its own suite.
    LASTWILL_AGENT_ENGINE_BACKOFF_INITIAL_MS: '200',
    LASTWILL_AGENT_ENGINE_BACKOFF_MAX_MS: '1000',
    LASTWILL_AGENT_ENGINE_ABORT_GRACE_MS: '1000',
    ...extraEnv,
  };
  let agent: AgentChild;
  try {
    agent = await spawnAgent(env);
  } catch (err) {
    await closeFakes();
    throw err;
  }
  const world: World = {
    hs,
    others: otherServers,
    sfu,
    dataDir,
    env,
    agent,
    async restartAgent() {
      world.agent = await spawnAgent(env);
      return world.agent;
    },
    async close() {
      if (!world.agent.proc.hasExited()) await world.agent.proc.kill();
      await closeFakes();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return world;
}

let userCounter = 0;

export interface User {
  userId: string;
  token: string;
  /** The `matrix_server_name` its OpenID token names. */
  serverName: string;
}

/** A fresh user of `hs` with an OpenID token it knows. */
export function newUser(hs: FakeHomeserver, name = 'user'): User {
  const n = ++userCounter;
  const userId = `@${name}${n}:${hs.serverName}`;
  const token = `openid-${n}-${Math.random().toString(36).slice(2)}`;
  hs.addOpenIdToken(token, userId);
  return { userId, token, serverName: hs.serverName };
}

/** The OpenID token object a client sends; the server name defaults to the user id's. */
export function openIdToken(token: string, serverName: string) {
  return { access_token: token, token_type: 'Bearer', matrix_server_name: serverName, expires_in: 3600 };
}

/** A `/get_token` / `/delegate_delayed_leave` body for a user. */
export function tokenBody(
  user: User,
  extra: Record<string, unknown> = {},
  ids: { roomId?: string; slotId?: string; device?: string; member?: string } = {},
): Record<string, unknown> {
  return {
    room_id: ids.roomId ?? '!room:hs.test',
    slot_id: ids.slotId ?? 'm.call#ROOM',
    openid_token: openIdToken(user.token, user.serverName),
    member: { id: ids.member ?? 'member1', claimed_user_id: user.userId, claimed_device_id: ids.device ?? 'DEVICE' },
    ...extra,
  };
}

/** A legacy `/sfu/get` body for a user. */
export function legacyBody(user: User, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { room: '!legacy:hs.test', openid_token: openIdToken(user.token, user.serverName), device_id: 'LD', ...extra };
}
