// The engine's cluster-mode entry points, on the embedded store with a fake clock: delegations
// committed elsewhere and taken up from an inbox (accept), a partition's jobs dropped when another
// replica owns them (evict), and the lease gate in front of every restart and send.
import { afterEach, describe, expect, it } from 'vitest';

import type { JobRow } from '../../../src/agent/jobs/store.js';
import { SqliteJobStore } from '../../../src/agent/jobs/sqlite-store.js';
import { delegation, makeRig, type Rig, ROOM, TempDirs } from './harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

/** Commits a delegation through a second connection to the rig's store, as another replica does. */
async function commitElsewhere(rig: Rig, identity: string, delayId: string): Promise<JobRow> {
  const other = new SqliteJobStore(rig.dbPath, 'normal');
  try {
    const now = rig.clock.now();
    const id = await other.insert(delegation({ identity, delayId, delayTimeoutMs: 60_000 }), now + 60_000, now);
    return (await other.loadAll()).find((row) => row.id === id)!;
  } finally {
    await other.close();
  }
}

/** Rooms named `p<N>-…` belong to partition N. */
const byName = { partitionOf: (room: string) => Number(/^p(\d+)-/.exec(room)?.[1] ?? 0) };

describe('accept: a delegation committed elsewhere', () => {
  it('is taken up like a local one, once, and only if newer than the key current job', async () => {
    const rig = await makeRig(dirs);
    rig.presence.set(ROOM, [{ identity: 'remote', sid: 'S1' }]);
    const first = await commitElsewhere(rig, 'remote', 'delay-first');
    rig.engine.accept(first);
    await rig.advance(0);
    expect(rig.engine.get(ROOM, 'remote')).toMatchObject({ jobId: first.id, state: 'connected', sid: 'S1' });
    expect(rig.actions.of('restart', 'delay-first')).toHaveLength(1);

    // Replayed (a takeover reads the inbox again), or older than the current job: nothing.
    const second = await commitElsewhere(rig, 'remote', 'delay-second');
    rig.engine.accept(first);
    rig.engine.accept({ ...first, id: first.id - 1 });
    await rig.advance(0);
    expect(rig.transitions.filter((t) => t.signal === 'replace')).toEqual([]);

    // A newer one replaces it and inherits the session it followed.
    rig.engine.accept(second);
    await rig.advance(0);
    expect(rig.engine.getById(first.id)?.state).toBe('replaced');
    expect(rig.engine.get(ROOM, 'remote')).toMatchObject({ jobId: second.id, state: 'connected', sid: 'S1' });
    expect(rig.actions.of('restart', 'delay-second')).toHaveLength(1);
  });

  it('lets a delegation lapse that was taken up after its delay ran out', async () => {
    const rig = await makeRig(dirs);
    const row = await commitElsewhere(rig, 'late', 'delay-late');
    await rig.advance(61_000);
    rig.engine.accept(row);
    await rig.advance(0);
    expect(rig.engine.getById(row.id)?.state).toBe('expired');
    expect(rig.actions.calls).toEqual([]);
  });
});

describe('evict: a partition another replica owns now', () => {
  it('drops its jobs, keeps the others, and ignores the answers of its calls in flight', async () => {
    const rig = await makeRig(dirs, { ownership: { ...byName, mayAct: () => true } });
    for (const room of ['p1-a', 'p2-b']) {
      rig.presence.set(room, [{ identity: 'x', sid: 'S1' }]);
      await rig.delegate({ livekitRoom: room, identity: 'x', delayId: `delay-${room}` });
    }
    await rig.advance(0);
    expect(rig.engine.counts().connected).toBe(2);
    rig.actions.hold.restart = true;
    await rig.advance(80_000);
    const held = rig.actions.held.find((h) => h.call.delayId === 'delay-p1-a')!;
    const transitions = rig.transitions.length;

    expect(rig.engine.evict(new Set([1]))).toBe(1);
    expect(rig.engine.get('p1-a', 'x')).toBeUndefined();
    expect(rig.engine.get('p2-b', 'x')?.state).toBe('connected');
    expect(rig.engine.counts().connected).toBe(1);

    held.resolve({ kind: 'ok' });
    await rig.advance(10_000);
    expect(rig.transitions.slice(transitions)).toEqual([]);
    expect(rig.actions.of('restart', 'delay-p1-a')).toHaveLength(2);
    expect(rig.actions.of('send', 'delay-p1-a')).toEqual([]);
  });
});

describe('the lease gate', () => {
  it('holds restarts and sends while the lease is in doubt and retries them once it is held', async () => {
    let held = true;
    const rig = await makeRig(dirs, { ownership: { partitionOf: () => 0, mayAct: () => held } });
    rig.presence.set(ROOM, [{ identity: 'x', sid: 'S1' }]);
    held = false;
    await rig.delegate({ identity: 'x' });
    await rig.advance(0);
    expect(rig.engine.get(ROOM, 'x')?.state).toBe('connected');
    expect(rig.actions.calls).toEqual([]);
    held = true;
    // The default backoff (1 s, deterministic jitter in the rig).
    await rig.advance(2000);
    expect(rig.actions.of('restart')).toHaveLength(1);
  });
});
