/**
 * The stream position shared by events and account data, and the wake-up signal long-polling
 * /sync waits on. Everything runs on one thread, so a position handed out is committed (or rolled
 * back) before any reader can observe it.
 */
import type { Clock } from '../lib/timer-heap.js';

export class StreamNotifier {
  private position: number;
  private readonly waiters = new Set<() => void>();

  constructor(
    initial: number,
    private readonly clock: Clock,
  ) {
    this.position = initial;
  }

  /** The newest position handed out. */
  get current(): number {
    return this.position;
  }

  /** A fresh position for a write that is about to happen. */
  next(): number {
    return ++this.position;
  }

  /** Wakes every waiting long poll; they re-check whether anything concerns them. */
  notify(): void {
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiting) wake();
  }

  /** Resolves on the next `notify`, after `timeoutMs`, or when `signal` aborts, whichever is first. */
  wait(timeoutMs: number, signal: AbortSignal): Promise<void> {
    if (timeoutMs <= 0 || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.waiters.delete(done);
        this.clock.clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, timeoutMs);
      signal.addEventListener('abort', done, { once: true });
      this.waiters.add(done);
    });
  }
}
