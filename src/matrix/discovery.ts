/**
 * Where a Matrix server name lives: the federation origin for the OpenID check and the
 * client-server API base URL for restart/send. Both derive from the OpenID-verified server name
 * only; a client's `delay_cs_api_url` is never used. SRV records are not consulted (explicit
 * ports, `.well-known/matrix/server` and the 8448 default cover deployments seen in practice).
 */
import { isIP } from 'node:net';

import { jsonObjectOf, type OutboundHttp } from './outbound-http.js';

export interface DirectoryOptions {
  http: OutboundHttp;
  /** server name → CS-API base URL, from the configuration. */
  overrides: Readonly<Record<string, string>>;
  cacheTtlMs: number;
  now?: () => number;
}

interface Cached {
  value: string;
  expires: number;
}

/** The default federation port. */
const FEDERATION_PORT = 8448;

/** Splits a server name into host and optional port (`[v6]:port` aware). */
export function splitServerName(name: string): { host: string; port?: number } {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(name);
  if (!m) throw new Error('malformed server name');
  return { host: m[1]!, ...(m[2] !== undefined ? { port: Number(m[2]) } : {}) };
}

export class HomeserverDirectory {
  private readonly clientCache = new Map<string, Cached>();
  private readonly federationCache = new Map<string, Cached>();
  private readonly now: () => number;

  constructor(private readonly opts: DirectoryOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** The operator's override base URL for a server, if any. */
  override(serverName: string): string | undefined {
    return Object.hasOwn(this.opts.overrides, serverName) ? this.opts.overrides[serverName] : undefined;
  }

  /**
   * CS-API base URL without a trailing slash: the override, else `m.homeserver.base_url` from
   * `https://<server_name>/.well-known/matrix/client` (cached). Throws when it cannot be resolved.
   */
  async clientBaseUrl(serverName: string): Promise<string> {
    const override = this.override(serverName);
    if (override !== undefined) return trimSlash(override);
    return this.cached(this.clientCache, serverName, async () => {
      const doc = await this.wellKnown(serverName, 'client');
      const homeserver = doc?.['m.homeserver'] as Record<string, unknown> | undefined;
      const base = homeserver?.base_url;
      if (typeof base !== 'string') throw new Error('no m.homeserver.base_url in .well-known/matrix/client');
      const url = new URL(base);
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('base_url is not http(s)');
      return trimSlash(url.href);
    });
  }

  /**
   * Origin (`https://host:port`) serving the server's federation API. Override-named servers use
   * their override's scheme and host, so an operator can point a server at plain-http or
   * private-CA endpoints deliberately.
   */
  async federationOrigin(serverName: string): Promise<string> {
    const override = this.override(serverName);
    if (override !== undefined) return new URL(override).origin;
    const { host, port } = splitServerName(serverName);
    if (port !== undefined || isIP(host.replace(/^\[(.*)\]$/, '$1')) !== 0) {
      return `https://${host}:${port ?? FEDERATION_PORT}`;
    }
    return this.cached(this.federationCache, serverName, async () => {
      let delegated: string | undefined;
      try {
        const server = (await this.wellKnown(serverName, 'server'))?.['m.server'];
        if (typeof server === 'string' && server.length > 0) delegated = server;
      } catch {
        // No usable .well-known: the server name itself on the default port.
      }
      if (delegated === undefined) return `https://${host}:${FEDERATION_PORT}`;
      const target = splitServerName(delegated);
      return `https://${target.host}:${target.port ?? FEDERATION_PORT}`;
    });
  }

  private async wellKnown(serverName: string, which: 'client' | 'server'): Promise<Record<string, unknown> | undefined> {
    const res = await this.opts.http.request(new URL(`https://${serverName}/.well-known/matrix/${which}`), {
      method: 'GET',
    });
    if (res.status !== 200) throw new Error(`.well-known/matrix/${which} answered ${res.status}`);
    return jsonObjectOf(res);
  }

  private async cached(cache: Map<string, Cached>, key: string, load: () => Promise<string>): Promise<string> {
    const hit = cache.get(key);
    const now = this.now();
    if (hit && hit.expires > now) return hit.value;
    const value = await load();
    cache.set(key, { value, expires: now + this.opts.cacheTtlMs });
    return value;
  }
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}
