/**
 * Identifier and credential generation. Event ids, tokens and room ids come from the CSPRNG so
 * none can be guessed from another.
 */
import { randomBytes, randomInt } from 'node:crypto';

const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

/**
 * Bytes are drawn from one CSPRNG buffer refilled 4 KiB at a time: a call into the generator per
 * event id was a measurable part of a timed send. Every byte is still handed out only once.
 */
const POOL_BYTES = 4096;
let pool = Buffer.alloc(0);
let poolOffset = 0;

/** `n` random bytes as base64url (no padding). */
export function randomToken(bytes = 32): string {
  if (poolOffset + bytes > pool.length) {
    pool = randomBytes(Math.max(POOL_BYTES, bytes));
    poolOffset = 0;
  }
  const slice = pool.subarray(poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  return slice.toString('base64url');
}

export function newEventId(): string {
  return `$${randomToken(32)}`;
}

export function newRoomId(serverName: string): string {
  return `!${randomToken(18)}:${serverName}`;
}

export function newAccessToken(): string {
  return `lw_${randomToken(32)}`;
}

export function newDeviceId(): string {
  let id = '';
  for (let i = 0; i < 10; i++) id += LETTERS[randomInt(LETTERS.length)];
  return id;
}

/** Matrix user id localpart grammar (lower-case historical subset accepted by the spec). */
export const LOCALPART_RE = /^[a-z0-9._=\-/+]+$/;

/** `@localpart:server` → its parts, or undefined when it is not a user id. */
export function parseUserId(userId: string): { localpart: string; server: string } | undefined {
  const m = /^@([^:]+):(.+)$/.exec(userId);
  return m ? { localpart: m[1]!, server: m[2]! } : undefined;
}
