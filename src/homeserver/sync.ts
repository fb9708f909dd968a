/**
 * Builds /sync responses from the stream: rooms the user is joined to, invited to or has left
 * since the token, each with a timeline window, the state clients need and account data.
 */
import type { Clock } from '../lib/timer-heap.js';
import { type ClientEvent, STICKY, toClientEvent, toStrippedState } from './events.js';
import type { StreamNotifier } from './notifier.js';
import type { AccountDataRow, CoreStore, EventRow, MembershipRow } from './store.js';

const INVITE_STATE_TYPES = new Set([
  'm.room.create',
  'm.room.join_rules',
  'm.room.name',
  'm.room.avatar',
  'm.room.canonical_alias',
  'm.room.encryption',
  'm.room.topic',
]);

export interface SyncOptions {
  /** Stream position of the `since` token; undefined for an initial sync. */
  since: number | undefined;
  timelineLimit: number;
  fullState: boolean;
  /** The filter's `room.include_leave`: an initial sync also lists rooms the user left themselves. */
  includeLeave: boolean;
}

export interface SyncResult {
  body: Record<string, unknown>;
  /** Nothing for this user since the token: a long poll keeps waiting. */
  empty: boolean;
  /** Every room the user has a membership in: what a waiting long poll listens to. */
  rooms: ReadonlySet<string>;
}

type AccountDataEntry = AccountDataRow;

interface Timeline {
  events: ClientEvent[];
  limited: boolean;
  prev_batch: string;
}

export class SyncBuilder {
  constructor(
    private readonly store: CoreStore,
    private readonly notifier: StreamNotifier,
    private readonly clock: Clock,
  ) {}

  build(userId: string, opts: SyncOptions): SyncResult {
    const upTo = this.notifier.current;
    const since = opts.since === undefined ? undefined : Math.min(opts.since, upTo);
    const now = this.clock.now();
    const accountData = this.store.accountDataSince(userId, since ?? 0, upTo);
    const join: Record<string, unknown> = {};
    const invite: Record<string, unknown> = {};
    const leave: Record<string, unknown> = {};
    const rooms = new Set<string>();
    for (const m of this.store.membershipsOfUser(userId)) {
      rooms.add(m.room_id);
      const changedSince = since === undefined || m.stream > since;
      const roomData = accountData.filter((a) => a.room_id === m.room_id);
      if (m.membership === 'join') {
        const room = this.joinedRoom(userId, m.room_id, since, changedSince, upTo, opts, roomData, now);
        if (room) join[m.room_id] = room;
      } else if (m.membership === 'invite' && changedSince) {
        invite[m.room_id] = { invite_state: { events: this.inviteState(m.room_id, userId) } };
      } else if ((m.membership === 'leave' || m.membership === 'ban') && this.leaveShown(userId, m, since, opts)) {
        leave[m.room_id] = this.leftRoom(userId, m, since, opts, roomData, now);
      }
    }
    const globalData = toAccountData(accountData.filter((a) => a.room_id === ''));
    const empty =
      Object.keys(join).length + Object.keys(invite).length + Object.keys(leave).length + globalData.length === 0;
    return {
      empty,
      rooms,
      body: {
        next_batch: `s${upTo}`,
        rooms: { join, invite, leave, knock: {} },
        account_data: { events: globalData },
        presence: { events: [] },
        to_device: { events: [] },
        device_lists: { changed: [], left: [] },
        device_one_time_keys_count: { signed_curve25519: 0 },
        'org.matrix.msc2732.device_unused_fallback_key_types': [],
        device_unused_fallback_key_types: [],
      },
    };
  }

  private joinedRoom(
    userId: string,
    roomId: string,
    since: number | undefined,
    changedSince: boolean,
    upTo: number,
    opts: SyncOptions,
    roomData: AccountDataEntry[],
    now: number,
  ): Record<string, unknown> | undefined {
    // A fresh join gets the room from the start, like an initial sync of that room.
    const incremental = since !== undefined && !changedSince;
    const after = incremental ? since : 0;
    const quiet = incremental && roomData.length === 0 && !opts.fullState;
    if (quiet && this.notifier.roomUnchangedSince(roomId, since)) return undefined;
    const rows = this.store.eventsBackward(roomId, upTo, after, opts.timelineLimit + 1);
    if (quiet && rows.length === 0) return undefined;
    const { timeline, limited, inTimeline } = this.timeline(rows, opts.timelineLimit, after, userId, now);
    let stateRows: EventRow[];
    if (!incremental || opts.fullState) stateRows = this.store.roomState(roomId);
    else if (limited) stateRows = this.store.stateChangedSince(roomId, since);
    else stateRows = [];
    // MSC4354: sticky events the window skipped still reach the client, once, beside the timeline
    // (an unlimited window holds every event of the range, sticky ones included).
    const sticky = limited
      ? this.store.stickyBetween(roomId, after, upTo, now).filter((r) => !inTimeline.has(r.event_id))
      : [];
    return {
      summary: {},
      state: {
        events: stateRows.filter((r) => !inTimeline.has(r.event_id)).map((r) => toClientEvent(r, userId, now)),
      },
      timeline,
      ephemeral: { events: [] },
      account_data: { events: toAccountData(roomData) },
      unread_notifications: { notification_count: 0, highlight_count: 0 },
      ...(sticky.length > 0
        ? { [STICKY.syncSection]: { events: sticky.map((r) => toClientEvent(r, userId, now)) } }
        : {}),
    };
  }

  /**
   * Synapse's rule: an incremental sync shows every room left since the token; an initial sync
   * shows rooms the user was kicked or banned from, and rooms they left themselves only with
   * `include_leave` (never forgotten ones).
   */
  private leaveShown(userId: string, m: MembershipRow, since: number | undefined, opts: SyncOptions): boolean {
    if (since !== undefined) return m.stream > since;
    if (this.store.isForgotten(userId, m.room_id)) return false;
    return opts.includeLeave || m.membership === 'ban' || this.store.getEvent(m.event_id)?.sender !== userId;
  }

  /**
   * A `rooms.leave` entry: the timeline since the token (or from the start) up to and including
   * the leave, and the state as of the leave. That state is whole for an initial or full-state
   * sync and for a room the user was not in at the token; otherwise only what changed in a gap.
   */
  private leftRoom(
    userId: string,
    m: MembershipRow,
    since: number | undefined,
    opts: SyncOptions,
    roomData: AccountDataEntry[],
    now: number,
  ): Record<string, unknown> {
    const after = since ?? 0;
    const rows = this.store.eventsBackward(m.room_id, m.stream, after, opts.timelineLimit + 1);
    const { timeline, limited, inTimeline } = this.timeline(rows, opts.timelineLimit, after, userId, now);
    const whole =
      since === undefined ||
      opts.fullState ||
      membershipOfRow(this.store.stateEventAt(m.room_id, 'm.room.member', userId, since)) !== 'join';
    const stateRows = whole || limited ? this.store.stateBetween(m.room_id, whole ? 0 : after, m.stream) : [];
    return {
      state: {
        events: stateRows.filter((r) => !inTimeline.has(r.event_id)).map((r) => toClientEvent(r, userId, now)),
      },
      timeline,
      account_data: { events: toAccountData(roomData) },
    };
  }

  /** `rows` are newest first and may hold one more than `limit` (then the window is limited). */
  private timeline(
    rows: EventRow[],
    limit: number,
    after: number,
    reader: string,
    now: number,
  ): { timeline: Timeline; limited: boolean; inTimeline: Set<string> } {
    const limited = rows.length > limit;
    const window = rows.slice(0, limit).reverse();
    const oldest = window[0];
    return {
      timeline: {
        events: window.map((r) => toClientEvent(r, reader, now)),
        limited,
        prev_batch: `s${oldest ? oldest.stream - 1 : after}`,
      },
      limited,
      inTimeline: new Set(window.map((r) => r.event_id)),
    };
  }

  private inviteState(roomId: string, userId: string): Array<Record<string, unknown>> {
    return this.store
      .roomState(roomId)
      .filter((r) => INVITE_STATE_TYPES.has(r.type) || (r.type === 'm.room.member' && r.state_key === userId))
      .map(toStrippedState);
  }
}

function membershipOfRow(row: EventRow | undefined): unknown {
  return row && (JSON.parse(row.content) as { membership?: unknown }).membership;
}

function toAccountData(entries: AccountDataEntry[]): Array<{ type: string; content: unknown }> {
  return entries.map((a) => ({ type: a.type, content: JSON.parse(a.content) as unknown }));
}
