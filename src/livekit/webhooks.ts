/**
 * LiveKit webhooks: signature check on the raw body, decoding of the participant events into the
 * engine's `ParticipantSignal`, and deduplication by event id (LiveKit resends the same body, with
 * the same id, after a timeout or a 5xx).
 */
import { hash, timingSafeEqual } from 'node:crypto';

import { WebhookEvent, WebhookReceiver } from 'livekit-server-sdk';

import type { ParticipantSignal } from '../agent/contracts.js';
import { Hs256 } from './jwt.js';
import { session } from './participants.js';
import type { LiveKitCredentials } from './tokens.js';

/**
 * `DisconnectReason` names by number (livekit_models.proto). The SDK decodes enums to numbers;
 * the engine and the logs want the stable names. Kept local because the SDK does not re-export it.
 */
const DISCONNECT_REASONS = [
  'UNKNOWN_REASON',
  'CLIENT_INITIATED',
  'DUPLICATE_IDENTITY',
  'SERVER_SHUTDOWN',
  'PARTICIPANT_REMOVED',
  'ROOM_DELETED',
  'STATE_MISMATCH',
  'JOIN_FAILURE',
  'MIGRATION',
  'SIGNAL_CLOSE',
  'ROOM_CLOSED',
  'USER_UNAVAILABLE',
  'USER_REJECTED',
  'SIP_TRUNK_FAILURE',
  'CONNECTION_TIMEOUT',
  'MEDIA_FAILURE',
  'AGENT_ERROR',
] as const;

export function disconnectReasonName(value: number | undefined): string {
  return DISCONNECT_REASONS[value ?? 0] ?? `REASON_${value}`;
}

const SIGNAL_KINDS: Readonly<Record<string, ParticipantSignal['kind']>> = {
  participant_joined: 'joined',
  participant_left: 'left',
  participant_connection_aborted: 'aborted',
};

/** Event names used as metric labels; anything else is counted as `other` (bounded cardinality). */
export const KNOWN_EVENTS = new Set([
  'room_started',
  'room_finished',
  'participant_joined',
  'participant_left',
  'participant_connection_aborted',
  'track_published',
  'track_unpublished',
]);

export function eventLabel(name: string): string {
  return KNOWN_EVENTS.has(name) ? name : 'other';
}

/** The SDK's default clock tolerance for webhook tokens (TokenVerifier), in seconds. */
const CLOCK_TOLERANCE_S = 10;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

function decodeJsonPart(part: string): unknown {
  if (!BASE64URL.test(part)) return undefined;
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

type WebhookJson = Parameters<typeof WebhookEvent.fromJson>[0];

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isOptionalNumber = (v: unknown): boolean => v === undefined || typeof v === 'number';

/**
 * Verifies signed webhooks with the agent's LiveKit credentials.
 *
 * The SDK's WebhookReceiver verifies through jose and WebCrypto, which is asynchronous and costs
 * several promise round trips per webhook: at a mass disconnect it was most of the time a webhook
 * took. What LiveKit actually sends (an HS256 JWT with only alg and typ in its header) is checked
 * here synchronously with node:crypto, applying the same claims checks the SDK applies (issuer =
 * API key, exp required and not past, nbf not in the future, iat a number, 10 s tolerance, the
 * sha256 claim equal to the body's hash). Whatever this fast path does not accept goes to the
 * SDK, so it only ever accepts a subset of what the SDK accepts, and every rejection (and its
 * reason) is the SDK's own.
 */
export class WebhookVerifier {
  private readonly receiver: WebhookReceiver;
  private readonly key: string;
  private readonly signer: Hs256;
  /** The last header part that passed the header check. */
  private knownHeader: string | undefined;

  constructor(creds: LiveKitCredentials, private readonly nowMs: () => number = Date.now) {
    this.receiver = new WebhookReceiver(creds.key, creds.secret);
    this.key = creds.key;
    this.signer = new Hs256(creds.secret);
  }

  /**
   * Checks the JWT in `authorization` and the body hash, then decodes. Throws when either fails;
   * the caller answers 401. The raw body must be passed untouched.
   */
  async verify(rawBody: string, authorization: string | undefined): Promise<VerifiedWebhook> {
    if (authorization === undefined || authorization === '') throw new Error('authorization header is empty');
    if (this.fastCheck(rawBody, authorization)) {
      const json: unknown = JSON.parse(rawBody);
      return readWebhook(json) ?? verified(WebhookEvent.fromJson(json as WebhookJson, { ignoreUnknownFields: true }));
    }
    return verified(await this.receiver.receive(rawBody, authorization));
  }

  /** True only when the SDK would accept the pair too; false means "ask the SDK". */
  private fastCheck(body: string, token: string): boolean {
    const parts = token.split('.');
    if (parts.length !== 3) return false;
    const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
    // LiveKit signs every webhook with the same header: checked once, then known by its text.
    if (headerPart !== this.knownHeader) {
      const header = decodeJsonPart(headerPart);
      if (!isObject(header) || header.alg !== 'HS256') return false;
      if (Object.keys(header).some((k) => k !== 'alg' && k !== 'typ')) return false;
      this.knownHeader = headerPart;
    }
    if (!BASE64URL.test(signaturePart)) return false;
    const expected = this.signer.signature(`${headerPart}.${payloadPart}`);
    const given = Buffer.from(signaturePart, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return false;
    const claims = decodeJsonPart(payloadPart);
    if (!isObject(claims) || claims.iss !== this.key) return false;
    const { exp, nbf, iat } = claims;
    const now = Math.floor(this.nowMs() / 1000);
    if (typeof exp !== 'number' || exp <= now - CLOCK_TOLERANCE_S) return false;
    if (!isOptionalNumber(nbf) || (typeof nbf === 'number' && nbf > now + CLOCK_TOLERANCE_S)) return false;
    if (!isOptionalNumber(iat)) return false;
    return claims.sha256 === hash('sha256', body, 'base64');
  }
}

/** A verified webhook as the agent uses it: its name and id, and the engine's signal if any. */
export interface VerifiedWebhook {
  event: string;
  id: string;
  signal: ParticipantSignal | undefined;
}

/** The participant fields a signal is built from (protojson zero values already defaulted). */
interface ParticipantFields {
  identity: string;
  sid: string;
  joinedAtS: number;
  joinedAtMs: number;
  disconnectReason: number;
}

/**
 * The participant signal carried by a verified event, or undefined for events the engine does not
 * use. Absent protojson fields (zero values) are defaulted: no sid means an empty one, no reason
 * means UNKNOWN_REASON.
 */
export function toParticipantSignal(event: WebhookEvent): ParticipantSignal | undefined {
  const p = event.participant;
  return signalOf(
    event.event,
    event.room?.name ?? '',
    p && { identity: p.identity, sid: p.sid, joinedAtS: Number(p.joinedAt), joinedAtMs: Number(p.joinedAtMs), disconnectReason: p.disconnectReason },
    event.createdAt > 0n ? Number(event.createdAt) : 0,
  );
}

function signalOf(
  event: string,
  roomName: string,
  participant: ParticipantFields | undefined,
  createdAtS: number,
): ParticipantSignal | undefined {
  const kind = SIGNAL_KINDS[event];
  if (kind === undefined || participant === undefined || participant.identity === '' || roomName === '') {
    return undefined;
  }
  const signal: ParticipantSignal = {
    kind,
    livekitRoom: roomName,
    session: session(participant.identity, participant.sid, participant.joinedAtMs, participant.joinedAtS),
    ...(createdAtS > 0 ? { createdAtMs: createdAtS * 1000 } : {}),
  };
  if (kind !== 'joined') signal.disconnectReason = disconnectReasonName(participant.disconnectReason);
  return signal;
}

function verified(event: WebhookEvent): VerifiedWebhook {
  return { event: event.event, id: event.id, signal: toParticipantSignal(event) };
}

/** A field the direct read leaves to the SDK's decoder (see readWebhook). */
const UNDECIDED = Symbol('undecided');
type Read<T> = T | typeof UNDECIDED;

const REASON_NUMBERS: ReadonlyMap<string, number> = new Map(DISCONNECT_REASONS.map((name, i) => [name, i]));

/**
 * A protojson field by either of its names (absent: undefined). With both present the SDK's
 * result depends on their order in the body: undecided.
 */
function field(o: Record<string, unknown>, json: string, proto: string): unknown {
  const a = o[json];
  const b = o[proto];
  if (a !== undefined && b !== undefined) return UNDECIDED;
  return a !== undefined ? a : b;
}

function readString(v: unknown): Read<string> {
  if (v === undefined) return '';
  // The SDK rejects strings that are not valid UTF-16 (lone surrogates from \u escapes).
  return typeof v === 'string' && v.isWellFormed() ? v : UNDECIDED;
}

/** int64: a JSON number or decimal string; only the range a double holds exactly is read here. */
function readInt64(v: unknown): Read<number> {
  if (v === undefined) return 0;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : UNDECIDED;
  return typeof v === 'string' && /^-?\d{1,15}$/.test(v) ? Number(v) : UNDECIDED;
}

/** An enum: its number, or a name this file knows. */
function readReason(v: unknown): Read<number> {
  if (v === undefined) return 0;
  if (typeof v === 'number') return Number.isInteger(v) ? v : UNDECIDED;
  return (typeof v === 'string' ? REASON_NUMBERS.get(v) : undefined) ?? UNDECIDED;
}

function readObject(v: unknown): Read<Record<string, unknown> | undefined> {
  if (v === undefined) return undefined;
  return isObject(v) ? v : UNDECIDED;
}

/**
 * The few fields the agent uses, read straight from the parsed body. The SDK's decoder
 * (WebhookEvent.fromJson, reflective protobuf-es) builds and checks the whole message and was the
 * largest single cost of a webhook at a mass disconnect. This read takes only the plain protojson
 * forms LiveKit writes and returns exactly what the SDK's decoding would give for them; anything
 * else it leaves to the SDK (undefined), whose verdict then stands: a null, a value of another
 * type, an int64 beyond 15 digits, a reason name this file does not know, both spellings of a
 * field. Fields the agent does not read are not checked: the signature vouches for the body.
 */
export function readWebhook(json: unknown): VerifiedWebhook | undefined {
  if (!isObject(json)) return undefined;
  const event = readString(json.event);
  const id = readString(json.id);
  if (event === UNDECIDED || id === UNDECIDED) return undefined;
  if (SIGNAL_KINDS[event] === undefined) return { event, id, signal: undefined };
  const createdAt = readInt64(field(json, 'createdAt', 'created_at'));
  const room = readObject(json.room);
  const p = readObject(json.participant);
  if (createdAt === UNDECIDED || room === UNDECIDED || p === UNDECIDED) return undefined;
  const roomName = room === undefined ? '' : readString(room.name);
  if (roomName === UNDECIDED) return undefined;
  let participant: ParticipantFields | undefined;
  if (p !== undefined) {
    const identity = readString(p.identity);
    const sid = readString(p.sid);
    const joinedAtS = readInt64(field(p, 'joinedAt', 'joined_at'));
    const joinedAtMs = readInt64(field(p, 'joinedAtMs', 'joined_at_ms'));
    const disconnectReason = readReason(field(p, 'disconnectReason', 'disconnect_reason'));
    if (
      identity === UNDECIDED ||
      sid === UNDECIDED ||
      joinedAtS === UNDECIDED ||
      joinedAtMs === UNDECIDED ||
      disconnectReason === UNDECIDED
    ) {
      return undefined;
    }
    participant = { identity, sid, joinedAtS, joinedAtMs, disconnectReason };
  }
  return { event, id, signal: signalOf(event, roomName, participant, createdAt) };
}

/**
 * A bounded set of recently seen event ids. Entries expire after `ttlMs`; when full, the oldest is
 * dropped. Insertion order equals expiry order (one TTL), so a Map is the whole data structure.
 */
export class RecentIds {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly capacity: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True the first time an id is offered within the TTL, false for repeats. */
  firstSighting(id: string): boolean {
    const now = this.now();
    for (const [oldId, expires] of this.seen) {
      if (expires > now && this.seen.size < this.capacity) break;
      this.seen.delete(oldId);
    }
    if (this.seen.has(id)) return false;
    this.seen.set(id, now + this.ttlMs);
    return true;
  }

  /** Takes a sighting back (the webhook could not be handed on, so its retry must count). */
  forget(id: string): void {
    this.seen.delete(id);
  }

  get size(): number {
    return this.seen.size;
  }
}
