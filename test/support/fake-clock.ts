/** A manual clock for scheduler tests: time moves only when the test says so. */
import type { Clock } from '../../src/lib/timer-heap.js';

export class FakeClock implements Clock {
  private current: number;
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  constructor(start = 1_700_000_000_000) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.set(id, { at: this.current + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Number of armed timers (the scheduler should never hold more than one). */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves time forward, firing due timers in order (including ones they arm). */
  advance(ms: number): void {
    const target = this.current + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= target && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.current = Math.max(this.current, next[1].at);
      next[1].fn();
    }
    this.current = target;
  }

  /**
   * Fires the earliest timer due at or before `limit` and moves time to it; false when there is
   * none. Lets a test interleave async work between timers (advance() fires them all at once).
   */
  fireNext(limit: number): boolean {
    let next: [number, { at: number; fn: () => void }] | undefined;
    for (const entry of this.timers) if (entry[1].at <= limit && (!next || entry[1].at < next[1].at)) next = entry;
    if (!next) return false;
    this.timers.delete(next[0]);
    this.current = Math.max(this.current, next[1].at);
    next[1].fn();
    return true;
  }
}
