/**
 * Which replica drives which partition: a lease per partition in Redis (an expiring key holding
 * `<replica>|<fencing token>`), renewed by its owner while it lives, and a member list of live
 * replicas (a sorted set scored by when each membership runs out). Every tick a replica renews its
 * membership and its leases in one script, reads who holds every partition, and then takes the
 * free partitions it is the preferred owner of (rendezvous hashing over the live members) and
 * hands over those it is not. All times that decide ownership are Redis' own (TIME in the scripts)
 * except one: a replica trusts a lease only until its renewal was sent plus the lease time minus a
 * safety margin, by its own monotonic clock, so a paused or cut-off replica stops acting before
 * Redis lets anyone else take over. Redis' atomic scripts and expiring keys do all the agreeing.
 */
import type { Logger } from 'pino';

import { type Keys, preferredOwner } from './partitions.js';
import { type Redis, Script } from './redis.js';

/**
 * Renews this replica's membership and the leases it holds, drops members whose time ran out, and
 * reports the members and every lease's holder. KEYS: members, then every partition's lease.
 * ARGV: replica id, lease ms, then the value this replica holds per partition ('' for none).
 */
const TICK = new Script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holders = {}
for i = 2, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if value and value == ARGV[i + 1] then redis.call('PEXPIRE', KEYS[i], ttl) end
  holders[i - 1] = value or ''
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), holders}
`);

/**
 * Takes partitions nobody holds, each with a fencing token larger than any before. KEYS: pairs of
 * lease and fence keys. ARGV: replica id, lease ms. Returns the value taken per pair ('' if held).
 */
const ACQUIRE = new Script(`
local taken = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    taken[#taken + 1] = ''
  else
    local value = ARGV[1] .. '|' .. redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], value, 'PX', ARGV[2])
    taken[#taken + 1] = value
  end
end
return taken
`);

/** Gives up leases still held with these values. KEYS: leases. ARGV: the values. */
const RELEASE = new Script(`
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return 1
`);

/** Leaves the member list. KEYS: members. ARGV: replica id. */
const LEAVE = new Script(`return redis.call('ZREM', KEYS[1], ARGV[1])`);

export interface LeaseEvents {
  /** A partition is now this replica's (load it, then take up its inbox). */
  acquired(partition: number, previousHolders: number): Promise<void>;
  /** A partition is no longer this replica's: forget its jobs at once. */
  lost(partitions: ReadonlySet<number>, why: 'fenced' | 'expired' | 'released'): void;
  /** Before a partition is handed over: write what is pending for it. */
  beforeRelease(partitions: ReadonlySet<number>): Promise<void>;
}

export interface LeaseMetrics {
  renewal?(ok: boolean): void;
  lost?(count: number, why: 'fenced' | 'expired' | 'released'): void;
  takeover?(count: number): void;
}

interface Held {
  value: string;
  /** Until when this replica may act on it, by its own monotonic clock. */
  trustedUntil: number;
}

export interface LeaseOptions {
  redis: Redis;
  keys: Keys;
  replicaId: string;
  partitions: number;
  leaseMs: number;
  log: Logger;
  events: LeaseEvents;
  metrics?: LeaseMetrics;
  /** Monotonic ms; injectable for tests. */
  now?: () => number;
}

export class Leases {
  private readonly held = new Map<number, Held>();
  /** Partitions being loaded after acquisition: held, not acted on until loaded. */
  private readonly loading = new Set<number>();
  private members: string[] = [];
  private lastTickOk = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private tickAgain = false;
  private stopped = false;
  private readonly now: () => number;

  constructor(private readonly opts: LeaseOptions) {
    this.now = opts.now ?? (() => performance.now());
  }

  /** How often the leases are renewed: a fifth of their time, so four renewals may fail in a row. */
  get intervalMs(): number {
    return Math.max(50, Math.floor(this.opts.leaseMs / 5));
  }

  /** Until a lease is trusted: its renewal's send time plus the lease time minus this margin. */
  private get marginMs(): number {
    return Math.max(50, Math.floor(this.opts.leaseMs / 10));
  }

  start(): void {
    this.schedule(0);
  }

  /** Runs a tick soon (another replica released partitions, or one joined). */
  poke(): void {
    if (this.stopped) return;
    if (this.ticking) this.tickAgain = true;
    else this.schedule(0);
  }

  mayAct(partition: number): boolean {
    const held = this.held.get(partition);
    return held !== undefined && !this.loading.has(partition) && held.trustedUntil > this.now();
  }

  leaseValue(partition: number): string | undefined {
    return this.held.get(partition)?.value;
  }

  fenced(partition: number): void {
    if (!this.held.delete(partition)) return;
    this.opts.log.warn({ partition }, 'lease lost: a fenced write was refused');
    this.dropped(new Set([partition]), 'fenced');
  }

  owned(): number[] {
    return [...this.held.keys()].filter((p) => !this.loading.has(p));
  }

  liveMembers(): readonly string[] {
    return this.members;
  }

  /** Renewed within the lease time: Redis is reachable and the member list is current. */
  healthy(): boolean {
    return this.now() - this.lastTickOk < this.opts.leaseMs;
  }

  /** Hands every partition over at once (SIGTERM) and leaves the member list. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.ticking?.catch(() => undefined);
    const all = new Set(this.held.keys());
    try {
      await this.release(all);
      await this.opts.redis.run(LEAVE, [this.opts.keys.members], [this.opts.replicaId]);
      await this.opts.redis.call(['PUBLISH', this.opts.keys.events, 'left']);
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'could not hand the partitions over; they expire instead');
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        const again = this.tickAgain;
        this.tickAgain = false;
        this.schedule(again ? 0 : this.intervalMs);
      });
    }, delayMs);
  }

  private async tick(): Promise<void> {
    const { redis, keys, replicaId, partitions, leaseMs } = this.opts;
    const sentAt = this.now();
    const leaseKeys = Array.from({ length: partitions }, (_, p) => keys.lease(p));
    const values = Array.from({ length: partitions }, (_, p) => this.held.get(p)?.value ?? '');
    let reply: [string[], string[]];
    try {
      reply = await redis.run<[string[], string[]]>(TICK, [keys.members, ...leaseKeys], [replicaId, leaseMs, ...values]);
      this.opts.metrics?.renewal?.(true);
    } catch (err) {
      this.opts.metrics?.renewal?.(false);
      this.opts.log.debug({ err: (err as Error).message }, 'lease renewal failed');
      this.expireUntrusted();
      return;
    }
    this.lastTickOk = sentAt;
    const [members, holders] = reply;
    this.members = members;
    const lost = new Set<number>();
    for (const [p, held] of this.held) {
      if (holders[p] === held.value) held.trustedUntil = sentAt + leaseMs - this.marginMs;
      else lost.add(p);
    }
    for (const p of lost) this.held.delete(p);
    if (lost.size > 0) this.dropped(lost, 'expired');

    const mine = (p: number) => preferredOwner(p, members) === replicaId;
    const release = new Set([...this.held.keys()].filter((p) => !mine(p) && !this.loading.has(p)));
    if (release.size > 0) await this.release(release).catch((err: unknown) => this.opts.log.debug({ err }, 'release failed'));
    const wanted = Array.from({ length: partitions }, (_, p) => p).filter((p) => mine(p) && holders[p] === '' && !this.held.has(p));
    if (wanted.length > 0) await this.acquire(wanted, sentAt).catch((err: unknown) => this.opts.log.debug({ err }, 'acquire failed'));
  }

  /** Without a renewal, a lease is trusted only until its last renewal's time runs out. */
  private expireUntrusted(): void {
    const now = this.now();
    const expired = new Set([...this.held].filter(([, held]) => held.trustedUntil <= now).map(([p]) => p));
    for (const p of expired) this.held.delete(p);
    if (expired.size > 0) this.dropped(expired, 'expired');
  }

  private async acquire(partitions: number[], sentAt: number): Promise<void> {
    const { redis, keys, replicaId, leaseMs } = this.opts;
    const pairs = partitions.flatMap((p) => [keys.lease(p), keys.fence(p)]);
    const taken = await redis.run<string[]>(ACQUIRE, pairs, [replicaId, leaseMs]);
    const got: Array<[number, string]> = [];
    partitions.forEach((p, i) => {
      const value = taken[i];
      if (value) got.push([p, value]);
    });
    let takeovers = 0;
    for (const [p, value] of got) {
      this.held.set(p, { value, trustedUntil: sentAt + leaseMs - this.marginMs });
      // The fencing token counts every acquisition of the partition: above 1, someone held it.
      const previous = Number(value.slice(value.lastIndexOf('|') + 1)) - 1;
      if (previous > 0) takeovers++;
      // Loaded in the background: renewals must go on meanwhile, however large the partition.
      this.loading.add(p);
      this.opts.events
        .acquired(p, previous)
        .catch(async (err: unknown) => {
          // Not loaded: give it back rather than drive it half-known.
          this.opts.log.warn({ partition: p, err: (err as Error).message }, 'could not load a partition; releasing it');
          if (this.held.get(p)?.value !== value) return;
          this.held.delete(p);
          this.dropped(new Set([p]), 'released');
          await redis.run(RELEASE, [keys.lease(p)], [value]).catch(() => undefined);
        })
        .finally(() => this.loading.delete(p));
    }
    if (takeovers > 0) this.opts.metrics?.takeover?.(takeovers);
    if (got.length > 0) this.opts.log.info({ partitions: got.length, owned: this.held.size }, 'partitions acquired');
  }

  private async release(partitions: ReadonlySet<number>): Promise<void> {
    if (partitions.size === 0) return;
    await this.opts.events.beforeRelease(partitions).catch(() => undefined);
    const values = [...partitions].map((p) => this.held.get(p)?.value ?? '');
    for (const p of partitions) this.held.delete(p);
    this.dropped(partitions, 'released');
    const { redis, keys } = this.opts;
    await redis.run(RELEASE, [...partitions].map((p) => keys.lease(p)), values);
    await redis.call(['PUBLISH', keys.events, 'released']);
    this.opts.log.info({ partitions: partitions.size, owned: this.held.size }, 'partitions handed over');
  }

  private dropped(partitions: ReadonlySet<number>, why: 'fenced' | 'expired' | 'released'): void {
    this.opts.metrics?.lost?.(partitions.size, why);
    this.opts.events.lost(partitions, why);
  }
}
