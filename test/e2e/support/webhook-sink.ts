// A loopback HTTP server that receives LiveKit webhooks, verifies them with livekit-server-sdk's
// WebhookReceiver (raw body string + raw JWT in `Authorization`, no "Bearer"), and records them.
//
//   const sink = await startWebhookSink();            // sink.url -> give to startLiveKit({webhookUrls})
//   sink.setCredentials(lk.apiKey, lk.apiSecret);     // before the first event arrives
//   const ev = await sink.waitFor((e) => e.event.event === 'participant_joined' && …);
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebhookReceiver, type WebhookEvent } from 'livekit-server-sdk';

export interface ReceivedWebhook {
  event: WebhookEvent;
  rawBody: string;
  /** Parsed raw JSON (protojson: camelCase, int64 as strings, enum names). */
  json: Record<string, unknown>;
  receivedAt: number;
}

export interface WebhookSink {
  url: string;
  port: number;
  received: ReceivedWebhook[];
  /** Requests that failed verification (answered 401). */
  rejected: Array<{ error: string; rawBody: string; auth: string | undefined }>;
  setCredentials(apiKey: string, apiSecret: string): void;
  /** Calls `listener` for every verified webhook from now on; returns the unsubscribe function. */
  onReceive(listener: (w: ReceivedWebhook) => void): () => void;
  waitFor(pred: (w: ReceivedWebhook) => boolean, timeoutMs?: number): Promise<ReceivedWebhook>;
  close(): Promise<void>;
}

export async function startWebhookSink(path = '/livekit-webhook'): Promise<WebhookSink> {
  let receiver: WebhookReceiver | undefined;
  const received: ReceivedWebhook[] = [];
  const rejected: WebhookSink['rejected'] = [];
  const waiters = new Set<{ pred: (w: ReceivedWebhook) => boolean; resolve: (w: ReceivedWebhook) => void }>();
  const listeners = new Set<(w: ReceivedWebhook) => void>();

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const auth = req.headers.authorization;
      void (async () => {
        try {
          if (!receiver) throw new Error('sink has no credentials yet');
          const event = await receiver.receive(rawBody, auth);
          const w: ReceivedWebhook = { event, rawBody, json: JSON.parse(rawBody) as Record<string, unknown>, receivedAt: Date.now() };
          received.push(w);
          res.writeHead(200).end();
          for (const l of listeners) l(w);
          for (const x of waiters) {
            if (x.pred(w)) {
              waiters.delete(x);
              x.resolve(w);
            }
          }
        } catch (err) {
          rejected.push({ error: String(err), rawBody, auth });
          res.writeHead(401).end();
        }
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}${path}`,
    port,
    received,
    rejected,
    setCredentials(apiKey, apiSecret) {
      receiver = new WebhookReceiver(apiKey, apiSecret);
    },
    onReceive(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    waitFor(pred, timeoutMs = 30_000) {
      const seen = received.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = {
          pred,
          resolve: (x: ReceivedWebhook) => {
            clearTimeout(t);
            resolve(x);
          },
        };
        const t = setTimeout(() => {
          waiters.delete(w);
          reject(
            new Error(
              `no matching webhook within ${timeoutMs} ms; got: ${received.map((r) => `${r.event.event}:${r.event.participant?.identity ?? ''}`).join(', ')}` +
                (rejected.length ? `; rejected: ${rejected.map((r) => r.error).join('; ')}` : ''),
            ),
          );
        }, timeoutMs);
        waiters.add(w);
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
