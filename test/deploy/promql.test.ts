// The metric-name extraction the deploy/ checks rely on: if it missed names, those checks would
// pass on anything.
import { describe, expect, it } from 'vitest';

import { labelValuesMetricNames, metricNames } from './promql.js';

describe('metricNames', () => {
  it('finds the metrics of an expression and nothing else', () => {
    const expr =
      'histogram_quantile(0.99, sum by (job, instance, le) (rate(a_seconds_bucket{job=~"x|y", le!="+Inf"}[$__rate_interval])))' +
      ' / on(instance) group_left(version) b_info offset 5m > bool 1e3 and c_total unless ignoring(le) d:recorded';
    expect(metricNames(expr).sort()).toEqual(['a_seconds_bucket', 'b_info', 'c_total', 'd:recorded']);
  });

  it('ignores label names and values, durations and Grafana variables', () => {
    expect(metricNames('sum without (route) (increase(x_total{route="/sfu/get", instance=~"$instance"}[5m])) * 60')).toEqual([
      'x_total',
    ]);
    expect(metricNames('max(y) by (state)')).toEqual(['y']);
  });

  it('reads the metric of a label_values() variable query', () => {
    expect(labelValuesMetricNames('label_values(lastwill_agent_ready{job="$job"}, instance)')).toEqual(['lastwill_agent_ready']);
    expect(labelValuesMetricNames('label_values(job)')).toEqual([]);
  });
});
