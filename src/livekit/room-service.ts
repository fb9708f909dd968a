/**
 * LiveKit RoomService (Twirp) calls: room creation for full-access users and the presence lookup
 * the engine polls. Retries are the engine's job; this layer answers once, truthfully.
 *
 * ListParticipants is the hot call (the sanity poll asks up to its budget of rooms a second), so
 * it does not go through the SDK's RoomServiceClient, whose async token signing, region-failover
 * machinery and reflective protobuf decoding cost several times the request itself: it signs
 * its roomAdmin token synchronously, POSTs the same Twirp JSON over a keep-alive undici pool and
 * reads only the fields it needs from the answer.
 */
import { RoomServiceClient, ServerError } from 'livekit-server-sdk';
import { Agent } from 'undici';

import type { ParticipantSession, PresenceLookup } from '../agent/contracts.js';
import { sessionOfJson } from './participants.js';
import { Hs256 } from './jwt.js';
import { type LiveKitCredentials, signRoomAdminToken } from './tokens.js';

/** lk-jwt-service's room settings: closed 300 s after creation if nobody joins, 20 s after the last leaves. */
export const ROOM_EMPTY_TIMEOUT_S = 300;
export const ROOM_DEPARTURE_TIMEOUT_S = 20;

export interface RoomServiceOptions extends LiveKitCredentials {
  /** The SFU URL (ws:// and wss:// are rewritten to http:// and https://). */
  url: string;
  /** Per-call timeout in seconds. */
  timeoutSeconds?: number;
  /** Clock for the tokens' validity; tests inject one. */
  now?: () => number;
}

/**
 * ListParticipants needs `roomAdmin` with `room` equal to the request's room (a `roomList` token
 * is refused), so each call signs a token for its room (microseconds, see signRoomAdminToken),
 * valid long enough to outlive any clock skew the SFU tolerates.
 */
const ADMIN_TOKEN_TTL_S = 600;
const LIST_PARTICIPANTS_PATH = '/twirp/livekit.RoomService/ListParticipants';

/** The SDK's Twirp error for a non-2xx answer: `{code, msg}` JSON, else the body text. */
function twirpError(status: number, text: string): ServerError {
  let code: string | undefined;
  let msg = text || 'Unknown internal error';
  try {
    const body = JSON.parse(text) as { code?: unknown; msg?: unknown };
    if (typeof body.code === 'string') code = body.code;
    if (typeof body.msg === 'string') msg = body.msg;
  } catch {
    // Not JSON (a proxy's error page): the text is the message.
  }
  return new ServerError('TwirpError', msg, status, code);
}

export class LiveKitRooms implements PresenceLookup {
  private readonly client: RoomServiceClient;
  private readonly apiKey: string;
  private readonly signer: Hs256;
  private readonly now: () => number;
  private readonly origin: string;
  private readonly listPath: string;
  private readonly timeoutMs: number;
  private readonly pool: Agent;

  constructor(opts: RoomServiceOptions) {
    const timeoutSeconds = opts.timeoutSeconds ?? 5;
    this.client = new RoomServiceClient(opts.url, opts.key, opts.secret, { requestTimeout: timeoutSeconds });
    const listUrl = new URL(LIST_PARTICIPANTS_PATH, opts.url.replace(/^ws/, 'http'));
    this.origin = listUrl.origin;
    this.listPath = listUrl.pathname;
    this.apiKey = opts.key;
    this.signer = new Hs256(opts.secret);
    this.now = opts.now ?? Date.now;
    this.timeoutMs = timeoutSeconds * 1000;
    this.pool = new Agent({ keepAliveTimeout: 30_000, connections: 16, connect: { timeout: this.timeoutMs } });
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
    const jwt = signRoomAdminToken(this.signer, this.apiKey, room, this.now(), ADMIN_TOKEN_TTL_S);
    // Each phase (connect, answer, every body chunk) is bounded by the timeout. Not an
    // AbortSignal.timeout: its timer and abort plumbing cost as much again as the call itself.
    const res = await this.pool.request({
      origin: this.origin,
      path: this.listPath,
      method: 'POST',
      headers: { 'content-type': 'application/json;charset=UTF-8', authorization: `Bearer ${jwt}` },
      body: JSON.stringify({ room }),
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
    const text = await res.body.text();
    if (res.statusCode < 200 || res.statusCode >= 300) {
      const err = twirpError(res.statusCode, text);
      if (err.code === 'not_found') return [];
      throw err;
    }
    const { participants = [] } = JSON.parse(text) as { participants?: Array<Record<string, unknown>> };
    return participants.map(sessionOfJson);
  }

  /** Closes the keep-alive connections. */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
