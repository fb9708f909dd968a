// deploy/prometheus/: the alerting rules and the scrape configuration, checked by promtool
// (Debian's prometheus package) and against the metrics the code really exports.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';

import { REPO_ROOT } from '../e2e/support/proc.js';
import { ensurePromtool, promtoolSucceeds } from '../support/promtool.js';
import { exportedMetrics, metricNames, SCRAPE_SERIES } from './promql.js';

const DIR = join(REPO_ROOT, 'deploy', 'prometheus');
const ALERTS = join(DIR, 'alerts.yml');
const ALERT_TESTS = join(DIR, 'alerts.test.yml');
const SCRAPE = join(DIR, 'scrape.yml');

interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface AlertTest {
  eval_time: string;
  alertname: string;
  exp_alerts?: unknown[];
}

const rules: AlertRule[] = (parse(readFileSync(ALERTS, 'utf8')) as { groups: Array<{ rules: AlertRule[] }> }).groups.flatMap(
  (g) => g.rules,
);
const alertTests = (parse(readFileSync(ALERT_TESTS, 'utf8')) as { tests: Array<{ alert_rule_test: AlertTest[] }> }).tests.flatMap(
  (t) => t.alert_rule_test,
);
const scrape = parse(readFileSync(SCRAPE, 'utf8')) as { scrape_configs: Array<{ job_name: string }> };
const scrapeJobs = scrape.scrape_configs.map((c) => c.job_name);

describe('deploy/prometheus/alerts.yml', () => {
  it('holds the alerts the operators were promised', () => {
    expect(rules.map((r) => r.alert)).toEqual(
      expect.arrayContaining([
        'LastwillTargetDown',
        'LastwillAgentNotReady',
        'LastwillAgentSendsFailing',
        'LastwillAgentForgedWebhooks',
        'LastwillAgentRestartsRateLimited',
        'LastwillAgentJobsStuckSending',
        'LastwillAgentDisconnectToSendSlow',
        'LastwillAgentLeasesLost',
        'LastwillAgentRedisErrors',
      ]),
    );
    expect(new Set(rules.map((r) => r.alert)).size).toBe(rules.length);
  });

  it('gives every alert a for:, a severity, and a summary and description of what to check', () => {
    for (const rule of rules) {
      expect([rule.alert, rule.for]).toEqual([rule.alert, expect.stringMatching(/^\d+[smh]$/)]);
      expect([rule.alert, rule.labels?.severity]).toEqual([rule.alert, expect.stringMatching(/^(critical|warning)$/)]);
      expect([rule.alert, rule.annotations?.summary]).toEqual([rule.alert, expect.any(String)]);
      // A description long enough to name the things to look at.
      expect([rule.alert, (rule.annotations?.description ?? '').length > 120]).toEqual([rule.alert, true]);
    }
  });

  it('reads only metrics the agent and the homeserver export', async () => {
    const exported = (await exportedMetrics()).names;
    for (const rule of rules) {
      const names = metricNames(rule.expr);
      expect([rule.alert, names.length > 0]).toEqual([rule.alert, true]);
      for (const name of names) {
        expect([rule.alert, name, exported.has(name) || SCRAPE_SERIES.has(name)]).toEqual([rule.alert, name, true]);
      }
    }
  });

  it('has a unit test that fires each alert and one that keeps it silent', () => {
    for (const rule of rules) {
      const evals = alertTests.filter((t) => t.alertname === rule.alert);
      expect([rule.alert, evals.some((t) => (t.exp_alerts ?? []).length > 0)]).toEqual([rule.alert, true]);
      expect([rule.alert, evals.some((t) => (t.exp_alerts ?? []).length === 0)]).toEqual([rule.alert, true]);
    }
  });

  it('watches exactly the jobs scrape.yml defines', () => {
    expect(scrapeJobs.sort()).toEqual(['lastwill-agent', 'lastwill-homeserver']);
    const targetDown = rules.find((r) => r.alert === 'LastwillTargetDown')!;
    for (const job of scrapeJobs) expect(targetDown.expr).toContain(job);
  });
});

const promtool = await ensurePromtool();

describe.skipIf(!!promtool.skip)(`promtool${promtool.skip ? ` (skipped: ${promtool.skip})` : ''}`, () => {
  const run = (...args: string[]) => promtoolSucceeds(promtool.path!, ...args);
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('check rules accepts alerts.yml', async () => {
    expect(await run('check', 'rules', ALERTS)).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it('check config accepts scrape.yml alone, and a prometheus.yml with its jobs and the rules', async () => {
    await run('check', 'config', SCRAPE);

    const dir = mkdtempSync(join(tmpdir(), 'lastwill-prometheus-'));
    dirs.push(dir);
    const config = {
      global: { scrape_interval: '15s', evaluation_interval: '15s' },
      rule_files: [ALERTS],
      scrape_configs: scrape.scrape_configs,
    };
    const path = join(dir, 'prometheus.yml');
    writeFileSync(path, JSON.stringify(config));
    expect(await run('check', 'config', path)).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it('test rules passes alerts.test.yml', async () => {
    expect(await run('test', 'rules', ALERT_TESTS)).toContain('SUCCESS');
  });
});
