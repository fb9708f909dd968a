// The soak: the whole system under a seeded workload and a seeded schedule of faults, then the
// checker (checker.ts) over what happened. Used by `npm run soak` (scripts/soak.ts) and by the short
// run in the test suite (soak.test.ts).
//
// Workload: `size` slots over size/4 rooms. Each slot is one user who joins the call with
// matrix-js-sdk (the delayed leave scheduled by its MatrixRTC session), hands the delay_id to the
// agent (in /get_token as Element Call does, or by /delegate_delayed_leave), connects a real
// @livekit/rtc-node participant, stays, and then leaves cleanly, crashes (SIGKILL), freezes
// (SIGSTOP, later SIGCONT), reconnects with the same identity, or leaves and rejoins with the same
// device (the same LiveKit identity, a new delegation). Every cycle but a rejoin is a new device.
//
// The app's Matrix client stops at the participant's departure, so every membership end the
// observers see is the agent's doing (a client's own leave would hide a missed hangup).
import os from 'node:os';
import { randomBytes } from 'node:crypto';

import type { MatrixClient } from 'matrix-js-sdk';

import {
  CALL_MEMBER_TYPE,
  createCallRoom,
  type JoinedApp,
  joinRoom,
  login,
  MSC4140,
  type RegisteredUser,
  requestJson,
  roomPath,
  startApp,
  startObserver,
} from '../../scripts/lib/matrixrtc.js';
import { startParticipant, type Participant } from '../../scripts/lib/participant.js';
import { Timeline } from '../../scripts/lib/timeline.js';
import type { MatrixServer } from '../e2e/support/flow.js';
import { sleep } from '../e2e/support/proc.js';
import { prng } from '../support/prng.js';
import { distribution, type Distribution } from '../../bench/lib/stats.js';
import {
  type Cause,
  check,
  type CheckOptions,
  endedRecord,
  type FaultRecord,
  type MembershipRecord,
  type SessionRecord,
  type Violation,
  VIOLATION_KINDS,
  type ViolationKind,
} from './checker.js';
import { SOAK_LEASE_MS, SOAK_SANITY_S, type SoakHomeserver, type SoakMode, type SoakWorld, startSoakWorld } from './world.js';

export const FAULT_KINDS = [
  'agent-kill',
  'agent-pause',
  'homeserver-kill',
  'redis-restart',
  'webhooks-drop',
  'webhooks-delay',
  'webhooks-duplicate',
  'webhooks-reorder',
  'homeserver-cut',
  'livekit-cut',
  'homeserver-500',
  'homeserver-429',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface SoakOptions {
  mode: SoakMode;
  homeserver: SoakHomeserver;
  seed: number;
  durationS: number;
  /** Participants in the calls at once. */
  size: number;
  faults: readonly FaultKind[];
  /**
   * Memberships to hand over at least. A slow or busy machine gets through fewer in the same time, so
   * the workload (not the faults) goes on past the duration until this many were handed over, for at
   * most the duration again. The report says how long it really ran.
   */
  minChecked?: number;
  /** Progress lines (a run takes minutes). */
  log?: (line: string) => void;
}

/** One year's hangup: the app's own delayed leave never fires during a run, only the agent's send. */
const APP_DELAY_MS = 3_600_000;
const APP_RESTART_MS = 300_000;
/** The agent's disconnect grace (its default). */
const GRACE_MS = 1000;
/**
 * From LiveKit's report of a departure to the observer seeing the membership end, with no fault:
 * the grace's one presence lookup, the send, the homeserver's sync. Generous on two cores.
 */
const BASE_BOUND_MS = 8000;
/** The agent's retry backoff (its defaults): growth per retry and the jitter on top. */
const BACKOFF_FACTOR = 1.5;
const BACKOFF_JITTER = 0.5;

export interface SoakReport {
  seed: number;
  mode: SoakMode;
  homeserver: SoakHomeserver;
  /** lastwill's homeserver, or `Synapse <version>`. */
  homeserverLabel: string;
  durationS: number;
  /** How long the workload ran: the duration, or longer to reach `minChecked`. */
  workloadS?: number;
  minChecked?: number;
  size: number;
  rooms: number;
  faultsEnabled: FaultKind[];
  startedAt: string;
  wallS: number;
  machine: { cpus: number; cpuModel: string; memoryGiB: number; node: string; platform: string };
  bound: { graceMs: number; baseBoundMs: number; lostWebhookPollS: number; leaseMs: number | null };
  counts: {
    memberships: number;
    participantsStarted: number;
    clean: number;
    crash: number;
    freeze: number;
    freezeSurvived: number;
    reconnect: number;
    rejoin: number;
    reopen: number;
    drain: number;
    abandoned: number;
    workloadErrors: number;
    /** New delayed leaves js-sdk scheduled mid-session, each handed over again as Element Call does. */
    redelegations?: number;
  };
  faults: Record<string, number>;
  webhookProxy: Record<string, number>;
  checked: number;
  violations: Violation[];
  violationCounts: Record<ViolationKind, number>;
  /** Real departure → membership end seen by the observer, ms, by cause. */
  latency: Record<Cause, Distribution>;
  /** LiveKit's report of the departure → membership end, ms, by cause. */
  afterLiveKit: Record<Cause, Distribution>;
  faultSchedule: FaultRecord[];
  /** Per violation: the membership's timeline, its LiveKit sessions and the faults around it. */
  replays: string[];
  workloadErrorSamples: string[];
}

interface Slot {
  index: number;
  room: Room;
  rng: () => number;
  user: RegisteredUser;
}

interface Room {
  roomId: string;
  observer: Awaited<ReturnType<typeof startObserver>>;
}

interface Tracked extends MembershipRecord {
  stateKey: string;
  delayId: string;
  /** When this record began: the app's join, or the moment js-sdk scheduled a new delayed leave. */
  createdAt: number;
  /** The record this one took over from within the same app session (a new delayed leave). */
  predecessor?: Tracked;
  user: RegisteredUser;
  roomId: string;
  timeline: Timeline;
}

type Action = 'clean' | 'crash' | 'freeze' | 'reconnect' | 'rejoin' | 'reopen';
const ACTIONS: ReadonlyArray<[Action, number]> = [
  ['clean', 0.2],
  ['crash', 0.2],
  ['freeze', 0.2],
  ['reconnect', 0.15],
  ['rejoin', 0.15],
  ['reopen', 0.1],
];

const pick = <T>(rng: () => number, weighted: ReadonlyArray<readonly [T, number]>): T => {
  let r = rng() * weighted.reduce((a, [, w]) => a + w, 0);
  for (const [v, w] of weighted) if ((r -= w) < 0) return v;
  return weighted[weighted.length - 1]![0];
};
const between = (rng: () => number, lo: number, hi: number) => Math.round(lo + rng() * (hi - lo));

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? (() => undefined);
  const t0 = Date.now();
  const faultsEnabled = opts.faults.filter((f) => f !== 'redis-restart' || opts.mode === 'cluster');
  const world = await startSoakWorld(opts.mode, opts.homeserver, prng(opts.seed ^ 0x3b1d));
  const counts: SoakReport['counts'] = {
    memberships: 0,
    participantsStarted: 0,
    clean: 0,
    crash: 0,
    freeze: 0,
    freezeSurvived: 0,
    reconnect: 0,
    rejoin: 0,
    reopen: 0,
    drain: 0,
    abandoned: 0,
    workloadErrors: 0,
    redelegations: 0,
  };
  const workloadErrorSamples: string[] = [];
  const workloadError = (what: string, err: unknown) => {
    counts.workloadErrors++;
    if (workloadErrorSamples.length < 20) workloadErrorSamples.push(`${new Date().toISOString()} ${what}: ${String(err).slice(0, 300)}`);
  };
  const tracked: Tracked[] = [];
  /** The membership each observer key belongs to now. */
  const active = new Map<string, Tracked>();
  const participants = new Set<Participant>();
  const faultSchedule: FaultRecord[] = [];
  try {
    const roomCount = Math.max(1, Math.ceil(opts.size / 4));
    const suffix = randomBytes(3).toString('hex');
    const rooms: Room[] = [];
    for (let r = 0; r < roomCount; r++) rooms.push(await makeRoom(world.hs, `soak-${suffix}-r${r}`, active));
    const slots: Slot[] = [];
    for (let i = 0; i < opts.size; i++) {
      const room = rooms[i % roomCount]!;
      const user = await world.hs.registerUser(`soak-${suffix}-u${i}`);
      await joinRoom(world.hs, user, room.roomId);
      slots.push({ index: i, room, rng: prng(opts.seed * 1009 + i + 1), user });
    }
    const workloadStart = Date.now();
    const deadline = workloadStart + opts.durationS * 1000;
    log(`world up in ${Date.now() - t0} ms: ${opts.mode}, ${opts.size} participants in ${roomCount} rooms, seed ${opts.seed}`);

    const env: SlotEnv = { world, deadline, counts, tracked, active, participants, workloadError, log };
    // Faults keep to the duration as given, so their schedule depends on the seed alone.
    const faults = runFaults(world, faultsEnabled, prng(opts.seed ^ 0xfa017), deadline, faultSchedule, log);
    const extension = extendWorkload(env, opts.minChecked ?? 0, deadline + opts.durationS * 1000);
    await Promise.all([...slots.map((s) => runSlot(s, env)), faults, extension]);
    const workloadS = Math.round((env.deadline - workloadStart) / 1000);

    // Every participant has left (the drain). Wait for the last hangups, then read the histories.
    // A superseded membership's state key now holds its successor: it never ends by itself.
    const departed = () => tracked.filter((m) => m.departure && m.goneAt === undefined && m.supersededAt === undefined);
    const drainUntil = Date.now() + 120_000;
    while (departed().length > 0 && Date.now() < drainUntil) await sleep(500);
    log(`drained: ${departed().length} memberships still present`);
    await sleep(3000); // LiveKit's last reports
    for (const room of rooms) await attributeHangups(world.hs, room, tracked);
    await findScheduled(world.hs, slots, tracked);
    const sessions = sessionsFrom(world);

    const checkOpts: CheckOptions = { graceMs: GRACE_MS, baseBoundMs: BASE_BOUND_MS, perFaultMs: 15_000, endedAt: Date.now() };
    const judged = tracked.filter(isJudged);
    const result = check(judged, sessions, faultSchedule, checkOpts);
    const replays = result.violations.slice(0, 20).map((v) => replay(v, tracked, sessions, faultSchedule, opts));
    for (const room of rooms) room.observer.close();

    const faultCounts: Record<string, number> = {};
    for (const f of faultSchedule) faultCounts[f.kind] = (faultCounts[f.kind] ?? 0) + 1;
    const violationCounts = Object.fromEntries(VIOLATION_KINDS.map((k) => [k, 0])) as Record<ViolationKind, number>;
    for (const v of result.violations) violationCounts[v.kind]++;
    const byCause = (lists: Record<Cause, number[]>) =>
      Object.fromEntries(Object.entries(lists).map(([c, l]) => [c, distribution(l)])) as Record<Cause, Distribution>;
    return {
      seed: opts.seed,
      mode: opts.mode,
      homeserver: opts.homeserver,
      homeserverLabel: world.hs.label,
      durationS: opts.durationS,
      workloadS,
      ...(opts.minChecked ? { minChecked: opts.minChecked } : {}),
      size: opts.size,
      rooms: roomCount,
      faultsEnabled,
      startedAt: new Date(t0).toISOString(),
      wallS: Math.round((Date.now() - t0) / 1000),
      machine: machineInfo(),
      bound: {
        graceMs: GRACE_MS,
        baseBoundMs: BASE_BOUND_MS,
        lostWebhookPollS: SOAK_SANITY_S,
        leaseMs: opts.mode === 'cluster' ? SOAK_LEASE_MS : null,
      },
      counts,
      faults: faultCounts,
      webhookProxy: { ...world.webhooks.counts },
      checked: result.checked,
      violations: result.violations,
      violationCounts,
      latency: byCause(result.latencies),
      afterLiveKit: byCause(result.afterLiveKit),
      faultSchedule,
      replays,
      workloadErrorSamples,
    };
  } catch (err) {
    throw new Error(`soak failed: ${String(err)}\n${world.logs()}`, { cause: err });
  } finally {
    await Promise.all([...participants].map((p) => p.kill().catch(() => undefined)));
    for (const m of active.values()) m.timeline.mark('test', 'run over');
    await world.close();
  }
}

export function machineInfo(): SoakReport['machine'] {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Rooms and users

async function makeRoom(hs: MatrixServer, name: string, active: Map<string, Tracked>): Promise<Room> {
  const owner = await hs.registerUser(`${name}-watch`);
  const roomId = await createCallRoom(hs, owner, name);
  // The observer: another client whose /sync shows when each membership ends.
  let present = new Set<string>();
  let observerClient: MatrixClient | undefined;
  /** origin_server_ts of the hangup now in the state key, as the observer's client holds it. */
  const hangupTs = (stateKey: string): number | undefined => {
    const e = observerClient?.getRoom(roomId)?.currentState.getStateEvents(CALL_MEMBER_TYPE, stateKey);
    return e && Object.keys(e.getContent()).length === 0 ? e.getTs() : undefined;
  };
  const observer = await startObserver(hs, owner, roomId, (now, at) => {
    for (const key of present) {
      if (now.has(key)) continue;
      const latest = active.get(key);
      // The observer may see a hangup only after the app has already scheduled its next delayed leave.
      const m = latest && endedRecord(latest, hangupTs(latest.stateKey));
      if (m && m.goneAt === undefined) {
        m.goneAt = at;
        m.timeline.mark('observer', `saw the membership end (${m.label})`);
      }
    }
    present = new Set(now);
  });
  observerClient = observer.client;
  return { roomId, observer };
}

/** Retries `fn` (the homeserver or the agent may be down for a fault) until it succeeds or `until`. */
async function retrying<T>(what: string, fn: () => Promise<T>, until: number, onError: (what: string, err: unknown) => void): Promise<T | undefined> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      onError(what, err);
      if (Date.now() + 2000 > until) return undefined;
      await sleep(Math.min(5000, 500 * 2 ** attempt));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One slot's life

/** A membership the checker judges: its delay_id reached the agent for sure. */
const isJudged = (m: Tracked): boolean => m.handedOverAt > 0;

interface SlotEnv {
  world: SoakWorld;
  /** When the workload ends: the slots drain from then on. extendWorkload may move it later. */
  deadline: number;
  counts: SoakReport['counts'];
  tracked: Tracked[];
  active: Map<string, Tracked>;
  participants: Set<Participant>;
  workloadError(what: string, err: unknown): void;
  log(line: string): void;
}

/**
 * Moves the workload's end on, 30 s at a time up to `cap`, while fewer than `minChecked`
 * memberships were handed over. It decides 20 s ahead, before the slots stop starting new ones.
 */
async function extendWorkload(env: SlotEnv, minChecked: number, cap: number): Promise<void> {
  for (;;) {
    await sleep(Math.max(0, env.deadline - 20_000 - Date.now()));
    const count = env.tracked.filter(isJudged).length;
    if (count >= minChecked || env.deadline >= cap) return;
    env.deadline = Math.min(cap, env.deadline + 30_000);
    env.log(`workload extended to ${new Date(env.deadline).toISOString()}: ${count} of ${minChecked} memberships handed over`);
  }
}

async function runSlot(slot: Slot, env: SlotEnv): Promise<void> {
  const { world } = env;
  // Staggered starts, so joins do not all land at once.
  await sleep(slot.rng() * 5000);
  let device: RegisteredUser | undefined = slot.user;
  let previous: Tracked | undefined;
  let cycle = 0;
  while (Date.now() + 15_000 < env.deadline) {
    device ??= await retrying('login', () => login(world.hs, slot.user), env.deadline, env.workloadError);
    if (!device) return;
    const { outcome, membership } = await runMembership(slot, device, `u${slot.index}#${cycle++}`, env, previous);
    previous = outcome === 'reopen' ? membership : undefined;
    if (outcome === 'rejoin' || outcome === 'reopen') continue; // same device, same identity
    device = undefined;
    if (outcome === 'failed') await sleep(2000);
  }
}

/** One membership, from the app's join to the participant's departure. */
async function runMembership(
  slot: Slot,
  device: RegisteredUser,
  label: string,
  env: SlotEnv,
  /** The membership this one takes the place of (the app reopened on the same device). */
  supersedes: Tracked | undefined,
): Promise<{ outcome: 'left' | 'rejoin' | 'reopen' | 'failed'; membership?: Tracked }> {
  const { world, counts, participants } = env;
  const { rng, room } = slot;
  const timeline = new Timeline();
  const createdAt = Date.now();
  let app: (JoinedApp & { close(): void }) | undefined;
  try {
    app = await startApp({ hs: world.hs, agent: world.agent, timeline }, device, room.roomId, room.observer, {
      delayMs: APP_DELAY_MS,
      restartMs: APP_RESTART_MS,
      sticky: false,
    });
  } catch (err) {
    env.workloadError(`${label} join`, err);
    return { outcome: 'failed' };
  }
  const a = app;
  if (supersedes) {
    supersedes.supersededAt = Date.now();
    supersedes.timeline.mark('test', `superseded by ${label}, a new membership of the same device`);
  }
  let m: Tracked = {
    label,
    createdAt,
    key: `${device.userId}|${device.deviceId}`,
    identity: a.identity,
    handedOverAt: 0,
    hangups: [],
    stateKey: a.stateKey,
    delayId: a.delayId,
    user: device,
    roomId: room.roomId,
    timeline,
  };
  env.tracked.push(m);
  env.active.set(m.key, m);
  counts.memberships++;
  const leaveApp = () => a.close();
  // Element Call hands the delay_id over in /get_token; older clients use the separate endpoint.
  const inToken = rng() < 0.5;
  const token = async (delegate: boolean) =>
    retrying(`${label} token`, () => a.getToken({ delegate }), Math.min(env.deadline, Date.now() + 60_000), env.workloadError);
  const first = await token(inToken);
  const delegated =
    first &&
    (inToken ||
      (await retrying(`${label} delegate`, () => a.delegateToAgent().then(() => true), Math.min(env.deadline, Date.now() + 60_000), env.workloadError)));
  if (!first || !delegated) {
    // Nothing was handed over for sure, so nothing is judged (counted as a workload error).
    leaveApp();
    env.active.delete(m.key);
    return { outcome: 'failed' };
  }
  m.handedOverAt = Date.now();
  timeline.mark('test', `${label}: handed over ${inToken ? 'in /get_token' : 'by /delegate_delayed_leave'}`);

  // js-sdk schedules a new delayed leave when a restart finds the old one gone, or when it joins
  // again after its membership ended (the agent hung up a participant LiveKit dropped, and the
  // device came back). Element Call hands every new delay_id over again, the same way as the first.
  // The new delay_id makes a new record for the checker: the old one is judged by what happened to
  // it until then, and the hangup the agent must send from now on belongs to the new one.
  let generation = 0;
  const handOverAgain = async (next: Tracked) => {
    const until = Math.min(env.deadline, Date.now() + 60_000);
    const stillCurrent = () => m === next && next.departure === undefined && a.currentDelayId() === next.delayId;
    const handed = await retrying(
      `${next.label} redelegate`,
      async () => {
        if (!stillCurrent()) return false;
        if (inToken) await a.getToken({ delegate: true });
        else await a.delegateToAgent();
        return true;
      },
      until,
      env.workloadError,
    );
    if (handed && stillCurrent()) {
      next.handedOverAt = Date.now();
      timeline.mark('test', `${next.label}: handed over again ${inToken ? 'in /get_token' : 'by /delegate_delayed_leave'}`);
    } else {
      // Not handed over before the participant left (or replaced again): not judged, as a first
      // handover that failed.
      timeline.mark('test', `${next.label}: not handed over; not judged`);
    }
  };
  const onNewDelayId = (delayId: string) => {
    if (delayId === m.delayId || m.departure !== undefined) return;
    const prev = m;
    const next: Tracked = { ...prev, label: `${label}.${++generation}`, delayId, createdAt: Date.now(), predecessor: prev, handedOverAt: 0, hangups: [] };
    delete next.goneAt;
    prev.supersededAt = next.createdAt;
    timeline.mark('test', `${prev.label}: superseded by ${next.label}, a new delayed leave of the same session`);
    env.tracked.push(next);
    env.active.set(next.key, next);
    counts.redelegations = (counts.redelegations ?? 0) + 1;
    m = next;
    void handOverAgain(next);
  };
  a.onDelayIdChanged(onNewDelayId);
  const now = a.currentDelayId();
  if (now !== undefined) onNewDelayId(now); // changed while the first handover ran

  const connect = async (jwt: string): Promise<Participant | undefined> => {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const p = await startParticipant({ url: world.lk.url, token: jwt, connectTimeoutMs: 20_000 });
        participants.add(p);
        void p.exited.then(() => participants.delete(p));
        counts.participantsStarted++;
        timeline.mark('participant', `connected as session ${p.sid}`);
        return p;
      } catch (err) {
        env.workloadError(`${label} participant`, err);
      }
    }
    return undefined;
  };
  let p = await connect(first.jwt);
  if (!p) {
    // Never connected: the agent rightly waits for it; nothing here can be judged.
    counts.abandoned++;
    m.handedOverAt = 0;
    leaveApp();
    return { outcome: 'failed' };
  }

  const depart = async (cause: Cause, how: 'disconnect' | 'kill', at = Date.now()) => {
    m.departure = { at, cause };
    counts[cause]++;
    leaveApp();
    timeline.mark('participant', `${cause}: ${how === 'disconnect' ? 'left cleanly' : 'killed'}`);
    await (how === 'disconnect' ? p!.disconnect(10_000) : p!.kill()).catch(() => p!.kill());
  };

  let frozeAt: number | undefined;
  for (;;) {
    const stayMs = between(rng, 5_000, 60_000);
    await sleep(Math.max(0, Math.min(stayMs, env.deadline - Date.now())));
    if (m.goneAt !== undefined) {
      // Ended while the participant was meant to be in the call: after a freeze LiveKit dropped,
      // the departure was the freeze; otherwise the checker judges it against LiveKit's record.
      if (frozeAt !== undefined) m.departure = { at: frozeAt, cause: 'freeze' };
      timeline.mark('test', 'membership ended while the participant stayed');
      leaveApp();
      await p.kill();
      return { outcome: 'left' };
    }
    if (Date.now() >= env.deadline) {
      await depart('drain', 'disconnect');
      return { outcome: 'left' };
    }
    const action = pick(rng, ACTIONS);
    if (action === 'clean' || action === 'crash') {
      await depart(action, action === 'clean' ? 'disconnect' : 'kill');
      return { outcome: 'left' };
    }
    if (action === 'reopen') {
      // The app dies and is opened again on the same device at once, long before LiveKit notices
      // the dead session: a new membership and delegation for the same identity replace this one.
      counts.reopen++;
      await depart('crash', 'kill');
      return { outcome: 'reopen', membership: m };
    }
    if (action === 'rejoin') {
      counts.rejoin++;
      const how = rng() < 0.5 ? 'disconnect' : 'kill';
      await depart(how === 'disconnect' ? 'clean' : 'crash', how);
      // Back with the same device once the hangup is seen (a fresh membership, the same identity).
      const seen = Date.now() + 120_000;
      while (m.goneAt === undefined && Date.now() < seen) await sleep(250);
      return { outcome: m.goneAt === undefined ? 'left' : 'rejoin' };
    }
    if (action === 'reconnect') {
      // The same identity joins again with a fresh token; LiveKit then drops the older session
      // (DUPLICATE_IDENTITY), as when a client reconnects before the old connection timed out.
      counts.reconnect++;
      const next = await token(rng() < 0.5);
      const q = next && (await connect(next.jwt));
      if (!q) continue;
      timeline.mark('participant', `reconnected as ${q.sid}; the old session ${p.sid} is dropped`);
      const old = p;
      p = q;
      void sleep(3000).then(() => old.kill());
      continue;
    }
    // freeze: the device sleeps; LiveKit drops it after about 20 s, or it wakes up in time.
    counts.freeze++;
    frozeAt = Date.now();
    const frozen = m;
    p.stop();
    timeline.mark('participant', 'frozen (SIGSTOP)');
    await sleep(between(rng, 3_000, 45_000));
    p.cont();
    timeline.mark('participant', 'thawed (SIGCONT)');
    await sleep(8000);
    const disconnected = p.messages.some((msg) => msg.type === 'event' && msg.name === 'disconnected');
    // A new record since the freeze means js-sdk scheduled a new delayed leave meanwhile: mostly
    // because the agent hung up (LiveKit dropped the participant) and js-sdk joined again.
    const dropped = disconnected || !sessionPresent(world, p.identity) || frozen.goneAt !== undefined || frozen !== m;
    if (dropped) {
      frozen.departure = { at: frozeAt, cause: 'freeze' };
      // The membership js-sdk published again ends with this participant, killed now.
      if (m !== frozen) m.departure = { at: Date.now(), cause: 'crash' };
      leaveApp();
      timeline.mark('test', 'LiveKit dropped the frozen participant');
      await p.kill();
      return { outcome: 'left' };
    }
    counts.freezeSurvived++;
    frozeAt = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Faults

interface FaultPlan {
  /** How long it lasts, ms. */
  duration(rng: () => number): number;
  apply(world: SoakWorld, rng: () => number): Promise<{ target?: string; heal(): Promise<void> }>;
  /** Catch-up time after the heal (see FaultRecord.allowanceMs). */
  allowance(durationMs: number): number;
}

/** After a homeserver outage of d ms, the retry in flight fires at most this long after it ends. */
const backoffReach = (d: number) => Math.round(d * (BACKOFF_FACTOR - 1) * (1 + BACKOFF_JITTER)) + 5000;
const RESTART_ALLOWANCE_MS = 20_000;

const homeserverLinkFault = (fault: 'cut' | 'blackhole' | 'error500' | 'error429'): FaultPlan['apply'] => async (world) => {
  world.homeserverLink.fault = fault;
  return { heal: async () => void (world.homeserverLink.fault = 'pass') };
};
const webhookFault = (fault: 'drop' | 'delay' | 'duplicate' | 'reorder'): FaultPlan['apply'] => async (world) => {
  world.webhooks.fault = fault;
  return { heal: async () => world.webhooks.heal() };
};
const agentTarget = (world: SoakWorld, rng: () => number) => {
  const i = Math.floor(rng() * world.agents.length);
  return { agent: world.agents[i]!, target: world.agents.length > 1 ? `replica-${i}` : 'agent' };
};

const PLANS: Record<FaultKind, FaultPlan> = {
  'agent-kill': {
    duration: (rng) => between(rng, 500, 10_000),
    async apply(world, rng) {
      const { agent, target } = agentTarget(world, rng);
      await agent.kill();
      return { target, heal: () => agent.start() };
    },
    allowance: () => RESTART_ALLOWANCE_MS,
  },
  'agent-pause': {
    // Past the lease in cluster mode, so the others take over and the paused one must stand down.
    duration: (rng) => between(rng, SOAK_LEASE_MS + 1000, SOAK_LEASE_MS + 10_000),
    async apply(world, rng) {
      const { agent, target } = agentTarget(world, rng);
      agent.signal('SIGSTOP');
      return { target, heal: async () => agent.signal('SIGCONT') };
    },
    allowance: () => RESTART_ALLOWANCE_MS,
  },
  'homeserver-kill': {
    duration: (rng) => between(rng, 1000, 10_000),
    async apply(world) {
      await world.hs.kill();
      return { heal: () => world.hs.start() };
    },
    allowance: (d) => backoffReach(d) + RESTART_ALLOWANCE_MS,
  },
  'redis-restart': {
    duration: (rng) => between(rng, 500, 5000),
    async apply(world) {
      const redis = world.cluster!.redis;
      await redis.kill();
      return { heal: () => redis.start() };
    },
    allowance: () => RESTART_ALLOWANCE_MS,
  },
  'webhooks-drop': { duration: (rng) => between(rng, 5000, 30_000), apply: webhookFault('drop'), allowance: () => SOAK_SANITY_S * 1000 + 5000 },
  'webhooks-delay': { duration: (rng) => between(rng, 5000, 30_000), apply: webhookFault('delay'), allowance: () => 15_000 },
  'webhooks-duplicate': { duration: (rng) => between(rng, 5000, 30_000), apply: webhookFault('duplicate'), allowance: () => 10_000 },
  'webhooks-reorder': { duration: (rng) => between(rng, 5000, 30_000), apply: webhookFault('reorder'), allowance: () => 15_000 },
  'homeserver-cut': {
    duration: (rng) => between(rng, 3000, 30_000),
    apply: async (world, rng) => homeserverLinkFault(rng() < 0.5 ? 'cut' : 'blackhole')(world, rng),
    allowance: backoffReach,
  },
  'livekit-cut': {
    // The agent loses RoomService and the webhooks both, as when the SFU's host is unreachable.
    duration: (rng) => between(rng, 3000, 30_000),
    async apply(world, rng) {
      world.livekitLink.fault = rng() < 0.5 ? 'cut' : 'blackhole';
      world.webhooks.fault = 'drop';
      return {
        heal: async () => {
          world.livekitLink.fault = 'pass';
          world.webhooks.heal();
        },
      };
    },
    allowance: () => RESTART_ALLOWANCE_MS,
  },
  'homeserver-500': { duration: (rng) => between(rng, 3000, 30_000), apply: homeserverLinkFault('error500'), allowance: backoffReach },
  'homeserver-429': { duration: (rng) => between(rng, 3000, 30_000), apply: homeserverLinkFault('error429'), allowance: backoffReach },
};

/** One fault at a time, at seeded moments, from 15 s in until 40 s before the end. */
async function runFaults(
  world: SoakWorld,
  kinds: readonly FaultKind[],
  rng: () => number,
  deadline: number,
  schedule: FaultRecord[],
  log: (line: string) => void,
): Promise<void> {
  if (kinds.length === 0) return;
  await sleep(15_000);
  while (Date.now() + 40_000 < deadline) {
    const kind = kinds[Math.floor(rng() * kinds.length)]!;
    const plan = PLANS[kind];
    const duration = Math.min(plan.duration(rng), deadline - 40_000 - Date.now());
    const startedAt = Date.now();
    const { target, heal } = await plan.apply(world, rng);
    await sleep(Math.max(0, duration));
    await heal();
    const record: FaultRecord = { kind, startedAt, endedAt: Date.now(), allowanceMs: plan.allowance(Date.now() - startedAt) };
    if (target) record.target = target;
    schedule.push(record);
    log(`fault ${kind}${target ? ` (${target})` : ''}: ${record.endedAt - startedAt} ms`);
    await sleep(between(rng, 5_000, 25_000));
  }
}

// ---------------------------------------------------------------------------------------------
// Ground truth and the record

/** LiveKit's own report (the receiver no fault touches), as sessions per identity. */
function sessionsFrom(world: SoakWorld): SessionRecord[] {
  const bySid = new Map<string, SessionRecord>();
  for (const w of world.truth.received) {
    const p = w.event.participant;
    if (!p?.sid) continue;
    const kind = w.event.event;
    if (kind === 'participant_joined' && !bySid.has(p.sid)) bySid.set(p.sid, { identity: p.identity, sid: p.sid, joinedAt: w.receivedAt });
    if (kind === 'participant_left' || kind === 'participant_connection_aborted') {
      const s = bySid.get(p.sid) ?? { identity: p.identity, sid: p.sid, joinedAt: w.receivedAt };
      s.leftAt ??= w.receivedAt;
      bySid.set(p.sid, s);
    }
  }
  return [...bySid.values()];
}

function sessionPresent(world: SoakWorld, identity: string): boolean {
  return sessionsFrom(world).some((s) => s.identity === identity && s.leftAt === undefined);
}

/** Reads the room's history and gives each membership its hangups (empty call member events). */
async function attributeHangups(hs: MatrixServer, room: Room, tracked: Tracked[]): Promise<void> {
  const token = room.observer.user.accessToken;
  const mine = tracked.filter((m) => m.roomId === room.roomId && isJudged(m)).sort((a, b) => a.handedOverAt - b.handedOverAt);
  let from: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const q = new URLSearchParams({ dir: 'b', limit: '500', ...(from ? { from } : {}) });
    const r = await requestJson('GET', `${hs.baseUrl}${roomPath(room.roomId)}/messages?${q}`, { token });
    if (r.status !== 200) throw new Error(`messages: ${r.status} ${JSON.stringify(r.body)}`);
    const chunk = (r.body.chunk ?? []) as Array<{ type: string; state_key?: string; content?: object; origin_server_ts: number }>;
    for (const e of chunk) {
      if (e.type !== CALL_MEMBER_TYPE || e.state_key === undefined || Object.keys(e.content ?? {}).length > 0) continue;
      // The membership of that state key that was handed over last before this hangup.
      const owner = mine.filter((m) => m.stateKey === e.state_key && m.handedOverAt <= e.origin_server_ts).at(-1);
      owner?.hangups.push(e.origin_server_ts);
    }
    const end = r.body.end;
    if (chunk.length === 0 || typeof end !== 'string' || end === from) break;
    from = end;
  }
}

/** Marks the memberships whose delayed leave the homeserver still has scheduled. */
async function findScheduled(hs: MatrixServer, slots: Slot[], tracked: Tracked[]): Promise<void> {
  const scheduled = new Set<string>();
  for (const slot of slots) {
    let from: string | undefined;
    for (let page = 0; page < 100; page++) {
      const q = from ? `?from=${encodeURIComponent(from)}` : '';
      const r = await requestJson('GET', `${hs.baseUrl}${MSC4140}/delayed_events${q}`, {
        token: slot.user.accessToken,
      });
      if (r.status !== 200) throw new Error(`delayed_events: ${r.status} ${JSON.stringify(r.body)}`);
      for (const d of (r.body.delayed_events ?? []) as Array<{ delay_id: string }>) scheduled.add(d.delay_id);
      const next = r.body.next_batch;
      if (typeof next !== 'string') break;
      from = next;
    }
  }
  for (const m of tracked) m.scheduledAtEnd = scheduled.has(m.delayId);
}

/** The command that runs this soak again, for replays and the report. */
export function replayCommand(r: Pick<SoakReport, 'mode' | 'homeserver' | 'seed' | 'durationS' | 'size' | 'minChecked'> & { faults: readonly string[] }): string {
  const min = r.minChecked ? ` --min-checked ${r.minChecked}` : '';
  return `npm run soak -- --mode ${r.mode} --homeserver ${r.homeserver} --seed ${r.seed} --duration ${r.durationS} --size ${r.size} --faults ${r.faults.join(',')}${min}`;
}

function replay(v: Violation, tracked: Tracked[], sessions: SessionRecord[], faults: FaultRecord[], opts: SoakOptions): string {
  const m = tracked.find((t) => t.label === v.label);
  if (!m) return `${v.kind} ${v.label}: ${v.detail}`;
  const from = m.handedOverAt - 60_000;
  const to = (m.goneAt ?? Date.now()) + 60_000;
  const own = sessions.filter((s) => s.identity === m.identity);
  const near = faults.filter((f) => f.endedAt >= from && f.startedAt <= to);
  const iso = (t: number | undefined) => (t === undefined ? '-' : new Date(t).toISOString());
  return [
    `${v.kind} ${v.label}: ${v.detail}`,
    `replay: ${replayCommand(opts)}`,
    `membership ${m.key} (identity ${m.identity}) handed over ${iso(m.handedOverAt)}, departure ${m.departure ? `${m.departure.cause} at ${iso(m.departure.at)}` : '-'}, seen gone ${iso(m.goneAt)}, hangups ${m.hangups.map((h) => iso(h)).join(', ') || '-'}`,
    'LiveKit sessions:',
    ...own.map((s) => `  ${s.sid} joined ${iso(s.joinedAt)} left ${iso(s.leftAt)}`),
    'faults around it:',
    ...near.map((f) => `  ${f.kind}${f.target ? ` (${f.target})` : ''} ${iso(f.startedAt)} → ${iso(f.endedAt)}`),
    `timeline (from ${iso(m.timeline.t0)}):`,
    m.timeline.render(),
  ].join('\n');
}
