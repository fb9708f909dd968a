/** Settings of `lastwill agent`: the delegate agent beside the LiveKit SFU. */
import { group, type Infer } from './define.js';

// Placeholder: the agent's settings are declared here (owned by the agent work).
export const agentSettings = group({}, { envPrefix: 'LASTWILL_AGENT_' });

export type AgentConfig = Infer<typeof agentSettings>;
