// What the image contributes, read from the Dockerfile itself so tests track it: the ENV, USER and
// ENTRYPOINT of its final stage (test/deploy/kubernetes.test.ts, test/config/image.test.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { REPO_ROOT } from '../e2e/support/proc.js';

export interface ImageStage {
  env: Record<string, string>;
  user: string;
  entrypoint: unknown;
}

/** ENV, USER and ENTRYPOINT of the Dockerfile's final stage. */
export function finalStage(): ImageStage {
  const text = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const lines = text.split('\n').map((l) => l.trim());
  const stage = lines.slice(lines.findLastIndex((l) => /^FROM\s/i.test(l)));
  const env: Record<string, string> = {};
  let user = 'root';
  let entrypoint: unknown;
  for (const line of stage) {
    const [instruction, ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    switch (instruction?.toUpperCase()) {
      case 'ENV':
        for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) {
          env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
        }
        break;
      case 'USER':
        user = args;
        break;
      case 'ENTRYPOINT':
        entrypoint = JSON.parse(args);
        break;
    }
  }
  return { env, user, entrypoint };
}
