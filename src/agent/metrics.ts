/**
 * The agent's Prometheus metrics, on a private registry per app (tests run several apps in one
 * process). Labels carry only bounded, non-personal values: no room, identity, user, homeserver or
 * delay id.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { ActionOutcome, DelayedAction, Delegation, JobState } from './contracts.js';
import type { EngineObserver, PacingCounts, StoreOperation } from './jobs/index.js';
import { HttpMetrics } from '../lib/http-metrics.js';
import { JOB_STATES } from './jobs/fsm.js';

const ACTIONS = ['restart', 'send', 'cancel'] as const satisfies readonly DelayedAction[];
const OUTCOMES = ['ok', 'not_found', 'rate_limited', 'transient', 'unresolvable'] as const satisfies readonly ActionOutcome['kind'][];
/** The requests that carry delegations (jobs taken over from lk-jwt-service are not counted). */
const SOURCES = ['sfu_get', 'get_token', 'delegate_delayed_leave', 'msc4195'] as const satisfies readonly Delegation['source'][];
const STORE_OPERATIONS = ['insert', 'progress', 'remove'] as const satisfies readonly StoreOperation[];

/** What the gauges read at scrape time, so they are never stale. */
export interface MetricSources {
  /** Jobs by state; undefined until the jobs are restored. */
  jobCounts(): Record<JobState, number> | undefined;
  /** Cluster mode: partitions whose lease this replica holds. */
  ownedPartitions?(): number;
  /** What /readyz answers. */
  ready?(): boolean;
  /** The restart pacing over every homeserver; undefined while there is no engine. */
  pacing?(): PacingCounts | undefined;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly webhooks: Counter<'event' | 'verdict'>;
  readonly actions: Counter<'action' | 'outcome'>;
  readonly actionDuration: Histogram<'action'>;
  readonly disconnectToSend: Histogram;
  readonly transitions: Counter<'from' | 'to' | 'signal'>;
  readonly delegations: Counter<'source'>;
  readonly lookups: Counter<'outcome'>;
  readonly lookupDuration: Histogram;
  readonly storeCommitDuration: Histogram<'operation'>;
  readonly storeCommitErrors: Counter<'operation'>;
  readonly http: HttpMetrics;
  /** Cluster mode only (they stay at zero on a single node). */
  readonly leaseRenewals: Counter<'outcome'>;
  readonly leasesLost: Counter<'reason'>;
  readonly takeovers: Counter;
  readonly redisDuration: Histogram<'command'>;
  readonly redisErrors: Counter<'command'>;

  constructor(sources: MetricSources) {
    const registers = [this.registry];
    const { jobCounts, ownedPartitions = () => 0, ready = () => false, pacing = () => undefined } = sources;
    new Gauge({
      name: 'lastwill_agent_jobs',
      help: 'Delegation jobs by state.',
      labelNames: ['state'],
      registers,
      collect() {
        const counts = jobCounts();
        for (const state of JOB_STATES) this.set({ state }, counts?.[state] ?? 0);
      },
    });
    this.webhooks = new Counter({
      name: 'lastwill_agent_webhooks_total',
      help: 'LiveKit webhooks by event and verdict (forged = bad signature or tampered body, answered 401).',
      labelNames: ['event', 'verdict'],
      registers,
    });
    this.actions = new Counter({
      name: 'lastwill_agent_delayed_event_actions_total',
      help: 'Restart, send and cancel requests to homeservers by outcome (ok, not_found, rate_limited, transient, unresolvable).',
      labelNames: ['action', 'outcome'],
      registers,
    });
    this.actionDuration = new Histogram({
      name: 'lastwill_agent_delayed_event_action_duration_seconds',
      help: 'Duration of restart, send and cancel requests to homeservers.',
      labelNames: ['action'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.disconnectToSend = new Histogram({
      name: 'lastwill_agent_disconnect_to_send_seconds',
      help: 'Time from the detected disconnect to the acknowledged send of the leave event.',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120],
      registers,
    });
    this.transitions = new Counter({
      name: 'lastwill_agent_job_transitions_total',
      help: 'Job state machine transitions.',
      labelNames: ['from', 'to', 'signal'],
      registers,
    });
    this.delegations = new Counter({
      name: 'lastwill_agent_delegations_total',
      help: 'Accepted delegations by the request that carried them.',
      labelNames: ['source'],
      registers,
    });
    this.lookups = new Counter({
      name: 'lastwill_agent_livekit_lookups_total',
      help: 'LiveKit ListParticipants calls (one per room, shared by its jobs) by outcome.',
      labelNames: ['outcome'],
      registers,
    });
    this.lookupDuration = new Histogram({
      name: 'lastwill_agent_livekit_lookup_duration_seconds',
      help: 'Duration of LiveKit ListParticipants calls.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    new Gauge({
      name: 'lastwill_agent_restarts_queued',
      help:
        'Restarts waiting in the per-homeserver pacing, all homeservers together: paced (behind the rate) ' +
        'or urgent (near their deadline, waiting only for a free in-flight slot).',
      labelNames: ['queue'],
      registers,
      collect() {
        const counts = pacing();
        this.set({ queue: 'paced' }, counts?.queued ?? 0);
        this.set({ queue: 'urgent' }, counts?.urgent ?? 0);
      },
    });
    new Gauge({
      name: 'lastwill_agent_restarts_in_flight',
      help: 'Restart calls awaiting the homeserver\'s answer, all homeservers together.',
      registers,
      collect() {
        this.set(pacing()?.inFlight ?? 0);
      },
    });
    new Gauge({
      name: 'lastwill_agent_homeservers_paused',
      help: 'Homeservers whose restarts are paused after a 429 (Retry-After or backoff).',
      registers,
      collect() {
        this.set(pacing()?.paused ?? 0);
      },
    });
    this.storeCommitDuration = new Histogram({
      name: 'lastwill_agent_store_commit_duration_seconds',
      help:
        'Time until a job store write is durable: insert (a delegation, before its reply: SQLite group ' +
        'commit or Redis script), progress (one per event-loop turn), remove (purge).',
      labelNames: ['operation'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.storeCommitErrors = new Counter({
      name: 'lastwill_agent_store_commit_errors_total',
      help: 'Job store writes that failed, by operation (a failed insert is answered 503).',
      labelNames: ['operation'],
      registers,
    });
    new Gauge({
      name: 'lastwill_agent_ready',
      help: '1 while /readyz answers 200 (jobs restored; cluster mode: Redis reachable, leases renewed), else 0.',
      registers,
      collect() {
        this.set(ready() ? 1 : 0);
      },
    });
    this.http = new HttpMetrics(this.registry, {
      prefix: 'lastwill_agent',
      durationHelp: 'HTTP request duration by route pattern.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    new Gauge({
      name: 'lastwill_agent_cluster_partitions_owned',
      help: 'Partitions this replica owns (cluster mode); its jobs are lastwill_agent_jobs.',
      registers,
      collect() {
        this.set(ownedPartitions());
      },
    });
    this.leaseRenewals = new Counter({
      name: 'lastwill_agent_cluster_lease_renewals_total',
      help: 'Lease renewal rounds (one per tick, all leases at once) by outcome.',
      labelNames: ['outcome'],
      registers,
    });
    this.leasesLost = new Counter({
      name: 'lastwill_agent_cluster_leases_lost_total',
      help: 'Partitions this replica stopped owning: fenced (a write refused), expired (not renewed in time), released (handed over).',
      labelNames: ['reason'],
      registers,
    });
    this.takeovers = new Counter({
      name: 'lastwill_agent_cluster_takeovers_total',
      help: 'Partitions acquired that another replica had held before.',
      registers,
    });
    this.redisDuration = new Histogram({
      name: 'lastwill_agent_redis_command_duration_seconds',
      help: 'Redis calls by command (scripts count as EVALSHA).',
      labelNames: ['command'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.redisErrors = new Counter({
      name: 'lastwill_agent_redis_errors_total',
      help: 'Failed Redis calls by command.',
      labelNames: ['command'],
      registers,
    });
    this.initialiseSeries();
  }

  /** The engine's hooks, feeding these metrics. */
  engineObserver(): EngineObserver {
    return {
      transition: (from, to, signal) => this.transitions.inc({ from, to, signal }),
      action: (action, outcome, ms) => {
        this.actions.inc({ action, outcome });
        this.actionDuration.observe({ action }, ms / 1000);
      },
      disconnectToSend: (ms) => this.disconnectToSend.observe(ms / 1000),
      lookup: (outcome, ms) => {
        this.lookups.inc({ outcome });
        this.lookupDuration.observe(ms / 1000);
      },
      storeCommit: (operation, ms, ok) => {
        if (ok) this.storeCommitDuration.observe({ operation }, ms / 1000);
        else this.storeCommitErrors.inc({ operation });
      },
    };
  }

  /**
   * Creates the series of every known label set at zero. A labelled counter appears only at its
   * first increment, and increase() and rate() cannot see that one (there is no earlier sample):
   * the first forged webhook, failed send or lost lease after a start would pass every alert.
   */
  private initialiseSeries(): void {
    this.webhooks.inc({ event: 'unverified', verdict: 'forged' }, 0);
    for (const action of ACTIONS) {
      this.actionDuration.zero({ action });
      for (const outcome of OUTCOMES) this.actions.inc({ action, outcome }, 0);
    }
    for (const source of SOURCES) this.delegations.inc({ source }, 0);
    for (const outcome of ['ok', 'failed']) this.lookups.inc({ outcome }, 0);
    for (const operation of STORE_OPERATIONS) {
      this.storeCommitDuration.zero({ operation });
      this.storeCommitErrors.inc({ operation }, 0);
    }
    for (const outcome of ['ok', 'failed']) this.leaseRenewals.inc({ outcome }, 0);
    for (const reason of ['fenced', 'expired', 'released']) this.leasesLost.inc({ reason }, 0);
  }
}
