/**
 * Redis URLs in the forms lk-jwt-service (go-redis) accepts, as node-redis connection options.
 * Apart from the client so the configuration can check a URL without loading it.
 */
import type { RedisClientOptions } from '@redis/client';

/**
 * node-redis options for a URL in the forms lk-jwt-service (go-redis) accepts. go-redis reads
 * `unix://[user:password@]/path?db=N`; node-redis has no unix URL, so that form becomes a socket
 * path. A password given apart (LIVEKIT_REDIS_PASSWORD) wins over one in the URL.
 */
export function redisClientOptions(url: string, password?: string): RedisClientOptions {
  if (url.startsWith('unix:')) return unixOptions(url, password);
  const parsed = new URL(url);
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new Error(`unsupported Redis URL scheme ${parsed.protocol}`);
  const inUrl = parsed.password ? decodeURIComponent(parsed.password) : undefined;
  return {
    url,
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...((password ?? inUrl) !== undefined ? { password: password ?? inUrl } : {}),
    socket: { reconnectStrategy: retryForever },
  };
}

/**
 * `unix://[user[:password]@]/path[?db=N]`: WHATWG URLs refuse credentials without a host, so this
 * form is read by hand.
 */
function unixOptions(url: string, password?: string): RedisClientOptions {
  const m = /^unix:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?(\/[^?]*)(?:\?(.*))?$/.exec(url);
  if (!m) throw new Error('a unix Redis URL has the form unix://[user[:password]@]/path/to/socket[?db=N]');
  const [, user, inUrl, path, query] = m;
  const db = new URLSearchParams(query ?? '').get('db');
  const pw = password ?? (inUrl ? decodeURIComponent(inUrl) : undefined);
  return {
    socket: { path: decodeURIComponent(path!), reconnectStrategy: retryForever },
    ...(user ? { username: decodeURIComponent(user) } : {}),
    ...(pw !== undefined ? { password: pw } : {}),
    ...(db !== null ? { database: Number(db) } : {}),
  };
}

/** Reconnects every 50 ms at first, backing off to 1 s: Redis coming back must be noticed soon. */
function retryForever(retries: number): number {
  return Math.min(1000, 50 * 2 ** Math.min(retries, 5));
}

