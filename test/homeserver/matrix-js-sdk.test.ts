import { ClientEvent, createClient, type MatrixClient, type MatrixEvent, SyncState } from 'matrix-js-sdk';
import type { Logger } from 'matrix-js-sdk/lib/logger.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { enc, type Session, startTestHomeserver, type TestHomeserver } from './harness.js';

/** The SDK logs every request, and warns about our empty push ruleset; keep errors only. */
const quiet: Logger = {
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: (...msg) => console.error(...msg),
  getChild: () => quiet,
};

let t: TestHomeserver;
let alice: Session;
let bob: Session;
let client: MatrixClient | undefined;
const seen: string[] = [];

beforeAll(async () => {
  t = await startTestHomeserver();
  t.hs.app.server.on('request', (req, res) => {
    res.on('finish', () => seen.push(`${res.statusCode} ${req.method} ${req.url?.split('?')[0]}`));
  });
  alice = await t.register('alice');
  bob = await t.register('bob');
});
afterAll(async () => {
  client?.stopClient();
  await t?.close();
});

/** Resolves once the client reaches one of `states`. */
function waitForSync(c: MatrixClient, states: SyncState[]): Promise<SyncState> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no sync state in ${states.join(',')}`)), 15_000);
    const onSync = (state: SyncState) => {
      if (state === SyncState.Error) {
        clearTimeout(timer);
        c.off(ClientEvent.Sync, onSync);
        reject(new Error('sync error'));
      } else if (states.includes(state)) {
        clearTimeout(timer);
        c.off(ClientEvent.Sync, onSync);
        resolve(state);
      }
    };
    c.on(ClientEvent.Sync, onSync);
  });
}

describe('matrix-js-sdk', () => {
  it('syncs and sees a state change sent by another user', async () => {
    const roomId = await t.createRoom(alice.accessToken, { preset: 'public_chat', name: 'SDK room' });
    await t.request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: bob.accessToken });

    client = createClient({
      baseUrl: t.url,
      accessToken: bob.accessToken,
      userId: bob.userId,
      deviceId: bob.deviceId,
      logger: quiet,
    });
    const prepared = waitForSync(client, [SyncState.Prepared, SyncState.Syncing]);
    await client.startClient({ initialSyncLimit: 10 });
    await prepared;
    expect(client.getRoom(roomId)?.name).toBe('SDK room');

    const arrived = new Promise<MatrixEvent>((resolve) => {
      client!.on(ClientEvent.Event, (ev: MatrixEvent) => {
        if (ev.getType() === 'com.example.status' && ev.getRoomId() === roomId) resolve(ev);
      });
    });
    const put = await t.request('PUT', `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.status/`, {
      token: alice.accessToken,
      body: { state: 'busy' },
    });
    expect(put.status).toBe(200);
    const ev = await arrived;
    expect(ev.getContent()).toEqual({ state: 'busy' });
    expect(ev.getSender()).toBe(alice.userId);
    const roomState = client.getRoom(roomId)?.currentState.getStateEvents('com.example.status', '');
    expect(roomState?.getContent()).toEqual({ state: 'busy' });
    // Everything the SDK asked for was served, except the optional MatrixRTC transport probe.
    const failed = seen.filter((line) => !line.startsWith('200 ') && !line.includes('/rtc/transports'));
    expect(failed).toEqual([]);
  });

  it('a client started later shows a room it was kicked from as left, and syncLeftRooms() adds one it left', async () => {
    const carol = await t.register('carol');
    const kickedFrom = await t.createRoom(alice.accessToken, { preset: 'public_chat', name: 'Kicked from' });
    const leftBehind = await t.createRoom(alice.accessToken, { preset: 'public_chat', name: 'Left behind' });
    for (const roomId of [kickedFrom, leftBehind]) {
      await t.request('POST', `/_matrix/client/v3/join/${enc(roomId)}`, { token: carol.accessToken });
    }
    const kick = await t.request('POST', `/_matrix/client/v3/rooms/${enc(kickedFrom)}/kick`, {
      token: alice.accessToken,
      body: { user_id: carol.userId },
    });
    expect(kick.status).toBe(200);
    await t.request('POST', `/_matrix/client/v3/rooms/${enc(leftBehind)}/leave`, { token: carol.accessToken });

    const later = createClient({
      baseUrl: t.url,
      accessToken: carol.accessToken,
      userId: carol.userId,
      deviceId: carol.deviceId,
      logger: quiet,
    });
    try {
      const prepared = waitForSync(later, [SyncState.Prepared, SyncState.Syncing]);
      await later.startClient({ initialSyncLimit: 5 });
      await prepared;
      const kickedRoom = later.getRoom(kickedFrom);
      expect(kickedRoom?.getMyMembership()).toBe('leave');
      expect(kickedRoom?.name).toBe('Kicked from');
      expect(later.getRoom(leftBehind)).toBeNull();

      const left = await later.syncLeftRooms();
      expect(left.map((r) => r.roomId)).toEqual([leftBehind]);
      expect(later.getRoom(leftBehind)?.getMyMembership()).toBe('leave');
      expect(later.getRoom(leftBehind)?.name).toBe('Left behind');
    } finally {
      later.stopClient();
    }
  });
});
