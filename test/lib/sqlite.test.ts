import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { Worker } from 'node:worker_threads';

import { BatchWriter, type GatherOptions, openDatabase, transaction, WalCheckpointer } from '../../src/lib/sqlite.js';
import { nextTurn } from '../support/next-turn.js';

let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A new database file in a fresh directory (removed after the test). */
function freshDatabasePath(): string {
  dir = mkdtempSync(join(tmpdir(), 'lastwill-sqlite-'));
  return join(dir, 'db.sqlite');
}

describe('BatchWriter', () => {
  it('commits queued writes together and isolates a failing one', async () => {
    const path = freshDatabasePath();
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

describe('BatchWriter gathering', () => {
  /** The table `t`, a writer over it, and a second connection that sees only what committed. */
  function gatheringWriter(gather: GatherOptions) {
    const path = freshDatabasePath();
    const db = openDatabase(path);
    db.exec('CREATE TABLE t (k TEXT PRIMARY KEY)');
    const insert = db.prepare('INSERT INTO t (k) VALUES (?)');
    const observer = openDatabase(path);
    const writer = new BatchWriter(db, gather);
    return {
      writer,
      put: (k: string) => () => insert.run(k),
      committed: () => observer.prepare('SELECT k FROM t ORDER BY k').all().map((r) => r.k),
      /** Closes the writer (again, if the test already did) and both connections. */
      close: () => {
        writer.close();
        observer.close();
        db.close();
      },
    };
  }

  it('holds a commit while more writers are expected and commits them together', async () => {
    let expecting = true;
    const w = gatheringWriter({ expected: () => expecting, maxWaitMs: 10_000 });
    let firstDone = false;
    const first = w.writer.write(w.put('a')).then(() => (firstDone = true));
    for (let i = 0; i < 5; i++) await nextTurn();
    expect(firstDone).toBe(false);
    expect(w.committed()).toEqual([]);
    // Queued before the first committed: the flush that commits one commits both.
    const second = w.writer.write(w.put('b'));
    expecting = false;
    await Promise.all([first, second]);
    expect(w.committed()).toEqual(['a', 'b']);
    w.close();
  });

  it('commits at once when nobody is expected', async () => {
    const w = gatheringWriter({ expected: () => false, maxWaitMs: 10_000 });
    const pending = w.writer.write(w.put('a'));
    await nextTurn();
    expect(w.committed()).toEqual(['a']);
    await pending;
    w.close();
  });

  it('gives up on writers that do not come after maxWaitMs and commits', async () => {
    const w = gatheringWriter({ expected: () => true, maxWaitMs: 30 });
    const started = performance.now();
    await w.writer.write(w.put('a'));
    expect(performance.now() - started).toBeGreaterThanOrEqual(30);
    expect(w.committed()).toEqual(['a']);
    w.close();
  });

  it('close commits a gathering batch at once', async () => {
    const w = gatheringWriter({ expected: () => true, maxWaitMs: 10_000 });
    const pending = w.writer.write(w.put('a'));
    await nextTurn();
    w.writer.close();
    await pending;
    expect(w.committed()).toEqual(['a']);
    w.close();
  });
});

describe('transaction', () => {
  it('waits for a write lock another connection holds, then commits, and keeps the busy timeout', async () => {
    const path = freshDatabasePath();
    const db = openDatabase(path);
    db.exec('CREATE TABLE t (k TEXT PRIMARY KEY)');
    // Another thread holds the write lock for 150 ms, as the checkpoint worker does for a moment.
    const holder = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const { DatabaseSync } = require('node:sqlite');
       const db = new DatabaseSync(workerData);
       db.exec('BEGIN IMMEDIATE');
       parentPort.postMessage('locked');
       Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 150);
       db.exec("INSERT INTO t (k) VALUES ('from-holder')");
       db.exec('COMMIT');
       db.close();`,
      { eval: true, workerData: path },
    );
    await new Promise((resolve) => holder.once('message', resolve));
    const started = performance.now();
    transaction(db, () => db.prepare("INSERT INTO t (k) VALUES ('after')").run());
    // It really waited for the holder (whose row committed first) instead of failing at once.
    expect(performance.now() - started).toBeGreaterThan(100);
    expect(db.prepare('SELECT k FROM t ORDER BY rowid').all()).toEqual([{ k: 'from-holder' }, { k: 'after' }]);
    expect(db.prepare('PRAGMA busy_timeout').get()).toEqual({ timeout: 5000 });
    await new Promise((resolve) => holder.once('exit', resolve));
    db.close();
  });
});

describe('WalCheckpointer', () => {
  it('copies the WAL into the database from its worker and closes', async () => {
    const path = freshDatabasePath();
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
