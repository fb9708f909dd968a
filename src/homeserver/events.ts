/** Client-format serialisation of stored events, and the checks every event's shape must pass. */
import { fail } from '../lib/errors.js';
import type { EventRow } from './store.js';

/** Event content larger than this (serialised) is refused, like the spec's 64 KiB PDU limit. */
export const MAX_CONTENT_BYTES = 65_536;

export const DELAY_ID_UNSIGNED_KEY = 'org.matrix.msc4140.delay_id';

/** MSC4354 sticky events, unstable names (as Synapse and matrix-js-sdk use them). */
export const STICKY = {
  /** Query parameter of /send, /state and the scheduling endpoints: the sticky duration in ms. */
  param: 'org.matrix.msc4354.sticky_duration_ms',
  /** Top-level event field `{duration_ms}`, the duration as the sender asked for it. */
  field: 'msc4354_sticky',
  /** `unsigned` field: ms until the event stops being sticky, while it still is. */
  ttlKey: 'msc4354_sticky_duration_ttl_ms',
  /** /sync section per joined room. */
  syncSection: 'msc4354_sticky',
  /** MSC4354's cap: a longer duration counts as one hour. */
  maxDurationMs: 3_600_000,
} as const;

/**
 * When a sticky event stops being sticky (MSC4354): its start, min(origin_server_ts, received),
 * plus the duration capped at one hour. Every event here gets its origin_server_ts when it is
 * stored or earlier (a timed delayed send: its due time), so the start is origin_server_ts.
 */
export function stickyExpiresAt(originServerTs: number, durationMs: number): number {
  return originServerTs + Math.min(durationMs, STICKY.maxDurationMs);
}

/** Synapse sends membership events through its membership handler, which has no sticky form. */
export function stickyDurationFor(type: string, requested: number | undefined): number | undefined {
  return type === 'm.room.member' ? undefined : requested;
}

export interface ClientEvent {
  event_id: string;
  room_id: string;
  sender: string;
  type: string;
  state_key?: string;
  content: Record<string, unknown>;
  origin_server_ts: number;
  unsigned: Record<string, unknown>;
  [STICKY.field]?: { duration_ms: number };
}

/**
 * The client view of an event. The delay id is a bearer capability, so only the event's own
 * sender sees it.
 */
export function toClientEvent(row: EventRow, reader: string | undefined, now: number): ClientEvent {
  const unsigned: Record<string, unknown> = { age: Math.max(0, now - row.origin_server_ts) };
  if (row.delay_id !== null && reader === row.sender) unsigned[DELAY_ID_UNSIGNED_KEY] = row.delay_id;
  const sticky = row.sticky_duration_ms;
  if (sticky !== null) {
    const ttl = stickyExpiresAt(row.origin_server_ts, sticky) - now;
    if (ttl > 0) unsigned[STICKY.ttlKey] = ttl;
  }
  return {
    event_id: row.event_id,
    room_id: row.room_id,
    sender: row.sender,
    type: row.type,
    ...(row.state_key !== null ? { state_key: row.state_key } : {}),
    content: JSON.parse(row.content) as Record<string, unknown>,
    origin_server_ts: row.origin_server_ts,
    unsigned,
    ...(sticky !== null ? { [STICKY.field]: { duration_ms: sticky } } : {}),
  };
}

/** Stripped state for invites: just enough to render the invitation. */
export function toStrippedState(row: EventRow): Record<string, unknown> {
  return {
    type: row.type,
    state_key: row.state_key ?? '',
    sender: row.sender,
    content: JSON.parse(row.content) as Record<string, unknown>,
  };
}

/** Serialises content and enforces the size limit; returns the stored text. */
export function serialiseContent(content: Record<string, unknown>): string {
  let text: string;
  try {
    text = JSON.stringify(content);
  } catch {
    // Only absurdly deep nesting makes a parsed JSON value unserialisable.
    throw fail.badJson('Event content is nested too deeply');
  }
  if (Buffer.byteLength(text, 'utf8') > MAX_CONTENT_BYTES) throw fail.tooLarge('Event content is too large');
  return text;
}

/** Event types and state keys are bounded like Synapse's (255 bytes). */
export function checkTypeAndKey(type: string, stateKey: string | undefined): void {
  if (type.length === 0 || Buffer.byteLength(type, 'utf8') > 255) throw fail.invalidParam('Invalid event type');
  if (stateKey !== undefined && Buffer.byteLength(stateKey, 'utf8') > 255) {
    throw fail.invalidParam('State key is too long');
  }
}
