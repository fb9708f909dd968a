/**
 * Homeserver targets for benchmarks 4–7: our homeserver as the real CLI in a child process
 * (`node dist/cli.js homeserver`, env config, limits raised so the benchmark measures the
 * scheduler and not the rate limiter), or a real Synapse from test/e2e/support/synapse.ts.
 * Both get the same users, rooms, scheduling requests (`PUT …/state/…?org.matrix.msc4140.delay=`)
 * and management requests (path form, unauthenticated, like the agent).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freeTcpPort } from '../../test/e2e/support/proc.js';
import { registerWithSharedSecret } from '../../scripts/lib/matrix-http.js';
import { startSynapse, type SynapseServer } from '../../test/e2e/support/synapse.js';
import { spawnCli, type CliChild } from './child.js';
import { Client } from './http.js';
import { RawConnection } from './raw-http.js';

const SECRET = 'bench-registration-secret';
const HUGE = '1000000000';
export const EVENT_TYPE = 'org.matrix.msc3401.call.member';
const MGMT = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

export interface BenchUser {
  userId: string;
  token: string;
  roomId: string;
}

/** One client on its own keep-alive connection (see `RawConnection`). */
export interface HsLane {
  schedule(u: BenchUser, stateKey: string, content: Record<string, unknown>, delayMs: number): Promise<string>;
  manage(delayId: string, action: 'restart' | 'send'): Promise<number>;
  close(): void;
}

const schedulePath = (u: BenchUser, stateKey: string, delayMs: number) =>
  `/_matrix/client/v3/rooms/${encodeURIComponent(u.roomId)}/state/${EVENT_TYPE}/${encodeURIComponent(stateKey)}` +
  `?org.matrix.msc4140.delay=${Math.max(0, Math.round(delayMs))}`;
const managePath = (delayId: string, action: 'restart' | 'send') => `${MGMT}/${encodeURIComponent(delayId)}/${action}`;

function delayIdOf(status: number, text: string): string {
  if (status !== 200) throw new Error(`schedule: ${status} ${text.slice(0, 300)}`);
  return (JSON.parse(text) as { delay_id: string }).delay_id;
}

export interface HsTarget {
  kind: 'lastwill' | 'synapse';
  baseUrl: string;
  /** Our child process (undefined for Synapse). */
  child?: CliChild;
  dataDir?: string;
  client: Client;
  users: BenchUser[];
  /** Schedules a delayed state event; returns its delay id. */
  schedule(u: BenchUser, stateKey: string, content: Record<string, unknown>, delayMs: number): Promise<string>;
  manage(delayId: string, action: 'restart' | 'send'): Promise<number>;
  /** A client of its own for the throughput benchmark, on the lean HTTP client. */
  lane(): Promise<HsLane>;
  /** kill -9 (ours only) and start again on the same data dir. */
  crash(): Promise<void>;
  restart(): Promise<CliChild>;
  close(): Promise<void>;
}

export interface TargetOptions {
  users: number;
  connections: number;
  /** Extra LASTWILL_HS_* settings (ours only). */
  env?: Record<string, string>;
  inspect?: boolean;
}

export async function startTarget(kind: 'lastwill' | 'synapse', opts: TargetOptions): Promise<HsTarget> {
  let child: CliChild | undefined;
  let synapse: SynapseServer | undefined;
  let baseUrl: string;
  let dataDir: string | undefined;
  let spawn: (() => Promise<CliChild>) | undefined;
  if (kind === 'lastwill') {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-bench-hs-'));
    const port = await freeTcpPort();
    baseUrl = `http://127.0.0.1:${port}`;
    const env: Record<string, string> = {
      LASTWILL_HS_BIND: `127.0.0.1:${port}`,
      LASTWILL_HS_DATA_DIR: dataDir,
      LASTWILL_HS_REGISTRATION_SHARED_SECRET: SECRET,
      LASTWILL_HS_LOG_LEVEL: 'warn',
      LASTWILL_HS_DELAYED_EVENTS_MAX_SCHEDULED_PER_USER: HUGE,
      LASTWILL_HS_RATE_LIMITS_SCHEDULE_PER_SECOND: HUGE,
      LASTWILL_HS_RATE_LIMITS_SCHEDULE_BURST: HUGE,
      LASTWILL_HS_RATE_LIMITS_MANAGEMENT_PER_SECOND: HUGE,
      LASTWILL_HS_RATE_LIMITS_MANAGEMENT_BURST: HUGE,
      LASTWILL_HS_RATE_LIMITS_SEND_PER_SECOND: HUGE,
      LASTWILL_HS_RATE_LIMITS_SEND_BURST: HUGE,
      LASTWILL_HS_RATE_LIMITS_TRUSTED_ADDRESSES: '127.0.0.1',
      LASTWILL_HS_RATE_LIMITS_TRUSTED_PER_SECOND: HUGE,
      LASTWILL_HS_RATE_LIMITS_TRUSTED_BURST: HUGE,
      ...opts.env,
    };
    spawn = () => spawnCli('homeserver', env, { readyUrl: `${baseUrl}/_matrix/client/versions`, inspect: opts.inspect ?? false, cwd: dataDir });
    child = await spawn();
  } else {
    synapse = await startSynapse({
      extraConfig: { experimental_features: { msc4140_max_delayed_events_per_user: 1_000_000 } },
    });
    baseUrl = synapse.baseUrl;
  }
  const client = new Client(baseUrl, opts.connections);
  const secret = synapse ? synapse.registrationSharedSecret : SECRET;
  const users: BenchUser[] = [];
  for (let i = 0; i < opts.users; i++) {
    const u = await registerWithSharedSecret(baseUrl, secret, `bench${i}`);
    const room = await client.json('POST', '/_matrix/client/v3/createRoom', { preset: 'private_chat' }, { authorization: `Bearer ${u.accessToken}` });
    users.push({ userId: u.userId, token: u.accessToken, roomId: room.room_id as string });
  }
  const target: HsTarget = {
    kind,
    baseUrl,
    client,
    users,
    ...(dataDir ? { dataDir } : {}),
    ...(child ? { child } : {}),
    async schedule(u, stateKey, content, delayMs) {
      const r = await client.request('PUT', schedulePath(u, stateKey, delayMs), content, { authorization: `Bearer ${u.token}` });
      return delayIdOf(r.status, r.text);
    },
    async manage(delayId, action) {
      const r = await client.request('POST', managePath(delayId, action), {});
      return r.status;
    },
    async lane() {
      const conn = await RawConnection.open(baseUrl);
      return {
        async schedule(u, stateKey, content, delayMs) {
          const r = await conn.request('PUT', schedulePath(u, stateKey, delayMs), JSON.stringify(content), { authorization: `Bearer ${u.token}` });
          return delayIdOf(r.status, r.body);
        },
        async manage(delayId, action) {
          return (await conn.request('POST', managePath(delayId, action), '{}')).status;
        },
        close: () => conn.close(),
      };
    },
    async crash() {
      await target.child?.kill9();
    },
    async restart() {
      if (!spawn) throw new Error('only our homeserver restarts here');
      child = await spawn();
      target.child = child;
      return child;
    },
    async close() {
      await client.close().catch(() => undefined);
      if (target.child && !target.child.proc.hasExited()) {
        if (process.env.BENCH_CPU_PROF) await target.child.stop();
        else await target.child.kill9();
      }
      await synapse?.kill();
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return target;
}
