import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { DelayedStore } from '../../../src/homeserver/delayed/store.js';
import { openDatabase } from '../../../src/lib/sqlite.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function indexesOf(db: ReturnType<typeof openDatabase>): string[] {
  return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'delayed_events' AND sql IS NOT NULL").all() as Array<{ name: string }>)
    .map((r) => r.name)
    .sort();
}

describe('delayed event schema', () => {
  it('replaces the scheduled index that held due_at, keeping the rows, and a restart rewrites no index page', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-schema-'));
    dirs.push(dir);
    const file = path.join(dir, 'homeserver.db');
    // A database written by an earlier version: the scheduled index includes due_at.
    let db = openDatabase(file);
    new DelayedStore(db);
    db.exec('DROP INDEX delayed_events_scheduled_by_user');
    db.exec("CREATE INDEX delayed_events_scheduled ON delayed_events (user_id, due_at, seq) WHERE status = 'scheduled'");
    db.exec(
      `INSERT INTO delayed_events (delay_id, user_id, room_id, type, state_key, content, delay_ms, running_since, due_at, status)
       VALUES ('syd_old', '@a:hs', '!r:hs', 'm.call.member', '', '{}', 1000, 1, 1001, 'scheduled')`,
    );
    expect(indexesOf(db)).toContain('delayed_events_scheduled');
    db.close();

    db = openDatabase(file);
    const store = new DelayedStore(db);
    expect(indexesOf(db)).not.toContain('delayed_events_scheduled');
    expect(indexesOf(db)).toContain('delayed_events_scheduled_by_user');
    expect(store.get('syd_old')?.due_at).toBe(1001);

    // What the change is for: the restart's UPDATE maintains no index, so its commit writes only
    // the row's page.
    const plan = db.prepare("EXPLAIN UPDATE delayed_events SET running_since = 5, due_at = 1005 WHERE delay_id = 'syd_old' AND status = 'scheduled'").all() as Array<{ opcode: string; p4: unknown }>;
    expect(plan.filter((op) => op.opcode === 'IdxDelete' || op.opcode === 'IdxInsert')).toEqual([]);
    store.restart('syd_old', 5, 1005);
    expect(store.get('syd_old')?.due_at).toBe(1005);
    db.close();
  });
});
