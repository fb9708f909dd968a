// The soak's checker on hand-made records: each kind of violation is found, and a run that keeps
// the promise passes, so a soak with 0 violations means something.
import { describe, expect, it } from 'vitest';

import { boundAfter, check, type CheckOptions, endedRecord, type FaultRecord, type MembershipRecord, type SessionRecord } from './checker.js';

const T = 1_800_000_000_000;
const OPTS: CheckOptions = { graceMs: 1000, baseBoundMs: 8000, perFaultMs: 15_000, endedAt: T + 600_000 };

function membership(over: Partial<MembershipRecord> = {}): MembershipRecord {
  return { label: 'u0#0', key: '@u0:hs|DEV', identity: 'id-0', handedOverAt: T, hangups: [], ...over };
}
const session = (joinedAt: number, leftAt?: number, sid = `PA_${joinedAt}`): SessionRecord => ({
  identity: 'id-0',
  sid,
  joinedAt,
  ...(leftAt === undefined ? {} : { leftAt }),
});

describe('the soak checker', () => {
  it('passes a crash hung up in time, and measures both latencies', () => {
    // Killed at +60 s, LiveKit reports it at +80 s, the membership ends at +81.5 s.
    const m = membership({ departure: { at: T + 60_000, cause: 'crash' }, goneAt: T + 81_500, hangups: [T + 81_400] });
    const r = check([m], [session(T + 1000, T + 80_000)], [], OPTS);
    expect(r.violations).toEqual([]);
    expect(r.checked).toBe(1);
    expect(r.latencies.crash).toEqual([21_500]);
    expect(r.afterLiveKit.crash).toEqual([1500]);
  });

  it('finds a false hangup: ended while LiveKit still had the participant', () => {
    const m = membership({ goneAt: T + 30_000, hangups: [T + 29_900] });
    const r = check([m], [session(T + 1000, T + 50_000)], [], OPTS);
    expect(r.violations.map((v) => v.kind)).toEqual(['false_hangup']);
  });

  it('allows a hangup of a session that only just rejoined (within the grace and the report slack)', () => {
    // The participant was gone; a reconnect landed 2.5 s before the hangup: not yet past grace + slack.
    const m = membership({ departure: { at: T + 10_000, cause: 'crash' }, goneAt: T + 31_000, hangups: [T + 31_000] });
    const r = check([m], [session(T + 1000, T + 29_000), session(T + 28_500, T + 60_000, 'PA_back')], [], OPTS);
    expect(r.violations).toEqual([]);
  });

  it('judges a hangup by the homeserver\'s timestamp, not by when the observer saw it', () => {
    // Hung up at +20 s when the participant was long gone; a rejoin at +25 s; seen only at +40 s.
    const m = membership({ departure: { at: T + 10_000, cause: 'clean' }, goneAt: T + 40_000, hangups: [T + 20_000] });
    const sessions = [session(T + 1000, T + 10_100), session(T + 25_000, T + 90_000, 'PA_rejoin')];
    const faults: FaultRecord[] = [{ kind: 'homeserver-kill', startedAt: T + 19_000, endedAt: T + 35_000, allowanceMs: 20_000 }];
    const r = check([m], sessions, faults, OPTS);
    expect(r.violations).toEqual([]);
    // Without the history the observer's moment is all there is, and that looks false.
    expect(check([{ ...m, hangups: [] }], sessions, faults, OPTS).violations.map((v) => v.kind)).toEqual(['false_hangup']);
  });

  it('finds a late hangup past grace + base, and a fault in the window extends the bound', () => {
    const m = membership({ departure: { at: T + 60_000, cause: 'clean' }, goneAt: T + 75_000, hangups: [T + 75_000] });
    const sessions = [session(T + 1000, T + 60_200)];
    expect(check([m], sessions, [], OPTS).violations.map((v) => v.kind)).toEqual(['late_hangup']);
    const outage: FaultRecord = { kind: 'homeserver-cut', startedAt: T + 55_000, endedAt: T + 70_000, allowanceMs: 5000 };
    expect(check([m], sessions, [outage], OPTS).violations).toEqual([]);
    // A fault long over does not.
    const old: FaultRecord = { kind: 'homeserver-cut', startedAt: T + 5000, endedAt: T + 10_000, allowanceMs: 5000 };
    expect(check([m], sessions, [old], OPTS).violations.map((v) => v.kind)).toEqual(['late_hangup']);
  });

  it('chains faults that follow one another within the bound', () => {
    const at = T;
    const faults: FaultRecord[] = [
      { kind: 'a', startedAt: at - 1000, endedAt: at + 4000, allowanceMs: 2000 },
      { kind: 'b', startedAt: at + 12_000, endedAt: at + 20_000, allowanceMs: 3000 },
      { kind: 'c', startedAt: at + 200_000, endedAt: at + 210_000, allowanceMs: 3000 },
    ];
    // 9 s base, + 4 s + 2 s for a (bound 15 s), b starts inside it: + 8 s + 3 s; c is far away.
    expect(boundAfter(at, faults, OPTS)).toBe(9000 + 6000 + 11_000);
  });

  it('finds a lost delegation: left, and the membership never ended', () => {
    const m = membership({ departure: { at: T + 60_000, cause: 'freeze' } });
    const r = check([m], [session(T + 1000, T + 80_000)], [], OPTS);
    expect(r.violations.map((v) => v.kind)).toEqual(['lost_delegation']);
  });

  it('finds a double hangup in the room history', () => {
    const m = membership({ departure: { at: T + 60_000, cause: 'clean' }, goneAt: T + 61_000, hangups: [T + 61_000, T + 95_000] });
    const r = check([m], [session(T + 1000, T + 60_100)], [], OPTS);
    expect(r.violations.map((v) => v.kind)).toEqual(['double_hangup']);
  });

  it('measures from the last session before the departure, not from a later rejoin of the identity', () => {
    const m = membership({ departure: { at: T + 60_000, cause: 'clean' }, goneAt: T + 61_500, hangups: [T + 61_500] });
    // The same identity rejoins at +70 s for the next membership and leaves at +200 s.
    const r = check([m], [session(T + 1000, T + 60_100), session(T + 70_000, T + 200_000, 'PA_next')], [], OPTS);
    expect(r.violations).toEqual([]);
    expect(r.afterLiveKit.clean).toEqual([1400]);
  });

  it('finds a delayed leave still scheduled at the end: an orphaned hangup', () => {
    const m = membership({ departure: { at: T + 60_000, cause: 'clean' }, goneAt: T + 61_000, hangups: [T + 61_000], scheduledAtEnd: false });
    expect(check([m], [session(T + 1000, T + 60_100)], [], OPTS).violations).toEqual([]);
    expect(check([{ ...m, scheduledAtEnd: true }], [session(T + 1000, T + 60_100)], [], OPTS).violations.map((v) => v.kind)).toEqual(['orphaned_hangup']);
  });

  it('a superseded membership needs no hangup of its own, but may not leave one scheduled', () => {
    // Killed at +60 s and reopened on the same device at +62 s; LiveKit only noticed at +80 s.
    const old = membership({ departure: { at: T + 60_000, cause: 'crash' }, supersededAt: T + 62_000 });
    const sessions = [session(T + 1000, T + 80_000)];
    expect(check([old], sessions, [], OPTS).violations).toEqual([]);
    expect(check([{ ...old, scheduledAtEnd: true }], sessions, [], OPTS).violations.map((v) => v.kind)).toEqual(['orphaned_hangup']);
  });

  it('gives a membership end to the record of the app session that began before the hangup', () => {
    // The agent hung up at +100 s; the app noticed and scheduled a new delayed leave at +101 s
    // (record 2); the observer saw the end only at +102 s.
    interface Rec { label: string; createdAt: number; predecessor?: Rec }
    const first: Rec = { label: 'u0#0', createdAt: T };
    const second: Rec = { label: 'u0#0.1', createdAt: T + 101_000, predecessor: first };
    expect(endedRecord(second, T + 100_000).label).toBe('u0#0');
    // A later hangup belongs to the new record; so does an end whose hangup is unknown.
    expect(endedRecord(second, T + 150_000).label).toBe('u0#0.1');
    expect(endedRecord(second, undefined).label).toBe('u0#0.1');
    // The chain is followed as far as needed, and never past its first record.
    const third: Rec = { label: 'u0#0.2', createdAt: T + 200_000, predecessor: second };
    expect(endedRecord(third, T + 100_000).label).toBe('u0#0');
    expect(endedRecord(third, T - 1).label).toBe('u0#0');
  });
});
