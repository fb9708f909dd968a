/** Setting types and groups shared by the component schemas. */
import { z } from 'zod';

import { setting } from './define.js';

/** `host:port`, with `[v6]:port` for IPv6. */
export const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:8008')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

export function splitHostPort(value: string): { host: string; port: number } {
  const i = value.lastIndexOf(':');
  return { host: value.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(value.slice(i + 1)) };
}

/** The URL a local peer uses to reach a bind address (a wildcard bind is reached on loopback). */
export function localUrl(bind: string): string {
  const { host, port } = splitHostPort(bind);
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`;
}

/** A Matrix server name: hostname or IP literal, optional port. */
export const serverName = z
  .string()
  .regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9a-fA-F:.]+\](:\d{1,5})?$/, 'must be a Matrix server name');

/** The embedded SQLite store of a component: where it lives and how hard it syncs. */
export function storageSettings(defaultDir: string) {
  return {
    data_dir: setting(z.string().min(1).default(defaultDir), {
      doc: 'Directory of the SQLite database (created when missing).',
      env: 'string',
    }),
    sqlite_synchronous: setting(z.enum(['normal', 'full']).default('full'), {
      doc: 'SQLite synchronous mode. "full" survives power loss; "normal" survives process crashes only.',
      env: 'string',
    }),
  };
}
