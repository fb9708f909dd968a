/**
 * The homeserver's Prometheus metrics, on a private registry per instance (tests run several in
 * one process), and the listener that serves them. Labels carry only bounded values (route
 * patterns, statuses, actions, outcomes): never a user, room, event or delay id.
 *
 * The metrics have a listener of their own (`metrics_bind`, off unless set) rather than a route
 * on the client API: the client API faces the internet, and the metrics, which need no token,
 * belong on the operator's network only.
 */
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import { createHttpApp, type HttpApp, Router } from '../lib/http.js';
import { HttpMetrics, metricsHandler } from '../lib/http-metrics.js';
import type { ActionOutcome, DelayedObserver, FinalStatus } from './delayed/index.js';
import type { DelayedAction } from './delayed/engine.js';
import type { FinaliseCause } from './delayed/store.js';

const ACTIONS = ['restart', 'cancel', 'send'] as const satisfies readonly DelayedAction[];
const OUTCOMES = [
  'ok',
  'not_found',
  'conflict',
  'rate_limited',
  'forbidden',
  'invalid',
  'error',
] as const satisfies readonly ActionOutcome[];
/** The finalisations that can happen: only a cancel is caused by another user's state update. */
const FINALISATIONS: ReadonlyArray<readonly [FinalStatus, FinaliseCause]> = [
  ['sent', 'delay'],
  ['sent', 'action'],
  ['failed', 'delay'],
  ['failed', 'action'],
  ['cancelled', 'action'],
  ['cancelled', 'state'],
];

export interface HomeserverMetricSources {
  /** Delayed events scheduled now. */
  scheduled(): number;
}

export class HomeserverMetrics {
  readonly registry = new Registry();
  readonly created: Counter;
  readonly finalised: Counter<'status' | 'cause'>;
  readonly actions: Counter<'action' | 'outcome'>;
  readonly timedSendLateness: Histogram;
  readonly http: HttpMetrics;

  constructor(sources: HomeserverMetricSources) {
    const registers = [this.registry];
    new Gauge({
      name: 'lastwill_homeserver_delayed_events_scheduled',
      help: 'Delayed events scheduled now (waiting for their delay, a restart, a send or a cancel).',
      registers,
      collect() {
        this.set(sources.scheduled());
      },
    });
    this.created = new Counter({
      name: 'lastwill_homeserver_delayed_events_created_total',
      help: 'Delayed events scheduled (committed), by any of the scheduling forms.',
      registers,
    });
    this.finalised = new Counter({
      name: 'lastwill_homeserver_delayed_events_finalised_total',
      help:
        'Delayed events finalised, by status (sent, cancelled, failed) and cause (delay: the timer fired; ' +
        'action: a send or cancel request; state: another user\'s state update cancelled it).',
      labelNames: ['status', 'cause'],
      registers,
    });
    this.actions = new Counter({
      name: 'lastwill_homeserver_delayed_event_actions_total',
      help:
        'Management requests (restart, cancel, send) by action and outcome (ok, not_found, conflict, ' +
        'rate_limited, forbidden, invalid, error).',
      labelNames: ['action', 'outcome'],
      registers,
    });
    this.timedSendLateness = new Histogram({
      name: 'lastwill_homeserver_timed_send_lateness_seconds',
      help: 'How long after its due time a timed send committed (the catch-up after a start excluded).',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.http = new HttpMetrics(this.registry, {
      prefix: 'lastwill_homeserver',
      durationHelp: 'HTTP request duration by route pattern (long polls of /sync included).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30],
    });
    // Every known label set from zero, so the first increment after a start shows in rate() too.
    for (const action of ACTIONS) for (const outcome of OUTCOMES) this.actions.inc({ action, outcome }, 0);
    for (const [status, cause] of FINALISATIONS) this.finalised.inc({ status, cause }, 0);
  }

  /** The delayed-events module's hooks, feeding these metrics. */
  delayedObserver(): DelayedObserver {
    return {
      scheduled: () => this.created.inc(),
      finalised: (status, cause, count) => this.finalised.inc({ status, cause }, count),
      timedSendLateness: (ms) => this.timedSendLateness.observe(ms / 1000),
      action: (action, outcome) => this.actions.inc({ action, outcome }),
    };
  }
}

/** The metrics listener: `GET /metrics` and nothing else. It never listens by itself. */
export function createMetricsApp(metrics: HomeserverMetrics, log: Logger): HttpApp {
  const router = new Router();
  router.add('GET', '/metrics', metricsHandler(metrics.registry));
  return createHttpApp({ router, log });
}
