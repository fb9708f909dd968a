/**
 * Shared setup for the job engine tests: a fake clock stepped from timer to timer, scripted
 * homeserver actions and LiveKit presence, real SQLite files in a temp dir.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Logger } from 'pino';

import type {
  ActionOutcome,
  DelayedAction,
  DelayedEventActions,
  Delegation,
  JobState,
  ParticipantSession,
  ParticipantSignal,
  PresenceLookup,
} from '../../../src/agent/contracts.js';
import { Engine } from '../../../src/agent/jobs/engine.js';
import { SqliteJobStore } from '../../../src/agent/jobs/sqlite-store.js';
import type { JobStore } from '../../../src/agent/jobs/store.js';
import {
  DEFAULT_ENGINE_SETTINGS,
  type EngineObserver,
  type EngineSettings,
  type Ownership,
} from '../../../src/agent/jobs/index.js';
import { silentLogger } from '../../../src/lib/logger.js';
import type { Clock } from '../../../src/lib/timer-heap.js';
import { FakeClock } from '../../support/fake-clock.js';

export const T0 = 1_700_000_000_000;

/** Lets promise callbacks and setImmediate work (lookup batches, group commits) run. */
export async function settle(rounds = 6): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export interface ActionCall {
  action: DelayedAction;
  serverName: string;
  delayId: string;
  scopedToken?: string;
  at: number;
}

/**
 * Scripted homeserver: answers each call with the next scripted outcome for its action (or the
 * default), or holds it open when `hold` is set so the test decides when and how it ends.
 */
export class ScriptedActions implements DelayedEventActions {
  readonly calls: ActionCall[] = [];
  readonly script: Record<DelayedAction, ActionOutcome[]> = { restart: [], send: [], cancel: [] };
  defaults: Record<DelayedAction, ActionOutcome> = {
    restart: { kind: 'ok' },
    send: { kind: 'ok' },
    cancel: { kind: 'ok' },
  };
  hold: Record<DelayedAction, boolean> = { restart: false, send: false, cancel: false };
  readonly held: Array<Deferred<ActionOutcome> & { call: ActionCall }> = [];
  constructor(private readonly clock: Clock) {}

  perform(
    action: DelayedAction,
    target: { serverName: string; delayId: string; scopedToken?: string },
  ): Promise<ActionOutcome> {
    const call: ActionCall = { action, ...target, at: this.clock.now() };
    this.calls.push(call);
    if (this.hold[action]) {
      const d = deferred<ActionOutcome>();
      this.held.push({ ...d, call });
      return d.promise;
    }
    return Promise.resolve(this.script[action].shift() ?? this.defaults[action]);
  }

  of(action: DelayedAction, delayId?: string): ActionCall[] {
    return this.calls.filter((c) => c.action === action && (delayId === undefined || c.delayId === delayId));
  }
}

/** Scripted LiveKit: sessions per room; `failing` makes every call throw like a transport error. */
export class ScriptedPresence implements PresenceLookup {
  readonly rooms = new Map<string, ParticipantSession[]>();
  readonly calls: Array<{ room: string; at: number }> = [];
  failing = false;
  hold = false;
  readonly held: Array<Deferred<ParticipantSession[]> & { room: string }> = [];
  constructor(private readonly clock: Clock) {}

  async listParticipants(livekitRoom: string): Promise<ParticipantSession[]> {
    this.calls.push({ room: livekitRoom, at: this.clock.now() });
    if (this.hold) {
      const d = deferred<ParticipantSession[]>();
      this.held.push({ ...d, room: livekitRoom });
      return d.promise;
    }
    if (this.failing) throw new Error('twirp error unavailable: connect ECONNREFUSED');
    return [...(this.rooms.get(livekitRoom) ?? [])];
  }

  set(room: string, sessions: ParticipantSession[]): void {
    this.rooms.set(room, sessions);
  }
}

/** Settings for tests: deterministic jitter comes from `random`, sanity polling off unless asked. */
export function testSettings(overrides: Partial<EngineSettings> = {}): EngineSettings {
  return {
    ...DEFAULT_ENGINE_SETTINGS,
    sanityCheckIntervalMs: 0,
    pacing: { perSecond: 1000, burst: 1000 },
    terminalRetentionMs: 3_600_000,
    ...overrides,
  };
}

export interface Rig {
  engine: Engine;
  clock: FakeClock;
  actions: ScriptedActions;
  presence: ScriptedPresence;
  transitions: Array<{ from: JobState; to: JobState; signal: string }>;
  outcomes: Array<{ action: DelayedAction; outcome: string; ms: number }>;
  disconnectToSend: number[];
  lookups: Array<'ok' | 'failed'>;
  dbPath: string;
  /** Moves time forward by `ms`, firing every timer on the way and letting async work settle. */
  advance(ms: number): Promise<void>;
  /** Delegates and waits for the commit and the first lookup to settle. */
  delegate(d?: Partial<Delegation>): Promise<void>;
  signal(
    s: Omit<ParticipantSignal, 'session'> & { sid: string; identity?: string; joinedAtMs?: number },
  ): Promise<void>;
  state(room?: string, identity?: string): JobState | undefined;
}

export class TempDirs {
  private readonly dirs: string[] = [];
  private readonly engines: Engine[] = [];
  make(): string {
    const dir = mkdtempSync(join(tmpdir(), 'lastwill-jobs-'));
    this.dirs.push(dir);
    return dir;
  }
  track(engine: Engine): Engine {
    this.engines.push(engine);
    return engine;
  }
  async cleanup(): Promise<void> {
    for (const e of this.engines.splice(0)) await e.stop();
    for (const d of this.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }
}

/** The engine's default disconnect grace, which the test settings keep. */
export const GRACE_MS = DEFAULT_ENGINE_SETTINGS.disconnectGraceMs;
/** The engine's default abort grace, which the test settings keep. */
export const ABORT_GRACE_MS = DEFAULT_ENGINE_SETTINGS.abortGraceMs;

export const ROOM = 'room-hash-AAAA';
export const IDENTITY = 'identity-hash-BBBB';

export function delegation(over: Partial<Delegation> = {}): Delegation {
  return {
    livekitRoom: ROOM,
    identity: IDENTITY,
    delayId: 'syd_delay_one',
    delayTimeoutMs: 100_000,
    serverName: 'hs.example',
    userId: '@alice:hs.example',
    source: 'delegate_delayed_leave',
    ...over,
  };
}

export async function makeRig(
  dirs: TempDirs,
  opts: {
    settings?: Partial<EngineSettings>;
    dbPath?: string;
    /** A store of the test's own (one that fails, say); `dbPath` is then unused. */
    store?: JobStore;
    clock?: FakeClock;
    log?: Logger;
    random?: () => number;
    start?: boolean;
    ownership?: Ownership;
    /** Told of everything the rig records, and of store commits (the agent's metrics, say). */
    observer?: EngineObserver;
  } = {},
): Promise<Rig> {
  const clock = opts.clock ?? new FakeClock(T0);
  const actions = new ScriptedActions(clock);
  const presence = new ScriptedPresence(clock);
  const transitions: Rig['transitions'] = [];
  const outcomes: Rig['outcomes'] = [];
  const disconnectToSend: number[] = [];
  const lookups: Rig['lookups'] = [];
  const dbPath = opts.dbPath ?? join(dirs.make(), 'jobs.sqlite');
  const extra = opts.observer ?? {};
  const engine = dirs.track(
    new Engine({
      store: opts.store ?? new SqliteJobStore(dbPath, 'normal'),
      clock,
      random: opts.random ?? (() => 0.5),
      actions,
      presence,
      log: opts.log ?? silentLogger(),
      settings: testSettings(opts.settings),
      ...(opts.ownership ? { ownership: opts.ownership } : {}),
      observer: {
        transition: (from, to, signal) => {
          transitions.push({ from, to, signal });
          extra.transition?.(from, to, signal);
        },
        action: (action, outcome, ms) => {
          outcomes.push({ action, outcome, ms });
          extra.action?.(action, outcome, ms);
        },
        disconnectToSend: (ms) => {
          disconnectToSend.push(ms);
          extra.disconnectToSend?.(ms);
        },
        lookup: (outcome, ms) => {
          lookups.push(outcome);
          extra.lookup?.(outcome, ms);
        },
        storeCommit: (operation, ms, ok) => extra.storeCommit?.(operation, ms, ok),
      },
    }),
  );
  if (opts.start !== false) await engine.start();
  const rig: Rig = {
    engine,
    clock,
    actions,
    presence,
    transitions,
    outcomes,
    disconnectToSend,
    lookups,
    dbPath,
    async advance(ms) {
      const target = clock.now() + ms;
      for (;;) {
        await settle();
        if (!clock.fireNext(target)) break;
      }
      // Nothing is due by `target` any more, so this only moves time.
      clock.advance(target - clock.now());
      await settle();
    },
    async delegate(d = {}) {
      await engine.delegate(delegation(d));
      await settle();
    },
    async signal(s) {
      const { sid, identity, joinedAtMs, ...rest } = s;
      engine.onParticipant({
        ...rest,
        session: { identity: identity ?? IDENTITY, sid, ...(joinedAtMs !== undefined ? { joinedAtMs } : {}) },
      });
      await settle();
    },
    state(room = ROOM, identity = IDENTITY) {
      return engine.get(room, identity)?.state;
    },
  };
  return rig;
}
