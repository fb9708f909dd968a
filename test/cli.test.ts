/**
 * The `lastwill` command as an operator meets it: configuration errors, `lastwill all` on embedded
 * defaults (both components up and wired to each other), and a graceful SIGTERM that lets an
 * in-flight long poll finish.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { freeTcpPort, type ManagedProcess, REPO_ROOT, spawnManaged, waitFor } from './e2e/support/proc.js';

const CLI = join(REPO_ROOT, 'dist/cli.js');
const dirs: string[] = [];
const children: ManagedProcess[] = [];

afterAll(async () => {
  await Promise.all(children.map((c) => (c.hasExited() ? undefined : c.kill())));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'lastwill-cli-'));
  dirs.push(dir);
  return dir;
}

function run(args: string[], env: Record<string, string>): ManagedProcess {
  const child = spawnManaged(process.execPath, [CLI, ...args], {
    cwd: tempDir(),
    env: { PATH: process.env.PATH ?? '', ...env },
  });
  children.push(child);
  return child;
}

async function json(url: string, init?: RequestInit): Promise<{ status: number; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('lastwill CLI', () => {
  it.each([
    [['homeserver'], { LASTWILL_HS_MAX_DELAY_MS: 'soon' }, /max_delay_ms \(from LASTWILL_HS_MAX_DELAY_MS\)/],
    [['agent'], { LIVEKIT_JWT_BIND: ':8080', LIVEKIT_JWT_PORT: '8080' }, /LIVEKIT_JWT_BIND/],
    [['all'], { LASTWILL_AGENT_BIND: 'nowhere' }, /agent\.bind \(from LASTWILL_AGENT_BIND\)/],
  ])('%s exits 78 naming the key of an invalid setting', async (args, env, message) => {
    const child = run(args, env);
    const exit = await child.exited;
    expect(exit.code).toBe(78);
    expect(child.logs()).toMatch(message);
  });

  it('names the file and the key for an invalid YAML file', async () => {
    const file = join(tempDir(), 'hs.yaml');
    writeFileSync(file, 'rate_limits:\n  management:\n    burst: -1\n');
    const child = run(['homeserver', '--config', file], {});
    expect((await child.exited).code).toBe(78);
    expect(child.logs()).toMatch(new RegExp(`rate_limits\\.management\\.burst \\(in ${file}\\)`));
  });

  it('`all` runs both components wired together and drains on SIGTERM', async () => {
    const [hsPort, agentPort] = [await freeTcpPort(), await freeTcpPort()];
    const dataDir = tempDir();
    const child = run(['all'], {
      LASTWILL_HS_BIND: `127.0.0.1:${hsPort}`,
      LASTWILL_AGENT_BIND: `127.0.0.1:${agentPort}`,
      LASTWILL_HS_DATA_DIR: join(dataDir, 'hs'),
      LASTWILL_AGENT_DATA_DIR: join(dataDir, 'agent'),
      LASTWILL_HS_OPEN_REGISTRATION: 'true',
    });
    const hs = `http://127.0.0.1:${hsPort}`;
    const agent = `http://127.0.0.1:${agentPort}`;
    await waitFor('both components', async () => (await fetch(`${agent}/readyz`)).ok && (await fetch(`${hs}/_matrix/client/versions`)).ok, {
      timeoutMs: 20_000,
      abort: () => (child.hasExited() ? `exited early:\n${child.logs()}` : undefined),
    });

    const reg = await json(`${hs}/_matrix/client/v3/register`, {
      method: 'POST',
      body: JSON.stringify({ username: 'alice', password: 'pw-alice-123', auth: { type: 'm.login.dummy' } }),
    });
    expect(reg.status).toBe(200);
    const auth = { authorization: `Bearer ${reg.body.access_token}` };
    // The homeserver announces the agent and forwards MSC4195 delegations to it.
    const transports = await json(`${hs}/_matrix/client/v1/rtc/transports`, { headers: auth });
    expect(transports.body).toEqual({ rtc_transports: [{ type: 'livekit', livekit_service_url: agent }] });
    const probe = await json(`${hs}/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ room_id: '!nope:localhost', slot_id: 's', member_id: 'm', delay_id: 'x' }),
    });
    expect(probe.body.errcode).toBe('M_INVALID_PARAM');
    // The agent verifies the bundled homeserver's OpenID tokens (where federation resolution of
    // `localhost` would not find them) and takes a delegation from its users.
    const openid = await json(`${hs}/_matrix/client/v3/user/${encodeURIComponent(reg.body.user_id)}/openid/request_token`, {
      method: 'POST',
      headers: auth,
      body: '{}',
    });
    const member = { id: 'm1', claimed_user_id: reg.body.user_id, claimed_device_id: reg.body.device_id };
    const delegated = await json(`${agent}/delegate_delayed_leave`, {
      method: 'POST',
      body: JSON.stringify({ room_id: '!r:localhost', slot_id: 'm.call#ROOM', openid_token: openid.body, member, delay_id: 'd', delay_timeout: 60_000 }),
    });
    expect([delegated.status, delegated.body]).toEqual([200, {}]);

    // A long poll in flight when SIGTERM arrives is answered, then the process exits 143.
    const sync = json(`${hs}/_matrix/client/v3/sync?timeout=20000`, { headers: auth });
    const first = await sync;
    const longPoll = json(`${hs}/_matrix/client/v3/sync?timeout=20000&since=${first.body.next_batch}`, { headers: auth });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const started = Date.now();
    child.signal('SIGTERM');
    expect((await longPoll).status).toBe(200);
    const exit = await child.exited;
    expect(exit.code).toBe(143);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(child.logs()).toMatch(/"msg":"stopped"/);
  });
});
