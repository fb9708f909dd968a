// What a running local stack (`npm start`, scripts/stack.ts) tells the tools that join it
// (`npm run participant`): written when the stack is ready, removed when it stops. It holds the
// homeserver's registration secret, so only its owner may read it (mode 0600).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Where the stack writes it, relative to the working directory (beside the default data dirs). */
export const DEFAULT_STATE_FILE = '.data/stack.json';

export interface StackState {
  /** The stack's own process. */
  pid: number;
  homeserver: {
    url: string;
    serverName: string;
    /** Synapse-compatible shared-secret registration (POST /_synapse/admin/v1/register). */
    registrationSharedSecret: string;
    /** Its /metrics, when `metrics_bind` is set. */
    metricsUrl?: string;
  };
  agent: { url: string; metricsUrl: string };
  livekit: {
    url: string;
    /** false when the agent's LiveKit URL was configured and the stack started none. */
    started: boolean;
    pid?: number;
    /** The process holding LiveKit's private network namespace (`nsenter -t <pid> -n`), if any. */
    netnsHolderPid?: number;
    logFile?: string;
  };
}

export function writeStackState(file: string, state: StackState): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
}

/** The state of the running stack, or an error that says how to start one. */
export function readStackState(file: string): StackState {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new Error(`no local stack found (${file} is missing): start one with \`npm start\`, or name a homeserver`);
  }
  const state = JSON.parse(text) as StackState;
  try {
    process.kill(state.pid, 0);
  } catch {
    throw new Error(`the local stack that wrote ${file} (pid ${state.pid}) is gone: start one with \`npm start\``);
  }
  return state;
}
