/**
 * The homeserver factory: one SQLite database, the core (accounts, rooms, sync), the
 * delayed-events module and one router. It never listens; `main.ts` and the tests choose where.
 */
import { join } from 'node:path';
import type { DatabaseSync } from 'node:sqlite';

import type { Logger } from 'pino';

import type { HomeserverConfig } from '../config/homeserver.js';
import { createHttpApp, type HttpApp, Router } from '../lib/http.js';
import { ReturningClients } from '../lib/returning-clients.js';
import { openDatabase, WalCheckpointer } from '../lib/sqlite.js';
import { type Clock, systemClock } from '../lib/timer-heap.js';
import { Accounts } from './accounts.js';
import { AgentForwarder } from './agent-forwarder.js';
import { TokenAuth } from './auth.js';
import type { Auth, DelayedEvents, RoomEngine } from './contracts.js';
import { createDelayedEvents } from './delayed/index.js';
import { HomeserverMetrics } from './metrics.js';
import { StreamNotifier } from './notifier.js';
import { Rooms } from './rooms.js';
import { registerAccountRoutes } from './routes/account.js';
import type { Services } from './routes/common.js';
import { registerDiscoveryRoutes } from './routes/discovery.js';
import { registerClientMiscRoutes } from './routes/misc.js';
import { registerRtcRoutes } from './routes/rtc.js';
import { registerRoomRoutes } from './routes/rooms.js';
import { registerSyncRoutes } from './routes/sync.js';
import { CoreStore } from './store.js';
import { SyncBuilder } from './sync.js';
import { TxnCache } from './txns.js';

export interface HomeserverBuildDeps {
  config: HomeserverConfig;
  log: Logger;
  clock?: Clock;
  /** Overrides `config.data_dir`. */
  dataDir?: string;
}

export interface Homeserver {
  app: HttpApp;
  router: Router;
  rooms: RoomEngine;
  auth: Auth;
  delayed: DelayedEvents;
  db: CoreStore['db'];
  /** Served by the metrics listener (see metrics.ts), which main.ts starts when configured. */
  metrics: HomeserverMetrics;
  /** The core's own services, for tests and the fuzz harness. */
  services: Services;
  /** Starts the delayed-events scheduler (sends overdue events). Call before listening. */
  start(): Promise<void>;
  /** Stops delayed events, drains HTTP (long polls end at once), closes the database. */
  close(): Promise<void>;
  /** Records the URL the server is reachable at once it listens (for .well-known). */
  setBaseUrl(url: string): void;
}

const CORS_HEADERS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'GET, HEAD, POST, PUT, DELETE, OPTIONS',
  'access-control-allow-headers': 'X-Requested-With, Content-Type, Authorization, Date',
};

/** Request bodies above this are refused before parsing; events are further capped at 64 KiB. */
const MAX_BODY_BYTES = 256 * 1024;

export function buildHomeserver(deps: HomeserverBuildDeps): Homeserver {
  const { config, log } = deps;
  const clock = deps.clock ?? systemClock;
  const dbPath = join(deps.dataDir ?? config.data_dir, 'homeserver.db');
  const db = openDatabase(dbPath, config.sqlite_synchronous);
  tuneForBatches(db);
  const checkpointer = new WalCheckpointer(db, dbPath, (err) =>
    log.warn({ err }, 'the WAL checkpoint worker failed; checkpoints now run on commit'),
  );
  const store = new CoreStore(db);
  const notifier = new StreamNotifier(store.maxStream(), clock);
  // Auth resolves scoped tokens through the delayed-events module, which itself needs auth.
  let delayedRef: DelayedEvents | undefined;
  const auth = new TokenAuth(store, () => delayedRef);
  const rooms = new Rooms(store, notifier, clock, config.server_name, log);
  const txns = new TxnCache(store, clock);
  // Only a commit that fsyncs is worth waiting for.
  const { wait_ms: waitMs, returning_window_ms: windowMs } = config.group_commit;
  const returning = config.sqlite_synchronous === 'full' && waitMs > 0 ? new ReturningClients(windowMs) : undefined;
  const gather = returning && { expected: () => returning.anyExpected(), maxWaitMs: waitMs };
  // Its gauge reads the module at scrape time; the module reports to it from the start.
  const metrics = new HomeserverMetrics({ scheduled: () => delayed.scheduledCount() });
  const delayed = createDelayedEvents({
    config,
    db,
    log,
    clock,
    rooms,
    auth,
    txns,
    observer: metrics.delayedObserver(),
    ...(gather ? { gather } : {}),
  });
  delayedRef = delayed;
  const forwarder =
    config.rtc.agent_url !== undefined && config.rtc.agent_secret !== undefined
      ? new AgentForwarder(config.rtc.agent_url, config.rtc.agent_secret, log)
      : undefined;
  let baseUrl = config.public_base_url ?? `http://${config.bind}`;
  const services: Services = {
    config,
    log,
    clock,
    store,
    auth,
    accounts: new Accounts(store, clock, config.server_name),
    rooms,
    notifier,
    txns,
    sync: new SyncBuilder(store, notifier, clock),
    delayed,
    baseUrl: () => baseUrl,
  };
  const router = new Router();
  registerDiscoveryRoutes(router, services);
  registerAccountRoutes(router, services);
  registerRoomRoutes(router, services);
  registerSyncRoutes(router, services);
  registerClientMiscRoutes(router, services);
  delayed.registerRoutes(router);
  registerRtcRoutes(router, { ...services, delayed }, forwarder);
  const app = createHttpApp({
    router,
    log,
    maxBodyBytes: MAX_BODY_BYTES,
    commonHeaders: CORS_HEADERS,
    ...(returning ? { returning } : {}),
    onResponse: metrics.http.onResponse,
  });
  let closed = false;

  return {
    app,
    router,
    rooms,
    auth,
    delayed,
    db,
    metrics,
    services,
    start: () => delayed.start(),
    async close() {
      if (closed) return;
      closed = true;
      await delayed.stop();
      await app.close();
      await forwarder?.close();
      await checkpointer.close();
      db.close();
    },
    setBaseUrl(url) {
      if (config.public_base_url === undefined) baseUrl = url;
    },
  };
}

/**
 * A batch of timed sends touches pages all over the random-id indexes (event ids, delay ids).
 * SQLite's default 2 MiB page cache re-reads them for every batch; a 32 MiB cache does that work
 * once per many batches. Checkpoints run in a worker (WalCheckpointer), off the event loop.
 */
function tuneForBatches(db: DatabaseSync): void {
  db.exec('PRAGMA cache_size = -32768');
}
