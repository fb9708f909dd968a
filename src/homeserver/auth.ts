/**
 * Access-token authentication: the core's implementation of the `Auth` seam. Unknown tokens are
 * offered to the delayed-events module, which may recognise a scoped delegation token.
 */
import type { RequestContext } from '../lib/http.js';
import { fail } from '../lib/errors.js';
import type { Auth, DelayedEvents, Requester } from './contracts.js';
import type { CoreStore } from './store.js';

/** Reads the token from `Authorization: Bearer …` or `?access_token=`. */
export function tokenOf(ctx: RequestContext): string | undefined {
  const header = ctx.req.headers.authorization;
  if (header !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw fail.missingToken('Invalid Authorization header');
    return m[1];
  }
  const query = ctx.query.get('access_token');
  return query === null || query === '' ? undefined : query;
}

export class TokenAuth implements Auth {
  /**
   * @param delayed - resolved lazily: the delayed-events module is built after `Auth` because it
   *   depends on it.
   */
  constructor(
    private readonly store: CoreStore,
    private readonly delayed: () => Pick<DelayedEvents, 'resolveScopedToken'> | undefined,
  ) {}

  requester(ctx: RequestContext, opts: { allowScoped?: boolean } = {}): Requester {
    const found = this.optionalRequester(ctx, opts);
    if (!found) throw fail.missingToken('Missing access token');
    return found;
  }

  optionalRequester(ctx: RequestContext, opts: { allowScoped?: boolean } = {}): Requester | undefined {
    const token = tokenOf(ctx);
    if (token === undefined) return undefined;
    return this.resolve(token, opts.allowScoped === true);
  }

  /** The requester behind a raw token (also used by the OpenID-free internal paths). */
  resolve(token: string, allowScoped: boolean): Requester {
    const row = this.store.getToken(token);
    if (row) return { userId: row.user_id, deviceId: row.device_id, token };
    const scoped = this.delayed()?.resolveScopedToken(token);
    if (!scoped) throw fail.unknownToken('Unknown access token', { soft_logout: false });
    if (!allowScoped) throw fail.forbidden('This token may only manage its delayed events');
    return scoped;
  }
}
