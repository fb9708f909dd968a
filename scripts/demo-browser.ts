// `npm run demo -- --browser`: Element Call itself, in headless Chromium, against `lastwill all` and a
// real LiveKit server, narrated: the five scenarios of test/e2e/element-call.test.ts one after the
// other, with a timeline (seconds since start, who did what) and a screenshot of the call page at
// each step, written to docs/element-call/ (`--shots DIR` elsewhere, `--shots ''` for none).
//
// Needs what `npm run demo` needs (dist/, LiveKit, root for the network namespace) and Debian's
// chromium (scripts/provision-chromium.sh installs it when missing). About two minutes, most of it
// waiting for LiveKit to notice the killed browser.
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import { ELEMENT_CALL_VERSION, ensureChromium, startElementCallStack, type ElementCallStack } from '../test/e2e/support/element-call.js';
import {
  endCall,
  scenarioAgentRestart,
  scenarioJoin,
  scenarioKilled,
  scenarioReload,
  scenarioTabClosed,
  type Shots,
  type TwoInCall,
} from '../test/e2e/support/element-call-scenarios.js';
import { flowSkipReason, watchAgent } from '../test/e2e/support/flow.js';
import { REPO_ROOT } from './lib/proc.js';
import { formatEntry, Timeline } from './lib/timeline.js';

const HOLD_MS = 10_000;
const DETECTION_WAIT_MS = 60_000;
const secs = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

function banner(text: string): void {
  console.log(`\n${text}\n${'='.repeat(text.length)}`);
}

function shotsDir(): string | undefined {
  const i = process.argv.indexOf('--shots');
  const dir = i >= 0 ? process.argv[i + 1] : path.join(REPO_ROOT, 'docs', 'element-call');
  return dir ? path.resolve(dir) : undefined;
}

export async function browserDemo(): Promise<number> {
  banner(`lastwill demo: Element Call ${ELEMENT_CALL_VERSION} in headless Chromium, its hangups kept honest`);
  const skip = (await flowSkipReason('bundled')) ?? (await ensureChromium()).skip;
  if (skip) {
    console.log(`Cannot run here: ${skip}`);
    return 1;
  }
  const shots: Shots = { dir: shotsDir(), saved: [] };
  if (shots.dir) mkdirSync(shots.dir, { recursive: true });
  console.log(
    [
      'Parties:',
      '  livekit     LiveKit v1.13.5 in a private network namespace',
      '  homeserver  `lastwill all`: the bundled homeserver (MSC4140 delayed events, /rtc/transports) …',
      '  agent       … and the agent (lk-jwt-service compatible) in the same process',
      '  browser     Debian\'s Chromium in LiveKit\'s namespace: per person a widget host page (matrix-js-sdk',
      '              + matrix-widget-api, in Element Web\'s role) with Element Call in an iframe',
      '',
      'Timeline (seconds since start, who, what):',
    ].join('\n'),
  );

  const timeline = new Timeline();
  timeline.onEntry((e) => console.log(formatEntry(e, false)));
  let stack: ElementCallStack | undefined;
  let stopWatching: (() => void) | undefined;
  const calls: TwoInCall[] = [];
  const cleanup = async () => {
    stopWatching?.();
    await stack?.close().catch(() => undefined);
  };
  process.once('SIGINT', () => {
    console.log('\ninterrupted: cleaning up');
    void cleanup().then(() => process.exit(130));
  });

  try {
    stack = await startElementCallStack({ timeline });
    stopWatching = watchAgent(stack, 50);
    const { browser } = await stack.launchBrowser('shared');
    const done = async () => {
      const c = calls.pop();
      if (c && stack) await endCall(stack, c);
    };
    const summary: string[] = [];

    banner('1. Alice and Bob join the same call');
    const join = await scenarioJoin(stack, browser, shots);
    calls.push(join.call);
    const host = await join.call.alice.host();
    const actions = [...new Set([...host.actions, ...(await join.call.bob.host()).actions].map((a) => a.action))];
    summary.push(
      `1. joined: each sees the other; Element Call asked its host for ${actions.join(', ')}`,
      `   delegations by route: ${JSON.stringify(join.agent.delegations)}; requests to the agent: ${JSON.stringify(join.requests)}`,
    );
    await done();

    banner('2. Alice closes her tab');
    const closed = await scenarioTabClosed(stack, browser, shots, DETECTION_WAIT_MS);
    calls.push(closed.call);
    summary.push(
      `2. tab closed: LiveKit saw her leave after ${secs(closed.left.receivedAt - closed.endedAt)} (${closed.leftReason}), ` +
        `Bob saw the membership end ${secs(closed.goneAt - closed.left.receivedAt)} later (${secs(closed.goneAt - closed.endedAt)} in all)`,
    );
    await done();

    banner('3. Alice\'s browser process is killed (SIGKILL)');
    const killed = await scenarioKilled(stack, browser, shots, DETECTION_WAIT_MS);
    calls.push(killed.call);
    summary.push(
      `3. SIGKILL: LiveKit noticed after ${secs(killed.left.receivedAt - killed.endedAt)} (${killed.leftReason}), ` +
        `Bob saw the membership end ${secs(killed.goneAt - killed.left.receivedAt)} later; agent: ${killed.agent.restartsOk} restarts ok, ` +
        `${killed.agent.sendsOk} send ok`,
    );
    await done();

    banner('4. Alice reloads the page and rejoins');
    const reload = await scenarioReload(stack, browser, shots, HOLD_MS);
    calls.push(reload.call);
    summary.push(
      `4. reload: old session's membership ended ${reload.oldGoneAt ? secs(reload.oldGoneAt - reload.reloadedAt) : 'never'} ` +
        `after the reload (the agent sent its hangup), back ${secs(reload.backAt - reload.reloadedAt)}; the new session ` +
        `${reload.presentAfterHold ? 'stayed' : 'DID NOT stay'} for ${HOLD_MS / 1000} s, scheduled hangups now: ` +
        `${reload.after.scheduled.length} (the new one)`,
    );
    await done();

    banner('5. lastwill all restarts while both are in the call');
    const restart = await scenarioAgentRestart(stack, browser, shots, HOLD_MS);
    calls.push(restart.call);
    summary.push(
      `5. restart: ${restart.connectedAfterRestart} jobs restored connected, ${restart.agent.sends} sends after it; both ` +
        `${restart.presentAfterHold ? 'still in the call' : 'NOT in the call'} ${HOLD_MS / 1000} s later`,
    );
    await done();
    stopWatching();

    banner('Result');
    console.log(summary.join('\n'));
    if (shots.saved.length) console.log(`\nscreenshots:\n${shots.saved.map((f) => `  ${path.relative(process.cwd(), f)}`).join('\n')}`);
    return 0;
  } catch (err) {
    console.error(`\ndemo failed: ${(err as Error).stack ?? String(err)}`);
    if (stack) console.error(stack.dumpLogs());
    for (const c of calls) for (const p of [c.alice, c.bob]) console.error(`--- ${p.name}'s page console ---\n${p.consoleTail()}`);
    return 1;
  } finally {
    await cleanup();
  }
}
