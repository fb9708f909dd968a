/** /sync (initial, incremental, long-polling) and the filter endpoints it reads. */
import { z } from 'zod';

import { CappedMap } from '../../lib/capped-map.js';
import { fail } from '../../lib/errors.js';
import { parseWith, type RequestContext, type Router } from '../../lib/http.js';
import {
  anyObject,
  body,
  CS,
  intString,
  pathParams,
  queryParams,
  requireSelf,
  type Services,
  streamToken,
  userIdSchema,
} from './common.js';

/** Longest a long poll is held, whatever the client asks. */
const MAX_TIMEOUT_MS = 60_000;
const DEFAULT_TIMELINE_LIMIT = 10;

const syncQuery = z.object({
  since: streamToken.optional(),
  timeout: intString(Number.MAX_SAFE_INTEGER).optional(),
  filter: z.string().max(16_384).optional(),
  full_state: z.enum(['true', 'false']).optional(),
  set_presence: z.enum(['online', 'offline', 'unavailable']).optional(),
  use_state_after: z.enum(['true', 'false']).optional(),
});

/** The part of a filter this server honours; everything else is accepted and ignored. */
const filterSchema = z
  .object({
    room: z
      .object({
        timeline: z.object({ limit: z.number().int().min(0).optional() }).loose().optional(),
        include_leave: z.boolean().optional(),
      })
      .loose()
      .optional(),
  })
  .loose();

type Filter = z.output<typeof filterSchema>;

/** Distinct filter texts whose parse is kept; past this the cache starts over. */
const FILTER_CACHE_SIZE = 256;

export function registerSyncRoutes(router: Router, s: Services): void {
  /**
   * Valid filters by their JSON text. A client sends the same filter with every long poll, and
   * under a stream of events a poll returns for nearly each one, so parsing and validating it
   * every time was a visible share of /sync. Shared: callers must not modify the result.
   */
  const filters = new CappedMap<string, Filter>(FILTER_CACHE_SIZE);
  const parseFilter = (text: string): Filter => {
    const known = filters.get(text);
    if (known) return known;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw fail.notJson('filter is not valid JSON');
    }
    const filter = parseWith(filterSchema, parsed, 'invalidParam');
    filters.set(text, filter);
    return filter;
  };
  const filterDefinition = (userId: string, raw: string | undefined): Filter => {
    if (raw === undefined) return {};
    if (raw.startsWith('{')) return parseFilter(raw);
    if (!/^\d{1,9}$/.test(raw)) throw fail.invalidParam('filter must be a filter id or a JSON object');
    const stored = s.store.getFilter(userId, Number(raw));
    if (stored === undefined) throw fail.invalidParam('Unknown filter id');
    return parseFilter(stored);
  };

  router.add('GET', `${CS}/sync`, async (ctx: RequestContext) => {
    const r = s.auth.requester(ctx);
    const q = queryParams(ctx, syncQuery);
    const filter = filterDefinition(r.userId, q.filter);
    if (q.set_presence !== undefined) s.store.upsertPresence(r.userId, q.set_presence, null, s.clock.now());
    const opts = {
      since: q.since,
      timelineLimit: Math.min(filter.room?.timeline?.limit ?? DEFAULT_TIMELINE_LIMIT, 100),
      fullState: q.full_state === 'true',
      includeLeave: filter.room?.include_leave === true,
    };
    const deadline = s.clock.now() + Math.min(q.timeout ?? 0, MAX_TIMEOUT_MS);
    for (;;) {
      const result = s.sync.build(r.userId, opts);
      const remaining = deadline - s.clock.now();
      if (!result.empty || opts.since === undefined || remaining <= 0 || ctx.closing.aborted) {
        return { body: result.body };
      }
      await s.notifier.wait(remaining, ctx.closing, { userId: r.userId, rooms: result.rooms });
    }
  });

  router.add('POST', `${CS}/user/:userId/filter`, async (ctx) => {
    const r = s.auth.requester(ctx);
    const { userId } = pathParams(ctx, z.object({ userId: userIdSchema }));
    requireSelf(userId, r.userId);
    const definition = await body(ctx, anyObject);
    parseWith(filterSchema, definition);
    const text = JSON.stringify(definition);
    if (text.length > 16_384) throw fail.tooLarge('Filter is too large');
    return { body: { filter_id: String(s.store.insertFilter(r.userId, text)) } };
  });
  router.add('GET', `${CS}/user/:userId/filter/:filterId`, (ctx) => {
    const r = s.auth.requester(ctx);
    const { userId, filterId } = pathParams(
      ctx,
      z.object({ userId: userIdSchema, filterId: z.string().regex(/^\d{1,9}$/) }),
    );
    requireSelf(userId, r.userId);
    const stored = s.store.getFilter(userId, Number(filterId));
    if (stored === undefined) throw fail.notFound('No such filter');
    return { body: JSON.parse(stored) as unknown };
  });
}
