import { afterEach, describe, expect, it } from 'vitest';

import type { Delegation } from '../../../src/agent/contracts.js';
import type { EngineSettings } from '../../../src/agent/jobs/index.js';
import { FakeClock } from '../../support/fake-clock.js';
import { delegation as delegationOf, makeRig, type Rig, settle, T0, TempDirs } from './harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

const HOUR = 3_600_000;
/** Next periodic restart with the harness's jitter (random 0.5): 80 % of the delay × 0.975. */
const nextRestart = (delayMs: number) => Math.round(0.8 * delayMs * 0.975);
/** The urgency window: max(10 % of the delay, 30 s). */
const urgentWindow = (delayMs: number) => Math.max(0.1 * delayMs, 30_000);

const delegation = (identity: string, delayTimeoutMs = HOUR): Delegation =>
  delegationOf({ livekitRoom: `room-${identity.length % 7}`, identity, delayId: `d-${identity}`, delayTimeoutMs });

/** Delegates every job and lets all of them join at the current time. */
async function joinAll(rig: Rig, jobs: Delegation[]): Promise<void> {
  await Promise.all(jobs.map((d) => rig.engine.delegate(d)));
  await settle();
  for (const d of jobs) {
    const session = { identity: d.identity, sid: `s-${d.identity}`, joinedAtMs: rig.clock.now() };
    rig.engine.onParticipant({ kind: 'joined', livekitRoom: d.livekitRoom, session });
  }
  await settle();
  expect(jobs.filter((d) => rig.state(d.livekitRoom, d.identity) !== 'connected')).toEqual([]);
}

/** Restarts of one job, as offsets from T0. */
const restartsOf = (rig: Rig, d: Delegation) => rig.actions.of('restart', d.delayId).map((c) => c.at - T0);

/** A second engine on the same store at `atMs`, every participant still in its room. */
async function restoreAt(first: Rig, atMs: number, jobs: Delegation[], settings: Partial<EngineSettings> = {}): Promise<Rig> {
  await first.advance(0);
  const next = await makeRig(dirs, { dbPath: first.dbPath, clock: new FakeClock(atMs), start: false, settings });
  for (const d of jobs) {
    const room = next.presence.rooms.get(d.livekitRoom) ?? [];
    next.presence.set(d.livekitRoom, [...room, { identity: d.identity, sid: `s-${d.identity}` }]);
  }
  await next.engine.start();
  await next.advance(0);
  return next;
}

describe('restore keeps each connected job on its restart schedule', () => {
  it('restarts at the normal time when it is not due, at once when it is due or unconfirmed', async () => {
    const a = await makeRig(dirs);
    const confirmed = delegation('confirmed');
    const overdue = delegation('overdue-restart', 600_000);
    await joinAll(a, [confirmed, overdue]);
    // The first restart of this one never answered before the crash: its deadline is a guess.
    a.actions.hold.restart = true;
    const unconfirmed = delegation('unconfirmed-x');
    await joinAll(a, [unconfirmed]);
    expect(a.actions.held).toHaveLength(1);

    const restoredAt = 500_000;
    const b = await restoreAt(a, T0 + restoredAt, [confirmed, overdue, unconfirmed]);
    expect(restartsOf(b, confirmed)).toEqual([]);
    // Due at 468 s (80 % of 10 min, jittered), before the restore: restarted promptly.
    expect(nextRestart(600_000)).toBeLessThan(restoredAt);
    expect(restartsOf(b, overdue)).toEqual([restoredAt]);
    expect(restartsOf(b, unconfirmed)).toEqual([restoredAt]);
    // Reconciliation is not deferred: every room was asked at once.
    expect(new Set(b.presence.calls.map((c) => c.at - T0))).toEqual(new Set([restoredAt]));
    expect(b.presence.calls.length).toBe(new Set([confirmed, overdue, unconfirmed].map((d) => d.livekitRoom)).size);

    await b.advance(HOUR);
    expect(restartsOf(b, confirmed)[0]).toBe(nextRestart(HOUR));
    expect(b.engine.counts()).toMatchObject({ connected: 3, expired: 0 });
  });

  it('a restore of more jobs than the pacing could restart in one delay expires none', async () => {
    const jobs = Array.from({ length: 1000 }, (_, i) => delegation(`id-${i}`));
    const a = await makeRig(dirs);
    await joinAll(a, jobs);
    await a.advance(0);
    expect(a.actions.of('restart')).toHaveLength(1000);

    // 1 restart per second: restarting all 1000 at once would take 1000 s per round.
    const b = await restoreAt(a, T0 + 60_000, jobs, { pacing: { perSecond: 1, burst: 1 } });
    expect(b.actions.of('restart')).toHaveLength(0);
    await b.advance(2 * HOUR);
    expect(b.engine.counts()).toMatchObject({ connected: 1000, expired: 0 });
    for (const d of jobs) {
      const [first] = restartsOf(b, d);
      expect(first).toBeGreaterThanOrEqual(nextRestart(HOUR));
      expect(first).toBeLessThanOrEqual(HOUR - urgentWindow(HOUR));
    }
  });
});

describe('deadline-aware restart pacing', () => {
  it('a restart near its deadline bypasses the pacing; demand above the pacing expires nothing', async () => {
    // One restart per 100 s, far below the demand of 100 jobs with 1 h delays.
    const rig = await makeRig(dirs, { settings: { pacing: { perSecond: 0.01, burst: 1 } } });
    const jobs = Array.from({ length: 100 }, (_, i) => delegation(`p-${i}`));
    await joinAll(rig, jobs);
    const urgentAt = HOUR - urgentWindow(HOUR);
    await rig.advance(urgentAt - 1);
    const paced = rig.actions.of('restart').length;
    expect(paced).toBeLessThanOrEqual(1 + urgentAt / 100_000 + 1);
    await rig.advance(1);
    // Every restart still queued went out the moment its deadline came near.
    expect(jobs.filter((d) => restartsOf(rig, d).length === 0)).toEqual([]);
    const late = rig.actions.of('restart').slice(paced);
    expect(late.length).toBeGreaterThan(50);
    expect(late.every((c) => c.at === T0 + urgentAt)).toBe(true);

    await rig.advance(4 * HOUR);
    expect(rig.engine.counts()).toMatchObject({ connected: 100, expired: 0 });
    // Every job kept being restarted, each restart within the previous one's deadline.
    for (const d of jobs) {
      const times = restartsOf(rig, d);
      expect(times.length).toBeGreaterThanOrEqual(5);
      times.slice(1).forEach((t, i) => expect(t - times[i]!).toBeLessThan(HOUR));
    }
  });

  it('short delays under pacing far below demand expire nothing', async () => {
    // The benchmark's case: restarts every ~16 s for 200 jobs is 12.5/s against 1/s.
    const rig = await makeRig(dirs, { settings: { pacing: { perSecond: 1, burst: 5 } } });
    const jobs = Array.from({ length: 200 }, (_, i) => delegation(`s-${i}`, 20_000));
    await joinAll(rig, jobs);
    await rig.advance(120_000);
    expect(rig.engine.counts()).toMatchObject({ connected: 200, expired: 0 });
    expect(rig.actions.of('restart').length).toBeGreaterThanOrEqual(200 * 6);
  });

  it('a near-deadline restart still honours a 429 from the homeserver', async () => {
    const rig = await makeRig(dirs);
    const d = delegation('limited', 100_000);
    await joinAll(rig, [d]);
    // From the next restart on, the homeserver answers 429 with Retry-After 20 s, three times.
    for (let i = 0; i < 3; i++) rig.actions.script.restart.push({ kind: 'rate_limited', retryAfterMs: 20_000 });
    await rig.advance(100_000);
    // Urgent since 70 s (30 s window), yet each retry waits for the Retry-After; the homeserver
    // is the one that lets the event expire at 100 s.
    expect(restartsOf(rig, d)).toEqual([0, 78_000, 98_000]);
    expect(rig.state(d.livekitRoom, d.identity)).toBe('expired');
  });
});
