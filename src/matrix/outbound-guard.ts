/**
 * SSRF guard for every request the agent makes to a homeserver (OpenID, .well-known, restart and
 * send). Server names come from clients, so an address that is not publicly routable is refused
 * unless the operator named that exact origin (scheme, host and port) in the configuration. The
 * check runs inside the connection's DNS lookup, so the address that was checked is the address
 * connected to (no rebinding window).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

import { FEDERATION_PORT, httpsOrigin, splitServerName } from './server-name.js';

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

/**
 * The origins a server name itself is reached at: with an explicit port that one (federation and
 * .well-known both live there), otherwise `https://host` for .well-known and the default
 * federation port.
 */
function originsOfServerName(name: string): string[] {
  const parsed = splitServerName(name);
  if (!parsed) return [];
  if (parsed.port !== undefined) return [httpsOrigin(parsed.host, parsed.port)];
  return [httpsOrigin(parsed.host, 443), httpsOrigin(parsed.host, FEDERATION_PORT)];
}

/**
 * scheme://host[:port] in the form `URL.origin` gives (lowercase, default port dropped); nothing
 * for what is not an origin (the config schema refuses such names before they get here).
 */
function canonicalOrigins(origins: Iterable<string>): string[] {
  return [...origins].flatMap((origin) => (URL.canParse(origin) ? [new URL(origin).origin] : []));
}

export interface GuardConfig {
  full_access_homeservers: readonly string[];
  cs_api_url_overrides: Readonly<Record<string, string>>;
  federation_url_overrides: Readonly<Record<string, string>>;
}

type Lookup = typeof dnsLookup;

export class OutboundGuard {
  private readonly named: ReadonlySet<string>;

  /**
   * @param namedOrigins - origins (scheme, host and port) the operator vouched for
   * @param resolve - the DNS resolver; injectable for tests
   */
  constructor(
    namedOrigins: Iterable<string>,
    private readonly resolve: Lookup = dnsLookup,
  ) {
    this.named = new Set(canonicalOrigins(namedOrigins));
  }

  /**
   * Exactly the origins the operator named: every override URL's origin, and the origins of every
   * server name it named (full-access servers other than `*`, override keys). A named host is not
   * trusted on any other port or scheme: otherwise naming `127.0.0.1:8008` would let any
   * homeserver's .well-known point the agent at every port of 127.0.0.1.
   */
  static fromConfig(config: GuardConfig, resolve?: Lookup): OutboundGuard {
    const overrides = [config.cs_api_url_overrides, config.federation_url_overrides];
    const servers = [
      ...config.full_access_homeservers.filter((s) => s !== '*'),
      ...overrides.flatMap((o) => Object.keys(o)),
    ];
    const origins = [
      ...servers.flatMap(originsOfServerName),
      ...overrides.flatMap((o) => Object.values(o).map((url) => new URL(url).origin)),
    ];
    return new OutboundGuard(origins, resolve);
  }

  /** Whether the operator named this origin (`URL.origin` form), so any address it has may be used. */
  isNamed(origin: string): boolean {
    return this.named.has(origin);
  }

  /**
   * Throws OutboundRefusedError when a URL of an unnamed origin has an IP literal host that may not
   * be contacted (literals never reach the DNS lookup below).
   */
  checkLiteral(url: URL): void {
    if (this.isNamed(url.origin)) return;
    const bare = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (isIP(bare) !== 0 && !isPublicAddress(bare)) throw new OutboundRefusedError(bare);
  }

  /**
   * Resolves when requests to `url` would be let through, rejects with OutboundRefusedError (or the
   * DNS error) otherwise: so an address learnt from a .well-known document is refused when it is
   * learnt, not only when it is first used.
   */
  async admits(url: URL): Promise<void> {
    this.checkLiteral(url);
    if (this.isNamed(url.origin) || isIP(url.hostname.replace(/^\[(.*)\]$/, '$1')) !== 0) return;
    await new Promise<void>((resolve, reject) =>
      this.lookup(url.hostname, { all: true }, (err) => (err ? reject(err) : resolve())),
    );
  }

  /**
   * The `net.connect` lookup for unnamed origins: resolves, and refuses the whole answer if any
   * address is not public (a mixed answer is how rebinding attacks are staged).
   */
  readonly lookup: LookupFunction = (hostname, options, callback) => this.lookupWith(true, hostname, options, callback);

  /** The lookup for named origins: the same resolver, any address. */
  readonly namedLookup: LookupFunction = (hostname, options, callback) =>
    this.lookupWith(false, hostname, options, callback);

  private lookupWith(publicOnly: boolean, ...[hostname, options, callback]: Parameters<LookupFunction>): void {
    this.resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses as unknown as LookupAddress[];
      if (publicOnly && list.some((a) => !isPublicAddress(a.address))) {
        return callback(new OutboundRefusedError(hostname), '', 0);
      }
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
      const first = list[0];
      if (!first) return callback(Object.assign(new Error('no addresses'), { code: 'ENOTFOUND' }), '', 0);
      return callback(null, first.address, first.family);
    });
  }
}
