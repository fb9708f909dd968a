/**
 * The owner's side of the partition inboxes: one blocking XREAD over the streams of every
 * partition this replica owns, from where each one's restore left off, handing every entry to the
 * engine in order. Partitions come and go as leases are won and lost; a read that returns for a
 * partition lost meanwhile is dropped unread.
 */
import type { Logger } from 'pino';

import type { Keys } from './partitions.js';
import type { Redis } from './redis.js';
import { type InboxItem, RedisJobStore } from './redis-store.js';

/** How long one read blocks: how soon a newly won partition is read, at the latest. */
const BLOCK_MS = 200;
/** Entries per partition per read; a backlog is taken up in slices, never as one huge turn. */
const COUNT = 1000;

export interface InboxOptions {
  redis: Redis;
  keys: Keys;
  log: Logger;
  /** Takes up one entry (synchronously: its effects are in memory when this returns). */
  take(partition: number, item: InboxItem): void;
  /** The newest entry of a partition whose effects are in memory now. */
  tookUp(partition: number, entry: string): void;
}

export class Inbox {
  /** Owned partitions and the last entry read from each. */
  private readonly positions = new Map<number, string>();
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: InboxOptions) {}

  add(partition: number, from: string): void {
    this.positions.set(partition, from);
  }

  remove(partitions: ReadonlySet<number>): void {
    for (const p of partitions) this.positions.delete(p);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }

  private async run(): Promise<void> {
    while (this.running) {
      const partitions = [...this.positions.keys()];
      if (partitions.length === 0) {
        await sleep(BLOCK_MS);
        continue;
      }
      const args = [
        'XREAD', 'COUNT', String(COUNT), 'BLOCK', String(BLOCK_MS), 'STREAMS',
        ...partitions.map((p) => this.opts.keys.inbox(p)),
        ...partitions.map((p) => this.positions.get(p)!),
      ];
      let reply: Record<string, Array<[string, string[]]>> | null;
      try {
        reply = await this.opts.redis.blockingCall(args);
      } catch (err) {
        this.opts.log.debug({ err: (err as Error).message }, 'inbox read failed');
        await sleep(BLOCK_MS);
        continue;
      }
      if (!reply || !this.running) continue;
      for (const [key, entries] of Object.entries(reply)) this.takeUp(key, entries);
    }
  }

  private takeUp(key: string, entries: Array<[string, string[]]>): void {
    const partition = Number(key.slice(key.lastIndexOf(':') + 1));
    let last: string | undefined;
    for (const [id, fields] of entries) {
      // Lost while the read was under way: its new owner reads these.
      if (!this.positions.has(partition)) return;
      last = id;
      this.positions.set(partition, id);
      const item = RedisJobStore.itemOf(id, fields);
      if (!item) {
        this.opts.log.warn({ partition }, 'inbox entry not understood; skipped');
        continue;
      }
      try {
        this.opts.take(partition, item);
      } catch (err) {
        this.opts.log.error({ err }, 'job engine failed to take up an inbox entry');
      }
    }
    if (last !== undefined) this.opts.tookUp(partition, last);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
