/**
 * HTTP surface of the delayed-events module: management (path and body forms, with or without a
 * token, scoped delegation tokens), the listings of every generation, the single lookup, the
 * dedicated scheduling PUT and the scoped-token endpoint. Every input goes through zod.
 */
import { z } from 'zod';

import type { HomeserverConfig } from '../../config/homeserver.js';
import { fail, isMatrixError, rateLimited } from '../../lib/errors.js';
import { type Handler, jsonObject, type Method, parseWith, type RequestContext, type Router } from '../../lib/http.js';
import { bucketOf, RateLimiter } from '../../lib/rate-limit.js';
import type { Clock } from '../../lib/timer-heap.js';
import type { Auth, Requester } from '../contracts.js';
import { stickyDurationOf } from '../routes/common.js';
import type { TxnCache } from '../txns.js';
import {
  type ActionOutcome,
  type DelayedAction,
  type DelayedEngine,
  type DelayedObserver,
  SCOPED_TOKEN_MAX_IDS,
} from './engine.js';
import type { DelayedRow } from './store.js';
import {
  decodePageToken,
  encodePageToken,
  FINALISED_PAGE,
  finalisedItem,
  lookupItem,
  type PageKind,
  SCHEDULED_PAGE,
  scheduledItem,
  terminatedItem,
} from './wire.js';

/** Management and listing live under v1 and the unstable prefix. */
const MANAGEMENT_PREFIXES = ['/_matrix/client/v1', '/_matrix/client/unstable/org.matrix.msc4140'];
/** The dedicated PUT is a v3 endpoint in generation C. */
const SCHEDULING_PREFIXES = ['/_matrix/client/v3', '/_matrix/client/unstable/org.matrix.msc4140'];
/** Transaction ids of the dedicated PUT are remembered this long (longer than /send's 30 min). */
const DEDICATED_TXN_KEEP_MS = 24 * 3600 * 1000;
export const SCOPED_TOKEN_PATH = '/_matrix/client/unstable/io.lastwill.delegation/scoped_token';

const actionBody = z.object({ action: z.enum(['send', 'cancel', 'restart']) });

const listQuery = z.object({
  status: z.enum(['scheduled', 'finalised']).optional(),
  from: z.string().min(1).max(512).optional(),
  delay_id: z.array(z.string().min(1).max(255)).max(100).optional(),
});

const pageQuery = z.object({ from: z.string().min(1).max(512).optional() });

const dedicatedBody = z.object({
  delay_ms: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  state_key: z.string().optional(),
  content: z.record(z.string(), z.unknown()),
});

const scopedTokenBody = z.object({
  delay_ids: z.array(z.string().min(1).max(255)).min(1).max(SCOPED_TOKEN_MAX_IDS),
  expires_in_ms: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
});

export interface RouteDeps {
  engine: DelayedEngine;
  auth: Auth;
  txns: TxnCache;
  config: HomeserverConfig;
  clock: Clock;
  observer?: DelayedObserver;
}

/**
 * A management request's outcome for the metrics, from the error it was answered with. A request
 * that fails authentication is refused before its action counts (HTTP metrics only).
 */
function outcomeOf(err: unknown): ActionOutcome {
  if (!isMatrixError(err)) return 'error';
  switch (err.status) {
    case 400:
      return 'invalid';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 409:
      return 'conflict';
    case 429:
      return 'rate_limited';
    default:
      return 'error';
  }
}

export function registerDelayedRoutes(router: Router, deps: RouteDeps): void {
  const { engine, auth, txns, config } = deps;
  const observer = deps.observer ?? {};
  const limits = config.rate_limits;
  const management = new RateLimiter(bucketOf(limits.management), deps.clock);
  const trusted = new RateLimiter(bucketOf(limits.trusted), deps.clock);
  const trustedAddresses = new Set(limits.trusted_addresses);

  /**
   * Per user with a token, per client address without one. A trusted delegate agent restarts for
   * thousands of users from one address, so its unauthenticated calls draw on the large bucket.
   */
  function limitManagement(ctx: RequestContext, requester: Requester | undefined): void {
    const verdict = requester
      ? management.take(`user:${requester.userId}`)
      : trustedAddresses.has(ctx.remoteAddress)
        ? trusted.take(ctx.remoteAddress)
        : management.take(`addr:${ctx.remoteAddress}`);
    if (!verdict.ok) throw rateLimited(verdict.retryAfterMs);
  }

  async function manage(delayId: string, action: DelayedAction, requester: Requester | undefined): Promise<void> {
    if (requester?.scope && (action === 'cancel' || !requester.scope.delayIds.has(delayId))) {
      throw fail.forbidden('This token may not do that to this delayed event');
    }
    await engine.act(delayId, action, requester?.userId);
  }

  /** Runs a management request whose action is known, telling the observer how it ended. */
  async function counted(action: DelayedAction, run: () => Promise<void>): Promise<void> {
    try {
      await run();
    } catch (err) {
      observer.action?.(action, outcomeOf(err));
      throw err;
    }
    observer.action?.(action, 'ok');
  }

  function add(method: Method, prefixes: string[], suffix: string, handler: Handler): void {
    for (const prefix of prefixes) router.add(method, prefix + suffix, handler);
  }

  function listRequester(ctx: RequestContext): Requester {
    const requester = auth.requester(ctx);
    limitManagement(ctx, requester);
    return requester;
  }

  function page(kind: PageKind, userId: string, ids: string[] | undefined, from: string | undefined) {
    const pos = decodePageToken(kind, from);
    const size = kind === 's' ? SCHEDULED_PAGE : FINALISED_PAGE;
    const params = {
      user: userId,
      ids: ids ? JSON.stringify(ids) : null,
      a: pos?.a ?? (kind === 's' ? -1 : Number.MAX_SAFE_INTEGER),
      b: pos?.b ?? (kind === 's' ? -1 : Number.MAX_SAFE_INTEGER),
      limit: size + 1,
    };
    const rows: DelayedRow[] =
      kind === 's'
        ? engine.store.scheduledPage(params)
        : engine.store.finalisedPage({
            ...params,
            oldest: deps.clock.now() - config.delayed_events.terminated_keep_ms,
          });
    const more = rows.length > size;
    const shown = more ? rows.slice(0, size) : rows;
    return { rows: shown, next: more ? encodePageToken(kind, shown[shown.length - 1]!) : undefined };
  }

  // Literal listing paths first: the router tries patterns in order and `:delayId` matches anything.
  add('GET', MANAGEMENT_PREFIXES, '/delayed_events', (ctx) => {
    const requester = listRequester(ctx);
    const ids = ctx.query.getAll('delay_id');
    const q = parseWith(
      listQuery,
      {
        status: ctx.query.get('status') ?? undefined,
        from: ctx.query.get('from') ?? undefined,
        delay_id: ids.length > 0 ? ids : undefined,
      },
      'invalidParam',
    );
    if (q.status === 'finalised') {
      const p = page('f', requester.userId, q.delay_id, q.from);
      return { body: { finalised: p.rows.map(finalisedItem), ...(p.next ? { next_batch: p.next } : {}) } };
    }
    const p = page('s', requester.userId, q.delay_id, q.from);
    const items = p.rows.map(scheduledItem);
    return { body: { delayed_events: items, scheduled: items, ...(p.next ? { next_batch: p.next } : {}) } };
  });

  add('GET', MANAGEMENT_PREFIXES, '/delayed_events/scheduled', (ctx) => {
    const requester = listRequester(ctx);
    const q = parseWith(pageQuery, { from: ctx.query.get('from') ?? undefined }, 'invalidParam');
    const p = page('s', requester.userId, undefined, q.from);
    return { body: { delayed_events: p.rows.map(scheduledItem), ...(p.next ? { next_batch: p.next } : {}) } };
  });

  add('GET', MANAGEMENT_PREFIXES, '/delayed_events/terminated', (ctx) => {
    const requester = listRequester(ctx);
    const q = parseWith(pageQuery, { from: ctx.query.get('from') ?? undefined }, 'invalidParam');
    const p = page('f', requester.userId, undefined, q.from);
    return {
      body: {
        terminated_events: p.rows.map(terminatedItem),
        ...(p.next ? { next_terminated_batch: p.next } : {}),
      },
    };
  });

  add('GET', MANAGEMENT_PREFIXES, '/delayed_events/:delayId', (ctx) => {
    const requester = listRequester(ctx);
    const row = engine.visibleRow(ctx.params.delayId!);
    if (!row || row.user_id !== requester.userId) throw fail.notFound('Unknown delayed event');
    return { body: lookupItem(row) };
  });

  // Older form: action in the body, always authenticated (scoped tokens allowed for restart/send).
  add('POST', MANAGEMENT_PREFIXES, '/delayed_events/:delayId', async (ctx) => {
    const requester = auth.requester(ctx, { allowScoped: true });
    limitManagement(ctx, requester);
    const body = await jsonObject(ctx);
    // zod reports a missing enum value as a bad value; the body form answers M_MISSING_PARAM.
    if (body.action === undefined) throw fail.missingParam('Missing action');
    const { action } = parseWith(actionBody, body, 'invalidParam');
    // The rate limit above answers before the action is read, so its 429s are in the HTTP metrics only.
    await counted(action, () => manage(ctx.params.delayId!, action, requester));
    return { body: {} };
  });

  // Path form: the token is optional; without one the delay id itself is the capability.
  // The body (`{}` by convention) carries nothing and is not read.
  add('POST', MANAGEMENT_PREFIXES, '/delayed_events/:delayId/:action(send|cancel|restart)', async (ctx) => {
    const action = ctx.params.action as DelayedAction;
    const requester = auth.optionalRequester(ctx, { allowScoped: action !== 'cancel' });
    await counted(action, async () => {
      limitManagement(ctx, requester);
      await manage(ctx.params.delayId!, action, requester);
    });
    return { body: {} };
  });

  add('PUT', SCHEDULING_PREFIXES, '/rooms/:roomId/delayed_event/:eventType/:txnId', async (ctx) => {
    const requester = auth.requester(ctx);
    const { roomId, eventType, txnId } = ctx.params as { roomId: string; eventType: string; txnId: string };
    // The same transaction under either prefix; not a path, so it cannot collide with /send's keys.
    const key = txns.key(requester, `delayed_event ${JSON.stringify([roomId, eventType, txnId])}`);
    // Looked up before the body is read: a repeat may come without one and still gets the
    // original id. The mapping commits with the row (inCommit), so a crash cannot split them.
    const response = await txns.once(
      key,
      async (remember) => {
        const stickyDurationMs = stickyDurationOf(ctx, eventType);
        const body = parseWith(dedicatedBody, await jsonObject(ctx), 'invalidParam');
        const delayId = await engine.schedule({
          requester,
          roomId,
          type: eventType,
          ...(body.state_key !== undefined ? { stateKey: body.state_key } : {}),
          content: body.content,
          delayMs: body.delay_ms,
          ...(stickyDurationMs !== undefined ? { stickyDurationMs } : {}),
          form: 'dedicated',
          inCommit: (id) => remember({ delay_id: id }),
        });
        return { delay_id: delayId };
      },
      DEDICATED_TXN_KEEP_MS,
    );
    return { body: response };
  });

  router.add('POST', SCOPED_TOKEN_PATH, async (ctx) => {
    const requester = auth.requester(ctx);
    limitManagement(ctx, requester);
    const body = parseWith(scopedTokenBody, await jsonObject(ctx), 'invalidParam');
    const minted = await engine.mintScopedToken(requester.userId, body.delay_ids, body.expires_in_ms);
    return { body: { token: minted.token, expires_at: minted.expiresAt } };
  });
}
