/**
 * A lean HTTP/1.1 keep-alive connection for the throughput benchmark: one request at a time,
 * requests written as prebuilt strings, responses read by status line and body framing only.
 * undici spends about 60 µs of CPU per request here, in the same single thread for all clients,
 * so eight clients answered together reached the server one after another, 0.5 ms apart: the
 * benchmark measured its own client. This costs about 25 µs, like wrk would, and reads bodies
 * framed by Content-Length (ours) or chunked (Synapse).
 */
import { connect, type Socket } from 'node:net';

export interface RawReply {
  status: number;
  body: string;
}

export class RawConnection {
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { resolve: (r: RawReply) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  private constructor(
    private readonly socket: Socket,
    private readonly host: string,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.parse();
    });
    const fail = (err: Error) => {
      this.failure ??= err;
      this.waiting?.reject(err);
      this.waiting = undefined;
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  static open(origin: string): Promise<RawConnection> {
    const url = new URL(origin);
    return new Promise((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname, () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket, url.host));
      });
      socket.once('error', reject);
    });
  }

  request(method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<RawReply> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiting) return Promise.reject(new Error('one request at a time'));
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${this.host}\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    if (body !== undefined) head += `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`;
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.socket.write(`${head}\r\n${body ?? ''}`);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private parse(): void {
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0 || !this.waiting) return;
    const head = this.buf.toString('latin1', 0, end);
    const status = Number(head.slice(9, 12));
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const body = length
      ? this.fixedBody(end + 4, Number(length[1]))
      : /\r\ntransfer-encoding:\s*chunked/i.test(head)
        ? this.chunkedBody(end + 4)
        : new Error(`response without a length: ${head.split('\r\n')[0]}`);
    if (body === undefined) return;
    const w = this.waiting;
    this.waiting = undefined;
    if (body instanceof Error) {
      this.socket.destroy();
      w.reject(body);
    } else w.resolve({ status, body });
  }

  /** The body when all of it is here (consumed from the buffer), else undefined. */
  private fixedBody(from: number, length: number): string | undefined {
    if (this.buf.length < from + length) return undefined;
    const body = this.buf.toString('utf8', from, from + length);
    this.buf = this.buf.subarray(from + length);
    return body;
  }

  /** Twisted (Synapse) streams JSON with chunked transfer encoding. */
  private chunkedBody(from: number): string | undefined {
    const parts: Buffer[] = [];
    let at = from;
    for (;;) {
      const lineEnd = this.buf.indexOf('\r\n', at);
      if (lineEnd < 0) return undefined;
      const size = parseInt(this.buf.toString('latin1', at, lineEnd), 16);
      if (this.buf.length < lineEnd + 2 + size + 2) return undefined;
      if (size === 0) {
        this.buf = this.buf.subarray(lineEnd + 4);
        return Buffer.concat(parts).toString('utf8');
      }
      parts.push(this.buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
  }
}
