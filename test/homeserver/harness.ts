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

export interface TestHomeserver {
  url: string;
  config: HomeserverConfig;
  dataDir: string;
  hs: Homeserver;
  register(localpart: string, password?: string): Promise<Session>;
  createRoom(accessToken: string, body?: Record<string, unknown>): Promise<string>;
  request(method: string, path: string, opts?: RequestOptions): Promise<TestResponse>;
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

export async function startTestHomeserver(
  overrides: DeepPartial<HomeserverConfig> = {},
  opts: { clock?: Clock; dataDir?: string } = {},
): Promise<TestHomeserver> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'lastwill-hs-'));
  const ownsDir = opts.dataDir === undefined;
  const config = testConfig(dataDir, overrides);
  const hs = buildHomeserver({ config, log: silentLogger(), ...(opts.clock ? { clock: opts.clock } : {}) });
  await hs.start();
  const { url } = await hs.app.listen('127.0.0.1', 0);
  hs.setBaseUrl(url);
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const { hostname, port } = new URL(url);

  const request = (method: string, path: string, o: RequestOptions = {}): Promise<TestResponse> =>
    new Promise((resolve, reject) => {
      const payload =
        o.rawBody !== undefined ? o.rawBody : o.body !== undefined ? JSON.stringify(o.body) : undefined;
      const headers: Record<string, string> = {
        // Explicit, because node's client sends DELETE bodies unframed otherwise.
        ...(payload !== undefined
          ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }
          : {}),
        ...(o.token !== undefined ? { authorization: `Bearer ${o.token}` } : {}),
        ...o.headers,
      };
      const req = httpRequest({ host: hostname, port: Number(port), method, path, headers, agent }, (res) => {
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
      req.end(payload);
    });

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
