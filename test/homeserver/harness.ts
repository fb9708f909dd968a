/**
 * A real homeserver on 127.0.0.1:0 with its SQLite file in a temp dir, plus the client calls
 * tests need. Requests go through node:http with a keep-alive agent so paths are sent verbatim
 * (fetch would normalise malformed ones).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { toZod } from '../../src/config/define.js';
import { type HomeserverConfig, homeserverSettings } from '../../src/config/homeserver.js';
import { buildHomeserver, type Homeserver } from '../../src/homeserver/app.js';
import { silentLogger } from '../../src/lib/logger.js';
import type { Logger } from 'pino';

import type { Clock } from '../../src/lib/timer-heap.js';

export const TEST_SHARED_SECRET = 'lastwill-test-shared-secret';

type DeepPartial<T> = { [K in keyof T]?: T[K] extends Record<string, unknown> ? DeepPartial<T[K]> : T[K] };

export interface RequestOptions {
  token?: string;
  /** Serialised as JSON. */
  body?: unknown;
  /** Sent as-is (takes precedence over `body`). */
  rawBody?: string | Buffer;
  headers?: Record<string, string>;
}

export interface TestResponse {
  status: number;
  /** Parsed JSON, or the text when the body is not JSON. */
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

export interface Session {
  userId: string;
  accessToken: string;
  deviceId: string;
}

/** A request whose headers are on the wire and whose body is not sent yet. */
export interface OpenRequest {
  /** Sends the body (JSON-serialised) and resolves with the response. */
  finish(body?: unknown): Promise<TestResponse>;
}

export interface TestHomeserver {
  url: string;
  config: HomeserverConfig;
  dataDir: string;
  hs: Homeserver;
  register(localpart: string, password?: string): Promise<Session>;
  createRoom(accessToken: string, body?: Record<string, unknown>): Promise<string>;
  join(accessToken: string, roomId: string): Promise<void>;
  request(method: string, path: string, opts?: RequestOptions): Promise<TestResponse>;
  /**
   * Starts a request with a JSON body of `contentLength` bytes but sends only the headers, so
   * the server is left waiting for the body (for races between concurrent requests).
   */
  openRequest(method: string, path: string, opts: { token?: string; contentLength: number }): OpenRequest;
  close(): Promise<void>;
}

/** Builds a complete config from the schema defaults plus `overrides` (nested groups merged). */
export function testConfig(dataDir: string, overrides: DeepPartial<HomeserverConfig> = {}): HomeserverConfig {
  const base = {
    bind: '127.0.0.1:0',
    server_name: 'localhost',
    data_dir: dataDir,
    open_registration: true,
    registration_shared_secret: TEST_SHARED_SECRET,
    log_level: 'error',
    sqlite_synchronous: 'normal',
  };
  return toZod(homeserverSettings).parse(merge(base, overrides)) as HomeserverConfig;
}

function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && prev && typeof prev === 'object'
        ? merge(prev as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

export interface StartOptions {
  clock?: Clock;
  dataDir?: string;
  /** Defaults to a silent logger. */
  log?: Logger;
}

export async function startTestHomeserver(
  overrides: DeepPartial<HomeserverConfig> = {},
  opts: StartOptions = {},
): Promise<TestHomeserver> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'lastwill-hs-'));
  const ownsDir = opts.dataDir === undefined;
  const config = testConfig(dataDir, overrides);
  const hs = buildHomeserver({ config, log: opts.log ?? silentLogger(), ...(opts.clock ? { clock: opts.clock } : {}) });
  await hs.start();
  const { url } = await hs.app.listen('127.0.0.1', 0);
  hs.setBaseUrl(url);
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const { hostname, port } = new URL(url);

  /** Sends the headers at once; the returned `end` sends the payload and resolves the response. */
  const start = (method: string, path: string, headers: Record<string, string>) => {
    const req = httpRequest({ host: hostname, port: Number(port), method, path, headers, agent });
    const response = new Promise<TestResponse>((resolve, reject) => {
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text.length > 0 ? JSON.parse(text) : undefined;
          } catch {
            // Not JSON: hand the text to the test.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
        });
      });
      req.on('error', reject);
    });
    return {
      flushHeaders: () => req.flushHeaders(),
      end: (payload: string | Buffer | undefined) => {
        req.end(payload);
        return response;
      },
    };
  };

  const authHeader = (token: string | undefined): Record<string, string> =>
    token !== undefined ? { authorization: `Bearer ${token}` } : {};

  const request = (method: string, path: string, o: RequestOptions = {}): Promise<TestResponse> => {
    const payload = o.rawBody !== undefined ? o.rawBody : o.body !== undefined ? JSON.stringify(o.body) : undefined;
    return start(method, path, {
      // Explicit, because node's client sends DELETE bodies unframed otherwise.
      ...(payload !== undefined
        ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }
        : {}),
      ...authHeader(o.token),
      ...o.headers,
    }).end(payload);
  };

  const openRequest = (method: string, path: string, o: { token?: string; contentLength: number }): OpenRequest => {
    const pending = start(method, path, {
      'content-type': 'application/json',
      'content-length': String(o.contentLength),
      ...authHeader(o.token),
    });
    pending.flushHeaders();
    return { finish: (body) => pending.end(body === undefined ? undefined : JSON.stringify(body)) };
  };

  const expectOk = (res: TestResponse, what: string) => {
    if (res.status !== 200) throw new Error(`${what} failed: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body;
  };

  return {
    url,
    config,
    dataDir,
    hs,
    request,
    openRequest,
    async register(localpart, password = 'correct horse battery staple') {
      const body = expectOk(
        await request('POST', '/_matrix/client/v3/register', {
          body: { username: localpart, password, auth: { type: 'm.login.dummy' } },
        }),
        'register',
      );
      return { userId: body.user_id, accessToken: body.access_token, deviceId: body.device_id };
    },
    async createRoom(accessToken, body = {}) {
      return expectOk(await request('POST', '/_matrix/client/v3/createRoom', { token: accessToken, body }), 'createRoom')
        .room_id;
    },
    async join(accessToken, roomId) {
      expectOk(await request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: accessToken, body: {} }), 'join');
    },
    async close() {
      // The server first, so in-flight requests (long polls) get their answers.
      await hs.close();
      agent.destroy();
      if (ownsDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** `encodeURIComponent` for path segments (room ids, event types, user ids). */
export const enc = encodeURIComponent;

/** A started homeserver with registered users (password: the default). */
export interface UsersFixture<N extends string> {
  t: TestHomeserver;
  users: Record<N, Session>;
}

/** A started homeserver, registered users and a room created by the first of them. */
export interface RoomFixture<N extends string> extends UsersFixture<N> {
  roomId: string;
}

export interface FixtureOptions<N extends string> extends StartOptions {
  /** Localparts to register, in order. */
  users: readonly N[];
  overrides?: DeepPartial<HomeserverConfig>;
}

/** Starts a homeserver and registers `users`; closes the server again if that fails. */
export async function startWithUsers<const N extends string>(opts: FixtureOptions<N>): Promise<UsersFixture<N>> {
  const { users: names, overrides, ...start } = opts;
  const t = await startTestHomeserver(overrides, start);
  try {
    const users = {} as Record<N, Session>;
    for (const name of names) users[name] = await t.register(name);
    return { t, users };
  } catch (err) {
    await t.close();
    throw err;
  }
}

/**
 * `startWithUsers`, then the first user creates a room (`room` is the createRoom body) and the
 * `members` join it.
 */
export async function startWithRoom<const N extends string>(
  opts: FixtureOptions<N> & { room?: Record<string, unknown>; members?: readonly N[] },
): Promise<RoomFixture<N>> {
  const { room, members = [], ...rest } = opts;
  const { t, users } = await startWithUsers(rest);
  try {
    const roomId = await t.createRoom(users[opts.users[0]!].accessToken, room);
    for (const name of members) await t.join(users[name].accessToken, roomId);
    return { t, users, roomId };
  } catch (err) {
    await t.close();
    throw err;
  }
}
