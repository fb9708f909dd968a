import { describe, expect, it } from 'vitest';

import { CappedMap } from '../../src/lib/capped-map.js';

describe('CappedMap', () => {
  it('starts over when a new key would pass the cap, and updates known keys in place', () => {
    const m = new CappedMap<string, number>(2);
    m.set('a', 1).set('b', 2);
    m.set('a', 10); // a known key never clears
    expect([...m]).toEqual([
      ['a', 10],
      ['b', 2],
    ]);
    m.set('c', 3);
    expect([...m]).toEqual([['c', 3]]);
  });
});
