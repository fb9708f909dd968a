/**
 * Batched timed sends: the events due in one turn share one transaction, each in a savepoint of
 * its own. A refused event (power levels, send rate limit) is finalised as failed without touching
 * the others; due order holds inside and across batches; /sync wakes once the batch has committed;
 * a batch whose transaction fails leaves every one of its events scheduled. (kill -9 in the middle
 * of a batch is covered by crash.test.ts.)
 */

import { afterEach, describe, expect, it } from 'vitest';

import { waitFor } from '../../e2e/support/proc.js';
import { FakeClock } from '../../support/fake-clock.js';
import { readMetric } from '../../support/metrics.js';
import { type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import {
  act,
  ALICE_AND_BOB,
  capturingLogger,
  delayIdOf,
  MANY_MANAGEMENT_CALLS,
  nextTurn,
  ONE_SEND_PER_USER,
  scheduleMessage,
  scheduleState,
  timeline,
  U,
} from './support.js';

/**
 * Event-loop turns until none of the events is still scheduled (finalised, or already trimmed
 * away): a batch also ends when its time budget (a few ms of real time) runs out, which a loaded
 * test machine can make happen.
 */
async function untilFinalised(t: TestHomeserver, ids: string[]): Promise<void> {
  const scheduled = (id: string) => (rowOf(t, id) as Row | undefined)?.status === 'scheduled';
  for (let turn = 0; turn < 100 && ids.some(scheduled); turn++) await nextTurn();
}

interface Row {
  status: string;
  error: string | null;
  fin_seq: number | null;
}

const rowOf = (t: TestHomeserver, delayId: string): Row =>
  t.hs.db.prepare('SELECT status, error, fin_seq FROM delayed_events WHERE delay_id = ?').get(delayId) as unknown as Row;

describe('batched timed sends', () => {
  let t: TestHomeserver | undefined;

  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it('a send refused by power levels fails alone; the rest of the batch is sent in due order', async () => {
    const clock = new FakeClock();
    let alice: Session;
    let bob: Session;
    let roomId: string;
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({ ...ALICE_AND_BOB, clock }));
    // Bob (power 0) may schedule m.room.name, but sending it needs 50: refused at send time.
    const first = await delayIdOf(scheduleMessage(t, bob, roomId, 1_000, { n: 1 }));
    const refused = await delayIdOf(scheduleState(t, bob, roomId, 1_001, { name: 'nope' }, 'm.room.name'));
    const third = await delayIdOf(scheduleMessage(t, alice, roomId, 1_002, { n: 3 }));
    const fourth = await delayIdOf(scheduleMessage(t, bob, roomId, 1_003, { n: 4 }));

    clock.advance(5_000);
    // The heap only queues; the sends happen in the drain's batches on later turns.
    expect(rowOf(t, first).status).toBe('scheduled');
    await untilFinalised(t, [first, refused, third, fourth]);
    const rows = [first, refused, third, fourth].map((id) => rowOf(t!, id));
    expect(rows.map((r) => r.status)).toEqual(['sent', 'failed', 'sent', 'sent']);
    expect(JSON.parse(rows[1]!.error!).errcode).toBe('M_FORBIDDEN');
    // Finalised in due order, the failure in its place.
    const seqs = rows.map((r) => r.fin_seq!);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);

    expect((await timeline(t, alice, roomId, 'com.example.test')).map((e) => e.content.n)).toEqual([1, 3, 4]);
    expect(await timeline(t, alice, roomId, 'm.room.name')).toEqual([]);
    // The refusal is replayed to a later manual send, exactly as for an unbatched send.
    const replay = await act(t, refused, 'send', bob.accessToken);
    expect(replay.status).toBe(403);
    expect(replay.body.errcode).toBe('M_FORBIDDEN');
  });

  it('a send refused by the send rate limit is finalised as failed; the others are sent', async () => {
    const clock = new FakeClock();
    let alice: Session;
    let bob: Session;
    let roomId: string;
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      clock,
      overrides: ONE_SEND_PER_USER,
    }));
    const a1 = await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 1 }));
    const b2 = await delayIdOf(scheduleMessage(t, bob, roomId, 1_001, { n: 2 }));
    const a3 = await delayIdOf(scheduleMessage(t, alice, roomId, 1_002, { n: 3 }));
    const b4 = await delayIdOf(scheduleMessage(t, bob, roomId, 1_003, { n: 4 }));
    clock.advance(5_000);
    await untilFinalised(t, [a1, b2, a3, b4]);
    // One send per user fits the bucket; each user's second one is refused.
    expect([a1, b2, a3, b4].map((id) => rowOf(t!, id).status)).toEqual(['sent', 'sent', 'failed', 'failed']);
    expect(JSON.parse(rowOf(t, a3).error!).errcode).toBe('M_LIMIT_EXCEEDED');
    expect((await timeline(t, alice, roomId, 'com.example.test')).map((e) => e.content.n)).toEqual([1, 2]);
  });

  it('wakes a waiting /sync once the batch has committed', async () => {
    const clock = new FakeClock();
    let alice: Session;
    let roomId: string;
    ({ t, roomId, users: { alice } } = await startWithRoom({ ...ALICE_AND_BOB, clock }));
    for (let n = 1; n <= 3; n++) await delayIdOf(scheduleMessage(t, alice, roomId, 1_000 + n, { n }));
    const initial = await t.request('GET', '/_matrix/client/v3/sync?timeout=0', { token: alice.accessToken });
    const since = encodeURIComponent(initial.body.next_batch as string);
    // The long poll's timeout runs on the fake clock: only a wake-up can answer it.
    const polled = t.request('GET', `/_matrix/client/v3/sync?timeout=600000&since=${since}`, {
      token: alice.accessToken,
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    clock.advance(5_000);
    const res = await polled;
    expect(res.status).toBe(200);
    const events = res.body.rooms.join[roomId].timeline.events as Array<{ type: string; content: { n: number } }>;
    expect(events.filter((e) => e.type === 'com.example.test').map((e) => e.content.n)).toEqual([1, 2, 3]);
  });

  it('a batch whose transaction fails sends nothing and leaves every event scheduled', async () => {
    const { log, lines } = capturingLogger();
    const clock = new FakeClock();
    let alice: Session;
    let roomId: string;
    ({ t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: ALICE_AND_BOB.room,
      clock,
      // Keeping no finalised rows makes the batch's closing trim delete, which the trigger refuses.
      overrides: { ...MANY_MANAGEMENT_CALLS, delayed_events: { terminated_keep_per_user: 0 } },
      log,
    }));
    const ids: string[] = [];
    for (let n = 1; n <= 3; n++) ids.push(await delayIdOf(scheduleMessage(t, alice, roomId, 1_000 + n, { n })));
    t.hs.db.exec(
      "CREATE TEMP TRIGGER fail_trim BEFORE DELETE ON delayed_events BEGIN SELECT RAISE(ABORT, 'injected'); END",
    );
    clock.advance(5_000);
    const failed = () => lines.some((l) => l.level === 50 && l.msg === 'committing a batch of timed delayed sends failed');
    await waitFor('the failed batch logged', failed);
    expect(ids.map((id) => rowOf(t!, id).status)).toEqual(['scheduled', 'scheduled', 'scheduled']);
    expect(await timeline(t, alice, roomId, 'com.example.test')).toEqual([]);
    // The metrics count only what committed.
    const registry = t.hs.metrics.registry;
    const sentByDelay = () =>
      readMetric(registry, 'lastwill_homeserver_delayed_events_finalised_total', { status: 'sent', cause: 'delay' });
    const lateness = () => readMetric(registry, 'lastwill_homeserver_timed_send_lateness_seconds', {}, '_count');
    expect([await sentByDelay(), await lateness()]).toEqual([0, 0]);
    // They are still in the schedule: listed, and a restart arms them again.
    const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
    expect(listed.body.delayed_events.map((e: { delay_id: string }) => e.delay_id)).toEqual(ids);
    t.hs.db.exec('DROP TRIGGER fail_trim');
    for (const id of ids) expect((await act(t, id, 'restart', alice.accessToken)).status).toBe(200);
    clock.advance(5_000);
    const sent = await waitFor('the restarted events sent', async () => {
      const got = await timeline(t!, alice, roomId, 'com.example.test');
      return got.length === 3 ? got : undefined;
    });
    expect(sent.map((e) => e.content.n)).toEqual([1, 2, 3]);
    expect([await sentByDelay(), await lateness()]).toEqual([3, 3]);
  });

  it('keeps exactly the newest terminated_keep_per_user finalised rows per user: across batches, manual actions and a failed batch', async () => {
    const { log, lines } = capturingLogger();
    const clock = new FakeClock();
    let alice: Session;
    let bob: Session;
    let roomId: string;
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      clock,
      overrides: { ...MANY_MANAGEMENT_CALLS, delayed_events: { terminated_keep_per_user: 2 } },
      log,
    }));
    const finalisedOf = (s: Session): string[] =>
      (
        t!.hs.db
          .prepare("SELECT delay_id FROM delayed_events WHERE user_id = ? AND status <> 'scheduled' ORDER BY fin_seq")
          .all(s.userId) as Array<{ delay_id: string }>
      ).map((r) => r.delay_id);
    let n = 0;
    const schedule = (s: Session) => delayIdOf(scheduleMessage(t!, s, roomId, 1_000 + ++n, { n }));
    /** Schedules `count` events of `s` and lets them fall due together. */
    const timed = async (s: Session, count: number): Promise<string[]> => {
      const ids: string[] = [];
      for (let i = 0; i < count; i++) ids.push(await schedule(s));
      clock.advance(5_000);
      await untilFinalised(t!, ids);
      return ids;
    };

    // Below the cap; then a row finalised outside any batch, then a batch that reaches the cap.
    const [a1] = await timed(alice, 1);
    const cancelled = await schedule(alice);
    expect((await act(t, cancelled, 'cancel', alice.accessToken)).status).toBe(200);
    expect(finalisedOf(alice)).toEqual([a1, cancelled]);
    let kept = [cancelled, ...(await timed(alice, 1))];
    expect(finalisedOf(alice)).toEqual(kept);
    // At the cap, batch after batch.
    for (let count = 1; count <= 3; count++) {
      kept = [...kept, ...(await timed(alice, count))].slice(-2);
      expect(finalisedOf(alice)).toEqual(kept);
    }

    // Bob below the cap, alice at it: a batch of both whose closing trim fails on alice's rows
    // (after bob's, trimmed first as his event is due first) changes neither.
    const [b1] = await timed(bob, 1);
    const b = await schedule(bob);
    const a = await schedule(alice);
    t.hs.db.exec(
      `CREATE TEMP TRIGGER fail_trim BEFORE DELETE ON delayed_events WHEN old.user_id = '${alice.userId}'
       BEGIN SELECT RAISE(ABORT, 'injected'); END`,
    );
    clock.advance(5_000);
    const failed = () => lines.some((l) => l.level === 50 && l.msg === 'committing a batch of timed delayed sends failed');
    await waitFor('the failed batch logged', failed);
    t.hs.db.exec('DROP TRIGGER fail_trim');
    expect(finalisedOf(bob)).toEqual([b1]);
    expect(finalisedOf(alice)).toEqual(kept);
    for (const [id, s] of [[b, bob], [a, alice]] as const) {
      expect((await act(t, id, 'restart', s.accessToken)).status).toBe(200);
    }
    clock.advance(5_000);
    await untilFinalised(t, [a, b]);
    expect(finalisedOf(bob)).toEqual([b1, b]);
    expect(finalisedOf(alice)).toEqual([kept[1], a]);
  });
});
