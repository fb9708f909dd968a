/**
 * SSRF guard for every request the agent makes to a homeserver (OpenID, .well-known, restart and
 * send). Server names come from clients, so an address that is not publicly routable is refused
 * unless the operator named that host in the configuration. The check runs inside the connection's
 * DNS lookup, so the address that was checked is the address connected to (no rebinding window).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

import { splitServerName } from './server-name.js';

/** Error code of a refused destination; callers classify it as "unresolvable", never retry it. */
export const OUTBOUND_REFUSED = 'ERR_LASTWILL_OUTBOUND_REFUSED';

export class OutboundRefusedError extends Error {
  readonly code = OUTBOUND_REFUSED;
  constructor(readonly host: string) {
    super('destination is not a public address and its host is not named in the configuration');
    this.name = 'OutboundRefusedError';
  }
}

/** Special-purpose ranges (IANA registries) that must never be reached on a client's say-so. */
const NON_PUBLIC_V4: Array<[string, number]> = [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // CGNAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
];

/**
 * IPv6 ranges refused outright. Ranges that embed an IPv4 address which a gateway would then
 * contact (::/96, ::ffff:0:0/96, ::ffff:0:0:0/96, 64:ff9b::/96) are judged by that address
 * instead (see `embeddedIpv4`); relayed transition ranges (6to4, Teredo) are refused whatever
 * they embed, since no homeserver needs them and their relays reach arbitrary IPv4 hosts.
 */
const NON_PUBLIC_V6: Array<[string, number]> = [
  ['64:ff9b::', 32], // NAT64: the well-known /96 is judged by its IPv4; the rest (local-use /48) refused
  ['100::', 64], // discard
  ['2001::', 23], // IETF protocol assignments (Teredo 2001::/32, ORCHID, ...)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 embeds an arbitrary IPv4 reached through a relay
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
];

const nonPublicV4 = new BlockList();
for (const [net, prefix] of NON_PUBLIC_V4) nonPublicV4.addSubnet(net, prefix, 'ipv4');
// Separate lists: a BlockList holding IPv6 rules also matches IPv4-mapped forms of IPv4 checks.
const nonPublicV6 = new BlockList();
for (const [net, prefix] of NON_PUBLIC_V6) nonPublicV6.addSubnet(net, prefix, 'ipv6');

/** The eight 16-bit groups of a valid IPv6 address (zone dropped, `::` expanded, dotted tail converted). */
function ipv6Groups(address: string): number[] {
  const bare = address.replace(/%.*$/, '');
  const hex = bare.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_m, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`,
  );
  const [head = '', tail] = hex.split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/**
 * The IPv4 address a gateway or the host's own stack would contact for an IPv6 address:
 * IPv4-compatible `::a.b.c.d` (also `::` and `::1`, which become 0.0.0.0/8 and are refused),
 * IPv4-mapped `::ffff:a.b.c.d`, SIIT `::ffff:0:a.b.c.d` and NAT64 `64:ff9b::a.b.c.d`.
 */
function embeddedIpv4(g: readonly number[]): string | undefined {
  const zero = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  const embedded =
    (zero(0, 5) && (g[5] === 0 || g[5] === 0xffff)) ||
    (zero(0, 4) && g[4] === 0xffff && g[5] === 0) ||
    (g[0] === 0x64 && g[1] === 0xff9b && zero(2, 6));
  if (!embedded) return undefined;
  const hi = g[6]!;
  const lo = g[7]!;
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** True for globally routable unicast addresses. */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !nonPublicV4.check(address, 'ipv4');
  if (family !== 6) return false;
  const v4 = embeddedIpv4(ipv6Groups(address));
  if (v4 !== undefined) return isPublicAddress(v4);
  return !nonPublicV6.check(address.replace(/%.*$/, ''), 'ipv6');
}

/** The host of a server name or URL host, for comparing with the operator's named hosts. */
function hostKey(serverNameOrHost: string): string {
  return splitServerName(serverNameOrHost)?.host ?? serverNameOrHost.toLowerCase();
}

export interface GuardConfig {
  full_access_homeservers: readonly string[];
  cs_api_url_overrides: Readonly<Record<string, string>>;
}

type Lookup = typeof dnsLookup;

export class OutboundGuard {
  private readonly named: ReadonlySet<string>;

  /**
   * @param namedHosts - hosts (server names, override URL hosts) the operator vouched for
   * @param resolve - the DNS resolver; injectable for tests
   */
  constructor(
    namedHosts: Iterable<string>,
    private readonly resolve: Lookup = dnsLookup,
  ) {
    this.named = new Set([...namedHosts].map(hostKey));
  }

  /** Hosts named by the operator: full-access servers (not `*`) and every override, key and URL. */
  static fromConfig(config: GuardConfig, resolve?: Lookup): OutboundGuard {
    const hosts = config.full_access_homeservers.filter((s) => s !== '*');
    for (const [server, url] of Object.entries(config.cs_api_url_overrides)) {
      hosts.push(server, new URL(url).hostname);
    }
    return new OutboundGuard(hosts, resolve);
  }

  isNamed(host: string): boolean {
    return this.named.has(hostKey(host));
  }

  /** Throws OutboundRefusedError when `host` is an IP literal that may not be contacted. */
  checkLiteral(host: string): void {
    const bare = host.replace(/^\[(.*)\]$/, '$1');
    if (isIP(bare) !== 0 && !isPublicAddress(bare) && !this.isNamed(bare)) throw new OutboundRefusedError(bare);
  }

  /**
   * A `net.connect` lookup that resolves and refuses the whole answer if any address is not public
   * (a mixed answer is how rebinding attacks are staged).
   */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    this.resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses as unknown as LookupAddress[];
      if (!this.isNamed(hostname) && list.some((a) => !isPublicAddress(a.address))) {
        return callback(new OutboundRefusedError(hostname), '', 0);
      }
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
      const first = list[0];
      if (!first) return callback(Object.assign(new Error('no addresses'), { code: 'ENOTFOUND' }), '', 0);
      return callback(null, first.address, first.family);
    });
  };
}
