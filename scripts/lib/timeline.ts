// A narrated record of a MatrixRTC call: what each party did, when, and how to redo it by hand.
// The demo renders it live, the tests print it, the participant tool (scripts/participant.ts)
// prints its own.
export type Actor = 'client' | 'agent' | 'livekit' | 'participant' | 'homeserver' | 'observer' | 'browser' | 'test';

export interface TimelineEntry {
  /** ms since the timeline started. */
  t: number;
  actor: Actor;
  text: string;
  /** Commands to do (or check) this step by hand. */
  commands: string[];
}

/** What each party did, when, and how to reproduce it; `vars` are the shell variables the commands use. */
export class Timeline {
  readonly t0 = Date.now();
  readonly entries: TimelineEntry[] = [];
  readonly vars = new Map<string, string>();
  private readonly listeners = new Set<(e: TimelineEntry) => void>();
  private readonly varListeners = new Set<(name: string, value: string) => void>();

  mark(actor: Actor, text: string, commands: string[] = []): TimelineEntry {
    const e = { t: Date.now() - this.t0, actor, text, commands };
    this.entries.push(e);
    for (const l of this.listeners) l(e);
    return e;
  }

  setVar(name: string, value: string): void {
    if (this.vars.get(name) === value) return;
    this.vars.set(name, value);
    for (const l of this.varListeners) l(name, value);
  }

  onEntry(l: (e: TimelineEntry) => void): void {
    this.listeners.add(l);
  }

  onVar(l: (name: string, value: string) => void): void {
    this.varListeners.add(l);
  }

  /** One line per entry, e.g. `  +12.345s agent       sent the hangup`. */
  render({ commands = false }: { commands?: boolean } = {}): string {
    return this.entries.map((e) => formatEntry(e, commands)).join('\n');
  }
}

export function formatEntry(e: TimelineEntry, withCommands: boolean): string {
  const head = `  +${(e.t / 1000).toFixed(3).padStart(8)}s  ${e.actor.padEnd(11)} ${e.text}`;
  if (!withCommands || e.commands.length === 0) return head;
  return [head, ...e.commands.map((c) => `              $ ${c}`)].join('\n');
}

/** A curl command line; `url` and header values may reference the timeline's shell variables. */
export function curl(method: string, url: string, opts: { token?: string; body?: unknown } = {}): string {
  const parts = ['curl -sS'];
  if (method !== 'GET') parts.push(`-X ${method}`);
  parts.push(`"${url}"`);
  if (opts.token) parts.push(`-H "Authorization: Bearer ${opts.token}"`);
  if (opts.body !== undefined) parts.push(`-H 'Content-Type: application/json' -d '${JSON.stringify(opts.body)}'`);
  return parts.join(' ');
}
