/**
 * Cluster mode: one replica of many on one Redis. It accepts delegations and webhooks for every
 * room (they go to the room's partition inbox, durable before the reply), and drives the jobs of
 * the partitions it holds the lease of, with the same engine a single node uses. The parts:
 * redis.ts (the connection), partitions.ts (the assignment), leases.ts (ownership and fencing),
 * redis-store.ts (jobs, progress and inboxes), inbox.ts (taking inbox entries up), migration.ts
 * (lk-jwt-service's jobs).
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';

import type { Logger } from 'pino';

import { fail } from '../../lib/errors.js';
import type { Delegation, JobEngine, JobState, ParticipantSignal } from '../contracts.js';
import { Engine } from '../jobs/engine.js';
import type { EngineOptions, JobSnapshot, PacingCounts } from '../jobs/index.js';
import type { AgentMetrics } from '../metrics.js';
import { Inbox } from './inbox.js';
import { Leases } from './leases.js';
import { takeOverLkJwtJobs } from './migration.js';
import { Keys, LK_JWT_JOBS_KEY, partitionOf } from './partitions.js';
import { Redis, redisClientOptions } from './redis.js';
import { RedisJobStore } from './redis-store.js';

/** Bumped when the layout in Redis changes incompatibly. */
const FORMAT = '1';
/**
 * How often lk-jwt-service's hash is looked at after the start: a rollout that runs both for a
 * while leaves jobs there that lk-jwt-service took after lastwill started.
 */
const MIGRATION_CHECK_MS = 10_000;

export interface ClusterOptions {
  redisUrl: string;
  redisPassword?: string;
  keyPrefix: string;
  partitions: number;
  leaseMs: number;
  /** Unique per process; defaults to host, pid and a random part. */
  replicaId?: string;
  /** Everything the engine needs but its store and ownership, which cluster mode provides. */
  engine: Omit<EngineOptions, 'store' | 'ownership'>;
  log: Logger;
  metrics?: AgentMetrics;
}

export class ClusterNode implements JobEngine {
  readonly replicaId: string;
  readonly engine: Engine;
  private readonly redis: Redis;
  private readonly keys: Keys;
  private readonly store: RedisJobStore;
  private readonly leases: Leases;
  private readonly inbox: Inbox;
  private readonly log: Logger;
  private started = false;
  private stopping = false;
  private migrationTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ClusterOptions) {
    this.replicaId = opts.replicaId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.log = opts.log.child({ replica: this.replicaId });
    const metrics = opts.metrics;
    this.redis = new Redis(redisClientOptions(opts.redisUrl, opts.redisPassword), this.log, {
      call: (command, ms, ok) => {
        metrics?.redisDuration.observe({ command }, ms / 1000);
        if (!ok) metrics?.redisErrors.inc({ command });
      },
    });
    this.keys = new Keys(opts.keyPrefix);
    const partitionOfRoom = (room: string) => partitionOf(room, opts.partitions);
    this.leases = new Leases({
      redis: this.redis,
      keys: this.keys,
      replicaId: this.replicaId,
      partitions: opts.partitions,
      leaseMs: opts.leaseMs,
      log: this.log,
      events: {
        acquired: (p) => this.acquired(p),
        lost: (ps) => this.lost(ps),
        beforeRelease: () => this.engine.flush(),
      },
      metrics: {
        renewal: (ok) => metrics?.leaseRenewals.inc({ outcome: ok ? 'ok' : 'failed' }),
        lost: (count, reason) => metrics?.leasesLost.inc({ reason }, count),
        takeover: (count) => metrics?.takeovers.inc(count),
      },
    });
    this.store = new RedisJobStore(this.redis, this.keys, partitionOfRoom, this.leases);
    this.engine = new Engine({
      ...opts.engine,
      store: this.store,
      ownership: { partitionOf: partitionOfRoom, mayAct: (p) => this.leases.mayAct(p) },
    });
    this.inbox = new Inbox({
      redis: this.redis,
      keys: this.keys,
      log: this.log,
      take: (_p, item) => (item.kind === 'delegation' ? this.engine.accept(item.row) : this.engine.onParticipant(item.signal)),
      tookUp: (p, entry) => this.store.tookUp(p, entry),
    });
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await this.redis.connect();
    await this.checkLayout();
    await this.warnIfNotDurable();
    await this.migrate();
    await this.redis.subscribe(this.keys.events, () => this.leases.poke());
    await this.engine.start();
    this.inbox.start();
    this.leases.start();
    await this.redis.call(['PUBLISH', this.keys.events, 'joined']);
    this.migrationTimer = setInterval(() => {
      this.migrate().catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'lk-jwt-service job check failed'));
    }, MIGRATION_CHECK_MS);
    this.migrationTimer.unref();
    this.log.info({ partitions: this.opts.partitions, leaseMs: this.opts.leaseMs }, 'cluster replica started');
  }

  /** Durable in Redis before it resolves; the partition's owner takes it up from its inbox. */
  async delegate(d: Delegation): Promise<void> {
    if (this.stopping) throw fail.unavailable('The delegate agent is shutting down');
    await this.engine.record(d);
  }

  /** Takes a webhook over to its room's owner, durably. */
  forward(signal: ParticipantSignal): Promise<void> {
    return this.store.forward(signal);
  }

  onParticipant(signal: ParticipantSignal): void {
    this.forward(signal).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'webhook not forwarded'));
  }

  /** Hands every partition over (its progress written first), then lets go of Redis. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.migrationTimer);
    await this.inbox.stop();
    await this.leases.stop();
    await this.engine.stop();
    await this.redis.close();
  }

  counts(): Record<JobState, number> {
    return this.engine.counts();
  }

  /** Redis reachable and the leases renewed in time. */
  ready(): boolean {
    return this.started && !this.stopping && this.redis.ready && this.leases.healthy();
  }

  pacingCounts(): PacingCounts {
    return this.engine.pacingCounts();
  }

  ownedPartitions(): number {
    return this.leases.owned().length;
  }

  get(livekitRoom: string, identity: string): JobSnapshot | undefined {
    return this.engine.get(livekitRoom, identity);
  }

  private async acquired(p: number): Promise<void> {
    const value = this.leases.leaseValue(p);
    const { rows, cursor } = await this.store.loadPartition(p);
    // Lost again while loading: its new owner loads it.
    if (this.leases.leaseValue(p) !== value) return;
    this.engine.adopt(rows);
    this.inbox.add(p, cursor);
  }

  private lost(partitions: ReadonlySet<number>): void {
    this.inbox.remove(partitions);
    const evicted = this.engine.evict(partitions);
    if (evicted > 0) this.log.info({ partitions: partitions.size, jobs: evicted }, 'jobs of lost partitions dropped');
  }

  /** Every replica must cut the rooms into the same partitions. */
  private async checkLayout(): Promise<void> {
    const wanted = `${FORMAT}:${this.opts.partitions}`;
    await this.redis.call(['HSETNX', this.keys.meta, 'layout', wanted]);
    const layout = await this.redis.call<string>(['HGET', this.keys.meta, 'layout']);
    if (layout !== wanted) {
      throw new Error(`the cluster in Redis uses layout ${layout} (format:partitions); this replica is configured for ${wanted}`);
    }
  }

  /** Acknowledged delegations are only as durable as Redis' append-only file. */
  private async warnIfNotDurable(): Promise<void> {
    try {
      const reply = await this.redis.call<Record<string, string> | string[]>(['CONFIG', 'GET', 'appendonly']);
      const value = Array.isArray(reply) ? reply[1] : reply.appendonly;
      if (value === 'no') {
        this.log.warn('Redis runs without appendonly: a Redis restart loses the delegations of the last snapshot interval (set appendonly yes)');
      }
    } catch {
      // CONFIG is often disabled on managed Redis; its operator knows the persistence settings.
    }
  }

  private async migrate(): Promise<void> {
    if (Number(await this.redis.call(['HLEN', LK_JWT_JOBS_KEY])) === 0) return;
    const lock = await this.redis.call<string | null>(['SET', this.keys.migration, this.replicaId, 'NX', 'PX', '60000']);
    if (lock === null) return;
    try {
      await takeOverLkJwtJobs({ redis: this.redis, store: this.store, log: this.log, maxWaitingMs: this.opts.engine.settings.maxWaitingMs });
    } finally {
      await this.redis.call(['DEL', this.keys.migration]);
    }
  }
}
