// The "Differences from lk-jwt-service" table (docs/migration.md) and the names the black-box tests mark
// differences with are one list: a difference cannot be tested without being documented, nor
// documented under a name the tests do not know.
import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { DIFFERENCES } from './harness.js';

describe('the differences table', () => {
  it('lists exactly the differences the black-box tests know, in the same order', () => {
    const doc = readFileSync(new URL('../../../docs/migration.md', import.meta.url), 'utf8');
    const table = /<!-- differences:start -->\n([\s\S]*?)<!-- differences:end -->/.exec(doc)?.[1] ?? '';
    const rows = table
      .split('\n')
      .slice(2)
      .filter((line) => line.startsWith('| '))
      .map((line) => line.split('|')[1]!.trim());
    expect(rows).toEqual([...DIFFERENCES]);
  });
});
