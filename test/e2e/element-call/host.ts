/// <reference lib="dom" />
// A small widget host for Element Call, in the role Element Web plays: a matrix-js-sdk client logged
// in to the homeserver, and Element Call in an iframe talking to it over matrix-widget-api
// (postMessage). Bundled for the browser by test/e2e/support/element-call.ts (esbuild) and served at
// /host/index.html#baseUrl=…&accessToken=…&userId=…&deviceId=…&roomId=…&ecUrl=… (the fragment never
// reaches a server).
//
// What a host must answer for Element Call 0.26.1, read from its sources (src/widget.ts,
// HostBridge.ts, livekit/openIDSFU.ts) and from Element Web's (src/models/Call.ts,
// stores/widgets/ElementWidgetDriver.ts, WidgetMessaging.ts), and logged here as it happens:
//
//   capabilities        every capability it asks for is granted, except downloading files (avatars)
//   room state          readRoomState from the live timeline; updates fed with feedStateUpdate
//   timeline            readRoomTimeline from the live timeline; new events fed with feedEvent
//   send_event          state and room events, and MSC4157 delayed ones (its delayed hangup)
//   update_delayed_event  restart / send / cancel of a delayed event (MSC4157, MSC4140 on the homeserver)
//   send_to_device      unencrypted only (the test rooms are unencrypted: no E2EE keys are exchanged)
//   get_openid          an OpenID token from the homeserver, allowed without asking (EC hands it to the agent)
//   get_rtc_transports  the homeserver's /rtc/transports (MSC4143), i.e. where the agent is announced
//   io.element.join, im.vector.hangup, io.element.close, io.element.device_mute, set_always_on_screen:
//                       acknowledged with {} (Element Web's call view reacts to them; nothing to do here)
//
// MatrixRTC token and delegation actions (MSC4533: the host asks the homeserver for the LiveKit token
// and hands the delayed leave over) are not implemented: Element Call 0.26.1 never requests them (it
// gets its token and delegates its hangup itself, from the iframe, at the agent). Any action the
// host does not answer is still logged, so the tests would see it.
//
// The page publishes its state as `window.lastwillHost` (see HostState) for the tests to read.
import {
  ClientEvent,
  createClient,
  EventTimeline,
  type IEvent,
  type MatrixClient,
  MatrixError,
  type MatrixEvent,
  type ReceivedToDeviceMessage,
  RoomStateEvent,
  SyncState,
} from 'matrix-js-sdk';
import { MatrixRTCSessionEvent } from 'matrix-js-sdk/lib/matrixrtc/index.js';
import {
  type Capability,
  ClientWidgetApi,
  type IOpenIDUpdate,
  type IRoomEvent,
  type IRtcTransportsResult,
  type ISendDelayedEventDetails,
  type ISendEventDetails,
  type IWidgetApiErrorResponseDataDetails,
  type IWidgetApiRequest,
  MatrixCapabilities,
  OpenIDRequestState,
  type SimpleObservable,
  Widget,
  WidgetDriver,
} from 'matrix-widget-api';

/** One fromWidget request as the host saw it. */
export interface LoggedAction {
  /** ms since the page started */
  t: number;
  /** The action as on the wire (`send_event`, `org.matrix.msc4157.update_delayed_event`, …). */
  action: string;
  /** What matters of the request: event type, state key, delay, delayed-event action… */
  detail: string;
  /** 'ok', or the error the host answered with. */
  outcome?: string;
}

export interface HostState {
  userId: string;
  deviceId: string;
  /** 'starting' → 'syncing' → 'widget-ready'; 'failed: …' on error. */
  phase: string;
  actions: LoggedAction[];
  requestedCapabilities: string[];
  approvedCapabilities: string[];
  /** delay_ids the host got from the homeserver for delayed events, in order. */
  delayIds: string[];
  errors: string[];
  /** `userId|deviceId` of every call membership this client's MatrixRTC session sees. */
  memberships(): string[];
}

const params = new URLSearchParams(location.hash.slice(1));
const need = (name: string): string => {
  const v = params.get(name);
  if (!v) throw new Error(`host: missing #${name}`);
  return v;
};
const baseUrl = need('baseUrl');
const userId = need('userId');
const deviceId = need('deviceId');
const roomId = need('roomId');
const ecUrl = need('ecUrl');
const t0 = performance.now();

const state: HostState = {
  userId,
  deviceId,
  phase: 'starting',
  actions: [],
  requestedCapabilities: [],
  approvedCapabilities: [],
  delayIds: [],
  errors: [],
  memberships: () => [],
};
(window as unknown as { lastwillHost: HostState }).lastwillHost = state;

const statusLine = document.getElementById('status')!;
/** Names of the call members this client sees (set once the room is known). */
let memberNames = (): string[] => [];
function render(): void {
  const names = memberNames();
  statusLine.textContent = `widget host · ${userId} · ${state.phase} · call members this client sees: ${names.length}${names.length ? ` (${names.join(', ')})` : ''}`;
}
const fail = (what: string, err: unknown): void => {
  const msg = `${what}: ${err instanceof Error ? err.message : String(err)}`;
  state.errors.push(msg);
  console.error(`[host] ${msg}`);
};

/** Records the outcome of a driver call on its logged action. */
async function logged<T>(action: string, detail: string, run: () => Promise<T>): Promise<T> {
  const entry: LoggedAction = { t: Math.round(performance.now() - t0), action, detail };
  state.actions.push(entry);
  try {
    const r = await run();
    entry.outcome = 'ok';
    return r;
  } catch (err) {
    entry.outcome = err instanceof MatrixError ? `${err.errcode ?? err.httpStatus}` : String(err);
    throw err;
  }
}

const raw = (ev: MatrixEvent): IRoomEvent => ev.getEffectiveEvent() as IEvent as unknown as IRoomEvent;

/** The widget driver: each method is what Element Web's ElementWidgetDriver does, on matrix-js-sdk. */
class Driver extends WidgetDriver {
  constructor(private readonly client: MatrixClient) {
    super();
  }

  override async validateCapabilities(requested: Set<Capability>): Promise<Set<Capability>> {
    state.requestedCapabilities = [...requested];
    // Downloading files (MSC4039) serves avatars only; there are none here.
    const approved = new Set([...requested].filter((c) => c !== MatrixCapabilities.MSC4039DownloadFile));
    state.approvedCapabilities = [...approved];
    return approved;
  }

  override sendEvent(type: string, content: unknown, stateKey?: string | null, room?: string | null): Promise<ISendEventDetails> {
    const r = room ?? roomId;
    return logged('send_event', `${type}${stateKey != null ? ` state_key=${stateKey}` : ''}`, async () => {
      const c = this.client as unknown as {
        sendStateEvent(r: string, t: string, c: unknown, k: string): Promise<{ event_id: string }>;
        sendEvent(r: string, t: string, c: unknown): Promise<{ event_id: string }>;
      };
      const res = stateKey != null ? await c.sendStateEvent(r, type, content, stateKey) : await c.sendEvent(r, type, content);
      return { roomId: r, eventId: res.event_id };
    });
  }

  override sendDelayedEvent(
    delay: number,
    type: string,
    content: unknown,
    stateKey?: string | null,
    room?: string | null,
  ): Promise<ISendDelayedEventDetails> {
    const r = room ?? roomId;
    const detail = `${type}${stateKey != null ? ` state_key=${stateKey}` : ''} delay=${delay}`;
    return logged('send_event', detail, async () => {
      const c = this.client as unknown as {
        _unstable_sendDelayedStateEvent(r: string, o: { delay: number }, t: string, c: unknown, k: string): Promise<{ delay_id: string }>;
        _unstable_sendDelayedEvent(r: string, o: { delay: number }, th: null, t: string, c: unknown): Promise<{ delay_id: string }>;
      };
      const res =
        stateKey != null
          ? await c._unstable_sendDelayedStateEvent(r, { delay }, type, content, stateKey)
          : await c._unstable_sendDelayedEvent(r, { delay }, null, type, content);
      state.delayIds.push(res.delay_id);
      return { roomId: r, delayId: res.delay_id };
    });
  }

  override cancelScheduledDelayedEvent(delayId: string): Promise<void> {
    return logged('org.matrix.msc4157.update_delayed_event', 'cancel', async () => {
      await this.client._unstable_cancelScheduledDelayedEvent(delayId);
    });
  }

  override restartScheduledDelayedEvent(delayId: string): Promise<void> {
    return logged('org.matrix.msc4157.update_delayed_event', 'restart', async () => {
      await this.client._unstable_restartScheduledDelayedEvent(delayId);
    });
  }

  override sendScheduledDelayedEvent(delayId: string): Promise<void> {
    return logged('org.matrix.msc4157.update_delayed_event', 'send', async () => {
      await this.client._unstable_sendScheduledDelayedEvent(delayId);
    });
  }

  override sendToDevice(
    type: string,
    encrypted: boolean,
    contentMap: { [userId: string]: { [deviceId: string]: object } },
  ): Promise<void> {
    return logged('send_to_device', `${type}${encrypted ? ' encrypted' : ''}`, async () => {
      // Encrypted to-device messages need the host's crypto; the test rooms are unencrypted.
      if (encrypted) throw new Error('this host sends unencrypted to-device messages only');
      const batch = Object.entries(contentMap).flatMap(([u, devices]) =>
        Object.entries(devices).map(([d, payload]) => ({ userId: u, deviceId: d, payload })),
      );
      await this.client.queueToDevice({ eventType: type, batch });
    });
  }

  override async readRoomState(room: string, eventType: string, stateKey: string | undefined): Promise<IRoomEvent[]> {
    const s = this.client.getRoom(room)?.getLiveTimeline().getState(EventTimeline.FORWARDS);
    if (!s) return [];
    const events = stateKey === undefined ? s.getStateEvents(eventType) : [s.getStateEvents(eventType, stateKey)];
    return events.filter((e): e is MatrixEvent => e !== null).map(raw);
  }

  override async readRoomTimeline(
    room: string,
    eventType: string,
    msgtype: string | undefined,
    stateKey: string | undefined,
    limit: number,
    since: string | undefined,
  ): Promise<IRoomEvent[]> {
    const events = this.client.getRoom(room)?.getLiveTimeline().getEvents() ?? [];
    const out: IRoomEvent[] = [];
    // Newest first, stopping at `since`, as Element Web does.
    for (let i = events.length - 1; i >= 0 && out.length < limit; i--) {
      const ev = events[i]!;
      if (since !== undefined && ev.getId() === since) break;
      if (ev.getType() !== eventType) continue;
      if (stateKey !== undefined && ev.getStateKey() !== stateKey) continue;
      if (msgtype !== undefined && ev.getContent().msgtype !== msgtype) continue;
      out.push(raw(ev));
    }
    return out;
  }

  override askOpenID(observer: SimpleObservable<IOpenIDUpdate>): void {
    // Element Web asks the user once per widget; Element Call is trusted there, and here.
    void logged('get_openid', 'allowed without asking', async () => {
      const token = await this.client.getOpenIdToken();
      observer.update({ state: OpenIDRequestState.Allowed, token });
    }).catch((err) => {
      fail('get_openid', err);
      observer.update({ state: OpenIDRequestState.Blocked });
    });
  }

  override getRtcTransports(): Promise<IRtcTransportsResult> {
    return logged('org.matrix.msc4515.get_rtc_transports', 'the homeserver\'s /rtc/transports', async () => ({
      rtc_transports: await this.client._unstable_getRTCTransports(),
    })) as Promise<IRtcTransportsResult>;
  }

  override getKnownRooms(): string[] {
    return this.client.getVisibleRooms().map((r) => r.roomId);
  }

  override processError(error: unknown): IWidgetApiErrorResponseDataDetails | undefined {
    // Element Call relies on the Matrix error codes (M_NOT_FOUND on a restart, M_MAX_DELAY_EXCEEDED).
    return error instanceof MatrixError ? { matrix_api_error: error.asWidgetApiErrorData() } : undefined;
  }
}

/** Element Call's widget URL, as Element Web builds it for a call in a room (src/models/Call.ts). */
function widgetUrl(widgetId: string): string {
  const url = new URL(ecUrl);
  url.searchParams.set('widgetId', widgetId);
  // The page's URL without its fragment, which holds the access token.
  url.searchParams.set('parentUrl', location.href.split('#')[0]!);
  const fragment = new URLSearchParams({
    roomId,
    userId,
    deviceId,
    baseUrl,
    // Join at once, camera and microphone on: skipLobby must be given explicitly (the intent's preset
    // would show the lobby; Element Call's UrlParams.ts). No header: the host owns the room chrome.
    intent: 'join_existing',
    skipLobby: 'true',
    preload: 'false',
    returnToLobby: 'false',
    confineToRoom: 'true',
    header: 'none',
    perParticipantE2EE: 'false',
    lang: 'en',
    theme: 'dark',
    fontScale: '1',
  });
  url.hash = `?${fragment.toString()}`;
  return url.href;
}

async function main(): Promise<void> {
  const client = createClient({ baseUrl, accessToken: need('accessToken'), userId, deviceId });
  const synced = new Promise<void>((resolve, reject) => {
    client.on(ClientEvent.Sync, (s: SyncState) => {
      if (s === SyncState.Prepared || s === SyncState.Syncing) resolve();
      else if (s === SyncState.Error && !client.getRoom(roomId)) reject(new Error('initial sync failed'));
    });
  });
  await client.startClient({ initialSyncLimit: 20 });
  await synced;
  state.phase = 'syncing';
  const room = client.getRoom(roomId);
  if (!room) throw new Error(`not in room ${roomId}`);
  const session = client.matrixRTC.getRoomSession(room);
  state.memberships = () => session.memberships.map((m) => `${m.sender}|${m.deviceId}`);
  memberNames = () => session.memberships.map((m) => room.getMember(m.sender ?? '')?.name ?? m.sender ?? '?');
  session.on(MatrixRTCSessionEvent.MembershipsChanged, render);

  const widgetId = `lastwill-ec-${Math.random().toString(36).slice(2, 10)}`;
  const iframe = document.createElement('iframe');
  // What Element Web's AppTile allows an Element Call widget.
  iframe.allow = 'camera; microphone; display-capture; autoplay; clipboard-write; fullscreen';
  const widget = new Widget({
    id: widgetId,
    creatorUserId: userId,
    type: 'm.call',
    url: widgetUrl(widgetId),
    waitForIframeLoad: false,
  });
  // The API needs the iframe's window (so the iframe in the page, still blank) and must listen
  // before Element Call loads: it talks first.
  document.getElementById('call')!.appendChild(iframe);
  const api = new ClientWidgetApi(widget, iframe, new Driver(client));
  api.transport.on('message', (ev: CustomEvent<IWidgetApiRequest>) => {
    const { action, data } = ev.detail;
    // Driver-backed actions are logged by the driver with their outcome; record the rest here.
    const byDriver = ['send_event', 'org.matrix.msc4157.update_delayed_event', 'send_to_device', 'get_openid',
      'org.matrix.msc4515.get_rtc_transports'];
    if (!byDriver.includes(action)) {
      state.actions.push({ t: Math.round(performance.now() - t0), action, detail: JSON.stringify(data ?? {}).slice(0, 120) });
    }
  });
  // Element Call's own actions: Element Web's call view reacts to them; the host only acknowledges.
  for (const action of ['io.element.join', 'im.vector.hangup', 'io.element.close', 'io.element.device_mute', 'set_always_on_screen']) {
    api.on(`action:${action}`, (ev: CustomEvent<IWidgetApiRequest>) => {
      ev.preventDefault();
      api.transport.reply(ev.detail, {});
    });
  }
  api.on('ready', () => {
    state.phase = 'widget-ready';
    render();
  });
  api.setViewedRoomId(roomId);

  // As Element Web does: every event to feedEvent (the API filters by capability), state changes
  // also to feedStateUpdate (Element Call reads state from update_state).
  client.on(ClientEvent.Event, (ev: MatrixEvent) => {
    if (ev.getRoomId() === roomId) void api.feedEvent(raw(ev)).catch((e) => fail('feedEvent', e));
  });
  client.on(RoomStateEvent.Events, (ev: MatrixEvent) => {
    if (ev.getRoomId() === roomId) void api.feedStateUpdate(raw(ev)).catch((e) => fail('feedStateUpdate', e));
  });
  client.on(ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }: ReceivedToDeviceMessage) => {
    void api.feedToDevice(message as never, encryptionInfo !== null).catch((e) => fail('feedToDevice', e));
  });

  iframe.src = widget.templateUrl;
  render();
}

main().catch((err) => {
  state.phase = `failed: ${err instanceof Error ? err.message : String(err)}`;
  fail('start', err);
  render();
});
