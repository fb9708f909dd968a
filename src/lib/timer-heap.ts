/**
 * One timer over a binary min-heap of due times. Both the homeserver's delayed events and the
 * agent's jobs are scheduled here: a million entries cost two array slots and a map entry each,
 * and only the earliest due time ever has a live `setTimeout`.
 */

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const handle = setTimeout(fn, ms);
    // The scheduler never keeps a process alive on its own; servers and stores do that.
    handle.unref();
    return handle;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** setTimeout's ceiling (about 24.8 days); longer waits re-arm when they wake. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class TimerHeap<K> {
  private readonly keys: K[] = [];
  private readonly dues: number[] = [];
  /** Insertion order, so entries with equal due times fire first-scheduled first. */
  private readonly seqs: number[] = [];
  private nextSeq = 0;
  private readonly index = new Map<K, number>();
  private armedFor = Infinity;
  private handle: unknown = undefined;
  private firing = false;
  private stopped = false;

  /**
   * @param onDue - called once per entry when its due time has passed, in due order; the entry is
   *   already removed, so the callback may schedule the same key again.
   */
  constructor(
    private readonly onDue: (key: K, due: number) => void,
    private readonly clock: Clock = systemClock,
  ) {}

  get size(): number {
    return this.keys.length;
  }

  has(key: K): boolean {
    return this.index.has(key);
  }

  dueOf(key: K): number | undefined {
    const i = this.index.get(key);
    return i === undefined ? undefined : this.dues[i];
  }

  /** Adds the key, or moves it when it is already scheduled. */
  schedule(key: K, due: number): void {
    const i = this.index.get(key);
    if (i === undefined) {
      this.keys.push(key);
      this.dues.push(due);
      this.seqs.push(this.nextSeq++);
      this.index.set(key, this.keys.length - 1);
      this.siftUp(this.keys.length - 1);
    } else {
      this.dues[i] = due;
      this.seqs[i] = this.nextSeq++;
      this.siftUp(i);
      this.siftDown(i);
    }
    this.arm();
  }

  cancel(key: K): boolean {
    const i = this.index.get(key);
    if (i === undefined) return false;
    this.removeAt(i);
    this.arm();
    return true;
  }

  /** Stops the timer; entries stay so a caller can inspect them, but nothing fires any more. */
  stop(): void {
    this.stopped = true;
    if (this.handle !== undefined) this.clock.clearTimeout(this.handle);
    this.handle = undefined;
    this.armedFor = Infinity;
  }

  /** Fires every entry whose due time has passed; normally called by the timer itself. */
  runDue(): void {
    if (this.firing || this.stopped) return;
    this.firing = true;
    try {
      const now = this.clock.now();
      while (this.keys.length > 0 && this.dues[0]! <= now && !this.stopped) {
        const key = this.keys[0]!;
        const due = this.dues[0]!;
        this.removeAt(0);
        this.onDue(key, due);
      }
    } finally {
      this.firing = false;
    }
    this.arm();
  }

  private arm(): void {
    if (this.firing || this.stopped) return;
    const next = this.dues[0];
    if (next === undefined) {
      if (this.handle !== undefined) this.clock.clearTimeout(this.handle);
      this.handle = undefined;
      this.armedFor = Infinity;
      return;
    }
    if (this.handle !== undefined && next === this.armedFor) return;
    if (this.handle !== undefined) this.clock.clearTimeout(this.handle);
    this.armedFor = next;
    const wait = Math.min(MAX_TIMEOUT_MS, Math.max(0, next - this.clock.now()));
    this.handle = this.clock.setTimeout(() => {
      this.handle = undefined;
      this.armedFor = Infinity;
      // Timers may wake a little early against the wall clock; runDue re-arms for the remainder.
      this.runDue();
    }, wait);
  }

  private removeAt(i: number): void {
    const last = this.keys.length - 1;
    const key = this.keys[i]!;
    this.index.delete(key);
    if (i !== last) {
      this.keys[i] = this.keys[last]!;
      this.dues[i] = this.dues[last]!;
      this.seqs[i] = this.seqs[last]!;
      this.index.set(this.keys[i]!, i);
    }
    this.keys.pop();
    this.dues.pop();
    this.seqs.pop();
    if (i < this.keys.length) {
      this.siftDown(i);
      this.siftUp(i);
    }
  }

  private siftUp(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  private siftDown(i: number): void {
    const n = this.keys.length;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < n && this.before(left, smallest)) smallest = left;
      if (right < n && this.before(right, smallest)) smallest = right;
      if (smallest === i) return;
      this.swap(i, smallest);
      i = smallest;
    }
  }

  private before(a: number, b: number): boolean {
    const da = this.dues[a]!;
    const db = this.dues[b]!;
    return da < db || (da === db && this.seqs[a]! < this.seqs[b]!);
  }

  private swap(a: number, b: number): void {
    const ka = this.keys[a]!;
    const kb = this.keys[b]!;
    this.keys[a] = kb;
    this.keys[b] = ka;
    const da = this.dues[a]!;
    this.dues[a] = this.dues[b]!;
    this.dues[b] = da;
    const sa = this.seqs[a]!;
    this.seqs[a] = this.seqs[b]!;
    this.seqs[b] = sa;
    this.index.set(kb, a);
    this.index.set(ka, b);
  }
}
