/**
 * The metrics reference (docs/metrics.md), rendered from the registries themselves so it cannot
 * drift from the code: every family with its type, labels and help text.
 */
import type { Registry } from 'prom-client';

/** What prom-client keeps of a family besides the typed MetricObject fields. */
interface Family {
  name: string;
  help: string;
  type: string;
  labelNames?: readonly string[];
}

/** A Markdown table per component: metric, type, labels, meaning. */
export function renderMetricsMarkdown(sections: Array<{ title: string; intro: string; registry: Registry }>): string {
  const out = ['# Metrics reference', '', 'Generated from the metric registries (`npm run gen:config`); do not edit by hand.', ''];
  out.push(
    'No label ever carries a user id, room, identity, homeserver name or delay id. Histograms export',
    '`_bucket`, `_sum` and `_count` series.',
    '',
  );
  for (const { title, intro, registry } of sections) {
    out.push(`## ${title}`, '', intro, '', '| metric | type | labels | meaning |', '| --- | --- | --- | --- |');
    for (const family of registry.getMetricsAsArray() as unknown as Family[]) {
      const labels = (family.labelNames ?? []).map((l) => `\`${l}\``).join(', ');
      const help = family.help.replace(/\|/g, '\\|');
      out.push(`| \`${family.name}\` | ${family.type} | ${labels} | ${help} |`);
    }
    out.push('');
  }
  return out.join('\n');
}
