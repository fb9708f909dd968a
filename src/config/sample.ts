/**
 * Renders the sample YAML files and the Markdown reference from the declared settings, so neither
 * can drift from the schema (a test compares the committed files with this output).
 */
import { stringify } from 'yaml';

import { type Group, type Node, type SettingInfo, settingsOf } from './define.js';

function yamlValue(value: unknown): string {
  const text = stringify(value, { lineWidth: 0 }).trimEnd();
  return text.includes('\n') ? `\n${text.replace(/^/gm, '  ')}` : ` ${text}`;
}

function comment(text: string, indent: string): string {
  return text
    .split('\n')
    .map((line) => `${indent}# ${line}`.trimEnd())
    .join('\n');
}

/** A commented YAML file with every setting: defaults written out, required ones shown as examples. */
export function renderSampleYaml(root: Group, title: string): string {
  const infos = new Map(settingsOf(root).map((info) => [info.path.join('.'), info]));
  const out: string[] = [comment(title, ''), ''];
  const walk = (node: Node, path: string[]): void => {
    const indent = '  '.repeat(Math.max(0, path.length - 1));
    const key = path[path.length - 1];
    if (node.kind === 'group') {
      if (key !== undefined) {
        if (node.doc) out.push(comment(node.doc, indent));
        out.push(`${indent}${key}:`);
      }
      for (const [k, child] of Object.entries(node.children)) walk(child, [...path, k]);
      if (path.length <= 1) out.push('');
      return;
    }
    const info = infos.get(path.join('.'))!;
    out.push(comment(`${node.doc}\nEnvironment: ${envNames(info).join(', ')}`, indent));
    if (node.secret) {
      out.push(`${indent}# ${key}: <secret>`);
    } else if (info.hasDefault) {
      out.push(`${indent}${key}:${yamlValue(info.defaultValue)}`);
    } else if (node.example !== undefined) {
      out.push(`${indent}# ${key}:${yamlValue(node.example).replace(/\n/g, `\n${indent}# `)}`);
    } else {
      out.push(`${indent}# ${key}: (unset)`);
    }
  };
  walk(root, []);
  return `${out.join('\n').replace(/\n{3,}/g, '\n\n').trimEnd()}\n`;
}

function envNames(info: SettingInfo): string[] {
  return [
    info.envName,
    ...(info.setting.aliases ?? []).map((a) => a.name + (a.deprecated ? ' (deprecated)' : '')),
  ];
}

/** A Markdown table per component: key, environment names, default, meaning. */
export function renderMarkdown(sections: Array<{ title: string; root: Group }>): string {
  const out = [
    '# Configuration reference',
    '',
    'Generated from the config schema (`npm run gen:config`); do not edit by hand.',
    '',
    'Precedence, highest first: the environment variables named below (the `LASTWILL_` name, then the ' +
      'others in their order), the YAML file (`--config`), a `LASTWILL_DEFAULT_` variable (the `LASTWILL_` ' +
      'name with `DEFAULT_` after `LASTWILL_`, e.g. `LASTWILL_DEFAULT_AGENT_BIND`: a default that the file ' +
      'and every other variable override; the container image sets its listen addresses and data ' +
      'directories this way), the default shown.',
    '',
  ];
  for (const { title, root } of sections) {
    out.push(`## ${title}`, '', '| key | environment | default | meaning |', '| --- | --- | --- | --- |');
    for (const info of settingsOf(root)) {
      const envs = envNames(info);
      const def = info.setting.secret
        ? '(secret)'
        : info.hasDefault
          ? `\`${JSON.stringify(info.defaultValue)}\``
          : '(unset)';
      const doc = info.setting.doc.replace(/\n/g, ' ').replace(/\|/g, '\\|');
      out.push(`| \`${info.path.join('.')}\` | ${envs.map((e) => `\`${e}\``).join('<br>')} | ${def} | ${doc} |`);
    }
    out.push('');
  }
  return out.join('\n');
}
