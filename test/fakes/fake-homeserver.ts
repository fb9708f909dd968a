// A loopback Matrix homeserver fake laid out like a real deployment (Synapse with separate
// listeners, and lk-jwt-service's own integration tests): the federation API, with OpenID userinfo,
// on its own TLS listener whose address is the server name (`127.0.0.1:<port>`, explicit port, so
// federation resolution goes straight there), and the client-server API with MSC4140
// delayed_events restart/send/cancel (path and action-in-body forms) on a separate plain-HTTP listener
// that only an operator override can point at. Neither listener answers the other's API, as
// Synapse's listeners do not. `.well-known/matrix/{client,server}` are served at the server name's
// origin only when a test sets them (Synapse's federation listener serves neither). Answers are
// scriptable per delay id (status, Retry-After, hang) and every request is recorded, with the
// listener it reached, so tests assert on what actually reached the homeserver.
import { readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';

import { waitFor } from '../e2e/support/proc.js';
import { makeSelfSignedCert } from '../support/tls.js';
import { closeServer, listenLoopback, readBody, sendJson } from './http-util.js';

export type DelayedAction = 'restart' | 'send' | 'cancel';

/** One scripted answer: a status with optional body/headers, or `hang` (never answer). */
export type ScriptedAnswer = { status: number; body?: unknown; headers?: Record<string, string> } | 'hang';

export type Listener = 'federation' | 'client';

export interface RecordedRequest {
  /** Which listener the request reached. */
  listener: Listener;
  method: string;
  path: string;
  /** For delayed-event management requests. */
  delayId?: string;
  action?: string;
  /** `path` for `/delayed_events/{id}/{action}`, `body` for the action-in-body form. */
  form?: 'path' | 'body';
  authorization?: string;
  body: string;
  status: number;
  at: number;
}

export interface FakeHomeserver {
  /** `127.0.0.1:<federation port>`: the Matrix server name, resolved the federation way. */
  readonly serverName: string;
  /** Client-server API base URL (plain http), what LIVEKIT_CS_API_URL_OVERRIDES names. */
  readonly url: string;
  readonly port: number;
  /** `https://127.0.0.1:<port>`: the federation listener, self-signed. */
  readonly federationUrl: string;
  readonly federationPort: number;
  /** PEM of the federation listener's self-signed certificate (for NODE_EXTRA_CA_CERTS). */
  readonly certFile: string;
  readonly requests: RecordedRequest[];
  /** Makes `accessToken` resolve to `userId` at openid/userinfo. */
  addOpenIdToken(accessToken: string, userId: string): void;
  /** Answers for the next requests of (delayId, action), in order; after that, `fallback`. */
  script(delayId: string, action: DelayedAction, answers: ScriptedAnswer[], fallback?: ScriptedAnswer): void;
  /**
   * From now on a delayed-event request bearing this token gets 401 M_UNKNOWN_TOKEN, as an expired
   * scoped token does; the same request without a token is still served.
   */
  expireToken(token: string): void;
  /** While down, every delayed-event request gets 503 (an outage behind a proxy). */
  setDown(down: boolean): void;
  /** What `https://<server name>/.well-known/matrix/client` serves (undefined: 404). */
  setClientWellKnown(doc: unknown | undefined): void;
  /** What `https://<server name>/.well-known/matrix/server` serves (undefined: 404). */
  setServerWellKnown(doc: unknown | undefined): void;
  /** OpenID userinfo lookups, in arrival order. */
  userInfoRequests(): RecordedRequest[];
  /** Delayed-event requests for one id (and action), in arrival order. */
  actionRequests(delayId: string, action?: DelayedAction): RecordedRequest[];
  waitForRequests(delayId: string, action: DelayedAction, count: number, timeoutMs?: number): Promise<RecordedRequest[]>;
  close(): Promise<void>;
}

const DELAYED_PREFIX = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events/';
const USERINFO_PATH = '/_matrix/federation/v1/openid/userinfo';

export async function startFakeHomeserver(): Promise<FakeHomeserver> {
  const tokens = new Map<string, string>();
  const scripts = new Map<string, { answers: ScriptedAnswer[]; fallback: ScriptedAnswer }>();
  const requests: RecordedRequest[] = [];
  const expiredTokens = new Set<string>();
  const hanging = new Set<ServerResponse>();
  let down = false;
  const wellKnown: Record<'client' | 'server', unknown> = { client: undefined, server: undefined };

  const answer = (res: ServerResponse, a: ScriptedAnswer): number => {
    if (a === 'hang') {
      hanging.add(res);
      res.on('close', () => hanging.delete(res));
      return 0;
    }
    sendJson(res, a.status, a.body ?? (a.status < 300 ? {} : { errcode: 'M_UNKNOWN', error: 'scripted' }), a.headers);
    return a.status;
  };

  async function handle(listener: Listener, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const url = new URL(req.url ?? '/', 'http://fake');
    const rec: RecordedRequest = {
      listener,
      method: req.method ?? 'GET',
      path: url.pathname,
      body,
      status: 0,
      at: Date.now(),
      ...(req.headers.authorization !== undefined ? { authorization: req.headers.authorization } : {}),
    };
    requests.push(rec);
    const reply = (status: number, json: unknown, headers?: Record<string, string>) => {
      rec.status = status;
      sendJson(res, status, json, headers);
    };
    const unrecognized = () => reply(404, { errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });

    if (listener === 'federation') {
      if (url.pathname === USERINFO_PATH && req.method === 'GET') {
        const sub = tokens.get(url.searchParams.get('access_token') ?? '');
        return sub ? reply(200, { sub }) : reply(401, { errcode: 'M_UNKNOWN_TOKEN', error: 'Unknown token' });
      }
      const which = /^\/\.well-known\/matrix\/(client|server)$/.exec(url.pathname)?.[1] as 'client' | 'server' | undefined;
      if (which !== undefined) {
        const doc = wellKnown[which];
        return doc === undefined ? reply(404, { errcode: 'M_NOT_FOUND', error: 'Not found' }) : reply(200, doc);
      }
      return unrecognized();
    }

    if (!url.pathname.startsWith(DELAYED_PREFIX) || req.method !== 'POST') return unrecognized();
    const rest = url.pathname.slice(DELAYED_PREFIX.length).split('/');
    const delayId = decodeURIComponent(rest[0] ?? '');
    let action = rest[1];
    rec.form = 'path';
    if (action === undefined) {
      rec.form = 'body';
      try {
        action = (JSON.parse(body) as { action?: string }).action;
      } catch {
        action = undefined;
      }
    }
    rec.delayId = delayId;
    if (action !== undefined) rec.action = action;
    if (down) return reply(503, { errcode: 'M_UNKNOWN', error: 'Service unavailable' });
    if (expiredTokens.has(req.headers.authorization?.replace(/^Bearer /, '') ?? '')) {
      return reply(401, { errcode: 'M_UNKNOWN_TOKEN', error: 'Token expired', soft_logout: false });
    }
    if (action !== 'restart' && action !== 'send' && action !== 'cancel') {
      return reply(400, { errcode: 'M_INVALID_PARAM', error: 'bad action' });
    }
    const script = scripts.get(`${action}\0${delayId}`);
    const next = script ? (script.answers.shift() ?? script.fallback) : { status: 200, body: {} };
    rec.status = answer(res, next);
  }

  const listen = (listener: Listener) => (req: IncomingMessage, res: ServerResponse) => {
    handle(listener, req, res).catch(() => res.destroy());
  };
  const cert = makeSelfSignedCert();
  const federation: Server = createHttpsServer(
    { key: readFileSync(cert.keyFile), cert: readFileSync(cert.certFile) },
    listen('federation'),
  );
  const client: Server = createHttpServer(listen('client'));
  const federationPort = await listenLoopback(federation);
  const port = await listenLoopback(client);

  const actionRequests = (delayId: string, action?: DelayedAction) =>
    requests.filter((r) => r.delayId === delayId && (action === undefined || r.action === action));

  return {
    serverName: `127.0.0.1:${federationPort}`,
    url: `http://127.0.0.1:${port}`,
    port,
    federationUrl: `https://127.0.0.1:${federationPort}`,
    federationPort,
    certFile: cert.certFile,
    requests,
    addOpenIdToken: (t, u) => void tokens.set(t, u),
    script: (delayId, action, answers, fallback = { status: 200, body: {} }) =>
      void scripts.set(`${action}\0${delayId}`, { answers: [...answers], fallback }),
    expireToken: (token) => void expiredTokens.add(token),
    setDown: (d) => void (down = d),
    setClientWellKnown: (doc) => void (wellKnown.client = doc),
    setServerWellKnown: (doc) => void (wellKnown.server = doc),
    userInfoRequests: () => requests.filter((r) => r.path === USERINFO_PATH),
    actionRequests,
    waitForRequests: (delayId, action, count, timeoutMs = 30_000) =>
      waitFor(
        `${count} ${action} request(s)`,
        () => {
          const found = actionRequests(delayId, action);
          return found.length >= count && found;
        },
        { timeoutMs, intervalMs: 25 },
      ),
    async close() {
      for (const res of hanging) res.destroy();
      await Promise.all([closeServer(federation), closeServer(client)]);
      rmSync(cert.dir, { recursive: true, force: true });
    },
  };
}
