/** `lastwill homeserver`: builds the homeserver, starts its scheduler and listens on `bind`. */
import type { Logger } from 'pino';

import { type HomeserverConfig, splitHostPort } from '../config/homeserver.js';
import type { RunningService } from '../lib/service.js';
import { buildHomeserver } from './app.js';

export async function startHomeserver(config: HomeserverConfig, log: Logger): Promise<RunningService> {
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
