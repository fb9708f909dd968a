/**
 * In-process restarts over the same SQLite file: the schedule, transaction ids and scoped tokens
 * survive; overdue events go out in due order at start-up (not throttled by the send limit); a
 * mass expiry is sent completely, in order and in slices; a failing database during timed sends
 * is logged and leaves the scheduler running.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { SENDS_PER_TURN } from '../../../src/homeserver/delayed/engine.js';
import { waitFor } from '../../e2e/support/proc.js';
import { FakeClock } from '../../support/fake-clock.js';
import { type Session, startTestHomeserver, startWithRoom, type TestHomeserver } from '../harness.js';
import {
  act,
  capturingLogger,
  delayIdOf,
  newTxn,
  nextTurn,
  ONE_SEND_PER_USER,
  OPEN_ROOM,
  openRoom,
  scheduleDedicated,
  scheduleMessage,
  timeline,
  U,
} from './support.js';


describe('restart of the homeserver', () => {
  let dataDir: string;
  const overrides = ONE_SEND_PER_USER;

  beforeAll(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'lastwill-delayed-restart-'));
  });
  afterAll(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('keeps the schedule, txn ids and tokens, and catches up in due order without throttling', async () => {
    let t: TestHomeserver | undefined = await startTestHomeserver(overrides, { clock: new FakeClock(), dataDir });
    let alice: Session;
    let roomId: string;
    const txn = newTxn();
    let dedicatedId: string;
    let token: string;
    let later: string;
    try {
      alice = await t.register('alice');
      roomId = await openRoom(t, alice);
      for (const [n, delay] of [[3, 30_000], [1, 10_000], [2, 20_000]] as const) {
        await delayIdOf(scheduleMessage(t, alice, roomId, delay, { n }));
      }
      dedicatedId = (await scheduleDedicated(t, alice, roomId, { delay_ms: 25_000, content: { n: 2.5 } }, { txn })).body.delay_id;
      later = await delayIdOf(scheduleMessage(t, alice, roomId, 3_600_000, { n: 'later' }));
      token = (
        await t.request('POST', '/_matrix/client/unstable/io.lastwill.delegation/scoped_token', {
          token: alice.accessToken,
          body: { delay_ids: [later] },
        })
      ).body.token;
      await t.close();
      t = undefined;

      // The clock of the restarted server is 60 s later: four events are overdue.
      const clock = new FakeClock();
      clock.advance(60_000);
      t = await startTestHomeserver(overrides, { clock, dataDir });
      const events = await timeline(t, alice, roomId, 'com.example.test');
      expect(events.map((e) => e.content.n)).toEqual([1, 2, 2.5, 3]);
      const listed = await t.request('GET', `${U}/delayed_events`, { token: alice.accessToken });
      expect(listed.body.delayed_events.map((e: { delay_id: string }) => e.delay_id)).toEqual([later]);
      // The dedicated PUT's transaction still maps to its (now sent) delay id.
      const repeat = await scheduleDedicated(t, alice, roomId, undefined, { txn });
      expect(repeat.body.delay_id).toBe(dedicatedId);
      expect((await act(t, later, 'restart', token)).status).toBe(200);
    } finally {
      await t?.close();
    }
  });
});

describe('mass expiry', () => {
  let t: TestHomeserver;
  let clock: FakeClock;
  let users: Session[];
  let roomId: string;

  beforeAll(async () => {
    clock = new FakeClock();
    const started = await startWithRoom({
      users: ['u1', 'u2', 'u3'],
      room: OPEN_ROOM,
      members: ['u2', 'u3'],
      overrides: { rate_limits: { schedule: { per_second: 0, burst: 0 }, send: { per_second: 0, burst: 0 } } },
      clock,
    });
    ({ t, roomId } = started);
    users = Object.values(started.users);
  });
  afterAll(async () => {
    await t?.close();
  });

  const sentCount = (): number =>
    (t.hs.db.prepare("SELECT COUNT(*) AS n FROM delayed_events WHERE status = 'sent'").get() as { n: number }).n;

  it('sends a mass expiry completely, in due order, one bounded batch per event-loop turn', async () => {
    // More than one batch holds, so order must also hold across batches.
    const total = SENDS_PER_TURN + 44;
    for (let i = 0; i < total; i++) {
      await delayIdOf(scheduleMessage(t, users[i % 3]!, roomId, 1_000 + i, { i }));
    }
    // One advance: the heap hands all of them over in one synchronous run; none may be sent in it.
    clock.advance(10_000);
    expect(sentCount()).toBe(0);
    await nextTurn();
    const afterOneTurn = sentCount();
    expect(afterOneTurn).toBeGreaterThan(0);
    expect(afterOneTurn).toBeLessThanOrEqual(SENDS_PER_TURN);
    const events = await waitFor(`all ${total} events`, async () => {
      const got = await timeline(t, users[0]!, roomId, 'com.example.test');
      return got.length === total ? got : undefined;
    });
    expect(events.map((e) => e.content.i)).toEqual(Array.from({ length: total }, (_, i) => i));
  });
});

describe('a failing database during timed sends', () => {
  it('is logged at error, sends nothing, and leaves the timer armed', async () => {
    const { log, lines } = capturingLogger();
    const clock = new FakeClock();
    const { t, roomId, users: { alice } } = await startWithRoom({
      users: ['alice'],
      room: OPEN_ROOM,
      // One send per ~17 min: the second due event takes the rate-limited (finalise-as-failed) path.
      overrides: ONE_SEND_PER_USER,
      clock,
      log,
    });
    try {
      await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 1 }));
      await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 2 }));
      // Every finalisation now fails inside SQLite, on both the send and the rate-limited path.
      t.hs.db.exec(
        "CREATE TEMP TRIGGER fail_finalise BEFORE UPDATE OF status ON delayed_events BEGIN SELECT RAISE(ABORT, 'injected'); END",
      );
      clock.advance(1_000);
      const failures = () => lines.filter((l) => l.level === 50 && l.msg === 'a timed delayed send failed');
      await waitFor('both failures logged', () => failures().length === 2);
      expect(await timeline(t, alice, roomId, 'com.example.test')).toEqual([]);
      t.hs.db.exec('DROP TRIGGER fail_finalise');
      // The scheduler still runs: a new event is sent when it falls due.
      clock.advance(20 * 60_000);
      await delayIdOf(scheduleMessage(t, alice, roomId, 1_000, { n: 3 }));
      clock.advance(1_000);
      const sent = await waitFor('the next timed send', async () => {
        const got = await timeline(t, alice, roomId, 'com.example.test');
        return got.length > 0 ? got : undefined;
      });
      expect(sent.map((e) => e.content.n)).toEqual([3]);
    } finally {
      await t.close();
    }
  });
});
