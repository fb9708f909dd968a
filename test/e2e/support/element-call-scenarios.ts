// The five Element Call scenarios of issue 13, shared by test/e2e/element-call.test.ts (which
// asserts on what they observe) and `npm run demo -- --browser` (which narrates them and keeps the
// screenshots in docs/element-call/). Each one starts a fresh call in a fresh room: Alice and Bob,
// each in a browser context of their own, join with Element Call; then something happens to Alice.
// Every step is marked on the stack's timeline; the functions only observe and never judge.
import path from 'node:path';

import type { Browser } from 'playwright-core';

import type { CallPage, ChromiumProcess, ElementCallStack } from './element-call.js';
import { type DelayedEventListing, MSC4140, type RegisteredUser, requestJson } from '../../../scripts/lib/matrix-http.js';
import type { Metrics } from './flow.js';
import { sleep, waitFor } from './proc.js';
import type { ReceivedWebhook } from './webhook-sink.js';

/** Where screenshots go (nothing is saved without a directory). */
export interface Shots {
  dir?: string;
  /** Paths written so far. */
  saved: string[];
}

async function shoot(shots: Shots, page: CallPage, name: string): Promise<void> {
  if (!shots.dir) return;
  const file = path.join(shots.dir, `${name}.png`);
  await page.screenshot(file);
  shots.saved.push(file);
}

/** Alice and Bob in one call. */
export interface TwoInCall {
  roomId: string;
  alice: CallPage;
  bob: CallPage;
  /** Alice's LiveKit identity (compatibility mode, /sfu/get: `mxid:device`). */
  aliceIdentity: string;
}

/** Registers Alice and Bob, makes a room, and has both join the call in Element Call until each sees the other. */
export async function twoInCall(
  stack: ElementCallStack,
  browsers: { alice: Browser; bob: Browser },
  label: string,
): Promise<TwoInCall> {
  const { timeline } = stack;
  const aliceUser = await stack.registerUser('Alice');
  const bobUser = await stack.registerUser('Bob');
  const roomId = await stack.createRoom(aliceUser, [bobUser], `lastwill: ${label}`);
  timeline.mark('test', `${aliceUser.userId} and ${bobUser.userId} in ${roomId} (${label})`);
  const alice = await stack.openCall(browsers.alice, aliceUser, roomId, 'Alice');
  timeline.mark('browser', 'Alice opened the room\'s call: the widget host loaded Element Call');
  const bob = await stack.openCall(browsers.bob, bobUser, roomId, 'Bob');
  timeline.mark('browser', 'Bob opened the same call');
  await alice.waitSees(bob);
  await bob.waitSees(alice);
  timeline.mark('browser', 'each sees the other: both memberships in the room, each plays the other\'s video');
  return { roomId, alice, bob, aliceIdentity: `${aliceUser.userId}:${aliceUser.deviceId}` };
}

/**
 * Ends a call as both closing their tabs, then waits until the agent has no live job left (both
 * hangups sent), so nothing of this call happens during the next one.
 */
export async function endCall(stack: ElementCallStack, call: TwoInCall): Promise<void> {
  await Promise.all([call.alice.close(), call.bob.close()]);
  const live = (m: Metrics) => ['waiting', 'connected', 'leaving', 'sending'].reduce((n, s) => n + m.jobs(s), 0);
  await waitFor('the agent to finish the call\'s jobs', async () => live(await stack.agent.metrics()) === 0, {
    timeoutMs: 90_000,
    intervalMs: 250,
  });
}

/** The user's delayed events on the homeserver, scheduled and finalised (read with their token). */
export async function delayedEvents(
  stack: ElementCallStack,
  user: RegisteredUser,
): Promise<{ scheduled: DelayedEventListing[]; finalised: Array<Record<string, unknown>> }> {
  const get = async (query: string) => {
    const r = await requestJson('GET', `${stack.hs.baseUrl}${MSC4140}/delayed_events${query}`, { token: user.accessToken });
    if (r.status !== 200) throw new Error(`listing delayed events: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  return {
    scheduled: ((await get('')).delayed_events ?? []) as DelayedEventListing[],
    finalised: ((await get('?status=finalised')).finalised ?? []) as Array<Record<string, unknown>>,
  };
}

/** The finalised record of one delay id, if it was finalised. */
export async function finalisedRecord(
  stack: ElementCallStack,
  user: RegisteredUser,
  delayId: string,
): Promise<Record<string, unknown> | undefined> {
  const { finalised } = await delayedEvents(stack, user);
  return finalised.find((f) => (f.delayed_event as DelayedEventListing | undefined)?.delay_id === delayId);
}

/** The agent's counters since `base`. */
export interface AgentDelta {
  restartsOk: number;
  sendsOk: number;
  sends: number;
  delegations: Record<'sfu_get' | 'get_token' | 'delegate_delayed_leave' | 'msc4195', number>;
}

export function agentDelta(now: Metrics, base: Metrics | undefined): AgentDelta {
  const d = (f: (m: Metrics) => number) => f(now) - (base ? f(base) : 0);
  const source = (s: string) => d((m) => m.delegations(s));
  return {
    restartsOk: d((m) => m.restartsOk()),
    sendsOk: d((m) => m.sendsOk()),
    sends: d((m) => m.sends()),
    delegations: {
      sfu_get: source('sfu_get'),
      get_token: source('get_token'),
      delegate_delayed_leave: source('delegate_delayed_leave'),
      msc4195: source('msc4195'),
    },
  };
}

/** LiveKit's participant_left for an identity, as the test's own webhook consumer receives it. */
function waitLeftWebhook(stack: ElementCallStack, identity: string, timeoutMs: number): Promise<ReceivedWebhook> {
  return stack.sink.waitFor(
    (w) => w.event.event === 'participant_left' && w.event.participant?.identity === identity,
    timeoutMs,
  );
}

const disconnectReason = (w: ReceivedWebhook) => String((w.json.participant as Record<string, unknown>).disconnectReason);

// ---------------------------------------------------------------------------------------------

export interface JoinResult {
  call: TwoInCall;
  /** Counters of the agent from before the join until both see each other. */
  agent: AgentDelta;
  /** Requests to the agent's client routes during the join: route → `METHOD status` → count. */
  requests: Record<string, Record<string, number>>;
}

/** Scenario 1: two browsers join the same call; each sees the other. */
export async function scenarioJoin(stack: ElementCallStack, browser: Browser, shots: Shots): Promise<JoinResult> {
  const base = await stack.agent.metrics();
  const call = await twoInCall(stack, { alice: browser, bob: browser }, 'scenario 1, join');
  await shoot(shots, call.alice, '1-joined-alice');
  await shoot(shots, call.bob, '1-joined-bob');
  const now = await stack.agent.metrics();
  const requests = (route: string) => {
    const byStatus: Record<string, number> = {};
    for (const s of now.samples) {
      if (s.name !== 'lastwill_agent_http_requests_total' || s.labels.route !== route) continue;
      const before = base.samples.find((b) => b.name === s.name && JSON.stringify(b.labels) === JSON.stringify(s.labels))?.value ?? 0;
      if (s.value > before) byStatus[`${s.labels.method} ${s.labels.status}`] = s.value - before;
    }
    return byStatus;
  };
  return {
    call,
    agent: agentDelta(now, base),
    requests: Object.fromEntries(['/sfu/get', '/get_token', '/delegate_delayed_leave'].map((r) => [r, requests(r)])),
  };
}

export interface HangupResult {
  call: TwoInCall;
  /** Alice's delay id, handed to the agent at join. */
  delayId: string;
  /** When the tab was closed / the browser killed. */
  endedAt: number;
  /** LiveKit's participant_left for Alice (when LiveKit noticed). */
  left: ReceivedWebhook;
  leftReason: string;
  /** When Bob's client saw Alice's membership end. */
  goneAt: number;
  /** Bob's tiles once Alice's membership is gone. */
  bobTilesAfter: string[];
  /** The agent's counters from before the two joined until after the hangup. */
  agent: AgentDelta;
  /** The homeserver's record of Alice's delayed leave. */
  finalised: Record<string, unknown> | undefined;
}

async function afterHangup(
  stack: ElementCallStack,
  call: TwoInCall,
  o: { delayId: string; endedAt: number; base: Metrics; detectionWaitMs: number; shots: Shots; shot: string },
): Promise<HangupResult> {
  const left = await waitLeftWebhook(stack, call.aliceIdentity, o.detectionWaitMs);
  const goneAt = await call.bob.waitMembershipGone(call.alice, o.detectionWaitMs);
  stack.timeline.mark('browser', 'Bob\'s client saw Alice\'s call membership end');
  // Element Call drops the tile once the membership is gone.
  await waitFor('Bob\'s Element Call to drop Alice\'s tile', async () => !(await call.bob.tiles()).some((t) => t.name.startsWith('Alice')), {
    timeoutMs: 15_000,
  });
  await shoot(o.shots, call.bob, o.shot);
  await sleep(200); // the agent counts the send after the homeserver answered it
  return {
    call,
    delayId: o.delayId,
    endedAt: o.endedAt,
    left,
    leftReason: disconnectReason(left),
    goneAt,
    bobTilesAfter: (await call.bob.tiles()).map((t) => t.name),
    agent: agentDelta(await stack.agent.metrics(), o.base),
    finalised: await finalisedRecord(stack, call.alice.user, o.delayId),
  };
}

/** Alice's current delayed leave: the last delay id her host got from the homeserver. */
async function currentDelayId(page: CallPage): Promise<string> {
  const ids = (await page.host()).delayIds;
  const id = ids[ids.length - 1];
  if (!id) throw new Error(`${page.name}'s Element Call scheduled no delayed leave`);
  return id;
}

/** Scenario 2: Alice closes her tab; Bob sees her membership end. */
export async function scenarioTabClosed(
  stack: ElementCallStack,
  browser: Browser,
  shots: Shots,
  detectionWaitMs: number,
): Promise<HangupResult> {
  const base = await stack.agent.metrics();
  const call = await twoInCall(stack, { alice: browser, bob: browser }, 'scenario 2, tab closed');
  const delayId = await currentDelayId(call.alice);
  const endedAt = Date.now();
  await call.alice.closeTab();
  stack.timeline.mark('browser', 'Alice closed her tab (no hangup sent by Element Call: its host is gone with it)');
  return afterHangup(stack, call, { delayId, endedAt, base, detectionWaitMs, shots, shot: '2-tab-closed-bob' });
}

/** Scenario 3: Alice's browser process is SIGKILLed; Bob sees her membership end. */
export async function scenarioKilled(
  stack: ElementCallStack,
  browser: Browser,
  shots: Shots,
  detectionWaitMs: number,
): Promise<HangupResult & { aliceBrowser: ChromiumProcess }> {
  const aliceBrowser = await stack.launchBrowser('alice-own-process');
  const base = await stack.agent.metrics();
  const call = await twoInCall(stack, { alice: aliceBrowser.browser, bob: browser }, 'scenario 3, browser killed');
  const delayId = await currentDelayId(call.alice);
  const endedAt = Date.now();
  await aliceBrowser.kill();
  stack.timeline.mark('browser', `Alice's browser process was SIGKILLed (pid ${aliceBrowser.pid}): no unload, no goodbye`);
  // What Bob sees until LiveKit notices: Alice's tile, her video stopped.
  await sleep(3_000);
  await shoot(shots, call.bob, '3-killed-bob-before-detection');
  return { ...(await afterHangup(stack, call, { delayId, endedAt, base, detectionWaitMs, shots, shot: '3-killed-bob' })), aliceBrowser };
}

export interface ReloadResult {
  call: TwoInCall;
  delayBefore: string;
  delayAfter: string;
  reloadedAt: number;
  /** When Bob saw Alice's old membership end (undefined when he never did). */
  oldGoneAt: number | undefined;
  /** When Bob saw Alice back (membership and video). */
  backAt: number;
  /** Whether Bob still sees Alice after the hold. */
  presentAfterHold: boolean;
  /** Alice's delayed events after the hold. */
  after: { scheduled: DelayedEventListing[]; finalised: Array<Record<string, unknown>> };
  agent: AgentDelta;
}

/** Scenario 4: Alice reloads the page and rejoins; her new session is kept for `holdMs` and beyond. */
export async function scenarioReload(
  stack: ElementCallStack,
  browser: Browser,
  shots: Shots,
  holdMs: number,
): Promise<ReloadResult> {
  const call = await twoInCall(stack, { alice: browser, bob: browser }, 'scenario 4, reload');
  const delayBefore = await currentDelayId(call.alice);
  const base = await stack.agent.metrics();
  // Bob's view of Alice's membership while she reloads, sampled by his host page.
  let oldGoneAt: number | undefined;
  let watching = true;
  const watch = (async () => {
    while (watching) {
      if (oldGoneAt === undefined && !(await call.bob.sees(call.alice).catch(() => true))) {
        oldGoneAt = Date.now();
        stack.timeline.mark('browser', 'Bob saw Alice\'s old membership end while she reloads');
        await shoot(shots, call.bob, '4-reloading-bob');
      }
      await sleep(50);
    }
  })();
  const reloadedAt = Date.now();
  await call.alice.reload();
  stack.timeline.mark('browser', 'Alice reloaded the page: a new widget host, a new Element Call session');
  await call.bob.waitSees(call.alice);
  await call.alice.waitSees(call.bob);
  const backAt = Date.now();
  watching = false;
  await watch;
  const delayAfter = await currentDelayId(call.alice);
  stack.timeline.mark('browser', 'Alice is back in the call: Bob sees her membership and her video again');
  await shoot(shots, call.bob, '4-reloaded-bob');
  await sleep(holdMs);
  const presentAfterHold = (await call.bob.sees(call.alice)) && (await call.alice.sees(call.bob));
  stack.timeline.mark('browser', `${holdMs / 1000} s later Bob ${presentAfterHold ? 'still sees' : 'no longer sees'} Alice's new session`);
  await shoot(shots, call.alice, '4-reloaded-alice');
  return {
    call,
    delayBefore,
    delayAfter,
    reloadedAt,
    oldGoneAt,
    backAt,
    presentAfterHold,
    after: await delayedEvents(stack, call.alice.user),
    agent: agentDelta(await stack.agent.metrics(), base),
  };
}

export interface AgentRestartResult {
  call: TwoInCall;
  restartedAt: number;
  /** Both memberships, as each host sees the other after the hold. */
  presentAfterHold: boolean;
  /** The agent's jobs in `connected` right after its restart (restored from its store). */
  connectedAfterRestart: number;
  /** The agent's counters from its restart until after the hold. */
  agent: AgentDelta;
  /** Each user's scheduled delayed leave after the hold. */
  scheduled: { alice: DelayedEventListing[]; bob: DelayedEventListing[] };
}

/** Scenario 5: `lastwill all` (agent and homeserver) restarts while both are in the call. */
export async function scenarioAgentRestart(
  stack: ElementCallStack,
  browser: Browser,
  shots: Shots,
  holdMs: number,
): Promise<AgentRestartResult> {
  const call = await twoInCall(stack, { alice: browser, bob: browser }, 'scenario 5, agent restart');
  const restartedAt = Date.now();
  const exit = await stack.agent.stop();
  stack.timeline.mark('agent', `lastwill all stopped (SIGTERM, exit ${exit.code}): its jobs stay in its store`);
  await stack.agent.start();
  const after = await stack.agent.metrics();
  const connectedAfterRestart = after.jobs('connected');
  stack.timeline.mark('agent', `lastwill all started again: ${connectedAfterRestart} jobs restored as connected`);
  await sleep(holdMs);
  const presentAfterHold = (await call.bob.sees(call.alice)) && (await call.alice.sees(call.bob));
  await call.alice.waitSees(call.bob, 10_000);
  await call.bob.waitSees(call.alice, 10_000);
  stack.timeline.mark('browser', `${holdMs / 1000} s after the restart both ${presentAfterHold ? 'still see' : 'no longer see'} each other`);
  await shoot(shots, call.alice, '5-agent-restarted-alice');
  return {
    call,
    restartedAt,
    presentAfterHold,
    connectedAfterRestart,
    agent: agentDelta(await stack.agent.metrics(), after),
    scheduled: {
      alice: (await delayedEvents(stack, call.alice.user)).scheduled,
      bob: (await delayedEvents(stack, call.bob.user)).scheduled,
    },
  };
}
