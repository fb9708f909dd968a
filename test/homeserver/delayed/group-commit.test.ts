/**
 * Group commit in the homeserver: with sqlite_synchronous "full", a commit of restarts waits
 * (up to group_commit.wait_ms) for a client that was answered a moment ago on another connection,
 * so that its next write can share the fsync. The waiting rules themselves are covered in
 * test/lib (BatchWriter gathering, ReturningClients); this checks the homeserver wires them.
 */
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';

import { startWithRoom, type TestHomeserver } from '../harness.js';
import { act, delayIdOf, MANY_MANAGEMENT_CALLS, scheduleState } from './support.js';

const WAIT_MS = 10;

describe('group commit', () => {
  let t: TestHomeserver | undefined;
  let other: Client | undefined;

  afterEach(async () => {
    await other?.destroy();
    other = undefined;
    await t?.close();
    t = undefined;
  });

  it('holds a restart for a client answered on another connection, then answers it', async () => {
    const fixture = await startWithRoom({
      users: ['alice'],
      overrides: {
        ...MANY_MANAGEMENT_CALLS,
        sqlite_synchronous: 'full',
        group_commit: { wait_ms: WAIT_MS, returning_window_ms: 60_000 },
      },
    });
    t = fixture.t;
    const alice = fixture.users.alice;
    const delayId = await delayIdOf(scheduleState(t, alice, fixture.roomId, 60_000, { n: 1 }));

    // Another client asks once and then stays quiet on its kept-alive connection.
    other = new Client(t.url);
    const res = await other.request({ method: 'GET', path: '/_matrix/client/versions' });
    await res.body.text();
    // The restart's new due time must differ from the scheduled one.
    await new Promise((resolve) => setTimeout(resolve, 5));

    const dueAt = () =>
      (t!.hs.db.prepare('SELECT due_at FROM delayed_events WHERE delay_id = ?').get(delayId) as { due_at: number }).due_at;
    const dueBefore = dueAt();
    const started = performance.now();
    expect((await act(t, delayId, 'restart')).status).toBe(200);
    // It never came back, so the commit waited the whole wait_ms for it.
    expect(performance.now() - started).toBeGreaterThanOrEqual(WAIT_MS);
    expect(dueAt()).toBeGreaterThan(dueBefore);
  });
});
