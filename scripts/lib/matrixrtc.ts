// A MatrixRTC client in Element Call's role, and a second client watching the call, on
// matrix-js-sdk: shared by the e2e tests (test/e2e/support/flow.ts), the soak and the participant
// tool (scripts/participant.ts). The plain-HTTP part (users, rooms, requests) is matrix-http.ts,
// re-exported here; code that needs no SDK imports it from there.
//
//   const user = await registerWithSharedSecret(hsUrl, secret, 'alice');
//   const observer = await startObserver({ baseUrl: hsUrl }, user, roomId);
//   const app = await startApp({ hs: { baseUrl: hsUrl }, agent: { url: agentUrl }, timeline }, user, roomId, observer, timing);
//   const { url, jwt } = await app.getToken({ delegate: true });   // the delay_id handed to the agent
//   …
//   app.close(); observer.close();
import { createHash } from 'node:crypto';

import {
  ClientEvent,
  createClient,
  EventType,
  type MatrixClient,
  type MatrixEvent,
  type Room,
  SyncState,
} from 'matrix-js-sdk';
import { logger as sdkRootLogger } from 'matrix-js-sdk/lib/logger.js';
import {
  type MatrixRTCSession,
  MatrixRTCSessionEvent,
  MembershipManagerEvent,
  Status,
} from 'matrix-js-sdk/lib/matrixrtc/index.js';

import {
  type DelayedEventListing,
  type HomeserverAddress,
  memberStatePath,
  MSC4140,
  MSC4143_TRANSPORTS,
  okJson,
  type RegisteredUser,
  requestJson,
  roomPath,
  rtcTransports,
} from './matrix-http.js';
import { waitFor } from './proc.js';
import { curl, type Timeline } from './timeline.js';

export * from './matrix-http.js';

/** Element Call's `delegatedDelayedLeave` preset: the client restarts only every 5 min. */
export const DELEGATED_PRESET = {
  delayedLeaveEventDelayMs: 3_600_000,
  delayedLeaveEventRestartMs: 300_000,
} as const;
/** The slot every Element Call room call uses (application m.call, id ROOM). */
export const SLOT_ID = 'm.call#ROOM';
/** How long js-sdk 43 keeps a sticky membership sticky (MembershipManager's MEMBERSHIP_STICKY_DURATION_MS). */
export const STICKY_MEMBERSHIP_MS = 3_600_000;
const MSC4195_DELEGATE = '/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave';

/**
 * unpadded_base64(SHA-256(JSON array)): how lk-jwt-service (and so the agent) names LiveKit rooms
 * ([room_id, slot_id]) and identities ([mxid, device, member id]). Computed here independently of
 * the agent's code so the e2e checks the agent against the documented derivation.
 */
function hashJsonArray(parts: readonly string[]): string {
  return createHash('sha256').update(JSON.stringify(parts), 'utf8').digest('base64').replace(/=+$/, '');
}

// ---------------------------------------------------------------------------------------------
// matrix-js-sdk clients

const sdkLog: string[] = [];
/** The SDK logs every request at debug; keep its output in a ring for failure dumps instead. */
function captureSdkLogs(): void {
  const root = sdkRootLogger as unknown as {
    methodFactory: (method: string) => (...args: unknown[]) => void;
    rebuild(): void;
  };
  root.methodFactory = (method: string) => (...args: unknown[]) => {
    sdkLog.push(`${method}: ${args.map((a) => (a instanceof Error ? a.message : String(a))).join(' ')}`);
    if (sdkLog.length > 2000) sdkLog.splice(0, 500);
  };
  root.rebuild();
}
captureSdkLogs();

export function sdkLogTail(): string {
  return sdkLog.slice(-200).join('\n');
}

/** A client's network: cut it and the app that crashed sends nothing more. */
interface NetworkGate {
  online: boolean;
  /** `METHOD /path` of every request that got an answer. */
  answered: string[];
}

/** A matrix-js-sdk client whose requests pass through `gate`. */
function matrixClient(hs: HomeserverAddress, user: RegisteredUser, gate: NetworkGate): MatrixClient {
  const fetchFn: typeof fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!gate.online) throw new TypeError('fetch failed (the app is gone)');
    const res = await fetch(input, init);
    gate.answered.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
    return res;
  };
  return createClient({
    baseUrl: hs.baseUrl,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    fetchFn,
    logger: sdkRootLogger.getChild(`[${user.userId}]`),
  });
}

async function startSyncing(client: MatrixClient, roomId: string): Promise<Room> {
  const synced = new Promise<void>((resolve, reject) => {
    const onSync = (state: SyncState) => {
      if (state === SyncState.Prepared || state === SyncState.Syncing) {
        client.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === SyncState.Error) {
        client.off(ClientEvent.Sync, onSync);
        reject(new Error('initial sync failed'));
      }
    };
    client.on(ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 5 });
  await synced;
  return waitFor(`room ${roomId} in the client's store`, () => client.getRoom(roomId) ?? undefined, {
    timeoutMs: 15_000,
  });
}

// ---------------------------------------------------------------------------------------------
// One call: the app (Element Call's role) and an observer

export interface JoinedApp {
  user: RegisteredUser;
  client: MatrixClient;
  session: MatrixRTCSession;
  memberId: string;
  /** The delay_id of the delayed leave scheduled at the join. */
  delayId: string;
  /**
   * The delay_id matrix-js-sdk holds now: it schedules a new delayed leave (and forgets the old one)
   * when a restart finds its delayed leave gone, or when it joins again after its membership ended.
   */
  currentDelayId(): string | undefined;
  /** Called with each new delay_id after the first (js-sdk's DelayIdChanged), as Element Call listens. */
  onDelayIdChanged(listener: (delayId: string) => void): void;
  /** State key of the app's call member event. */
  stateKey: string;
  /** running_since of the delayed leave right after the client scheduled it. */
  scheduledRunningSince: number;
  /** The identity the agent must derive: hash of [mxid, device, member id]. */
  identity: string;
  livekitRoom: string;
  /** Restart/send requests the client made after setupCall returned (answered ones). */
  clientRestartsSinceSetup(): string[];
  /** POST /get_token (with the current delay_id when `delegate`), as Element Call does. */
  getToken(o: { delegate: boolean }): Promise<{ url: string; jwt: string }>;
  /** POST /delegate_delayed_leave on the agent, with the current delay_id. */
  delegateToAgent(): Promise<void>;
  /**
   * The LiveKit service the homeserver offers (MSC4143 rtc/transports), as a client discovers the
   * `url` it names in MSC4195 requests; undefined when the homeserver offers none.
   */
  livekitServiceUrl(): Promise<string | undefined>;
  /** POST the MSC4195 endpoint of the homeserver; resolves with the raw answer (it may not exist). */
  delegateViaHomeserver(url: string): Promise<{ status: number; body: Record<string, unknown> }>;
  /** The app dies without leaving: its network is cut, then the client is stopped. */
  crash(): void;
  crashed(): boolean;
  /** The latest delayed leave, if still scheduled, as the homeserver lists it (read with the user's token). */
  listing(): Promise<DelayedEventListing | undefined>;
  /**
   * The finalised delayed leave (`?status=finalised`, the bundled homeserver's MSC4140 revision):
   * `{delayed_event, outcome, reason, event_id?, origin_server_ts?}`. Synapse 1.157 has no such listing.
   */
  finalised(): Promise<Record<string, unknown> | undefined>;
}

export interface Observer {
  user: RegisteredUser;
  client: MatrixClient;
  /** Whether the observer's MatrixRTCSession lists a membership of that user and device. */
  sees(userId: string, deviceId: string): boolean;
  /** Date.now() when the membership was last seen disappearing, if it has. */
  goneAt(userId: string, deviceId: string): number | undefined;
  /** Waits for the membership to disappear; resolves with that moment (Date.now()). */
  waitGone(userId: string, deviceId: string, timeoutMs: number): Promise<number>;
  /** The call member state event's content, read over HTTP with the observer's token. */
  stateContent(stateKey: string): Promise<Record<string, unknown> | undefined>;
  /** The current sticky `m.rtc.member` of that user and sticky key, as the observer's client holds it. */
  stickyMembership(userId: string, stickyKey: string): MatrixEvent | undefined;
  /** Its content. */
  stickyContent(userId: string, stickyKey: string): Record<string, unknown> | undefined;
}


/**
 * A second user's client that watches the call memberships through its own MatrixRTCSession;
 * `onChange` hears every change of the set of `<user>|<device>` memberships (the soak's record).
 */
export async function startObserver(
  hs: HomeserverAddress,
  user: RegisteredUser,
  roomId: string,
  onChange?: (memberships: ReadonlySet<string>, at: number) => void,
): Promise<Observer & { close(): void }> {
  const client = matrixClient(hs, user, { online: true, answered: [] });
  let room: Room;
  try {
    room = await startSyncing(client, roomId);
  } catch (err) {
    client.stopClient();
    throw err;
  }
  const session = client.matrixRTC.getRoomSession(room);
  const key = (u: string, d: string) => `${u}|${d}`;
  const goneAt = new Map<string, number>();
  let current = new Set<string>();
  session.on(MatrixRTCSessionEvent.MembershipsChanged, (_old, now) => {
    const next = new Set(now.map((m) => key(m.sender, m.deviceId)));
    for (const k of current) if (!next.has(k)) goneAt.set(k, Date.now());
    for (const k of next) goneAt.delete(k);
    current = next;
    onChange?.(next, Date.now());
  });
  const stickyMembership = (userId: string, stickyKey: string) =>
    room._unstable_getKeyedStickyEvent(userId, EventType.RTCMembership, stickyKey);
  return {
    user,
    client,
    sees: (u, d) => session.memberships.some((m) => m.sender === u && m.deviceId === d),
    goneAt: (u, d) => goneAt.get(key(u, d)),
    waitGone: (u, d, timeoutMs) =>
      waitFor(`membership of ${u}/${d} to end (seen by ${user.userId})`, () => goneAt.get(key(u, d)), {
        timeoutMs,
        intervalMs: 20,
      }),
    async stateContent(stateKey) {
      const r = await requestJson('GET', `${hs.baseUrl}${memberStatePath(roomId, stateKey)}`, {
        token: user.accessToken,
      });
      return r.status === 200 ? r.body : undefined;
    },
    stickyMembership,
    stickyContent: (userId, stickyKey) => stickyMembership(userId, stickyKey)?.getContent(),
    close: () => client.stopClient(),
  };
}

/**
 * The app in Element Call's role: joins the MatrixRTC session with the given timing, waits for
 * its delay_id and for the observer to see the membership, and then acts on the agent like
 * Element Call (token requests, delegations).
 */
export async function startApp(
  stack: { hs: HomeserverAddress; agent: { url: string }; timeline: Timeline },
  user: RegisteredUser,
  roomId: string,
  observer: Observer,
  timing: { delayMs: number; restartMs: number; sticky: boolean },
): Promise<JoinedApp & { close(): void }> {
  const { hs, agent, timeline } = stack;
  const gate: NetworkGate = { online: true, answered: [] };
  const client = matrixClient(hs, user, gate);
  const close = () => {
    gate.online = false; // stopClient() would otherwise send the leave
    client.stopClient();
  };
  try {
    const room = await startSyncing(client, roomId);
    const session = client.matrixRTC.getRoomSession(room);
    const memberId = `${user.userId}:${user.deviceId}`; // what the deprecated joinRoomSession() uses
    const delayIdKnown = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no delay_id within 15 s; sdk log:\n${sdkLogTail()}`)),
        15_000,
      );
      const onDelayId = (id: string | undefined) => {
        if (!id) return;
        clearTimeout(timer);
        session.off(MembershipManagerEvent.DelayIdChanged, onDelayId);
        resolve(id);
      };
      session.on(MembershipManagerEvent.DelayIdChanged, onDelayId);
    });
    const transport = { type: 'livekit', livekit_service_url: agent.url };
    session.joinRTCSession(
      { userId: user.userId, deviceId: user.deviceId, memberId },
      [transport],
      // The sticky form publishes the transport it uses; js-sdk 43 needs it named there.
      timing.sticky ? transport : undefined,
      {
        delayedLeaveEventDelayMs: timing.delayMs,
        delayedLeaveEventRestartMs: timing.restartMs,
        manageMediaKeys: false,
        ...(timing.sticky ? { unstableSendStickyEvents: true } : {}),
      },
    );
    const delayId = await delayIdKnown;
    timeline.setVar('DELAY_ID', delayId);
    let currentDelayId: string | undefined = delayId;
    /** The last delay_id js-sdk held, for the listings (it forgets it once it has sent it). */
    let lastDelayId = delayId;
    const delayIdListeners: Array<(id: string) => void> = [];
    session.on(MembershipManagerEvent.DelayIdChanged, (id: string | undefined) => {
      if (id === currentDelayId) return;
      currentDelayId = id;
      if (id === undefined) return;
      lastDelayId = id;
      timeline.mark('client', `scheduled a new delayed leave (${id}) in place of the old one`);
      for (const listener of delayIdListeners) listener(id);
    });
    const connected = () => session.membershipStatus === Status.Connected;
    await waitFor('the app to report its membership as Connected', connected, { timeoutMs: 15_000 });
    const seen = () => observer.sees(user.userId, user.deviceId);
    await waitFor(`${observer.user.userId} to see ${user.userId}'s call membership`, seen, { timeoutMs: 15_000 });
    const stateKey = `_${user.userId}_${user.deviceId}_m.call`;
    // MembershipManager restarts the delayed leave once right after publishing the membership;
    // let that settle so running_since below is the client's last word.
    const isRestart = (r: string) => r.startsWith('POST') && r.includes('/delayed_events/');
    await waitFor('the client\'s first restart', () => gate.answered.some(isRestart), { timeoutMs: 5_000 }).catch(
      () => undefined,
    );
    const answeredAtSetup = gate.answered.length;

    const listing = async (): Promise<DelayedEventListing | undefined> => {
      const body = await okJson('GET', `${hs.baseUrl}${MSC4140}/delayed_events`, { token: user.accessToken });
      return ((body.delayed_events ?? []) as DelayedEventListing[]).find((d) => d.delay_id === lastDelayId);
    };
    const finalised = async (): Promise<Record<string, unknown> | undefined> => {
      const body = await okJson('GET', `${hs.baseUrl}${MSC4140}/delayed_events?status=finalised`, {
        token: user.accessToken,
      });
      const list = (body.finalised ?? []) as Array<Record<string, unknown>>;
      return list.find((f) => (f.delayed_event as DelayedEventListing | undefined)?.delay_id === lastDelayId);
    };
    const scheduled = await listing();
    if (!scheduled) throw new Error(`the homeserver does not list delay_id ${delayId} as scheduled`);
    const statePath = memberStatePath(roomId, stateKey);
    const stickyPath = `${roomPath(roomId)}/send/${EventType.RTCMembership}/$(date +%s%N)`;
    const sticky = `org.matrix.msc4354.sticky_duration_ms=${STICKY_MEMBERSHIP_MS}`;
    const [scheduleHangup, publishMembership] = timing.sticky
      ? [
          curl('PUT', `$HS${stickyPath}?org.matrix.msc4140.delay=${timing.delayMs}&${sticky}`, {
            token: '$ALICE_TOKEN',
            body: { slot_id: SLOT_ID, msc4354_sticky_key: memberId },
          }),
          curl('PUT', `$HS${stickyPath}?${sticky}`, {
            token: '$ALICE_TOKEN',
            body: observer.stickyContent(user.userId, memberId) ?? {},
          }),
        ]
      : [
          curl('PUT', `$HS${statePath}?org.matrix.msc4140.delay=${timing.delayMs}`, {
            token: '$ALICE_TOKEN',
            body: {},
          }),
          curl('PUT', `$HS${statePath}`, {
            token: '$ALICE_TOKEN',
            body: (await observer.stateContent(stateKey)) ?? {},
          }),
        ];
    timeline.mark(
      'client',
      `joined the MatrixRTC session (joinRTCSession, delay ${timing.delayMs} ms, restart every ` +
        `${timing.restartMs} ms${timing.sticky ? ', sticky events' : ''}): scheduled the hangup ` +
        `(delayed leave ${delayId}) and published the membership`,
      [scheduleHangup, publishMembership, curl('GET', `$HS${MSC4140}/delayed_events`, { token: '$ALICE_TOKEN' })],
    );

    const member = { id: memberId, claimed_user_id: user.userId, claimed_device_id: user.deviceId };
    const openid = async () => {
      const t = await client.getOpenIdToken();
      return {
        access_token: t.access_token,
        token_type: t.token_type,
        matrix_server_name: t.matrix_server_name,
        expires_in: t.expires_in,
      };
    };
    const openidPath = `/_matrix/client/v3/user/${encodeURIComponent(user.userId)}/openid/request_token`;
    const openidCurl = curl('POST', `$HS${openidPath}`, { token: '$ALICE_TOKEN', body: {} });
    /** The body as a curl line, with the short-lived OpenID token left for the reader to fill in. */
    const agentCurl = (route: string, body: { openid_token: Record<string, unknown> }) =>
      curl('POST', `$AGENT${route}`, {
        body: { ...body, openid_token: { ...body.openid_token, access_token: '<from request_token>' } },
      });
    /** The delegation fields with the delay_id js-sdk holds now (none while it schedules a new one). */
    const delay = () => {
      if (currentDelayId === undefined) throw new Error('no delayed leave is scheduled right now');
      return { delay_id: currentDelayId, delay_timeout: timing.delayMs };
    };
    let crashed = false;

    return {
      user,
      client,
      session,
      memberId,
      delayId,
      currentDelayId: () => currentDelayId,
      onDelayIdChanged: (listener) => void delayIdListeners.push(listener),
      stateKey,
      scheduledRunningSince: scheduled.running_since,
      identity: hashJsonArray([user.userId, user.deviceId, memberId]),
      livekitRoom: hashJsonArray([roomId, SLOT_ID]),
      clientRestartsSinceSetup: () => gate.answered.slice(answeredAtSetup).filter(isRestart),
      async getToken({ delegate }) {
        const body = {
          room_id: roomId,
          slot_id: SLOT_ID,
          openid_token: await openid(),
          member,
          ...(delegate ? delay() : {}),
        };
        const res = await okJson('POST', `${agent.url}/get_token`, { body });
        timeline.mark(
          'client',
          `asked the agent for a LiveKit token${delegate ? ', handing over the delay_id' : ''} (/get_token)`,
          [openidCurl, agentCurl('/get_token', body)],
        );
        if (typeof res.jwt !== 'string' || typeof res.url !== 'string') {
          throw new Error(`bad /get_token answer ${JSON.stringify(res)}`);
        }
        timeline.setVar('JWT', res.jwt);
        return { url: res.url, jwt: res.jwt };
      },
      async delegateToAgent() {
        const body = { room_id: roomId, slot_id: SLOT_ID, openid_token: await openid(), member, ...delay() };
        await okJson('POST', `${agent.url}/delegate_delayed_leave`, { body });
        timeline.mark('client', 'handed the delay_id to the agent (/delegate_delayed_leave)', [
          openidCurl,
          agentCurl('/delegate_delayed_leave', body),
        ]);
      },
      async livekitServiceUrl() {
        const r = await rtcTransports(hs, user);
        timeline.mark('client', `asked its homeserver for RTC transports -> ${r.status} ${JSON.stringify(r.body)}`, [
          curl('GET', `$HS${MSC4143_TRANSPORTS}`, { token: '$ALICE_TOKEN' }),
        ]);
        return r.livekitServiceUrl;
      },
      async delegateViaHomeserver(url) {
        const body = {
          url,
          room_id: roomId,
          slot_id: SLOT_ID,
          member: { id: memberId, claimed_device_id: user.deviceId },
          delay_id: delayId,
        };
        const res = await requestJson('POST', `${hs.baseUrl}${MSC4195_DELEGATE}`, {
          token: user.accessToken,
          body,
        });
        const outcome = res.status === 200 ? '200' : `${res.status} ${JSON.stringify(res.body)}`;
        timeline.mark('client', `handed the delay_id to its homeserver (MSC4195) -> ${outcome}`, [
          curl('POST', `$HS${MSC4195_DELEGATE}`, { token: '$ALICE_TOKEN', body }),
        ]);
        return res;
      },
      crash() {
        if (crashed) return;
        crashed = true;
        close();
        timeline.mark(
          'client',
          'the app died without leaving (network cut, client stopped): it will never restart the hangup',
        );
      },
      crashed: () => crashed,
      listing,
      finalised,
      close,
    };
  } catch (err) {
    close();
    throw err;
  }
}
