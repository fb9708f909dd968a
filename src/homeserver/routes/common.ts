/** What every route group is built from, and the request-parsing helpers they share. */
import type { Logger } from 'pino';
import { z } from 'zod';

import type { HomeserverConfig } from '../../config/homeserver.js';
import { fail } from '../../lib/errors.js';
import { jsonObject, parseWith, type RequestContext } from '../../lib/http.js';
import type { Clock } from '../../lib/timer-heap.js';
import type { Accounts } from '../accounts.js';
import type { TokenAuth } from '../auth.js';
import type { DelayedEvents } from '../contracts.js';
import { STICKY, stickyDurationFor } from '../events.js';
import type { StreamNotifier } from '../notifier.js';
import type { Rooms } from '../rooms.js';
import type { CoreStore } from '../store.js';
import type { SyncBuilder } from '../sync.js';
import type { TxnCache } from '../txns.js';

export interface Services {
  config: HomeserverConfig;
  log: Logger;
  clock: Clock;
  store: CoreStore;
  auth: TokenAuth;
  accounts: Accounts;
  rooms: Rooms;
  notifier: StreamNotifier;
  txns: TxnCache;
  sync: SyncBuilder;
  delayed: DelayedEvents;
  /** Base URL clients should use (for .well-known). */
  baseUrl: () => string;
}

/** Client-server prefix for endpoints clients call under both r0 and v3. */
export const CS = '/_matrix/client/:version(r0|v3)';
/** Room endpoints Synapse also serves under `unstable` (js-sdk uses it for some calls). */
export const CS_ROOMS = '/_matrix/client/:version(r0|v3|unstable)/rooms/:roomId';

export const roomIdSchema = z.string().regex(/^![^:]+:.+$/, 'must be a room id').max(255);
export const userIdSchema = z.string().regex(/^@[^:]+:.+$/, 'must be a user id').max(255);
export const eventTypeSchema = z.string().min(1).max(255);

/** Validates path parameters; a bad one is 400 M_INVALID_PARAM. */
export function pathParams<S extends z.ZodType>(ctx: RequestContext, schema: S): z.output<S> {
  return parseWith(schema, ctx.params, 'invalidParam');
}

/** Validates the query string (first value of each key); a bad value is 400 M_INVALID_PARAM. */
export function queryParams<S extends z.ZodType>(ctx: RequestContext, schema: S): z.output<S> {
  const obj: Record<string, string> = {};
  for (const [k, v] of ctx.query) if (!(k in obj)) obj[k] = v;
  return parseWith(schema, obj, 'invalidParam');
}

/** Reads and validates a JSON object body. */
export async function body<S extends z.ZodType>(ctx: RequestContext, schema: S): Promise<z.output<S>> {
  return parseWith(schema, await jsonObject(ctx));
}

/** A body that may be absent or empty (`{}` then), as for logout or leave. */
export async function optionalBody<S extends z.ZodType>(ctx: RequestContext, schema: S): Promise<z.output<S>> {
  const raw = await ctx.rawBody();
  if (raw.length === 0) return parseWith(schema, {});
  return body(ctx, schema);
}

/** A non-negative integer query value (`limit=10`, `timeout=30000`). */
export const intString = (max: number) =>
  z
    .string()
    .regex(/^\d{1,16}$/, 'must be a non-negative integer')
    .transform(Number)
    .pipe(z.number().int().max(max));

/**
 * MSC4354's sticky duration, a query parameter wherever an event is sent or scheduled. Any
 * non-negative integer, like Synapse: 0 makes an event that is never sticky, and more than an
 * hour counts as an hour.
 */
export const stickyQuery = z.object({ [STICKY.param]: intString(Number.MAX_SAFE_INTEGER).optional() });

/** The sticky duration a request asks for its event of `type` (none for membership events). */
export function stickyDurationOf(ctx: RequestContext, type: string): number | undefined {
  return stickyDurationFor(type, queryParams(ctx, stickyQuery)[STICKY.param]);
}

/** Pagination and sync tokens: `s<stream position>`. */
export const streamToken = z
  .string()
  .regex(/^s\d{1,15}$/, 'must be a token from this server')
  .transform((t) => Number(t.slice(1)));

export function tokenOfPosition(position: number): string {
  return `s${position}`;
}

/** The path's user id must be the requester's own (filters, account data, openid). */
export function requireSelf(pathUserId: string, requesterId: string): void {
  if (pathUserId !== requesterId) throw fail.forbidden('You can only do this for your own user');
}

export const anyObject = z.record(z.string(), z.unknown());
