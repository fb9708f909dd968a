/**
 * pino, synchronous to stdout (a crash must not eat the last lines), human-readable on a TTY.
 * Capabilities and credentials are redacted wherever they appear as structured fields; messages
 * themselves are static strings, so no secret can hide in one.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';
import pretty from 'pino-pretty';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

/** Field names whose values are capabilities or credentials. */
const SECRET_FIELDS = [
  'delay_id',
  'delayId',
  'access_token',
  'accessToken',
  'openid_token',
  'token',
  'scoped_token',
  'scopedToken',
  'homeserver_secret',
  'homeserverSecret',
  'agent_secret',
  'agentSecret',
  'password',
  'secret',
  'api_secret',
  'apiSecret',
  'registration_shared_secret',
  'authorization',
];

export const REDACT_PATHS = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  'req.headers.authorization',
  'headers.authorization',
];

export function createLogger(
  opts: { level?: LogLevel; pretty?: boolean; name?: string } = {},
  destination?: NodeJS.WritableStream,
): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    ...(opts.name ? { name: opts.name } : {}),
  };
  if (destination) return pino(options, destination);
  const usePretty = opts.pretty ?? process.stdout.isTTY === true;
  if (usePretty) return pino(options, pretty({ sync: true, colorize: true, translateTime: 'HH:MM:ss.l' }));
  return pino(options, pino.destination({ sync: true }));
}

/** A logger that writes nothing; tests that do not inspect logs use it. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
