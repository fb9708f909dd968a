/** LiveKit join tokens with the grants lk-jwt-service issues. */
import { AccessToken } from 'livekit-server-sdk';

export interface LiveKitCredentials {
  key: string;
  secret: string;
}

/** Join tokens are valid for one hour, as lk-jwt-service's. */
export const JOIN_TOKEN_TTL = '1h';

/**
 * A JWT that lets `identity` join `room` (never create it), publish, subscribe and update its own
 * metadata.
 */
export async function mintJoinToken(
  creds: LiveKitCredentials,
  room: string,
  identity: string,
): Promise<string> {
  const token = new AccessToken(creds.key, creds.secret, { identity, ttl: JOIN_TOKEN_TTL });
  token.addGrant({
    room,
    roomJoin: true,
    roomCreate: false,
    canPublish: true,
    canSubscribe: true,
    canUpdateOwnMetadata: true,
  });
  return token.toJwt();
}
