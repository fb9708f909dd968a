/**
 * Settings of `lastwill agent`: the delegate agent beside the LiveKit SFU. Every lk-jwt-service
 * environment variable works as an alias; the multi-variable forms (LIVEKIT_KEY_FILE, the
 * LIVEKIT_JWT_BIND/LIVEKIT_JWT_PORT conflict) live in agent-env.ts.
 */
import { readFileSync } from 'node:fs';

import { z } from 'zod';

import { redisClientOptions } from '../agent/cluster/redis-url.js';
import { group, type Infer, setting } from './define.js';
import { hostPort, serverName, storageSettings } from './common.js';

/** The value that makes LIVEKIT_INSECURE_SKIP_VERIFY_TLS take effect (same sentinel as lk-jwt-service). */
export const INSECURE_TLS_SENTINEL = 'YES_I_KNOW_WHAT_I_AM_DOING';

/** The livekit-server `--dev` credentials; accepted so `lastwill all` runs, with a loud warning. */
export const DEV_LIVEKIT_KEY = 'devkey';
export const DEV_LIVEKIT_SECRET = 'secret';

/** Reads a secret named by a `*_FROM_FILE` variable; trailing newlines are not part of it. */
export function readSecretFile(path: string): string {
  const text = readFileSync(path, 'utf8').trim();
  if (text.length === 0) throw new Error(`file ${path} is empty`);
  return text;
}

/** lk-jwt-service's `:8080` form means every interface. */
export function bindFromLkJwt(raw: string): string {
  const value = raw.trim();
  return value.startsWith(':') ? `0.0.0.0${value}` : value;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'warning', 'error'] as const;

const httpUrl = z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' });

/** What cluster mode can connect to (the forms go-redis, and so lk-jwt-service, accepts). */
const redisUrl = z.string().refine(
  (url) => {
    try {
      redisClientOptions(url);
      return true;
    } catch {
      return false;
    }
  },
  { error: 'must be redis://[user:password@]host:port[/db], rediss://… or unix://[user:password@]/path[?db=N]' },
);

const ms = (value: number, doc: string) =>
  setting(z.number().int().min(0).default(value), { doc, env: 'number' });

export const agentSettings = group(
  {
    bind: setting(hostPort.default('127.0.0.1:8080'), {
      doc:
        'Listen address (host:port) of the token and webhook API. Loopback by default; use ' +
        '0.0.0.0:8080 in a container. lk-jwt-service\'s ":8080" form means 0.0.0.0:8080.',
      env: 'string',
      aliases: [
        { name: 'LIVEKIT_JWT_BIND', parse: bindFromLkJwt },
        { name: 'LIVEKIT_JWT_PORT', parse: (raw) => `0.0.0.0:${raw.trim()}`, deprecated: true },
      ],
    }),
    livekit: group(
      {
        url: setting(z.url({ protocol: /^(wss?|https?)$/, error: 'must be a ws(s):// or http(s):// URL' }).default('ws://127.0.0.1:7880'), {
          doc: 'The SFU URL: returned to clients as `url` and used for RoomService calls.',
          env: 'string',
          aliases: [{ name: 'LIVEKIT_URL' }],
        }),
        key: setting(z.string().min(1).default(DEV_LIVEKIT_KEY), {
          doc:
            'LiveKit API key (signs join tokens, verifies webhooks). The default is the livekit-server ' +
            '--dev key and is accepted only with a loud startup warning. LIVEKIT_KEY_FILE holding ' +
            '"key: secret" sets both.',
          env: 'string',
          aliases: [{ name: 'LIVEKIT_KEY' }, { name: 'LIVEKIT_KEY_FROM_FILE', parse: readSecretFile }],
        }),
        secret: setting(z.string().min(1).default(DEV_LIVEKIT_SECRET), {
          doc: 'LiveKit API secret belonging to `key`. The default is the --dev secret (warned at startup).',
          env: 'string',
          secret: true,
          aliases: [{ name: 'LIVEKIT_SECRET' }, { name: 'LIVEKIT_SECRET_FROM_FILE', parse: readSecretFile }],
        }),
      },
      { doc: 'The LiveKit SFU this agent sits beside.' },
    ),
    full_access_homeservers: setting(z.array(z.union([z.literal('*'), serverName])).default([]), {
      doc:
        'Matrix server names whose users get rooms created and may delegate delayed leaves, or "*" ' +
        'for every server. Others get a join token only. Naming a server here also lets the agent ' +
        'contact that server name\'s own origins (https://name and https://name:8448, or https://name:port) ' +
        'on a private or loopback address.',
      env: 'list',
      aliases: [{ name: 'LIVEKIT_FULL_ACCESS_HOMESERVERS' }],
      example: ['example.com', 'matrix.example.org'],
    }),
    cs_api_url_overrides: setting(z.record(serverName, httpUrl).default({}), {
      doc:
        'Client-server API base URL per server name (server=url,...), used instead of ' +
        '.well-known/matrix/client for the MSC4140 restart and send calls only (as lk-jwt-service does); ' +
        'the OpenID check still follows federation resolution. The URL\'s origin may be a private address.',
      env: 'map',
      aliases: [{ name: 'LIVEKIT_CS_API_URL_OVERRIDES' }],
      example: { 'example.com': 'http://synapse.internal:8008' },
    }),
    federation_url_overrides: setting(z.record(serverName, httpUrl).default({}), {
      doc:
        'Federation API base URL per server name (server=url,...) for the OpenID userinfo check, ' +
        'instead of federation resolution (explicit port, .well-known/matrix/server, port 8448): for a ' +
        'homeserver whose federation listener the agent reaches only at an internal address. Never ' +
        'inferred from cs_api_url_overrides. The URL\'s origin may be a private address.',
      env: 'map',
      example: { 'example.com': 'https://synapse-federation.internal:8448' },
    }),
    sanity_check_interval_seconds: setting(z.number().int().min(0).default(30), {
      doc: 'How often connected participants are re-checked with LiveKit RoomService (0 disables).',
      env: 'number',
      aliases: [{ name: 'LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS' }],
    }),
    log_level: setting(
      z
        .enum(LOG_LEVELS)
        .transform((v) => (v === 'warning' ? 'warn' : v))
        .default('info'),
      {
        doc: 'Log level: trace, debug, info, warn (or warning), error. Delay ids and tokens are never logged at info.',
        env: 'string',
        aliases: [{ name: 'LIVEKIT_LOG_LEVEL', parse: (raw) => raw.trim().toLowerCase() }],
      },
    ),
    insecure_skip_verify_tls: setting(z.string().default(''), {
      doc:
        `Disables TLS verification of homeserver calls, only when set to ${INSECURE_TLS_SENTINEL}; ` +
        'any other value is ignored with a warning. Prefer NODE_EXTRA_CA_CERTS.',
      env: 'string',
      aliases: [{ name: 'LIVEKIT_INSECURE_SKIP_VERIFY_TLS' }],
    }),
    redis_url: setting(redisUrl.optional(), {
      doc:
        'Turns on cluster mode: any number of replicas share their jobs through this Redis ' +
        '(redis://[user:password@]host:port[/db], rediss:// for TLS, unix:///path/to/socket[?db=N]). ' +
        'Unset: the embedded SQLite store under data_dir (one process). lk-jwt-service\'s jobs found ' +
        'in it are taken over.',
      env: 'string',
      secret: true,
      aliases: [{ name: 'LIVEKIT_REDIS_URL' }],
    }),
    redis_password: setting(z.string().min(1).optional(), {
      doc: 'Redis password, when it is not in redis_url (it wins over one that is).',
      env: 'string',
      secret: true,
      aliases: [{ name: 'LIVEKIT_REDIS_PASSWORD' }],
    }),
    cluster: group(
      {
        partitions: setting(z.number().int().min(1).max(4096).default(256), {
          doc:
            'Rooms are cut into this many partitions, each driven by one replica at a time. Every ' +
            'replica on one Redis must use the same number (checked at start).',
          env: 'number',
        }),
        lease_ms: setting(z.number().int().min(500).max(60_000).default(2000), {
          doc:
            'How long a replica\'s ownership of a partition lasts without renewal (renewed every fifth ' +
            'of it). A replica that dies is taken over after about this long; one that cannot renew ' +
            'stops acting a tenth of it earlier. Longer tolerates longer stalls of a replica, shorter ' +
            'takes a dead one over sooner.',
          env: 'number',
        }),
        replica_id: setting(z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'letters, digits, ".", "_" and "-"').optional(), {
          doc:
            'This replica\'s name in the cluster (a Kubernetes pod name, say); unique among the live ' +
            'replicas. Unset: host name, process id and a random part.',
          env: 'string',
        }),
        key_prefix: setting(z.string().min(1).max(64).default('lastwill:'), {
          doc: 'Prefix of every Redis key of this cluster (several clusters can share one Redis).',
          env: 'string',
        }),
      },
      { doc: 'Cluster mode (with redis_url).' },
    ),
    ...storageSettings('./.data/agent'),
    homeserver_secret: setting(z.string().min(16).optional(), {
      doc:
        'Shared secret of homeservers forwarding MSC4195 delegations to POST /_lastwill/v1/delegations ' +
        '(Authorization: Bearer <secret>). Unset disables that endpoint.',
      env: 'string',
      secret: true,
    }),
    well_known_cache_ttl_seconds: setting(z.number().int().min(0).default(4 * 3600), {
      doc: 'How long resolved homeserver URLs (.well-known client and server) are cached.',
      env: 'number',
    }),
    outbound: group(
      {
        timeout_ms: setting(z.number().int().positive().default(5000), {
          doc: 'Timeout of each homeserver request (connect, and headers after sending).',
          env: 'number',
        }),
        max_connections_per_homeserver: setting(z.number().int().positive().default(8), {
          doc: 'Concurrent connections per homeserver origin; further requests queue.',
          env: 'number',
        }),
      },
      { doc: 'Requests to homeservers (OpenID, .well-known, restart/send).' },
    ),
    engine: group(
      {
        restart_fraction: setting(z.number().gt(0).lt(1).default(0.8), {
          doc: 'A connected job restarts its delayed event after this fraction of delay_timeout.',
          env: 'number',
        }),
        max_waiting_ms: ms(3_600_000, 'Longest wait for a delegated participant to appear before the leave is sent.'),
        disconnect_grace_ms: ms(
          1000,
          'After the current session of a connected participant ends, wait this long for a rejoin ' +
            '(LiveKit SDKs reconnect by leaving and joining again with a new sid), then look the ' +
            'identity up once and send unless it is back. 0 sends at once.',
        ),
        abort_grace_ms: ms(
          30_000,
          'When a session ends before the job saw it connected, the wait is shortened to this, so a ' +
            'retrying client is still caught and a dead one is hung up soon.',
        ),
        backoff: group(
          {
            initial_ms: setting(z.number().int().positive().default(1000), {
              doc: 'First retry delay.',
              env: 'number',
            }),
            factor: setting(z.number().min(1).default(1.5), { doc: 'Growth per retry.', env: 'number' }),
            max_ms: setting(z.number().int().positive().default(60_000), {
              doc: 'Longest retry delay.',
              env: 'number',
            }),
            jitter: setting(z.number().min(0).max(1).default(0.5), {
              doc: 'Random spread (0.5 = plus or minus 50 %).',
              env: 'number',
            }),
          },
          { doc: 'Retry backoff of restarts, sends and presence lookups.' },
        ),
        pacing: group(
          {
            per_second: setting(z.number().positive().default(100), {
              doc:
                'Sustained restart requests per second, per homeserver. With 1 h delays a homeserver with N ' +
                'connected participants needs N / 2880 restarts/s; restarts near their deadline bypass this.',
              env: 'number',
            }),
            burst: setting(z.number().int().positive().default(200), {
              doc: 'Requests allowed at once per homeserver before pacing applies.',
              env: 'number',
            }),
            max_in_flight: setting(z.number().int().positive().default(32), {
              doc:
                'Restart requests awaiting an answer at once, per homeserver; further due restarts wait ' +
                'for a free slot (those near their deadline first, and never behind the pacing). Bounds ' +
                'the memory and the connection queue of a restart burst, and the restarts a send may ' +
                'queue behind on the shared connections (sends are not counted and never wait). 32 carries ' +
                'the default pacing up to 320 ms per answer.',
              env: 'number',
            }),
          },
          { doc: 'Pacing of restarts to each homeserver (a token bucket per server name); sends are never paced.' },
        ),
        sanity_check_max_per_second: setting(z.number().positive().default(100), {
          doc:
            'Budget of the periodic LiveKit re-check (sanity_check_interval_seconds): at most this many ' +
            'ListParticipants calls per second on average, one per room with a connected participant. ' +
            'Up to interval × budget rooms (3000 with the defaults) each room is re-checked every ' +
            'interval; beyond that the period stretches to rooms / budget. Webhooks are the primary ' +
            'signal; the re-check only catches a lost leave webhook, and until it does the agent keeps ' +
            'the delayed event alive: with 100 000 rooms and the default budget a lost leave is found ' +
            'within 1000 s (about 17 min). A higher budget finds it sooner at the cost of CPU here and ' +
            'on the SFU: a re-check costs the agent about 0.2 ms of CPU (the calls due each second go ' +
            'out together), so the default uses about 2 % of a core.',
          env: 'number',
        }),
        terminal_retention_ms: ms(24 * 3600 * 1000, 'How long finished jobs are kept in the store before purging.'),
      },
      { doc: 'The delegation job engine.' },
    ),
  },
  { envPrefix: 'LASTWILL_AGENT_' },
);

export type AgentConfig = Infer<typeof agentSettings>;
