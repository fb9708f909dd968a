// What a running local stack (`npm start`, scripts/stack.ts) tells the tools that join it
// (`npm run participant`): written when the stack is ready, removed when it stops. It holds the
// homeserver's registration secret, so only its owner may read it (mode 0600).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { z } from 'zod';

/** Where the stack writes it, relative to the working directory (beside the default data dirs). */
export const DEFAULT_STATE_FILE = '.data/stack.json';

const stackStateSchema = z.object({
  /** The stack's own process. */
  pid: z.number().int().positive(),
  homeserver: z.object({
    url: z.url(),
    serverName: z.string().min(1),
    /** Synapse-compatible shared-secret registration (POST /_synapse/admin/v1/register). */
    registrationSharedSecret: z.string().min(1),
    /** Its /metrics, when `metrics_bind` is set. */
    metricsUrl: z.url().optional(),
  }),
  agent: z.object({ url: z.url(), metricsUrl: z.url() }),
  livekit: z.object({
    url: z.string().min(1),
    /** false when the agent's LiveKit URL was configured and the stack started none. */
    started: z.boolean(),
    pid: z.number().int().positive().optional(),
    /** The process holding LiveKit's private network namespace (`nsenter -t <pid> -n`), if any. */
    netnsHolderPid: z.number().int().positive().optional(),
    logFile: z.string().optional(),
  }),
});

export type StackState = z.infer<typeof stackStateSchema>;

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
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not JSON (${(err as Error).message}): restart the stack with \`npm start\``);
  }
  const checked = stackStateSchema.safeParse(parsed);
  if (!checked.success) {
    const problems = checked.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ');
    throw new Error(`${file} is not a state file of \`npm start\` (${problems}): restart the stack`);
  }
  const state = checked.data;
  try {
    process.kill(state.pid, 0);
  } catch {
    throw new Error(`the local stack that wrote ${file} (pid ${state.pid}) is gone: start one with \`npm start\``);
  }
  return state;
}
