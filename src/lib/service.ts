/** What every long-running component returns once it listens. */
export interface RunningService {
  /** Base URL it listens on, e.g. http://127.0.0.1:8008. */
  readonly url: string;
  /** Graceful stop: no new requests, in-flight ones finish, stores are flushed and closed. */
  close(): Promise<void>;
}
