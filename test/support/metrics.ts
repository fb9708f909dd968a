/** Reading a prom-client registry in tests, as a scrape would (gauges run their collect()). */
import type { Registry } from 'prom-client';

interface Sample {
  labels: Record<string, unknown>;
  value: number;
  metricName?: string;
}

/**
 * The sum of a family's samples whose labels include `labels`. `sample` picks a histogram's
 * `_count` or `_sum`. Throws for a family the registry does not have, so a renamed metric fails
 * the test instead of reading 0.
 */
export async function readMetric(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
  sample?: '_count' | '_sum',
): Promise<number> {
  const family = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  if (!family) throw new Error(`no metric family ${name}`);
  let total = 0;
  for (const v of family.values as Sample[]) {
    if (sample !== undefined && v.metricName !== name + sample) continue;
    if (Object.entries(labels).every(([k, x]) => v.labels[k] === x)) total += v.value;
  }
  return total;
}

