// The soak's checker: pure functions over what was recorded, so it can be tested on its own.
// Ground truth is LiveKit's own report (a webhook receiver no fault touches) and each participant's
// own record of what it did; what is judged is what another client saw through /sync (when each
// membership ended) and the room history (how many hangups each membership got).

/** How a participant really left. */
export type Cause = 'clean' | 'crash' | 'freeze' | 'drain';

/** One membership: one app session that handed its hangup to the agent. */
export interface MembershipRecord {
  label: string;
  /** The observer's key, `<user>|<device>`. */
  key: string;
  /** The LiveKit identity the agent follows. */
  identity: string;
  handedOverAt: number;
  /** When the participant really went (its own action), and how. Unset while it stays. */
  departure?: { at: number; cause: Cause };
  /** When the observer saw the membership end. */
  goneAt?: number;
  /** The room history's hangups of this membership (origin_server_ts of each). */
  hangups: number[];
  /**
   * When a new membership of the same device took its place (the app reopened before LiveKit
   * noticed the crash): it ends without a hangup of its own.
   */
  supersededAt?: number;
  /** Whether its delayed leave was still scheduled on the homeserver when the run ended. */
  scheduledAtEnd?: boolean;
}

/** One LiveKit session of an identity, from participant_joined to participant_left. */
export interface SessionRecord {
  identity: string;
  sid: string;
  joinedAt: number;
  leftAt?: number;
}

export interface FaultRecord {
  kind: string;
  /** Which process or link, when there is a choice (a replica). */
  target?: string;
  startedAt: number;
  endedAt: number;
  /**
   * How long after the fault ends the system may still take to catch up (a restart's recovery, a
   * retry backoff in effect, the next presence poll); the options' perFaultMs when unset.
   */
  allowanceMs?: number;
}

export interface CheckOptions {
  /** The agent's disconnect grace. */
  graceMs: number;
  /** Allowed between LiveKit's report of the last session's end and the membership's end, with no fault. */
  baseBoundMs: number;
  /** Added for every fault active in the window, beyond its own duration, unless it states its own. */
  perFaultMs: number;
  /** When the run ended (every participant gone, faults healed, drained). */
  endedAt: number;
}

export type ViolationKind = 'false_hangup' | 'late_hangup' | 'lost_delegation' | 'double_hangup' | 'orphaned_hangup';
export const VIOLATION_KINDS: readonly ViolationKind[] = ['false_hangup', 'late_hangup', 'lost_delegation', 'double_hangup', 'orphaned_hangup'];

export interface Violation {
  kind: ViolationKind;
  label: string;
  detail: string;
}

export interface CheckResult {
  checked: number;
  violations: Violation[];
  /** Real departure → membership end, ms, per cause. */
  latencies: Record<Cause, number[]>;
  /** LiveKit's report of the end → membership end, ms, per cause. */
  afterLiveKit: Record<Cause, number[]>;
}

/**
 * LiveKit's report reaches the checker's receiver a little after the fact, as it reaches the agent:
 * a session counts as present at `t` only if it was there this long before and after.
 */
export const REPORT_SLACK_MS = 2000;

/**
 * The checks:
 * 1. a membership that ended while LiveKit still had its identity in the call (a session present
 *    from before the grace until after the end, with REPORT_SLACK_MS either side) is a false hangup;
 * 2. a participant who left must lose its membership within the bound after LiveKit reported its
 *    last session ended: graceMs + baseBoundMs, plus each overlapping fault's remaining duration
 *    and perFaultMs (the faults' report says which);
 * 3. one who left and never lost its membership by the end is a lost delegation;
 * 4. more than one hangup for one membership (from the room history) is a double hangup;
 * 5. a delayed leave still scheduled when the run ended (everyone gone) is an orphaned hangup: it
 *    would fire later on the same state key and end whatever membership the device has then.
 * A superseded membership (its device joined again before LiveKit saw it go) is judged by 1, 4, 5.
 * The moment of a hangup is the homeserver's timestamp of the event when the history has it (an
 * observer whose sync was cut sees it late); lateness is judged by when the observer saw it.
 */
export function check(
  memberships: readonly MembershipRecord[],
  sessions: readonly SessionRecord[],
  faults: readonly FaultRecord[],
  opts: CheckOptions,
): CheckResult {
  const violations: Violation[] = [];
  const latencies: CheckResult['latencies'] = { clean: [], crash: [], freeze: [], drain: [] };
  const afterLiveKit: CheckResult['afterLiveKit'] = { clean: [], crash: [], freeze: [], drain: [] };
  const byIdentity = new Map<string, SessionRecord[]>();
  for (const s of sessions) {
    const list = byIdentity.get(s.identity);
    if (list) list.push(s);
    else byIdentity.set(s.identity, [s]);
  }
  let checked = 0;
  for (const m of memberships) {
    checked++;
    const own = (byIdentity.get(m.identity) ?? []).filter((s) => s.joinedAt >= m.handedOverAt - 60_000);
    if (m.hangups.length > 1) {
      const at = m.hangups.map(iso).join(', ');
      violations.push({ kind: 'double_hangup', label: m.label, detail: `${m.hangups.length} hangups in the room history (${at})` });
    }

    // When the hangup really happened: the homeserver's timestamp, else when it was seen (a
    // membership that ended without a hangup event in the history).
    const endedAt = m.hangups.length ? Math.min(...m.hangups) : m.goneAt;
    if (endedAt !== undefined) {
      // Present through the whole grace before the end and after it: the agent hung up someone still there.
      const during = own.filter(
        (s) => s.joinedAt <= endedAt - opts.graceMs - REPORT_SLACK_MS && (s.leftAt === undefined || s.leftAt > endedAt + REPORT_SLACK_MS),
      );
      if (during.length > 0) {
        violations.push({
          kind: 'false_hangup',
          label: m.label,
          detail: `membership ended at ${iso(endedAt)} while LiveKit still had session ${during[0]!.sid} (joined ${iso(during[0]!.joinedAt)})`,
        });
      }
    }
    if (m.scheduledAtEnd) {
      violations.push({
        kind: 'orphaned_hangup',
        label: m.label,
        detail: `its delayed leave is still scheduled after the run${m.supersededAt ? ' (superseded by a new membership of the same device)' : ''}`,
      });
    }
    if (!m.departure || (m.supersededAt !== undefined && m.goneAt === undefined)) continue;
    // LiveKit's report that the last of its sessions before the departure ended (a rejoin with the
    // same identity comes later and belongs to the next membership).
    const departedAt = m.departure.at;
    const last = own
      .filter((s) => s.joinedAt <= departedAt)
      .reduce<SessionRecord | undefined>((a, s) => (!a || s.joinedAt > a.joinedAt ? s : a), undefined);
    const leftAt = last?.leftAt ?? m.departure.at;
    if (m.goneAt === undefined) {
      violations.push({ kind: 'lost_delegation', label: m.label, detail: `left at ${iso(m.departure.at)} (${m.departure.cause}), membership never ended` });
      continue;
    }
    latencies[m.departure.cause].push(m.goneAt - m.departure.at);
    afterLiveKit[m.departure.cause].push(m.goneAt - leftAt);
    const bound = boundAfter(leftAt, faults, opts);
    if (m.goneAt - leftAt > bound) {
      violations.push({
        kind: 'late_hangup',
        label: m.label,
        detail: `LiveKit reported the end at ${iso(leftAt)}; membership ended ${m.goneAt - leftAt} ms later (bound ${bound} ms)`,
      });
    }
  }
  return { checked, violations, latencies, afterLiveKit };
}

/** The allowed delay after `at`: the base, plus what every fault active from then on adds. */
export function boundAfter(at: number, faults: readonly FaultRecord[], opts: CheckOptions): number {
  let bound = opts.graceMs + opts.baseBoundMs;
  // Faults may follow one another: each one active while the hangup is still allowed extends it.
  for (const f of [...faults].sort((a, b) => a.startedAt - b.startedAt)) {
    const allowance = f.allowanceMs ?? opts.perFaultMs;
    if (f.endedAt + allowance < at || f.startedAt > at + bound) continue;
    bound += Math.max(0, f.endedAt - Math.max(at, f.startedAt)) + allowance;
  }
  return bound;
}

/**
 * Which record of an app session a membership end belongs to. An app that schedules a new delayed
 * leave mid-session starts a new record (`predecessor` links them); the observer may see the end
 * of the old one only after that. An end belongs to the latest record that began before the
 * hangup's timestamp; without the hangup's timestamp, to the latest record.
 */
export function endedRecord<T extends { createdAt: number; predecessor?: T }>(latest: T, hangupAt: number | undefined): T {
  let record = latest;
  if (hangupAt === undefined) return record;
  while (record.createdAt > hangupAt && record.predecessor) record = record.predecessor;
  return record;
}

const iso = (t: number) => new Date(t).toISOString();
