import { DatabaseSync } from 'node:sqlite';
import { Writable } from 'node:stream';

import { afterEach, describe, expect, it } from 'vitest';

import { createLogger } from '../../../src/lib/logger.js';
import { FakeClock } from '../../support/fake-clock.js';
import { delegation, GRACE_MS, IDENTITY, makeRig, type Rig, ROOM, settle, T0, TempDirs } from './harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

const sends = (rig: Rig, delayId?: string) => rig.actions.of('send', delayId).length;
const restarts = (rig: Rig, delayId?: string) => rig.actions.of('restart', delayId).length;

/** A left of the session, then the whole disconnect grace (LiveKit lists nobody by default). */
async function leave(rig: Rig, sid = 'S1'): Promise<void> {
  await rig.signal({ kind: 'left', livekitRoom: ROOM, sid });
  await rig.advance(GRACE_MS);
}

async function connected(rig: Rig, delayTimeoutMs = 100_000, sid = 'S1'): Promise<void> {
  await rig.delegate({ delayTimeoutMs });
  await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid, joinedAtMs: rig.clock.now() });
  expect(rig.state()).toBe('connected');
}

describe('a participant that never connects', () => {
  it('is hung up after the delay when it is shorter than the maximum wait', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ delayTimeoutMs: 10_000 });
    await rig.advance(9_999);
    expect(rig.state()).toBe('waiting');
    expect(sends(rig)).toBe(0);
    // It was looked up at once and again with backoff, never restarted.
    expect(rig.presence.calls[0]).toEqual({ room: ROOM, at: T0 });
    expect(rig.presence.calls.length).toBeGreaterThan(3);
    await rig.advance(1);
    expect(rig.actions.calls).toEqual([
      { action: 'send', serverName: 'hs.example', delayId: 'syd_delay_one', at: T0 + 10_000 },
    ]);
    expect(rig.state()).toBe('sent');
  });

  it('is hung up after maxWaitingMs when the delay is longer', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ delayTimeoutMs: 4 * 3_600_000 });
    await rig.advance(3_600_000 - 1);
    expect(sends(rig)).toBe(0);
    await rig.advance(1);
    expect(sends(rig)).toBe(1);
    expect(restarts(rig)).toBe(0);
  });

  it('is connected as soon as the lookup finds it, and restarted at once', async () => {
    const rig = await makeRig(dirs);
    rig.presence.set(ROOM, [{ identity: 'someone-else', sid: 'X' }, { identity: IDENTITY, sid: 'S7' }]);
    await rig.delegate();
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S7' });
    expect(rig.actions.calls).toEqual([
      { action: 'restart', serverName: 'hs.example', delayId: 'syd_delay_one', at: T0 },
    ]);
  });

  it('keeps looking while LiveKit fails, without sending before the wait ends', async () => {
    const rig = await makeRig(dirs);
    rig.presence.failing = true;
    await rig.delegate({ delayTimeoutMs: 3_600_000 });
    await rig.advance(600_000);
    expect(sends(rig)).toBe(0);
    const failures = rig.presence.calls.length;
    expect(failures).toBeGreaterThan(5);
    rig.presence.failing = false;
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S1' }]);
    await rig.advance(60_000);
    expect(rig.state()).toBe('connected');
    expect(sends(rig)).toBe(0);
  });

  it('shares one listParticipants per room among a burst of delegations', async () => {
    const rig = await makeRig(dirs);
    rig.presence.set(ROOM, [{ identity: 'id-3', sid: 'S3' }]);
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        rig.engine.delegate({
          livekitRoom: ROOM,
          identity: `id-${i}`,
          delayId: `d${i}`,
          delayTimeoutMs: 100_000,
          serverName: 'hs.example',
          userId: '@u:hs.example',
          source: 'get_token',
        }),
      ),
    );
    await rig.advance(0);
    expect(rig.presence.calls).toHaveLength(1);
    expect(rig.engine.counts()).toMatchObject({ waiting: 49, connected: 1 });
    expect(rig.state(ROOM, 'id-3')).toBe('connected');
  });
});

describe('a session that ends before the participant is seen connected', () => {
  it('is caught when the client retries within the grace period', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ delayTimeoutMs: 3_600_000 });
    await rig.signal({ kind: 'aborted', livekitRoom: ROOM, sid: 'X1', disconnectReason: 'SIGNAL_CLOSE' });
    expect(rig.engine.get(ROOM, IDENTITY)?.deadlineMs).toBe(T0 + 30_000);
    await rig.advance(5_000);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'X1' }, { identity: IDENTITY, sid: 'X2' }]);
    await rig.advance(5_000);
    // X1 is known to have ended; X2 is the retry.
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'X2' });
    await rig.advance(120_000);
    expect(sends(rig)).toBe(0);
  });

  it('is hung up after the grace period when the client does not come back', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ delayTimeoutMs: 3_600_000 });
    await rig.advance(1_000);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'X1', disconnectReason: 'JOIN_FAILURE' });
    await rig.advance(29_999);
    expect(sends(rig)).toBe(0);
    await rig.advance(1);
    expect(sends(rig)).toBe(1);
    expect(rig.state()).toBe('sent');
  });

  it('a participant aborted after connecting is hung up after the disconnect grace', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    await rig.advance(2_000);
    await rig.signal({ kind: 'aborted', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'JOIN_FAILURE' });
    await rig.advance(GRACE_MS);
    expect(rig.actions.of('send')).toEqual([
      { action: 'send', serverName: 'hs.example', delayId: 'syd_delay_one', at: T0 + 2_000 + GRACE_MS },
    ]);
    expect(rig.state()).toBe('sent');
  });
});

describe('disconnects', () => {
  for (const reason of ['CLIENT_INITIATED', 'CONNECTION_TIMEOUT', undefined]) {
    it(`a left of the current session (${reason ?? 'no reason'}) sends after the grace`, async () => {
      const rig = await makeRig(dirs);
      await connected(rig);
      await rig.advance(5_000);
      const lookups = rig.presence.calls.length;
      await rig.signal({
        kind: 'left',
        livekitRoom: ROOM,
        sid: 'S1',
        ...(reason ? { disconnectReason: reason } : {}),
      });
      expect(rig.state()).toBe('leaving');
      await rig.advance(GRACE_MS - 1);
      expect(sends(rig)).toBe(0);
      await rig.advance(1);
      // One lookup at the grace's end found nobody.
      expect(rig.presence.calls.slice(lookups)).toEqual([{ room: ROOM, at: T0 + 5_000 + GRACE_MS }]);
      expect(rig.actions.of('send').map((c) => c.at)).toEqual([T0 + 5_000 + GRACE_MS]);
      expect(rig.state()).toBe('sent');
      // Latency counts from the left webhook, grace included.
      expect(rig.disconnectToSend).toEqual([GRACE_MS]);
      await rig.advance(1_000_000);
      expect(rig.actions.calls).toHaveLength(2);
    });
  }

  it('restarts at 80 % of the delay, each success extending the deadline', async () => {
    const rig = await makeRig(dirs);
    await connected(rig, 10_000);
    await rig.advance(30_000);
    // 0.8 × 10 s less the (deterministic) 2.5 % jitter.
    expect(rig.actions.of('restart').map((c) => c.at - T0)).toEqual([0, 7_800, 15_600, 23_400]);
    expect(rig.engine.get(ROOM, IDENTITY)?.deadlineMs).toBe(T0 + 33_400);
    await leave(rig);
    expect(sends(rig)).toBe(1);
  });

  it('jitters restarts so jobs do not synchronise', async () => {
    let seed = 1;
    const rig = await makeRig(dirs, { random: () => (seed = (seed * 9301 + 49297) % 233280) / 233280 });
    await rig.delegate({ identity: 'a', delayTimeoutMs: 10_000 });
    await rig.delegate({ identity: 'b', delayTimeoutMs: 10_000 });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity: 'a', sid: 'A' });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity: 'b', sid: 'B' });
    await rig.advance(8_000);
    const second = rig.actions.of('restart').slice(2).map((c) => c.at - T0);
    expect(second).toHaveLength(2);
    expect(second[0]).not.toBe(second[1]);
    for (const at of second) {
      expect(at).toBeGreaterThanOrEqual(7_600);
      expect(at).toBeLessThanOrEqual(8_000);
    }
  });

  it('a restart 404 ends the job as aborted without a send', async () => {
    const rig = await makeRig(dirs);
    rig.actions.script.restart.push({ kind: 'ok' }, { kind: 'not_found' });
    await connected(rig, 10_000);
    await rig.advance(100_000);
    expect(rig.state()).toBe('aborted');
    expect(restarts(rig)).toBe(2);
    expect(sends(rig)).toBe(0);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1' });
    expect(sends(rig)).toBe(0);
  });

  it('an unresolvable homeserver on restart aborts the job', async () => {
    const rig = await makeRig(dirs);
    rig.actions.script.restart.push({ kind: 'unresolvable', detail: 'no .well-known' });
    await rig.delegate();
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1' });
    expect(rig.transitions.filter((t) => t.from !== t.to).map((t) => t.to)).toEqual(['connected', 'aborted']);
    await rig.advance(600_000);
    expect(rig.actions.calls).toHaveLength(1);
  });

  it('a send 404 counts as sent', async () => {
    const rig = await makeRig(dirs);
    rig.actions.script.send.push({ kind: 'not_found' });
    await connected(rig);
    await leave(rig);
    expect(rig.state()).toBe('sent');
    await rig.advance(600_000);
    expect(sends(rig)).toBe(1);
  });

  it('restarts failing until the deadline end as expired, with no send', async () => {
    const rig = await makeRig(dirs);
    rig.actions.defaults.restart = { kind: 'transient', detail: '503' };
    await connected(rig, 20_000);
    await rig.advance(19_999);
    expect(rig.state()).toBe('connected');
    // Backoff 1 s × 1.5^n: 0, 1, 2.5, 4.75, 8.125, 13.19 s.
    expect(rig.actions.of('restart').map((c) => c.at - T0)).toEqual([0, 1_000, 2_500, 4_750, 8_125, 13_188]);
    await rig.advance(1);
    expect(rig.state()).toBe('expired');
    await rig.advance(600_000);
    expect(sends(rig)).toBe(0);
    expect(restarts(rig)).toBe(6);
  });
});

// A full reconnect of LiveKit's SDK leaves with the old sid, then joins with a new one.
describe('disconnect grace', () => {
  const left = (rig: Rig, sid = 'S1') =>
    rig.signal({ kind: 'left', livekitRoom: ROOM, sid, disconnectReason: 'CLIENT_INITIATED' });

  it('a rejoin within the grace sends nothing, and restarts go on as if nothing happened', async () => {
    const rig = await makeRig(dirs);
    await connected(rig, 10_000);
    await rig.advance(7_500);
    const lookups = rig.presence.calls.length;
    await left(rig);
    expect(rig.state()).toBe('leaving');
    // The restart due at 7.8 s runs during the grace.
    await rig.advance(400);
    expect(rig.actions.of('restart').map((c) => c.at - T0)).toEqual([0, 7_800]);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: rig.clock.now() });
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    await rig.advance(30_000);
    expect(sends(rig)).toBe(0);
    expect(rig.actions.of('restart').map((c) => c.at - T0)).toEqual([0, 7_800, 15_600, 23_400, 31_200]);
    // The rejoin answered the question the grace's lookup would have asked.
    expect(rig.presence.calls.length).toBe(lookups);
    await leave(rig, 'S2');
    expect(sends(rig)).toBe(1);
  });

  it('a rejoin whose webhook is missing is found by the lookup at the grace\'s end', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S1' }, { identity: IDENTITY, sid: 'S2' }]);
    await leave(rig);
    // S1 is known to have ended even though LiveKit still lists it; S2 is the rejoin.
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    expect(sends(rig)).toBe(0);
  });

  it('a rejoin while a send is in flight: the hang-up cannot be taken back', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    rig.actions.hold.send = true;
    await leave(rig);
    expect(rig.state()).toBe('sending');
    // The LiveKit SDK reconnected on its own (a new sid, no new delegation): the call goes on...
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: rig.clock.now() });
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    // ...but the send already on its way lands, and that ends the job.
    rig.actions.held[0]!.resolve({ kind: 'ok' });
    await rig.advance(0);
    expect(rig.state()).toBe('sent');
    await rig.advance(600_000);
    expect(sends(rig)).toBe(1);
    expect(restarts(rig)).toBe(1);
  });

  it('a rejoin while the send is retried through an outage keeps the call: restart, no send', async () => {
    // Found by the soak (seed 1): a frozen participant dropped by LiveKit, its send failing on a
    // homeserver answering 500, the participant back 20 s later, and the retried send hung it up.
    const rig = await makeRig(dirs);
    for (let i = 0; i < 10; i++) rig.actions.script.send.push({ kind: 'transient', detail: '500' });
    await connected(rig, 100_000);
    await leave(rig);
    await rig.advance(1_600);
    expect(rig.state()).toBe('sending');
    const tried = sends(rig);
    expect(tried).toBeGreaterThanOrEqual(2);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: rig.clock.now() });
    await rig.advance(0);
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    expect(restarts(rig)).toBe(2);
    await rig.advance(300_000);
    expect(sends(rig)).toBe(tried);
    expect(rig.state()).toBe('connected');
    rig.actions.script.send.length = 0; // the homeserver is back
    await leave(rig, 'S2');
    expect(rig.state()).toBe('sent');
    expect(sends(rig)).toBe(tried + 1);
  });

  it('a send that fails after the participant came back leaves the restart to do', async () => {
    const rig = await makeRig(dirs);
    await connected(rig, 100_000);
    rig.actions.hold.send = true;
    await leave(rig);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: rig.clock.now() });
    rig.actions.hold.send = false;
    rig.actions.held[0]!.resolve({ kind: 'transient', detail: '502' });
    await rig.advance(0);
    expect(rig.state()).toBe('connected');
    expect(restarts(rig)).toBe(2);
    await rig.advance(300_000);
    expect(sends(rig)).toBe(1);
    expect(rig.state()).toBe('connected');
  });

  it('a grace of 0 sends at once without asking LiveKit', async () => {
    const rig = await makeRig(dirs, { settings: { disconnectGraceMs: 0 } });
    await connected(rig);
    await rig.advance(3_000);
    const lookups = rig.presence.calls.length;
    await left(rig);
    expect(rig.actions.of('send').map((c) => c.at - T0)).toEqual([3_000]);
    expect(rig.transitions.filter((t) => t.from !== t.to).map((t) => t.to)).toEqual([
      'connected',
      'sending',
      'sent',
    ]);
    expect(rig.presence.calls.length).toBe(lookups);
    expect(rig.disconnectToSend).toEqual([0]);
  });

  it('a lookup that fails at the grace\'s end sends (unlike the sanity poll)', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    rig.presence.failing = true;
    await left(rig);
    await rig.advance(GRACE_MS);
    expect(rig.lookups.at(-1)).toBe('failed');
    expect(rig.actions.of('send').map((c) => c.at - T0)).toEqual([GRACE_MS]);
    expect(rig.state()).toBe('sent');
  });

  it('the event deadline still ends a job in its grace', async () => {
    const rig = await makeRig(dirs);
    rig.actions.defaults.restart = { kind: 'transient', detail: '503' };
    await connected(rig, 5_000);
    await rig.advance(4_500);
    await left(rig);
    await rig.advance(500);
    expect(rig.state()).toBe('expired');
    await rig.advance(60_000);
    expect(sends(rig)).toBe(0);
  });
});

describe('rate limits and outages', () => {
  it('a restart 429 honours Retry-After and pauses the whole homeserver', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ identity: 'a' });
    await rig.delegate({ identity: 'b' });
    await rig.delegate({ identity: 'c', serverName: 'other.example' });
    rig.actions.script.restart.push({ kind: 'rate_limited', retryAfterMs: 5_000 });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity: 'a', sid: 'A' });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity: 'b', sid: 'B' });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity: 'c', sid: 'C' });
    // a got the 429; b waits for the pause; c's homeserver is not affected.
    expect(rig.actions.calls.map((c) => [c.serverName, c.at - T0])).toEqual([
      ['hs.example', 0],
      ['other.example', 0],
    ]);
    await rig.advance(4_999);
    expect(restarts(rig)).toBe(2);
    await rig.advance(1);
    expect(rig.actions.calls.slice(2).map((c) => [c.serverName, c.at - T0])).toEqual([
      ['hs.example', 5_000],
      ['hs.example', 5_000],
    ]);
    expect(rig.engine.counts().connected).toBe(3);
  });

  it('a send 429 is retried after Retry-After', async () => {
    const rig = await makeRig(dirs);
    rig.actions.script.send.push({ kind: 'rate_limited', retryAfterMs: 3_000 });
    await connected(rig);
    await leave(rig);
    await rig.advance(2_999);
    expect(rig.state()).toBe('sending');
    await rig.advance(1);
    expect(rig.actions.of('send').map((c) => c.at - T0)).toEqual([GRACE_MS, GRACE_MS + 3_000]);
    expect(rig.state()).toBe('sent');
  });

  it('a homeserver outage during the send ends in exactly one successful send', async () => {
    const rig = await makeRig(dirs);
    for (let i = 0; i < 5; i++) rig.actions.script.send.push({ kind: 'transient', detail: '502' });
    rig.actions.script.send.push({ kind: 'unresolvable', detail: 'dns' });
    await connected(rig);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1' });
    await rig.advance(60_000);
    expect(rig.state()).toBe('sent');
    expect(sends(rig)).toBe(7);
    expect(rig.outcomes.filter((o) => o.action === 'send' && o.outcome === 'ok')).toHaveLength(1);
    await rig.advance(3_600_000);
    expect(sends(rig)).toBe(7);
  });

  it('a send outage longer than the deadline ends as expired', async () => {
    const rig = await makeRig(dirs);
    rig.actions.defaults.send = { kind: 'transient', detail: 'ECONNREFUSED' };
    await connected(rig, 10_000);
    await rig.advance(1_000);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1' });
    await rig.advance(8_999);
    expect(rig.state()).toBe('sending');
    await rig.advance(1);
    expect(rig.state()).toBe('expired');
    const count = sends(rig);
    await rig.advance(600_000);
    expect(sends(rig)).toBe(count);
  });
});

describe('replacement and independence', () => {
  it('a new delegation replaces the job and only the new delay id is used', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    const old = rig.engine.get(ROOM, IDENTITY)!.jobId;
    await rig.advance(1_000);
    const calls = rig.actions.calls.length;
    await rig.delegate({ delayId: 'syd_delay_two' });
    expect(rig.engine.getById(old)?.state).toBe('replaced');
    // The old delayed event is cancelled (it would end the new membership when it fires); the
    // replacement follows the session the old job followed and restarts at once.
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S1' });
    expect(rig.actions.calls.slice(calls).map((c) => [c.action, c.delayId]).sort()).toEqual([
      ['cancel', 'syd_delay_one'],
      ['restart', 'syd_delay_two'],
    ]);
    await leave(rig);
    expect(rig.actions.of('send').map((c) => c.delayId)).toEqual(['syd_delay_two']);
    expect(rig.actions.of('cancel')).toHaveLength(1);
    expect(rig.engine.counts()).toMatchObject({ replaced: 1, sent: 1, connected: 0, cancelling: 0 });
  });

  it('a repeated delegation with the same delay id cancels nothing', async () => {
    // Element Call asks /sfu/get again on every reconnect, with the delay id it already handed over.
    const rig = await makeRig(dirs);
    await connected(rig);
    const old = rig.engine.get(ROOM, IDENTITY)!.jobId;
    await rig.delegate({ delayId: 'syd_delay_one' });
    expect(rig.engine.getById(old)?.state).toBe('replaced');
    expect(rig.actions.of('cancel')).toEqual([]);
    expect(rig.outcomes.filter((o) => o.action === 'cancel')).toEqual([]);
    expect(rig.state()).toBe('connected');
  });

  it('cancels the replaced job of a waiting delegation too', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate();
    await rig.delegate({ delayId: 'syd_delay_two' });
    expect(rig.actions.of('cancel').map((c) => c.delayId)).toEqual(['syd_delay_one']);
    expect(rig.engine.counts()).toMatchObject({ replaced: 1, waiting: 1 });
  });

  it('retries a failing cancel with backoff and after Retry-After until it lands', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    const old = rig.engine.get(ROOM, IDENTITY)!.jobId;
    rig.actions.script.cancel.push(
      { kind: 'transient', detail: '502' },
      { kind: 'rate_limited', retryAfterMs: 20_000 },
      { kind: 'unresolvable', detail: 'NXDOMAIN' },
    );
    await rig.delegate({ delayId: 'syd_delay_two' });
    expect(rig.engine.getById(old)?.state).toBe('cancelling');
    await rig.advance(120_000);
    expect(rig.engine.getById(old)?.state).toBe('replaced');
    const at = rig.actions.of('cancel').map((c) => c.at - T0);
    expect(at).toHaveLength(4);
    // The 429's Retry-After is honoured to the millisecond.
    expect(at[2]! - at[1]!).toBe(20_000);
    expect(rig.outcomes.filter((o) => o.action === 'cancel').map((o) => o.outcome)).toEqual([
      'transient',
      'rate_limited',
      'unresolvable',
      'ok',
    ]);
    // The replacement kept its call meanwhile.
    expect(rig.state()).toBe('connected');
    expect(sends(rig)).toBe(0);
  });

  it('gives up cancelling once the old event has fired by itself', async () => {
    const rig = await makeRig(dirs);
    rig.actions.defaults.cancel = { kind: 'transient', detail: 'ECONNREFUSED' };
    await connected(rig, 10_000);
    const old = rig.engine.get(ROOM, IDENTITY)!.jobId;
    await rig.delegate({ delayId: 'syd_delay_two', delayTimeoutMs: 10_000 });
    await rig.advance(10_000);
    expect(rig.engine.getById(old)?.state).toBe('expired');
    const count = rig.actions.of('cancel').length;
    await rig.advance(600_000);
    expect(rig.actions.of('cancel')).toHaveLength(count);
  });

  it('a cancel that finds the event gone (404) ends the replaced job', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    const old = rig.engine.get(ROOM, IDENTITY)!.jobId;
    rig.actions.script.cancel.push({ kind: 'not_found' });
    await rig.delegate({ delayId: 'syd_delay_two' });
    expect(rig.engine.getById(old)?.state).toBe('replaced');
    expect(rig.actions.of('cancel')).toHaveLength(1);
  });

  it('discards a late restart result of the replaced job', async () => {
    const rig = await makeRig(dirs);
    rig.actions.hold.restart = true;
    await connected(rig);
    await rig.delegate({ delayId: 'syd_delay_two' });
    rig.actions.held[0]!.resolve({ kind: 'not_found' });
    rig.actions.held[1]!.resolve({ kind: 'ok' });
    await rig.advance(0);
    expect(rig.state()).toBe('connected');
    expect(rig.engine.counts()).toMatchObject({ connected: 1, replaced: 1, aborted: 0 });
  });

  it('a replacement of a waiting job waits with its own deadline', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate({ delayTimeoutMs: 10_000 });
    await rig.advance(5_000);
    await rig.delegate({ delayTimeoutMs: 10_000, delayId: 'syd_delay_two' });
    await rig.advance(9_999);
    expect(sends(rig)).toBe(0);
    await rig.advance(1);
    expect(rig.actions.of('send').map((c) => c.delayId)).toEqual(['syd_delay_two']);
  });

  it('a replacement still knows which session already ended', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate();
    await rig.signal({ kind: 'aborted', livekitRoom: ROOM, sid: 'X1' });
    await rig.delegate({ delayId: 'syd_delay_two' });
    // The ended session's join, delivered late, must not make the new job look connected.
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'X1' });
    expect(rig.state()).toBe('waiting');
    expect(restarts(rig)).toBe(0);
  });

  it('jobs of other identities and rooms are independent', async () => {
    const rig = await makeRig(dirs);
    for (const [room, identity, delayId] of [
      [ROOM, 'a', 'da'],
      [ROOM, 'b', 'db'],
      ['other-room', 'a', 'dc'],
    ] as const) {
      await rig.delegate({ livekitRoom: room, identity, delayId });
      await rig.signal({ kind: 'joined', livekitRoom: room, identity, sid: `${room}-${identity}` });
    }
    await rig.signal({ kind: 'left', livekitRoom: ROOM, identity: 'a', sid: `${ROOM}-a` });
    await rig.advance(GRACE_MS);
    expect(rig.actions.of('send').map((c) => c.delayId)).toEqual(['da']);
    expect(rig.state(ROOM, 'b')).toBe('connected');
    expect(rig.state('other-room', 'a')).toBe('connected');
    await rig.signal({ kind: 'left', livekitRoom: 'unknown-room', identity: 'b', sid: `${ROOM}-b` });
    expect(sends(rig)).toBe(1);
  });
});

describe('sessions', () => {
  it('a left for the old sid after a rejoin does not send', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: T0 + 10 });
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'CLIENT_INITIATED' });
    await rig.signal({ kind: 'aborted', livekitRoom: ROOM, sid: 'S0' });
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    expect(sends(rig)).toBe(0);
    await leave(rig, 'S2');
    expect(sends(rig)).toBe(1);
  });

  it('out of order: an older join arriving after a newer one is ignored', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate();
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: T0 - 1_000 });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1', joinedAtMs: T0 - 5_000 });
    expect(rig.engine.get(ROOM, IDENTITY)?.sid).toBe('S2');
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1' });
    expect(sends(rig)).toBe(0);
  });

  it('out of order: a join ordered by the webhook time when joinedAt is unknown', async () => {
    const rig = await makeRig(dirs);
    await rig.delegate();
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', createdAtMs: T0 - 1_000 });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1', createdAtMs: T0 - 5_000 });
    expect(rig.engine.get(ROOM, IDENTITY)?.sid).toBe('S2');
  });

  it('out of order: a newer session that ended before its join arrived is checked with LiveKit', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S2' }, { identity: IDENTITY, sid: 'S3' }]);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S2', joinedAtMs: T0 + 100 });
    // S2 has ended (LiveKit's list lags); S3 is the one that is there.
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S3' });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2', joinedAtMs: T0 + 100 });
    expect(rig.engine.get(ROOM, IDENTITY)?.sid).toBe('S3');
    expect(sends(rig)).toBe(0);
    rig.presence.set(ROOM, []);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S4', joinedAtMs: T0 + 200 });
    expect(sends(rig)).toBe(1);
  });

  it('DUPLICATE_IDENTITY with the new session present stays connected on it', async () => {
    const rig = await makeRig(dirs);
    await connected(rig, 10_000);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S2' }]);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'DUPLICATE_IDENTITY' });
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2' });
    await rig.advance(20_000);
    expect(sends(rig)).toBe(0);
    expect(restarts(rig)).toBe(3);
  });

  it('DUPLICATE_IDENTITY with nobody present sends', async () => {
    const rig = await makeRig(dirs);
    await connected(rig);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S1' }]);
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'DUPLICATE_IDENTITY' });
    expect(sends(rig)).toBe(1);
    expect(rig.state()).toBe('sent');
  });

  it('DUPLICATE_IDENTITY while LiveKit fails keeps restarting and asks again until it answers', async () => {
    const rig = await makeRig(dirs);
    await connected(rig, 10_000);
    rig.presence.failing = true;
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'DUPLICATE_IDENTITY' });
    await rig.advance(30_000);
    expect(sends(rig)).toBe(0);
    expect(rig.state()).toBe('connected');
    expect(restarts(rig)).toBe(4);
    expect(rig.presence.calls.length).toBeGreaterThan(4);
    rig.presence.failing = false;
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S2' }]);
    await rig.advance(60_000);
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    const calls = rig.presence.calls.length;
    await rig.advance(120_000);
    expect(rig.presence.calls.length).toBe(calls);
  });
});

describe('sanity poll', () => {
  const poll = { sanityCheckIntervalMs: 30_000 };

  it('catches a leave whose webhook was lost', async () => {
    const rig = await makeRig(dirs, { settings: poll });
    await connected(rig);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S1' }]);
    // A few rooms: each is polled one interval after it got its first connected job, and so on.
    await rig.advance(30_000);
    expect(rig.presence.calls.at(-1)).toEqual({ room: ROOM, at: T0 + 30_000 });
    expect(sends(rig)).toBe(0);
    rig.presence.set(ROOM, []);
    await rig.advance(30_000);
    expect(rig.actions.of('send').map((c) => c.at - T0)).toEqual([60_000]);
  });

  it('stretches the period so that all rooms together stay within the budget', async () => {
    const rig = await makeRig(dirs, { settings: { ...poll, sanityCheckMaxPerSecond: 10 } });
    const rooms = Array.from({ length: 1000 }, (_, i) => `room-${i}`);
    for (const room of rooms) {
      await rig.engine.delegate(delegation({ livekitRoom: room, delayTimeoutMs: 3_600_000 }));
      rig.presence.set(room, [{ identity: IDENTITY, sid: `S-${room}` }]);
    }
    await settle();
    for (const room of rooms) {
      rig.engine.onParticipant({ kind: 'joined', livekitRoom: room, session: { identity: IDENTITY, sid: `S-${room}` } });
    }
    await settle();
    expect(rig.engine.counts().connected).toBe(1000);
    const before = rig.presence.calls.length;
    await rig.advance(400_000);
    const polls = rig.presence.calls.slice(before);
    // 1000 rooms at 10/s: every room once per 100 s, never more than the budget in any second.
    const perSecond = new Map<number, number>();
    for (const c of polls) perSecond.set(Math.floor(c.at / 1000), (perSecond.get(Math.floor(c.at / 1000)) ?? 0) + 1);
    expect(Math.max(...perSecond.values())).toBeLessThanOrEqual(10);
    // The rooms due within a second go out together, at most one wake-up a second.
    expect(polls.every((c) => c.at % 1000 === 0)).toBe(true);
    const ofRoom0 = polls.filter((c) => c.room === 'room-0').map((c) => c.at - T0);
    expect(ofRoom0).toEqual([30_000, 130_000, 230_000, 330_000]);
    expect(polls.length).toBeGreaterThanOrEqual(3700);
    expect(sends(rig)).toBe(0);
  });

  it('adopts a rejoin that only the poll saw', async () => {
    const rig = await makeRig(dirs, { settings: poll });
    await connected(rig);
    rig.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S9' }]);
    await rig.advance(30_000);
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S9' });
    expect(sends(rig)).toBe(0);
  });

  it('a failing poll never sends', async () => {
    const rig = await makeRig(dirs, { settings: poll });
    await connected(rig, 60_000);
    rig.presence.failing = true;
    const okLookups = rig.lookups.length;
    await rig.advance(600_000);
    expect(rig.lookups.slice(okLookups).every((o) => o === 'failed')).toBe(true);
    expect(rig.lookups.length - okLookups).toBeGreaterThan(10);
    expect(sends(rig)).toBe(0);
    expect(rig.state()).toBe('connected');
    expect(restarts(rig)).toBeGreaterThan(10);
  });

  it('ignores a result for a job whose session changed while the poll was in flight', async () => {
    const rig = await makeRig(dirs, { settings: poll });
    await connected(rig);
    rig.presence.hold = true;
    await rig.advance(30_000);
    expect(rig.presence.held).toHaveLength(1);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S2' });
    rig.presence.held[0]!.resolve([]);
    await rig.advance(0);
    expect(rig.engine.get(ROOM, IDENTITY)).toMatchObject({ state: 'connected', sid: 'S2' });
    expect(sends(rig)).toBe(0);
  });

  it('asks once per room for all its connected jobs', async () => {
    const rig = await makeRig(dirs, { settings: poll });
    for (const identity of ['a', 'b', 'c']) {
      await rig.delegate({ identity, delayId: identity });
      await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity, sid: identity });
    }
    rig.presence.set(ROOM, ['a', 'b', 'c'].map((identity) => ({ identity, sid: identity })));
    const before = rig.presence.calls.length;
    await rig.advance(30_000);
    expect(rig.presence.calls.length - before).toBe(1);
  });
});

describe('durability and hygiene', () => {
  it('delegate() resolves only after the job is committed', async () => {
    const rig = await makeRig(dirs);
    await rig.engine.delegate({
      livekitRoom: ROOM,
      identity: IDENTITY,
      delayId: 'd',
      delayTimeoutMs: 5_000,
      serverName: 'hs.example',
      userId: '@a:hs.example',
      source: 'sfu_get',
    });
    const db = new DatabaseSync(rig.dbPath, { readOnly: true });
    try {
      expect(db.prepare('SELECT room, identity, state, delay_ms FROM jobs').all()).toEqual([
        { room: ROOM, identity: IDENTITY, state: 'waiting', delay_ms: 5_000 },
      ]);
    } finally {
      db.close();
    }
  });

  it('rejects invalid delays and delegations after stop()', async () => {
    const rig = await makeRig(dirs);
    await expect(rig.delegate({ delayTimeoutMs: 0 })).rejects.toMatchObject({ errcode: 'M_BAD_JSON' });
    await rig.engine.stop();
    await expect(rig.delegate()).rejects.toMatchObject({ status: 503 });
  });

  it('stop() sends nothing and keeps the jobs in the store', async () => {
    const clock = new FakeClock(T0);
    const rig = await makeRig(dirs, { clock });
    await connected(rig);
    await rig.delegate({ identity: 'never', delayId: 'w', delayTimeoutMs: 1_000 });
    const calls = rig.actions.calls.length;
    await rig.engine.stop();
    expect(clock.pending).toBe(0);
    rig.engine.onParticipant({ kind: 'left', livekitRoom: ROOM, session: { identity: IDENTITY, sid: 'S1' } });
    await rig.advance(10_000_000);
    expect(rig.actions.calls.length).toBe(calls);
    const clockAfter = new FakeClock(T0 + 5_000);
    const next = await makeRig(dirs, { dbPath: rig.dbPath, clock: clockAfter, start: false });
    next.presence.set(ROOM, [{ identity: IDENTITY, sid: 'S1' }]);
    await next.engine.start();
    await next.advance(0);
    expect(next.engine.counts()).toMatchObject({ connected: 1 });
    // Never connected and past its delay: the homeserver sent it; the restore makes no call for it.
    expect(next.state(ROOM, 'never')).toBe('expired');
    expect(next.actions.of('send', 'w')).toEqual([]);
  });

  it('never logs delay ids or tokens', async () => {
    let text = '';
    const sink = new Writable({
      write(chunk, _enc, cb) {
        text += String(chunk);
        cb();
      },
    });
    const rig = await makeRig(dirs, { log: createLogger({ level: 'trace' }, sink) });
    const detail = 'POST /delayed_events/secret-delay-id/send: 502';
    rig.actions.script.send.push({ kind: 'transient', detail });
    rig.presence.failing = true;
    await rig.delegate({ delayId: 'secret-delay-id', scopedToken: 'secret-scoped-token' });
    rig.presence.failing = false;
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1' });
    await rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1' });
    await rig.advance(10_000);
    expect(rig.actions.of('send')).toHaveLength(2);
    expect(rig.actions.calls[0]).toMatchObject({ scopedToken: 'secret-scoped-token' });
    expect(text).toContain('delegation accepted');
    expect(text).not.toContain('secret-scoped-token');
    // Failure details (which may quote URLs) are logged at debug only; at info nothing leaks.
    const infoAndAbove = text
      .split('\n')
      .filter((l) => l && (JSON.parse(l) as { level: number }).level >= 30)
      .join('\n');
    expect(infoAndAbove).not.toContain('secret-delay-id');
  });
});
