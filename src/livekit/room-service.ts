/**
 * LiveKit RoomService (Twirp) calls: room creation for full-access users and the presence lookup
 * the engine polls. Retries are the engine's job; this layer answers once, truthfully.
 */
import { RoomServiceClient, ServerError } from 'livekit-server-sdk';

import type { ParticipantSession, PresenceLookup } from '../agent/contracts.js';
import { sessionOf } from './participants.js';
import type { LiveKitCredentials } from './tokens.js';

/** lk-jwt-service's room settings: closed 300 s after creation if nobody joins, 20 s after the last leaves. */
export const ROOM_EMPTY_TIMEOUT_S = 300;
export const ROOM_DEPARTURE_TIMEOUT_S = 20;

export interface RoomServiceOptions extends LiveKitCredentials {
  /** The SFU URL (ws:// is rewritten to http:// by the SDK). */
  url: string;
  /** Per-call timeout in seconds. */
  timeoutSeconds?: number;
}

export class LiveKitRooms implements PresenceLookup {
  private readonly client: RoomServiceClient;

  constructor(opts: RoomServiceOptions) {
    this.client = new RoomServiceClient(opts.url, opts.key, opts.secret, {
      requestTimeout: opts.timeoutSeconds ?? 5,
    });
  }

  /** Creates (or touches) the room a full-access user is about to join. */
  async createRoom(name: string): Promise<void> {
    await this.client.createRoom({
      name,
      emptyTimeout: ROOM_EMPTY_TIMEOUT_S,
      departureTimeout: ROOM_DEPARTURE_TIMEOUT_S,
      maxParticipants: 0,
    });
  }

  /**
   * The sessions in `room`. An unknown room is empty: a single node answers [] and a cluster a
   * Twirp `not_found`, both authoritative. Every other failure throws, so it is never read as "gone".
   */
  async listParticipants(room: string): Promise<ParticipantSession[]> {
    let participants;
    try {
      participants = await this.client.listParticipants(room);
    } catch (err) {
      if (err instanceof ServerError && err.code === 'not_found') return [];
      throw err;
    }
    return participants.map(sessionOf);
  }
}
