/**
 * Where a Matrix server name lives: the federation origin for the OpenID check and the
 * client-server API base URL for restart/send. The two are resolved independently, as
 * lk-jwt-service does: a CS-API override never moves the OpenID check, because in real deployments
 * (Synapse with separate listeners or workers) the client listener does not serve federation.
 * The CS-API URL derives from the OpenID-verified server name only; a client's `delay_cs_api_url`
 * is never used. SRV records are not consulted (explicit ports, `.well-known/matrix/server` and the
 * 8448 default cover deployments seen in practice).
 */
import { isIP } from 'node:net';

import { withoutTrailingSlash } from '../lib/http.js';
import { jsonObjectOf, type OutboundHttp } from './outbound-http.js';
import { FEDERATION_PORT, httpsOrigin, splitServerName } from './server-name.js';

export interface DirectoryOptions {
  http: OutboundHttp;
  /** server name → CS-API base URL, from the configuration. */
  overrides: Readonly<Record<string, string>>;
  /** server name → federation base URL, from the configuration (explicit, never derived from `overrides`). */
  federationOverrides?: Readonly<Record<string, string>>;
  cacheTtlMs: number;
  /** How long a failed lookup is remembered (capped at `cacheTtlMs`). */
  failureTtlMs?: number;
  /** Entries per cache; the least recently used go first. */
  maxEntries?: number;
  now?: () => number;
}

/** A broken homeserver is asked again after this long, not on every request. */
const FAILURE_TTL_MS = 60_000;

/**
 * The federation cache is filled before the OpenID check succeeds (from names anyone can send), so
 * both caches are bounded; this is far above the number of homeservers a deployment talks to.
 */
const MAX_ENTRIES = 10_000;

/** A lookup, shared by everyone who asks while it runs and remembered until `expires`. */
interface Entry {
  value: Promise<string>;
  expires: number;
}

/**
 * Lookups by key: one in flight per key (N jobs restored on a cold cache make one request),
 * successes kept for the TTL, failures for a shorter one, least recently used dropped when full.
 */
class LookupCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly ttlMs: number,
    private readonly failureTtlMs: number,
    private readonly capacity: number,
    private readonly now: () => number,
  ) {}

  get(key: string, load: () => Promise<string>): Promise<string> {
    const hit = this.entries.get(key);
    if (hit && hit.expires > this.now()) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit.value;
    }
    const entry: Entry = { value: load(), expires: Infinity };
    this.entries.delete(key);
    this.entries.set(key, entry);
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
    entry.value.then(
      () => void (entry.expires = this.now() + this.ttlMs),
      () => void (entry.expires = this.now() + this.failureTtlMs),
    );
    return entry.value;
  }
}

export class HomeserverDirectory {
  private readonly clientCache: LookupCache;
  private readonly federationCache: LookupCache;

  constructor(private readonly opts: DirectoryOptions) {
    const now = opts.now ?? Date.now;
    const failureTtl = Math.min(opts.failureTtlMs ?? FAILURE_TTL_MS, opts.cacheTtlMs);
    const capacity = opts.maxEntries ?? MAX_ENTRIES;
    this.clientCache = new LookupCache(opts.cacheTtlMs, failureTtl, capacity, now);
    this.federationCache = new LookupCache(opts.cacheTtlMs, failureTtl, capacity, now);
  }

  /** The operator's CS-API override base URL for a server, if any. */
  override(serverName: string): string | undefined {
    return lookupOverride(this.opts.overrides, serverName);
  }

  /**
   * CS-API base URL without a trailing slash: the override, else `m.homeserver.base_url` from
   * `https://<server_name>/.well-known/matrix/client` (cached). Throws when it cannot be resolved,
   * or when the SSRF guard would refuse it.
   */
  async clientBaseUrl(serverName: string): Promise<string> {
    const override = this.override(serverName);
    if (override !== undefined) return withoutTrailingSlash(override);
    return this.clientCache.get(serverName, async () => {
      const doc = await this.wellKnown(serverName, 'client');
      const homeserver = doc?.['m.homeserver'] as Record<string, unknown> | undefined;
      const base = homeserver?.base_url;
      if (typeof base !== 'string') throw new Error('no m.homeserver.base_url in .well-known/matrix/client');
      const url = new URL(base);
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('base_url is not http(s)');
      await this.opts.http.admits(url);
      return withoutTrailingSlash(url.href);
    });
  }

  /**
   * Origin (`https://host:port`) serving the server's federation API: the operator's federation
   * override (any scheme and host, deliberately), else federation resolution.
   */
  async federationOrigin(serverName: string): Promise<string> {
    const override = lookupOverride(this.opts.federationOverrides ?? {}, serverName);
    if (override !== undefined) return new URL(override).origin;
    const { host, port } = parse(serverName);
    if (port !== undefined || isIP(host) !== 0) return httpsOrigin(host, port ?? FEDERATION_PORT);
    return this.federationCache.get(serverName, async () => {
      let delegated: string | undefined;
      try {
        const server = (await this.wellKnown(serverName, 'server'))?.['m.server'];
        if (typeof server === 'string' && server.length > 0) delegated = server;
      } catch {
        // No usable .well-known: the server name itself on the default port.
      }
      if (delegated === undefined) return httpsOrigin(host, FEDERATION_PORT);
      const target = parse(delegated);
      return httpsOrigin(target.host, target.port ?? FEDERATION_PORT);
    });
  }

  private async wellKnown(serverName: string, which: 'client' | 'server'): Promise<Record<string, unknown> | undefined> {
    const res = await this.opts.http.request(new URL(`https://${serverName}/.well-known/matrix/${which}`), {
      method: 'GET',
    });
    if (res.status !== 200) throw new Error(`.well-known/matrix/${which} answered ${res.status}`);
    return jsonObjectOf(res);
  }
}

function lookupOverride(overrides: Readonly<Record<string, string>>, serverName: string): string | undefined {
  return Object.hasOwn(overrides, serverName) ? overrides[serverName] : undefined;
}

function parse(name: string): { host: string; port?: number } {
  const parsed = splitServerName(name);
  if (!parsed) throw new Error('malformed server name');
  return parsed;
}

