import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { BatchWriter, openDatabase } from '../../src/lib/sqlite.js';

let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('BatchWriter', () => {
  it('commits queued writes together and isolates a failing one', async () => {
    dir = mkdtempSync(join(tmpdir(), 'lastwill-sqlite-'));
    const path = join(dir, 'db.sqlite');
    const db = openDatabase(path);
    db.exec('CREATE TABLE t (k TEXT PRIMARY KEY)');
    const insert = db.prepare('INSERT INTO t (k) VALUES (?)');
    const writer = new BatchWriter(db);
    const results = await Promise.allSettled([
      writer.write(() => insert.run('a')),
      writer.write(() => insert.run('a')), // duplicate key: only this one fails
      writer.write(() => insert.run('b')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    // A second connection sees exactly the committed rows.
    const other = openDatabase(path);
    expect(other.prepare('SELECT k FROM t ORDER BY k').all()).toEqual([{ k: 'a' }, { k: 'b' }]);
    expect(db.prepare('PRAGMA journal_mode').get()).toEqual({ journal_mode: 'wal' });
    writer.close();
    await expect(writer.write(() => 1)).rejects.toThrow(/closed/);
    other.close();
    db.close();
  });
});
