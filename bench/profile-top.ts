/**
 * Prints the hottest functions of a V8 .cpuprofile (self time, and total time by function),
 * e.g. after `BENCH_CPU_PROF=/tmp/prof npm run bench -- --only disconnect`.
 *   npx tsx bench/profile-top.ts /tmp/prof/CPU...cpuprofile [count] [from-s] [to-s]
 * The optional window (seconds since the profile started) picks one phase of a run, such as
 * the restart phase of the throughput benchmark.
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

const [file, countArg, fromArg, toArg] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: profile-top.ts <file.cpuprofile> [count]\n');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const selfUs = new Map<number, number>();
const fromUs = Number(fromArg ?? 0) * 1e6;
const toUs = toArg === undefined ? Infinity : Number(toArg) * 1e6;
let atUs = 0;
prof.samples.forEach((id, i) => {
  const us = prof.timeDeltas[i] ?? 0;
  atUs += us;
  if (atUs >= fromUs && atUs < toUs) selfUs.set(id, (selfUs.get(id) ?? 0) + us);
});
const label = (n: Node) => {
  const url = n.callFrame.url.replace(/^.*\/(node_modules\/|dist\/|src\/)/, '$1');
  return `${n.callFrame.functionName || '(anonymous)'} ${url}:${n.callFrame.lineNumber + 1}`;
};
const self = new Map<string, number>();
const total = new Map<string, number>();
let all = 0;
for (const [id, us] of selfUs) {
  all += us;
  const n = byId.get(id)!;
  self.set(label(n), (self.get(label(n)) ?? 0) + us);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const l = label(byId.get(cur)!);
    if (seen.has(l)) continue;
    seen.add(l);
    total.set(l, (total.get(l) ?? 0) + us);
  }
}
const count = Number(countArg ?? 25);
const show = (title: string, m: Map<string, number>) => {
  process.stdout.write(`${title} (of ${(all / 1e6).toFixed(2)} s sampled)\n`);
  for (const [l, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, count)) {
    process.stdout.write(`${((100 * us) / all).toFixed(1).padStart(5)} %  ${l}\n`);
  }
};
show('self time', self);
show('total time', total);
