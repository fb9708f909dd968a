// The Matrix client-server API as plain HTTP, without matrix-js-sdk: users, rooms, the RTC
// transports and JSON requests. Shared by the MatrixRTC client (matrixrtc.ts), the test
// homeservers and the benchmarks, which need no SDK.
import { createHmac, randomBytes } from 'node:crypto';

/** The legacy call member state event type that MembershipManager sends. */
export const CALL_MEMBER_TYPE = 'org.matrix.msc3401.call.member';
export const MSC4140 = '/_matrix/client/unstable/org.matrix.msc4140';
export const MSC4143_TRANSPORTS = '/_matrix/client/unstable/org.matrix.msc4143/rtc/transports';

// ---------------------------------------------------------------------------------------------
// Users

/** A homeserver's client-server API. */
export interface HomeserverAddress {
  baseUrl: string;
}

export interface RegisteredUser {
  userId: string;
  accessToken: string;
  deviceId: string;
  password: string;
}

function registrationMac(secret: string, nonce: string, user: string, password: string, admin = false): string {
  return createHmac('sha1', secret).update([nonce, user, password, admin ? 'admin' : 'notadmin'].join('\0'), 'utf8').digest('hex');
}

/**
 * Registers a user through the Synapse shared-secret admin API (GET nonce, POST with the HMAC-SHA1
 * mac). The bundled homeserver implements the same API, so both test servers use this.
 */
export async function registerWithSharedSecret(
  baseUrl: string,
  secret: string,
  name: string,
  o: { admin?: boolean; password?: string } = {},
): Promise<RegisteredUser> {
  const password = o.password ?? `pw-${randomBytes(6).toString('hex')}`;
  const url = `${baseUrl}/_synapse/admin/v1/register`;
  const nonce = String((await okJson('GET', url)).nonce);
  const admin = o.admin ?? false;
  const body = await okJson('POST', url, {
    body: { nonce, username: name, password, admin, mac: registrationMac(secret, nonce, name, password, admin) },
  });
  return { userId: String(body.user_id), accessToken: String(body.access_token), deviceId: String(body.device_id), password };
}

/** A new device of the user (a new LiveKit identity, or a second client watching). */
export async function login(hs: HomeserverAddress, user: RegisteredUser): Promise<RegisteredUser> {
  const body = await okJson('POST', `${hs.baseUrl}/_matrix/client/v3/login`, {
    body: { type: 'm.login.password', identifier: { type: 'm.id.user', user: user.userId }, password: user.password },
  });
  return { ...user, accessToken: String(body.access_token), deviceId: String(body.device_id) };
}

/** A public room where, as in Element Web's rooms with calls, every member may publish a call membership. */
export async function createCallRoom(hs: HomeserverAddress, creator: RegisteredUser, name: string): Promise<string> {
  const created = await okJson('POST', `${hs.baseUrl}/_matrix/client/v3/createRoom`, {
    token: creator.accessToken,
    body: { preset: 'public_chat', name, power_level_content_override: { events: { [CALL_MEMBER_TYPE]: 0 } } },
  });
  return String(created.room_id);
}

export async function joinRoom(hs: HomeserverAddress, user: RegisteredUser, roomIdOrAlias: string): Promise<string> {
  const joined = await okJson('POST', `${hs.baseUrl}/_matrix/client/v3/join/${encodeURIComponent(roomIdOrAlias)}`, {
    token: user.accessToken,
    body: {},
  });
  return String(joined.room_id);
}

/**
 * The RTC transports the homeserver offers (MSC4143), as Element Call finds its LiveKit service:
 * the raw answer and the first `livekit` transport's `livekit_service_url`, if any.
 */
export async function rtcTransports(
  hs: HomeserverAddress,
  user: RegisteredUser,
): Promise<{ status: number; body: Record<string, unknown>; livekitServiceUrl: string | undefined }> {
  const r = await requestJson('GET', `${hs.baseUrl}${MSC4143_TRANSPORTS}`, { token: user.accessToken });
  const transports = (r.body.rtc_transports ?? []) as Array<Record<string, unknown>>;
  const url = transports.find((t) => t.type === 'livekit')?.livekit_service_url;
  return { ...r, livekitServiceUrl: typeof url === 'string' ? url : undefined };
}

export interface DelayedEventListing {
  delay_id: string;
  running_since: number;
  delay: number;
  room_id: string;
  type: string;
  state_key?: string;
}

/** One request with an optional JSON body: the status and the parsed answer (`{raw}` when not JSON). */
export async function requestJson(
  method: string,
  url: string,
  opts: { token?: string; body?: unknown } = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(url, {
    method,
    headers: {
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
  });
  const text = await r.text();
  let body: Record<string, unknown>;
  try {
    body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    body = { raw: text };
  }
  return { status: r.status, body };
}

export async function okJson(
  method: string,
  url: string,
  opts: { token?: string; body?: unknown } = {},
): Promise<Record<string, unknown>> {
  const r = await requestJson(method, url, opts);
  if (r.status !== 200) throw new Error(`${method} ${url} -> ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export function roomPath(roomId: string): string {
  return `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}`;
}

/** Paths of the app's call member state event (legacy `m.call.member` form, room-level slot). */
export function memberStatePath(roomId: string, stateKey: string): string {
  return `${roomPath(roomId)}/state/${CALL_MEMBER_TYPE}/${encodeURIComponent(stateKey)}`;
}
