// A real Synapse (pinned by scripts/provision-synapse.sh, venv in .cache/synapse-venv) with
// MSC4140 delayed events enabled, on free 127.0.0.1 ports, all state in a temp dir: the client API
// on a plain listener, federation (with OpenID userinfo) on a TLS listener of its own.
//
//   const py = await ensureSynapse();                  // {path} or {skip}; throws when CI=true
//   const hs = await startSynapse();                   // hs.baseUrl, hs.serverName ('localhost:<fed port>')
//   await startSynapse({ extraConfig: SYNAPSE_MSC4354 }); // with MSC4354 sticky events as well
//   const u = await hs.registerUser('alice');          // shared-secret admin API (HMAC-SHA1 mac)
//   await hs.restart();  await hs.stop();  hs.kill();  hs.logs();
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { registerWithSharedSecret, type RegisteredUser } from '../../../scripts/lib/matrix-http.js';
import { type Provisioned } from '../../support/provision.js';
import { makeSelfSignedCert } from '../../support/tls.js';
import {
  execFileText,
  freeTcpPort,
  PrerequisiteMissing,
  runProvisionScript,
  skipOrThrow,
  spawnManaged,
  waitFor,
  type ManagedProcess,
} from './proc.js';

export const SYNAPSE_VERSION = '1.157.1';

let ensured: Promise<Provisioned> | undefined;

/** Python of the Synapse venv, provisioning it (pip, ~40 s cold) when missing. SYNAPSE_PYTHON overrides. */
export function ensureSynapse(): Promise<Provisioned> {
  ensured ??= (async (): Promise<Provisioned> => {
    const override = process.env.SYNAPSE_PYTHON;
    if (override) {
      if (existsSync(override)) return { path: override };
      return { skip: skipOrThrow(`SYNAPSE_PYTHON=${override} does not exist`) };
    }
    const py = await runProvisionScript('synapse', { env: { SYNAPSE_VERSION } });
    return py.path ? { path: py.path } : { skip: skipOrThrow(`Synapse unavailable: ${py.error}`) };
  })();
  return ensured;
}

export interface SynapseServer {
  /** The client listener (plain http): client API only, as with separate listeners or workers. */
  baseUrl: string;
  /** `localhost:<federation port>`: resolved the federation way, it leads to the TLS listener. */
  serverName: string;
  port: number;
  /** `https://localhost:<port>`: the federation listener (federation API with OpenID userinfo). */
  federationUrl: string;
  federationPort: number;
  /** The federation listener's self-signed certificate (PEM), for NODE_EXTRA_CA_CERTS. */
  caFile: string;
  dir: string;
  configFile: string;
  registrationSharedSecret: string;
  version: string;
  registerUser(name: string, opts?: { admin?: boolean; password?: string }): Promise<RegisteredUser>;
  logs(): string;
  /** SIGTERM (SIGKILL after 10 s) and remove the temp dir. */
  stop(): Promise<void>;
  /** SIGKILL and remove the temp dir. */
  kill(): Promise<void>;
  /** Stop and start again on the same port with the same database. */
  restart(): Promise<void>;
  /** SIGKILL, keeping the directory: `launch()` starts it again (the soak's crash). */
  crash(): Promise<void>;
  launch(): Promise<void>;
}

export interface StartSynapseOptions {
  /**
   * Extra top-level config keys merged over the generated config; `experimental_features` is
   * merged key by key, so switching on another experiment keeps MSC4140's per-user limit.
   */
  extraConfig?: Record<string, unknown>;
  readyTimeoutMs?: number;
}

/**
 * MSC4354 sticky events (Synapse's unstable forms), off by default in Synapse. Needs SQLite ≥ 3.40
 * in Synapse's Python, which refuses to start otherwise.
 */
export const SYNAPSE_MSC4354: Record<string, unknown> = { experimental_features: { msc4354_enabled: true } };

const fast = { per_second: 10000, burst_count: 10000 };

export async function startSynapse(opts: StartSynapseOptions = {}): Promise<SynapseServer> {
  const py = await ensureSynapse();
  if (!py.path) throw new PrerequisiteMissing(py.skip);
  const python = py.path;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lastwill-synapse-'));
  const port = await freeTcpPort();
  const federationPort = await freeTcpPort();
  // The layout of a real deployment (and of lk-jwt-service's own integration tests): federation,
  // with OpenID userinfo, on its own TLS listener, named by the server name's explicit port; the
  // client API on another listener that only an operator override points at.
  const serverName = `localhost:${federationPort}`;
  const cert = makeSelfSignedCert(dir);
  const secret = randomBytes(16).toString('hex');
  const configFile = path.join(dir, 'homeserver.yaml');
  const signingKey = path.join(dir, 'signing.key');
  // Synapse signing key file format: "ed25519 <key id> <unpadded base64 of the 32-byte seed>"
  writeFileSync(signingKey, `ed25519 a_test ${randomBytes(32).toString('base64').replace(/=+$/, '')}\n`);
  const config = {
    server_name: serverName,
    report_stats: false,
    pid_file: path.join(dir, 'homeserver.pid'),
    signing_key_path: signingKey,
    media_store_path: path.join(dir, 'media_store'),
    database: { name: 'sqlite3', args: { database: path.join(dir, 'homeserver.db') } },
    listeners: [
      { port, bind_addresses: ['127.0.0.1'], type: 'http', tls: false, x_forwarded: false, resources: [{ names: ['client'], compress: false }] },
      {
        port: federationPort,
        bind_addresses: ['127.0.0.1'],
        type: 'http',
        tls: true,
        resources: [{ names: ['federation'], compress: false }],
      },
    ],
    tls_certificate_path: cert.certFile,
    tls_private_key_path: cert.keyFile,
    // No outbound traffic: no key servers, no stats; the federation listener is on loopback only.
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    enable_metrics: false,
    url_preview_enabled: false,
    registration_shared_secret: secret,
    enable_registration: true,
    enable_registration_without_verification: true,
    // MSC4140: enabled iff max_event_delay_duration is set and the per-user limit (in
    // experimental_features, below) is > 0
    max_event_delay_duration: '24h',
    rc_message: fast,
    rc_delayed_event_mgmt: fast,
    rc_registration: fast,
    rc_registration_token_validity: fast,
    rc_joins: { local: fast, remote: fast },
    rc_joins_per_room: fast,
    rc_invites: { per_room: fast, per_user: fast, per_issuer: fast },
    rc_login: { address: fast, account: fast, failed_attempts: fast },
    rc_admin_redaction: fast,
    rc_3pid_validation: fast,
    ...opts.extraConfig,
    experimental_features: {
      msc4140_max_delayed_events_per_user: 100,
      ...(opts.extraConfig?.experimental_features as Record<string, unknown> | undefined),
    },
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2)); // JSON is YAML
  const logFile = path.join(dir, 'synapse.log');
  const baseUrl = `http://127.0.0.1:${port}`;
  let proc: ManagedProcess | undefined;
  let logHistory = '';

  const versionR = await execFileText(python, ['-c', 'import importlib.metadata as m; print(m.version("matrix-synapse"))']);
  const version = versionR.stdout.trim();

  async function launch(): Promise<void> {
    const p = spawnManaged(python, ['-m', 'synapse.app.homeserver', '-c', configFile], {
      cwd: dir,
      logFile,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONUNBUFFERED: '1', SYNAPSE_ASYNC_IO_REACTOR: process.env.SYNAPSE_ASYNC_IO_REACTOR ?? '0' },
    });
    proc = p;
    await waitFor(
      'Synapse /health',
      async () => (await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(1000) })).ok,
      {
        timeoutMs: opts.readyTimeoutMs ?? 60_000,
        intervalMs: 200,
        abort: () => (p.hasExited() ? `synapse exited early:\n${p.logs().slice(-4000)}` : undefined),
      },
    );
  }
  async function halt(how: 'stop' | 'kill'): Promise<void> {
    if (!proc) return;
    const p = proc;
    proc = undefined;
    if (how === 'stop') await p.stop(10_000);
    else await p.kill();
    logHistory += p.logs();
  }

  try {
    await launch();
  } catch (err) {
    await halt('kill');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  let gone = false;
  const finish = async (how: 'stop' | 'kill') => {
    if (gone) return;
    gone = true;
    await halt(how);
    if (process.env.LASTWILL_E2E_KEEP !== '1') rmSync(dir, { recursive: true, force: true });
  };

  return {
    baseUrl,
    serverName,
    port,
    federationUrl: `https://localhost:${federationPort}`,
    federationPort,
    caFile: cert.certFile,
    dir,
    configFile,
    registrationSharedSecret: secret,
    version,
    registerUser: (name, o = {}) => registerWithSharedSecret(baseUrl, secret, name, o),
    logs: () => logHistory + (proc?.logs() ?? ''),
    stop: () => finish('stop'),
    kill: () => finish('kill'),
    async restart() {
      if (gone) throw new Error('synapse already stopped');
      await halt('stop');
      await launch();
    },
    async crash() {
      if (gone) throw new Error('synapse already stopped');
      await halt('kill');
    },
    launch,
  };
}
