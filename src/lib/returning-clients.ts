/**
 * Which keep-alive connections were answered a moment ago and have not asked again. A client that
 * waits for each answer before its next request (the agent, a load test, any SDK loop) is about
 * to come back on such a connection, so a commit that would fsync now can wait for it and share
 * the fsync (see `BatchWriter`'s `gather`). A connection counts until it sends its next request,
 * closes, or `windowMs` passes; a lone client never waits for itself, because its own connection
 * is busy with the request being committed.
 */
interface Answered {
  connection: Connection;
  generation: number;
  at: number;
}

/** The part of a socket this needs. */
export interface Connection {
  readonly destroyed: boolean;
}

export class ReturningClients {
  /** Requests seen per connection: an answer is stale once its connection has asked again. */
  private readonly generations = new WeakMap<Connection, number>();
  /** Answers in time order; the live ones are `answered[head…]`. */
  private answered: Answered[] = [];
  private head = 0;

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  requestStarted(connection: Connection): void {
    this.generations.set(connection, (this.generations.get(connection) ?? 0) + 1);
  }

  answeredOn(connection: Connection): void {
    const at = this.now();
    this.forgetBefore(at - this.windowMs);
    this.answered.push({ connection, generation: this.generations.get(connection) ?? 0, at });
  }

  /** Answers still held: those inside the window, give or take one compaction. */
  get held(): number {
    return this.answered.length - this.head;
  }

  /** Whether some connection answered within the window is still quiet and open. */
  anyExpected(): boolean {
    this.forgetBefore(this.now() - this.windowMs);
    for (let i = this.head; i < this.answered.length; i++) {
      const a = this.answered[i]!;
      if (!a.connection.destroyed && this.generations.get(a.connection) === a.generation) return true;
    }
    return false;
  }

  private forgetBefore(cutoff: number): void {
    const list = this.answered;
    while (this.head < list.length && list[this.head]!.at < cutoff) this.head++;
    // Compacted only now and then: shifting on every answer would cost more than the checks.
    if (this.head === list.length) {
      list.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > list.length) {
      this.answered = list.slice(this.head);
      this.head = 0;
    }
  }
}
