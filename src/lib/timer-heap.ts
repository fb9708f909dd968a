/**
 * One timer over a binary min-heap of due times. The homeserver's delayed events and the agent's
 * jobs are scheduled here: only the earliest due time ever has a live `setTimeout`.
 *
 * Due times and tie-break sequence numbers live in typed arrays (16 bytes an entry). Where each
 * key sits in the heap is the key index's business: a Map for arbitrary keys (the homeserver's
 * delay ids), or typed arrays for small non-negative integers (the agent's job timers, keyed by
 * job slot), where an entry costs 8 bytes more instead of a Map entry and an array slot (about
 * 50). The agent holds two or three timers per job, so at a million jobs that is ~100 MiB.
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
const MIN_CAPACITY = 64;
const ABSENT = -1;

/** The heap's keys by position and each key's position. */
export interface KeyIndex<K> {
  /** The key's heap position, or -1 when it is not scheduled. */
  positionOf(key: K): number;
  keyAt(position: number): K;
  place(key: K, position: number): void;
  /** Forgets the key; positions from `size` on are no longer used. */
  remove(key: K, size: number): void;
  /** The heap holds at most `capacity` entries until the next resize. */
  resize(capacity: number): void;
}

/** Any key, positions in a Map. */
export class MapKeyIndex<K> implements KeyIndex<K> {
  private readonly keys: K[] = [];
  private readonly positions = new Map<K, number>();

  positionOf(key: K): number {
    return this.positions.get(key) ?? ABSENT;
  }
  keyAt(position: number): K {
    return this.keys[position]!;
  }
  place(key: K, position: number): void {
    this.keys[position] = key;
    this.positions.set(key, position);
  }
  remove(key: K, size: number): void {
    this.positions.delete(key);
    this.keys.length = size;
  }
  resize(): void {}
}

function resized<T extends Int32Array | Uint32Array | Float64Array>(array: T, length: number, fill?: number): T {
  const copy = new (array.constructor as new (n: number) => T)(length);
  copy.set(length < array.length ? array.subarray(0, length) : array);
  if (fill !== undefined && length > array.length) copy.fill(fill, array.length);
  return copy;
}

/**
 * Small non-negative integer keys (below 2³²), positions in an array indexed by key: dense keys
 * such as slots, since the array is as long as the largest key ever scheduled.
 */
export class IntKeyIndex implements KeyIndex<number> {
  private keys = new Uint32Array(0);
  private positions = new Int32Array(0);

  positionOf(key: number): number {
    // Out of range (negative, fractional, never placed) reads undefined.
    return this.positions[key] ?? ABSENT;
  }
  keyAt(position: number): number {
    return this.keys[position]!;
  }
  place(key: number, position: number): void {
    if (key >= this.positions.length || key >>> 0 !== key) this.cover(key);
    this.keys[position] = key;
    this.positions[key] = position;
  }
  remove(key: number): void {
    this.positions[key] = ABSENT;
  }
  resize(capacity: number): void {
    this.keys = resized(this.keys, capacity);
  }

  private cover(key: number): void {
    if (key >>> 0 !== key) throw new RangeError(`timer key ${key} is not a small non-negative integer`);
    this.positions = resized(this.positions, Math.max(key + 1, 2 * this.positions.length, MIN_CAPACITY), ABSENT);
  }
}

export class TimerHeap<K> {
  private dues = new Float64Array(MIN_CAPACITY);
  /** Insertion order, so entries with equal due times fire first-scheduled first. */
  private seqs = new Float64Array(MIN_CAPACITY);
  private count = 0;
  private nextSeq = 0;
  private armedFor = Infinity;
  private handle: unknown = undefined;
  private firing = false;
  private stopped = false;

  /**
   * @param onDue - called once per entry when its due time has passed, in due order; the entry is
   *   already removed, so the callback may schedule the same key again.
   * @param keys - where keys sit in the heap; a Map unless the keys are small integers
   *   (`new IntKeyIndex()`).
   */
  constructor(
    private readonly onDue: (key: K, due: number) => void,
    private readonly clock: Clock = systemClock,
    private readonly keys: KeyIndex<K> = new MapKeyIndex<K>(),
  ) {
    keys.resize(MIN_CAPACITY);
  }

  get size(): number {
    return this.count;
  }

  has(key: K): boolean {
    return this.keys.positionOf(key) !== ABSENT;
  }

  dueOf(key: K): number | undefined {
    const i = this.keys.positionOf(key);
    return i === ABSENT ? undefined : this.dues[i];
  }

  /** Adds the key, or moves it when it is already scheduled. */
  schedule(key: K, due: number): void {
    let i = this.keys.positionOf(key);
    if (i === ABSENT) {
      if (this.count === this.dues.length) this.resize(2 * this.count);
      i = this.count;
      // Placed before counted, so a key the index refuses leaves the heap as it was.
      this.keys.place(key, i);
      this.count++;
    }
    this.dues[i] = due;
    this.seqs[i] = this.nextSeq++;
    this.siftDown(this.siftUp(i));
    this.arm();
  }

  cancel(key: K): boolean {
    const i = this.keys.positionOf(key);
    if (i === ABSENT) return false;
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
      while (this.count > 0 && this.dues[0]! <= now && !this.stopped) {
        const key = this.keys.keyAt(0);
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
    if (this.count === 0) {
      if (this.handle !== undefined) this.clock.clearTimeout(this.handle);
      this.handle = undefined;
      this.armedFor = Infinity;
      return;
    }
    const next = this.dues[0]!;
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

  private resize(capacity: number): void {
    this.dues = resized(this.dues, capacity);
    this.seqs = resized(this.seqs, capacity);
    this.keys.resize(capacity);
  }

  private removeAt(i: number): void {
    const last = --this.count;
    const key = this.keys.keyAt(i);
    if (i !== last) this.move(last, i);
    this.keys.remove(key, last);
    if (i !== last) this.siftDown(this.siftUp(i));
    // A burst (a restore, a storm of delayed events) should not pin its peak size for good.
    if (this.dues.length > MIN_CAPACITY && this.count <= this.dues.length >> 2) this.resize(this.dues.length >> 1);
  }

  private before(a: number, b: number): boolean {
    const da = this.dues[a]!;
    const db = this.dues[b]!;
    return da < db || (da === db && this.seqs[a]! < this.seqs[b]!);
  }

  /** Copies the entry at `from` into position `to` (whose entry is gone or saved elsewhere). */
  private move(from: number, to: number): void {
    this.keys.place(this.keys.keyAt(from), to);
    this.dues[to] = this.dues[from]!;
    this.seqs[to] = this.seqs[from]!;
  }

  private swap(a: number, b: number): void {
    const key = this.keys.keyAt(a);
    const due = this.dues[a]!;
    const seq = this.seqs[a]!;
    this.move(b, a);
    this.keys.place(key, b);
    this.dues[b] = due;
    this.seqs[b] = seq;
  }

  /** Returns the entry's final position. */
  private siftUp(i: number): number {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
    return i;
  }

  private siftDown(i: number): void {
    for (;;) {
      const left = 2 * i + 1;
      if (left >= this.count) return;
      const right = left + 1;
      const child = right < this.count && this.before(right, left) ? right : left;
      if (!this.before(child, i)) return;
      this.swap(i, child);
      i = child;
    }
  }
}
