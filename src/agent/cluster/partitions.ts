/**
 * How cluster mode shares the jobs out: every LiveKit room belongs to one of a fixed number of
 * partitions (all of a room's jobs together, so a room's presence lookups stay one request), and
 * every partition has one preferred replica among the live ones, by rendezvous hashing: each
 * replica can tell the whole assignment from the member list alone, the partitions spread evenly,
 * and a replica joining or leaving moves only its own share.
 */

/** 32-bit FNV-1a over the UTF-16 code units: cheap, and the same in every replica and version. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // A final avalanche, so names that differ in one trailing character land far apart.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export function partitionOf(livekitRoom: string, partitions: number): number {
  return hash32(livekitRoom) % partitions;
}

/** The live replica that should own `partition` (highest random weight). */
export function preferredOwner(partition: number, members: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestWeight = -1;
  for (const member of members) {
    const weight = hash32(`${member}\u0000${partition}`);
    if (weight > bestWeight || (weight === bestWeight && best !== undefined && member < best)) {
      best = member;
      bestWeight = weight;
    }
  }
  return best;
}

/** Key names, all under one prefix so several clusters (or tests) can share a Redis. */
export class Keys {
  constructor(readonly prefix: string) {}
  /** Partition count and format version, fixed by the first replica. */
  get meta(): string {
    return `${this.prefix}meta`;
  }
  /** Job ids: one counter, so ids only grow (a replayed inbox entry is recognised by its id). */
  get jobIds(): string {
    return `${this.prefix}job-ids`;
  }
  /** Live replicas: sorted set of replica id → when its membership runs out (Redis time, ms). */
  get members(): string {
    return `${this.prefix}members`;
  }
  /** Pub/sub channel: a replica joined, or released partitions (others take them at once). */
  get events(): string {
    return `${this.prefix}events`;
  }
  /** Held while lk-jwt-service's jobs are being taken over. */
  get migration(): string {
    return `${this.prefix}migration`;
  }
  /** `<replica>|<fencing token>`, expiring; the owner renews it. */
  lease(p: number): string {
    return `${this.prefix}lease:${p}`;
  }
  /** The fencing token counter: every acquisition gets a larger one. */
  fence(p: number): string {
    return `${this.prefix}fence:${p}`;
  }
  /** Job id → the delegation (JSON, never changes). */
  jobs(p: number): string {
    return `${this.prefix}jobs:${p}`;
  }
  /** Job id → its progress (JSON), written by the owner only. */
  progress(p: number): string {
    return `${this.prefix}progress:${p}`;
  }
  /** Stream of what the owner must take up: delegations and webhooks, from every replica. */
  inbox(p: number): string {
    return `${this.prefix}inbox:${p}`;
  }
  /** The last inbox entry whose effects are in `progress`. */
  cursor(p: number): string {
    return `${this.prefix}cursor:${p}`;
  }
}

/** lk-jwt-service's job hash (store.go), taken over on first start. */
export const LK_JWT_JOBS_KEY = 'lk-jwt:jobs';
