/** Matrix server names (`host`, `host:port`, `[v6]:port`) as the agent's outbound side reads them. */
import { isIP } from 'node:net';

/** The default federation port. */
export const FEDERATION_PORT = 8448;

/**
 * Host and optional port of a server name or URL host. The host is lowercased and an IPv6 literal
 * loses its brackets (a bare IPv6 literal is accepted as a host too, as the guard sees them in
 * DNS answers). Undefined when it is neither.
 */
export function splitServerName(name: string): { host: string; port?: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(name);
  if (!m) return isIP(name) === 6 ? { host: name.toLowerCase() } : undefined;
  const host = (m[1] ?? m[2]!).toLowerCase();
  if (m[1] !== undefined && isIP(host) !== 6) return undefined;
  return m[3] !== undefined ? { host, port: Number(m[3]) } : { host };
}

/** `https://host:port`, bracketing an IPv6 host. */
export function httpsOrigin(host: string, port: number): string {
  return `https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}
