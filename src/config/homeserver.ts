/** Settings of `lastwill homeserver`: the bundled MSC4140 delayed-events homeserver. */
import { z } from 'zod';

import { hostPort, serverName, storageSettings } from './common.js';
import { group, type Infer, setting } from './define.js';

const ONE_MONTH_MS = 30 * 24 * 3600 * 1000;

const bucket = (perSecond: number, burst: number, what: string) =>
  group(
    {
      per_second: setting(z.number().min(0).default(perSecond), {
        doc: `Sustained ${what} per second (0 with burst 0 disables this limit).`,
        env: 'number',
      }),
      burst: setting(z.number().int().min(0).default(burst), {
        doc: `Requests allowed at once before ${what} is throttled.`,
        env: 'number',
      }),
    },
    { doc: `Token bucket for ${what}.` },
  );

export const homeserverSettings = group(
  {
    bind: setting(hostPort.default('127.0.0.1:8008'), {
      doc: 'Listen address (host:port). Loopback by default; use 0.0.0.0:8008 in a container.',
      env: 'string',
    }),
    metrics_bind: setting(hostPort.optional(), {
      doc:
        'Listen address (host:port) of a separate listener serving Prometheus metrics at /metrics; unset, ' +
        'there is none. It needs no token, so keep it off the public network (loopback, or a port only the ' +
        'scraper reaches).',
      env: 'string',
      example: '127.0.0.1:9108',
    }),
    server_name: setting(
      serverName.default('localhost'),
      { doc: 'The Matrix server name: the domain part of user ids (@alice:<server_name>).', env: 'string' },
    ),
    public_base_url: setting(z.url().optional(), {
      doc: 'Base URL clients use to reach this server (for .well-known). Defaults to http://<bind>.',
      env: 'string',
      example: 'https://matrix.example.com',
    }),
    ...storageSettings('./.data/homeserver'),
    group_commit: group(
      {
        wait_ms: setting(z.number().min(0).max(10).default(0.5), {
          doc: 'Longest a commit waits for returning clients (0 never waits).',
          env: 'number',
        }),
        returning_window_ms: setting(z.number().positive().max(60_000).default(2), {
          doc: 'How soon after its answer a client must send again to be waited for.',
          env: 'number',
        }),
      },
      {
        doc:
          'With sqlite_synchronous "full", a commit of schedules, restarts and tokens may wait for clients ' +
          'answered a moment ago on other connections, so that their next writes share its fsync. It waits ' +
          'only while such clients exist, never for a lone client.',
      },
    ),
    registration_shared_secret: setting(z.string().min(1).optional(), {
      doc: 'Enables Synapse-compatible shared-secret registration at /_synapse/admin/v1/register.',
      env: 'string',
      secret: true,
    }),
    open_registration: setting(z.boolean().default(false), {
      doc: 'Allow anyone to register with m.login.dummy.',
      env: 'boolean',
    }),
    log_level: setting(z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'), {
      doc: 'Log level. Capabilities (delay ids, tokens) are never logged at info.',
      env: 'string',
    }),
    max_delay_ms: setting(z.number().int().positive().max(ONE_MONTH_MS).default(24 * 3600 * 1000), {
      doc: 'Longest delay a delayed event may have, in ms (at most one month).',
      env: 'number',
    }),
    delayed_events: group(
      {
        max_scheduled_per_user: setting(z.number().int().min(0).default(100), {
          doc: 'Most delayed events one user may have scheduled at once (0 disables delayed events).',
          env: 'number',
        }),
        terminated_keep_per_user: setting(z.number().int().min(0).max(1000).default(1000), {
          doc: 'Finalised delayed events kept per user for the terminated/finalised listings (at most 1000).',
          env: 'number',
        }),
        terminated_keep_ms: setting(z.number().int().min(0).default(7 * 24 * 3600 * 1000), {
          doc: 'How long finalised delayed events are kept, in ms.',
          env: 'number',
        }),
        scoped_token_max_ms: setting(z.number().int().positive().default(7 * 24 * 3600 * 1000), {
          doc: 'Longest lifetime of a scoped delegation token, in ms.',
          env: 'number',
        }),
      },
      { doc: 'MSC4140 delayed events.' },
    ),
    rate_limits: group(
      {
        schedule: bucket(10, 50, 'scheduling delayed events, per user'),
        management: bucket(1, 20, 'restart/cancel/send/list, per user, or per client address without a token'),
        send: bucket(10, 50, 'events actually sent (timed or by the send action), per user'),
        trusted_addresses: setting(z.array(z.string().min(1)).default([]), {
          doc: 'Client addresses (IPs) of trusted delegate agents; unauthenticated management from them uses the trusted bucket.',
          env: 'list',
        }),
        trusted: bucket(2000, 10000, 'management from a trusted delegate address'),
      },
      { doc: 'Rate limits (token buckets).' },
    ),
    rtc: group(
      {
        livekit_service_url: setting(z.url().optional(), {
          doc: 'The lastwill agent (or lk-jwt-service) URL announced at /rtc/transports and accepted by MSC4195 delegation.',
          env: 'string',
          example: 'https://livekit-jwt.example.com',
        }),
        sfu_urls: setting(z.array(z.url()).default([]), {
          doc:
            'LiveKit SFU URLs (ws/wss) of this deployment. MSC4195 delegations name either the SFU or ' +
            'livekit_service_url in `url`; with neither configured any url is accepted.',
          env: 'list',
          example: ['wss://livekit.example.com'],
        }),
        agent_url: setting(z.url().optional(), {
          doc: 'Where MSC4195 delegations are forwarded (the agent\'s server-to-server endpoint).',
          env: 'string',
          example: 'http://127.0.0.1:8080',
        }),
        agent_secret: setting(z.string().min(16).optional(), {
          doc: 'Shared secret authenticating this homeserver to the agent for forwarded delegations.',
          env: 'string',
          secret: true,
        }),
      },
      { doc: 'MatrixRTC (MSC4195) settings.' },
    ),
  },
  { envPrefix: 'LASTWILL_HS_' },
);

export type HomeserverConfig = Infer<typeof homeserverSettings>;
