// A real Prometheus (Debian's, from the package that brings promtool) scraping a real agent and a
// real homeserver on loopback, with alerts.yml loaded: every rule evaluates on their series without
// error, and every dashboard query runs. The closest to a rendered dashboard these machines allow
// (Grafana is not installable here).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';

import { startAgent } from '../../src/agent/main.js';
import { agentEnvHook } from '../../src/config/agent-env.js';
import { agentSettings } from '../../src/config/agent.js';
import { loadConfig } from '../../src/config/load.js';
import { type RunningHomeserver, startHomeserver } from '../../src/homeserver/main.js';
import { silentLogger } from '../../src/lib/logger.js';
import type { RunningService } from '../../src/lib/service.js';
import { freeTcpPort, type ManagedProcess, REPO_ROOT, skipOrThrow, spawnManaged, waitFor } from '../e2e/support/proc.js';
import { testConfig } from '../homeserver/harness.js';
import { ensurePromtool } from '../support/promtool.js';
import { dashboardQueries } from './promql.js';

const ALERTS = join(REPO_ROOT, 'deploy', 'prometheus', 'alerts.yml');
const SCRAPE = join(REPO_ROOT, 'deploy', 'prometheus', 'scrape.yml');

async function prerequisite(): Promise<{ bin: string; skip?: undefined } | { bin?: undefined; skip: string }> {
  const promtool = await ensurePromtool();
  if (promtool.skip !== undefined) return { skip: promtool.skip };
  const bin = join(dirname(promtool.path), 'prometheus');
  return existsSync(bin) ? { bin } : { skip: skipOrThrow(`no prometheus server beside ${promtool.path}`) };
}

/** The instant-query answer of Prometheus' HTTP API. */
interface QueryResponse {
  status: string;
  error?: string;
  data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
}

const prereq = await prerequisite();

describe.skipIf(!!prereq.skip)(`Prometheus scraping lastwill${prereq.skip ? ` (skipped: ${prereq.skip})` : ''}`, () => {
  const dirs: string[] = [];
  const tempDir = (name: string) => {
    const d = mkdtempSync(join(tmpdir(), `lastwill-${name}-`));
    dirs.push(d);
    return d;
  };
  let agent: RunningService | undefined;
  let homeserver: RunningHomeserver | undefined;
  let prometheus: ManagedProcess | undefined;
  let api = '';

  const query = async (expr: string): Promise<QueryResponse> =>
    (await (await fetch(`${api}/api/v1/query?query=${encodeURIComponent(expr)}`)).json()) as QueryResponse;

  beforeAll(async () => {
    const config = loadConfig(agentSettings, {
      env: { LASTWILL_AGENT_DATA_DIR: tempDir('agent'), LASTWILL_AGENT_BIND: '127.0.0.1:0' },
      envHook: agentEnvHook,
    });
    agent = await startAgent(config, silentLogger());
    const agentUrl = agent.url;
    homeserver = await startHomeserver(testConfig(tempDir('hs'), { metrics_bind: '127.0.0.1:0' }), silentLogger());

    // Something to count: delayed events scheduled, restarted, cancelled and sent.
    const hs = homeserver.url;
    const post = async (path: string, body: unknown, token?: string) => {
      const res = await fetch(`${hs}${path}`, {
        method: path.includes('/send/') ? 'PUT' : 'POST',
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(body),
      });
      expect(res.status, path).toBe(200);
      return (await res.json()) as Record<string, string>;
    };
    const { access_token: token } = await post('/_matrix/client/v3/register', {
      username: 'alice',
      password: 'correct horse battery staple',
      auth: { type: 'm.login.dummy' },
    });
    const { room_id: room } = await post('/_matrix/client/v3/createRoom', {}, token);
    const schedule = async (n: number, delayMs: number) => {
      const path = `/_matrix/client/v3/rooms/${encodeURIComponent(room!)}/send/m.room.message/t${n}`;
      return (await post(`${path}?org.matrix.msc4140.delay=${delayMs}`, { body: `${n}` }, token)).delay_id!;
    };
    await schedule(1, 100);
    const kept = await schedule(2, 600_000);
    const cancelled = await schedule(3, 600_000);
    const manage = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';
    await post(`${manage}/${kept}/restart`, {}, token);
    await post(`${manage}/${cancelled}/cancel`, {}, token);

    const dir = tempDir('prometheus');
    const port = await freeTcpPort();
    api = `http://127.0.0.1:${port}`;
    // The operators' jobs, pointed at this test's listeners and scraped often enough for rates
    // within a minute.
    const urls: Record<string, string> = { 'lastwill-agent': agentUrl, 'lastwill-homeserver': homeserver.metricsUrl! };
    const scrape = parse(readFileSync(SCRAPE, 'utf8')) as { scrape_configs: Array<{ job_name: string }> };
    const prometheusConfig = {
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      rule_files: [ALERTS],
      scrape_configs: scrape.scrape_configs.map((job) => {
        const url = urls[job.job_name];
        if (url === undefined) throw new Error(`no listener here for scrape.yml's job ${job.job_name}`);
        return { ...job, scrape_interval: '1s', static_configs: [{ targets: [new URL(url).host] }] };
      }),
    };
    writeFileSync(join(dir, 'prometheus.yml'), JSON.stringify(prometheusConfig));
    prometheus = spawnManaged(prereq.bin!, [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ]);
    const p = prometheus;
    await waitFor('Prometheus ready', async () => (await fetch(`${api}/-/ready`)).ok, {
      timeoutMs: 30_000,
      abort: () => (p.hasExited() ? `prometheus exited:\n${p.logs()}` : undefined),
    });
    // Enough scrapes for rates over a minute, and the timed send long done.
    await waitFor('both targets scraped a few times', async () => {
      const r = await query('count_over_time(up[1m]) >= 4');
      return r.data?.result.length === 2;
    });
    // A forged webhook once Prometheus watches, so its counter is seen to increase.
    const forged = await fetch(`${agentUrl}/sfu_webhook`, { method: 'POST', headers: { authorization: 'forged' }, body: '{}' });
    expect(forged.status).toBe(401);
  });

  afterAll(async () => {
    await prometheus?.stop(10_000);
    await agent?.close();
    await homeserver?.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('scrapes the agent and the homeserver, and sees what they did', async () => {
    const up = await query('up');
    expect(up.data!.result.map((s) => [s.metric.job, s.value[1]]).sort()).toEqual([
      ['lastwill-agent', '1'],
      ['lastwill-homeserver', '1'],
    ]);
    const value = async (expr: string) => Number((await query(expr)).data!.result[0]?.value[1]);
    expect(await value('lastwill_agent_ready')).toBe(1);
    await waitFor('the forged webhook scraped', async () => (await value('sum(lastwill_agent_webhooks_total{verdict="forged"})')) === 1);
    expect(await value('lastwill_homeserver_delayed_events_created_total')).toBe(3);
    expect(await value('sum(lastwill_homeserver_delayed_events_finalised_total{status="sent",cause="delay"})')).toBe(1);
    expect(await value('sum(lastwill_homeserver_delayed_events_finalised_total{status="cancelled",cause="action"})')).toBe(1);
    expect(await value('lastwill_homeserver_delayed_events_scheduled')).toBe(1);
    expect(await value('lastwill_homeserver_timed_send_lateness_seconds_count')).toBe(1);
  });

  it('evaluates every alerting rule on those series without error', async () => {
    type Rule = { name: string; health: string; lastError?: string; lastEvaluation: string };
    const rules = await waitFor('every rule evaluated once', async () => {
      const body = (await (await fetch(`${api}/api/v1/rules`)).json()) as { data: { groups: Array<{ rules: Rule[] }> } };
      const all = body.data.groups.flatMap((g) => g.rules);
      return all.length > 0 && all.every((r) => !r.lastEvaluation.startsWith('0001')) ? all : undefined;
    });
    expect(rules.length).toBeGreaterThan(10);
    for (const rule of rules) expect([rule.name, rule.health, rule.lastError ?? '']).toEqual([rule.name, 'ok', '']);
    // The forged webhook is on its way to an alert (pending for its for:); nothing else is wrong.
    type Alert = { labels: { alertname: string; instance: string }; state: string };
    const alerts = await waitFor('the forged-webhook alert pending', async () => {
      const body = (await (await fetch(`${api}/api/v1/alerts`)).json()) as { data: { alerts: Alert[] } };
      return body.data.alerts.length > 0 ? body.data.alerts : undefined;
    });
    expect(alerts.map((a) => [a.labels.alertname, a.state])).toEqual([['LastwillAgentForgedWebhooks', 'pending']]);
  });

  it('runs every dashboard query', async () => {
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(30);
    for (const { panel, concrete } of queries) {
      const r = await query(concrete);
      expect([panel, concrete, r.status, r.error ?? '']).toEqual([panel, concrete, 'success', '']);
    }
    // The panels of what happened show it.
    const ready = await query(queries.find((q) => q.panel === 'Ready')!.concrete);
    expect(ready.data!.result.map((s) => s.value[1])).toEqual(['1']);
  });
});
