/**
 * Durability: a real `lastwill homeserver` child process with scheduled events is SIGKILLed and
 * restarted later. Every event must arrive exactly once, in due order, overdue ones at once after
 * the restart and the rest on time.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { freeTcpPort, type ManagedProcess, REPO_ROOT, sleep, spawnManaged, waitFor } from '../../e2e/support/proc.js';
import { U } from './support.js';

/** dist/ is built once by the vitest globalSetup (test/support/build.ts). */
const CLI = join(REPO_ROOT, 'dist/cli.js');

describe('kill -9 and restart', () => {
  let dataDir: string;
  let port: number;
  let base: string;
  const children: ManagedProcess[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'lastwill-crash-'));
    port = await freeTcpPort();
    base = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => c.kill()));
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function startChild(): Promise<ManagedProcess> {
    const child = spawnManaged(process.execPath, [CLI, 'homeserver'], {
      cwd: REPO_ROOT,
      env: {
        PATH: process.env.PATH,
        LASTWILL_HS_BIND: `127.0.0.1:${port}`,
        LASTWILL_HS_DATA_DIR: dataDir,
        LASTWILL_HS_OPEN_REGISTRATION: 'true',
        LASTWILL_HS_LOG_LEVEL: 'warn',
        LASTWILL_HS_DELAYED_EVENTS_MAX_SCHEDULED_PER_USER: '1000',
        LASTWILL_HS_RATE_LIMITS_SCHEDULE_PER_SECOND: '0',
        LASTWILL_HS_RATE_LIMITS_SCHEDULE_BURST: '0',
        LASTWILL_HS_RATE_LIMITS_SEND_PER_SECOND: '0',
        LASTWILL_HS_RATE_LIMITS_SEND_BURST: '0',
        LASTWILL_HS_RATE_LIMITS_MANAGEMENT_PER_SECOND: '0',
        LASTWILL_HS_RATE_LIMITS_MANAGEMENT_BURST: '0',
      },
    });
    children.push(child);
    await waitFor('the homeserver to listen', async () => (await fetch(`${base}/_matrix/client/versions`)).ok, {
      timeoutMs: 20_000,
      intervalMs: 50,
      abort: () => (child.hasExited() ? `homeserver exited: ${child.logs()}` : undefined),
    });
    return child;
  }

  async function call(method: string, path: string, token?: string, body?: unknown): Promise<any> {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  async function messages(token: string, roomId: string): Promise<Array<{ content: { label: number }; origin_server_ts: number }>> {
    const res = await call('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=f&limit=1000`, token);
    return res.chunk.filter((e: { type: string }) => e.type === 'com.example.crash');
  }

  async function waitUntilNoneScheduled(token: string): Promise<void> {
    const noneLeft = async () => (await call('GET', `${U}/delayed_events`, token)).delayed_events.length === 0;
    await waitFor('no delayed events left scheduled', noneLeft, { intervalMs: 50 });
  }

  it('sends every event exactly once and in due order across kill -9 and restart', async () => {
    let child = await startChild();
    const { access_token: token } = await call('POST', '/_matrix/client/v3/register', undefined, {
      username: 'crash',
      password: 'correct horse battery staple',
      auth: { type: 'm.login.dummy' },
    });
    const roomId = (await call('POST', '/_matrix/client/v3/createRoom', token, {})).room_id as string;

    // Scenario 1 (Complement's restart test): one soon, several later; killed before any is due.
    const dueOf = new Map<number, number>();
    const delayIdOf = new Map<number, string>();
    const schedule = async (label: number, delay: number) => {
      const before = Date.now();
      const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/com.example.crash/t${label}`;
      const res = await call('PUT', `${path}?org.matrix.msc4140.delay=${delay}`, token, { label });
      dueOf.set(label, before + delay);
      delayIdOf.set(label, res.delay_id);
    };
    await schedule(1, 900);
    await schedule(2, 1_100);
    await schedule(3, 10_000);
    await schedule(4, 11_000);
    await child.kill();
    await sleep(1_500);
    child = await startChild();
    // Overdue 1 and 2 are sent at start-up; 3 and 4 are not yet due.
    const afterStart = (await messages(token, roomId)).map((e) => e.content.label);
    expect(afterStart).toEqual([1, 2]);
    await waitUntilNoneScheduled(token);
    const firstRound = await messages(token, roomId);
    expect(firstRound.map((e) => e.content.label)).toEqual([1, 2, 3, 4]);
    for (const e of firstRound) {
      // Timed sends carry their due time (the client measured it slightly early).
      expect(e.origin_server_ts).toBeGreaterThanOrEqual(dueOf.get(e.content.label)!);
      expect(e.origin_server_ts - dueOf.get(e.content.label)!).toBeLessThan(2_000);
    }

    // Scenario 2: a burst falling due while the process is killed, possibly mid-send.
    // Due times about 20 ms apart; the server's own due times (looked up afterwards) are the
    // reference, since request latency under load may shift them.
    const labels = Array.from({ length: 150 }, (_, i) => 100 + i);
    const origin = Date.now() + 2_500;
    for (const [i, label] of labels.entries()) await schedule(label, Math.max(1, origin + i * 20 - Date.now()));
    await sleep(Math.max(0, origin + 1_500 - Date.now()));
    await child.kill();
    child = await startChild();
    await waitUntilNoneScheduled(token);
    const serverDue = new Map<number, number>();
    for (const label of labels) {
      const one = await call('GET', `${U}/delayed_events/${encodeURIComponent(delayIdOf.get(label)!)}`, token);
      expect(one.event_id).toMatch(/^\$/);
      serverDue.set(label, one.scheduled_at + one.delay_ms);
    }
    // Equal due times go first-scheduled first, which is label order.
    const expected = [...labels].sort((a, b) => serverDue.get(a)! - serverDue.get(b)! || a - b);
    const all = (await messages(token, roomId)).map((e) => e.content.label);
    expect(all).toEqual([1, 2, 3, 4, ...expected]);
    await child.kill();
  });
});
