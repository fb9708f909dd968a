import { describe, expect, it } from 'vitest';

import { StreamNotifier } from '../../src/homeserver/notifier.js';
import { FakeClock } from '../support/fake-clock.js';
import { nextTurn } from '../support/next-turn.js';

/** Starts a wait and reports whether it has resolved so far. */
function watch(n: StreamNotifier, interest?: { userId: string; rooms: ReadonlySet<string> }) {
  const state = { woken: false };
  void n.wait(60_000, new AbortController().signal, interest).then(() => (state.woken = true));
  return state;
}

describe('StreamNotifier', () => {
  it('wakes only the long polls whose rooms or user a write touched', async () => {
    const n = new StreamNotifier(0, new FakeClock());
    const inA = watch(n, { userId: '@a:x', rooms: new Set(['!a:x']) });
    const inB = watch(n, { userId: '@b:x', rooms: new Set(['!b:x']) });
    const unscoped = watch(n);
    n.touch('!a:x');
    n.notify();
    await nextTurn();
    expect(inA.woken).toBe(true);
    expect(inB.woken).toBe(false);
    expect(unscoped.woken).toBe(true);

    // A membership event names its member, who is not in the room yet (an invite).
    n.touch('!new:x', '@b:x');
    n.notify();
    await nextTurn();
    expect(inB.woken).toBe(true);
  });

  it('knows a room nothing was written to since a position, and only then', () => {
    const n = new StreamNotifier(10, new FakeClock());
    // Not written to since start: not known, so /sync reads it.
    expect(n.roomUnchangedSince('!a:x', 10)).toBe(false);
    const written = n.next();
    n.touch('!a:x');
    expect(n.roomUnchangedSince('!a:x', written - 1)).toBe(false);
    expect(n.roomUnchangedSince('!a:x', written)).toBe(true);
    // Writes elsewhere leave it unchanged.
    n.next();
    n.touch('!b:x');
    expect(n.roomUnchangedSince('!a:x', written)).toBe(true);
    expect(n.roomUnchangedSince('!b:x', written)).toBe(false);
  });

  it('wakes every long poll for a write that touched nothing (account data)', async () => {
    const n = new StreamNotifier(0, new FakeClock());
    const inA = watch(n, { userId: '@a:x', rooms: new Set(['!a:x']) });
    n.notify();
    await nextTurn();
    expect(inA.woken).toBe(true);
  });

  it('forgets what was touched once it has notified', async () => {
    const n = new StreamNotifier(0, new FakeClock());
    n.touch('!a:x');
    n.notify();
    const inA = watch(n, { userId: '@a:x', rooms: new Set(['!a:x']) });
    n.touch('!b:x');
    n.notify();
    await nextTurn();
    expect(inA.woken).toBe(false);
  });
});
