/**
 * SSRF guard for every request the agent makes to a homeserver (OpenID, .well-known, restart and
 * send). Server names come from clients, so an address that is not publicly routable is refused
 * unless the operator named that host in the configuration. The check runs inside the connection's
 * DNS lookup, so the address that was checked is the address connected to (no rebinding window).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

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

const NON_PUBLIC_V6: Array<[string, number]> = [
  ['::', 128], // unspecified
  ['::1', 128],
  ['64:ff9b:1::', 48], // local-use NAT64
  ['100::', 64], // discard
  ['2001::', 23], // IETF protocol assignments (Teredo, ORCHID, ...)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 embeds arbitrary IPv4
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
];

const nonPublic = new BlockList();
for (const [net, prefix] of NON_PUBLIC_V4) nonPublic.addSubnet(net, prefix, 'ipv4');
for (const [net, prefix] of NON_PUBLIC_V6) nonPublic.addSubnet(net, prefix, 'ipv6');

/** True for globally routable unicast addresses. */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  // IPv4-mapped addresses are judged as the IPv4 address they carry (BlockList's IPv6 rules
  // would otherwise also match plain IPv4 checks, so no ::ffff:0:0/96 rule is added).
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (dotted) return isPublicAddress(dotted[1]!);
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (hex) {
    const hi = parseInt(hex[1]!, 16);
    const lo = parseInt(hex[2]!, 16);
    return isPublicAddress(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`);
  }
  return !nonPublic.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

/** The host of a server name or URL host: port and IPv6 brackets removed, lowercased. */
export function hostOf(serverNameOrHost: string): string {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(serverNameOrHost);
  if (bracketed) return bracketed[1]!.toLowerCase();
  const colon = serverNameOrHost.lastIndexOf(':');
  const host = colon > 0 && serverNameOrHost.indexOf(':') === colon ? serverNameOrHost.slice(0, colon) : serverNameOrHost;
  return host.toLowerCase();
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
    this.named = new Set([...namedHosts].map(hostOf));
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
    return this.named.has(hostOf(host));
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
