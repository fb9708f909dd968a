/**
 * The stream position shared by events and account data, and the wake-up signal long-polling
 * /sync waits on. Everything runs on one thread, so a position handed out is committed (or rolled
 * back) before any reader can observe it.
 *
 * Wake-ups are scoped: writes mark the rooms (and, for membership events, the member) they concern,
 * and `notify` wakes only the long polls of users in those rooms. Timed delayed sends commit up to
 * a thousand small batches a second; waking every long poll for each of them made each poll
 * rebuild an empty response per batch, which took more of the server than the sends themselves.
 */
import { CappedMap } from '../lib/capped-map.js';
import type { Clock } from '../lib/timer-heap.js';

/** Most rooms whose latest position is remembered; past this the memory starts over. */
const MAX_ROOM_POSITIONS = 65_536;

/** Who a waiting long poll is for: a write to one of `rooms`, or about `userId`, wakes it. */
export interface WaitInterest {
  userId: string;
  rooms: ReadonlySet<string>;
}

interface Waiter {
  wake: () => void;
  interest: WaitInterest | undefined;
}

export class StreamNotifier {
  private position: number;
  private readonly waiters = new Set<Waiter>();
  private readonly touchedRooms = new Set<string>();
  private readonly touchedUsers = new Set<string>();
  /**
   * Per room, a position at or after its newest write (since start; forgotten past
   * MAX_ROOM_POSITIONS rooms): /sync skips reading a room nothing was written to since the
   * token, which is most rooms of most long polls.
   */
  private readonly roomPositions = new CappedMap<string, number>(MAX_ROOM_POSITIONS);

  constructor(
    initial: number,
    private readonly clock: Clock,
  ) {
    this.position = initial;
  }

  /** The newest position handed out. */
  get current(): number {
    return this.position;
  }

  /** A fresh position for a write that is about to happen. */
  next(): number {
    return ++this.position;
  }

  /**
   * Records that a write since the last `notify` concerns `roomId` (and `userId`, if given). Called
   * after the write took its position (`next`), so the room's position covers it.
   */
  touch(roomId: string, userId?: string): void {
    this.touchedRooms.add(roomId);
    if (userId !== undefined) this.touchedUsers.add(userId);
    this.roomPositions.set(roomId, this.position);
  }

  /**
   * True when nothing was written to the room after position `since` (false when not known, for
   * a room not written to since start: the caller then reads it).
   */
  roomUnchangedSince(roomId: string, since: number): boolean {
    const position = this.roomPositions.get(roomId);
    return position !== undefined && position <= since;
  }

  /**
   * Wakes the long polls the touched rooms and users concern (they re-check whether anything is
   * new for them); every long poll when nothing was touched (account data, or a caller that does
   * not say), so an unscoped write never goes unseen.
   */
  notify(): void {
    const everyone = this.touchedRooms.size === 0 && this.touchedUsers.size === 0;
    const woken: Waiter[] = [];
    for (const w of this.waiters) if (everyone || this.concerns(w.interest)) woken.push(w);
    this.touchedRooms.clear();
    this.touchedUsers.clear();
    for (const w of woken) w.wake();
  }

  /**
   * Resolves on the next `notify` that concerns `interest` (any notify without one), after
   * `timeoutMs`, or when `signal` aborts, whichever is first.
   */
  wait(timeoutMs: number, signal: AbortSignal, interest?: WaitInterest): Promise<void> {
    if (timeoutMs <= 0 || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const waiter: Waiter = {
        wake: () => {
          this.waiters.delete(waiter);
          this.clock.clearTimeout(timer);
          signal.removeEventListener('abort', waiter.wake);
          resolve();
        },
        interest,
      };
      const timer = this.clock.setTimeout(waiter.wake, timeoutMs);
      signal.addEventListener('abort', waiter.wake, { once: true });
      this.waiters.add(waiter);
    });
  }

  private concerns(interest: WaitInterest | undefined): boolean {
    if (interest === undefined || this.touchedUsers.has(interest.userId)) return true;
    const [small, large] =
      interest.rooms.size <= this.touchedRooms.size
        ? [interest.rooms, this.touchedRooms]
        : [this.touchedRooms, interest.rooms];
    for (const room of small) if (large.has(room)) return true;
    return false;
  }
}
