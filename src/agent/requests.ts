/**
 * Request bodies of the lk-jwt-service-compatible routes. Decoding mirrors Go's: a value of the
 * wrong type is 400 M_NOT_JSON, a missing or empty required field 400 M_BAD_JSON. Unlike
 * lk-jwt-service, unknown fields are accepted and ignored: its strict decoding broke clients on
 * version skew (lk-jwt-service #131), and ignoring extras cannot widen what a request can do.
 */
import { z } from 'zod';

import { serverName } from '../config/common.js';
import { fail } from '../lib/errors.js';

/** Longest accepted `delay_timeout`: the homeserver side caps delays at one month anyway. */
export const MAX_DELAY_TIMEOUT_MS = 30 * 24 * 3600 * 1000;

/** Extra request field carrying a scoped delegation token minted by the lastwill homeserver module. */
export const SCOPED_TOKEN_FIELD = 'io.lastwill.scoped_token';

const str = z.string().nullish();

const openIdToken = z.object({
  access_token: str,
  token_type: str,
  matrix_server_name: str,
  expires_in: z.number().nullish(),
});

const member = z.object({ id: str, claimed_user_id: str, claimed_device_id: str });

const delayFields = {
  delay_id: str,
  delay_timeout: z.number().int().nullish(),
  delay_cs_api_url: str,
  [SCOPED_TOKEN_FIELD]: str,
};

const legacyBody = z.object({ room: str, openid_token: openIdToken.nullish(), device_id: str, ...delayFields });
const tokenBody = z.object({
  room_id: str,
  slot_id: str,
  openid_token: openIdToken.nullish(),
  member: member.nullish(),
  ...delayFields,
});

export interface OpenIdToken {
  accessToken: string;
  serverName: string;
}

export interface DelayRequest {
  delayId: string;
  delayTimeoutMs: number;
  scopedToken?: string;
}

export interface LegacyRequest {
  room: string;
  openid: OpenIdToken;
  deviceId: string;
  delay?: DelayRequest;
}

export interface TokenRequest {
  roomId: string;
  slotId: string;
  openid: OpenIdToken;
  member: { id: string; claimedUserId: string; claimedDeviceId: string };
  delay?: DelayRequest;
}

function decode<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  const result = schema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw fail.notJson(`Error decoding request body: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'invalid'}`);
  }
  return result.data;
}

function required(value: string | null | undefined, name: string): string {
  if (value === undefined || value === null || value === '') {
    throw fail.badJson(`The request body is missing \`${name}\``);
  }
  return value;
}

function openIdOf(token: z.output<typeof openIdToken> | null | undefined): OpenIdToken {
  return {
    accessToken: required(token?.access_token, 'openid_token.access_token'),
    serverName: required(token?.matrix_server_name, 'openid_token.matrix_server_name'),
  };
}

/**
 * The delay fields: both or neither. On the delegate route they are required and the timeout must
 * be positive; on the token routes a lone field is M_BAD_JSON (Element Call retries without them).
 */
function delayOf(
  fields: { delay_id?: string | null; delay_timeout?: number | null; [SCOPED_TOKEN_FIELD]?: string | null },
  mandatory: boolean,
): DelayRequest | undefined {
  const hasId = fields.delay_id !== undefined && fields.delay_id !== null && fields.delay_id !== '';
  const hasTimeout = fields.delay_timeout !== undefined && fields.delay_timeout !== null && fields.delay_timeout !== 0;
  if (!hasId && !hasTimeout && !mandatory) return undefined;
  if (!hasId || !hasTimeout) {
    throw fail.badJson(
      mandatory
        ? 'The request body must contain `delay_id` and a positive `delay_timeout`'
        : '`delay_id` and `delay_timeout` must be given together',
    );
  }
  const timeout = fields.delay_timeout!;
  if (timeout <= 0) throw fail.badJson('`delay_timeout` must be positive');
  if (timeout > MAX_DELAY_TIMEOUT_MS) throw fail.badJson('`delay_timeout` is too large');
  const scoped = fields[SCOPED_TOKEN_FIELD];
  return {
    delayId: fields.delay_id!,
    delayTimeoutMs: timeout,
    ...(scoped !== undefined && scoped !== null && scoped !== '' ? { scopedToken: scoped } : {}),
  };
}

/** `POST /sfu/get`: only `room` and the OpenID fields are required; an empty device id is accepted. */
export function parseLegacyRequest(body: unknown): LegacyRequest {
  const b = decode(legacyBody, body);
  const room = required(b.room, 'room');
  const openid = openIdOf(b.openid_token);
  const delay = delayOf(b, false);
  return { room, openid, deviceId: b.device_id ?? '', ...(delay ? { delay } : {}) };
}

/** `POST /get_token` (delay optional) and `POST /delegate_delayed_leave` (delay mandatory). */
export function parseTokenRequest(body: unknown, delayMandatory: boolean): TokenRequest {
  const b = decode(tokenBody, body);
  const roomId = required(b.room_id, 'room_id');
  const slotId = required(b.slot_id, 'slot_id');
  const openid = openIdOf(b.openid_token);
  const m = {
    id: required(b.member?.id, 'member.id'),
    claimedUserId: required(b.member?.claimed_user_id, 'member.claimed_user_id'),
    claimedDeviceId: required(b.member?.claimed_device_id, 'member.claimed_device_id'),
  };
  const delay = delayOf(b, delayMandatory);
  return { roomId, slotId, openid, member: m, ...(delay ? { delay } : {}) };
}

/** `POST /_lastwill/v1/delegations`: a homeserver forwarding an MSC4195 delegation it verified. */
export const forwardedDelegation = z.object({
  livekit_room: z.string().min(1),
  identity: z.string().min(1),
  delay_id: z.string().min(1),
  delay_timeout: z.number().int().positive().max(MAX_DELAY_TIMEOUT_MS),
  server_name: serverName,
  user_id: z.string().min(1),
  scoped_token: z.string().min(1).optional(),
});

/** The body a homeserver sends to `POST /_lastwill/v1/delegations` (MSC4195 forwarding). */
export type ForwardedDelegation = z.infer<typeof forwardedDelegation>;
