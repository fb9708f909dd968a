// Cluster mode with a real Redis and three replicas as child processes. Waits are generous; only
// counts and orderings are asserted.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { createClient } from '@redis/client';

import { afterEach, describe, expect, it } from 'vitest';

import { participantIdentity, roomAlias } from '../../../src/livekit/identity.js';
import type { WebhookInit } from '../../fakes/fake-sfu.js';
import { ensureRedis, startRedis } from '../../support/redis.js';
import { waitFor } from '../../e2e/support/proc.js';
import { type AgentChild, http, newUser, tokenBody, type User } from '../blackbox/harness.js';
import { type Cluster, startCluster } from './harness.js';

const redis = await ensureRedis();
const skipped = redis.skip ? ` (skipped: ${redis.skip})` : '';

let c: Cluster | undefined;
afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail' && c) {
    for (const [i, r] of c.replicas.entries()) if (r) console.log(`--- replica ${i} log ---\n${r.logs().slice(-6000)}`);
  }
  await c?.close();
  c = undefined;
});

interface Member {
  room: string;
  identity: string;
  delayId: string;
  user: User;
  ids: { roomId: string; slotId: string; device: string; member: string };
}

/** Where a participant sits: what a webhook names. */
type Seat = Pick<Member, 'room' | 'identity'>;

let counter = 0;

/**
 * Delegates through replica `via` for a fresh user in a fresh room, or again for `again`'s user and
 * device with a new delay id (a client that reopened its session).
 */
async function delegate(cluster: Cluster, via: AgentChild, delayTimeout = 60_000, again?: Member): Promise<Member> {
  const n = ++counter;
  const user = again?.user ?? newUser(cluster.hs);
  const delayId = `cluster-delay-${n}-${Math.random().toString(36).slice(2)}`;
  const ids = again?.ids ?? { roomId: `!c${n}:hs.test`, slotId: 'm.call#ROOM', device: `D${n}`, member: `m${n}` };
  const res = await via.post('/delegate_delayed_leave', tokenBody(user, { delay_id: delayId, delay_timeout: delayTimeout }, ids));
  expect(res.status).toBe(200);
  const room = roomAlias(ids.roomId, ids.slotId);
  return { room, identity: participantIdentity(user.userId, ids.device, ids.member), delayId, user, ids };
}

async function hook(via: AgentChild, cluster: Cluster, init: WebhookInit): Promise<void> {
  expect(await cluster.sfu.sendWebhook(`${via.url}/sfu_webhook`, init)).toBe(200);
}
const joined = (m: Seat, sid: string): WebhookInit => ({ event: 'participant_joined', room: m.room, identity: m.identity, sid });
const left = (m: Seat, sid: string): WebhookInit => ({
  event: 'participant_left',
  room: m.room,
  identity: m.identity,
  sid,
  disconnectReason: 'CLIENT_INITIATED',
});

describe.skipIf(!!redis.skip)(`cluster mode${skipped}`, () => {
  it('shares the partitions out, takes delegations and webhooks at any replica, and drives each job once', async () => {
    c = await startCluster(3);
    await c.settled();
    const replicas = c.running();
    const members: Member[] = [];
    for (let i = 0; i < 12; i++) {
      const m = await delegate(c, replicas[i % 3]!);
      c.sfu.join(m.room, { identity: m.identity, sid: `PA_${i}` });
      members.push(m);
    }
    // Found by the owner's lookup, wherever the delegation came in: one immediate restart each.
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'restart', 1, 20_000);
    // Webhooks arrive at a replica chosen regardless of ownership.
    for (const [i, m] of members.entries()) {
      c.sfu.leave(m.room, m.identity);
      await hook(replicas[(i + 1) % 3]!, c, left(m, `PA_${i}`));
    }
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'send', 1, 20_000);
    await sleep(2000);
    for (const m of members) {
      expect([m.delayId, c.hs.actionRequests(m.delayId, 'restart').length, c.hs.actionRequests(m.delayId, 'send').length]).toEqual([m.delayId, 1, 1]);
    }
    // Each was driven by its room's owner alone, whichever replica took the request.
    for (const [i, r] of replicas.entries()) {
      const owned = members.filter((m) => c!.ownerOf(m.room) === i).length;
      expect([i, await r.metric('lastwill_agent_delayed_event_actions_total', { action: 'send' })]).toEqual([i, owned]);
    }
  });

  it("takes a killed owner's jobs over: participants who left meanwhile are hung up, those who stayed are not", async () => {
    c = await startCluster(3);
    await c.settled();
    const members: Member[] = [];
    for (let i = 0; i < 24; i++) {
      const m = await delegate(c, c.replica(i % 3));
      c.sfu.join(m.room, { identity: m.identity, sid: `PA_${i}` });
      members.push(m);
    }
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'restart', 1, 20_000);
    const victim = c.ownerOf(members[0]!.room);
    const theirs = members.filter((m) => c!.ownerOf(m.room) === victim);
    expect(theirs.length).toBeGreaterThan(1);
    await c.replica(victim).proc.kill();
    // Half of the victim's participants leave while nobody drives their jobs; their webhooks reach
    // a surviving replica (the inbox keeps them for whoever takes the partition over).
    const [leaving, staying] = [theirs.filter((_, i) => i % 2 === 0), theirs.filter((_, i) => i % 2 === 1)];
    const survivor = c.running()[0]!;
    for (const m of leaving) {
      c.sfu.leave(m.room, m.identity);
      await hook(survivor, c, left(m, `PA_${members.indexOf(m)}`));
    }
    for (const m of leaving) await c.hs.waitForRequests(m.delayId, 'send', 1, 20_000);
    await c.settled();
    await sleep(2000);
    for (const m of leaving) expect(c.hs.actionRequests(m.delayId, 'send')).toHaveLength(1);
    for (const m of staying) expect(c.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    expect(await survivor.metric('lastwill_agent_cluster_takeovers_total')).toBeGreaterThan(0);
  });

  it('a paused owner stops acting on the jobs it lost, and does not hang anyone up when it resumes', async () => {
    c = await startCluster(3);
    await c.settled();
    const members: Member[] = [];
    for (let i = 0; i < 18; i++) {
      // Short delays: restarts fall due while the owner is paused.
      const m = await delegate(c, c.replica(i % 3), 4000);
      c.sfu.join(m.room, { identity: m.identity, sid: `PA_${i}` });
      members.push(m);
    }
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'restart', 1, 20_000);
    const paused = c.ownerOf(members[0]!.room);
    const theirs = members.filter((m) => c!.ownerOf(m.room) === paused);
    c.replica(paused).proc.signal('SIGSTOP');
    // Past its lease: the others take its partitions over and keep its participants' events alive.
    const gone = theirs[0]!;
    c.sfu.leave(gone.room, gone.identity);
    await hook(c.replica((paused + 1) % 3), c, left(gone, `PA_${members.indexOf(gone)}`));
    const [send] = await c.hs.waitForRequests(gone.delayId, 'send', 1, 20_000);
    const stayed = theirs[1]!;
    const restarts = c.hs.actionRequests(stayed.delayId, 'restart').length;
    await c.hs.waitForRequests(stayed.delayId, 'restart', restarts + 1, 20_000);
    // Resumed with restarts overdue in its memory, among them one for the job already hung up:
    // none of them may reach the homeserver before it holds the partition (and its real state) again.
    c.replica(paused).proc.signal('SIGCONT');
    await sleep(5000);
    expect(c.hs.actionRequests(gone.delayId, 'restart').filter((r) => r.at > send!.at)).toEqual([]);
    expect(c.hs.actionRequests(gone.delayId, 'send')).toHaveLength(1);
    for (const m of theirs.slice(1)) expect(c.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    // It rejoins: the partitions are shared out over all three again.
    await c.settled();
  });

  it('hands its partitions over at once on SIGTERM, and takes a share when it joins', async () => {
    // A lease far longer than the waits below: what moves here moved by handover, not expiry.
    c = await startCluster(2, { env: { LASTWILL_AGENT_CLUSTER_LEASE_MS: '30000' } });
    await c.settled();
    const members: Member[] = [];
    for (let i = 0; i < 16; i++) {
      const m = await delegate(c, c.replica(i % 2));
      c.sfu.join(m.room, { identity: m.identity, sid: `PA_${i}` });
      members.push(m);
    }
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'restart', 1, 20_000);
    await c.start(2);
    await c.settled();
    const owned = await c.owned();
    expect([...owned.values()].every((n) => n >= 10)).toBe(true);
    const moved = members.filter((m) => c!.ownerOf(m.room) === 2);
    expect(moved.length).toBeGreaterThan(0);
    // The joiner drives what it took: a leave in a moved room is sent once.
    c.sfu.leave(moved[0]!.room, moved[0]!.identity);
    await hook(c.replica(0), c, left(moved[0]!, `PA_${members.indexOf(moved[0]!)}`));
    await c.hs.waitForRequests(moved[0]!.delayId, 'send', 1, 20_000);

    c.replica(0).proc.signal('SIGTERM');
    expect((await c.replica(0).proc.exited).code).toBe(143);
    await c.settled();
    const leaver = members.find((m) => m !== moved[0] && c!.ownerOf(m.room) !== 2)!;
    c.sfu.leave(leaver.room, leaver.identity);
    await hook(c.replica(1), c, left(leaver, `PA_${members.indexOf(leaver)}`));
    await c.hs.waitForRequests(leaver.delayId, 'send', 1, 20_000);
    for (const m of members.filter((x) => x !== moved[0] && x !== leaver)) expect(c.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
  });

  it("cancels a replaced delegation's delayed event once, even when its owner dies before the cancel lands", async () => {
    c = await startCluster(3);
    await c.settled();
    const first = await delegate(c, c.replica(0));
    c.sfu.join(first.room, { identity: first.identity, sid: 'PA_R' });
    await c.hs.waitForRequests(first.delayId, 'restart', 1, 20_000);
    const owner = c.ownerOf(first.room);
    // The homeserver refuses the cancel until the owner is gone.
    c.hs.script(first.delayId, 'cancel', [], { status: 502 });
    // The client reopened its session and delegated its new hangup, at another replica.
    const second = await delegate(c, c.replica((owner + 1) % 3), 60_000, first);
    expect([second.room, second.identity]).toEqual([first.room, first.identity]);
    await c.hs.waitForRequests(first.delayId, 'cancel', 1, 20_000);
    await c.hs.waitForRequests(second.delayId, 'restart', 1, 20_000);
    await c.replica(owner).proc.kill();
    c.hs.script(first.delayId, 'cancel', [], { status: 200 });
    // A survivor takes the partition over and still owes the cancel: it makes it.
    await waitFor(
      'a cancel that landed',
      () => c!.hs.actionRequests(first.delayId, 'cancel').some((r) => r.status === 200),
      { timeoutMs: 30_000 },
    );
    await c.settled();
    await sleep(2000);
    expect(c.hs.actionRequests(first.delayId, 'cancel').filter((r) => r.status === 200)).toHaveLength(1);
    expect(c.hs.actionRequests(first.delayId, 'send')).toEqual([]);
    expect(c.hs.actionRequests(second.delayId, 'send')).toEqual([]);
    // The replacement is driven by the new owner: it leaves, and its own hangup is sent once.
    c.sfu.leave(second.room, second.identity);
    await hook(c.running()[0]!, c, left(second, 'PA_R'));
    await c.hs.waitForRequests(second.delayId, 'send', 1, 20_000);
    expect(c.hs.actionRequests(first.delayId, 'send')).toEqual([]);
  });

  it('survives a Redis restart: nothing acknowledged is lost, nobody present is hung up, a leave meanwhile is sent after', async () => {
    c = await startCluster(3);
    await c.settled();
    const members: Member[] = [];
    for (let i = 0; i < 9; i++) {
      const m = await delegate(c, c.replica(i % 3));
      c.sfu.join(m.room, { identity: m.identity, sid: `PA_${i}` });
      members.push(m);
    }
    for (const m of members) await c.hs.waitForRequests(m.delayId, 'restart', 1, 20_000);
    // Acknowledged just before Redis goes away.
    const last = await delegate(c, c.replica(0));
    await c.redis!.stop();
    const gone = members[0]!;
    c.sfu.leave(gone.room, gone.identity);
    // Nowhere to hand it: LiveKit is told to retry.
    expect(await c.sfu.sendWebhook(`${c.replica(1).url}/sfu_webhook`, left(gone, 'PA_0'))).toBe(503);
    await waitForStatus(c.replica(1), '/readyz', 503);
    await sleep(3000);
    await c.redis!.start();
    for (const r of c.running()) await waitForStatus(r, '/readyz', 200);
    await c.settled();
    // The owner reconciled with LiveKit after taking the partition back: the leave is sent.
    await c.hs.waitForRequests(gone.delayId, 'send', 1, 20_000);
    // The delegation acknowledged before the outage survived it.
    c.sfu.join(last.room, { identity: last.identity, sid: 'PA_last' });
    await hook(c.replica(2), c, joined(last, 'PA_last'));
    await c.hs.waitForRequests(last.delayId, 'restart', 1, 20_000);
    await sleep(2000);
    for (const m of members.slice(1)) expect(c.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    expect(c.hs.actionRequests(gone.delayId, 'send')).toHaveLength(1);
  });

  it("takes over the jobs lk-jwt-service left in Redis, as it really writes them", async () => {
    // Entries lk-jwt-service a375b13 wrote (test/fixtures); their homeserver is this test's fake,
    // and they were last pushed back ten seconds ago.
    const fixture = JSON.parse(readFileSync(new URL('../../fixtures/lk-jwt-service-jobs.json', import.meta.url), 'utf8')) as {
      serverName: string;
      entries: Record<string, string>;
    };
    const dir = mkdtempSync(join(tmpdir(), 'lastwill-migration-'));
    const redisServer = await startRedis(dir);
    const client = createClient({ url: redisServer.url });
    await client.connect();
    const restartedAt = new Date(Date.now() - 10_000).toISOString().replace('Z', '123456Z');
    const jobs: Array<{ room: string; identity: string; delayId: string }> = [];
    let hsName = '';
    try {
      c = await startCluster(0, { redisUrl: redisServer.url });
      hsName = c.hs.serverName;
      for (const [field, value] of Object.entries(fixture.entries)) {
        const job = JSON.parse(value) as { Params: { DelayId: string; ServerName: string; LiveKitRoom: string; LiveKitIdentity: string }; RestartedAt: string };
        expect(job.Params.ServerName).toBe(fixture.serverName);
        job.Params.ServerName = hsName;
        job.RestartedAt = restartedAt;
        await client.hSet('lk-jwt:jobs', field, JSON.stringify(job));
        jobs.push({ room: job.Params.LiveKitRoom, identity: job.Params.LiveKitIdentity, delayId: job.Params.DelayId });
      }
      // Two of the three participants are still in their calls.
      for (const j of jobs.slice(0, 2)) c.sfu.join(j.room, { identity: j.identity, sid: `PA_${j.delayId}` });
      for (let i = 0; i < 3; i++) await c.start(i);
      await c.settled();
      for (const j of jobs.slice(0, 2)) await c.hs.waitForRequests(j.delayId, 'restart', 1, 20_000);
      expect(await client.hLen('lk-jwt:jobs')).toBe(0);
      // Taken once (three replicas started together), and the absent one waits, unsent, for its wait to end.
      await sleep(2000);
      for (const j of jobs) expect(c.hs.actionRequests(j.delayId, 'send')).toHaveLength(0);
      for (const j of jobs.slice(0, 2)) expect(c.hs.actionRequests(j.delayId, 'restart')).toHaveLength(1);
      let waiting = 0;
      for (const r of c.running()) waiting += await r.metric('lastwill_agent_jobs', { state: 'waiting' });
      expect(waiting).toBe(1);
      // The one still in its call leaves: the leave is sent.
      c.sfu.leave(jobs[0]!.room, jobs[0]!.identity);
      await hook(c.replica(1), c, left({ ...jobs[0]! }, `PA_${jobs[0]!.delayId}`));
      await c.hs.waitForRequests(jobs[0]!.delayId, 'send', 1, 20_000);
    } finally {
      await client.close();
      await c?.close();
      c = undefined;
      await redisServer.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function waitForStatus(agent: AgentChild, path: string, status: number): Promise<void> {
  await waitFor(`${path} ${status}`, async () => (await http(`${agent.url}${path}`)).status === status, { timeoutMs: 20_000, intervalMs: 50 });
}
