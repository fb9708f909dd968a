// The soak's fault injectors on the agent's three connections, each a small proxy on loopback that
// passes traffic through until told otherwise:
// - webhooks, LiveKit → agent: dropped, delayed, duplicated or reordered (LiveKit answers what it is
//   answered, so a faulty period answers 200 itself and misdelivers afterwards);
// - the agent's homeserver calls: cut (connections reset), blackholed (requests hang, as when packets
//   are lost) or answered 500 / 429 by the proxy;
// - the agent's LiveKit RoomService calls: cut or blackholed.
// A partition between processes on loopback, as the agent sees it: its connections fail or hang.
// Together with killing and pausing processes this covers the faults the soak schedules.
import { createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createTcpServer, type Server, type Socket } from 'node:net';

import { readBodyBytes } from '../fakes/http-util.js';

export type WebhookFault = 'pass' | 'drop' | 'delay' | 'duplicate' | 'reorder';
export type HomeserverFault = 'pass' | 'cut' | 'blackhole' | 'error500' | 'error429';
/** A cut link: connections reset (the peer is down), or packets lost (requests hang until timeouts). */
export type LinkFault = 'pass' | 'cut' | 'blackhole';

interface Held {
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** POSTs like LiveKit's sender: retries a refused or failed delivery at 1, 2, 4, 8 s, then gives up. */
async function deliver(h: Held, stopped: () => boolean): Promise<void> {
  for (const backoff of [0, 1000, 2000, 4000, 8000]) {
    if (backoff) await sleep(backoff);
    if (stopped()) return;
    try {
      const status = await post(h.url, h.headers, h.body);
      if (status < 500) return;
    } catch {
      // The agent is down or restarting: as LiveKit, try again.
    }
  }
}

function post(url: string, headers: IncomingHttpHeaders, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { ...headers, host: new URL(url).host } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

export interface WebhookProxy {
  readonly url: string;
  fault: WebhookFault;
  /** What each fault did, for the report. */
  readonly counts: Record<WebhookFault, number>;
  /** Releases what a reorder held (newest first) and goes back to passing. */
  heal(): void;
  close(): Promise<void>;
}

/** LiveKit → proxy → `target()`/sfu_webhook. */
export async function startWebhookProxy(port: number, target: () => string, rng: () => number): Promise<WebhookProxy> {
  let closed = false;
  const held: Held[] = [];
  const counts: Record<WebhookFault, number> = { pass: 0, drop: 0, delay: 0, duplicate: 0, reorder: 0 };
  const stopped = () => closed;
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const h: Held = { url: `${target()}${req.url ?? '/sfu_webhook'}`, headers: req.headers, body: await readBodyBytes(req) };
    const fault = proxy.fault;
    counts[fault]++;
    if (fault === 'pass') {
      // LiveKit's own retry policy applies: the agent's answer is LiveKit's answer.
      try {
        res.writeHead(await post(h.url, h.headers, h.body)).end();
      } catch {
        res.writeHead(502).end();
      }
      return;
    }
    res.writeHead(200).end();
    if (fault === 'drop') return;
    if (fault === 'delay') void sleep(1000 + rng() * 9000).then(() => deliver(h, stopped));
    else if (fault === 'duplicate') void deliver(h, stopped).then(() => sleep(rng() * 3000)).then(() => deliver(h, stopped));
    else held.push(h);
  };
  const server = createHttpServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await listen(server, port);
  const proxy: WebhookProxy = {
    url: `http://127.0.0.1:${port}`,
    fault: 'pass',
    counts,
    heal() {
      proxy.fault = 'pass';
      const batch = held.splice(0).reverse();
      void (async () => {
        for (const h of batch) await deliver(h, stopped);
      })();
    },
    close: () => closeAll(server, () => (closed = true)),
  };
  return proxy;
}

export interface HomeserverProxy {
  readonly url: string;
  fault: HomeserverFault;
  close(): Promise<void>;
}

/** The agent → proxy → homeserver (client API and the federation userinfo both). */
export async function startHomeserverProxy(port: number, target: string): Promise<HomeserverProxy> {
  const sockets = new Set<Socket>();
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const fault = proxy.fault;
    if (fault === 'cut') return req.socket.destroy();
    if (fault === 'blackhole') return; // unanswered; the socket is destroyed when the link heals
    const body = await readBodyBytes(req);
    if (fault === 'error500') {
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"errcode":"M_UNKNOWN","error":"soak: injected 500"}');
      return;
    }
    if (fault === 'error429') {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '2' });
      res.end('{"errcode":"M_LIMIT_EXCEEDED","error":"soak: injected 429","retry_after_ms":2000}');
      return;
    }
    const url = new URL(req.url ?? '/', target);
    const out = httpRequest(url, { method: req.method, headers: { ...req.headers, host: url.host } }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    out.on('error', () => res.destroy());
    out.end(body);
  };
  const server = createHttpServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await listen(server, port);
  let fault: HomeserverFault = 'pass';
  const proxy: HomeserverProxy = {
    url: `http://127.0.0.1:${port}`,
    get fault() {
      return fault;
    },
    set fault(f) {
      // A cut also breaks the keep-alive connections already open, as a network partition does; the
      // requests a blackhole swallowed end when it heals (the agent's timeouts usually came first).
      if (f === 'cut' || fault === 'blackhole') for (const s of sockets) s.destroy();
      fault = f;
    },
    close: () => closeAll(server),
  };
  return proxy;
}

export interface TcpProxy {
  readonly port: number;
  fault: LinkFault;
  close(): Promise<void>;
}

/** A byte pipe to `targetPort` on loopback that can be cut or blackholed (existing connections too). */
export async function startTcpProxy(port: number, targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let fault: LinkFault = 'pass';
  const track = (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  const server = createTcpServer((client) => {
    track(client);
    if (fault === 'cut') return client.destroy();
    if (fault === 'blackhole') return client.pause(); // accepted, then silence
    const upstream = connect(targetPort, '127.0.0.1');
    track(upstream);
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await listen(server, port);
  return {
    port,
    get fault() {
      return fault;
    },
    set fault(f) {
      if (f === 'blackhole') {
        // Bytes stop flowing both ways; nothing tells either end.
        for (const s of sockets) {
          s.unpipe();
          s.pause();
        }
      } else if (f === 'cut' || fault === 'blackhole') {
        for (const s of sockets) s.destroy();
      }
      fault = f;
    },
    close: () => closeAll(server, () => sockets.forEach((s) => s.destroy())),
  };
}

function listen(server: Server | ReturnType<typeof createHttpServer>, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
}

function closeAll(server: Server | ReturnType<typeof createHttpServer>, before?: () => void): Promise<void> {
  before?.();
  if ('closeAllConnections' in server) server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
