// `npm start`: the whole local stack on embedded defaults, in one terminal.
//
//   homeserver + agent  `lastwill all` (node dist/cli.js all) as a child process, configured as
//                       usual (environment, `--config FILE`)
//   LiveKit             v1.13.5 in development mode, the binary the e2e tests use
//                       (scripts/provision-livekit.sh builds it into .cache/ on the first start,
//                       its progress shown), with its webhooks pointed at the agent and the agent's
//                       own key and secret; in a private network namespace when run as root (WebRTC
//                       between processes of one machine needs it: docs/testing.md), on plain
//                       loopback otherwise. Not started when the agent's LiveKit URL is configured
//                       (LIVEKIT_URL, LASTWILL_AGENT_LIVEKIT_URL or the file): that SFU is used.
//
// When everything answers, it writes .data/stack.json (addresses, the homeserver's registration
// secret, LiveKit's namespace) for `npm run participant`, prints what to do next and `[stack] ready`.
// SIGTERM, SIGINT or SIGHUP stops everything (`lastwill all` drains, LiveKit, its namespace and
// forwarders, the state file) and exits 0; stopping is bounded (at most about 35 s), so a repeated
// signal (npm and tsx both pass a Ctrl-C on) changes nothing. If LiveKit or `lastwill all` dies,
// the stack stops the rest and exits 1.
//
//   npm start [-- --config FILE] [--livekit-port 7880] [--state .data/stack.json]
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { allEnvHook } from '../src/config/agent-env.js';
import { localUrl } from '../src/config/common.js';
import { allSettings, ConfigError } from '../src/config/index.js';
import { resolveConfig } from '../src/config/load.js';
import { type LiveKitServer, provisionLiveKit, startLiveKit } from './lib/livekit.js';
import { netnsUnavailableReason } from './lib/netns.js';
import { cleanupStack, type ExitInfo, nodeForChildren, REPO_ROOT, spawnManaged, waitFor } from './lib/proc.js';
import { DEFAULT_STATE_FILE, type StackState, writeStackState } from './lib/stack-state.js';

const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');
/** `lastwill all` drains on SIGTERM; this is how long it may take before it is killed. */
const DRAIN_MS = 30_000;

const USAGE = `Usage: npm start [-- [--config FILE] [--livekit-port PORT] [--state FILE]]

Starts the bundled homeserver and the agent (\`lastwill all\`) and a LiveKit server in development
mode, wired to each other, and keeps them until SIGTERM or Ctrl-C.

  --config FILE        lastwill's configuration (homeserver: and agent: sections), as for \`lastwill all\`
  --livekit-port PORT  LiveKit's HTTP/WebSocket port on 127.0.0.1 (default 7880); with LIVEKIT_URL
                       set, no LiveKit is started
  --state FILE         where to write the stack's addresses for \`npm run participant\`
                       (default ${DEFAULT_STATE_FILE})`;

const say = (line: string) => process.stdout.write(`[stack] ${line}\n`);
const complain = (line: string) => process.stderr.write(`[stack] ${line}\n`);

function describeExit(e: ExitInfo): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      'livekit-port': { type: 'string' },
      state: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const livekitPort = Number(values['livekit-port'] ?? 7880);
  if (!Number.isInteger(livekitPort) || livekitPort < 1 || livekitPort > 65535) {
    complain(`--livekit-port must be a port number (got ${values['livekit-port']})\n\n${USAGE}`);
    return 2;
  }
  const stateFile = path.resolve(values.state ?? DEFAULT_STATE_FILE);
  if (!existsSync(CLI)) {
    complain(`${CLI} is missing: run \`npm run build\` first (\`npm start\` does)`);
    return 1;
  }

  // The same configuration `lastwill all` will load, to learn its addresses and LiveKit credentials.
  const env = process.env;
  let resolved;
  try {
    resolved = resolveConfig(allSettings, { file: values.config, env, envHook: allEnvHook });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    complain(`lastwill: ${err.message}`);
    return 78; // EX_CONFIG, as `lastwill` itself
  }
  const { homeserver: hs, agent } = resolved.config;
  const hsUrl = localUrl(hs.bind);
  const agentUrl = localUrl(agent.bind);

  // Stopping: the first signal ends whatever step is under way; everything started is undone below.
  const abort = new AbortController();
  const stopRequested = new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      process.on(sig, () => {
        if (abort.signal.aborted) return;
        say(`${sig}: stopping everything`);
        abort.abort();
        resolve(sig);
      });
    }
  });
  const started = cleanupStack('[stack]');
  try {
    const childEnv: NodeJS.ProcessEnv = { ...env };
    // Users of the local stack register with the shared secret (Synapse's admin API), never openly.
    let registrationSharedSecret = hs.registration_shared_secret;
    if (registrationSharedSecret === undefined) {
      registrationSharedSecret = randomBytes(24).toString('base64url');
      childEnv.LASTWILL_HS_REGISTRATION_SHARED_SECRET = registrationSharedSecret;
    }

    let livekit: LiveKitServer | undefined;
    const livekitSource = resolved.sources.get('agent.livekit.url');
    if (livekitSource) {
      say(`LiveKit: ${agent.livekit.url} (${livekitSource}), not started here`);
    } else {
      say(
        env.LIVEKIT_SERVER_BIN
          ? `LiveKit: the binary LIVEKIT_SERVER_BIN names (${env.LIVEKIT_SERVER_BIN})`
          : 'LiveKit: provisioning the server binary (scripts/provision-livekit.sh; the first start builds it with Go, which takes minutes)',
      );
      const bin = await provisionLiveKit(abort.signal);
      if (abort.signal.aborted) return 0;
      if (!bin.path) {
        complain(`cannot provision LiveKit: ${bin.error}`);
        complain(
          'Install Go >= 1.26, or set LIVEKIT_SERVER_BIN to a livekit-server binary, or LIVEKIT_URL (with ' +
            'LIVEKIT_KEY and LIVEKIT_SECRET) to a LiveKit server you run; `node dist/cli.js all` runs the ' +
            'homeserver and the agent alone.',
        );
        return 1;
      }
      const noNetns = netnsUnavailableReason();
      if (noNetns) {
        say(
          `LiveKit: no private network namespace (${noNetns}), so it runs on plain loopback. WebRTC clients on ` +
            'this machine may fail to connect media there (libwebrtc gathers no candidate on a loopback ' +
            'interface); token requests, webhooks and room lookups work. Run `npm start` as root for the namespace.',
        );
      }
      livekit = await startLiveKit({
        bin: bin.path,
        port: livekitPort,
        apiKey: agent.livekit.key,
        apiSecret: agent.livekit.secret,
        webhookUrls: [`${agentUrl}/sfu_webhook`],
        netns: noNetns === undefined,
        development: true,
      });
      const lk = livekit;
      started.push(() => lk.stop());
      childEnv.LIVEKIT_URL = lk.url;
      say(`LiveKit: ${lk.url} (pid ${lk.pid}${lk.netns ? ', in a private network namespace' : ''}), log ${lk.logFile}`);
      if (abort.signal.aborted) return 0;
    }
    let livekitDied: ExitInfo | undefined;
    void livekit?.exited.then((e) => {
      livekitDied = e;
    });

    const args = [CLI, 'all', ...(values.config ? ['--config', values.config] : [])];
    const all = spawnManaged(nodeForChildren(), args, { env: childEnv, stdio: ['ignore', 'inherit', 'inherit'] });
    started.push(async () => {
      const e = await all.stop(DRAIN_MS);
      // 143/130: drained after our SIGTERM (or the terminal's SIGINT, which reaches it too).
      if (e.code !== 143 && e.code !== 130 && e.code !== 0) {
        complain(`lastwill all ended with ${describeExit(e)} while stopping`);
      }
    });
    const answers = async (url: string) => (await fetch(url, { signal: AbortSignal.timeout(2000) })).ok;
    await waitFor(
      'the homeserver and the agent to answer',
      async () => (await answers(`${hsUrl}/_matrix/client/versions`)) && (await answers(`${agentUrl}/readyz`)),
      {
        timeoutMs: 60_000,
        intervalMs: 200,
        abort: () =>
          abort.signal.aborted
            ? 'stopping'
            : all.hasExited()
              ? 'lastwill all exited (its output is above)'
              : livekitDied
                ? `LiveKit exited (${describeExit(livekitDied)})`
                : undefined,
      },
    );

    const state: StackState = {
      pid: process.pid,
      homeserver: {
        url: hsUrl,
        serverName: hs.server_name,
        registrationSharedSecret,
        ...(hs.metrics_bind ? { metricsUrl: `${localUrl(hs.metrics_bind)}/metrics` } : {}),
      },
      agent: { url: agentUrl, metricsUrl: `${agentUrl}/metrics` },
      livekit: livekit
        ? {
            url: livekit.url,
            started: true,
            pid: livekit.pid,
            ...(livekit.netns ? { netnsHolderPid: livekit.netns.holderPid } : {}),
            logFile: livekit.logFile,
          }
        : { url: agent.livekit.url, started: false },
    };
    writeStackState(stateFile, state);
    started.push(() => rmSync(stateFile, { force: true }));
    process.stdout.write(nextSteps(state, stateFile, values.state !== undefined));
    say('ready');

    const outcome = await Promise.race([
      stopRequested.then(() => ({ what: 'signal' as const })),
      all.exited.then((e) => ({ what: 'lastwill all' as const, e })),
      ...(livekit ? [livekit.exited.then((e) => ({ what: 'LiveKit' as const, e }))] : []),
    ]);
    if (outcome.what === 'signal') return 0;
    complain(`${outcome.what} exited unexpectedly (${describeExit(outcome.e)}): stopping the rest`);
    if (outcome.what === 'LiveKit' && livekit) complain(`last lines of its log:\n${livekit.logs().slice(-3000)}`);
    return 1;
  } catch (err) {
    if (abort.signal.aborted) return 0;
    complain(`failed to start: ${(err as Error).message}`);
    return 1;
  } finally {
    await started.close();
  }
}

/** What to do next: the addresses, how to join a participant, where the metrics are. */
function nextSteps(state: StackState, stateFile: string, customState: boolean): string {
  const { homeserver: hs, agent, livekit } = state;
  const participant = `npm run participant${customState ? ` -- --state ${stateFile}` : ''}`;
  const asRoot = livekit.netnsHolderPid ? ' (as root: it joins LiveKit\'s network namespace)' : '';
  const livekitWhere = !livekit.started
    ? 'configured, not started here'
    : livekit.netnsHolderPid
      ? `development mode, in a private network namespace; log ${livekit.logFile}`
      : `development mode, plain loopback; log ${livekit.logFile}`;
  return `
lastwill local stack
  homeserver  ${hs.url}   server name ${hs.serverName}; users register with the shared secret in ${stateFile}
  agent       ${agent.url}   lk-jwt-service's API; LiveKit's webhooks arrive at ${agent.url}/sfu_webhook
  LiveKit     ${livekit.url}   ${livekitWhere}

Next
  join a participant${asRoot}, in another terminal:
    ${participant}
  It registers a user, makes a room, joins its MatrixRTC call with a delegated hangup (the delay_id
  handed to the agent with the token request, as Element Call does) and connects to LiveKit; then
  type leave, crash, freeze, thaw or quit. A second one joins the same room with
    ${participant}${customState ? '' : ' --'} --room '<the room id the first one prints>'
  metrics     ${agent.metricsUrl} (agent)
              ${hs.metricsUrl ?? 'homeserver: off; LASTWILL_HS_METRICS_BIND=127.0.0.1:9008 npm start turns them on'}
    curl -s ${agent.metricsUrl} | grep -E 'lastwill_agent_(delegations|delayed_event_actions)_total'
  stop        Ctrl-C, or kill -TERM ${state.pid}: stops all of it

`;
}

process.exitCode = await main(process.argv.slice(2));
// Nothing is left running; timers of fetches still in flight must not hold the exit.
process.exit();
