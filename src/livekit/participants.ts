/** LiveKit's participant records as the engine's sessions. */
import type { ParticipantSession } from '../agent/contracts.js';

/**
 * The session of a participant in Twirp's JSON (proto3 JSON: 64-bit integers as strings, field
 * names in either spelling), read without building the whole protobuf message: the sanity poll
 * decodes one answer per room, and only these four fields matter. A record without a string
 * identity and sid throws, so a garbled answer is a failed lookup, never an empty room.
 */
export function sessionOfJson(p: Record<string, unknown>): ParticipantSession {
  const { identity, sid } = p;
  if (typeof identity !== 'string' || typeof sid !== 'string') {
    throw new Error('participant without identity or sid');
  }
  return session(identity, sid, Number(p.joinedAtMs ?? p.joined_at_ms ?? 0), Number(p.joinedAt ?? p.joined_at ?? 0));
}

/**
 * The session from a participant's fields. Start time: `joinedAtMs`, else `joinedAt` seconds
 * (older servers), else unknown; protobuf zero values (0) mean "not set".
 */
export function session(identity: string, sid: string, joinedAtMs: number, joinedAtS: number): ParticipantSession {
  const startMs = joinedAtMs > 0 ? joinedAtMs : joinedAtS > 0 ? joinedAtS * 1000 : undefined;
  return { identity, sid, ...(startMs !== undefined ? { joinedAtMs: startMs } : {}) };
}
