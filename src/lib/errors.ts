/**
 * The one error registry: every error lastwill answers with is declared here once, with its HTTP
 * status and Matrix errcode. Handlers throw `MatrixError`s made by `fail.<kind>()`; the HTTP layer
 * renders them as `{errcode, error, ...extra}`. Callers branch on `errcode`, never on message text.
 */

/** Declared error kinds: HTTP status and Matrix errcode. */
export const ERROR_KINDS = {
  notJson: { status: 400, errcode: 'M_NOT_JSON' },
  badJson: { status: 400, errcode: 'M_BAD_JSON' },
  invalidParam: { status: 400, errcode: 'M_INVALID_PARAM' },
  missingParam: { status: 400, errcode: 'M_MISSING_PARAM' },
  invalidUsername: { status: 400, errcode: 'M_INVALID_USERNAME' },
  userInUse: { status: 400, errcode: 'M_USER_IN_USE' },
  roomInUse: { status: 400, errcode: 'M_ROOM_IN_USE' },
  /** MSC4140 seed form: 400 M_UNKNOWN carrying the real code in `org.matrix.msc4140.errcode`. */
  unstableLimit: { status: 400, errcode: 'M_UNKNOWN' },
  missingToken: { status: 401, errcode: 'M_MISSING_TOKEN' },
  unknownToken: { status: 401, errcode: 'M_UNKNOWN_TOKEN' },
  unauthorized: { status: 401, errcode: 'M_UNAUTHORIZED' },
  forbidden: { status: 403, errcode: 'M_FORBIDDEN' },
  notFound: { status: 404, errcode: 'M_NOT_FOUND' },
  unrecognized: { status: 404, errcode: 'M_UNRECOGNIZED' },
  methodNotAllowed: { status: 405, errcode: 'M_UNRECOGNIZED' },
  conflict: { status: 409, errcode: 'M_UNKNOWN' },
  /** Seed rule: a delayed state event overwritten by another user (stored as its error, never answered). */
  cancelledByStateUpdate: { status: 409, errcode: 'M_CANCELLED_BY_STATE_UPDATE' },
  tooLarge: { status: 413, errcode: 'M_TOO_LARGE' },
  limitExceeded: { status: 429, errcode: 'M_LIMIT_EXCEEDED' },
  internal: { status: 500, errcode: 'M_UNKNOWN' },
  unavailable: { status: 503, errcode: 'M_UNKNOWN' },
} as const satisfies Record<string, { status: number; errcode: string }>;

export type ErrorKind = keyof typeof ERROR_KINDS;

/** A Matrix-shaped error with everything needed to render the reply. */
export class MatrixError extends Error {
  readonly kind: ErrorKind;
  readonly status: number;
  readonly errcode: string;
  /** Extra top-level body fields, e.g. `retry_after_ms`. */
  readonly extra: Readonly<Record<string, unknown>>;
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    kind: ErrorKind,
    message: string,
    extra: Record<string, unknown> = {},
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'MatrixError';
    this.kind = kind;
    this.status = ERROR_KINDS[kind].status;
    this.errcode = ERROR_KINDS[kind].errcode;
    this.extra = extra;
    this.headers = headers;
  }

  /** The response body in the Matrix standard error shape. */
  body(): Record<string, unknown> {
    return { errcode: this.errcode, error: this.message, ...this.extra };
  }
}

type Factories = {
  [K in ErrorKind]: (
    message: string,
    extra?: Record<string, unknown>,
    headers?: Record<string, string>,
  ) => MatrixError;
};

/** `throw fail.notFound('Unknown delay_id')`. */
export const fail: Factories = Object.fromEntries(
  (Object.keys(ERROR_KINDS) as ErrorKind[]).map((kind) => [
    kind,
    (message: string, extra?: Record<string, unknown>, headers?: Record<string, string>) =>
      new MatrixError(kind, message, extra, headers),
  ]),
) as Factories;

/**
 * A 429 in the form Synapse and the latest MSC text use: `retry_after_ms` in the body and, when
 * positive, a `Retry-After` header in whole seconds rounded up.
 */
export function rateLimited(retryAfterMs: number, message = 'Too many requests'): MatrixError {
  const ms = Math.max(0, Math.ceil(retryAfterMs));
  const headers: Record<string, string> = ms > 0 ? { 'retry-after': String(Math.ceil(ms / 1000)) } : {};
  return new MatrixError('limitExceeded', message, { retry_after_ms: ms }, headers);
}

export function isMatrixError(err: unknown): err is MatrixError {
  return err instanceof MatrixError;
}
