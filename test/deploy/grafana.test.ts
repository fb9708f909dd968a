// deploy/grafana/lastwill.json: imports as it is (a ${DS_PROMETHEUS} input, no fixed datasource),
// a sound panel structure, and queries that read only metrics the code exports, every one of them
// shown somewhere. Grafana itself is not installable here (Debian ships no package of it); the
// queries' PromQL is parsed by promtool instead, as recording rules.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { ensurePromtool, promtoolSucceeds } from '../support/promtool.js';
import {
  DASHBOARD,
  dashboardPanels,
  dashboardQueries,
  exportedMetrics,
  labelValuesMetricNames,
  metricNames,
  type Datasource,
  type Panel,
} from './promql.js';

interface Variable {
  name: string;
  type: string;
  datasource?: Datasource;
  query?: string | { query: string };
}

interface Dashboard {
  __inputs: Array<{ name: string; type: string; pluginId: string }>;
  schemaVersion: number;
  uid: string;
  title: string;
  id: number | null;
  panels: Panel[];
  templating: { list: Variable[] };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const INPUT_DATASOURCE = { type: 'prometheus', uid: '${DS_PROMETHEUS}' };

const allPanels = dashboardPanels(dashboard.panels);
const queryPanels = allPanels.filter((p) => p.type !== 'row');
const queries = dashboardQueries(dashboard);
const variableQueries = dashboard.templating.list
  .filter((v) => v.type === 'query')
  .map((v) => ({ name: v.name, query: typeof v.query === 'string' ? v.query : (v.query?.query ?? '') }));

describe('deploy/grafana/lastwill.json', () => {
  it('imports as it is: a Prometheus datasource input, no instance-specific id', () => {
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.id).toBeNull();
    expect(dashboard.uid).toMatch(/^[\w-]{1,40}$/);
    // Nothing names a datasource but through the input (the built-in annotations use Grafana's own).
    const datasources: unknown[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) return node.forEach(walk);
      if (node === null || typeof node !== 'object') return;
      for (const [key, value] of Object.entries(node)) {
        if (key === 'datasource') datasources.push(value);
        else walk(value);
      }
    };
    walk(dashboard);
    expect(datasources.length).toBeGreaterThan(0);
    for (const ds of datasources) expect([INPUT_DATASOURCE, { type: 'grafana', uid: '-- Grafana --' }]).toContainEqual(ds);
  });

  it('has unique panel ids and panels that fit the 24-column grid', () => {
    const ids = allPanels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of allPanels) {
      expect([p.title, p.gridPos && p.gridPos.x + p.gridPos.w <= 24 && p.gridPos.w > 0 && p.gridPos.h > 0]).toEqual([p.title, true]);
    }
  });

  it('gives every panel and target the input datasource, and every target an expr and a unique refId', () => {
    expect(queryPanels.length).toBeGreaterThan(20);
    for (const p of queryPanels) {
      expect([p.title, p.datasource]).toEqual([p.title, INPUT_DATASOURCE]);
      expect([p.title, (p.targets ?? []).length > 0]).toEqual([p.title, true]);
      const refIds = new Set<string | undefined>();
      for (const t of p.targets ?? []) {
        expect([p.title, t.datasource]).toEqual([p.title, INPUT_DATASOURCE]);
        expect([p.title, typeof t.expr === 'string' && t.expr.trim().length > 0]).toEqual([p.title, true]);
        expect([p.title, refIds.has(t.refId)]).toEqual([p.title, false]);
        refIds.add(t.refId);
      }
    }
    for (const v of dashboard.templating.list) if (v.type === 'query') expect([v.name, v.datasource]).toEqual([v.name, INPUT_DATASOURCE]);
  });

  it('queries only metrics the agent and the homeserver export', async () => {
    const exported = (await exportedMetrics()).names;
    for (const { panel, expr } of queries) {
      const names = metricNames(expr);
      expect([panel, expr, names.length > 0]).toEqual([panel, expr, true]);
      for (const name of names) expect([panel, name, exported.has(name)]).toEqual([panel, name, true]);
    }
    for (const { name, query } of variableQueries) {
      for (const metric of labelValuesMetricNames(query)) expect([name, metric, exported.has(metric)]).toEqual([name, metric, true]);
    }
  });

  it('shows every metric family the code exports', async () => {
    const used = new Set(queries.flatMap(({ expr }) => metricNames(expr)));
    const { families } = await exportedMetrics();
    expect(families.filter((f) => !f.series.some((n) => used.has(n))).map((f) => f.name)).toEqual([]);
  });
});

const promtool = await ensurePromtool();

describe.skipIf(!!promtool.skip)(`dashboard PromQL parsed by promtool${promtool.skip ? ` (skipped: ${promtool.skip})` : ''}`, () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('every query parses (Grafana variables given example values)', async () => {
    const rules = queries.map(({ concrete }, i) => ({ record: `lastwill:dashboard_query:${i}`, expr: concrete }));
    const dir = mkdtempSync(join(tmpdir(), 'lastwill-grafana-'));
    dirs.push(dir);
    const file = join(dir, 'dashboard-queries.yml');
    writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }));
    expect(await promtoolSucceeds(promtool.path!, 'check', 'rules', file)).toContain(`SUCCESS: ${rules.length} rules found`);
  });
});
