// `npm run demo`: one MatrixRTC call, end to end, narrated.
//
// A matrix-js-sdk client joins a call with Element Call's delegated preset (its hangup, a delayed
// leave event, is scheduled an hour ahead), hands the delay_id to the lastwill agent, and a real
// LiveKit participant joins with the agent's token. Then the app dies without leaving; only the
// agent keeps the call membership alive. When the participant leaves LiveKit, the agent sends the
// hangup and a second user's client sees the membership end.
//
// Prints a timeline (time since start, who did what) with, for each step, the command(s) to redo
// it by hand. Needs `npm run build` (dist/), and for LiveKit: Go (first run builds it into .cache/)
// and root (a private network namespace keeps every packet on this machine).
//
// `npm run demo -- --browser` tells the story with Element Call itself in headless Chromium instead
// (scripts/demo-browser.ts).
import {
  flowSkipReason,
  handOver,
  setupCall,
  startFlowStack,
  watchAgent,
  type Call,
  type FlowStack,
} from '../test/e2e/support/flow.js';
import { CALL_MEMBER_TYPE, MSC4140 } from './lib/matrix-http.js';
import { sleep } from './lib/proc.js';
import { curl, formatEntry, Timeline } from './lib/timeline.js';
const HOLD_MS = 5_000;

function banner(text: string): void {
  console.log(`\n${text}\n${'='.repeat(text.length)}`);
}

async function main(): Promise<number> {
  banner('lastwill demo: the agent keeps and ends a MatrixRTC call membership (scenario 1, clean disconnect)');
  const skip = await flowSkipReason('bundled');
  if (skip) {
    console.log(`Cannot run here: ${skip}`);
    return 1;
  }
  console.log(
    [
      'Parties:',
      '  homeserver   the bundled `lastwill homeserver` (MSC4140 delayed events)',
      '  livekit      LiveKit v1.13.5 in a private network namespace',
      '  agent        `lastwill agent` (lk-jwt-service compatible), beside LiveKit',
      '  client       a matrix-js-sdk MatrixRTCSession in the role of Element Call (user alice)',
      '  participant  a real @livekit/rtc-node participant (alice\'s media connection)',
      '  observer     a second matrix-js-sdk client (user bob) watching the call membership',
      '',
      'Timeline (seconds since start, who, what; "$" lines redo the step by hand, "export" lines set',
      'the shell variables they use):',
    ].join('\n'),
  );

  const timeline = new Timeline();
  timeline.onVar((name, value) => console.log(`              export ${name}='${value}'`));
  timeline.onEntry((e) => console.log(formatEntry(e, true)));

  let stack: FlowStack | undefined;
  let call: Call | undefined;
  let stopWatching: (() => void) | undefined;
  const cleanup = async () => {
    stopWatching?.();
    await call?.close().catch(() => undefined);
    await stack?.close().catch(() => undefined);
  };
  process.once('SIGINT', () => {
    console.log('\ninterrupted: cleaning up');
    void cleanup().then(() => process.exit(130));
  });

  try {
    stack = await startFlowStack({ homeserver: 'bundled', timeline });
    stopWatching = watchAgent(stack, 50);
    call = await setupCall(stack);
    const { app } = call;
    const h = await handOver(call, { viaGetToken: true, viaDelegate: true });
    const msc4195 = await app.delegateViaHomeserver((await app.livekitServiceUrl()) ?? stack.agent.url);
    if (msc4195.status !== 200) {
      timeline.mark('homeserver', 'has no MSC4195 delegation endpoint yet; the agent got the delay_id directly');
    }

    // The agent restarts the delayed leave as soon as it sees the participant in LiveKit.
    let listed = await app.listing();
    for (let i = 0; listed && listed.running_since <= app.scheduledRunningSince && i < 60; i++) {
      await sleep(250);
      listed = await app.listing();
    }
    if (!listed || listed.running_since <= app.scheduledRunningSince) {
      throw new Error('the agent did not restart the delayed leave');
    }
    const advanced = listed.running_since - app.scheduledRunningSince;
    timeline.mark(
      'homeserver',
      `lists the delayed leave with running_since ${advanced} ms later than the client left it: ` +
        `restarted by the agent, due in ${Math.round(listed.delay / 60_000)} min`,
      [curl('GET', `$HS${MSC4140}/delayed_events`, { token: '$ALICE_TOKEN' })],
    );

    app.crash();
    await sleep(HOLD_MS);
    if (!call.membershipPresent()) throw new Error('the membership ended while the participant was connected');
    const room = encodeURIComponent(call.roomId);
    const statePath = `/_matrix/client/v3/rooms/${room}/state/${CALL_MEMBER_TYPE}/${encodeURIComponent(app.stateKey)}`;
    timeline.mark(
      'observer',
      `${HOLD_MS / 1000} s after the app died, bob still sees alice in the call (the participant is connected)`,
      [curl('GET', `$HS${statePath}`, { token: '$BOB_TOKEN' })],
    );

    timeline.mark('participant', 'leaves LiveKit cleanly (room.disconnect())', [
      '# in the participant: {"cmd":"disconnect"} on stdin, or Ctrl-C',
    ]);
    const t0 = Date.now();
    await h.participant.disconnect();
    const goneAt = await call.waitMembershipGone(30_000);
    await sleep(150); // let the metrics watcher note the send
    const fin = await app.finalised();
    const created = fin?.origin_server_ts;
    const sentAt = typeof created === 'number' ? ` at +${((created - timeline.t0) / 1000).toFixed(3)}s` : '';
    timeline.mark(
      'homeserver',
      fin
        ? `delayed leave finalised: outcome=${String(fin.outcome)}, reason=${String(fin.reason)} (sent on request, ` +
            `not by its 1 h timeout); the leave event ${String(fin.event_id ?? '')} was created${sentAt}`
        : 'the delayed leave is no longer scheduled',
      [curl('GET', `$HS${MSC4140}/delayed_events?status=finalised`, { token: '$ALICE_TOKEN' })],
    );
    stopWatching();

    banner('Result');
    const m = await stack.agent.metrics();
    console.log(
      [
        `participant left -> membership gone for bob: ${goneAt - t0} ms`,
        `agent: ${m.delegations()} delegations accepted, ${m.restartsOk()} restarts ok, ${m.sendsOk()} hangup sent`,
        `client: ${app.clientRestartsSinceSetup().length} restarts after handing over (delegated preset: every 5 min)`,
        msc4195.status === 200
          ? 'MSC4195: the homeserver accepted the delegation and forwarded it to the agent'
          : `MSC4195: POST …/io.element.msc4195/rtc/livekit/delegate_delayed_leave answered ${msc4195.status} ` +
            JSON.stringify(msc4195.body),
      ].join('\n'),
    );
    return 0;
  } catch (err) {
    console.error(`\ndemo failed: ${(err as Error).stack ?? String(err)}`);
    if (stack) console.error(stack.dumpLogs());
    return 1;
  } finally {
    await cleanup();
  }
}

// `npm run demo -- --browser`: the same story told by Element Call itself, in a browser.
process.exitCode = process.argv.includes('--browser') ? await (await import('./demo-browser.js')).browserDemo() : await main();
// matrix-js-sdk keeps retry timers of the dead app alive for a while; nothing is left to do.
process.exit();
