/**
 * The delegate job's state machine as data. The engine turns every outside event (a webhook, a
 * presence lookup, a timer, the outcome of a restart, send or cancel) into one `Signal`, looks the
 * pair (state, signal) up here and runs the listed actions; it has no other control flow. Every
 * pair is either a transition or explicitly ignored, so the documented table (docs/agent.md) and the tests cover all
 * of them.
 */
import type { JobState } from '../contracts.js';

export const JOB_STATES = [
  'waiting',
  'connected',
  'leaving',
  'sending',
  'cancelling',
  'sent',
  'aborted',
  'replaced',
  'expired',
] as const satisfies readonly JobState[];

/** The states of a key's current job: at most one job per (room, identity) is in one of them. */
export const LIVE_STATES = [
  'waiting',
  'connected',
  'leaving',
  'sending',
] as const satisfies readonly JobState[];
/**
 * A live job, or a replaced one still cancelling its delayed event: it has timers and work left,
 * and it is restored. A cancelling job is not the key's job, so a key may have any number of them
 * beside its one live job (the stores' uniqueness covers LIVE_STATES only).
 */
export const ACTIVE_STATES = [...LIVE_STATES, 'cancelling'] as const satisfies readonly JobState[];
export const TERMINAL_STATES = [
  'sent',
  'aborted',
  'replaced',
  'expired',
] as const satisfies readonly JobState[];

const LIVE: ReadonlySet<JobState> = new Set(LIVE_STATES);
const ACTIVE: ReadonlySet<JobState> = new Set(ACTIVE_STATES);

/** The key's current job: webhooks and lookups concern it. */
export function isLive(state: JobState): boolean {
  return LIVE.has(state);
}

/** Not finished: live, or cancelling the delayed event of a job that was replaced. */
export function isActive(state: JobState): boolean {
  return ACTIVE.has(state);
}

/** States that keep the delayed event alive: moving between them keeps the restart schedule. */
export function isRestarting(state: JobState): boolean {
  return state === 'connected' || state === 'leaving';
}

/** What the engine can tell a job, each with the one-line meaning docs/agent.md prints. */
export const SIGNAL_DOCS = {
  joined: 'participant_joined of a session newer than the current one',
  left: 'left/aborted of the current session (while waiting: of any session not already ended)',
  left_unsure:
    'left with DUPLICATE_IDENTITY of the current session, or the end of a session newer than it',
  stale_session: 'joined/left/aborted of an older, unknown or already ended session',
  present: 'a presence lookup (or poll) found the identity, on a session not known to have ended',
  absent: 'a presence lookup (or poll) confirmed the identity is not in the room',
  lookup_failed: 'the presence lookup failed (transport or server error)',
  lookup_due: 'the job\'s lookup timer fired (leaving: the disconnect grace ended)',
  action_due: 'the job\'s restart/send timer fired',
  deadline: 'the state\'s deadline passed (waiting: wait timeout; otherwise the event\'s deadline)',
  restart_ok: 'restart answered 200',
  restart_not_found: 'restart answered 404: the delayed event is gone',
  restart_rate_limited: 'restart answered 429',
  restart_failed: 'restart failed transiently (5xx, other 4xx, timeout, transport)',
  restart_unresolvable: 'the homeserver URL cannot be resolved or is refused',
  send_ok: 'send answered 200',
  send_not_found: 'send answered 404: already sent or cancelled',
  send_rate_limited: 'send answered 429',
  send_failed: 'send failed transiently, or the homeserver URL cannot be resolved',
  cancel_ok: 'cancel answered 200',
  cancel_not_found: 'cancel answered 404 (or 409): already sent, cancelled or gone',
  cancel_rate_limited: 'cancel answered 429',
  cancel_failed: 'cancel failed transiently, or the homeserver URL cannot be resolved',
  cancel_unneeded:
    'the key\'s newer job carries the same delay id (a client repeated its delegation): nothing to cancel',
  replace: 'a new delegation for the same (room, identity) was committed',
  lapsed:
    'restored after the delayed event ran out while the agent was down (connected: its deadline; ' +
    'waiting: its delay since the delegation), so the homeserver has sent it',
} as const;

export type Signal = keyof typeof SIGNAL_DOCS;
export const SIGNALS = Object.keys(SIGNAL_DOCS) as Signal[];

/** The engine's side effects, each with the meaning docs/agent.md prints. */
export const ACTION_DOCS = {
  adopt: 'make the signal\'s session the current one',
  lookup: 'look the identity up now (batched per room; resets the lookup backoff)',
  retryLookup: 'look the identity up again after backoff',
  grace: 'wait deadline = min(wait deadline, now + abortGraceMs)',
  leaveGrace:
    'look the identity up once disconnectGraceMs from now; restarts go on meanwhile. A failed ' +
    'lookup then sends (the left webhook is evidence), unlike the sanity poll\'s, which never does',
  armDeadline: 'event deadline = now + delay',
  restart: 'restart now, through the homeserver\'s restart pacing',
  scheduleRestart: 'deadline = now + delay; next restart at restartFraction × delay (jittered)',
  backoffRestart: 'retry the restart after backoff (the deadline still bounds it)',
  pauseRestarts: 'pause the homeserver\'s restarts for Retry-After (or backoff); retry then',
  send:
    'send now, never paced behind restarts (retry budget: the event deadline; from waiting or ' +
    'after a restore past it, min(delay, maxWaitingMs))',
  backoffSend: 'retry the send after backoff (the deadline still bounds it)',
  retryAfterSend: 'retry the send after Retry-After (or backoff); the homeserver\'s restarts pause too',
  cancel:
    'cancel the replaced job\'s delayed event now, never paced behind restarts, unless the key\'s ' +
    'newer job carries the same delay id (retry budget: the event deadline; from waiting, or after ' +
    'a restore past it, min(delay, maxWaitingMs))',
  backoffCancel: 'retry the cancel after backoff (the deadline still bounds it)',
  retryAfterCancel:
    'retry the cancel after Retry-After (or backoff); the homeserver\'s restarts pause too',
} as const;

export type Action = keyof typeof ACTION_DOCS;

export interface Transition {
  readonly to: JobState;
  readonly actions: readonly Action[];
}

type Row = readonly [from: JobState, signal: Signal, to: JobState, actions: readonly Action[]];

/** Every pair that does something. A self-transition with actions is still a transition. */
const TRANSITION_ROWS: readonly Row[] = [
  ['waiting', 'joined', 'connected', ['adopt', 'armDeadline', 'restart']],
  ['waiting', 'present', 'connected', ['adopt', 'armDeadline', 'restart']],
  ['waiting', 'left', 'waiting', ['grace', 'lookup']],
  ['waiting', 'left_unsure', 'waiting', ['lookup']],
  ['waiting', 'absent', 'waiting', ['retryLookup']],
  ['waiting', 'lookup_failed', 'waiting', ['retryLookup']],
  ['waiting', 'lookup_due', 'waiting', ['lookup']],
  ['waiting', 'deadline', 'sending', ['send']],
  ['waiting', 'replace', 'cancelling', ['cancel']],
  ['waiting', 'lapsed', 'expired', []],

  ['connected', 'joined', 'connected', ['adopt']],
  ['connected', 'present', 'connected', ['adopt']],
  ['connected', 'left', 'leaving', ['leaveGrace']],
  ['connected', 'left_unsure', 'connected', ['lookup']],
  ['connected', 'absent', 'sending', ['send']],
  ['connected', 'lookup_failed', 'connected', ['retryLookup']],
  ['connected', 'lookup_due', 'connected', ['lookup']],
  ['connected', 'action_due', 'connected', ['restart']],
  ['connected', 'deadline', 'expired', []],
  ['connected', 'restart_ok', 'connected', ['scheduleRestart']],
  ['connected', 'restart_not_found', 'aborted', []],
  ['connected', 'restart_rate_limited', 'connected', ['pauseRestarts']],
  ['connected', 'restart_failed', 'connected', ['backoffRestart']],
  ['connected', 'restart_unresolvable', 'aborted', []],
  ['connected', 'replace', 'cancelling', ['cancel']],
  ['connected', 'lapsed', 'expired', []],
  // The outcome of a send that was in flight when the participant came back (sending, joined):
  // a sent event cannot be taken back; a failed send leaves the restart to do.
  ['connected', 'send_ok', 'sent', []],
  ['connected', 'send_not_found', 'sent', []],
  ['connected', 'send_rate_limited', 'connected', ['pauseRestarts']],
  ['connected', 'send_failed', 'connected', ['restart']],

  // A rejoin during the grace (a new sid) keeps the call; restarts never stopped.
  ['leaving', 'joined', 'connected', ['adopt']],
  ['leaving', 'present', 'connected', ['adopt']],
  ['leaving', 'lookup_due', 'leaving', ['lookup']],
  ['leaving', 'absent', 'sending', ['send']],
  // Unlike the sanity poll (where a failure never sends), the left webhook already is positive
  // evidence that the session ended: a failing RoomService must not block the hang-up.
  ['leaving', 'lookup_failed', 'sending', ['send']],
  ['leaving', 'action_due', 'leaving', ['restart']],
  ['leaving', 'deadline', 'expired', []],
  ['leaving', 'restart_ok', 'leaving', ['scheduleRestart']],
  ['leaving', 'restart_not_found', 'aborted', []],
  ['leaving', 'restart_rate_limited', 'leaving', ['pauseRestarts']],
  ['leaving', 'restart_failed', 'leaving', ['backoffRestart']],
  ['leaving', 'restart_unresolvable', 'aborted', []],
  ['leaving', 'replace', 'cancelling', ['cancel']],
  ['leaving', 'lapsed', 'expired', []],
  ['leaving', 'send_ok', 'sent', []],
  ['leaving', 'send_not_found', 'sent', []],
  ['leaving', 'send_rate_limited', 'leaving', ['pauseRestarts']],
  ['leaving', 'send_failed', 'leaving', ['restart']],

  // Back before the send went through (it is being retried while the homeserver fails): the call
  // goes on, so the delayed event is restarted instead. A send already in flight may still land.
  ['sending', 'joined', 'connected', ['adopt', 'restart']],
  ['sending', 'present', 'connected', ['adopt', 'restart']],
  ['sending', 'action_due', 'sending', ['send']],
  ['sending', 'deadline', 'expired', []],
  ['sending', 'send_ok', 'sent', []],
  ['sending', 'send_not_found', 'sent', []],
  ['sending', 'send_rate_limited', 'sending', ['retryAfterSend']],
  ['sending', 'send_failed', 'sending', ['backoffSend']],
  ['sending', 'replace', 'cancelling', ['cancel']],

  // A replaced job's delayed event would otherwise stay scheduled and, on the same state key, end
  // the replacement's membership when it fires (typically an hour later, mid-call). Once its
  // deadline passed the homeserver has fired it: nothing is left to do.
  ['cancelling', 'action_due', 'cancelling', ['cancel']],
  ['cancelling', 'deadline', 'expired', []],
  ['cancelling', 'cancel_ok', 'replaced', []],
  ['cancelling', 'cancel_not_found', 'replaced', []],
  ['cancelling', 'cancel_unneeded', 'replaced', []],
  ['cancelling', 'cancel_rate_limited', 'cancelling', ['retryAfterCancel']],
  ['cancelling', 'cancel_failed', 'cancelling', ['backoffCancel']],
];

/**
 * With disconnectGraceMs = 0 the grace is off: these rows replace the default ones, and a left
 * sends at once (the behaviour before the grace existed).
 */
const NO_GRACE_ROWS: readonly Row[] = [['connected', 'left', 'sending', ['send']]];

const CANCEL_OUTCOMES = [
  'cancel_ok',
  'cancel_not_found',
  'cancel_rate_limited',
  'cancel_failed',
  'cancel_unneeded',
] as const satisfies readonly Signal[];

/** Pairs that deliberately do nothing (logged at debug), with the reason docs/agent.md prints. */
const IGNORED_ACTIVE: ReadonlyArray<readonly [JobState | readonly JobState[], readonly Signal[], string]> = [
  [
    'waiting',
    [
      'stale_session',
      'action_due',
      'restart_ok',
      'restart_not_found',
      'restart_rate_limited',
      'restart_failed',
      'restart_unresolvable',
      'send_ok',
      'send_not_found',
      'send_rate_limited',
      'send_failed',
    ],
    'no restart or send runs while waiting; stale sessions say nothing about the current one',
  ],
  ['connected', ['stale_session'], 'stale sessions say nothing about the current one'],
  [
    'leaving',
    ['left', 'left_unsure', 'stale_session'],
    'the session already ended and the lookup at the grace\'s end decides',
  ],
  [
    'sending',
    [
      'left',
      'left_unsure',
      'stale_session',
      'absent',
      'lookup_failed',
      'lookup_due',
      'restart_ok',
      'restart_not_found',
      'restart_rate_limited',
      'restart_failed',
      'restart_unresolvable',
      'lapsed',
    ],
    'only the participant\'s return or a replacement stops a send; late restart results are discarded',
  ],
  [LIVE_STATES, CANCEL_OUTCOMES, 'only a replaced job cancels, and it never becomes live again'],
  [
    'cancelling',
    [
      'joined',
      'left',
      'left_unsure',
      'stale_session',
      'present',
      'absent',
      'lookup_failed',
      'lookup_due',
      'replace',
    ],
    'no longer the key\'s job: the participant and newer delegations concern its replacement',
  ],
  [
    'cancelling',
    [
      'restart_ok',
      'restart_not_found',
      'restart_rate_limited',
      'restart_failed',
      'restart_unresolvable',
      'send_ok',
      'send_not_found',
      'send_rate_limited',
      'send_failed',
      'lapsed',
    ],
    'late restart and send results are discarded (a send that landed makes the cancel answer 404); ' +
      'a restore cancels even past the deadline, like an interrupted send',
  ],
];

const statesOf = (states: JobState | readonly JobState[]): readonly JobState[] =>
  typeof states === 'string' ? [states] : states;

export interface IgnoredPair {
  readonly state: JobState;
  readonly signal: Signal;
  readonly why: string;
}

/** The explicit list of ignored pairs: the active ones above, and everything in a terminal state. */
export const IGNORED: readonly IgnoredPair[] = [
  ...IGNORED_ACTIVE.flatMap(([states, signals, why]) =>
    statesOf(states).flatMap((state) => signals.map((signal) => ({ state, signal, why }))),
  ),
  ...TERMINAL_STATES.flatMap((state) =>
    SIGNALS.map((signal) => ({ state, signal, why: 'terminal states ignore everything' })),
  ),
];

export interface TransitionCell extends Transition {
  readonly state: JobState;
  readonly signal: Signal;
}

const toCells = (rows: readonly Row[]): TransitionCell[] =>
  rows.map(([state, signal, to, actions]) => ({ state, signal, to, actions }));

export const TRANSITIONS: readonly TransitionCell[] = toCells(TRANSITION_ROWS);
/** The cells that differ when disconnectGraceMs = 0. */
export const NO_GRACE_TRANSITIONS: readonly TransitionCell[] = toCells(NO_GRACE_ROWS);

const cellKey = (state: JobState, signal: Signal) => `${state}|${signal}`;
const indexOf = (cells: readonly TransitionCell[]) =>
  new Map(cells.map((t) => [cellKey(t.state, t.signal), t]));
const transitionIndex = indexOf(TRANSITIONS);
const noGraceIndex = new Map([...transitionIndex, ...indexOf(NO_GRACE_TRANSITIONS)]);
const ignoredIndex = new Set(IGNORED.map((i) => cellKey(i.state, i.signal)));

/** Which table to use: the default one, or the one with the disconnect grace turned off. */
export interface FsmVariant {
  disconnectGrace: boolean;
}

const WITH_GRACE: FsmVariant = { disconnectGrace: true };

/**
 * The transition for (state, signal), or null when the pair is ignored.
 * @throws when the pair is in neither list (the table test makes that impossible).
 */
export function step(state: JobState, signal: Signal, variant = WITH_GRACE): Transition | null {
  const key = cellKey(state, signal);
  const t = (variant.disconnectGrace ? transitionIndex : noGraceIndex).get(key);
  if (t) return t;
  if (ignoredIndex.has(key)) return null;
  throw new Error(`FSM has no entry for ${key}`);
}

export type FsmCell =
  | { state: JobState; signal: Signal; kind: 'transition'; to: JobState; actions: readonly Action[] }
  | { state: JobState; signal: Signal; kind: 'ignored'; why: string };

/** The whole table, state-major in declaration order, one cell per (state, signal). */
export function fsmTable(variant = WITH_GRACE): FsmCell[] {
  const cells: FsmCell[] = [];
  for (const state of JOB_STATES) {
    for (const signal of SIGNALS) {
      const t = step(state, signal, variant);
      if (t) cells.push({ state, signal, kind: 'transition', to: t.to, actions: t.actions });
      else {
        const why = IGNORED.find((i) => i.state === state && i.signal === signal)?.why ?? '';
        cells.push({ state, signal, kind: 'ignored', why });
      }
    }
  }
  return cells;
}

const transitionLine = (t: TransitionCell) =>
  `| ${t.state} | ${t.signal} | ${t.to} | ${t.actions.join(', ') || '—'} |`;

/** The FSM section of docs/agent.md: transitions, then ignored pairs of active states, then the legends. */
export function renderFsmMarkdown(): string {
  const lines: string[] = [
    '| From | Signal | To | Actions |',
    '|---|---|---|---|',
    ...TRANSITIONS.map(transitionLine),
    '',
    'With `disconnectGraceMs = 0` the grace is off and these rows replace the ones above:',
    '',
    '| From | Signal | To | Actions |',
    '|---|---|---|---|',
    ...NO_GRACE_TRANSITIONS.map(transitionLine),
    '',
    'Ignored (logged at debug):',
    '',
    '| State | Signals | Why |',
    '|---|---|---|',
    ...IGNORED_ACTIVE.map(
      ([states, signals, why]) => `| ${statesOf(states).join(', ')} | ${signals.join(', ')} | ${why} |`,
    ),
    `| ${TERMINAL_STATES.join(', ')} | all | terminal states ignore everything |`,
    '',
    '| Signal | Meaning |',
    '|---|---|',
    ...SIGNALS.map((s) => `| ${s} | ${SIGNAL_DOCS[s]} |`),
    '',
    '| Action | Meaning |',
    '|---|---|',
    ...(Object.keys(ACTION_DOCS) as Action[]).map((a) => `| ${a} | ${ACTION_DOCS[a]} |`),
  ];
  return `${lines.join('\n')}\n`;
}
