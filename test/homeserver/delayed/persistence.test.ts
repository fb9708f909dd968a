/**
 * In-process restarts over the same SQLite file: the schedule, transaction ids and scoped tokens
 * survive; overdue events go out in due order at start-up (not throttled by the send limit); a
 * mass expiry is sent completely and in order.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type Session, startTestHomeserver, type TestHomeserver } from '../harness.js';
import {
  act,
  delayIdOf,
  ManualClock,
  newTxn,
  openRoom,
  scheduleDedicated,
  scheduleMessage,
  timeline,
  U,
  waitFor,
} from './support.js';

describe('restart of the homeserver', () => {
  let dataDir: string;
  const overrides = { rate_limits: { send: { per_second: 0.001, burst: 1 } } };

  beforeAll(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'lastwill-delayed-restart-'));
  });
  afterAll(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('keeps the schedule, txn ids and tokens, and catches up in due order without throttling', async () => {
    let t: TestHomeserver | undefined = await startTestHomeserver(overrides, { clock: new ManualClock(), dataDir });
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
      const clock = new ManualClock();
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
  let clock: ManualClock;
  let users: Session[];
  let roomId: string;

  beforeAll(async () => {
    clock = new ManualClock();
    t = await startTestHomeserver({ rate_limits: { schedule: { per_second: 0, burst: 0 } } }, { clock });
    users = [await t.register('u1'), await t.register('u2'), await t.register('u3')];
    roomId = await openRoom(t, users[0]!, users.slice(1));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('sends 120 events falling due at once, all of them, in due order', async () => {
    for (let i = 0; i < 120; i++) {
      await delayIdOf(scheduleMessage(t, users[i % 3]!, roomId, 1_000 + i, { i }));
    }
    // One advance: the heap hands all 120 over at once; they go out 32 per event-loop turn.
    clock.advance(10_000);
    const events = await waitFor(async () => {
      const got = await timeline(t, users[0]!, roomId, 'com.example.test');
      return got.length === 120 ? got : undefined;
    }, 'all 120 events');
    expect(events.map((e) => e.content.i)).toEqual(Array.from({ length: 120 }, (_, i) => i));
  });
});
