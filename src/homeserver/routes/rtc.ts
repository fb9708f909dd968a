/**
 * MatrixRTC endpoints of the homeserver: the transports it offers (MSC4143) and homeserver-side
 * delegation of a delayed leave (MSC4195). The delegation is checked here — the delay id must be the
 * caller's own, still scheduled and in the named room — then forwarded to the lastwill agent with a
 * scoped token that can only restart and send that one event.
 */
import { z } from 'zod';

import { fail, rateLimited } from '../../lib/errors.js';
import { bucketOf, RateLimiter } from '../../lib/rate-limit.js';
import { type Router, withoutTrailingSlash } from '../../lib/http.js';
import { participantIdentity, roomAlias } from '../../livekit/identity.js';
import type { AgentForwarder } from '../agent-forwarder.js';
import type { DelayedEventsModule } from '../delayed/index.js';
import { body, roomIdSchema, type Services } from './common.js';

const TRANSPORTS_PATHS = [
  '/_matrix/client/unstable/org.matrix.msc4143/rtc/transports',
  '/_matrix/client/v1/rtc/transports',
];
const DELEGATE_PATHS = [
  '/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave',
  '/_matrix/client/v1/rtc/livekit/delegate_delayed_leave',
];

const nonEmpty = z.string().min(1).max(255);

/**
 * Both published shapes of the body: the later MSC text's `member_id`, and the PR head's
 * `member {id, claimed_device_id}`. Unknown fields are ignored.
 */
const delegateBody = z
  .object({
    url: z.string().max(2048).optional(),
    room_id: roomIdSchema,
    slot_id: nonEmpty,
    member_id: nonEmpty.optional(),
    member: z.object({ id: nonEmpty, claimed_device_id: nonEmpty.optional() }).optional(),
    delay_id: nonEmpty,
  })
  .refine((b) => b.member_id !== undefined || b.member !== undefined, {
    message: 'member_id or member is required',
    path: ['member_id'],
  });

export function registerRtcRoutes(
  router: Router,
  s: Services & { delayed: DelayedEventsModule },
  forwarder: AgentForwarder | undefined,
): void {
  const serviceUrl = s.config.rtc.livekit_service_url;
  const transports = serviceUrl ? [{ type: 'livekit', livekit_service_url: serviceUrl }] : [];
  for (const path of TRANSPORTS_PATHS) {
    router.add('GET', path, (ctx) => {
      s.auth.requester(ctx);
      return { body: { rtc_transports: transports } };
    });
  }

  // Without an agent there is nothing to delegate to; the route stays unknown (404 M_UNRECOGNIZED),
  // which is how clients probe for support.
  if (!forwarder) return;
  const limiter = new RateLimiter(bucketOf(s.config.rate_limits.management), s.clock);
  // Clients name the SFU itself (matrix-js-sdk documents `url` as the SFU's WebSocket URL) or the
  // service URL they found in /rtc/transports; both identify this deployment.
  const knownUrls = [...(serviceUrl ? [serviceUrl] : []), ...s.config.rtc.sfu_urls].map(withoutTrailingSlash);

  for (const path of DELEGATE_PATHS) {
    router.add('POST', path, async (ctx) => {
      const requester = s.auth.requester(ctx);
      const req = await body(ctx, delegateBody);
      const verdict = limiter.take(requester.userId);
      if (!verdict.ok) throw rateLimited(verdict.retryAfterMs, 'Too many delegations');
      if (req.url !== undefined && knownUrls.length > 0 && !knownUrls.includes(withoutTrailingSlash(req.url))) {
        throw fail.invalidParam('url is not a LiveKit SFU or service of this homeserver');
      }
      const scheduled = s.delayed.lookupOwned(requester.userId, req.delay_id);
      if (!scheduled || scheduled.roomId !== req.room_id) {
        throw fail.invalidParam('delay_id is not a scheduled delayed event of yours in this room');
      }
      const memberId = req.member_id ?? req.member!.id;
      const deviceId = req.member?.claimed_device_id ?? requester.deviceId ?? scheduled.deviceId;
      if (deviceId === undefined) throw fail.missingParam('member.claimed_device_id is required');
      const { token } = await s.delayed.mintScopedToken(
        requester.userId,
        [req.delay_id],
        s.config.delayed_events.scoped_token_max_ms,
      );
      try {
        await forwarder.forward({
          livekit_room: roomAlias(req.room_id, req.slot_id),
          identity: participantIdentity(requester.userId, deviceId, memberId),
          delay_id: req.delay_id,
          delay_timeout: scheduled.delayMs,
          server_name: s.config.server_name,
          user_id: requester.userId,
          scoped_token: token,
        });
      } catch (err) {
        // The agent did not confirm the delegation: withdraw the capability rather than leave it
        // behind. (Should the agent have stored it after all, its calls fall back to the
        // unauthenticated form when the token is refused.)
        await s.delayed.revokeScopedToken(token);
        throw err;
      }
      return { body: {} };
    });
  }
}
