/**
 * Taking over element-hq/lk-jwt-service's jobs, so an operator can swap it for lastwill during live
 * calls: its store is one Redis hash, `lk-jwt:jobs`, field `["<room>","<identity>"]` (JSON), value
 * `{"Params":{"DelayId","DelayTimeout" (ns),"ServerName","LiveKitRoom","LiveKitIdentity"},
 * "RestartedAt" (RFC 3339)}` (its store.go; test/fixtures holds entries it really wrote). Every
 * entry becomes a delegation made at its RestartedAt (lk-jwt-service's own guess of when the event
 * was last pushed back) and leaves the hash in the same atomic step, so a job is never driven by
 * both, nor taken twice by two replicas starting together. A job whose delay ran out meanwhile
 * lapses without a call, as lk-jwt-service drops it on its own restore.
 */
import { z } from 'zod';
import type { Logger } from 'pino';

import type { Delegation } from '../contracts.js';
import { LK_JWT_JOBS_KEY } from './partitions.js';
import type { Redis } from './redis.js';
import type { RedisJobStore } from './redis-store.js';

const storedJob = z.object({
  Params: z.object({
    DelayId: z.string().min(1),
    DelayTimeout: z.number().int().positive(),
    ServerName: z.string().min(1),
    LiveKitRoom: z.string().min(1),
    LiveKitIdentity: z.string().min(1),
  }),
  RestartedAt: z.string().refine((t) => !Number.isNaN(Date.parse(t)), 'not a time'),
});

export interface MigrationOptions {
  redis: Redis;
  store: RedisJobStore;
  log: Logger;
  /** Never-joined jobs wait at most this long (the engine's maxWaitingMs). */
  maxWaitingMs: number;
}

/** Takes every job lk-jwt-service left in Redis; returns how many were taken. */
export async function takeOverLkJwtJobs(opts: MigrationOptions): Promise<number> {
  const entries = await opts.redis.call<Record<string, string>>(['HGETALL', LK_JWT_JOBS_KEY]);
  let taken = 0;
  let unreadable = 0;
  for (const [field, value] of Object.entries(entries)) {
    let parsed: z.infer<typeof storedJob>;
    try {
      parsed = storedJob.parse(JSON.parse(value));
    } catch {
      unreadable++;
      continue;
    }
    const { Params: job } = parsed;
    const createdMs = Date.parse(parsed.RestartedAt);
    const delayMs = Math.round(job.DelayTimeout / 1e6);
    const delegation: Delegation = {
      livekitRoom: job.LiveKitRoom,
      identity: job.LiveKitIdentity,
      delayId: job.DelayId,
      delayTimeoutMs: delayMs,
      serverName: job.ServerName,
      // lk-jwt-service does not keep the user id; nothing the job does depends on it.
      userId: '',
      source: 'lk-jwt-service',
    };
    const wait = createdMs + Math.min(opts.maxWaitingMs, delayMs);
    const id = await opts.store.adoptForeign(delegation, wait, createdMs, { key: LK_JWT_JOBS_KEY, field, value });
    if (id > 0) taken++;
  }
  if (taken > 0 || unreadable > 0) {
    opts.log.info({ taken, unreadable }, "took over lk-jwt-service's jobs from Redis");
  }
  return taken;
}
