/** Summaries used by every benchmark: percentiles of one run, min/median/max across runs. */

export interface Spread {
  min: number;
  median: number;
  max: number;
  runs: number[];
}

/** Nearest-rank percentile of an ascending array (p in 0..100). */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export interface Distribution {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function distribution(values: number[]): Distribution {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length > 0 ? sorted[sorted.length - 1]! : NaN,
    mean: sorted.length > 0 ? sum / sorted.length : NaN,
  };
}

export function spread(values: number[]): Spread {
  const sorted = [...values].filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  const mid = sorted.length === 0 ? NaN : sorted.length % 2 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  return { min: sorted[0] ?? NaN, median: mid, max: sorted[sorted.length - 1] ?? NaN, runs: values };
}

/**
 * Turns per-run metric records into min/median/max per metric (numeric leaves only; a metric
 * missing from a run is left out of that run).
 */
export function summarise(runs: Array<Record<string, number>>): Record<string, Spread> {
  const keys = new Set(runs.flatMap((r) => Object.keys(r)));
  const out: Record<string, Spread> = {};
  for (const k of keys) {
    out[k] = spread(runs.map((r) => r[k]).filter((v): v is number => typeof v === 'number'));
  }
  return out;
}

/** Flattens a Distribution into `prefix_p50` style keys. */
export function flat(prefix: string, d: Distribution): Record<string, number> {
  return {
    [`${prefix}_p50`]: d.p50,
    [`${prefix}_p90`]: d.p90,
    [`${prefix}_p99`]: d.p99,
    [`${prefix}_max`]: d.max,
    [`${prefix}_count`]: d.count,
  };
}
