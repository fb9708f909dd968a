import { describe, expect, it } from 'vitest';

import { TimerHeap } from '../../src/lib/timer-heap.js';
import { FakeClock } from '../support/fake-clock.js';

function setup() {
  const clock = new FakeClock(0);
  const fired: Array<[string, number]> = [];
  const heap = new TimerHeap<string>((key, due) => fired.push([key, due]), clock);
  return { clock, fired, heap };
}

describe('TimerHeap', () => {
  it('fires entries in due order, ties in scheduling order, with a single armed timer', () => {
    const { clock, fired, heap } = setup();
    heap.schedule('c', 300);
    heap.schedule('a', 100);
    heap.schedule('b', 200);
    heap.schedule('b2', 200);
    expect(clock.pending).toBe(1);
    clock.advance(250);
    expect(fired.map(([k]) => k)).toEqual(['a', 'b', 'b2']);
    expect(heap.size).toBe(1);
    clock.advance(100);
    expect(fired.map(([k]) => k)).toEqual(['a', 'b', 'b2', 'c']);
    expect(clock.pending).toBe(0);
  });

  it('never fires before the due time', () => {
    const { clock, fired, heap } = setup();
    heap.schedule('x', 1000);
    clock.advance(999);
    expect(fired).toEqual([]);
    clock.advance(1);
    expect(fired).toEqual([['x', 1000]]);
  });

  it('moves and cancels entries', () => {
    const { clock, fired, heap } = setup();
    heap.schedule('a', 100);
    heap.schedule('b', 200);
    heap.schedule('a', 300);
    expect(heap.dueOf('a')).toBe(300);
    expect(heap.cancel('b')).toBe(true);
    expect(heap.cancel('b')).toBe(false);
    clock.advance(250);
    expect(fired).toEqual([]);
    clock.advance(50);
    expect(fired).toEqual([['a', 300]]);
  });

  it('lets a callback schedule its own key again', () => {
    const clock = new FakeClock(0);
    let count = 0;
    const heap: TimerHeap<string> = new TimerHeap((key) => {
      count++;
      if (count < 3) heap.schedule(key, clock.now() + 10);
    }, clock);
    heap.schedule('tick', 10);
    clock.advance(100);
    expect(count).toBe(3);
    expect(heap.size).toBe(0);
  });

  it('keeps heap order across many random operations', () => {
    const { clock, fired, heap } = setup();
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const expected = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const key = `k${Math.floor(rand() * 500)}`;
      if (rand() < 0.2) {
        heap.cancel(key);
        expected.delete(key);
      } else {
        const due = 1 + Math.floor(rand() * 10_000);
        heap.schedule(key, due);
        expected.set(key, due);
      }
    }
    clock.advance(20_000);
    const dues = fired.map(([, due]) => due);
    expect(dues).toEqual([...dues].sort((a, b) => a - b));
    expect(new Map(fired)).toEqual(expected);
  });

  it('stop() prevents further firing', () => {
    const { clock, fired, heap } = setup();
    heap.schedule('a', 10);
    heap.stop();
    clock.advance(100);
    expect(fired).toEqual([]);
    expect(clock.pending).toBe(0);
  });
});
