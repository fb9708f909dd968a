/**
 * The one module that talks to Redis: connections from `LIVEKIT_REDIS_URL` (redis://, rediss://,
 * unix://, with a password in the URL or given apart), Lua scripts run by their SHA (loaded again
 * after a Redis restart flushed the script cache), and the latency and error of every call for
 * the metrics. Everything cluster mode keeps in Redis goes through here.
 */
import { createHash } from 'node:crypto';

import { createClient, type RedisClientOptions, type RedisClientType } from '@redis/client';
import type { Logger } from 'pino';

export { redisClientOptions } from './redis-url.js';

export interface RedisObserver {
  call?(command: string, ms: number, ok: boolean): void;
}

/** A Lua script and its SHA1, run by EVALSHA with a fallback to EVAL. */
export class Script {
  readonly sha: string;
  constructor(readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }
}

export class Redis {
  /** Commands and scripts; shared by everything that does not block. */
  readonly client: RedisClientType;
  private readonly blocking: RedisClientType;
  private readonly subscriber: RedisClientType;
  private connected = false;

  constructor(
    private readonly options: RedisClientOptions,
    private readonly log: Logger,
    private readonly observer: RedisObserver = {},
  ) {
    // Commands fail at once while disconnected, instead of queueing up behind an outage: the
    // callers retry on their own schedules, and a webhook or delegation gets a 503 to retry.
    this.client = createClient({ ...options, disableOfflineQueue: true }) as RedisClientType;
    this.blocking = this.client.duplicate();
    this.subscriber = this.client.duplicate();
    for (const [name, c] of [['commands', this.client], ['blocking', this.blocking], ['subscriber', this.subscriber]] as const) {
      // Without a listener an error event would crash the process; reconnecting is automatic.
      c.on('error', (err: Error) => this.log.debug({ connection: name, err: err.message }, 'redis connection error'));
    }
  }

  async connect(): Promise<void> {
    await Promise.all([this.client.connect(), this.blocking.connect(), this.subscriber.connect()]);
    this.connected = true;
  }

  /** True while the command connection is up. */
  get ready(): boolean {
    return this.connected && this.client.isReady;
  }

  async call<T = unknown>(args: ReadonlyArray<string | Buffer>): Promise<T> {
    return this.timed(String(args[0]), () => this.client.sendCommand<T>(args));
  }

  /** Runs a script; loads it again when Redis lost its script cache (a restart). */
  async run<T = unknown>(script: Script, keys: readonly string[], args: ReadonlyArray<string | number>): Promise<T> {
    const tail = [String(keys.length), ...keys, ...args.map(String)];
    return this.timed('EVALSHA', async () => {
      try {
        return await this.client.sendCommand<T>(['EVALSHA', script.sha, ...tail]);
      } catch (err) {
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return this.client.sendCommand<T>(['EVAL', script.lua, ...tail]);
      }
    });
  }

  /** A blocking read (XREAD BLOCK) on its own connection, so it never holds up other commands. */
  async blockingCall<T = unknown>(args: ReadonlyArray<string>): Promise<T> {
    return this.timed(args[0]!, () => this.blocking.sendCommand<T>(args));
  }

  async subscribe(channel: string, listener: (message: string) => void): Promise<void> {
    await this.subscriber.subscribe(channel, (message) => listener(String(message)));
  }

  async close(): Promise<void> {
    this.connected = false;
    await Promise.all(
      [this.client, this.blocking, this.subscriber].map((c) => (c.isOpen ? c.close().catch(() => c.destroy()) : undefined)),
    );
  }

  private async timed<T>(command: string, call: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const result = await call();
      this.observer.call?.(command, performance.now() - started, true);
      return result;
    } catch (err) {
      this.observer.call?.(command, performance.now() - started, false);
      throw err;
    }
  }
}
