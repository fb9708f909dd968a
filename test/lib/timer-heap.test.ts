import { describe, expect, it } from 'vitest';

import { IntKeyIndex, TimerHeap } from '../../src/lib/timer-heap.js';
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

  it('grows past a burst and shrinks back after it', () => {
    const { clock, fired, heap } = setup();
    for (let i = 0; i < 10_000; i++) heap.schedule(`k${i}`, 10_000 - i);
    heap.schedule('late', 20_000);
    clock.advance(10_000);
    expect(fired).toHaveLength(10_000);
    expect(fired[0]).toEqual(['k9999', 1]);
    expect(heap.size).toBe(1);
    expect(heap.dueOf('late')).toBe(20_000);
    heap.schedule('again', 15_000);
    clock.advance(10_000);
    expect(fired.slice(-2)).toEqual([
      ['again', 15_000],
      ['late', 20_000],
    ]);
  });
});

describe('TimerHeap with integer keys', () => {
  function intSetup() {
    const clock = new FakeClock(0);
    const fired: Array<[number, number]> = [];
    const heap = new TimerHeap<number>((key) => fired.push([key, clock.now()]), clock, new IntKeyIndex());
    return { clock, fired, heap };
  }

  it('fires every key once at its latest due time, in due order', () => {
    const { clock, fired, heap } = intSetup();
    // A deterministic shuffle of schedules, moves and cancels over keys beyond the initial capacity.
    let seed = 7;
    const next = () => (seed = (seed * 48271) % 2147483647);
    const expected = new Map<number, number>();
    for (let i = 0; i < 5000; i++) {
      const key = next() % 3000;
      if (next() % 5 === 0) {
        expect(heap.cancel(key)).toBe(expected.delete(key));
      } else {
        const due = 1 + (next() % 1000);
        heap.schedule(key, due);
        expected.set(key, due);
      }
    }
    expect(heap.size).toBe(expected.size);
    for (const [key, due] of expected) expect(heap.dueOf(key)).toBe(due);
    expect(heap.has(1_000_000)).toBe(false);
    clock.advance(1000);
    expect(fired).toHaveLength(expected.size);
    for (const [key, at] of fired) expect(at).toBe(expected.get(key));
    for (let i = 1; i < fired.length; i++) expect(fired[i]![1]).toBeGreaterThanOrEqual(fired[i - 1]![1]);
    expect(heap.size).toBe(0);
    expect(clock.pending).toBe(0);
  });

  it('keeps one timer for the earliest entry, lets a callback reschedule its key, and stops', () => {
    const clock = new FakeClock(0);
    const fired: number[] = [];
    const heap: TimerHeap<number> = new TimerHeap<number>(
      (key) => {
        fired.push(clock.now());
        if (fired.length < 3) heap.schedule(key, clock.now() + 10);
      },
      clock,
      new IntKeyIndex(),
    );
    heap.schedule(4, 10);
    heap.schedule(2, 10);
    heap.schedule(9, 500);
    expect(clock.pending).toBe(1);
    heap.cancel(2);
    clock.advance(30);
    expect(fired).toEqual([10, 20, 30]);
    heap.stop();
    clock.advance(1000);
    expect(fired).toEqual([10, 20, 30]);
    expect(heap.dueOf(9)).toBe(500);
  });

  it('refuses keys that are not small non-negative integers and stays intact', () => {
    const { clock, fired, heap } = intSetup();
    heap.schedule(3, 10);
    for (const bad of [-1, 1.5, 2 ** 32, Number.NaN]) {
      expect(() => heap.schedule(bad, 5)).toThrow(RangeError);
      expect(heap.has(bad)).toBe(false);
      expect(heap.cancel(bad)).toBe(false);
    }
    expect(heap.size).toBe(1);
    clock.advance(10);
    expect(fired).toEqual([[3, 10]]);
  });
});
