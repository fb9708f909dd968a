// A real LiveKit server for the e2e tests: scripts/lib/livekit.ts with the tests' rules.
//
//   const bin = await ensureLiveKitBinary();            // {path} or {skip: reason}; throws when CI=true
//   const lk = await startLiveKit({ webhookUrls: ['http://127.0.0.1:PORT/hook'] });
//
// By default (when root + unshare/nsenter exist) the server runs in a private network namespace
// (scripts/lib/netns.ts). LASTWILL_E2E_NETNS=0 / {netns:false} runs it in the root namespace: fine
// for Twirp/webhook plumbing, but real participants cannot connect there (and are refused by
// startParticipant). LIVEKIT_LOG_LEVEL sets the server's log level, LASTWILL_E2E_KEEP=1 keeps its
// directory.
import { randomBytes } from 'node:crypto';

import {
  provisionLiveKit,
  startLiveKit as startServer,
  type LiveKitServer,
  type StartLiveKitOptions as ServerOptions,
} from '../../../scripts/lib/livekit.js';
import { netnsUnavailableReason } from '../../../scripts/lib/netns.js';
import { type Provisioned } from '../../support/provision.js';
import { PrerequisiteMissing, skipOrThrow } from './proc.js';

export type { LiveKitServer } from '../../../scripts/lib/livekit.js';

let ensured: Promise<Provisioned> | undefined;

/**
 * Path of the LiveKit server binary, provisioning it (go install, ~2 min cold) when missing.
 * Outside CI a missing Go toolchain gives {skip: reason}; with CI=true it throws.
 * LIVEKIT_SERVER_BIN overrides the binary (no version check).
 */
export function ensureLiveKitBinary(): Promise<Provisioned> {
  ensured ??= (async (): Promise<Provisioned> => {
    // Real participants need a private network namespace (see netns.ts): without one, ICE
    // cannot connect on loopback and the client would gather eth0 candidates.
    const nsWhy = process.env.LASTWILL_E2E_NETNS === '0' ? undefined : netnsUnavailableReason();
    if (nsWhy) return { skip: skipOrThrow(`LiveKit e2e needs a network namespace: ${nsWhy}`) };
    const bin = await provisionLiveKit();
    return bin.path ? { path: bin.path } : { skip: skipOrThrow(`LiveKit server unavailable: ${bin.error}`) };
  })();
  return ensured;
}

/** The server's options but its binary, which ensureLiveKitBinary() finds. */
export type StartLiveKitOptions = Partial<Omit<ServerOptions, 'bin'>>;

/** A server with the test defaults: key `devkey`, a random 48-character secret, info logs. */
export async function startLiveKit(opts: StartLiveKitOptions = {}): Promise<LiveKitServer> {
  const bin = await ensureLiveKitBinary();
  if (!bin.path) throw new PrerequisiteMissing(bin.skip);
  return startServer({
    ...opts,
    bin: bin.path,
    apiKey: opts.apiKey ?? 'devkey',
    apiSecret: opts.apiSecret ?? randomBytes(24).toString('hex'), // >= 32 chars, else LiveKit logs an error
    netns: opts.netns ?? process.env.LASTWILL_E2E_NETNS !== '0',
    logLevel: opts.logLevel ?? process.env.LIVEKIT_LOG_LEVEL ?? 'info',
    keepDir: opts.keepDir ?? process.env.LASTWILL_E2E_KEEP === '1',
  });
}
