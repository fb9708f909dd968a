import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { BatchWriter, openDatabase, WalCheckpointer } from '../../src/lib/sqlite.js';

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

describe('WalCheckpointer', () => {
  it('copies the WAL into the database from its worker and closes', async () => {
    dir = mkdtempSync(join(tmpdir(), 'lastwill-sqlite-'));
    const path = join(dir, 'db.sqlite');
    const db = openDatabase(path, 'normal');
    const errors: unknown[] = [];
    const checkpointer = new WalCheckpointer(db, path, (err) => errors.push(err), { everyMs: 5, restartFrames: 8 });
    db.exec('CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)');
    const before = statSync(path).size;
    const insert = db.prepare('INSERT INTO t (k, v) VALUES (?, ?)');
    for (let i = 0; i < 200; i++) insert.run(i, 'x'.repeat(1000));
    // The owning connection's auto-checkpoint is only a distant backstop, so the database file
    // grows only by the worker's checkpoints.
    const deadline = Date.now() + 10_000;
    while (statSync(path).size <= before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(statSync(path).size).toBeGreaterThan(before);
    await checkpointer.close();
    expect(errors).toEqual([]);
    db.close();
  });
});
