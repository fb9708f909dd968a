/**
 * The metric names a PromQL expression (or a Grafana query holding one) reads, the names the
 * code's registries export, and the dashboard's queries, so the deploy/ files can be checked
 * against the code.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { metricRegistries } from '../../src/config/generated.js';
import { REPO_ROOT } from '../e2e/support/proc.js';

/** Words that PromQL reads as operators or literals, not as metric names. */
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/**
 * Every metric name in `expr`. What cannot be a metric name goes first: string literals (label
 * values, regexes), label matchers, range and subquery brackets (durations, Grafana's
 * $__rate_interval), the label lists of by/without/on/ignoring/group_*, and Grafana variables.
 * Of the identifiers left, those followed by `(` are functions or aggregations.
 */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{[^}]*\}|\$\w+/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w.])[A-Za-z_:][\w:]*(?!\w)(\s*\()?/g)) {
    if (m[1] !== undefined) continue;
    if (!KEYWORDS.has(m[0].toLowerCase())) names.add(m[0]);
  }
  return [...names];
}

/** Grafana's `label_values(metric, label)` variable query: the metric part is PromQL. */
export function labelValuesMetricNames(query: string): string[] {
  const m = /^\s*label_values\(\s*(?:(.*),)?\s*\w+\s*\)\s*$/.exec(query);
  if (!m) throw new Error(`not a label_values() query: ${query}`);
  return m[1] === undefined ? [] : metricNames(m[1]);
}

/** Series Prometheus makes itself for every target. */
export const SCRAPE_SERIES = new Set(['up']);

/** A family of the code's registries and the series Prometheus stores for it. */
export interface ExportedFamily {
  name: string;
  type: string;
  series: string[];
}

/** What the agent's and the homeserver's registries export, read from the ones docs/metrics.md lists. */
export async function exportedMetrics(): Promise<{ families: ExportedFamily[]; names: Set<string> }> {
  const families: ExportedFamily[] = [];
  for (const { registry } of metricRegistries()) {
    for (const f of await registry.getMetricsAsJSON()) {
      const type = String(f.type);
      const suffixes = type === 'histogram' ? ['', '_bucket', '_sum', '_count'] : [''];
      families.push({ name: f.name, type, series: suffixes.map((s) => f.name + s) });
    }
  }
  return { families, names: new Set(families.flatMap((f) => f.series)) };
}

export const DASHBOARD = join(REPO_ROOT, 'deploy', 'grafana', 'lastwill.json');

export interface Datasource {
  type?: string;
  uid?: string;
}

export interface Target {
  refId?: string;
  expr?: string;
  datasource?: Datasource;
}

export interface Panel {
  id?: number;
  type: string;
  title?: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  datasource?: Datasource;
  targets?: Target[];
  panels?: Panel[];
}

/** Rows and their panels, whether the row is collapsed (panels inside it) or not (panels after it). */
export function dashboardPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** A dashboard query as written, and `concrete`: as Prometheus receives it from Grafana. */
export interface DashboardQuery {
  panel: string;
  expr: string;
  concrete: string;
}

/** Every PromQL query of the dashboard's panels (rows hold none). */
export function dashboardQueries(
  dashboard: { panels: Panel[] } = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] },
): DashboardQuery[] {
  // Grafana fills these in; the other variables get a value that matches any label.
  const concrete = (expr: string) =>
    expr.replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '1m').replace(/\$\w+/g, '.*');
  return dashboardPanels(dashboard.panels)
    .filter((p) => p.type !== 'row')
    .flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title ?? '', expr: t.expr ?? '' })))
    .map((q) => ({ ...q, concrete: concrete(q.expr) }));
}
