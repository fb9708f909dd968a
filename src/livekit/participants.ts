/** LiveKit's participant records as the engine's sessions. */
import type { ParticipantInfo } from 'livekit-server-sdk';

import type { ParticipantSession } from '../agent/contracts.js';

/**
 * The session a participant record describes. Start time: `joinedAtMs`, else `joinedAt` seconds
 * (older servers), else unknown; protobuf zero values mean "not set".
 */
export function sessionOf(
  p: Pick<ParticipantInfo, 'identity' | 'sid' | 'joinedAt' | 'joinedAtMs'>,
): ParticipantSession {
  const joinedAtMs =
    p.joinedAtMs > 0n ? Number(p.joinedAtMs) : p.joinedAt > 0n ? Number(p.joinedAt) * 1000 : undefined;
  return { identity: p.identity, sid: p.sid, ...(joinedAtMs !== undefined ? { joinedAtMs } : {}) };
}
