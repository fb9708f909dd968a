/** `lastwill homeserver`: builds the homeserver, starts its scheduler and listens on `bind`. */
import type { Logger } from 'pino';

import { splitHostPort } from '../config/common.js';
import type { HomeserverConfig } from '../config/homeserver.js';
import { ConfigError } from '../config/load.js';
import type { HttpApp } from '../lib/http.js';
import type { RunningService } from '../lib/service.js';
import { buildHomeserver } from './app.js';
import { createMetricsApp } from './metrics.js';

export interface RunningHomeserver extends RunningService {
  /** Where the metrics listener serves /metrics; undefined unless `metrics_bind` is set. */
  readonly metricsUrl: string | undefined;
}

export async function startHomeserver(config: HomeserverConfig, log: Logger): Promise<RunningHomeserver> {
  if ((config.rtc.agent_url === undefined) !== (config.rtc.agent_secret === undefined)) {
    throw new ConfigError('rtc.agent_url and rtc.agent_secret must be set together (MSC4195 forwarding)');
  }
  const hs = buildHomeserver({ config, log });
  let metricsApp: HttpApp | undefined;
  const close = async () => {
    await metricsApp?.close();
    await hs.close();
  };
  try {
    await hs.start();
    const { host, port } = splitHostPort(config.bind);
    const { url } = await hs.app.listen(host, port);
    hs.setBaseUrl(url);
    log.info({ url, server_name: config.server_name }, 'homeserver listening');
    let metricsUrl: string | undefined;
    if (config.metrics_bind !== undefined) {
      metricsApp = createMetricsApp(hs.metrics, log);
      const bind = splitHostPort(config.metrics_bind);
      metricsUrl = `${(await metricsApp.listen(bind.host, bind.port)).url}/metrics`;
      log.info({ url: metricsUrl }, 'homeserver metrics listening');
    }
    return { url, metricsUrl, close };
  } catch (err) {
    await close();
    throw err;
  }
}
