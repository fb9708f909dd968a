/**
 * LiveKit room aliases and participant identities, byte-compatible with lk-jwt-service: the
 * unpadded standard base64 of SHA-256 over the Go `json.Marshal` encoding of a string array.
 */
import { createHash } from 'node:crypto';

/** Go escapes these even inside strings (HTML safety and JavaScript line terminators). */
const GO_EXTRA_ESCAPES: Readonly<Record<string, string>> = {
  '<': '\\u003c',
  '>': '\\u003e',
  '&': '\\u0026',
  '\u2028': '\\u2028',
  '\u2029': '\\u2029',
};

/**
 * The JSON text Go's `json.Marshal([]string{...})` produces. Lone UTF-16 surrogates become U+FFFD,
 * which is what Go holds after decoding the same request (Go's decoder replaces invalid UTF-8 and
 * unpaired `\ud800` escapes with U+FFFD). Control characters are escaped identically by both
 * (`\b \f \n \r \t`, else `\u00xx`, lowercase hex, Go 1.22 and later).
 */
export function goJsonStringArray(values: readonly string[]): string {
  // The extra characters can only occur inside string literals, so a global replace is exact.
  return JSON.stringify(values.map((v) => v.toWellFormed())).replace(
    /[<>&\u2028\u2029]/g,
    (c) => GO_EXTRA_ESCAPES[c]!,
  );
}

/** `unpadded_base64(sha256(go_json(values)))` with the standard alphabet. */
export function hashedName(values: readonly string[]): string {
  return createHash('sha256').update(goJsonStringArray(values), 'utf8').digest('base64').replace(/=+$/, '');
}

/** Room alias of `/get_token` and `/delegate_delayed_leave`. */
export function roomAlias(roomId: string, slotId: string): string {
  return hashedName([roomId, slotId]);
}

/** Participant identity of `/get_token` and `/delegate_delayed_leave`. */
export function participantIdentity(userId: string, deviceId: string, memberId: string): string {
  return hashedName([userId, deviceId, memberId]);
}

/** The slot every legacy (`/sfu/get`) call is put in. */
export const LEGACY_SLOT = 'm.call#ROOM';

/** Room alias of the legacy `/sfu/get` route. */
export function legacyRoomAlias(room: string): string {
  return hashedName([room, LEGACY_SLOT]);
}

/** Identity of the legacy `/sfu/get` route: not hashed. */
export function legacyIdentity(userId: string, deviceId: string): string {
  return `${userId}:${deviceId}`;
}
