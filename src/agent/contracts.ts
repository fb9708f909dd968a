/**
 * The seam between the agent's outside-facing half (HTTP API, webhooks, LiveKit polling, homeserver
 * calls) and its job engine (FSM, scheduler, store). The engine never does I/O except through
 * these interfaces, so it is tested with a fake clock and scripted outcomes.
 */

/** A delayed-leave delegation accepted from a client (or forwarded by a homeserver). */
export interface Delegation {
  /** LiveKit room name (the hashed alias). */
  livekitRoom: string;
  /** LiveKit participant identity (hashed, or `mxid:device` for the legacy route). */
  identity: string;
  /** Capability: never logged at info, never a metric label. */
  delayId: string;
  delayTimeoutMs: number;
  /** The OpenID-verified Matrix server name; the homeserver URL is resolved from it. */
  serverName: string;
  /** The verified Matrix user id. */
  userId: string;
  /** Optional scoped delegation token minted by the lastwill homeserver module. */
  scopedToken?: string;
  /** Which request created it (for metrics and logs); `lk-jwt-service` for one taken over from its store. */
  source: 'get_token' | 'sfu_get' | 'delegate_delayed_leave' | 'msc4195' | 'lk-jwt-service';
}

/**
 * `cancel` is only ever for the delayed event of a job that a new delay id replaced: left
 * scheduled, it would fire later on the same state key and end the new membership.
 */
export type DelayedAction = 'restart' | 'send' | 'cancel';

/** How a restart or send ended, already classified. */
export type ActionOutcome =
  | { kind: 'ok' }
  /**
   * 404: for restart the event is gone (job ends, no send); for send and cancel it counts as done.
   * A cancel's 409 (generation C: the event was already sent) is classified here too.
   */
  | { kind: 'not_found' }
  /** 429: back-pressure; retry after the given time (Retry-After / retry_after_ms) if known. */
  | { kind: 'rate_limited'; retryAfterMs?: number }
  /** 5xx, other 4xx, timeouts, transport errors: retry with backoff. */
  | { kind: 'transient'; detail: string }
  /** The homeserver URL cannot be resolved, or the address is refused by the outbound guard. */
  | { kind: 'unresolvable'; detail: string };

export interface DelayedEventActions {
  perform(
    action: DelayedAction,
    target: { serverName: string; delayId: string; scopedToken?: string },
  ): Promise<ActionOutcome>;
}

/** One participant session as LiveKit reports it. */
export interface ParticipantSession {
  identity: string;
  sid: string;
  /** When the session started, in ms (joinedAtMs, or joinedAt seconds × 1000). */
  joinedAtMs?: number;
}

/** A webhook, decoded and verified; deduplication by event id happens before the engine. */
export interface ParticipantSignal {
  kind: 'joined' | 'left' | 'aborted';
  livekitRoom: string;
  session: ParticipantSession;
  /** LiveKit's DisconnectReason name, e.g. CLIENT_INITIATED, DUPLICATE_IDENTITY. */
  disconnectReason?: string;
  /** Webhook createdAt in ms, when known. */
  createdAtMs?: number;
}

export interface PresenceLookup {
  /**
   * The sessions currently in a room. Resolves [] for an unknown or empty room; throws on any
   * transport or server error (which must never be read as "gone").
   */
  listParticipants(livekitRoom: string): Promise<ParticipantSession[]>;
}

export type JobState =
  | 'waiting'
  | 'connected'
  /** The current session ended; a short grace catches a full reconnect before the send. */
  | 'leaving'
  | 'sending'
  /**
   * Replaced by a delegation for the same key: no longer the key's job, but its own delayed event
   * is still scheduled and must be cancelled before it fires on the replacement's membership.
   */
  | 'cancelling'
  | 'sent'
  | 'aborted'
  | 'replaced'
  | 'expired';

export interface JobEngine {
  /** Stores the delegation durably (resolves after commit), replacing any job with the same key. */
  delegate(d: Delegation): Promise<void>;
  /** A verified, deduplicated webhook signal. Returns quickly; work happens asynchronously. */
  onParticipant(signal: ParticipantSignal): void;
  /** Restores jobs from the store and reconciles them with LiveKit; starts the timers. */
  start(): Promise<void>;
  /** Stops timers and pending work; jobs stay in the store and nothing is sent. */
  stop(): Promise<void>;
  /** Jobs by state, for metrics and readiness. */
  counts(): Record<JobState, number>;
}
