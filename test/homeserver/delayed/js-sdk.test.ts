/**
 * matrix-js-sdk (unmodified) against the module: every delayed-event call it has, a syncing
 * client that sees the room state change when a delayed event fires, and a MatrixRTC membership
 * published as MSC4354 sticky events whose delayed sticky leave ends it.
 */
import {
  ClientEvent,
  createClient,
  Direction,
  EventType,
  type MatrixClient,
  RoomStateEvent,
  UpdateDelayedEventAction,
} from 'matrix-js-sdk';
import { type Logger, logger as sdkRootLogger } from 'matrix-js-sdk/lib/logger.js';
import { MatrixRTCSessionEvent } from 'matrix-js-sdk/lib/matrixrtc/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { waitFor } from '../../e2e/support/proc.js';
import { type Session, startWithRoom, type TestHomeserver } from '../harness.js';
import { ALICE_AND_BOB, MANY_MANAGEMENT_CALLS, openRoom, roomPath, timeline } from './support.js';

const CALL_MEMBER = 'org.matrix.msc3401.call.member';

const noop = (): void => undefined;

/** Starts the client and resolves once its first sync is processed. */
async function startSyncing(c: MatrixClient, initialSyncLimit: number): Promise<void> {
  const ready = new Promise<void>((resolve) => {
    c.on(ClientEvent.Sync, (state) => {
      if (state === 'PREPARED') resolve();
    });
  });
  await c.startClient({ initialSyncLimit });
  await ready;
}
/** The SDK logs every sync step; tests read assertions, not that. */
const quietLogger: Logger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, getChild: () => quietLogger };
// MatrixRTC logs through the SDK's root logger rather than the client's: only its errors show.
const sdkRoot = sdkRootLogger as unknown as { methodFactory: (method: string) => (...args: unknown[]) => void; rebuild(): void };
sdkRoot.methodFactory = (method) => (method === 'error' ? (...args) => console.error(...args) : noop);
sdkRoot.rebuild();

describe('matrix-js-sdk', () => {
  let t: TestHomeserver;
  let alice: Session;
  let bob: Session;
  let roomId: string;
  let client: MatrixClient;

  const clientFor = (s: Session, fetchFn?: typeof fetch): MatrixClient =>
    createClient({
      baseUrl: t.url,
      accessToken: s.accessToken,
      userId: s.userId,
      deviceId: s.deviceId,
      logger: quietLogger,
      ...(fetchFn ? { fetchFn } : {}),
    });

  beforeAll(async () => {
    ({ t, roomId, users: { alice, bob } } = await startWithRoom({
      ...ALICE_AND_BOB,
      overrides: MANY_MANAGEMENT_CALLS,
    }));
    // Call membership state is open to everyone in this room, as MatrixRTC rooms configure it.
    const pl = await t.request('GET', roomPath(roomId, '/state/m.room.power_levels/'), { token: alice.accessToken });
    pl.body.events[CALL_MEMBER] = 0;
    await t.request('PUT', roomPath(roomId, '/state/m.room.power_levels/'), { token: alice.accessToken, body: pl.body });
    client = clientFor(alice);
  });
  afterAll(async () => {
    client?.stopClient();
    await t?.close();
  });

  it('schedules state and message events and lists them', async () => {
    const state = await client._unstable_sendDelayedStateEvent(roomId, { delay: 600_000 }, CALL_MEMBER as any, {} as any, `_${alice.userId}_dev`);
    const msg = await client._unstable_sendDelayedEvent(roomId, { delay: 500_000 }, null, 'com.example.test' as any, { body: 'hi' } as any);
    expect(state.delay_id).toBeTypeOf('string');
    expect(msg.delay_id).toBeTypeOf('string');
    const listed = await client._unstable_getDelayedEvents();
    expect(listed.scheduled?.map((e) => e.delay_id)).toEqual([msg.delay_id, state.delay_id]);
    const one = await client._unstable_getDelayedEvents('scheduled', state.delay_id);
    expect(one.scheduled).toHaveLength(1);
    expect(one.scheduled![0]).toMatchObject({ type: CALL_MEMBER, state_key: `_${alice.userId}_dev`, delay: 600_000 });
  });

  it('restarts, cancels and sends, and reports finalised events', async () => {
    const a = await client._unstable_sendDelayedEvent(roomId, { delay: 600_000 }, null, 'com.example.test' as any, { n: 'a' } as any);
    const b = await client._unstable_sendDelayedEvent(roomId, { delay: 600_000 }, null, 'com.example.test' as any, { n: 'b' } as any);
    expect(await client._unstable_restartScheduledDelayedEvent(a.delay_id)).toEqual({});
    expect(await client._unstable_cancelScheduledDelayedEvent(b.delay_id)).toEqual({});
    expect(await client._unstable_sendScheduledDelayedEvent(a.delay_id)).toEqual({});
    await expect(client._unstable_cancelScheduledDelayedEvent(b.delay_id)).rejects.toMatchObject({ errcode: 'M_NOT_FOUND' });
    const finalised = await client._unstable_getDelayedEvents('finalised', [a.delay_id, b.delay_id]);
    expect(finalised.finalised?.map((f) => [f.delayed_event.delay_id, f.outcome, f.reason])).toEqual([
      [a.delay_id, 'send', 'action'],
      [b.delay_id, 'cancel', 'action'],
    ]);
    expect(finalised.finalised?.[0]?.event_id).toMatch(/^\$/);
    const sent = (await timeline(t, alice, roomId, 'com.example.test')).filter((e) => e.content.n === 'a');
    expect(sent).toHaveLength(1);
  });

  it('the deprecated body-form update works (falls back to the authenticated request)', async () => {
    const a = await client._unstable_sendDelayedEvent(roomId, { delay: 600_000 }, null, 'com.example.test' as any, { n: 'upd' } as any);
    expect(await client._unstable_updateDelayedEvent(a.delay_id, UpdateDelayedEventAction.Restart)).toEqual({});
    expect(await client._unstable_updateDelayedEvent(a.delay_id, UpdateDelayedEventAction.Send)).toEqual({});
    expect(await client._unstable_updateDelayedEvent(a.delay_id, UpdateDelayedEventAction.Send)).toEqual({});
    await expect(client._unstable_updateDelayedEvent(a.delay_id, UpdateDelayedEventAction.Cancel)).rejects.toMatchObject({
      httpStatus: 409,
    });
  });

  it('a syncing client sees the state change when a delayed leave fires', async () => {
    const watcher = clientFor(bob);
    try {
      await startSyncing(watcher, 5);
      const key = `_${alice.userId}_leave`;
      await client.sendStateEvent(roomId, CALL_MEMBER as any, { joined: true } as any, key);
      await waitFor(
        'join state at the watcher',
        () => watcher.getRoom(roomId)?.currentState.getStateEvents(CALL_MEMBER, key)?.getContent().joined === true,
      );
      const changed = new Promise<Record<string, unknown>>((resolve) => {
        watcher.on(RoomStateEvent.Events, (event) => {
          if (event.getType() === CALL_MEMBER && event.getStateKey() === key) resolve(event.getContent());
        });
      });
      await client._unstable_sendDelayedStateEvent(roomId, { delay: 300 }, CALL_MEMBER as any, {} as any, key);
      expect(await changed).toEqual({});
      expect(watcher.getRoom(roomId)?.currentState.getStateEvents(CALL_MEMBER, key)?.getSender()).toBe(alice.userId);
    } finally {
      watcher.stopClient();
    }
  });

  it('a delayed kick moves the room to leave in the kicked user’s client, whose history still reaches the kick', async () => {
    const kickRoom = await openRoom(t, alice, [bob]);
    for (let i = 1; i <= 6; i++) await client.sendTextMessage(kickRoom, `before ${i}`);
    const kicked = clientFor(bob);
    try {
      // A short window, so the older messages are reachable only through /messages.
      await startSyncing(kicked, 2);
      expect(kicked.getRoom(kickRoom)?.getMyMembership()).toBe('join');
      const kick = await client._unstable_sendDelayedStateEvent(
        kickRoom,
        { delay: 300 },
        'm.room.member' as any,
        { membership: 'leave', reason: 'time is up' } as any,
        bob.userId,
      );
      expect(kick.delay_id).toBeTypeOf('string');
      await waitFor('the kicked client to see its membership end', () => kicked.getRoom(kickRoom)?.getMyMembership() === 'leave');
      await client.sendTextMessage(kickRoom, 'after the kick');

      const room = kicked.getRoom(kickRoom)!;
      const live = room.getLiveTimeline();
      while (live.getPaginationToken(Direction.Backward) !== null) {
        await kicked.scrollback(room, 30);
      }
      const texts = live
        .getEvents()
        .filter((e) => e.getType() === 'm.room.message')
        .map((e) => e.getContent().body);
      expect(texts).toEqual([1, 2, 3, 4, 5, 6].map((i) => `before ${i}`));
      const last = live.getEvents().at(-1)!;
      expect([last.getType(), last.getStateKey(), last.getSender(), last.getContent().membership]).toEqual([
        'm.room.member',
        bob.userId,
        alice.userId,
        'leave',
      ]);
    } finally {
      kicked.stopClient();
    }
  });

  it('a MatrixRTC membership sent as sticky events (unstableSendStickyEvents) ends with its delayed sticky leave', async () => {
    const callRoom = await openRoom(t, alice, [bob]);
    let online = true;
    const sent: string[] = [];
    const app = clientFor(alice, async (input, init) => {
      if (!online) throw new TypeError('fetch failed (the app is gone)');
      sent.push(`${init?.method ?? 'GET'} ${decodeURIComponent(String(input))}`);
      return fetch(input, init);
    });
    const watcher = clientFor(bob);
    try {
      await startSyncing(watcher, 5);
      await startSyncing(app, 5);
      const memberId = `${alice.userId}:${alice.deviceId}`;
      const watching = watcher.matrixRTC.getRoomSession(
        await waitFor('the room at the watcher', () => watcher.getRoom(callRoom) ?? undefined),
      );
      const ended = new Promise<void>((resolve) => {
        watching.on(MatrixRTCSessionEvent.MembershipsChanged, (before, after) => {
          if (before.some((m) => m.sender === alice.userId) && !after.some((m) => m.sender === alice.userId)) resolve();
        });
      });
      const session = app.matrixRTC.getRoomSession(
        await waitFor('the room at the app', () => app.getRoom(callRoom) ?? undefined),
      );
      // The sticky form publishes the transport it uses (js-sdk 43 reads it unguarded).
      const transport = { type: 'livekit', livekit_service_url: 'http://127.0.0.1:9' };
      session.joinRTCSession(
        { userId: alice.userId, deviceId: alice.deviceId, memberId },
        [transport],
        transport,
        { unstableSendStickyEvents: true, delayedLeaveEventDelayMs: 1500, delayedLeaveEventRestartMs: 500, manageMediaKeys: false },
      );
      await waitFor('the watcher to see the membership', () =>
        watching.memberships.some((m) => m.sender === alice.userId && m.deviceId === alice.deviceId),
      );
      // Both were sent as sticky events: the hangup scheduled, the membership published.
      const stickySends = sent.filter((r) => r.startsWith('PUT') && r.includes(`/send/${EventType.RTCMembership}/`));
      expect(stickySends.some((r) => r.includes('org.matrix.msc4140.delay=1500'))).toBe(true);
      expect(stickySends.every((r) => r.includes('org.matrix.msc4354.sticky_duration_ms=3600000'))).toBe(true);
      const room = watcher.getRoom(callRoom)!;
      const joined = room._unstable_getKeyedStickyEvent(alice.userId, EventType.RTCMembership, memberId);
      expect(joined?.getContent().application).toMatchObject({ type: 'm.call' });

      // The app dies: nobody restarts the delayed leave any more, so it fires.
      online = false;
      app.stopClient();
      await ended;
      const left = room._unstable_getKeyedStickyEvent(alice.userId, EventType.RTCMembership, memberId);
      expect(left?.getContent()).toEqual({ slot_id: 'm.call#ROOM', msc4354_sticky_key: memberId });
      expect(left?.unstableStickyInfo?.duration_ms).toBe(3_600_000);
    } finally {
      online = false;
      app.stopClient();
      watcher.stopClient();
    }
  });
});
