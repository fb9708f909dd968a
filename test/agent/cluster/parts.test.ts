// The cluster's parts on their own: the partition assignment, URL handling, and the Redis store's
// fencing and restore rules against a real redis-server.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { takeOverLkJwtJobs } from '../../../src/agent/cluster/migration.js';
import { Keys, LK_JWT_JOBS_KEY, partitionOf, preferredOwner } from '../../../src/agent/cluster/partitions.js';
import { Redis, redisClientOptions } from '../../../src/agent/cluster/redis.js';
import { RedisJobStore } from '../../../src/agent/cluster/redis-store.js';
import type { Delegation } from '../../../src/agent/contracts.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ensureRedis, type RedisServer, startRedis } from '../../support/redis.js';

describe('partition assignment', () => {
  const members = (n: number) => Array.from({ length: n }, (_, i) => `replica-${i}`);
  const assignment = (ms: string[]) => Array.from({ length: 256 }, (_, p) => preferredOwner(p, ms));

  it('spreads the partitions evenly', () => {
    for (const n of [2, 3, 5]) {
      const counts = new Map<string, number>();
      for (const owner of assignment(members(n))) counts.set(owner!, (counts.get(owner!) ?? 0) + 1);
      expect(counts.size).toBe(n);
      for (const count of counts.values()) expect(Math.abs(count - 256 / n)).toBeLessThan(256 / n / 3);
    }
  });

  it('moves only the joiner’s share when a replica joins, and only the leaver’s when one leaves', () => {
    const before = assignment(members(3));
    const after = assignment(members(4));
    before.forEach((owner, p) => expect(after[p] === owner || after[p] === 'replica-3').toBe(true));
    const without1 = assignment(['replica-0', 'replica-2']);
    before.forEach((owner, p) => expect(owner === 'replica-1' || without1[p] === owner).toBe(true));
  });

  it('keeps all of a room in one partition, the same in every process', () => {
    expect(partitionOf('O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc', 256)).toBe(partitionOf('O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc', 256));
    const spread = new Set(Array.from({ length: 1000 }, (_, i) => partitionOf(`room-${i}`, 64)));
    expect(spread.size).toBe(64);
  });
});

describe('Redis URLs', () => {
  it('takes the forms go-redis takes', () => {
    expect(redisClientOptions('redis://:pw@10.0.0.1:6380/2')).toMatchObject({ url: 'redis://:pw@10.0.0.1:6380/2', password: 'pw' });
    expect(redisClientOptions('rediss://user:pw@redis.example')).toMatchObject({ username: 'user', password: 'pw' });
    expect(redisClientOptions('unix://:s%40cret@/run/redis/redis.sock?db=3')).toMatchObject({
      socket: { path: '/run/redis/redis.sock' },
      password: 's@cret',
      database: 3,
    });
    // A password given apart (LIVEKIT_REDIS_PASSWORD) wins.
    expect(redisClientOptions('redis://:old@h:1', 'new')).toMatchObject({ password: 'new' });
    expect(() => redisClientOptions('http://h:1')).toThrow(/scheme/);
  });
});

const prereq = await ensureRedis();

describe.skipIf(!!prereq.skip)(`the Redis job store${prereq.skip ? ` (skipped: ${prereq.skip})` : ''}`, () => {
  let dir: string;
  let server: RedisServer;
  let redis: Redis;
  const keys = new Keys('t:');
  const leases = new Map<number, string>();
  const fenced: number[] = [];
  let store: RedisJobStore;
  const delegation = (over: Partial<Delegation> = {}): Delegation => ({
    livekitRoom: 'room-a',
    identity: 'id-a',
    delayId: 'syd_a',
    delayTimeoutMs: 60_000,
    serverName: 'hs.example',
    userId: '@a:hs.example',
    source: 'delegate_delayed_leave',
    ...over,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lastwill-redis-store-'));
    server = await startRedis(dir);
    redis = new Redis(redisClientOptions(server.url), silentLogger());
    await redis.connect();
    store = new RedisJobStore(redis, keys, () => 0, {
      leaseValue: (p) => leases.get(p),
      fenced: (p) => void fenced.push(p),
    });
  }, 60_000);
  afterAll(async () => {
    await redis?.close();
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('announces a delegation in the inbox and leaves it out of a restore until the owner took it up', async () => {
    const id = await store.insert(delegation(), 1_000_060_000, 1_000_000_000);
    const entries = await redis.call<Record<string, Array<[string, string[]]>>>(['XREAD', 'STREAMS', keys.inbox(0), '0']);
    const [entry, fields] = entries[keys.inbox(0)]!.at(-1)!;
    const item = RedisJobStore.itemOf(entry, fields);
    expect(item).toMatchObject({ kind: 'delegation', row: { id, room: 'room-a', delay_id: 'syd_a', state: 'waiting', deadline_ms: 1_000_060_000 } });
    expect((await store.loadPartition(0)).rows).toEqual([]);

    // Taken up and written by the owner: now a restore finds it, and reads the inbox after it.
    leases.set(0, 'me|1');
    await redis.call(['SET', keys.lease(0), 'me|1']);
    store.tookUp(0, entry);
    await store.writeProgress([{ id, room: 'room-a', progress: { state: 'connected', sid: 'S1', sinceMs: 5, endedSid: undefined, deadlineMs: 7, restarted: true, changedMs: 9 } }]);
    const { rows, cursor } = await store.loadPartition(0);
    expect(cursor).toBe(entry);
    expect(rows).toMatchObject([{ id, state: 'connected', sid: 'S1', deadline_ms: 7, restarted: 1 }]);
    expect(await store.target({ id, room: 'room-a' })).toEqual({ delayId: 'syd_a' });
  });

  it('refuses the write of a replica whose lease is gone, and says so', async () => {
    const id = await store.insert(delegation({ identity: 'id-b', delayId: 'syd_b' }), 2, 1);
    await redis.call(['SET', keys.lease(0), 'someone-else|2']);
    await store.writeProgress([{ id, room: 'room-a', progress: { state: 'sent', sid: undefined, sinceMs: undefined, endedSid: undefined, deadlineMs: undefined, restarted: false, changedMs: 3 } }]);
    expect(fenced).toEqual([0]);
    const progress = await redis.call<string>(['HGET', keys.progress(0), String(id)]);
    expect(JSON.parse(progress)).toMatchObject({ state: 'waiting' });
  });

  it("takes lk-jwt-service's jobs once, skips what it cannot read, and leaves that in place", async () => {
    const good = JSON.stringify({
      Params: { DelayId: 'syd_lk', DelayTimeout: 3_600_000_000_000, ServerName: 'hs.example', LiveKitRoom: 'room-lk', LiveKitIdentity: 'id-lk' },
      RestartedAt: '2026-12-06T13:13:36.96079141Z',
    });
    await redis.call(['HSET', LK_JWT_JOBS_KEY, '["room-lk","id-lk"]', good, '["room-x","id-x"]', '{"Params":{}}']);
    const take = () => takeOverLkJwtJobs({ redis, store, log: silentLogger(), maxWaitingMs: 3_600_000 });
    const [first, second] = await Promise.all([take(), take()]);
    expect(first + second).toBe(1);
    expect(await redis.call(['HKEYS', LK_JWT_JOBS_KEY])).toEqual(['["room-x","id-x"]']);
    const entries = await redis.call<Record<string, Array<[string, string[]]>>>(['XREVRANGE', keys.inbox(0), '+', '-', 'COUNT', '1']);
    const [entry, fields] = (entries as unknown as Array<[string, string[]]>)[0]!;
    expect(RedisJobStore.itemOf(entry, fields)).toMatchObject({
      kind: 'delegation',
      row: {
        room: 'room-lk',
        identity: 'id-lk',
        delay_id: 'syd_lk',
        delay_ms: 3_600_000,
        source: 'lk-jwt-service',
        created_ms: Date.parse('2026-12-06T13:13:36.960Z'),
        deadline_ms: Date.parse('2026-12-06T13:13:36.960Z') + 3_600_000,
      },
    });
  });
});
