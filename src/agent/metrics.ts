/**
 * The agent's Prometheus metrics, on a private registry per app (tests run several apps in one
 * process). Labels carry only bounded, non-personal values: no room, identity, user or delay id.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { JobState } from './contracts.js';
import { JOB_STATES } from './jobs/fsm.js';

export class AgentMetrics {
  readonly registry = new Registry();
  readonly webhooks: Counter<'event' | 'verdict'>;
  readonly actions: Counter<'action' | 'outcome'>;
  readonly actionDuration: Histogram<'action'>;
  readonly disconnectToSend: Histogram;
  readonly transitions: Counter<'from' | 'to' | 'signal'>;
  readonly delegations: Counter<'source'>;
  readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  readonly httpDuration: Histogram<'route'>;
  /** Cluster mode only (they stay at zero on a single node). */
  readonly leaseRenewals: Counter<'outcome'>;
  readonly leasesLost: Counter<'reason'>;
  readonly takeovers: Counter;
  readonly redisDuration: Histogram<'command'>;
  readonly redisErrors: Counter<'command'>;

  /**
   * @param jobCounts - read at scrape time, so the gauge is never stale
   * @param ownedPartitions - likewise (cluster mode)
   */
  constructor(jobCounts: () => Record<JobState, number> | undefined, ownedPartitions: () => number = () => 0) {
    const registers = [this.registry];
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
      help: 'Restart, send and cancel requests to homeservers by outcome.',
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
    this.httpRequests = new Counter({
      name: 'lastwill_agent_http_requests_total',
      help: 'HTTP requests by route pattern, method and status.',
      labelNames: ['route', 'method', 'status'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'lastwill_agent_http_request_duration_seconds',
      help: 'HTTP request duration by route pattern.',
      labelNames: ['route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
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
  }

  async render(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }
}
