// A small round-robin HTTP load balancer on loopback, as a Kubernetes Service or a reverse proxy
// stands in front of agent replicas: each request goes to the next replica, and to the one after
// when a replica does not answer (killed, or not listening yet), so clients and LiveKit's webhooks
// see one address whatever happens behind it.
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

import { readBodyBytes } from '../../fakes/http-util.js';

export interface Balancer {
  readonly url: string;
  close(): Promise<void>;
}

const ANSWER_TIMEOUT_MS = 5000;

export async function startBalancer(port: number, targets: () => string[]): Promise<Balancer> {
  let next = 0;
  const forward = (target: string, req: IncomingMessage, body: Buffer) =>
    new Promise<{ status: number; headers: IncomingMessage['headers']; body: Buffer }>((resolve, reject) => {
      const url = new URL(req.url ?? '/', target);
      const out = httpRequest(url, { method: req.method, headers: { ...req.headers, host: url.host } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      out.on('error', reject);
      // A frozen replica accepts connections and never answers: give up on it as a proxy's read
      // timeout (or an unready pod) would, and try the next.
      out.setTimeout(ANSWER_TIMEOUT_MS, () => out.destroy(new Error('no answer')));
      out.end(body);
    });
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const body = await readBodyBytes(req);
    const list = targets();
    for (let i = 0; i < list.length; i++) {
      const target = list[next++ % list.length]!;
      try {
        const answer = await forward(target, req, body);
        res.writeHead(answer.status, answer.headers);
        res.end(answer.body);
        return;
      } catch {
        // That replica is gone: the next one.
      }
    }
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end('{"errcode":"M_UNKNOWN","error":"no replica answered"}');
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
