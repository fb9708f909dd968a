/** Discovery: /versions, /capabilities and the .well-known documents. */
import type { Router } from '../../lib/http.js';
import { DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS } from '../rooms.js';
import { CS, type Services } from './common.js';

const SPEC_VERSIONS = [
  'r0.6.1',
  'v1.1',
  'v1.2',
  'v1.3',
  'v1.4',
  'v1.5',
  'v1.6',
  'v1.7',
  'v1.8',
  'v1.9',
  'v1.10',
  'v1.11',
  'v1.12',
];

export function registerDiscoveryRoutes(router: Router, s: Services): void {
  const delayedEnabled = s.config.delayed_events.max_scheduled_per_user > 0;
  const versions = {
    versions: SPEC_VERSIONS,
    // MSC4354 sticky events are always on; matrix-js-sdk sends them only where this says so.
    unstable_features: { 'org.matrix.msc4140': delayedEnabled, 'org.matrix.msc4354': true },
  };
  const delayedLimits = {
    max_delay_ms: s.config.max_delay_ms,
    max_scheduled: s.config.delayed_events.max_scheduled_per_user,
  };
  const capabilities = {
    capabilities: {
      'm.change_password': { enabled: false },
      'm.set_displayname': { enabled: true },
      'm.set_avatar_url': { enabled: true },
      'm.3pid_changes': { enabled: false },
      'm.get_login_token': { enabled: false },
      'm.room_versions': {
        default: DEFAULT_ROOM_VERSION,
        available: Object.fromEntries(SUPPORTED_ROOM_VERSIONS.map((v) => [v, 'stable'])),
      },
      'org.matrix.msc4140.delayed_events': delayedLimits,
      'm.delayed_events': delayedLimits,
    },
  };

  router.add('GET', '/_matrix/client/versions', () => ({ body: versions }));
  router.add('GET', `${CS}/capabilities`, (ctx) => {
    s.auth.requester(ctx);
    return { body: capabilities };
  });
  router.add('GET', '/.well-known/matrix/client', () => ({
    body: { 'm.homeserver': { base_url: s.baseUrl() } },
  }));
  router.add('GET', '/.well-known/matrix/server', () => {
    const url = new URL(s.baseUrl());
    return { body: { 'm.server': `${url.hostname}:${url.port || (url.protocol === 'https:' ? 443 : 80)}` } };
  });
}
