/**
 * Response shapes of the listing and lookup endpoints in each generation, and the opaque
 * pagination tokens. All of them are derived from the one stored row.
 */
import { z } from 'zod';

import { fail } from '../../lib/errors.js';
import { STICKY } from '../events.js';
import type { DelayedRow } from './store.js';

/** Seed page sizes: 10 finalised events per batch (recommended), 100 scheduled ones (our choice). */
export const SCHEDULED_PAGE = 100;
export const FINALISED_PAGE = 10;

/**
 * When the event's timer started: its scheduling or its last restart. The seed calls it
 * `running_since`, the latest text `scheduled_at`; both are this one value.
 */
function scheduledAt(row: DelayedRow): number {
  return row.running_since;
}

/** What every generation says about a delayed event, in the latest text's names. */
function delayedEventFields(row: DelayedRow): Record<string, unknown> {
  return {
    delay_id: row.delay_id,
    room_id: row.room_id,
    type: row.type,
    ...(row.state_key !== null ? { state_key: row.state_key } : {}),
    delay_ms: row.delay_ms,
    scheduled_at: scheduledAt(row),
    content: JSON.parse(row.content) as unknown,
    // Our choice (Synapse lists no such field): the sticky duration in the form the sent event will carry it.
    ...(row.sticky_duration_ms !== null ? { [STICKY.field]: { duration_ms: row.sticky_duration_ms } } : {}),
  };
}

/**
 * A listed delayed event (every list, and inside finalised/terminated entries): the single
 * lookup's fields (latest text) plus the seed's `delay` and `running_since`, so clients of every
 * generation find the names they read.
 */
export function scheduledItem(row: DelayedRow): Record<string, unknown> {
  return { ...delayedEventFields(row), delay: row.delay_ms, running_since: scheduledAt(row) };
}

function outcomeFields(row: DelayedRow): Record<string, unknown> {
  return {
    ...(row.error !== null ? { error: JSON.parse(row.error) as unknown } : {}),
    ...(row.event_id !== null ? { event_id: row.event_id } : {}),
    ...(row.origin_server_ts !== null ? { origin_server_ts: row.origin_server_ts } : {}),
  };
}

/** Seed `terminated_events[]` entry. */
export function terminatedItem(row: DelayedRow): Record<string, unknown> {
  const reason =
    row.status === 'sent'
      ? row.cause === 'delay'
        ? 'timeout'
        : 'send'
      : row.status === 'failed'
        ? 'error'
        : 'canceled';
  return { delayed_event: scheduledItem(row), termination_reason: reason, ...outcomeFields(row) };
}

/** `finalised[]` entry of the renamed seed text (the shape matrix-js-sdk's types carry). */
export function finalisedItem(row: DelayedRow): Record<string, unknown> {
  const outcome = row.status === 'cancelled' ? 'cancel' : 'send';
  const reason = row.cause === 'state' ? 'error' : row.cause === 'delay' ? 'delay' : 'action';
  return { delayed_event: scheduledItem(row), outcome, reason, ...outcomeFields(row) };
}

/** Generation-C single lookup: status is told by which of finalised_ts / event_id / error exist. */
export function lookupItem(row: DelayedRow): Record<string, unknown> {
  return {
    ...delayedEventFields(row),
    ...(row.finalised_ts !== null ? { finalised_ts: row.finalised_ts } : {}),
    ...(row.status === 'sent' && row.event_id !== null ? { event_id: row.event_id } : {}),
    ...(row.status === 'failed' && row.error !== null ? { error: JSON.parse(row.error) as unknown } : {}),
  };
}

/** Which list a token continues: scheduled ('s') or finalised ('f'). */
export type PageKind = 's' | 'f';

const tokenSchema = z.tuple([z.enum(['s', 'f']), z.number().int().safe(), z.number().int().safe()]);

/** Keyset position (sort key and tie-breaker of the last row returned), base64url-wrapped. */
export function encodePageToken(kind: PageKind, row: DelayedRow): string {
  const pos = kind === 's' ? [row.due_at, row.seq] : [row.finalised_ts ?? 0, row.fin_seq ?? 0];
  return Buffer.from(JSON.stringify([kind, ...pos])).toString('base64url');
}

/** The position a `from` token names; a malformed token or one of the other list is 400. */
export function decodePageToken(kind: PageKind, token: string | undefined): { a: number; b: number } | undefined {
  if (token === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    throw fail.invalidParam('Invalid pagination token');
  }
  const result = tokenSchema.safeParse(parsed);
  if (!result.success || result.data[0] !== kind) throw fail.invalidParam('Invalid pagination token');
  return { a: result.data[1], b: result.data[2] };
}
