import { DatabaseSync } from 'node:sqlite';

import { afterEach, describe, expect, it } from 'vitest';

import { FakeClock } from '../../support/fake-clock.js';
import { ABORT_GRACE_MS, GRACE_MS, makeRig, type Rig, ROOM, T0, TempDirs } from './harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

const of = (rig: Rig, action: 'restart' | 'send', delayId: string) => rig.actions.of(action, delayId).length;

async function join(rig: Rig, identity: string, sid: string): Promise<void> {
  await rig.signal({ kind: 'joined', livekitRoom: ROOM, identity, sid, joinedAtMs: rig.clock.now() });
  expect(rig.state(ROOM, identity)).toBe('connected');
}

/** Opens a second engine on the same file while the first still runs: what kill -9 leaves. */
async function afterCrash(first: Rig, atMs: number, presence: Record<string, string>): Promise<Rig> {
  const next = await makeRig(dirs, { dbPath: first.dbPath, clock: new FakeClock(atMs), start: false });
  next.presence.set(
    ROOM,
    Object.entries(presence).map(([identity, sid]) => ({ identity, sid })),
  );
  await next.engine.start();
  await next.advance(0);
  return next;
}

describe('restore after a crash', () => {
  it('resumes every job with the time it has left and reconciles with LiveKit', async () => {
    const a = await makeRig(dirs);
    const delegate = (identity: string, delayTimeoutMs: number) =>
      a.delegate({ identity, delayId: `delay-${identity}`, delayTimeoutMs });
    await delegate('still-there', 100_000);
    await join(a, 'still-there', 'S1');
    await delegate('deadline-passed', 10_000);
    await join(a, 'deadline-passed', 'S2');
    await delegate('wait-over', 20_000);
    await delegate('wait-left', 4 * 3_600_000);
    await delegate('rejoined', 100_000);
    await join(a, 'rejoined', 'S6');
    await delegate('left-while-down', 100_000);
    await join(a, 'left-while-down', 'S7');
    await delegate('was-sending', 100_000);
    await join(a, 'was-sending', 'S3');
    a.actions.hold.send = true;
    await a.signal({ kind: 'left', livekitRoom: ROOM, identity: 'was-sending', sid: 'S3' });
    await a.advance(GRACE_MS);
    expect(a.state(ROOM, 'was-sending')).toBe('sending');

    const b = await afterCrash(a, T0 + 30_000, { 'still-there': 'S1', rejoined: 'S6b' });

    expect(b.state(ROOM, 'still-there')).toBe('connected');
    // Its last restart succeeded at T0, so the next one is not due yet: none at restore.
    expect([of(b, 'restart', 'delay-still-there'), of(b, 'send', 'delay-still-there')]).toEqual([0, 0]);
    // The homeserver already sent this one itself: no restart, no send.
    expect(b.state(ROOM, 'deadline-passed')).toBe('expired');
    expect(b.actions.calls.filter((c) => c.delayId === 'delay-deadline-passed')).toEqual([]);
    expect(b.state(ROOM, 'was-sending')).toBe('sent');
    expect(of(b, 'send', 'delay-was-sending')).toBe(1);
    // Never connected and its delay since the delegation ran out: the homeserver sent it itself.
    expect(b.state(ROOM, 'wait-over')).toBe('expired');
    expect(b.actions.calls.filter((c) => c.delayId === 'delay-wait-over')).toEqual([]);
    expect(b.engine.get(ROOM, 'rejoined')).toMatchObject({ state: 'connected', sid: 'S6b' });
    expect(of(b, 'send', 'delay-rejoined')).toBe(0);
    expect(b.state(ROOM, 'left-while-down')).toBe('sent');
    expect(of(b, 'send', 'delay-left-while-down')).toBe(1);
    // All the prompt sends went out at once, in one lookup for the room.
    expect(b.actions.of('send').every((c) => c.at === T0 + 30_000)).toBe(true);
    expect(b.presence.calls).toHaveLength(1);

    // The never-connected job keeps its original wait: 1 h from delegation, not from restore.
    expect(b.engine.get(ROOM, 'wait-left')).toMatchObject({ state: 'waiting', deadlineMs: T0 + 3_600_000 });
    await b.advance(3_600_000 - 30_000 - 1);
    expect(of(b, 'send', 'delay-wait-left')).toBe(0);
    await b.advance(1);
    expect(of(b, 'send', 'delay-wait-left')).toBe(1);
    // The kept schedule: 80 % of the delay after the restart at T0, less the jitter (random 0.5).
    expect(b.actions.of('restart', 'delay-still-there')[0]?.at).toBe(T0 + 78_000);
  });

  it('reconciles a job that was in its disconnect grace like a connected one', async () => {
    const a = await makeRig(dirs);
    for (const [identity, sid] of [
      ['rejoined', 'S1'],
      ['gone', 'S2'],
    ] as const) {
      await a.delegate({ identity, delayId: `delay-${identity}` });
      await join(a, identity, sid);
      await a.signal({ kind: 'left', livekitRoom: ROOM, identity, sid });
      expect(a.state(ROOM, identity)).toBe('leaving');
    }
    await a.advance(0);
    const db = new DatabaseSync(a.dbPath, { readOnly: true });
    try {
      expect(db.prepare('SELECT DISTINCT state FROM jobs').all()).toEqual([{ state: 'leaving' }]);
    } finally {
      db.close();
    }

    // The old sessions are still listed (LiveKit lags); they are known to have ended.
    const b = await afterCrash(a, T0 + 5_000, { rejoined: 'S1b' });
    expect(b.engine.get(ROOM, 'rejoined')).toMatchObject({ state: 'connected', sid: 'S1b' });
    expect([of(b, 'restart', 'delay-rejoined'), of(b, 'send', 'delay-rejoined')]).toEqual([0, 0]);
    expect(b.state(ROOM, 'gone')).toBe('sent');
    expect(of(b, 'send', 'delay-gone')).toBe(1);
  });

  it('keeps restarting and retries the reconciliation while LiveKit fails, never sending', async () => {
    const a = await makeRig(dirs);
    await a.delegate({ delayTimeoutMs: 60_000 });
    await join(a, 'identity-hash-BBBB', 'S1');
    await a.advance(0);
    const b = await makeRig(dirs, { dbPath: a.dbPath, clock: new FakeClock(T0 + 10_000), start: false });
    b.presence.failing = true;
    await b.engine.start();
    await b.advance(180_000);
    expect(b.actions.of('send')).toEqual([]);
    expect(b.actions.of('restart').length).toBeGreaterThanOrEqual(4);
    expect(b.presence.calls.length).toBeGreaterThan(5);
    b.presence.failing = false;
    await b.advance(60_000);
    expect(b.actions.of('send')).toHaveLength(1);
    expect(b.state()).toBe('sent');
  });

  it('restores a replacement, not the job it replaced', async () => {
    const a = await makeRig(dirs);
    await a.delegate({ delayId: 'first', delayTimeoutMs: 10_000 });
    await a.delegate({ delayId: 'second', delayTimeoutMs: 10_000 });
    await a.advance(0);
    const b = await afterCrash(a, T0 + 20_000, {});
    expect(b.engine.counts()).toMatchObject({ replaced: 1, expired: 1, waiting: 0 });
    expect(b.actions.calls).toEqual([]);
  });

  it('still cancels the replaced job\'s delayed event after a crash, once, and keeps the replacement', async () => {
    const a = await makeRig(dirs);
    await a.delegate({ identity: 'alice', delayId: 'alice-old' });
    await join(a, 'alice', 'S1');
    await a.delegate({ identity: 'bob', delayId: 'bob-old', delayTimeoutMs: 10_000 });
    await join(a, 'bob', 'S2');
    // The cancels never come back before the crash: only the store knows they are owed.
    a.actions.hold.cancel = true;
    await a.delegate({ identity: 'alice', delayId: 'alice-new' });
    await a.delegate({ identity: 'bob', delayId: 'bob-new' });
    expect(a.actions.of('cancel').map((c) => c.delayId)).toEqual(['alice-old', 'bob-old']);

    // Bob's old event was due at T0 + 10 s; restored past that, its cancel is still tried (a
    // cancel too many answers 404, one too few ends a membership).
    const b = await afterCrash(a, T0 + 60_000, { alice: 'S1', bob: 'S2' });
    expect(b.actions.of('cancel').map((c) => c.delayId).sort()).toEqual(['alice-old', 'bob-old']);
    expect(b.engine.counts()).toMatchObject({ replaced: 2, cancelling: 0, connected: 2 });
    expect(b.engine.get(ROOM, 'alice')).toMatchObject({ state: 'connected', sid: 'S1' });
    await b.advance(3_600_000);
    expect(b.actions.of('cancel')).toHaveLength(2);
    expect(b.actions.of('send')).toEqual([]);
    expect(b.actions.of('restart', 'alice-old')).toEqual([]);

    // And once done, a further restart of the agent cancels nothing again.
    const c = await afterCrash(b, T0 + 3_700_000, { alice: 'S1', bob: 'S2' });
    expect(c.actions.of('cancel')).toEqual([]);
  });

  it('reconciles a never-connected job whose wait ran out before its delay, and sends only for the absent', async () => {
    const a = await makeRig(dirs);
    const delay = 2 * 3_600_000; // over the 1 h wait: the event is still scheduled when the wait ends
    await a.delegate({ identity: 'came-meanwhile', delayId: 'delay-came', delayTimeoutMs: delay });
    await a.delegate({ identity: 'never-came', delayId: 'delay-never', delayTimeoutMs: delay });
    await a.advance(0);
    const b = await afterCrash(a, T0 + 3_600_000 + 60_000, { 'came-meanwhile': 'S9' });
    expect(b.engine.get(ROOM, 'came-meanwhile')).toMatchObject({ state: 'connected', sid: 'S9' });
    expect(of(b, 'restart', 'delay-came')).toBe(1);
    // The absent one gets the abort grace to turn up, then its send.
    expect(b.state(ROOM, 'never-came')).toBe('waiting');
    await b.advance(ABORT_GRACE_MS - 1);
    expect(of(b, 'send', 'delay-never')).toBe(0);
    await b.advance(1);
    expect(of(b, 'send', 'delay-never')).toBe(1);
    expect(of(b, 'send', 'delay-came')).toBe(0);
  });
});

describe('purging finished jobs', () => {
  const countRows = (path: string) => {
    const db = new DatabaseSync(path, { readOnly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM jobs').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };

  it('removes expired jobs from memory and the store after the retention', async () => {
    const rig = await makeRig(dirs, { settings: { terminalRetentionMs: 60_000 } });
    rig.actions.defaults.restart = { kind: 'transient', detail: '500' };
    await rig.delegate({ delayTimeoutMs: 5_000 });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1' });
    await rig.advance(5_000);
    expect(rig.engine.counts().expired).toBe(1);
    expect(countRows(rig.dbPath)).toBe(1);
    await rig.advance(59_999);
    expect(rig.state()).toBe('expired');
    await rig.advance(1);
    expect(rig.engine.get(ROOM, 'identity-hash-BBBB')).toBeUndefined();
    expect(rig.engine.counts().expired).toBe(0);
    expect(countRows(rig.dbPath)).toBe(0);
  });

  it('purges finished rows at start when their retention passed while the agent was down', async () => {
    const a = await makeRig(dirs, { settings: { terminalRetentionMs: 60_000 } });
    await a.delegate({ identity: 'x', delayTimeoutMs: 1_000 });
    await a.delegate({ identity: 'y', delayTimeoutMs: 1_000_000 });
    await a.advance(1_000);
    expect(a.state(ROOM, 'x')).toBe('sent');
    const b = await makeRig(dirs, {
      dbPath: a.dbPath,
      clock: new FakeClock(T0 + 120_000),
      settings: { terminalRetentionMs: 60_000 },
    });
    await b.advance(0);
    expect(b.state(ROOM, 'x')).toBeUndefined();
    expect(b.state(ROOM, 'y')).toBe('waiting');
    expect(countRows(b.dbPath)).toBe(1);
  });
});
