/**
 * Client transaction idempotency (`PUT …/send/{type}/{txnId}` and the delayed-events module's
 * dedicated `PUT …/delayed_event/{type}/{txnId}`). The key is the requester's device (or token)
 * plus the request's identity, and a remembered response is returned before the body is even
 * read: MSC4140 clients repeat a delayed PUT without a body and expect the same delay_id back.
 * Responses are kept in SQLite so they survive a restart.
 */
import { createHash } from 'node:crypto';

import type { Clock } from '../lib/timer-heap.js';
import type { Requester } from './contracts.js';
import type { CoreStore } from './store.js';

/** How long a transaction is remembered by default (Synapse keeps them about 30 minutes). */
const TXN_TTL_MS = 30 * 60_000;
const PRUNE_EVERY_MS = 60_000;

export type Remember = (response: Record<string, unknown>) => void;

export class TxnCache {
  private readonly inflight = new Map<string, Promise<Record<string, unknown>>>();
  private lastPrune = 0;

  constructor(
    private readonly store: CoreStore,
    private readonly clock: Clock,
  ) {}

  /**
   * Hashed so the stored key holds no credential. `request` names what is being done (the path
   * without its query for /send); two requests are the same transaction when it matches.
   */
  key(requester: Requester, request: string): string {
    const who = requester.deviceId !== undefined ? `${requester.userId}\0${requester.deviceId}` : requester.token;
    return createHash('sha256').update(`${who}\0${request}`).digest('base64url');
  }

  /**
   * Returns the remembered response, joins a concurrent identical request, or runs `produce`.
   * The in-flight request is registered before the first await, so a concurrent repeat can never
   * run `produce` a second time. `produce` may call `remember` inside its own transaction (so the
   * result and the transaction commit together); otherwise the response is remembered when
   * `produce` returns. A failure is not remembered: the client may retry.
   * @param ttlMs - how long the response is remembered.
   */
  async once(
    key: string,
    produce: (remember: Remember) => Promise<Record<string, unknown>>,
    ttlMs = TXN_TTL_MS,
  ): Promise<Record<string, unknown>> {
    const cached = this.store.getTxn(key, this.clock.now());
    if (cached !== undefined) return JSON.parse(cached) as Record<string, unknown>;
    const running = this.inflight.get(key);
    if (running) return running;
    let remembered = false;
    const remember: Remember = (response) => {
      remembered = true;
      this.store.insertTxn(key, JSON.stringify(response), this.clock.now() + ttlMs);
    };
    const promise = (async () => {
      const response = await produce(remember);
      if (!remembered) remember(response);
      this.prune();
      return response;
    })();
    this.inflight.set(key, promise);
    try {
      return await promise;
    } finally {
      this.inflight.delete(key);
    }
  }

  private prune(): void {
    const now = this.clock.now();
    if (now - this.lastPrune < PRUNE_EVERY_MS) return;
    this.lastPrune = now;
    this.store.pruneTxns(now);
  }
}
