/**
 * The job store of cluster mode, in Redis, one share per partition: the delegations (written once,
 * by whichever replica took the request), their progress (written only by the partition's owner,
 * each write fenced by the owner's lease), and the partition's inbox, a stream every replica
 * appends to (delegations and webhooks) and only the owner reads. A new owner rebuilds the
 * partition from the progress and the inbox after the last entry whose effects that progress holds
 * (the cursor, written in the same fenced script), so nothing a replica acknowledged is lost and
 * nothing is taken up twice.
 */
import type { Delegation, ParticipantSignal } from '../contracts.js';
import type { JobProgress, JobRef, JobRow, JobStore, JobTarget, ProgressChange } from '../jobs/store.js';
import type { Keys } from './partitions.js';
import { type Redis, Script } from './redis.js';

/**
 * Takes a delegation: a new job id, the delegation (with the inbox entry that announces it, so a
 * restore tells whether the owner had taken it up), its first progress, and the inbox entry
 * carrying both, in one atomic step. KEYS: job ids, jobs, progress, inbox. ARGV: the delegation's
 * JSON without its closing brace, the progress JSON. Taking over one of lk-jwt-service's jobs adds
 * KEYS[5] (its hash) and ARGV[3], ARGV[4] (the field and the value read): the job is taken only
 * if that entry is still there unchanged, and the entry goes in the same step (0 when it was not).
 */
const INSERT = new Script(`
if #KEYS == 5 then
  if redis.call('HGET', KEYS[5], ARGV[3]) ~= ARGV[4] then return 0 end
  redis.call('HDEL', KEYS[5], ARGV[3])
end
local id = redis.call('INCR', KEYS[1])
local job = ARGV[1] .. ',"id":' .. id .. '}'
local entry = redis.call('XADD', KEYS[4], '*', 'k', 'd', 'job', job, 'progress', ARGV[2])
redis.call('HSET', KEYS[2], id, string.sub(job, 1, -2) .. ',"seq":"' .. entry .. '"}')
redis.call('HSET', KEYS[3], id, ARGV[2])
return id
`);

/**
 * The owner's write: only while its lease value is still the one it holds (fencing: a replica
 * that lost the partition, paused or cut off, can no longer write to it). KEYS: lease, progress,
 * cursor, inbox, jobs. ARGV: lease value, cursor ('' for none), number of progress entries, then
 * id/JSON pairs, then ids to delete. The inbox is trimmed up to the cursor: the entries before it
 * are in the progress now.
 */
const WRITE = new Script(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[5], ARGV[i])
  i = i + 1
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('XTRIM', KEYS[4], 'MINID', ARGV[2])
end
return 1
`);

/** The delegation as stored: what never changes after it was taken. */
interface StoredJob {
  id: number;
  room: string;
  identity: string;
  delay_id: string;
  delay_ms: number;
  server_name: string;
  user_id: string;
  scoped_token?: string;
  source: JobRow['source'];
  created_ms: number;
  /** The inbox entry that announced it. */
  seq?: string;
}

interface StoredProgress {
  state: JobRow['state'];
  sid?: string;
  since_ms?: number;
  ended_sid?: string;
  deadline_ms: number;
  restarted?: 1;
  changed_ms: number;
}

/** What the owner finds in an inbox entry. */
export type InboxItem = { kind: 'delegation'; row: JobRow } | { kind: 'webhook'; signal: ParticipantSignal };

/** Where the store learns whether (and with which lease value) this replica owns a partition. */
export interface LeaseHolder {
  leaseValue(partition: number): string | undefined;
  /** A fenced write was refused: the partition belongs to someone else now. */
  fenced(partition: number): void;
}

/** Inbox entry ids compare as `<ms>-<seq>` pairs. */
export function entryAfter(a: string, b: string): boolean {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am !== bm ? am > bm : as > bs;
}

function rowOf(job: StoredJob, progress: StoredProgress): JobRow {
  return {
    id: job.id,
    room: job.room,
    identity: job.identity,
    delay_id: job.delay_id,
    delay_ms: job.delay_ms,
    server_name: job.server_name,
    user_id: job.user_id,
    scoped_token: job.scoped_token ?? null,
    source: job.source,
    state: progress.state,
    sid: progress.sid ?? null,
    since_ms: progress.since_ms ?? null,
    ended_sid: progress.ended_sid ?? null,
    deadline_ms: progress.deadline_ms,
    created_ms: job.created_ms,
    changed_ms: progress.changed_ms,
    restarted: progress.restarted ?? 0,
  };
}

function progressJson(p: JobProgress): string {
  const stored: StoredProgress = {
    state: p.state,
    ...(p.sid !== undefined ? { sid: p.sid } : {}),
    ...(p.sinceMs !== undefined ? { since_ms: p.sinceMs } : {}),
    ...(p.endedSid !== undefined ? { ended_sid: p.endedSid } : {}),
    // Absent once the job finished: a finished job is never restored to work, so none is kept.
    deadline_ms: p.deadlineMs ?? 0,
    ...(p.restarted ? { restarted: 1 as const } : {}),
    changed_ms: p.changedMs,
  };
  return JSON.stringify(stored);
}

export class RedisJobStore implements JobStore {
  /** Per partition: the newest inbox entry taken up, not yet written with the progress. */
  private readonly cursors = new Map<number, string>();
  private flushScheduled = false;
  private writes: Promise<void> = Promise.resolve();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly partitionOf: (room: string) => number,
    private readonly leases: LeaseHolder,
  ) {}

  /** Durable (Redis replied, so it is in its AOF: see docs/agent.md, cluster mode, on durability) before it resolves. */
  insert(d: Delegation, waitDeadlineMs: number, nowMs: number): Promise<number> {
    return this.insertWith(d, waitDeadlineMs, nowMs);
  }

  /**
   * Takes over one of lk-jwt-service's stored jobs (`lk-jwt:jobs` field and value as read): as a
   * delegation made at `createdMs`, and its entry goes in the same step. Resolves 0 when the
   * entry changed or went meanwhile (another replica took it, or lk-jwt-service rewrote it).
   */
  adoptForeign(d: Delegation, waitDeadlineMs: number, createdMs: number, foreign: { key: string; field: string; value: string }): Promise<number> {
    return this.insertWith(d, waitDeadlineMs, createdMs, foreign);
  }

  private async insertWith(
    d: Delegation,
    waitDeadlineMs: number,
    nowMs: number,
    foreign?: { key: string; field: string; value: string },
  ): Promise<number> {
    const p = this.partitionOf(d.livekitRoom);
    const job: Omit<StoredJob, 'id' | 'seq'> = {
      room: d.livekitRoom,
      identity: d.identity,
      delay_id: d.delayId,
      delay_ms: d.delayTimeoutMs,
      server_name: d.serverName,
      user_id: d.userId,
      ...(d.scopedToken !== undefined ? { scoped_token: d.scopedToken } : {}),
      source: d.source,
      created_ms: nowMs,
    };
    const progress: StoredProgress = { state: 'waiting', deadline_ms: waitDeadlineMs, changed_ms: nowMs };
    const keys = [this.keys.jobIds, this.keys.jobs(p), this.keys.progress(p), this.keys.inbox(p)];
    const args = [JSON.stringify(job).slice(0, -1), JSON.stringify(progress)];
    if (foreign) {
      keys.push(foreign.key);
      args.push(foreign.field, foreign.value);
    }
    return Number(await this.redis.run<number>(INSERT, keys, args));
  }

  /** Hands a verified webhook to its room's owner, wherever that runs. */
  async forward(signal: ParticipantSignal): Promise<void> {
    const p = this.partitionOf(signal.livekitRoom);
    await this.redis.call(['XADD', this.keys.inbox(p), '*', 'k', 'w', 'signal', JSON.stringify(signal)]);
  }

  /**
   * Notes the newest inbox entry of a partition whose effects are now in memory; it is written
   * with the progress of the same turn (or on its own if that turn changed nothing).
   */
  tookUp(partition: number, entry: string): void {
    this.cursors.set(partition, entry);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      void this.writeProgress([]);
    });
  }

  writeProgress(changes: readonly ProgressChange[]): Promise<void> {
    const batches = new Map<number, Batch>();
    const batchOf = (p: number) => {
      let batch = batches.get(p);
      if (!batch) batches.set(p, (batch = { p, cursor: this.cursors.get(p) ?? '', progress: [], deletes: [] }));
      return batch;
    };
    for (const { id, room, progress } of changes) batchOf(this.partitionOf(room)).progress.push(String(id), progressJson(progress));
    for (const p of this.cursors.keys()) batchOf(p);
    this.cursors.clear();
    return this.write([...batches.values()]);
  }

  remove(jobs: readonly JobRef[]): Promise<void> {
    const batches = new Map<number, Batch>();
    for (const { id, room } of jobs) {
      const p = this.partitionOf(room);
      let batch = batches.get(p);
      if (!batch) batches.set(p, (batch = { p, cursor: '', progress: [], deletes: [] }));
      batch.deletes.push(String(id));
    }
    return this.write([...batches.values()]);
  }

  async target({ id, room }: JobRef): Promise<JobTarget> {
    const json = await this.redis.call<string | null>(['HGET', this.keys.jobs(this.partitionOf(room)), String(id)]);
    if (json === null) throw new Error(`job ${id} is not in the store`);
    const job = JSON.parse(json) as StoredJob;
    return job.scoped_token === undefined ? { delayId: job.delay_id } : { delayId: job.delay_id, scopedToken: job.scoped_token };
  }

  /** Diagnostics would cost a round trip here; the snapshot goes without them. */
  details(): undefined {
    return undefined;
  }

  /** Cluster mode restores partition by partition (loadPartition), as it takes them over. */
  loadAll(): Promise<JobRow[]> {
    return Promise.resolve([]);
  }

  /**
   * A partition's jobs as its last owner left them, and the inbox position to read on from: jobs
   * announced by a later inbox entry are left to that entry, which the new owner reads next.
   */
  async loadPartition(p: number): Promise<{ rows: JobRow[]; cursor: string }> {
    const [jobs, progress, cursor] = await Promise.all([
      this.redis.call<Record<string, string>>(['HGETALL', this.keys.jobs(p)]),
      this.redis.call<Record<string, string>>(['HGETALL', this.keys.progress(p)]),
      this.redis.call<string | null>(['GET', this.keys.cursor(p)]),
    ]);
    const from = cursor ?? '0-0';
    const rows: JobRow[] = [];
    for (const [id, json] of Object.entries(jobs)) {
      const job = JSON.parse(json) as StoredJob;
      const state = progress[id];
      if (state === undefined) continue;
      if (job.seq !== undefined && entryAfter(job.seq, from)) continue;
      rows.push(rowOf(job, JSON.parse(state) as StoredProgress));
    }
    rows.sort((a, b) => a.id - b.id);
    return { rows, cursor: from };
  }

  /** Reads an inbox entry's fields (a flat name/value list) into what the owner takes up. */
  static itemOf(entryId: string, fields: readonly string[]): InboxItem | undefined {
    const get = (name: string) => {
      const i = fields.indexOf(name);
      return i >= 0 && i % 2 === 0 ? fields[i + 1] : undefined;
    };
    const kind = get('k');
    if (kind === 'd') {
      const job = JSON.parse(get('job') ?? 'null') as StoredJob | null;
      const progress = JSON.parse(get('progress') ?? 'null') as StoredProgress | null;
      if (!job || !progress) return undefined;
      return { kind: 'delegation', row: rowOf({ ...job, seq: entryId }, progress) };
    }
    if (kind === 'w') {
      const signal = JSON.parse(get('signal') ?? 'null') as ParticipantSignal | null;
      return signal ? { kind: 'webhook', signal } : undefined;
    }
    return undefined;
  }

  /** Waits for the writes under way; the connection itself belongs to the cluster node. */
  async close(): Promise<void> {
    await this.writes.catch(() => undefined);
  }

  /**
   * One write at a time, so a partition's progress reaches Redis in the order it was made; a
   * failed write (Redis unreachable) is reported to its caller and does not stop the next ones.
   */
  private write(batches: Batch[]): Promise<void> {
    if (batches.length === 0) return Promise.resolve();
    const next = this.writes.catch(() => undefined).then(() => Promise.all(batches.map((b) => this.writeBatch(b))).then(() => undefined));
    this.writes = next;
    return next;
  }

  private async writeBatch({ p, cursor, progress, deletes }: Batch): Promise<void> {
    const lease = this.leases.leaseValue(p);
    // Not (or no longer) ours: whoever owns it now rebuilds it from Redis.
    if (lease === undefined) return;
    const keys = [this.keys.lease(p), this.keys.progress(p), this.keys.cursor(p), this.keys.inbox(p), this.keys.jobs(p)];
    const ok = await this.redis.run<number>(WRITE, keys, [lease, cursor, String(progress.length / 2), ...progress, ...deletes]);
    if (Number(ok) !== 1) this.leases.fenced(p);
  }
}

/** One partition's share of a write: progress as id/JSON pairs, then ids to delete. */
interface Batch {
  p: number;
  cursor: string;
  progress: string[];
  deletes: string[];
}
