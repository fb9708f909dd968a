/** `lastwill homeserver`: builds the homeserver, starts its scheduler and listens on `bind`. */
import type { Logger } from 'pino';

import { splitHostPort } from '../config/common.js';
import type { HomeserverConfig } from '../config/homeserver.js';
import { ConfigError } from '../config/load.js';
import type { RunningService } from '../lib/service.js';
import { buildHomeserver } from './app.js';

export async function startHomeserver(config: HomeserverConfig, log: Logger): Promise<RunningService> {
  if ((config.rtc.agent_url === undefined) !== (config.rtc.agent_secret === undefined)) {
    throw new ConfigError('rtc.agent_url and rtc.agent_secret must be set together (MSC4195 forwarding)');
  }
  const hs = buildHomeserver({ config, log });
  try {
    await hs.start();
    const { host, port } = splitHostPort(config.bind);
    const { url } = await hs.app.listen(host, port);
    hs.setBaseUrl(url);
    log.info({ url, server_name: config.server_name }, 'homeserver listening');
    return { url, close: () => hs.close() };
  } catch (err) {
    await hs.close();
    throw err;
  }
}
