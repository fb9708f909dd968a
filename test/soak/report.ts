// docs/reliability.md from the stored soak reports (bench/soak-results/*.json). The findings
// section between the markers is written by hand and kept across renders.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import type { Cause } from './checker.js';
import { replayCommand, type SoakReport } from './run.js';

export const RESULTS_DIR = path.join(import.meta.dirname, '..', '..', 'bench', 'soak-results');
const DOC = path.join(import.meta.dirname, '..', '..', 'docs', 'reliability.md');
const FINDINGS_START = '<!-- findings: written by hand, kept by the renderer -->';
const FINDINGS_END = '<!-- /findings -->';

/** Says so when the workload ran past the duration to hand over `minChecked` memberships. */
function extended(r: SoakReport): string {
  if (r.workloadS === undefined || r.workloadS <= r.durationS) return '';
  return ` The workload ran ${r.workloadS} s, past the ${r.durationS} s, to hand over at least ${r.minChecked} memberships.`;
}

export function readReports(dir = RESULTS_DIR): SoakReport[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as SoakReport);
}

const ms = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? '–' : (v / 1000).toFixed(1));
const CAUSES: Cause[] = ['clean', 'crash', 'freeze', 'drain'];

function runSection(r: SoakReport): string {
  const c = r.counts;
  const faults = Object.entries(r.faults)
    .sort()
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  const v = r.violationCounts;
  const latency = CAUSES.map(
    (cause) =>
      `| ${cause} | ${r.latency[cause].count} | ${ms(r.latency[cause].p50)} | ${ms(r.latency[cause].p99)} | ${ms(r.latency[cause].max)} | ` +
      `${ms(r.afterLiveKit[cause].p50)} | ${ms(r.afterLiveKit[cause].p99)} | ${ms(r.afterLiveKit[cause].max)} |`,
  );
  return [
    `### ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC · ${r.mode} · ${r.homeserverLabel} · seed ${r.seed} · ${Math.round(r.durationS / 60)} min · ${r.size} participants`,
    '',
    `Machine: ${r.machine.cpus} × ${r.machine.cpuModel}, ${r.machine.memoryGiB} GiB, Node ${r.machine.node}, ${r.machine.platform}. ` +
      `Wall time ${Math.round(r.wallS / 60)} min.${extended(r)} Replay: \`${replayCommand({ ...r, faults: r.faultsEnabled })}\``,
    '',
    `- Workload: ${c.memberships} memberships (delegations) in ${r.rooms} rooms, ${c.participantsStarted} LiveKit sessions started; ` +
      `${c.clean} clean leaves, ${c.crash} crashes, ${c.freeze} freezes (${c.freezeSurvived} woke up in time), ${c.reconnect} reconnects, ` +
      `${c.rejoin} rejoins, ${c.reopen ?? 0} reopens, ${c.drain} left at the end; ${c.abandoned} never connected, ${c.workloadErrors} workload requests failed (during faults) and were retried` +
      (c.redelegations === undefined ? '.' : `; js-sdk scheduled ${c.redelegations} new delayed leaves mid-session, each handed over again.`),
    `- Faults (${r.faultSchedule.length}): ${faults || 'none'}. Webhook deliveries through the proxy: ${Object.entries(r.webhookProxy)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ')}.`,
    `- Checked: ${r.checked} ${c.redelegations ? 'records (a membership, or its new delayed leave)' : 'memberships'}. **Violations: ${r.violations.length}** (false hangups ${v.false_hangup}, late hangups ${v.late_hangup}, ` +
      `lost delegations ${v.lost_delegation}, double hangups ${v.double_hangup}, orphaned hangups ${v.orphaned_hangup ?? '–'}).`,
    '',
    '| cause | n | departure → end p50 (s) | p99 | max | LiveKit report → end p50 (s) | p99 | max |',
    '|---|---|---|---|---|---|---|---|',
    ...latency,
    ...(r.violations.length ? ['', '<details><summary>Violations</summary>', '', '```', ...r.replays, '```', '</details>'] : []),
    '',
  ].join('\n');
}

export function renderReliability(reports: SoakReport[], previous = existsSync(DOC) ? readFileSync(DOC, 'utf8') : ''): string {
  const start = previous.indexOf(FINDINGS_START);
  const end = previous.indexOf(FINDINGS_END);
  const findings = start >= 0 && end > start ? previous.slice(start + FINDINGS_START.length, end).trim() : '_None yet._';
  const latestFirst = [...reports].reverse();
  const summary = latestFirst.map(
    (r) =>
      `| ${r.startedAt.slice(0, 16).replace('T', ' ')} | ${r.mode} | ${r.homeserverLabel} | ${r.seed} | ${Math.round(r.durationS / 60)} min | ${r.size} | ${r.counts.memberships} | ` +
      `${r.faultSchedule.length} | ${r.checked} | ${r.violations.length} |`,
  );
  return `# Reliability: the soak

<!-- Rendered by scripts/soak.ts from bench/soak-results/*.json; edit the findings only. -->

lastwill promises two things to a call: everyone who is really gone gets the hangup, promptly, and
nobody still in the call ever does. The soak checks both the way such promises are checked
elsewhere (Jepsen, FoundationDB's simulation): the whole real system runs for a long time under a
seeded workload and a seeded schedule of faults, and a checker compares what happened with what must
hold.

\`\`\`
npm run soak -- --mode single|cluster --homeserver bundled|synapse --duration 30m --seed 7 --size 8 --faults all
\`\`\`

Options: \`--faults all|none|<kind>,<kind>\` (kinds below), \`--size\` participants at once (four per
room), \`--min-checked N\` to keep the workload (not the faults) going past the duration, for at most
the duration again, until N memberships were handed over (a slow machine gets through fewer),
\`--no-doc\` to leave this page alone. Each run stores its report in
\`bench/soak-results/\` and re-renders this page; a run with a violation exits 1 and prints, per
violation, the replay command, the faults around it and that membership's timeline. The test suite
runs a short one in each mode (\`test/soak/soak.test.ts\`, fixed seeds, at least 15 memberships)
that fails on any violation.

## What runs

- **The real stack**: a real LiveKit server (in a network namespace of its own), lastwill's
  homeserver (restartable, its SQLite on disk), and the agent: one process (single-node mode) or
  three replicas on a real Redis behind a round-robin balancer (cluster mode, 2 s lease).
- **Participants**: each is a user whose matrix-js-sdk client joins the MatrixRTC session with
  Element Call's delegated timing (a delayed leave an hour ahead, so the homeserver itself never
  hangs anyone up during a run), hands the \`delay_id\` to the agent (in \`/get_token\` as Element
  Call does, or by \`/delegate_delayed_leave\`, half each), and connects a real
  \`@livekit/rtc-node\` participant in a child process. Then, at seeded moments: a clean leave, a
  crash (SIGKILL), a freeze (SIGSTOP for 3–45 s, then SIGCONT: LiveKit drops it after about 20 s, or
  it wakes up in time and stays), a reconnect with the same identity (a new session replaces the
  old one), a leave and a rejoin with the same device once the hangup is seen (the same LiveKit
  identity, a new delegation), or a reopen: the app is killed and opened again on the same device at
  once, so its new membership and delegation replace the old ones long before LiveKit notices the
  dead session. Every other cycle uses a new device. At the end everyone leaves.
- **The app's Matrix client stops when its participant leaves**, so every membership end is the
  agent's doing; a client's own leave would hide a missed hangup.
- **A new delayed leave is handed over again.** While the app runs, js-sdk may schedule a new
  delayed leave: when a restart finds the old one gone, or when it joins again after the agent hung
  up a participant LiveKit had dropped and that then came back. As Element Call does, the app hands
  the new \`delay_id\` over the same way as the first. The checker counts it as a new record from
  then on; the old record is judged by what happened to it until then (no false, double or orphaned
  hangup).
- **Faults**, one at a time, at seeded moments from 15 s in until 40 s before the end:

  | kind | what | how long |
  |---|---|---|
  | agent-kill | kill -9 of the agent (or one replica), then start again | 0.5–10 s |
  | agent-pause | SIGSTOP of the agent (or one replica) past the lease, then SIGCONT | 3–12 s |
  | homeserver-kill | kill -9 of the homeserver, then start again on the same database | 1–10 s |
  | redis-restart | kill -9 of Redis (cluster mode), then start again from its append-only file | 0.5–5 s |
  | webhooks-drop / -delay / -duplicate / -reorder | the proxy between LiveKit and the agent loses, delays (1–10 s), doubles or holds and reverses webhooks | 5–30 s |
  | homeserver-cut | the agent's link to the homeserver resets connections or swallows requests | 3–30 s |
  | livekit-cut | the agent's link to LiveKit (RoomService) resets or swallows, and its webhooks are lost | 3–30 s |
  | homeserver-500 / -429 | the homeserver (as the agent sees it) answers 500, or 429 with \`retry_after_ms\` | 3–30 s |

  Links are cut with proxies on loopback in front of the agent's three connections rather than with
  firewall rules: every process but LiveKit shares the root namespace's loopback, where rules would
  cut the observers and the test's own clients too. From the agent's side a proxy that resets or
  swallows is what a partition looks like: connections that fail, or requests that hang until its
  timeouts.

## What is checked

Ground truth is LiveKit's own report (a second webhook receiver that no fault touches) and each
participant's own record (when it left, and how); what is judged is the room as another client sees
it through /sync, and the room's history.

1. **No false hangup**: a membership may end only when LiveKit no longer has its identity: a
   hangup while a session of that identity was present from before the agent's grace (1 s) until
   after the hangup, with 2 s either side for the report's own delivery, is a violation. The
   hangup's moment is the homeserver's timestamp of the event.
2. **No late hangup**: once LiveKit reports a participant's last session ended, its membership
   ends within the grace + 8 s; a fault active in that window adds its remaining duration and
   its catch-up allowance (a restart and recovery: 20 s; a homeserver outage of d: the retry backoff
   in effect, 0.75 d + 5 s; lost webhooks: the presence poll, 5 s here, + 5 s).
3. **No lost delegation**: everyone who left has their membership ended by the end of the run.
4. **No double hangup**: no membership has more than one hangup event in the room history.
5. **No orphaned hangup**: when the run ends (everyone gone), no delegated delayed leave is still
   scheduled on the homeserver. One that is would fire up to an hour later on the same state key
   and end whatever membership the device has by then (a reopened app's, for one).

Latency is reported two ways, by cause: from the participant's real departure (a crash includes
LiveKit's own detection, about 20 s, which no service next to the SFU can beat), and from LiveKit's
report of it.

## Runs

| started (UTC) | mode | homeserver | seed | duration | size | memberships | faults | checked | violations |
|---|---|---|---|---|---|---|---|---|---|
${summary.join('\n')}

${latestFirst.map(runSection).join('\n')}
## Findings

${FINDINGS_START}
${findings}
${FINDINGS_END}
`;
}
