/**
 * The files generated from the config schema and the metric registries; a test checks the
 * committed copies match.
 */
import type { Registry } from 'prom-client';

import { AgentMetrics } from '../agent/metrics.js';
import { HomeserverMetrics } from '../homeserver/metrics.js';
import { renderMetricsMarkdown } from '../lib/metrics-reference.js';
import { agentSettings, homeserverSettings, SAMPLE_FILES } from './index.js';
import { renderMarkdown, renderSampleYaml } from './sample.js';

/**
 * The registries of the agent and the homeserver, with the titles docs/metrics.md gives them. The
 * deploy/ tests check the dashboard and the alerts against these same registries, so a component
 * added here is one they cover too.
 */
export function metricRegistries(): Array<{ title: string; intro: string; registry: Registry }> {
  return [
    {
      title: 'agent (`lastwill agent`)',
      intro: '`GET /metrics` on the agent\'s listener (`bind`). The cluster families stay at zero on a single node.',
      registry: new AgentMetrics({ jobCounts: () => undefined }).registry,
    },
    {
      title: 'homeserver (`lastwill homeserver`)',
      intro: '`GET /metrics` on the listener of `metrics_bind` (off unless set), never on the client API.',
      registry: new HomeserverMetrics({ scheduled: () => 0 }).registry,
    },
  ];
}

export function generatedFiles(): Array<{ path: string; text: string }> {
  return [
    ...SAMPLE_FILES.map((f) => ({ path: f.path, text: renderSampleYaml(f.root, f.title) })),
    {
      path: 'docs/configuration.md',
      text: renderMarkdown([
        { title: 'homeserver (`lastwill homeserver`)', root: homeserverSettings },
        { title: 'agent (`lastwill agent`)', root: agentSettings },
      ]),
    },
    { path: 'docs/metrics.md', text: renderMetricsMarkdown(metricRegistries()) },
  ];
}
