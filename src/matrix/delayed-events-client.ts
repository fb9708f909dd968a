/**
 * MSC4140 restart/send/cancel on the user's homeserver, classified for the engine. The request
 * shape is lk-jwt-service's (unauthenticated management by delay id); with a scoped delegation
 * token it is sent as a Bearer token, a server that does not know the action-in-path form is
 * retried with the action-in-body form the first MSC revision used, and a token the server no
 * longer accepts is dropped in favour of the unauthenticated form. A cancel (of a replaced job's
 * event) always goes unauthenticated.
 */
import type { ActionOutcome, DelayedAction, DelayedEventActions } from '../agent/contracts.js';
import type { HomeserverDirectory } from './discovery.js';
import { OUTBOUND_REFUSED } from './outbound-guard.js';
import { jsonObjectOf, type OutboundHttp, type OutboundResponse } from './outbound-http.js';

const DELAYED_EVENTS_PATH = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

export interface DelayedEventsClientOptions {
  http: OutboundHttp;
  directory: HomeserverDirectory;
  now?: () => number;
}

/** Milliseconds to wait from a 429's Retry-After (seconds or HTTP date) or body `retry_after_ms`. */
export function retryAfterMs(res: OutboundResponse, now: number): number | undefined {
  const header = res.headers['retry-after'];
  const value = Array.isArray(header) ? header[0] : header;
  if (value !== undefined && value.trim() !== '') {
    const trimmed = value.trim();
    if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
    const date = Date.parse(trimmed);
    if (!Number.isNaN(date)) return Math.max(0, date - now);
  }
  const fromBody = jsonObjectOf(res)?.retry_after_ms;
  if (typeof fromBody === 'number' && Number.isFinite(fromBody) && fromBody >= 0) {
    // lk-jwt-service rounds the body value up to whole seconds.
    return Math.ceil(fromBody / 1000) * 1000;
  }
  return undefined;
}

/** Maps a homeserver answer to the engine's outcome. */
export function classify(res: OutboundResponse, now: number, action: DelayedAction): ActionOutcome {
  if (res.status === 200 || res.status === 204) return { kind: 'ok' };
  if (res.status === 404) return { kind: 'not_found' };
  // Generation C (and lastwill's homeserver) answer a cancel of an event already sent with 409;
  // Synapse with 404. Either way nothing is left to cancel.
  if (res.status === 409 && action === 'cancel') return { kind: 'not_found' };
  if (res.status === 429) {
    const after = retryAfterMs(res, now);
    return after === undefined ? { kind: 'rate_limited' } : { kind: 'rate_limited', retryAfterMs: after };
  }
  return { kind: 'transient', detail: `HTTP ${res.status}` };
}

function isUnrecognized(res: OutboundResponse): boolean {
  return (res.status === 404 || res.status === 400) && jsonObjectOf(res)?.errcode === 'M_UNRECOGNIZED';
}

/** A 401 for the token itself (expired, revoked, unknown), not for the request. */
function isTokenRejected(res: OutboundResponse): boolean {
  const errcode = jsonObjectOf(res)?.errcode;
  return res.status === 401 && (errcode === 'M_UNKNOWN_TOKEN' || errcode === 'M_MISSING_TOKEN');
}

export class DelayedEventsClient implements DelayedEventActions {
  private readonly now: () => number;

  constructor(private readonly opts: DelayedEventsClientOptions) {
    this.now = opts.now ?? Date.now;
  }

  async perform(
    action: DelayedAction,
    target: { serverName: string; delayId: string; scopedToken?: string },
  ): Promise<ActionOutcome> {
    let base: string;
    try {
      base = await this.opts.directory.clientBaseUrl(target.serverName);
    } catch (err) {
      return { kind: 'unresolvable', detail: (err as Error).message };
    }
    const eventUrl = `${base}${DELAYED_EVENTS_PATH}/${encodeURIComponent(target.delayId)}`;
    const pathForm = `${eventUrl}/${action}`;
    const unauthenticated = { 'content-type': 'application/json' };
    const post = (url: string, body: string, headers: Record<string, string>) =>
      this.opts.http.request(new URL(url), { method: 'POST', headers, body });
    try {
      let res: OutboundResponse;
      // A scoped token covers restart and send only (a delegate that could cancel could silence a
      // hangup for good); a cancel goes with the delay id alone, which is its capability.
      if (target.scopedToken === undefined || action === 'cancel') {
        res = await post(pathForm, '{}', unauthenticated);
      } else {
        const headers = { ...unauthenticated, authorization: `Bearer ${target.scopedToken}` };
        res = await post(pathForm, '{}', headers);
        if (isUnrecognized(res)) res = await post(eventUrl, JSON.stringify({ action }), headers);
        // Scoped tokens expire (minted for days; a job can outlive one). The delay id alone is the
        // capability on today's homeservers, so the call goes on without the token.
        if (isTokenRejected(res)) res = await post(pathForm, '{}', unauthenticated);
      }
      return classify(res, this.now(), action);
    } catch (err) {
      if (isRefused(err)) return { kind: 'unresolvable', detail: 'destination refused by the outbound guard' };
      return { kind: 'transient', detail: errorDetail(err) };
    }
  }
}

/** True when the error (or its cause) is the outbound guard's refusal. */
export function isRefused(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (e.code === OUTBOUND_REFUSED) return true;
  }
  return false;
}

function errorDetail(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  return typeof e?.code === 'string' ? e.code : String(e?.message ?? err);
}
