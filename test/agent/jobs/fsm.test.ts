import { readFileSync } from 'node:fs';

import { afterEach, describe, expect, it } from 'vitest';

import type { JobState } from '../../../src/agent/contracts.js';
import {
  ACTION_DOCS,
  type Action,
  fsmTable,
  IGNORED,
  JOB_STATES,
  NO_GRACE_TRANSITIONS,
  renderFsmMarkdown,
  SIGNALS,
  step,
  TRANSITIONS,
} from '../../../src/agent/jobs/fsm.js';
import type { EngineSettings } from '../../../src/agent/jobs/index.js';
import { GRACE_MS, IDENTITY, makeRig, type Rig, ROOM, TempDirs } from './harness.js';

const DELAY = 100_000;
const BACKOFF = 1000;
const RETRY_AFTER = 7000;
/** restartFraction × delay × (1 − 0.05 × random), random = 0.5. */
const NEXT_RESTART = Math.round(0.8 * DELAY * (1 - 0.05 * 0.5));
const GRACE = 30_000;

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

describe('FSM table', () => {
  it('makes every (state, signal) pair exactly one of transition or ignored', () => {
    const transitions = new Set(TRANSITIONS.map((t) => `${t.state}|${t.signal}`));
    const ignored = new Set(IGNORED.map((i) => `${i.state}|${i.signal}`));
    expect(transitions.size).toBe(TRANSITIONS.length);
    expect(ignored.size).toBe(IGNORED.length);
    for (const key of transitions) expect(ignored.has(key), key).toBe(false);
    const all = JOB_STATES.flatMap((s) => SIGNALS.map((g) => `${s}|${g}`));
    for (const key of all) expect(transitions.has(key) || ignored.has(key), key).toBe(true);
    expect(transitions.size + ignored.size).toBe(all.length);
    expect(fsmTable()).toHaveLength(all.length);
    // The grace-off variant only changes cells that the default table has as transitions.
    for (const t of NO_GRACE_TRANSITIONS) expect(transitions.has(`${t.state}|${t.signal}`)).toBe(true);
    expect(fsmTable({ disconnectGrace: false })).toHaveLength(all.length);
  });

  it('never leaves a terminal state and reaches every state', () => {
    const terminal: JobState[] = ['sent', 'aborted', 'replaced', 'expired'];
    // Only a replacement leads into cancelling, and nothing leads out of it but to an end.
    for (const t of TRANSITIONS.filter((t) => t.to === 'cancelling')) {
      expect(t.signal === 'replace' || t.state === 'cancelling', `${t.state}|${t.signal}`).toBe(true);
    }
    for (const t of TRANSITIONS.filter((t) => t.state === 'cancelling')) {
      expect(['cancelling', ...terminal]).toContain(t.to);
    }
    for (const t of TRANSITIONS) expect(terminal).not.toContain(t.state);
    const reached = new Set(TRANSITIONS.map((t) => t.to));
    for (const s of JOB_STATES.filter((s) => s !== 'waiting')) expect(reached.has(s), s).toBe(true);
    for (const t of TRANSITIONS) for (const a of t.actions) expect(ACTION_DOCS).toHaveProperty(a);
  });

  it('renders every transition and the ignored pairs as Markdown', () => {
    const md = renderFsmMarkdown();
    for (const t of [...TRANSITIONS, ...NO_GRACE_TRANSITIONS]) {
      expect(md).toContain(`| ${t.state} | ${t.signal} | ${t.to} | ${t.actions.join(', ') || '—'} |`);
    }
    expect(md).toContain('| sent, aborted, replaced, expired | all | terminal states ignore everything |');
    expect(step('sent', 'joined')).toBeNull();
    // The documented copy (docs/agent.md) is generated from the table, so it cannot drift from it.
    const doc = readFileSync(new URL('../../../docs/agent.md', import.meta.url), 'utf8');
    const section = /<!-- fsm:start -->\n([\s\S]*)<!-- fsm:end -->/.exec(doc);
    expect(section?.[1]).toBe(md);
    expect(step('waiting', 'joined')?.to).toBe('connected');
    expect(step('connected', 'left')?.to).toBe('leaving');
    expect(step('connected', 'left', { disconnectGrace: false })?.to).toBe('sending');
  });
});

/** Drives a real engine into `state` through its public inputs; returns the job's id. */
async function reach(
  state: JobState,
  settings: Partial<EngineSettings> = {},
): Promise<{ rig: Rig; jobId: number }> {
  const rig = await makeRig(dirs, {
    settings: { backoff: { initialMs: BACKOFF, factor: 1, maxMs: BACKOFF, jitter: 0.5 }, ...settings },
  });
  const id = () => rig.engine.get(ROOM, IDENTITY)!.jobId;
  const connect = async () => {
    await rig.delegate({ delayTimeoutMs: DELAY });
    await rig.signal({ kind: 'joined', livekitRoom: ROOM, sid: 'S1', joinedAtMs: rig.clock.now() });
  };
  const leave = () =>
    rig.signal({ kind: 'left', livekitRoom: ROOM, sid: 'S1', disconnectReason: 'CLIENT_INITIATED' });
  switch (state) {
    case 'waiting':
      await rig.delegate({ delayTimeoutMs: DELAY });
      break;
    case 'connected':
      await connect();
      break;
    case 'leaving':
      await connect();
      await leave();
      break;
    case 'sending':
      // The send failed and waits for its retry (nothing in flight: a cell's restart runs at once).
      await connect();
      rig.actions.script.send.push({ kind: 'transient', detail: '502' });
      await leave();
      await rig.advance(GRACE_MS);
      break;
    case 'sent':
      await connect();
      await leave();
      await rig.advance(GRACE_MS);
      break;
    case 'aborted':
      rig.actions.script.restart.push({ kind: 'not_found' });
      await connect();
      break;
    case 'cancelling':
    case 'replaced': {
      // The replaced job's cancel fails and waits for its retry, or lands.
      await connect();
      const old = id();
      if (state === 'cancelling') rig.actions.script.cancel.push({ kind: 'transient', detail: '502' });
      await rig.delegate({ delayTimeoutMs: DELAY, delayId: 'syd_delay_two' });
      await rig.advance(0);
      expect(rig.actions.of('cancel', 'syd_delay_one')).toHaveLength(1);
      expect(rig.engine.getById(old)?.state).toBe(state);
      return { rig, jobId: old };
    }
    case 'expired':
      rig.actions.defaults.restart = { kind: 'transient', detail: '502' };
      await connect();
      await rig.advance(DELAY + 1);
      rig.actions.defaults.restart = { kind: 'ok' };
      break;
  }
  expect(rig.state()).toBe(state);
  return { rig, jobId: id() };
}

/** Asserts that `count()` stays put until just before `after` ms and grows by one at `after`. */
async function expectAfter(rig: Rig, count: () => number, after: number): Promise<void> {
  const before = count();
  await rig.advance(after - 1);
  expect(count()).toBe(before);
  await rig.advance(1);
  expect(count()).toBe(before + 1);
}

type Effect = 'restart' | 'send' | 'cancel' | 'lookup';

const TIMED: Partial<Record<Action, { what: Effect; after: number }>> = {
  retryLookup: { what: 'lookup', after: BACKOFF },
  scheduleRestart: { what: 'restart', after: NEXT_RESTART },
  backoffRestart: { what: 'restart', after: BACKOFF },
  pauseRestarts: { what: 'restart', after: RETRY_AFTER },
  backoffSend: { what: 'send', after: BACKOFF },
  retryAfterSend: { what: 'send', after: RETRY_AFTER },
  backoffCancel: { what: 'cancel', after: BACKOFF },
  retryAfterCancel: { what: 'cancel', after: RETRY_AFTER },
  leaveGrace: { what: 'lookup', after: GRACE_MS },
};

const NO_GRACE: Partial<EngineSettings> = { disconnectGraceMs: 0 };
const NO_GRACE_KEYS = new Set(NO_GRACE_TRANSITIONS.map((t) => `${t.state}|${t.signal}`));

describe('every FSM cell, through a real engine', () => {
  const cells = [
    ...fsmTable().map((cell) => ({ cell, settings: {}, variant: '' })),
    // With the grace off, the cells that differ (the rest are the same table).
    ...fsmTable({ disconnectGrace: false })
      .filter((cell) => NO_GRACE_KEYS.has(`${cell.state}|${cell.signal}`))
      .map((cell) => ({ cell, settings: NO_GRACE, variant: 'grace off: ' })),
  ];
  for (const { cell, settings, variant } of cells) {
    const outcome = cell.kind === 'ignored' ? 'ignored' : `${cell.to} [${cell.actions.join(', ')}]`;
    const name = `${variant}${cell.state} × ${cell.signal} → ${outcome}`;
    it(name, async () => {
      const { rig, jobId } = await reach(cell.state, settings);
      // From here on nothing completes on its own, so every effect seen is the cell's.
      rig.actions.hold = { restart: true, send: true, cancel: true };
      rig.presence.hold = true;
      const calls = (what: Effect) =>
        what === 'lookup' ? rig.presence.calls.length : rig.actions.of(what).length;
      const effects = () => ({
        restart: calls('restart'),
        send: calls('send'),
        cancel: calls('cancel'),
        lookup: calls('lookup'),
      });
      const before = rig.engine.getById(jobId)!;
      const counts = effects();
      const transitions = rig.transitions.length;
      const now = rig.clock.now();

      expect(
        rig.engine.injectSignal(jobId, cell.signal, {
          session: { identity: IDENTITY, sid: 'S-new', joinedAtMs: now },
          retryAfterMs: RETRY_AFTER,
        }),
      ).toBe(true);
      await rig.advance(0);
      const after = rig.engine.getById(jobId)!;

      if (cell.kind === 'ignored') {
        expect(after).toEqual(before);
        expect(rig.transitions).toHaveLength(transitions);
        expect(effects()).toEqual(counts);
        return;
      }

      expect(after.state).toBe(cell.to);
      expect(rig.transitions.slice(transitions)).toEqual([
        { from: cell.state, to: cell.to, signal: cell.signal },
      ]);
      const has = (a: Action) => cell.actions.includes(a);
      expect(after.sid).toBe(has('adopt') ? 'S-new' : before.sid);
      expect(calls('restart')).toBe(counts.restart + (has('restart') ? 1 : 0));
      expect(calls('send')).toBe(counts.send + (has('send') ? 1 : 0));
      expect(calls('cancel')).toBe(counts.cancel + (has('cancel') ? 1 : 0));
      expect(calls('lookup')).toBe(counts.lookup + (has('lookup') ? 1 : 0));
      if (has('armDeadline') || has('scheduleRestart')) expect(after.deadlineMs).toBe(now + DELAY);
      if (has('grace')) expect(after.deadlineMs).toBe(now + GRACE);
      // Out of waiting, a send or cancel gets the budget of min(delay, maxWaitingMs) (here the delay).
      if (['sending', 'cancelling'].includes(cell.to) && cell.state === 'waiting') {
        expect(after.deadlineMs).toBe(now + DELAY);
      } else if (cell.to === 'cancelling') expect(after.deadlineMs).toBe(before.deadlineMs);
      if (!has('armDeadline') && !has('scheduleRestart') && !has('grace') && cell.to === cell.state) {
        expect(after.deadlineMs).toBe(before.deadlineMs);
      }

      const timed = cell.actions.map((a) => TIMED[a]).filter((t) => t !== undefined);
      expect(timed.length).toBeLessThanOrEqual(1);
      if (timed[0]) await expectAfter(rig, () => calls(timed[0]!.what), timed[0].after);

      if (!['waiting', 'connected', 'leaving', 'sending', 'cancelling'].includes(cell.to)) {
        // A finished job has no timers left: nothing at all happens any more.
        // (A replacement keeps working under another delay id; only the old job must be silent.)
        const mine = () =>
          rig.actions.of('restart', 'syd_delay_one').length +
          rig.actions.of('send', 'syd_delay_one').length +
          rig.actions.of('cancel', 'syd_delay_one').length +
          (cell.to === 'replaced' ? 0 : rig.presence.calls.length);
        const total = mine();
        await rig.advance(10 * DELAY);
        expect(mine()).toBe(total);
        expect(rig.engine.getById(jobId)?.state).toBe(cell.to);
      }
    });
  }
});
