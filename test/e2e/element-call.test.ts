// Issue 13: Element Call itself (the widget build Element Web and Element X embed, pinned in
// package.json), in headless Chromium, against `lastwill all` and a real LiveKit server. A small
// widget host (test/e2e/element-call/host.ts) plays Element Web's part. Element Call finds the agent
// where the homeserver announces it (/rtc/transports), gets its LiveKit token from it and hands it its
// delayed hangup; these tests watch, from the other browser, that hangups happen when they should
// and only then. The scenarios themselves live in support/element-call-scenarios.ts (the demo runs
// them too).
//
// Needs what the other e2e tests need (LiveKit, root for the network namespace) plus Debian's
// chromium (scripts/provision-chromium.sh): skipped with the reason when one is missing, except with
// CI=true, where that fails.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  ELEMENT_CALL_VERSION,
  ensureChromium,
  type ChromiumProcess,
  type ElementCallStack,
  startElementCallStack,
} from './support/element-call.js';
import {
  delayedEvents,
  endCall,
  finalisedRecord,
  type HangupResult,
  scenarioAgentRestart,
  scenarioJoin,
  scenarioKilled,
  scenarioReload,
  scenarioTabClosed,
  type Shots,
  type TwoInCall,
} from './support/element-call-scenarios.js';
import { formatEntry } from '../../scripts/lib/timeline.js';
import { flowSkipReason } from './support/flow.js';

const skip = (await flowSkipReason('bundled')) ?? (await ensureChromium()).skip;
if (skip) console.warn(`[element-call] skipping: ${skip}`);

const log = (...a: unknown[]) => console.log('[element-call]', ...a);
const secs = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

/** Element Call's delegated hangup (config delegated_delayed_leave, its default): one hour. */
const DELEGATED_DELAY_MS = 3_600_000;
/** LiveKit's own detection of a vanished participant: 15–25 s; generous wait. */
const DETECTION_WAIT_MS = 60_000;
/** After LiveKit reports a participant gone: the agent's disconnect grace (1 s) and its send. */
const AFTER_DETECTION_BOUND_MS = 3_000;
/** How long a session that must stay is watched. */
const HOLD_MS = 10_000;

describe.skipIf(skip)(`Element Call ${ELEMENT_CALL_VERSION} in Chromium against lastwill all`, () => {
  let stack: ElementCallStack;
  let shared: ChromiumProcess;
  let calls: TwoInCall[] = [];
  let from = 0;
  let failed = false;
  const shots: Shots = { dir: mkdtempSync(path.join(os.tmpdir(), 'lastwill-ec-shots-')), saved: [] };

  beforeAll(async () => {
    stack = await startElementCallStack();
    // One browser for both people (two contexts: separate storage, as two machines); scenario 3
    // starts one of its own for Alice, to kill it.
    shared = await stack.launchBrowser('shared');
    log(`LiveKit ${stack.lk.url}, homeserver ${stack.hs.baseUrl}, agent ${stack.agent.url}, web ${stack.web.url}; screenshots in ${shots.dir}`);
  }, 180_000);

  afterAll(async () => {
    await stack?.close();
    // The screenshots are worth keeping when something failed (or when asked to keep everything).
    if (failed || process.env.LASTWILL_E2E_KEEP === '1') log(`screenshots kept in ${shots.dir}`);
    else rmSync(shots.dir!, { recursive: true, force: true });
  }, 60_000);

  afterEach(async (t) => {
    if (t.task.result?.state === 'fail') {
      failed = true;
      console.log(stack.dumpLogs());
      for (const c of calls) for (const p of [c.alice, c.bob]) console.log(`--- ${p.name}'s page console ---\n${p.consoleTail()}`);
    }
    // A test that stopped lastwill all must not leave the next one without it.
    if (!stack.agent.running()) await stack.agent.start();
    // Both leave and the agent sends their hangups now, not during the next test.
    for (const c of calls) await endCall(stack, c);
    calls = [];
    log(`timeline of "${t.task.name}":\n${stack.timeline.entries.slice(from).map((e) => formatEntry(e, false)).join('\n')}`);
    from = stack.timeline.entries.length;
  }, 120_000);

  /** The checks after Alice's hangup was left to the agent (tab closed, browser killed). */
  function expectHungUpByAgent(r: HangupResult): void {
    log(
      `ended -> LiveKit's participant_left (${r.leftReason}) ${secs(r.left.receivedAt - r.endedAt)}, ` +
        `-> Bob saw the membership end ${secs(r.goneAt - r.left.receivedAt)} later; agent: ${JSON.stringify(r.agent)}`,
    );
    // Within LiveKit's detection time plus the agent's grace: never before LiveKit saw her go.
    expect(r.goneAt).toBeGreaterThanOrEqual(r.left.receivedAt);
    expect(r.goneAt - r.left.receivedAt).toBeLessThan(AFTER_DETECTION_BOUND_MS);
    // Bob's Element Call shows only himself again.
    expect(r.bobTilesAfter.some((n) => n.startsWith('Alice'))).toBe(false);
    // The agent sent exactly this hangup (Bob's job is untouched), and the homeserver sent it on
    // request, an hour before its own timeout.
    expect(r.agent.sendsOk).toBe(1);
    expect(r.finalised).toMatchObject({ outcome: 'send', reason: 'action' });
    expect((r.finalised?.delayed_event as { delay?: number } | undefined)?.delay).toBe(DELEGATED_DELAY_MS);
  }

  it('1. two browsers join the same call; each sees the other (membership and video), and hands its hangup to the agent', async () => {
    const r = await scenarioJoin(stack, shared.browser, shots);
    calls.push(r.call);
    const { alice, bob } = r.call;
    for (const [me, other] of [[alice, bob], [bob, alice]] as const) {
      // The other's membership as this browser's client sees it, and the other's video playing.
      expect(await me.sees(other)).toBe(true);
      const tile = (await me.tiles()).find((t) => t.name.startsWith(other.name));
      expect(tile?.videoWidth).toBeGreaterThan(0);
      const host = await me.host();
      expect(host.errors).toEqual([]);
      const actions = host.actions.map((a) => a.action);
      log(`${me.name}'s Element Call asked its host for: ${[...new Set(actions)].join(', ')}`);
      // It found the agent through its host, at the homeserver's /rtc/transports.
      expect(host.actions.find((a) => a.action === 'org.matrix.msc4515.get_rtc_transports')?.outcome).toBe('ok');
      // It scheduled its hangup as a delayed call-member state event with the delegated delay,
      // then published its membership, through its host (MSC4157).
      const delayed = host.actions.find((a) => a.action === 'send_event' && a.detail.includes(' delay='));
      expect(delayed).toMatchObject({ outcome: 'ok' });
      expect(delayed?.detail).toContain(`org.matrix.msc3401.call.member state_key=_${me.user.userId}_${me.user.deviceId}_m.call delay=${DELEGATED_DELAY_MS}`);
      expect(actions).toContain('get_openid');
      // It never asked its host for a LiveKit token or a delegation (MSC4533): it does both itself.
      expect(actions.filter((a) => a.includes('msc4533'))).toEqual([]);
      // The homeserver holds the delayed hangup the host got back, due in an hour.
      const { scheduled } = await delayedEvents(stack, me.user);
      expect(scheduled.map((d) => [d.delay_id, d.delay])).toEqual([[host.delayIds.at(-1), DELEGATED_DELAY_MS]]);
    }
    // Both delegated through /sfu/get (the legacy token request, with delay_id): compatibility mode.
    // (/get_token may be asked for a token without delay fields: for a connection to the other's
    // transport that Element Call drops once it sees it is its own.)
    log(`requests to the agent during the join: ${JSON.stringify(r.requests)}`);
    expect(r.agent.delegations).toEqual({ sfu_get: 2, get_token: 0, delegate_delayed_leave: 0, msc4195: 0 });
    // /delegate_delayed_leave saw only Element Call's body-less probes, whose non-404 answer told it
    // the service takes delegations (so it chose the delegated one-hour delay).
    expect(Object.keys(r.requests['/delegate_delayed_leave']!)).toEqual(['POST 400']);
    // The agent restarted each delayed hangup once it saw the participant in LiveKit.
    expect(r.agent.restartsOk).toBeGreaterThanOrEqual(2);
    expect((await stack.agent.metrics()).jobs('connected')).toBe(2);
  }, 120_000);

  it('2. Alice closes her tab: Bob sees her membership end within LiveKit\'s detection plus the agent\'s grace', async () => {
    const r = await scenarioTabClosed(stack, shared.browser, shots, DETECTION_WAIT_MS);
    calls.push(r.call);
    // Her LiveKit client said goodbye on pagehide: LiveKit knew at once.
    expect(r.leftReason).toBe('CLIENT_INITIATED');
    expectHungUpByAgent(r);
  }, 120_000);

  it('3. Alice\'s browser process is SIGKILLed: same, and the agent\'s restart and send are in its metrics', async () => {
    const r = await scenarioKilled(stack, shared.browser, shots, DETECTION_WAIT_MS);
    calls.push(r.call);
    // No goodbye: LiveKit only noticed when her connection timed out.
    expect(r.leftReason).not.toBe('CLIENT_INITIATED');
    expectHungUpByAgent(r);
    // The agent restarted both delayed hangups as it saw the two connect, and its send of Alice's
    // (the only one) is counted as such.
    expect(r.agent.restartsOk).toBeGreaterThanOrEqual(2);
    expect(r.agent.sends).toBe(1);
  }, 120_000);

  it('4. Alice reloads the page and rejoins: her new session is not hung up', async () => {
    const r = await scenarioReload(stack, shared.browser, shots, HOLD_MS);
    calls.push(r.call);
    log(
      `reload -> old membership gone for Bob ${r.oldGoneAt ? secs(r.oldGoneAt - r.reloadedAt) : 'never'}, ` +
        `back ${secs(r.backAt - r.reloadedAt)}; agent: ${JSON.stringify(r.agent)}`,
    );
    // A new session with a new delayed hangup, handed to the agent again through /sfu/get.
    expect(r.delayAfter).not.toBe(r.delayBefore);
    expect(r.agent.delegations.sfu_get).toBe(1);
    // The new session stays: Bob still sees her after the hold, and only her new hangup is scheduled.
    expect(r.presentAfterHold).toBe(true);
    expect(r.after.scheduled.map((d) => d.delay_id)).toEqual([r.delayAfter]);
    // The old session's hangup is not left behind to fire later (it would end the new membership,
    // same state key): the agent sent it when the old session left LiveKit, and Bob saw the old
    // membership end before the new session was back.
    const old = await finalisedRecord(stack, r.call.alice.user, r.delayBefore);
    expect(old).toMatchObject({ outcome: 'send', reason: 'action' });
    expect(r.agent.sendsOk).toBe(1);
    expect(r.oldGoneAt).toBeDefined();
    expect(r.oldGoneAt!).toBeLessThan(r.backAt);
  }, 120_000);

  it('5. lastwill all (agent and homeserver) restarts while both are in the call: nothing ends', async () => {
    const r = await scenarioAgentRestart(stack, shared.browser, shots, HOLD_MS);
    calls.push(r.call);
    log(`restart -> ${r.connectedAfterRestart} jobs restored connected; agent since: ${JSON.stringify(r.agent)}`);
    expect(r.presentAfterHold).toBe(true);
    // Both jobs came back from the store, connected, and nothing was sent.
    expect(r.connectedAfterRestart).toBe(2);
    expect(r.agent.sends).toBe(0);
    // Both hangups are still scheduled, an hour out.
    expect(r.scheduled.alice.map((d) => d.delay)).toEqual([DELEGATED_DELAY_MS]);
    expect(r.scheduled.bob.map((d) => d.delay)).toEqual([DELEGATED_DELAY_MS]);
  }, 120_000);
});
