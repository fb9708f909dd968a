/** LiveKit join tokens with the grants lk-jwt-service issues, and the agent's own admin tokens. */
import { AccessToken } from 'livekit-server-sdk';

import type { Hs256 } from './jwt.js';

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

/**
 * A `roomAdmin` JWT for `room`, valid from `nowMs` for `ttlSeconds`: the same claims the SDK's
 * AccessToken writes, signed synchronously. The SDK signs through an async WebCrypto-style path
 * that costs more than the HTTP call it authorises, and ListParticipants needs one token per room,
 * so at a hundred thousand rooms no cache of them stays warm.
 */
export function signRoomAdminToken(
  signer: Hs256,
  apiKey: string,
  room: string,
  nowMs: number,
  ttlSeconds: number,
): string {
  const nbf = Math.floor(nowMs / 1000);
  return signer.sign({ video: { roomAdmin: true, room }, iss: apiKey, exp: nbf + ttlSeconds, nbf });
}
