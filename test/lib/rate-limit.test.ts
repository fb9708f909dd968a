import { describe, expect, it } from 'vitest';

import { RateLimiter } from '../../src/lib/rate-limit.js';

describe('RateLimiter', () => {
  it('allows a burst, then refills at the sustained rate', () => {
    let now = 0;
    const limiter = new RateLimiter({ perSecond: 2, burst: 3 }, { now: () => now });
    expect([1, 2, 3].map(() => limiter.take('u').ok)).toEqual([true, true, true]);
    const refused = limiter.take('u');
    expect(refused).toEqual({ ok: false, retryAfterMs: 500 });
    now += 500;
    expect(limiter.take('u').ok).toBe(true);
    expect(limiter.take('u').ok).toBe(false);
  });

  it('keeps keys independent and honours a per-call spec', () => {
    const limiter = new RateLimiter({ perSecond: 1, burst: 1 }, { now: () => 0 });
    expect(limiter.take('a').ok).toBe(true);
    expect(limiter.take('a').ok).toBe(false);
    expect(limiter.take('b').ok).toBe(true);
    expect(limiter.take('c', 1, { perSecond: 100, burst: 100 }).ok).toBe(true);
  });

  it('treats a zero bucket as no limit', () => {
    const limiter = new RateLimiter({ perSecond: 0, burst: 0 }, { now: () => 0 });
    for (let i = 0; i < 10; i++) expect(limiter.take('x').ok).toBe(true);
  });
});
