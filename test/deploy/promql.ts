/**
 * The metric names a PromQL expression (or a Grafana query holding one) reads, and the names the
 * code's registries export, so the deploy/ files can be checked against the code.
 */
import { metricRegistries } from '../../src/config/generated.js';

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
