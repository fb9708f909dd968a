import { afterEach, describe, expect, it } from 'vitest';

import type { Delegation } from '../../../src/agent/contracts.js';
import { delegation as delegationOf, GRACE_MS, makeRig, settle, T0, TempDirs } from './harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

const delegation = (room: string, identity: string, serverName = 'hs.example'): Delegation =>
  delegationOf({ livekitRoom: room, identity, delayId: `d-${identity}`, delayTimeoutMs: 3_600_000, serverName });

describe('restart pacing per homeserver', () => {
  it('turns a burst of 1000 joins into a paced stream, without holding back sends', async () => {
    const rig = await makeRig(dirs, { settings: { pacing: { perSecond: 50, burst: 20 } } });
    const jobs = Array.from({ length: 1000 }, (_, i) => delegation(`room-${i % 10}`, `id-${i}`));
    jobs.push(delegation('room-x', 'elsewhere', 'other.example'));
    await Promise.all(jobs.map((d) => rig.engine.delegate(d)));
    await settle();
    // One lookup per room, however many jobs it holds.
    expect(rig.presence.calls).toHaveLength(11);

    for (const d of jobs) {
      const session = { identity: d.identity, sid: `s-${d.identity}` };
      rig.engine.onParticipant({ kind: 'joined', livekitRoom: d.livekitRoom, session });
    }
    await settle();
    expect(rig.engine.counts().connected).toBe(1001);
    const paced = () =>
      rig.actions.calls.filter((c) => c.action === 'restart' && c.serverName === 'hs.example');
    expect(paced()).toHaveLength(20);
    // Another homeserver is not stuck behind hs.example's queue.
    expect(rig.actions.of('restart', 'd-elsewhere')).toHaveLength(1);

    // A queued participant leaves: when the disconnect grace ends its send goes out at once, not
    // paced behind the restarts, and its restart never happens.
    const session = { identity: 'id-999', sid: 's-id-999' };
    rig.engine.onParticipant({ kind: 'left', livekitRoom: 'room-9', session });
    await settle();
    expect(GRACE_MS).toBeLessThanOrEqual(1_000);
    await rig.advance(1_000);
    expect(rig.actions.of('send').map((c) => [c.delayId, c.at])).toEqual([['d-id-999', T0 + GRACE_MS]]);
    expect(paced()).toHaveLength(70);
    // The rest of hs.example's wait behind its rate; the one that left no longer does.
    expect(rig.engine.pacingCounts()).toMatchObject({ queued: 1001 - 1 - 70 - 1, inFlight: 0 });
    await rig.advance(9_000);
    expect(paced()).toHaveLength(520);
    await rig.advance(20_000);
    expect(paced()).toHaveLength(999);
    expect(rig.actions.of('restart', 'd-id-999')).toHaveLength(0);
    // Every restart went out: nothing is left counted as waiting or in flight.
    expect(rig.engine.pacingCounts()).toEqual({ queued: 0, urgent: 0, inFlight: 0, paused: 0 });
    // Never more than the rate plus the burst in any one second.
    const perSecond = new Map<number, number>();
    for (const c of paced()) {
      const second = Math.floor((c.at - T0) / 1000);
      perSecond.set(second, (perSecond.get(second) ?? 0) + 1);
    }
    for (const n of perSecond.values()) expect(n).toBeLessThanOrEqual(70);
    // Every due time of every job sits in one heap behind one timer, and the engine's own
    // (pacing, purge, polls) in another.
    expect(rig.clock.pending).toBeLessThanOrEqual(2);
  });
});

describe('restarts in flight per homeserver', () => {
  it('caps them, serves urgent restarts first when a slot frees, and never holds back a send', async () => {
    const rig = await makeRig(dirs, { settings: { maxRestartsInFlight: 4, pacing: { perSecond: 1e6, burst: 1e6 } } });
    rig.actions.hold.restart = true;
    const jobs = Array.from({ length: 20 }, (_, i) => delegation(`room-${i % 2}`, `id-${i}`));
    // One job with a short delay: its first restart is urgent from the start.
    const urgent = { ...delegation('room-u', 'urgent'), delayTimeoutMs: 20_000 };
    await Promise.all(jobs.map((d) => rig.engine.delegate(d)));
    await settle();
    for (const d of jobs) {
      rig.engine.onParticipant({ kind: 'joined', livekitRoom: d.livekitRoom, session: { identity: d.identity, sid: `s-${d.identity}` } });
    }
    await settle();
    expect(rig.actions.of('restart')).toHaveLength(4);
    await rig.engine.delegate(urgent);
    rig.engine.onParticipant({ kind: 'joined', livekitRoom: 'room-u', session: { identity: 'urgent', sid: 's-u' } });
    await settle();
    expect(rig.actions.of('restart')).toHaveLength(4);

    // A participant whose restart waits leaves: its send goes out at once.
    rig.engine.onParticipant({ kind: 'left', livekitRoom: 'room-1', session: { identity: 'id-19', sid: 's-id-19' } });
    await rig.advance(GRACE_MS);
    expect(rig.actions.of('send').map((c) => c.delayId)).toEqual(['d-id-19']);

    // The first free slot goes to the urgent restart, ahead of 15 paced ones.
    rig.actions.held.shift()!.resolve({ kind: 'ok' });
    await settle();
    expect(rig.actions.of('restart').map((c) => c.delayId).slice(4)).toEqual(['d-urgent']);
    // Every other restart follows as slots free, never more than 4 at once.
    while (rig.actions.held.length > 0) {
      expect(rig.actions.held.length).toBeLessThanOrEqual(4);
      rig.actions.held.shift()!.resolve({ kind: 'ok' });
      await settle();
    }
    expect(new Set(rig.actions.of('restart').map((c) => c.delayId)).size).toBe(20);
    expect(rig.engine.pacingCounts()).toEqual({ queued: 0, urgent: 0, inFlight: 0, paused: 0 });
    expect(rig.engine.counts().connected).toBe(20);
  });
});
