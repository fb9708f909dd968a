/** The files generated from the config schema; a test checks the committed copies match. */
import { agentSettings, homeserverSettings, SAMPLE_FILES } from './index.js';
import { renderMarkdown, renderSampleYaml } from './sample.js';

export function generatedFiles(): Array<{ path: string; text: string }> {
  return [
    ...SAMPLE_FILES.map((f) => ({ path: f.path, text: renderSampleYaml(f.root, f.title) })),
    {
      path: 'docs/configuration.md',
      text: renderMarkdown([
        { title: 'homeserver (`lastwill homeserver`)', root: homeserverSettings },
        { title: 'agent (`lastwill agent`)', root: agentSettings },
      ]),
    },
  ];
}
