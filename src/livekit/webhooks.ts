/**
 * LiveKit webhooks: signature check on the raw body, decoding of the participant events into the
 * engine's `ParticipantSignal`, and deduplication by event id (LiveKit resends the same body, with
 * the same id, after a timeout or a 5xx).
 */
import { createHash, timingSafeEqual } from 'node:crypto';

import { WebhookEvent, WebhookReceiver } from 'livekit-server-sdk';

import type { ParticipantSignal } from '../agent/contracts.js';
import { Hs256 } from './jwt.js';
import { sessionOf } from './participants.js';
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

  constructor(creds: LiveKitCredentials, private readonly nowMs: () => number = Date.now) {
    this.receiver = new WebhookReceiver(creds.key, creds.secret);
    this.key = creds.key;
    this.signer = new Hs256(creds.secret);
  }

  /**
   * Checks the JWT in `authorization` and the body hash, then decodes. Throws when either fails;
   * the caller answers 401. The raw body must be passed untouched.
   */
  async verify(rawBody: string, authorization: string | undefined): Promise<WebhookEvent> {
    if (authorization === undefined || authorization === '') throw new Error('authorization header is empty');
    if (this.fastCheck(rawBody, authorization)) {
      return WebhookEvent.fromJson(JSON.parse(rawBody) as WebhookJson, { ignoreUnknownFields: true });
    }
    return this.receiver.receive(rawBody, authorization);
  }

  /** True only when the SDK would accept the pair too; false means "ask the SDK". */
  private fastCheck(body: string, token: string): boolean {
    const parts = token.split('.');
    if (parts.length !== 3) return false;
    const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
    const header = decodeJsonPart(headerPart);
    if (!isObject(header) || header.alg !== 'HS256') return false;
    if (Object.keys(header).some((k) => k !== 'alg' && k !== 'typ')) return false;
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
    return claims.sha256 === createHash('sha256').update(body, 'utf8').digest('base64');
  }
}

/**
 * The participant signal carried by a verified event, or undefined for events the engine does not
 * use. Absent protojson fields (zero values) are defaulted: no sid means an empty one, no reason
 * means UNKNOWN_REASON.
 */
export function toParticipantSignal(event: WebhookEvent): ParticipantSignal | undefined {
  const kind = SIGNAL_KINDS[event.event];
  const participant = event.participant;
  const roomName = event.room?.name ?? '';
  if (kind === undefined || participant === undefined || participant.identity === '' || roomName === '') {
    return undefined;
  }
  const signal: ParticipantSignal = {
    kind,
    livekitRoom: roomName,
    session: sessionOf(participant),
    ...(event.createdAt > 0n ? { createdAtMs: Number(event.createdAt) * 1000 } : {}),
  };
  if (kind !== 'joined') signal.disconnectReason = disconnectReasonName(participant.disconnectReason);
  return signal;
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

  get size(): number {
    return this.seen.size;
  }
}
