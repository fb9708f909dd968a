/** OpenID token verification against the user's homeserver (federation `openid/userinfo`). */
import type { Logger } from 'pino';

import { serverName as serverNameGrammar } from '../config/common.js';
import { fail } from '../lib/errors.js';
import type { HomeserverDirectory } from './discovery.js';
import { jsonObjectOf, type OutboundHttp } from './outbound-http.js';

export interface OpenIdVerifierOptions {
  http: OutboundHttp;
  directory: HomeserverDirectory;
  log: Logger;
}

/** The server part of a user id, or undefined when it is not `@localpart:server`. */
export function serverOfUserId(userId: string): string | undefined {
  const m = /^@[^:]+:(.+)$/.exec(userId);
  return m?.[1];
}

export class OpenIdVerifier {
  constructor(private readonly opts: OpenIdVerifierOptions) {}

  /**
   * Exchanges the token for the user id it belongs to. The user id must belong to
   * `serverName` itself, so one homeserver cannot vouch for another's users (stricter than
   * lk-jwt-service). Any failure is 401 M_UNAUTHORIZED, including a name that is not a server
   * name (which lk-jwt-service fails to resolve); the reason is logged at debug only.
   */
  async verify(serverName: string, accessToken: string): Promise<string> {
    try {
      if (!serverNameGrammar.safeParse(serverName).success) throw new Error('malformed server name');
      const origin = await this.opts.directory.federationOrigin(serverName);
      const url = new URL('/_matrix/federation/v1/openid/userinfo', origin);
      url.searchParams.set('access_token', accessToken);
      const res = await this.opts.http.request(url, { method: 'GET' });
      if (res.status !== 200) throw new Error(`userinfo answered ${res.status}`);
      const sub = jsonObjectOf(res)?.sub;
      if (typeof sub !== 'string') throw new Error('userinfo has no sub');
      if (serverOfUserId(sub) !== serverName) throw new Error('sub belongs to another server');
      return sub;
    } catch (err) {
      this.opts.log.debug({ err: (err as Error).message, serverName }, 'OpenID verification failed');
      throw fail.unauthorized('Failed to look up user info from homeserver');
    }
  }
}
