/**
 * LiveKit RoomService (Twirp) calls: room creation for full-access users and the presence lookup
 * the engine polls. Retries are the engine's job; this layer answers once, truthfully.
 *
 * ListParticipants is the hot call (the sanity poll asks once per room per interval), so it does
 * not go through the SDK's RoomServiceClient, which signs a fresh JWT per call and runs its
 * region-failover machinery: it reuses one signed roomAdmin token per room for most of the
 * token's life and POSTs the same Twirp JSON over a keep-alive undici pool.
 */
import { ListParticipantsResponse } from '@livekit/protocol';
import { AccessToken, RoomServiceClient, ServerError } from 'livekit-server-sdk';
import { Agent, request } from 'undici';

import type { ParticipantSession, PresenceLookup } from '../agent/contracts.js';
import { sessionOf } from './participants.js';
import type { LiveKitCredentials } from './tokens.js';

/** lk-jwt-service's room settings: closed 300 s after creation if nobody joins, 20 s after the last leaves. */
export const ROOM_EMPTY_TIMEOUT_S = 300;
export const ROOM_DEPARTURE_TIMEOUT_S = 20;

export interface RoomServiceOptions extends LiveKitCredentials {
  /** The SFU URL (ws:// and wss:// are rewritten to http:// and https://). */
  url: string;
  /** Per-call timeout in seconds. */
  timeoutSeconds?: number;
  /** Clock for the token cache; tests inject one. */
  now?: () => number;
}

/**
 * ListParticipants needs `roomAdmin` with `room` equal to the request's room (a `roomList` token
 * is refused), so tokens are per room. Each is valid for 10 minutes and reused for 8, so a token
 * handed to a request always has minutes left.
 */
const ADMIN_TOKEN_TTL_S = 600;
const ADMIN_TOKEN_REUSE_MS = 480_000;
/** Rooms whose token is kept (about 0.5 KiB each); beyond it the least recently used go. */
const ADMIN_TOKEN_CACHE_SIZE = 20_000;
const LIST_PARTICIPANTS_PATH = '/twirp/livekit.RoomService/ListParticipants';

/** Signed roomAdmin tokens per room, reused until shortly before they expire (an LRU). */
class RoomAdminTokens {
  private readonly tokens = new Map<string, { jwt: Promise<string>; renewAt: number }>();

  constructor(
    private readonly creds: LiveKitCredentials,
    private readonly now: () => number,
  ) {}

  get(room: string): Promise<string> {
    const now = this.now();
    const cached = this.tokens.get(room);
    this.tokens.delete(room);
    if (cached && cached.renewAt > now) {
      this.tokens.set(room, cached);
      return cached.jwt;
    }
    const token = new AccessToken(this.creds.key, this.creds.secret, { ttl: ADMIN_TOKEN_TTL_S });
    token.addGrant({ roomAdmin: true, room });
    const entry = { jwt: token.toJwt(), renewAt: now + ADMIN_TOKEN_REUSE_MS };
    // Concurrent calls for the room share the one signing; a failed signing is not kept.
    entry.jwt.catch(() => {
      if (this.tokens.get(room) === entry) this.tokens.delete(room);
    });
    this.tokens.set(room, entry);
    if (this.tokens.size > ADMIN_TOKEN_CACHE_SIZE) {
      const oldest = this.tokens.keys().next().value;
      if (oldest !== undefined) this.tokens.delete(oldest);
    }
    return entry.jwt;
  }
}

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
  private readonly listUrl: string;
  private readonly timeoutMs: number;
  private readonly tokens: RoomAdminTokens;
  private readonly pool = new Agent({ keepAliveTimeout: 30_000, connections: 16 });

  constructor(opts: RoomServiceOptions) {
    const timeoutSeconds = opts.timeoutSeconds ?? 5;
    this.client = new RoomServiceClient(opts.url, opts.key, opts.secret, { requestTimeout: timeoutSeconds });
    this.listUrl = new URL(LIST_PARTICIPANTS_PATH, opts.url.replace(/^ws/, 'http')).toString();
    this.timeoutMs = timeoutSeconds * 1000;
    this.tokens = new RoomAdminTokens(opts, opts.now ?? Date.now);
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
    const jwt = await this.tokens.get(room);
    const res = await request(this.listUrl, {
      method: 'POST',
      dispatcher: this.pool,
      headers: { 'content-type': 'application/json;charset=UTF-8', authorization: `Bearer ${jwt}` },
      body: JSON.stringify({ room }),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await res.body.text();
    if (res.statusCode < 200 || res.statusCode >= 300) {
      const err = twirpError(res.statusCode, text);
      if (err.code === 'not_found') return [];
      throw err;
    }
    const { participants } = ListParticipantsResponse.fromJsonString(text, { ignoreUnknownFields: true });
    return participants.map(sessionOf);
  }

  /** Closes the keep-alive connections. */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
