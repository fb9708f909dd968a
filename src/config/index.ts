/** The configuration of every command, composed from the component declarations. */
import { agentSettings } from './agent.js';
import { group } from './define.js';
import { homeserverSettings } from './homeserver.js';

export { agentSettings, type AgentConfig } from './agent.js';
export { homeserverSettings, type HomeserverConfig } from './homeserver.js';
export { ConfigError, loadConfig } from './load.js';

/** `lastwill all`: one file with a `homeserver:` and an `agent:` section. */
export const allSettings = group({ homeserver: homeserverSettings, agent: agentSettings });

/** The generated sample files: path in the repository, schema, title. */
export const SAMPLE_FILES = [
  {
    path: 'config/homeserver.example.yaml',
    root: homeserverSettings,
    title:
      'lastwill homeserver: the bundled MSC4140 delayed-events homeserver.\n' +
      'Generated from src/config/homeserver.ts by `npm run gen:config`. Every key can also be set by the\n' +
      'environment variable named above it, which wins over this file.',
  },
  {
    path: 'config/agent.example.yaml',
    root: agentSettings,
    title:
      'lastwill agent: the delegate agent beside the LiveKit SFU.\n' +
      'Generated from src/config/agent.ts by `npm run gen:config`. Every key can also be set by the\n' +
      'environment variable named above it (lk-jwt-service names work too), which wins over this file.',
  },
] as const;
