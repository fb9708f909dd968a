// Black-box: what reaches the user's homeserver, end to end. The service under test (lastwill
// agent, or another program named by LASTWILL_BLACKBOX_SERVICE; see harness.ts) runs as a child
// process; LiveKit is the fake SFU (signed webhooks, RoomService), the homeserver is the fake that
// records every restart and send. Waits are generous; only orderings and counts are asserted.
import { setTimeout as sleep } from 'node:timers/promises';

import { afterEach, describe, expect, it } from 'vitest';

import { legacyIdentity, legacyRoomAlias, participantIdentity, roomAlias } from '../../../src/livekit/identity.js';
import { waitFor } from '../../e2e/support/proc.js';
import type { WebhookInit } from '../../fakes/fake-sfu.js';
import { differs, legacyBody, newUser, startWorld, tokenBody, type User, type World } from './harness.js';

let w: World | undefined;

afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail' && w) console.log(`--- service log ---\n${w.agent.logs()}`);
  await w?.close();
  w = undefined;
});

interface Member {
  room: string;
  identity: string;
  delayId: string;
}

let memberCounter = 0;

type Route = '/delegate_delayed_leave' | '/get_token' | '/sfu/get';

/** Delegates a delayed leave for a fresh user via one of the three routes (default /delegate_delayed_leave). */
async function delegate(world: World, delayTimeout: number, opts: { route?: Route; delayId?: string } = {}): Promise<Member> {
  const n = ++memberCounter;
  const user = newUser(world.hs);
  const delayId = opts.delayId ?? `delay-${n}-${Math.random().toString(36).slice(2)}`;
  const delay = { delay_id: delayId, delay_timeout: delayTimeout };
  const ids = { roomId: `!call${n}:hs.test`, slotId: 'm.call#ROOM', device: `DEV${n}`, member: `member${n}` };
  const route = opts.route ?? '/delegate_delayed_leave';
  if (route === '/sfu/get') {
    const res = await world.agent.post(route, legacyBody(user, { room: ids.roomId, device_id: ids.device, ...delay }));
    expect(res.status).toBe(200);
    return { room: legacyRoomAlias(ids.roomId), identity: legacyIdentity(user.userId, ids.device), delayId };
  }
  const res = await world.agent.post(route, tokenBody(user, delay, ids));
  expect(res.status).toBe(200);
  return { room: roomAlias(ids.roomId, ids.slotId), identity: participantIdentity(user.userId, ids.device, ids.member), delayId };
}

/** Re-delegates the same (room, identity) with a new delay id, as a client does on DelayIdChanged. */
async function redelegate(world: World, tokenFor: { user: User; ids: Record<string, string> }, delayId: string) {
  return world.agent.post('/delegate_delayed_leave', tokenBody(tokenFor.user, { delay_id: delayId, delay_timeout: 60_000 }, tokenFor.ids));
}

async function hook(world: World, init: WebhookInit): Promise<void> {
  expect(await world.sfu.sendWebhook(`${world.agent.url}/sfu_webhook`, init)).toBe(200);
}

const joined = (m: Member, sid: string): WebhookInit => ({ event: 'participant_joined', room: m.room, identity: m.identity, sid });
const left = (m: Member, sid: string, reason: WebhookInit['disconnectReason'] = 'CLIENT_INITIATED'): WebhookInit => ({
  event: 'participant_left',
  room: m.room,
  identity: m.identity,
  sid,
  disconnectReason: reason,
});

/** Connects a delegated member through a join webhook and waits for the immediate restart. */
async function connect(world: World, m: Member, sid = 'PA_1'): Promise<void> {
  world.sfu.join(m.room, { identity: m.identity, sid });
  await hook(world, joined(m, sid));
  await world.hs.waitForRequests(m.delayId, 'restart', 1);
}

/** Asserts that nothing more arrives for (delay id, action) during a quiet period. */
async function expectNoMore(world: World, delayId: string, action: 'restart' | 'send', count: number, quietMs = 2500) {
  await sleep(quietMs);
  expect(world.hs.actionRequests(delayId, action)).toHaveLength(count);
}

describe.each(['/delegate_delayed_leave', '/get_token', '/sfu/get'] as const)('a delegation through %s', (route) => {
  it('sends when the participant never connects', async () => {
    w = await startWorld();
    const m = await delegate(w, 1500, { route });
    await w.hs.waitForRequests(m.delayId, 'send', 1, 15_000);
    expect(w.hs.actionRequests(m.delayId, 'restart')).toHaveLength(0);
  });

  it('restarts while the participant is present and sends once after it disconnects', async () => {
    w = await startWorld();
    const m = await delegate(w, 2000, { route });
    await connect(w, m);
    await w.hs.waitForRequests(m.delayId, 'restart', 2, 20_000);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_1', 'CONNECTION_TIMEOUT'));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
    await expectNoMore(w, m.delayId, 'send', 1);
  });
});

describe('participant lifecycle', () => {
  it('sends when the participant never connects', async () => {
    w = await startWorld();
    const m = await delegate(w, 1500);
    await w.hs.waitForRequests(m.delayId, 'send', 1, 15_000);
    expect(w.hs.actionRequests(m.delayId, 'restart')).toHaveLength(0);
    await expectNoMore(w, m.delayId, 'send', 1);
  });

  it('finds an already-joined participant by lookup, restarts, and sends on a clean leave', async () => {
    w = await startWorld();
    const user = newUser(w.hs);
    const ids = { roomId: '!lookup:hs.test', slotId: 'm.call#ROOM', device: 'D', member: 'm' };
    const m: Member = { room: roomAlias(ids.roomId, ids.slotId), identity: participantIdentity(user.userId, 'D', 'm'), delayId: 'lookup-delay' };
    w.sfu.join(m.room, { identity: m.identity, sid: 'PA_early' });
    expect((await w.agent.post('/get_token', tokenBody(user, { delay_id: m.delayId, delay_timeout: 60_000 }, ids))).status).toBe(200);
    await w.hs.waitForRequests(m.delayId, 'restart', 1);
    expect(w.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_early'));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
    await expectNoMore(w, m.delayId, 'send', 1);
  });

  differs('abort grace')('sends soon after a connection aborted before connecting', async () => {
    w = await startWorld();
    const m = await delegate(w, 600_000);
    await hook(w, { event: 'participant_connection_aborted', room: m.room, identity: m.identity, sid: 'PA_ab', disconnectReason: 'SIGNAL_CLOSE' });
    await w.hs.waitForRequests(m.delayId, 'send', 1, 20_000);
    expect(w.hs.actionRequests(m.delayId, 'restart')).toHaveLength(0);
  });

  it('sends when the connection aborts after connecting', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    await connect(w, m, 'PA_c');
    w.sfu.leave(m.room, m.identity);
    await hook(w, { event: 'participant_connection_aborted', room: m.room, identity: m.identity, sid: 'PA_c', disconnectReason: 'JOIN_FAILURE' });
    await w.hs.waitForRequests(m.delayId, 'send', 1);
  });

  it.each(['CLIENT_INITIATED', 'CONNECTION_TIMEOUT'] as const)('sends exactly once after a %s disconnect', async (reason) => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    await connect(w, m);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_1', reason));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
    await expectNoMore(w, m.delayId, 'send', 1);
  });

  it('keeps restarting a short delayed event while connected', async () => {
    w = await startWorld();
    const m = await delegate(w, 2000);
    await connect(w, m);
    await w.hs.waitForRequests(m.delayId, 'restart', 4, 20_000);
    expect(w.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
  });

  it('stops (and never sends) when restart answers 404', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    w.hs.script(m.delayId, 'restart', [], { status: 404, body: { errcode: 'M_NOT_FOUND', error: 'gone' } });
    await connect(w, m);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_1'));
    await expectNoMore(w, m.delayId, 'send', 0);
    expect(w.hs.actionRequests(m.delayId, 'restart')).toHaveLength(1);
  });

  it('treats a send 404 as done', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    w.hs.script(m.delayId, 'send', [], { status: 404, body: { errcode: 'M_NOT_FOUND', error: 'already sent' } });
    await connect(w, m);
    await hook(w, left(m, 'PA_1'));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
    await expectNoMore(w, m.delayId, 'send', 1);
  });

  it('honours Retry-After on a 429', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    w.hs.script(m.delayId, 'send', [{ status: 429, body: { errcode: 'M_LIMIT_EXCEEDED' }, headers: { 'retry-after': '2' } }]);
    await connect(w, m);
    await hook(w, left(m, 'PA_1'));
    const [first, second] = await w.hs.waitForRequests(m.delayId, 'send', 2, 20_000);
    expect(second!.at - first!.at).toBeGreaterThanOrEqual(1500);
    await expectNoMore(w, m.delayId, 'send', 2);
  });

  it('retries through a homeserver outage and sends exactly once after recovery', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    await connect(w, m);
    w.hs.setDown(true);
    await hook(w, left(m, 'PA_1'));
    await w.hs.waitForRequests(m.delayId, 'send', 3, 20_000);
    w.hs.setDown(false);
    await w.hs.waitForRequests(m.delayId, 'send', 4, 20_000);
    await sleep(3000);
    const sends = w.hs.actionRequests(m.delayId, 'send');
    expect(sends.filter((r) => r.status === 200)).toHaveLength(1);
    expect(sends[sends.length - 1]!.status).toBe(200);
  });

  it('replaces a job when the same participant delegates a new delay id', async () => {
    w = await startWorld();
    const user = newUser(w.hs);
    const ids = { roomId: '!replace:hs.test', slotId: 'm.call#ROOM', device: 'D', member: 'm' };
    const old: Member = { room: roomAlias(ids.roomId, ids.slotId), identity: participantIdentity(user.userId, 'D', 'm'), delayId: 'old-delay' };
    expect((await redelegate(w, { user, ids }, old.delayId)).status).toBe(200);
    await connect(w, old);
    expect((await redelegate(w, { user, ids }, 'new-delay')).status).toBe(200);
    await w.hs.waitForRequests('new-delay', 'restart', 1);
    await hook(w, left(old, 'PA_1'));
    await w.hs.waitForRequests('new-delay', 'send', 1);
    expect(w.hs.actionRequests('old-delay', 'send')).toHaveLength(0);
  });

  differs('replaced delegation')("cancels the replaced delegation's delayed event, once, and never a repeated one", async () => {
    w = await startWorld();
    const user = newUser(w.hs);
    const ids = { roomId: '!cancel:hs.test', slotId: 'm.call#ROOM', device: 'D', member: 'm' };
    const old: Member = { room: roomAlias(ids.roomId, ids.slotId), identity: participantIdentity(user.userId, 'D', 'm'), delayId: 'old-delay' };
    expect((await redelegate(w, { user, ids }, old.delayId)).status).toBe(200);
    await connect(w, old);
    // The first cancel meets a homeserver blip and is retried.
    w.hs.script(old.delayId, 'cancel', [{ status: 502 }]);
    expect((await redelegate(w, { user, ids }, 'new-delay')).status).toBe(200);
    const cancels = await w.hs.waitForRequests(old.delayId, 'cancel', 2, 20_000);
    expect(cancels.map((r) => r.status)).toEqual([502, 200]);
    // A client repeating its delegation hands over the delay id already held: nothing to cancel.
    expect((await redelegate(w, { user, ids }, 'new-delay')).status).toBe(200);
    await w.hs.waitForRequests('new-delay', 'restart', 2);
    await sleep(2000);
    expect(w.hs.actionRequests('new-delay', 'cancel')).toEqual([]);
    expect(w.hs.actionRequests(old.delayId, 'cancel')).toHaveLength(2);
    expect(w.hs.actionRequests(old.delayId, 'send')).toEqual([]);
  });

  it('keeps jobs of different participants independent', async () => {
    w = await startWorld();
    const a = await delegate(w, 2000);
    const b = await delegate(w, 2000);
    await connect(w, a, 'PA_a');
    await connect(w, b, 'PA_b');
    w.sfu.leave(a.room, a.identity);
    await hook(w, left(a, 'PA_a'));
    await w.hs.waitForRequests(a.delayId, 'send', 1);
    const restartsB = w.hs.actionRequests(b.delayId, 'restart').length;
    await w.hs.waitForRequests(b.delayId, 'restart', restartsB + 2, 20_000);
    expect(w.hs.actionRequests(b.delayId, 'send')).toHaveLength(0);
  });

  differs('sessions by sid')('ignores the leave of a stale session after a rejoin', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    await connect(w, m, 'PA_old');
    w.sfu.join(m.room, { identity: m.identity, sid: 'PA_new' });
    await hook(w, joined(m, 'PA_new'));
    await hook(w, left(m, 'PA_old', 'DUPLICATE_IDENTITY'));
    await hook(w, left(m, 'PA_old', 'CLIENT_INITIATED'));
    await expectNoMore(w, m.delayId, 'send', 0);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_new'));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
  });

  it('deduplicates a resent webhook (same id)', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    await connect(w, m);
    const init = { ...left(m, 'PA_1'), id: 'EV_dup' };
    await hook(w, init);
    await hook(w, init);
    await w.hs.waitForRequests(m.delayId, 'send', 1);
    await expectNoMore(w, m.delayId, 'send', 1);
  });

  differs('additions')('counts a resent webhook as a duplicate', async () => {
    w = await startWorld();
    const m = await delegate(w, 60_000);
    const init = { ...joined(m, 'PA_1'), id: 'EV_dup_joined' };
    await hook(w, init);
    await hook(w, init);
    await waitForMetric(w, 'lastwill_agent_webhooks_total', { verdict: 'duplicate' }, 1);
    expect(await w.agent.metric('lastwill_agent_webhooks_total', { verdict: 'accepted' })).toBe(1);
  });

  it('catches a missed webhook with the sanity poll', async () => {
    w = await startWorld({ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '1' });
    const m = await delegate(w, 60_000);
    await connect(w, m);
    // Once LiveKit has been asked and has shown the participant present (lk-jwt-service polls
    // only after that; see the next test), it vanishes without a webhook.
    const seenPresent = () => w!.sfu.calls.some((c) => c.room === m.room && c.status === 200 && c.method !== 'CreateRoom');
    await waitFor('a successful presence lookup', seenPresent, { timeoutMs: 20_000, intervalMs: 25 });
    w.sfu.leave(m.room, m.identity);
    await w.hs.waitForRequests(m.delayId, 'send', 1, 20_000);
  });

  differs('sanity poll')('polls a participant who joined by webhook and vanished before any lookup', async () => {
    w = await startWorld({ LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS: '1' });
    const m = await delegate(w, 60_000);
    // Joined by webhook, gone from LiveKit before any lookup saw it, and its leave webhook lost.
    await hook(w, joined(m, 'PA_1'));
    await w.hs.waitForRequests(m.delayId, 'restart', 1);
    await w.hs.waitForRequests(m.delayId, 'send', 1, 20_000);
  });
});

describe('restarts of the agent', () => {
  differs('restore')('after SIGKILL, sends for a participant who left meanwhile and keeps the one who stayed', async () => {
    w = await startWorld();
    // A restored job restarts at its normal time (80 % of the delay after its last restart), so a
    // short delay brings that restart within the wait below.
    const gone = await delegate(w, 20_000);
    const stays = await delegate(w, 20_000);
    await connect(w, gone, 'PA_g');
    await connect(w, stays, 'PA_s');
    await w.agent.proc.kill();
    w.sfu.leave(gone.room, gone.identity);
    const restartsBefore = w.hs.actionRequests(stays.delayId, 'restart').length;
    await w.restartAgent();
    await w.hs.waitForRequests(gone.delayId, 'send', 1, 20_000);
    await w.hs.waitForRequests(stays.delayId, 'restart', restartsBefore + 1, 20_000);
    await expectNoMore(w, stays.delayId, 'send', 0);
  });

  it('a connected job survives a SIGKILL: it keeps restarting, then sends on the disconnect', async () => {
    w = await startWorld();
    // Short, so the restored job's next scheduled restart falls within the wait below.
    const m = await delegate(w, 10_000);
    await connect(w, m);
    await w.agent.proc.kill();
    const restarts = w.hs.actionRequests(m.delayId, 'restart').length;
    await w.restartAgent();
    await w.hs.waitForRequests(m.delayId, 'restart', restarts + 1, 20_000);
    expect(w.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    w.sfu.leave(m.room, m.identity);
    await hook(w, left(m, 'PA_1'));
    await w.hs.waitForRequests(m.delayId, 'send', 1);
  });

  differs('shutdown')('SIGTERM sends nothing and keeps the jobs', async () => {
    w = await startWorld();
    // Short, so the restored job's next scheduled restart falls within the wait below.
    const m = await delegate(w, 20_000);
    await connect(w, m);
    w.agent.proc.signal('SIGTERM');
    const exit = await w.agent.proc.exited;
    expect(exit.code).toBe(143);
    expect(w.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
    const restarts = w.hs.actionRequests(m.delayId, 'restart').length;
    await w.restartAgent();
    await w.hs.waitForRequests(m.delayId, 'restart', restarts + 1, 20_000);
    expect(w.hs.actionRequests(m.delayId, 'send')).toHaveLength(0);
  });

  it('drops a connected job whose event ran out while the agent was down, without any call', async () => {
    w = await startWorld();
    const m = await delegate(w, 2000);
    await connect(w, m);
    await w.agent.proc.kill();
    w.sfu.leave(m.room, m.identity);
    await sleep(3000);
    const restarts = w.hs.actionRequests(m.delayId, 'restart').length;
    await w.restartAgent();
    await expectNoMore(w, m.delayId, 'send', 0);
    expect(w.hs.actionRequests(m.delayId, 'restart')).toHaveLength(restarts);
  });

  it('drops a never-connected job whose wait ran out while the agent was down, without any call', async () => {
    w = await startWorld();
    const m = await delegate(w, 1500);
    await w.agent.proc.kill();
    await sleep(2500);
    await w.restartAgent();
    await expectNoMore(w, m.delayId, 'send', 0, 3000);
    expect(w.hs.actionRequests(m.delayId)).toEqual([]);
  });

  differs('additions')('counts jobs dropped at a restore as expired, and purges them', async () => {
    w = await startWorld({ LASTWILL_AGENT_ENGINE_TERMINAL_RETENTION_MS: '1000' });
    await delegate(w, 1500);
    const connected = await delegate(w, 2000);
    await connect(w, connected);
    await w.agent.proc.kill();
    await sleep(3000);
    await w.restartAgent();
    await waitForMetric(w, 'lastwill_agent_job_transitions_total', { to: 'expired' }, 2);
    await waitForMetric(w, 'lastwill_agent_jobs', {}, 0);
  });
});

/** Waits (generously) until a metric's sum over the matching series reaches `value`. */
async function waitForMetric(world: World, name: string, labels: Record<string, string>, value: number): Promise<void> {
  for (let i = 0; i < 100 && (await world.agent.metric(name, labels)) !== value; i++) await sleep(100);
  expect(await world.agent.metric(name, labels)).toBe(value);
}
