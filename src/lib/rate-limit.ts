/**
 * Token buckets keyed by user or client address. A bucket holds `burst` tokens and refills at
 * `perSecond`; full buckets are forgotten so idle keys cost nothing.
 */
import type { Clock } from './timer-heap.js';
import { systemClock } from './timer-heap.js';

export interface BucketSpec {
  perSecond: number;
  burst: number;
}

/** A bucket as the config files spell it. */
export function bucketOf(spec: { per_second: number; burst: number }): BucketSpec {
  return { perSecond: spec.per_second, burst: spec.burst };
}

export type Verdict = { ok: true } | { ok: false; retryAfterMs: number };

interface Bucket {
  tokens: number;
  updated: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private lastSweep: number;

  constructor(
    private readonly spec: BucketSpec,
    private readonly clock: Pick<Clock, 'now'> = systemClock,
  ) {
    this.lastSweep = clock.now();
  }

  /** Takes `cost` tokens for `key`, or says how long until they would be there. */
  take(key: string, cost = 1, spec: BucketSpec = this.spec): Verdict {
    if (spec.perSecond <= 0 && spec.burst <= 0) return { ok: true };
    const now = this.clock.now();
    this.sweep(now, spec);
    const b = this.buckets.get(key) ?? { tokens: spec.burst, updated: now };
    b.tokens = Math.min(spec.burst, b.tokens + ((now - b.updated) / 1000) * spec.perSecond);
    b.updated = now;
    if (b.tokens >= cost) {
      b.tokens -= cost;
      this.buckets.set(key, b);
      return { ok: true };
    }
    this.buckets.set(key, b);
    const missing = cost - b.tokens;
    const retryAfterMs = spec.perSecond > 0 ? Math.ceil((missing / spec.perSecond) * 1000) : 60_000;
    return { ok: false, retryAfterMs };
  }

  private sweep(now: number, spec: BucketSpec): void {
    if (now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.updated) / 1000) * spec.perSecond >= spec.burst) this.buckets.delete(key);
    }
  }
}
