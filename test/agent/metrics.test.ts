// The agent's metrics that the dashboard and the alerts read, observed after real engine work:
// pacing queues, store commits, LiveKit lookups and readiness.
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { buildAgent } from '../../src/agent/app.js';
import type { Engine } from '../../src/agent/jobs/engine.js';
import { SqliteJobStore } from '../../src/agent/jobs/sqlite-store.js';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { agentEnvHook } from '../../src/config/agent-env.js';
import { agentSettings } from '../../src/config/agent.js';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/lib/logger.js';
import { readMetric } from '../support/metrics.js';
import { delegation as delegationOf, GRACE_MS, makeRig, ROOM, settle, TempDirs } from './jobs/harness.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

const read = (metrics: AgentMetrics, name: string, labels: Record<string, string> = {}, sample?: '_count' | '_sum') =>
  readMetric(metrics.registry, name, labels, sample);

const delegation = (identity: string, delayTimeoutMs = 3_600_000) =>
  delegationOf({ livekitRoom: 'room-a', identity, delayId: `d-${identity}`, delayTimeoutMs });

describe('pacing gauges', () => {
  it('count paced, urgent and in-flight restarts and paused homeservers, and let go of a job that leaves', async () => {
    let engine: Engine | undefined;
    const metrics = new AgentMetrics({ jobCounts: () => engine?.counts(), pacing: () => engine?.pacingCounts() });
    const rig = await makeRig(dirs, {
      settings: { maxRestartsInFlight: 1, pacing: { perSecond: 1000, burst: 1000 } },
      observer: metrics.engineObserver(),
    });
    engine = rig.engine;
    rig.actions.hold.restart = true;
    const jobs = ['a', 'b', 'c', 'd', 'e'].map((id) => delegation(id));
    for (const d of jobs) await rig.engine.delegate(d);
    await settle();
    for (const d of jobs) {
      rig.engine.onParticipant({ kind: 'joined', livekitRoom: d.livekitRoom, session: { identity: d.identity, sid: `s-${d.identity}` } });
    }
    await settle();
    // One slot: the first restart is in flight, the other four wait behind it.
    expect(rig.actions.of('restart')).toHaveLength(1);
    expect(await read(metrics, 'lastwill_agent_restarts_in_flight')).toBe(1);
    expect(await read(metrics, 'lastwill_agent_restarts_queued', { queue: 'paced' })).toBe(4);
    expect(await read(metrics, 'lastwill_agent_restarts_queued', { queue: 'urgent' })).toBe(0);

    // A short delay is urgent at once and waits only for the slot.
    await rig.engine.delegate(delegation('short', 20_000));
    rig.engine.onParticipant({ kind: 'joined', livekitRoom: 'room-a', session: { identity: 'short', sid: 's-short' } });
    await settle();
    expect(await read(metrics, 'lastwill_agent_restarts_queued', { queue: 'urgent' })).toBe(1);

    // The homeserver answers 429: its restarts pause, nothing is in flight.
    rig.actions.held.shift()!.resolve({ kind: 'rate_limited', retryAfterMs: 5_000 });
    await settle();
    expect(await read(metrics, 'lastwill_agent_homeservers_paused')).toBe(1);
    expect(await read(metrics, 'lastwill_agent_restarts_in_flight')).toBe(0);
    expect(await read(metrics, 'lastwill_agent_delayed_event_actions_total', { action: 'restart', outcome: 'rate_limited' })).toBe(1);

    // A queued participant leaves: once its hangup is sent it no longer counts as waiting.
    rig.engine.onParticipant({ kind: 'left', livekitRoom: 'room-a', session: { identity: 'e', sid: 's-e' } });
    await rig.advance(GRACE_MS);
    expect(rig.actions.of('send').map((c) => c.delayId)).toEqual(['d-e']);
    expect(await read(metrics, 'lastwill_agent_restarts_queued', { queue: 'paced' })).toBe(3);

    // The pause ends: the urgent restart takes the slot first.
    await rig.advance(5_000);
    expect(await read(metrics, 'lastwill_agent_homeservers_paused')).toBe(0);
    expect(rig.actions.held.map((h) => h.call.delayId)).toEqual(['d-short']);
    expect(await read(metrics, 'lastwill_agent_restarts_queued', { queue: 'urgent' })).toBe(0);
    expect(await read(metrics, 'lastwill_agent_restarts_in_flight')).toBe(1);
  });
});

describe('LiveKit lookups', () => {
  it('count each ListParticipants call by outcome, with its duration', async () => {
    const metrics = new AgentMetrics({ jobCounts: () => undefined });
    const rig = await makeRig(dirs, { observer: metrics.engineObserver() });
    await rig.delegate({ identity: 'one' });
    expect(rig.presence.calls).toHaveLength(1);
    rig.presence.failing = true;
    await rig.delegate({ identity: 'two', livekitRoom: 'room-b' });
    expect(rig.presence.calls).toHaveLength(2);
    expect(await read(metrics, 'lastwill_agent_livekit_lookups_total', { outcome: 'ok' })).toBe(1);
    expect(await read(metrics, 'lastwill_agent_livekit_lookups_total', { outcome: 'failed' })).toBe(1);
    expect(await read(metrics, 'lastwill_agent_livekit_lookup_duration_seconds', {}, '_count')).toBe(2);
  });
});

/** A store whose disk refuses delegations (full): the client gets an error, the metrics see it. */
class FullDiskStore extends SqliteJobStore {
  override insert(): Promise<number> {
    return Promise.reject(new Error('SQLITE_FULL: database or disk is full'));
  }
}

describe('store commits', () => {
  it('time every delegation insert and progress commit until it is durable', async () => {
    const metrics = new AgentMetrics({ jobCounts: () => undefined });
    const rig = await makeRig(dirs, { observer: metrics.engineObserver() });
    await rig.delegate({ identity: 'one' });
    await rig.delegate({ identity: 'two' });
    expect(await read(metrics, 'lastwill_agent_store_commit_duration_seconds', { operation: 'insert' }, '_count')).toBe(2);
    expect(await read(metrics, 'lastwill_agent_store_commit_duration_seconds', { operation: 'insert' }, '_sum')).toBeGreaterThan(0);
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 's1', identity: 'one' });
    expect(rig.state(ROOM, 'one')).toBe('connected');
    expect(await read(metrics, 'lastwill_agent_store_commit_duration_seconds', { operation: 'progress' }, '_count')).toBeGreaterThan(0);
    expect(await read(metrics, 'lastwill_agent_store_commit_errors_total')).toBe(0);
  });

  it('count a write that fails, and do not time it', async () => {
    const metrics = new AgentMetrics({ jobCounts: () => undefined });
    const { engine } = await makeRig(dirs, {
      store: new FullDiskStore(join(dirs.make(), 'jobs.sqlite'), 'normal'),
      observer: metrics.engineObserver(),
    });
    await expect(engine.delegate(delegation('x'))).rejects.toThrow(/disk is full/);
    expect(await read(metrics, 'lastwill_agent_store_commit_errors_total', { operation: 'insert' })).toBe(1);
    expect(await read(metrics, 'lastwill_agent_store_commit_duration_seconds', { operation: 'insert' }, '_count')).toBe(0);
  });
});

describe('readiness', () => {
  it('is 0 until the jobs are restored, 1 while /readyz answers 200, 0 once closing', async () => {
    const dataDir = dirs.make();
    const config = loadConfig(agentSettings, { env: { LASTWILL_AGENT_DATA_DIR: dataDir }, envHook: agentEnvHook });
    const agent = buildAgent({ config, log: silentLogger() });
    try {
      expect(await read(agent.metrics, 'lastwill_agent_ready')).toBe(0);
      await agent.start();
      const { url } = await agent.app.listen('127.0.0.1', 0);
      expect((await fetch(`${url}/readyz`)).status).toBe(200);
      const text = await (await fetch(`${url}/metrics`)).text();
      expect(text).toMatch(/^lastwill_agent_ready 1$/m);
      expect(text).toMatch(/^lastwill_agent_restarts_queued\{queue="paced"\} 0$/m);
      // Series an alert takes the increase() of exist from the start, so their first increment counts.
      expect(text).toMatch(/^lastwill_agent_webhooks_total\{event="unverified",verdict="forged"\} 0$/m);
      expect(text).toMatch(/^lastwill_agent_delayed_event_actions_total\{action="send",outcome="transient"\} 0$/m);
      expect(text).toMatch(/^lastwill_agent_cluster_leases_lost_total\{reason="expired"\} 0$/m);
    } finally {
      await agent.close();
    }
    expect(await read(agent.metrics, 'lastwill_agent_ready')).toBe(0);
  });
});
