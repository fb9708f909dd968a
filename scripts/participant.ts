// `npm run participant`: one person in a MatrixRTC call on the local stack (`npm start`), from
// the command line, to watch the agent keep and end a call membership.
//
// It registers a user on the stack's homeserver (shared-secret registration), makes a room or
// joins `--room`, and joins the room's MatrixRTC call as Element Call does with a delegated hangup
// (matrix-js-sdk MatrixRTCSession, scripts/lib/matrixrtc.ts): the hangup is a delayed leave event
// scheduled 1 h ahead, and its delay_id goes to the agent with the LiveKit token request
// (/get_token); the agent is found through the homeserver's RTC transports (MSC4143). Then a real
// @livekit/rtc-node participant connects to LiveKit in a child process (inside the stack's network
// namespace when it has one). A second client of the same user, on its own device, watches the
// room over /sync and reports every membership it sees start and end.
//
// Commands on stdin:
//   leave   the participant leaves LiveKit cleanly and the app stops without ending its membership
//           itself: the agent's hangup, sent when LiveKit reports the participant gone, ends it
//   crash   SIGKILL of the participant process, and the app is gone too: LiveKit notices after
//           about 20 s, then the agent sends the hangup
//   freeze  SIGSTOP of the participant process (`thaw`: SIGCONT); frozen long enough, LiveKit drops
//           it and the agent hangs up, while the app itself stays in the call
//   quit    leave and exit at once, without waiting for the hangup (end of input does the same)
// After leave or crash it waits for the hangup to reach the room, says so and exits 0 (1 when it is
// not seen within 2 minutes).
//
//   npm run participant -- [--state .data/stack.json] [--room ROOM_ID] [--name LOCALPART]
//   npm run participant -- --homeserver URL --registration-secret SECRET [--agent URL] [--room …]
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import {
  createCallRoom,
  DELEGATED_PRESET,
  joinRoom,
  login,
  registerWithSharedSecret,
  rtcTransports,
  startApp,
  startObserver,
} from './lib/matrixrtc.js';
import { enterNetns, type NetnsEntry } from './lib/netns.js';
import { startParticipant } from './lib/participant.js';
import { DEFAULT_STATE_FILE, readStackState } from './lib/stack-state.js';
import { formatEntry, Timeline } from './lib/timeline.js';

const USAGE = `Usage: npm run participant -- [--state FILE] [--room ROOM_ID] [--name LOCALPART]
       npm run participant -- --homeserver URL --registration-secret SECRET [--agent URL] [--room ROOM_ID]

Joins a MatrixRTC call on the local stack with a delegated hangup and a real LiveKit participant,
then takes commands on stdin: leave, crash, freeze, thaw, quit.

  --state FILE                 the running stack's state (default ${DEFAULT_STATE_FILE}, written by \`npm start\`)
  --room ROOM_ID               join this room's call (default: make a new room)
  --name LOCALPART             the user to register (default: p-<random>)
  --homeserver URL             another homeserver instead of the stack's, with
  --registration-secret SECRET its shared registration secret
  --agent URL                  the agent (default: what the homeserver announces at /rtc/transports)`;

/** After leave or crash, how long to wait for the hangup to reach the room (LiveKit needs ~20 s for a crash). */
const HANGUP_WAIT_MS = 120_000;

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      state: { type: 'string' },
      room: { type: 'string' },
      name: { type: 'string' },
      homeserver: { type: 'string' },
      'registration-secret': { type: 'string' },
      agent: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let hsUrl: string;
  let secret: string | undefined;
  let netns: NetnsEntry | null = null;
  if (values.homeserver) {
    hsUrl = values.homeserver.replace(/\/+$/, '');
    secret = values['registration-secret'];
    if (!secret) {
      process.stderr.write(`--homeserver needs --registration-secret\n\n${USAGE}\n`);
      return 2;
    }
  } else {
    const state = readStackState(path.resolve(values.state ?? DEFAULT_STATE_FILE));
    hsUrl = state.homeserver.url;
    secret = state.homeserver.registrationSharedSecret;
    if (state.livekit.netnsHolderPid) netns = enterNetns(state.livekit.netnsHolderPid);
  }

  const timeline = new Timeline();
  timeline.onEntry((e) => process.stdout.write(`${formatEntry(e, false)}\n`));
  const hs = { baseUrl: hsUrl };
  const user = await registerWithSharedSecret(hsUrl, secret, values.name ?? `p-${randomBytes(3).toString('hex')}`);
  timeline.mark('client', `registered ${user.userId} (device ${user.deviceId}) at ${hsUrl}`);
  let roomId: string;
  if (values.room) {
    roomId = await joinRoom(hs, user, values.room);
    timeline.mark('client', `joined ${roomId}`);
  } else {
    roomId = await createCallRoom(hs, user, `${user.userId}'s call`);
    timeline.mark('client', `created ${roomId}; another participant joins it with --room '${roomId}'`);
  }
  const agentUrl = values.agent ?? (await rtcTransports(hs, user)).livekitServiceUrl;
  if (!agentUrl) throw new Error(`${hsUrl} announces no LiveKit service at /rtc/transports (MSC4143): pass --agent URL`);

  // The watcher: the same user on a second device, reporting each membership it sees come and go.
  const watcher = await login(hs, user);
  let present = new Set<string>();
  const whose = (key: string) => key.replace('|', ', device ');
  const observer = await startObserver(hs, watcher, roomId, (now) => {
    for (const key of now) if (!present.has(key)) timeline.mark('observer', `sees the call membership of ${whose(key)}`);
    for (const key of present) {
      if (now.has(key)) continue;
      const hangup = key === `${user.userId}|${user.deviceId}` ? 'the hangup reached the room: ' : '';
      timeline.mark('observer', `${hangup}the membership of ${whose(key)} ended`);
    }
    present = new Set(now);
  });
  const app = await startApp({ hs, agent: { url: agentUrl }, timeline }, user, roomId, observer, {
    delayMs: DELEGATED_PRESET.delayedLeaveEventDelayMs,
    restartMs: DELEGATED_PRESET.delayedLeaveEventRestartMs,
    sticky: false,
  });
  const { url, jwt } = await app.getToken({ delegate: true });
  // js-sdk schedules a new delayed leave when the old one is gone, or when it joins again after a
  // hangup (a freeze LiveKit gave up on, then a thaw): like Element Call, hand each one over again.
  app.onDelayIdChanged(() => {
    app.getToken({ delegate: true }).then(
      () => timeline.mark('client', 'handed the new delay_id to the agent (/get_token), as Element Call does'),
      (err: unknown) => timeline.mark('client', `could not hand the new delay_id over: ${(err as Error).message}`),
    );
  });
  const participant = await startParticipant({ url, token: jwt, netns, allowRootNamespace: true }).catch((err: unknown) => {
    app.close();
    observer.close();
    throw err;
  });
  const { identity, sid, pid } = participant;
  timeline.mark('participant', `connected to LiveKit at ${url} as ${identity} (sid ${sid}, pid ${pid})`);
  process.stdout.write('commands: leave, crash, freeze, thaw, quit\n');

  /** Waits for the membership to end after the participant went at `wentAt`. */
  const hangup = async (wentAt: number): Promise<number> => {
    try {
      const at = await observer.waitGone(user.userId, user.deviceId, HANGUP_WAIT_MS);
      const fin = await app.finalised().catch(() => undefined);
      const how = fin ? ` (the delayed leave: outcome ${String(fin.outcome)}, reason ${String(fin.reason)})` : '';
      timeline.mark(
        'observer',
        at < wentAt
          ? `the membership had already ended ${((wentAt - at) / 1000).toFixed(3)} s before (LiveKit had dropped the participant)${how}`
          : `hangup seen ${((at - wentAt) / 1000).toFixed(3)} s after the participant went${how}`,
      );
      return 0;
    } catch {
      process.stderr.write(`no hangup reached the room within ${HANGUP_WAIT_MS / 1000} s\n`);
      return 1;
    }
  };
  const code = await new Promise<number>((resolve) => {
    let done = false;
    const finish = (p: Promise<number>) => {
      if (done) return;
      done = true;
      void p.then(resolve);
    };
    void participant.exited.then((e) => {
      if (!done) timeline.mark('participant', `the participant process ended by itself (${JSON.stringify(e)})`);
    });
    /** The participant goes (`end`), the app with it; then the hangup is awaited. */
    const goes = (end: () => Promise<unknown>, what: string) => {
      // The app stops first, silently: if it kept running it would publish its membership again.
      app.close();
      timeline.mark('client', 'the app stops without ending its membership: the agent holds the hangup');
      finish(
        end().then(() => {
          const wentAt = Date.now();
          timeline.mark('participant', what);
          return hangup(wentAt);
        }),
      );
    };
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      const command = line.trim();
      if (done || command === '') return;
      switch (command) {
        case 'leave':
          goes(() => participant.disconnect(), 'left LiveKit cleanly (room.disconnect())');
          break;
        case 'crash':
          goes(() => participant.kill(), 'SIGKILLed, with the app: LiveKit notices after about 20 s');
          break;
        case 'freeze':
          participant.stop();
          timeline.mark('participant', 'frozen (SIGSTOP): LiveKit drops it after about 20 s');
          break;
        case 'thaw':
          participant.cont();
          timeline.mark('participant', 'thawed (SIGCONT)');
          break;
        case 'quit':
          lines.close(); // as the end of stdin
          break;
        default:
          process.stdout.write(`unknown command ${JSON.stringify(command)}; commands: leave, crash, freeze, thaw, quit\n`);
      }
    });
    lines.on('close', () => {
      app.close();
      finish(participant.disconnect().then(() => 0));
    });
    // Ctrl-C (which npm and tsx may pass on more than once) and SIGTERM: as quit.
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => lines.close());
  });
  observer.close();
  return code;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`participant: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
// matrix-js-sdk keeps retry timers of the stopped clients alive for a while; nothing is left to do.
process.exit();
