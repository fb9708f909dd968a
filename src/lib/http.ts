/**
 * The thin transport layer under both components: a route table over node:http, body reading with
 * a size cap, Matrix-shaped error rendering and graceful close. Route handlers return a `Reply` or
 * throw a `MatrixError`; anything else thrown is a bug, answered 500 and logged with its stack.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

import type { Logger } from 'pino';
import type { z } from 'zod';

import { fail, isMatrixError, type MatrixError } from './errors.js';
import type { ReturningClients } from './returning-clients.js';

export type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'OPTIONS';

export interface Reply {
  status?: number;
  /** Serialised as JSON unless `raw` is given. */
  body?: unknown;
  /** A pre-serialised body (metrics text, for example). */
  raw?: string | Buffer;
  headers?: Record<string, string>;
}

export interface RequestContext {
  readonly req: IncomingMessage;
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  /** Decoded path parameters by name. */
  readonly params: Readonly<Record<string, string>>;
  /** The route pattern that matched; safe to log (no ids, no capabilities). */
  readonly route: string;
  readonly remoteAddress: string;
  /** Aborted when the server starts closing, so long polls can answer at once. */
  readonly closing: AbortSignal;
  /** The raw request body (read once, capped). */
  rawBody(): Promise<Buffer>;
  /** The body parsed as JSON; malformed JSON is 400 M_NOT_JSON. */
  json(): Promise<unknown>;
}

export type Handler = (ctx: RequestContext) => Promise<Reply> | Reply;

interface Segment {
  literal?: string;
  param?: string;
  /** Allowed values for a constrained parameter such as `:version(v3|r0)`. */
  choices?: ReadonlySet<string>;
  optional?: boolean;
}

interface Route {
  pattern: string;
  segments: Segment[];
  handlers: Map<string, Handler>;
}

/**
 * Patterns are `/`-separated: literals, `:name`, `:name(a|b)` and a final optional `:name?`
 * (which also matches an empty last segment, as in `/state/{type}/` with an empty state key).
 */
export class Router {
  private readonly routes: Route[] = [];
  private readonly byPattern = new Map<string, Route>();

  add(methods: Method | Method[], pattern: string, handler: Handler): this {
    let route = this.byPattern.get(pattern);
    if (!route) {
      route = { pattern, segments: parsePattern(pattern), handlers: new Map() };
      this.byPattern.set(pattern, route);
      this.routes.push(route);
    }
    for (const m of Array.isArray(methods) ? methods : [methods]) {
      if (route.handlers.has(m)) throw new Error(`duplicate route ${m} ${pattern}`);
      route.handlers.set(m, handler);
    }
    return this;
  }

  /** Every registered (method, pattern) pair; used by the malformed-request tests. */
  list(): Array<{ method: string; pattern: string }> {
    return this.routes.flatMap((r) => [...r.handlers.keys()].map((method) => ({ method, pattern: r.pattern })));
  }

  /**
   * Finds the handler. A path that matches some route but not the method yields `allowed`, so the
   * caller can answer 405 rather than 404.
   */
  match(
    method: string,
    path: string,
  ):
    | { handler: Handler; params: Record<string, string>; route: string }
    | { allowed: string[] }
    | undefined {
    const parts = path.split('/').slice(1);
    let allowed: string[] | undefined;
    for (const route of this.routes) {
      const params = matchSegments(route.segments, parts);
      if (!params) continue;
      const handler =
        route.handlers.get(method) ?? (method === 'HEAD' ? route.handlers.get('GET') : undefined);
      if (handler) return { handler, params, route: route.pattern };
      allowed = [...(allowed ?? []), ...route.handlers.keys()];
    }
    return allowed ? { allowed } : undefined;
  }
}

function parsePattern(pattern: string): Segment[] {
  return pattern
    .split('/')
    .slice(1)
    .map((part, i, all) => {
      if (!part.startsWith(':')) return { literal: part };
      const m = /^:([A-Za-z_]\w*)(?:\(([^)]*)\))?(\?)?$/.exec(part);
      if (!m) throw new Error(`bad route segment ${part} in ${pattern}`);
      if (m[3] && i !== all.length - 1) throw new Error(`optional segment must be last: ${pattern}`);
      return {
        param: m[1]!,
        ...(m[2] !== undefined ? { choices: new Set(m[2].split('|')) } : {}),
        ...(m[3] ? { optional: true } : {}),
      };
    });
}

function matchSegments(segments: Segment[], parts: string[]): Record<string, string> | undefined {
  const last = segments[segments.length - 1];
  const optionalTail = last?.optional === true;
  if (parts.length !== segments.length && !(optionalTail && parts.length === segments.length - 1)) {
    return undefined;
  }
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const raw = parts[i];
    if (raw === undefined) {
      params[seg.param!] = '';
      continue;
    }
    if (seg.literal !== undefined) {
      if (raw !== seg.literal) return undefined;
      continue;
    }
    let value: string;
    try {
      value = decodeURIComponent(raw);
    } catch {
      return undefined;
    }
    if (seg.choices && !seg.choices.has(value)) return undefined;
    if (value === '' && !seg.optional) return undefined;
    params[seg.param!] = value;
  }
  return params;
}

/** Validates parsed JSON against a zod schema; a mismatch is 400 with the first problem named. */
export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  kind: 'badJson' | 'invalidParam' = 'badJson',
): z.output<S> {
  const result = schema.safeParse(value, { reportInput: true });
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
  const message = `${where}${issue?.message ?? 'invalid'}`;
  if (issue?.code === 'invalid_type' && issue.input === undefined) throw fail.missingParam(message);
  throw fail[kind](message);
}

/** A request that was answered: its route pattern (not its path), method, status and duration. */
export interface ResponseInfo {
  route: string;
  method: string;
  status: number;
  ms: number;
}

export interface HttpServerOptions {
  router: Router;
  log: Logger;
  /** Largest accepted request body; larger ones are 413 M_TOO_LARGE. */
  maxBodyBytes?: number;
  /** Headers added to every response (CORS). */
  commonHeaders?: Record<string, string>;
  /** Answer for OPTIONS on any path; default 200 with no body (CORS preflight). */
  onOptions?: (ctx: RequestContext) => Reply;
  /** Request end hook for metrics. */
  onResponse?: (info: ResponseInfo) => void;
  /** Told of every request and answer, for group commits that wait for returning clients. */
  returning?: ReturningClients;
}

export interface HttpApp {
  readonly server: Server;
  listen(host: string, port: number): Promise<{ host: string; port: number; url: string }>;
  /** Stops accepting, aborts long polls, waits for in-flight requests (up to `graceMs`). */
  close(graceMs?: number): Promise<void>;
}

const JSON_HEADERS = { 'content-type': 'application/json' };

export function createHttpApp(opts: HttpServerOptions): HttpApp {
  const maxBody = opts.maxBodyBytes ?? 1024 * 1024;
  const closing = new AbortController();
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    void handle(req, res);
  });
  server.headersTimeout = 30_000;
  server.requestTimeout = 120_000;
  answerMalformedHttp(server);
  /**
   * Connections that have not begun a request. Node's closeIdleConnections() leaves them open, so
   * one an HTTP client connected speculatively (or for a request it then aborted) held close()
   * for the whole grace period.
   */
  const unused = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    unused.add(socket);
    socket.once('close', () => unused.delete(socket));
  });
  server.on('request', (req: IncomingMessage) => unused.delete(req.socket));

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    opts.returning?.requestStarted(req.socket);
    const method = req.method ?? 'GET';
    let routeName = 'unmatched';
    let status = 500;
    try {
      const target = req.url ?? '/';
      const q = target.indexOf('?');
      const path = q === -1 ? target : target.slice(0, q);
      const query = new URLSearchParams(q === -1 ? '' : target.slice(q + 1));
      let bodyPromise: Promise<Buffer> | undefined;
      const ctx: RequestContext = {
        req,
        method,
        path,
        query,
        params: {},
        route: routeName,
        remoteAddress: normaliseAddress(req.socket.remoteAddress),
        closing: closing.signal,
        rawBody: () => (bodyPromise ??= readBody(req, maxBody)),
        json: async () => parseJson(await ctx.rawBody()),
      };
      let reply: Reply;
      if (closing.signal.aborted) {
        reply = errorReply(fail.unavailable('Server is shutting down'));
      } else if (method === 'OPTIONS') {
        reply = opts.onOptions ? opts.onOptions(ctx) : { status: 200 };
      } else {
        const found = opts.router.match(method, path);
        if (!found) {
          reply = errorReply(fail.unrecognized('Unrecognized request'));
        } else if ('allowed' in found) {
          reply = errorReply(fail.methodNotAllowed('Method not allowed'));
          reply.headers = { ...reply.headers, allow: [...new Set(found.allowed)].join(', ') };
        } else {
          routeName = found.route;
          Object.assign(ctx, { params: found.params, route: found.route });
          reply = await found.handler(ctx);
        }
      }
      status = send(res, reply, method, opts.commonHeaders);
    } catch (err) {
      // The socket, not `req`: a request whose body has been read is already `destroyed`, and a
      // bug thrown after that must still be answered 500 rather than leave the client hanging.
      if (req.socket.destroyed && !isMatrixError(err)) {
        // The client went away mid-request (reading its body failed): nobody to answer, no bug.
        opts.log.debug({ route: routeName }, 'client aborted the request');
        status = 499;
        return;
      }
      const reply = isMatrixError(err) ? errorReply(err) : internalError(err, opts.log, routeName);
      status = send(res, reply, method, opts.commonHeaders);
    } finally {
      if (status !== 499) opts.returning?.answeredOn(req.socket);
      opts.onResponse?.({ route: routeName, method, status, ms: performance.now() - started });
      // While closing, a keep-alive socket that just went idle would hold close() open.
      if (closing.signal.aborted) res.once('finish', () => setImmediate(() => server.closeIdleConnections()));
    }
  }

  return {
    server,
    async listen(host, port) {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      const addr = server.address() as AddressInfo;
      const shownHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      return { host: addr.address, port: addr.port, url: `http://${shownHost}:${addr.port}` };
    },
    async close(graceMs = 10_000) {
      closing.abort();
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      for (const socket of unused) socket.destroy();
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      try {
        await done;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/**
 * Requests node's HTTP parser rejects (raw non-ASCII in the target, broken framing) never reach
 * the router; node would answer a bare 400. Answer them as Matrix errors too, and close the
 * connection so a keep-alive client does not reuse it.
 */
function answerMalformedHttp(server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable || (socket as Duplex & { _httpMessage?: unknown })._httpMessage) {
      socket.destroy();
      return;
    }
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const error = tooLarge
      ? fail.tooLarge('Request headers too large')
      : fail.invalidParam('Malformed HTTP request');
    const payload = JSON.stringify(error.body());
    socket.end(
      `HTTP/1.1 ${error.status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\n` +
        'content-type: application/json\r\n' +
        `content-length: ${Buffer.byteLength(payload)}\r\n` +
        'connection: close\r\n\r\n' +
        payload,
    );
  });
}

function send(
  res: ServerResponse,
  reply: Reply,
  method: string,
  common: Record<string, string> | undefined,
): number {
  const status = reply.status ?? 200;
  if (res.headersSent) return status;
  let payload: string | Buffer | undefined = reply.raw;
  const headers: Record<string, string> = { ...common, ...reply.headers };
  if (payload === undefined && reply.body !== undefined) {
    payload = JSON.stringify(reply.body);
    headers['content-type'] ??= JSON_HEADERS['content-type'];
  }
  if (payload !== undefined) headers['content-length'] = String(Buffer.byteLength(payload));
  else headers['content-length'] = '0';
  res.writeHead(status, headers);
  res.end(method === 'HEAD' ? undefined : payload);
  return status;
}

export function errorReply(err: MatrixError): Reply {
  return { status: err.status, body: err.body(), headers: { ...err.headers } };
}

function internalError(err: unknown, log: Logger, route: string): Reply {
  log.error({ err, route }, 'unhandled error in request handler');
  return errorReply(fail.internal('Internal server error'));
}

async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) throw fail.tooLarge('Request body too large');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) throw fail.tooLarge('Request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Deeper JSON would overflow the stack when it is serialised again (events, account data). */
export const MAX_JSON_DEPTH = 256;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function parseJson(buf: Buffer): unknown {
  if (buf.length === 0) throw fail.notJson('Content not JSON.');
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(buf));
  } catch {
    throw fail.notJson('Content not JSON.');
  }
  if (depthExceeds(value, MAX_JSON_DEPTH)) throw fail.badJson('JSON is nested too deeply');
  return value;
}

/** Iterative, so the check itself cannot overflow the stack. */
function depthExceeds(root: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (depth > max) return true;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return false;
}

/** JSON object bodies only; arrays and scalars are M_NOT_JSON like Synapse's parse_json_object. */
export async function jsonObject(ctx: RequestContext): Promise<Record<string, unknown>> {
  const value = await ctx.json();
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw fail.notJson('Content must be a JSON object.');
  }
  return value as Record<string, unknown>;
}

function normaliseAddress(addr: string | undefined): string {
  if (!addr) return 'unknown';
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}

/** A base URL without trailing slashes, so `https://a/` and `https://a` compare and join alike. */
export function withoutTrailingSlash(url: string): string {
  return url.replace(/\/+$/, '');
}
