// A real @livekit/rtc-node participant in its own process, driven by participant.ts.
//
// Runs directly under Node 24 (built-in type stripping: this file uses erasable TS syntax
// only: no enums, namespaces, parameter properties or `import x = require`).
//
//   node participant-child.ts            (config as JSON in env LASTWILL_PARTICIPANT)
//
// stdout: one JSON object per line:
//   {"type":"connected","sid":"PA_…","identity":"…","room":"…","roomSid":"RM_…","connectMs":123}
//   {"type":"event","name":"reconnecting"|"reconnected"|"disconnected"|"connectionStateChanged",…}
//   {"type":"disconnected","reason":"client"}       after a clean disconnect, right before exit(0)
//   {"type":"error","message":"…"}                   then exit(1)
// stdin: one JSON object per line:
//   {"cmd":"disconnect"}   -> await room.disconnect(); await dispose(); exit 0
//   {"cmd":"ping"}         -> {"type":"pong"}
//   EOF (parent went away) -> same as disconnect, so an orphaned child never lingers.
import { Room, RoomEvent, dispose } from '@livekit/rtc-node';
import { createInterface } from 'node:readline';

interface ChildConfig {
  url: string;
  token: string;
}

function emit(obj: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const cfg = JSON.parse(process.env.LASTWILL_PARTICIPANT ?? '{}') as ChildConfig;
if (!cfg.url || !cfg.token) {
  emit({ type: 'error', message: 'LASTWILL_PARTICIPANT must carry {url, token}' });
  process.exit(1);
}

const room = new Room();
let closing = false;

room.on(RoomEvent.Reconnecting, () => emit({ type: 'event', name: 'reconnecting' }));
room.on(RoomEvent.Reconnected, () =>
  emit({ type: 'event', name: 'reconnected', sid: room.localParticipant?.sid ?? null }),
);
room.on(RoomEvent.Disconnected, (reason: unknown) =>
  emit({ type: 'event', name: 'disconnected', reason: String(reason), closing }),
);
room.on(RoomEvent.ConnectionStateChanged, (state: unknown) =>
  emit({ type: 'event', name: 'connectionStateChanged', state: String(state) }),
);

async function shutdown(code: number): Promise<never> {
  if (!closing) {
    closing = true;
    try {
      await room.disconnect();
    } catch (err) {
      emit({ type: 'event', name: 'disconnectError', message: String(err) });
    }
    emit({ type: 'disconnected', reason: 'client' });
  }
  try {
    await dispose();
  } catch {
    /* ignore */
  }
  process.exit(code);
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let msg: { cmd?: string };
  try {
    msg = JSON.parse(line) as { cmd?: string };
  } catch {
    return;
  }
  if (msg.cmd === 'disconnect') void shutdown(0);
  else if (msg.cmd === 'ping') emit({ type: 'pong' });
});
rl.on('close', () => void shutdown(0));

const t0 = performance.now();
try {
  await room.connect(cfg.url, cfg.token, { autoSubscribe: false, dynacast: false });
  const lp = room.localParticipant;
  emit({
    type: 'connected',
    sid: lp?.sid ?? null,
    identity: lp?.identity ?? null,
    room: room.name ?? null,
    roomSid: await room.getSid().catch(() => null),
    connectMs: Math.round(performance.now() - t0),
  });
} catch (err) {
  emit({ type: 'error', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) });
  try {
    await dispose();
  } catch {
    /* ignore */
  }
  process.exit(1);
}
