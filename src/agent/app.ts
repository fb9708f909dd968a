/**
 * The delegate agent as an object: the lk-jwt-service-compatible HTTP API, the webhook receiver,
 * the homeserver and LiveKit clients and the job engine, wired together but not listening. Only
 * main.ts binds a port; tests build it directly or run the CLI as a child process.
 */
import { timingSafeEqual } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { lookup as dnsLookup } from 'node:dns';
import { join } from 'node:path';

import type { Logger } from 'pino';

import type { AgentConfig } from '../config/agent.js';
import { INSECURE_TLS_SENTINEL } from '../config/agent.js';
import { fail, isMatrixError, type MatrixError } from '../lib/errors.js';
import {
  createHttpApp,
  errorReply,
  type Handler,
  type HttpApp,
  jsonObject,
  type Method,
  parseWith,
  type Reply,
  type RequestContext,
  Router,
} from '../lib/http.js';
import { metricsHandler } from '../lib/http-metrics.js';
import type { Clock } from '../lib/timer-heap.js';
import {
  legacyIdentity,
  legacyRoomAlias,
  participantIdentity,
  roomAlias,
} from '../livekit/identity.js';
import { LiveKitRooms } from '../livekit/room-service.js';
import { type LiveKitCredentials, mintJoinToken } from '../livekit/tokens.js';
import { eventLabel, RecentIds, type VerifiedWebhook, WebhookVerifier } from '../livekit/webhooks.js';
import { DelayedEventsClient } from '../matrix/delayed-events-client.js';
import { HomeserverDirectory } from '../matrix/discovery.js';
import { OpenIdVerifier, serverOfUserId } from '../matrix/openid.js';
import { OutboundGuard } from '../matrix/outbound-guard.js';
import { OutboundHttp } from '../matrix/outbound-http.js';
import type { Delegation, DelayedEventActions, JobEngine, ParticipantSignal, PresenceLookup } from './contracts.js';
import { ClusterNode } from './cluster/node.js';
import {
  createJobEngine,
  DEFAULT_ENGINE_SETTINGS,
  type EngineOptions,
  type EngineSettings,
  type JobSnapshot,
  type PacingCounts,
} from './jobs/index.js';
import { SqliteJobStore } from './jobs/sqlite-store.js';
import { AgentMetrics } from './metrics.js';
import { type DelayRequest, forwardedDelegation, parseLegacyRequest, parseTokenRequest, type OpenIdToken } from './requests.js';

/** lk-jwt-service's CORS headers on the three client routes. */
export const CORS_HEADERS: Readonly<Record<string, string>> = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST',
  'access-control-allow-headers': 'Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token',
};

/** The three lk-jwt-service client routes: POST, CORS preflight, 405 for every other method. */
const CLIENT_ROUTES = ['/sfu/get', '/get_token', '/delegate_delayed_leave'] as const;
type ClientRoute = (typeof CLIENT_ROUTES)[number];

function isClientRoute(path: string): path is ClientRoute {
  return (CLIENT_ROUTES as readonly string[]).includes(path);
}

/**
 * The methods a route does not serve, for lk-jwt-service's bare 405s. HEAD follows GET in the
 * router and OPTIONS never reaches it (see onOptions).
 */
function otherMethods(served: Method): Method[] {
  return (['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const).filter((m) => m !== served);
}

/** Webhook ids are remembered this long; LiveKit's retries span about 15 s, its queue age 30 s. */
const WEBHOOK_DEDUPE_TTL_MS = 10 * 60_000;
const WEBHOOK_DEDUPE_CAPACITY = 100_000;

export interface AgentDeps {
  config: AgentConfig;
  log: Logger;
  clock?: Clock;
  random?: () => number;
  /** DNS resolver of the outbound guard (tests point names at loopback). */
  resolve?: typeof dnsLookup;
}

/** The engine as the app sees it: the embedded one, or a cluster replica's. */
export type AgentEngine = JobEngine & {
  get(livekitRoom: string, identity: string): JobSnapshot | undefined;
  pacingCounts(): PacingCounts;
};

export interface Agent {
  readonly app: HttpApp;
  readonly engine: AgentEngine;
  /** Cluster mode only. */
  readonly cluster: ClusterNode | undefined;
  readonly metrics: AgentMetrics;
  /** Restores and reconciles jobs; the agent is ready afterwards. */
  start(): Promise<void>;
  /** Stops serving, stops the engine (jobs stay stored, nothing is sent), closes clients. */
  close(): Promise<void>;
}

/** Maps the config's engine section onto the engine's settings. */
export function engineSettingsOf(config: AgentConfig): EngineSettings {
  const e = config.engine;
  return {
    ...DEFAULT_ENGINE_SETTINGS,
    restartFraction: e.restart_fraction,
    maxWaitingMs: e.max_waiting_ms,
    abortGraceMs: e.abort_grace_ms,
    disconnectGraceMs: e.disconnect_grace_ms,
    sanityCheckIntervalMs: config.sanity_check_interval_seconds * 1000,
    sanityCheckMaxPerSecond: e.sanity_check_max_per_second,
    backoff: { initialMs: e.backoff.initial_ms, factor: e.backoff.factor, maxMs: e.backoff.max_ms, jitter: e.backoff.jitter },
    pacing: { perSecond: e.pacing.per_second, burst: e.pacing.burst },
    maxRestartsInFlight: e.pacing.max_in_flight,
    terminalRetentionMs: e.terminal_retention_ms,
  };
}

export function buildAgent(deps: AgentDeps): Agent {
  const { config, log } = deps;
  const creds: LiveKitCredentials = { key: config.livekit.key, secret: config.livekit.secret };
  const guard = OutboundGuard.fromConfig(config, deps.resolve);
  const outbound = new OutboundHttp({
    guard,
    timeoutMs: config.outbound.timeout_ms,
    maxConnectionsPerOrigin: config.outbound.max_connections_per_homeserver,
    insecureTls: config.insecure_skip_verify_tls === INSECURE_TLS_SENTINEL,
    log,
  });
  const now = deps.clock ? () => deps.clock!.now() : Date.now;
  const directory = new HomeserverDirectory({
    http: outbound,
    overrides: config.cs_api_url_overrides,
    federationOverrides: config.federation_url_overrides,
    cacheTtlMs: config.well_known_cache_ttl_seconds * 1000,
    now,
  });
  const openid = new OpenIdVerifier({ http: outbound, directory, log });
  const actions: DelayedEventActions = new DelayedEventsClient({ http: outbound, directory, now });
  const rooms = new LiveKitRooms({ url: config.livekit.url, ...creds, timeoutSeconds: Math.ceil(config.outbound.timeout_ms / 1000) });
  const presence: PresenceLookup = rooms;
  const webhookVerifier = new WebhookVerifier(creds);
  const recentWebhooks = new RecentIds(WEBHOOK_DEDUPE_TTL_MS, WEBHOOK_DEDUPE_CAPACITY, now);

  let started = false;
  let closing = false;
  let engine: AgentEngine | undefined;
  let cluster: ClusterNode | undefined;
  // Cluster mode: also Redis reachable and the leases renewed in time.
  const ready = () => started && !closing && (cluster?.ready() ?? true);
  const metrics = new AgentMetrics({
    jobCounts: () => (started ? engine?.counts() : undefined),
    ownedPartitions: () => cluster?.ownedPartitions() ?? 0,
    ready,
    pacing: () => engine?.pacingCounts(),
  });
  const engineOptions: Omit<EngineOptions, 'store' | 'ownership'> = {
    ...(deps.clock ? { clock: deps.clock } : {}),
    ...(deps.random ? { random: deps.random } : {}),
    actions,
    presence,
    log: log.child({ component: 'jobs' }),
    settings: engineSettingsOf(config),
    observer: metrics.engineObserver(),
  };
  if (config.redis_url !== undefined) {
    cluster = new ClusterNode({
      redisUrl: config.redis_url,
      ...(config.redis_password !== undefined ? { redisPassword: config.redis_password } : {}),
      keyPrefix: config.cluster.key_prefix,
      partitions: config.cluster.partitions,
      leaseMs: config.cluster.lease_ms,
      ...(config.cluster.replica_id !== undefined ? { replicaId: config.cluster.replica_id } : {}),
      engine: engineOptions,
      log: log.child({ component: 'cluster' }),
      metrics,
    });
    engine = cluster;
  } else {
    mkdirSync(config.data_dir, { recursive: true });
    const store = new SqliteJobStore(join(config.data_dir, 'agent.sqlite'), config.sqlite_synchronous);
    engine = createJobEngine({ ...engineOptions, store });
  }
  const jobs: JobEngine = engine;

  const fullAccess = (serverName: string): boolean =>
    config.full_access_homeservers.includes('*') || config.full_access_homeservers.includes(serverName);

  /** OpenID check; on the Matrix 2.0 routes the claimed user must be the verified one. */
  async function verifiedUser(token: OpenIdToken, claimedUserId?: string): Promise<string> {
    const userId = await openid.verify(token.serverName, token.accessToken);
    if (claimedUserId !== undefined && claimedUserId !== userId) {
      log.debug('claimed user id differs from the OpenID-verified one');
      throw fail.unauthorized('The claimed user id does not match the OpenID token');
    }
    return userId;
  }

  /**
   * Fails the request (400) when the server's client-server API cannot be resolved: a delegation
   * could never reach it. Also primes the cache for the job's first call.
   */
  async function requireClientApi(serverName: string): Promise<void> {
    try {
      await directory.clientBaseUrl(serverName);
    } catch (err) {
      log.debug({ err: (err as Error).message, serverName }, 'homeserver URL not resolvable');
      throw fail.badJson('Cannot resolve the client-server API URL of the homeserver');
    }
  }

  /** Durably stores the delegation (committed before this resolves); its client API is resolved already. */
  async function delegate(d: Delegation): Promise<void> {
    if (closing) throw fail.unavailable('Shutting down');
    try {
      await jobs.delegate(d);
    } catch (err) {
      if (isMatrixError(err)) throw err;
      log.error({ err }, 'delegation rejected by the job engine');
      throw fail.unavailable('The delegation could not be stored');
    }
    metrics.delegations.inc({ source: d.source });
    log.info({ source: d.source, serverName: d.serverName, delayTimeoutMs: d.delayTimeoutMs }, 'delegation accepted');
  }

  function delegation(
    delay: DelayRequest,
    fields: Omit<Delegation, 'delayId' | 'delayTimeoutMs' | 'scopedToken'>,
  ): Delegation {
    return {
      ...fields,
      delayId: delay.delayId,
      delayTimeoutMs: delay.delayTimeoutMs,
      ...(delay.scopedToken !== undefined ? { scopedToken: delay.scopedToken } : {}),
    };
  }

  /** The `{url, jwt}` answer of the token routes. */
  async function joinReply(room: string, identity: string): Promise<Reply> {
    let jwt: string;
    try {
      jwt = await mintJoinToken(creds, room, identity);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'join token minting failed');
      throw fail.internal('Internal Server Error');
    }
    return { body: { url: config.livekit.url, jwt } };
  }

  /**
   * What the two token routes share once the user is verified: for a full-access server the client
   * API is resolved first (when delegating), then the room is created, then the delegation is
   * stored, as lk-jwt-service orders it, so a refused request leaves neither a room nor a job.
   */
  async function issueToken(
    openid: OpenIdToken,
    userId: string,
    room: string,
    identity: string,
    delay: DelayRequest | undefined,
    source: Delegation['source'],
  ): Promise<Reply> {
    const access = fullAccess(openid.serverName);
    if (delay && !access) throw fail.badJson('Delayed event delegation is not available for this homeserver');
    if (access) {
      if (delay) await requireClientApi(openid.serverName);
      await createRoomIfNeeded(room);
    }
    if (delay) await delegate(delegation(delay, { livekitRoom: room, identity, serverName: openid.serverName, userId, source }));
    return joinReply(room, identity);
  }

  async function createRoomIfNeeded(room: string): Promise<void> {
    try {
      await rooms.createRoom(room);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'LiveKit room creation failed');
      throw fail.internal('Unable to create room on SFU');
    }
  }

  const legacyRoute: Handler = async (ctx) => {
    const req = parseLegacyRequest(await jsonObject(ctx));
    const userId = await verifiedUser(req.openid);
    const identity = legacyIdentity(userId, req.deviceId);
    return issueToken(req.openid, userId, legacyRoomAlias(req.room), identity, req.delay, 'sfu_get');
  };

  const tokenRoute: Handler = async (ctx) => {
    const req = parseTokenRequest(await jsonObject(ctx), false);
    const userId = await verifiedUser(req.openid, req.member.claimedUserId);
    const identity = participantIdentity(userId, req.member.claimedDeviceId, req.member.id);
    return issueToken(req.openid, userId, roomAlias(req.roomId, req.slotId), identity, req.delay, 'get_token');
  };

  const delegateRoute: Handler = async (ctx) => {
    const req = parseTokenRequest(await jsonObject(ctx), true);
    const userId = await verifiedUser(req.openid, req.member.claimedUserId);
    if (!fullAccess(req.openid.serverName)) {
      throw fail.forbidden('Delayed event delegation is not available for this homeserver');
    }
    await requireClientApi(req.openid.serverName);
    await delegate(
      delegation(req.delay!, {
        livekitRoom: roomAlias(req.roomId, req.slotId),
        identity: participantIdentity(userId, req.member.claimedDeviceId, req.member.id),
        serverName: req.openid.serverName,
        userId,
        source: 'delegate_delayed_leave',
      }),
    );
    return { body: {} };
  };

  const forwardedRoute: Handler = async (ctx) => {
    authenticateHomeserver(ctx, config.homeserver_secret!);
    const body = parseWith(forwardedDelegation, await jsonObject(ctx));
    if (serverOfUserId(body.user_id) !== body.server_name) {
      throw fail.badJson('user_id does not belong to server_name');
    }
    await requireClientApi(body.server_name);
    await delegate({
      livekitRoom: body.livekit_room,
      identity: body.identity,
      delayId: body.delay_id,
      delayTimeoutMs: body.delay_timeout,
      serverName: body.server_name,
      userId: body.user_id,
      ...(body.scoped_token !== undefined ? { scopedToken: body.scoped_token } : {}),
      source: 'msc4195',
    });
    return { body: {} };
  };

  const webhookRoute: Handler = async (ctx) => {
    const rawBody = (await ctx.rawBody()).toString('utf8');
    const auth = ctx.req.headers.authorization;
    let hook: VerifiedWebhook;
    try {
      hook = await webhookVerifier.verify(rawBody, auth);
    } catch (err) {
      metrics.webhooks.inc({ event: 'unverified', verdict: 'forged' });
      log.warn({ reason: (err as Error).message, remote: ctx.remoteAddress }, 'webhook rejected: signature check failed');
      throw fail.unauthorized('Webhook signature verification failed');
    }
    // Cluster mode: the room's owner may be another replica, so the signal is handed to its
    // inbox in Redis before LiveKit hears 200 (a 503 makes LiveKit send it again).
    if (cluster) {
      const signal = admitWebhook(hook);
      if (signal) {
        try {
          await cluster.forward(signal);
        } catch (err) {
          if (hook.id !== '') recentWebhooks.forget(hook.id);
          log.warn({ err: (err as Error).message }, 'webhook not handed to its room\'s owner');
          throw fail.unavailable('Cannot reach the cluster store');
        }
      }
      return { body: {} };
    }
    // LiveKit stalls a room's whole webhook queue while we answer, so reply first, work after.
    setImmediate(() => {
      const signal = admitWebhook(hook);
      if (!signal) return;
      try {
        jobs.onParticipant(signal);
      } catch (err) {
        log.error({ err }, 'job engine failed to take a webhook signal');
      }
    });
    return { body: {} };
  };

  /** A verified webhook's signal for the engine: none for repeats and other events (counted). */
  function admitWebhook(hook: VerifiedWebhook): ParticipantSignal | undefined {
    const label = eventLabel(hook.event);
    if (hook.id !== '' && !recentWebhooks.firstSighting(hook.id)) {
      metrics.webhooks.inc({ event: label, verdict: 'duplicate' });
      return undefined;
    }
    const signal = hook.signal;
    if (!signal) {
      metrics.webhooks.inc({ event: label, verdict: 'ignored' });
      return undefined;
    }
    metrics.webhooks.inc({ event: label, verdict: 'accepted' });
    log.debug({ kind: signal.kind, reason: signal.disconnectReason }, 'participant webhook');
    return signal;
  }

  const clientRoutes: Record<ClientRoute, Handler> = {
    '/sfu/get': legacyRoute,
    '/get_token': tokenRoute,
    '/delegate_delayed_leave': delegateRoute,
  };
  const router = new Router();
  for (const path of CLIENT_ROUTES) {
    router.add('POST', path, withCors(clientRoutes[path]));
    router.add(otherMethods('POST'), path, () => ({ status: 405, headers: { ...CORS_HEADERS } }));
  }
  router.add('POST', '/sfu_webhook', webhookRoute);
  if (config.homeserver_secret !== undefined) router.add('POST', '/_lastwill/v1/delegations', forwardedRoute);
  router.add('GET', '/healthz', () => ({ status: 200 }));
  router.add(otherMethods('GET'), '/healthz', () => ({ status: 405 }));
  router.add('GET', '/readyz', () => (ready() ? { body: { ready: true } } : { status: 503, body: { ready: false } }));
  router.add('GET', '/metrics', metricsHandler(metrics.registry));

  const app = createHttpApp({
    router,
    log,
    // The default 1 MiB cap: webhooks with full room/track info can be large, and a 413 is final for LiveKit.
    // lk-jwt-service answers preflights on the client routes only; elsewhere OPTIONS is just
    // another method (405 on /healthz, 404 M_UNRECOGNIZED on unknown paths, Matrix 405 elsewhere).
    onOptions: (ctx) => {
      if (isClientRoute(ctx.path)) return { status: 200, headers: { ...CORS_HEADERS } };
      if (ctx.path === '/healthz') return { status: 405 };
      const found = router.match('OPTIONS', ctx.path);
      if (!found) return errorReply(fail.unrecognized('Unrecognized request'));
      return errorReply(fail.methodNotAllowed('Method not allowed'));
    },
    onResponse: metrics.http.onResponse,
  });

  return {
    app,
    engine,
    cluster,
    metrics,
    async start() {
      await jobs.start();
      started = true;
    },
    async close() {
      closing = true;
      await app.close();
      // Also when start() never ran or failed: the engine opened its SQLite store when built.
      await jobs.stop();
      started = false;
      await outbound.close();
      await rooms.close();
    },
  };
}

/** CORS headers on every answer of a client route, errors included. */
function withCors(handler: Handler): Handler {
  return async (ctx) => {
    let reply: Reply;
    try {
      reply = await handler(ctx);
    } catch (err) {
      if (!isMatrixError(err)) throw err;
      reply = errorReply(err as MatrixError);
    }
    return { ...reply, headers: { ...reply.headers, ...CORS_HEADERS } };
  };
}

/** `Authorization: Bearer <homeserver_secret>`, compared in constant time. */
function authenticateHomeserver(ctx: RequestContext, secret: string): void {
  const header = ctx.req.headers.authorization;
  const m = header === undefined ? null : /^Bearer (.+)$/.exec(header);
  if (!m) throw fail.missingToken('Missing access token');
  const given = Buffer.from(m[1]!, 'utf8');
  const expected = Buffer.from(secret, 'utf8');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw fail.unknownToken('Unrecognised access token');
  }
}
