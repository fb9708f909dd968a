/**
 * LiveKit webhooks: signature check on the raw body, decoding of the participant events into the
 * engine's `ParticipantSignal`, and deduplication by event id (LiveKit resends the same body, with
 * the same id, after a timeout or a 5xx).
 */
import { WebhookReceiver, type WebhookEvent } from 'livekit-server-sdk';

import type { ParticipantSignal } from '../agent/contracts.js';
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

/** Verifies signed webhooks with the agent's LiveKit credentials. */
export class WebhookVerifier {
  private readonly receiver: WebhookReceiver;

  constructor(creds: LiveKitCredentials) {
    this.receiver = new WebhookReceiver(creds.key, creds.secret);
  }

  /**
   * Checks the JWT in `authorization` and the body hash, then decodes. Throws when either fails;
   * the caller answers 401. The raw body must be passed untouched.
   */
  async verify(rawBody: string, authorization: string | undefined): Promise<WebhookEvent> {
    if (authorization === undefined || authorization === '') throw new Error('authorization header is empty');
    return this.receiver.receive(rawBody, authorization);
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
