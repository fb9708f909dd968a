/**
 * Throws generated malformed requests at every registered route (with a valid token and without)
 * and checks the three promises of the house rules: never a 5xx, always a Matrix error body on
 * 4xx, and a rejected request leaves the database exactly as it was. Deterministic (seeded),
 * sequential over keep-alive connections, and the clock is frozen so no delayed event fires
 * between the before/after snapshots.
 */
import { createHash } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CORE_TABLES } from '../../src/homeserver/store.js';
import type { Clock } from '../../src/lib/timer-heap.js';
import { prng } from '../support/prng.js';
import { enc, type Session, startWithRoom, type TestHomeserver } from './harness.js';

const SEED = 0x5eed_4140;
const TOTAL_REQUESTS = 3500;

const frozenClock: Clock = {
  now: () => 1_800_000_000_000,
  // Nothing scheduled ever fires: the only writes are the ones requests make synchronously.
  setTimeout: () => 0,
  clearTimeout: () => undefined,
};

let t: TestHomeserver;
let alice: Session;
let bob: Session;
let roomId: string;
let eventId: string;
const delayIds: string[] = [];

beforeAll(async () => {
  ({ t, roomId, users: { alice, bob } } = await startWithRoom({
    users: ['alice', 'bob'],
    room: { preset: 'public_chat', name: 'fuzz' },
    members: ['bob'],
    overrides: { rate_limits: { schedule: { per_second: 0, burst: 0 }, management: { per_second: 0, burst: 0 } } },
    clock: frozenClock,
  }));
  const sent = await t.request('POST', `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message`, {
    token: alice.accessToken,
    body: { msgtype: 'm.text', body: 'seed' },
  });
  eventId = sent.body.event_id;
  for (let i = 0; i < 4; i++) {
    const scheduled = await t.request(
      'PUT',
      `/_matrix/client/v3/rooms/${enc(roomId)}/state/com.example.fuzz/k${i}?org.matrix.msc4140.delay=100000`,
      { token: alice.accessToken, body: { i } },
    );
    delayIds.push(scheduled.body.delay_id);
  }
});
afterAll(async () => {
  await t?.close();
});

/**
 * A digest of every table's rows (the core's and the delayed-events module's), or of the core's
 * only: a refused delayed `send` legitimately records its failure in the delayed-events tables.
 */
function snapshot(coreOnly = false): string {
  const db = t.hs.db;
  const all = db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    .all() as Array<{ name: string }>;
  const tables = coreOnly ? all.filter(({ name }) => (CORE_TABLES as readonly string[]).includes(name)) : all;
  const hash = createHash('sha256');
  for (const { name } of tables) {
    const rows = db.prepare(`SELECT * FROM "${name}"`).all().map((r) => JSON.stringify(r));
    rows.sort();
    hash.update(`${name}\0${rows.join('\n')}\0`);
  }
  return hash.digest('hex');
}

describe('malformed requests', () => {
  it('never answer 5xx, always answer Matrix errors and change nothing when refused', async () => {
    const rand = prng(SEED);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
    const chance = (p: number) => rand() < p;

    const BAD_SEGMENTS = [
      '%ZZ', '%', '%E0%A4%A', '%00', '%C0%AF', '..', '.', '%2F', '%20', 'null', '%5B%5D', '%7B%7D',
      enc('💥☃︎\u202e'), 'a'.repeat(3000), enc('"\'<>'), '%F0%9F', '-1', '0', enc('@:'), enc('!:'), enc('$'),
    ];
    /** Valid values first; the rest are well-formed but unknown or someone else's. */
    const SEGMENTS: Record<string, (self: Session) => string[]> = {
      roomId: () => [roomId, '!unknown:localhost'],
      roomIdOrAlias: () => [roomId, '#alias:localhost', '!unknown:localhost'],
      userId: (self) => [self.userId, '@ghost:localhost', '@x:elsewhere', alice.userId],
      eventId: () => [eventId, '$unknown'],
      type: () => ['com.example.fuzz', 'm.room.message', 'm.room.power_levels', 'm.room.member'],
      stateKey: (self) => ['', 'k', self.userId],
      txnId: () => [`t${Math.floor(rand() * 50)}`],
      field: () => ['displayname', 'avatar_url'],
      filterId: () => ['0', '1', '99'],
      receiptType: () => ['m.read', 'm.read.private'],
      delayId: () => [...delayIds, 'syd_unknown'],
      eventType: () => ['com.example.fuzz', 'm.room.message'],
    };
    /** A plausible body per route, so single mutations reach the deep checks. */
    const EXAMPLES: Array<[RegExp, () => Record<string, unknown>]> = [
      [/\/createRoom$/, () => ({ preset: 'public_chat', name: 'n' })],
      [/\/register$/, () => ({ username: `u${Math.floor(rand() * 1e6)}`, password: 'pw', auth: { type: 'm.login.dummy' } })],
      [/\/login$/, () => ({ type: 'm.login.password', user: 'alice', password: 'wrong' })],
      [/\/(invite|kick|ban|unban)$/, () => ({ user_id: bob.userId })],
      [/\/typing\/:userId$/, () => ({ typing: true, timeout: 1000 })],
      [/\/presence\/:userId\/status$/, () => ({ presence: 'online' })],
      [/\/profile\/:userId\/:field$/, () => ({ displayname: 'd', avatar_url: 'mxc://x/y' })],
      [/\/keys\/query$/, () => ({ device_keys: { [alice.userId]: [] } })],
      [/\/delayed_events\/:delayId$/, () => ({ action: pick(['send', 'cancel', 'restart']) })],
      [/\/delayed_event\//, () => ({ delay_ms: 100000, content: { a: 1 } })],
      [/scoped_token$/, () => ({ delay_ids: [pick(delayIds)] })],
      [/\/read_markers$/, () => ({ 'm.fully_read': eventId })],
    ];
    const exampleFor = (pattern: string) =>
      EXAMPLES.find(([re]) => re.test(pattern))?.[1]() ?? { body: 'x', msgtype: 'm.text' };
    const QUERY_KEYS: Record<string, readonly string[]> = {
      'org.matrix.msc4140.delay': ['-1', 'abc', '', '1.5', '99999999999999999999', '0', '100000', '%ZZ'],
      since: ['s0', 'bogus', 's999999999999999', '', '%'],
      timeout: ['-1', 'abc', '0', '', '1e9'],
      limit: ['-1', 'x', '0', '5', '99999999999999999999'],
      from: ['s0', 'x', '', 's1'],
      to: ['s-1', 'x'],
      dir: ['x', 'b', 'f', ''],
      filter: ['{', '{"room":[]}', '9999', 'x', '{"room":{"timeline":{"limit":"x"}}}', '[]'],
      kind: ['guest', 'x', 'user'],
      format: ['x', 'event', 'content'],
      membership: ['x', 'join'],
      full_state: ['maybe', 'true'],
      set_presence: ['away', 'online'],
      status: ['x', 'scheduled', 'finalised'],
      delay_id: ['x', ''],
      username: ['', 'UPPER', 'ok'],
      '%ZZ': ['%ZZ'],
      'k\u00e9y': ['v\u00e9'],
    };
    const HUGE = 'x'.repeat(70_000);
    const VALUES: readonly unknown[] = [
      null, 0, -1, 1.5, 1e308, true, false, '', 'x', HUGE, '💥\u0000\ud800', [], {}, [1, 'a'], { a: { b: {} } },
      'm.login.dummy', 'm.login.password', alice?.userId, '@ghost:localhost', '!unknown:localhost', 'send',
      'cancel', 'restart', 'public_chat', 'online', 'join', 42, 'A'.repeat(300),
    ];
    const KEYS = [
      'username', 'password', 'auth', 'type', 'identifier', 'user', 'user_id', 'name', 'topic', 'preset', 'invite',
      'initial_state', 'power_level_content_override', 'room_version', 'presence', 'typing', 'timeout',
      'device_keys', 'displayname', 'avatar_url', 'nonce', 'mac', 'admin', 'action', 'delay_ms', 'content',
      'state_key', 'membership', 'reason', 'visibility', 'one_time_keys', 'm.fully_read', 'users', 'events',
      'delay_ids', 'ttl_ms',
    ];
    const randomObject = (depth = 0): Record<string, unknown> => {
      const o: Record<string, unknown> = {};
      const n = Math.floor(rand() * 4);
      for (let i = 0; i < n; i++) {
        o[pick(KEYS)] = depth < 2 && chance(0.2) ? randomObject(depth + 1) : pick(VALUES);
      }
      return o;
    };
    const deep = (n: number, open: string, close: string) => `${open.repeat(n)}1${close.repeat(n)}`;
    const BODIES: Array<() => string | Buffer | undefined> = [
      () => undefined,
      () => '',
      () => '{',
      () => 'nul',
      () => '[]',
      () => '"str"',
      () => '123',
      () => 'null',
      () => Buffer.from([0xff, 0xfe, 0x7b, 0x7d]),
      () => deep(5000, '[', ']'),
      () => deep(30_000, '{"a":', '}'),
      () => JSON.stringify([randomObject()]),
      () => JSON.stringify({ body: HUGE, x: HUGE, y: HUGE, z: HUGE }),
      () => 'x'.repeat(300 * 1024),
      () => JSON.stringify(randomObject()),
      () => JSON.stringify(randomObject()),
      () => JSON.stringify(randomObject()),
    ];

    // Logout routes go last: once one succeeds, the fuzzing sessions' tokens are gone.
    const routes = t.hs.router
      .list()
      .filter((r) => r.method !== 'HEAD' && r.method !== 'OPTIONS')
      .sort((a, b) => Number(a.pattern.includes('/logout')) - Number(b.pattern.includes('/logout')));
    expect(routes.length).toBeGreaterThan(40);
    const perRoute = Math.ceil(TOTAL_REQUESTS / routes.length);
    const failures: string[] = [];
    const refusedPerRoute = new Map<string, number>();
    let sent = 0;

    for (const route of routes) {
      // First a sweep: every well-formed but unknown (or foreign) value of every parameter, with
      // a valid token, so the checks deepest in each handler are reached at least once.
      const sweep = route.pattern.split('/').flatMap((seg) => {
        const name = /^:(\w+)\??$/.exec(seg)?.[1];
        const values = name ? (SEGMENTS[name]?.(alice) ?? []) : [];
        return values.slice(1).map((value) => ({ seg, value }));
      });
      for (let i = 0; i < sweep.length + perRoute; i++) {
        const swept = sweep[i];
        const withToken = swept !== undefined || i % 2 === 0;
        const self = swept !== undefined || chance(0.7) ? alice : bob;
        // One kind of damage per request, so the checks behind the earlier ones are reached too.
        const damage = swept
          ? 'unknown'
          : pick(['segment', 'segment', 'unknown', 'query', 'body', 'body', 'body', 'method', 'none']);
        const method = damage === 'method' ? pick(['PATCH', 'DELETE', 'PUT', 'POST', 'GET']) : route.method;
        const params = route.pattern
          .split('/')
          .filter((seg) => seg.startsWith(':') && (damage !== 'unknown' || !seg.includes('(')));
        const damaged = swept?.seg ?? pick(params.length > 0 ? params : ['']);
        const path = route.pattern
          .split('/')
          .map((seg) => {
            const m = /^:(\w+)(?:\(([^)]*)\))?(\?)?$/.exec(seg);
            if (!m) return seg;
            const hit = seg === damaged;
            if (m[2]) return hit && damage === 'segment' ? pick(BAD_SEGMENTS) : pick(m[2].split('|'));
            if (hit && damage === 'segment') return pick(BAD_SEGMENTS);
            const values = SEGMENTS[m[1]!]?.(self) ?? ['x', '!a:b', '@a:b'];
            if (hit && damage === 'unknown' && values.length > 1) return enc(swept?.value ?? pick(values.slice(1)));
            return enc(values[0]!);
          })
          .join('/');
        const query =
          damage === 'query'
            ? Array.from({ length: 1 + Math.floor(rand() * 2) }, () => {
                const key = pick(Object.keys(QUERY_KEYS));
                return `${enc(key).replace('%25ZZ', '%ZZ')}=${pick(QUERY_KEYS[key]!)}`;
              })
            : [];
        if (!withToken && chance(0.2)) query.push(`access_token=${pick(['bogus', '', '%ZZ'])}`);
        const url = query.length > 0 ? `${path}?${query.join('&')}` : path;
        let rawBody: string | Buffer | undefined;
        if (method !== 'GET') {
          const example = exampleFor(route.pattern);
          if (damage !== 'body') {
            rawBody = JSON.stringify(example);
          } else if (chance(0.6)) {
            const keys = Object.keys(example);
            const victim = chance(0.8) && keys.length > 0 ? pick(keys) : pick(KEYS);
            if (chance(0.2)) delete example[victim];
            else example[victim] = chance(0.3) ? randomObject() : pick(VALUES);
            rawBody = JSON.stringify(example);
          } else {
            rawBody = pick(BODIES)();
          }
        }
        const token = withToken ? self.accessToken : undefined;

        const sendsDelayed =
          route.pattern.includes('/delayed_events/') &&
          (url.split('?')[0]!.endsWith('/send') || String(rawBody).includes('"send"'));
        const before = snapshot(sendsDelayed);
        const where = `${method} ${url.slice(0, 200)} body=${String(rawBody).slice(0, 80)}`;
        let res;
        try {
          res = await t.request(method, url, {
            ...(token !== undefined ? { token } : {}),
            ...(rawBody !== undefined ? { rawBody } : {}),
            headers: { 'content-type': 'application/json' },
          });
        } catch (err) {
          failures.push(`transport error ${(err as Error).message}: ${where}`);
          continue;
        }
        sent++;
        if (res.status >= 500) failures.push(`${res.status} ${where} → ${JSON.stringify(res.body)}`);
        if (res.status >= 400) {
          refusedPerRoute.set(`${route.method} ${route.pattern}`, (refusedPerRoute.get(`${route.method} ${route.pattern}`) ?? 0) + 1);
          if (typeof res.body?.errcode !== 'string' || typeof res.body?.error !== 'string') {
            failures.push(`no Matrix error body: ${res.status} ${where} → ${JSON.stringify(res.body)}`);
          }
          if (snapshot(sendsDelayed) !== before) failures.push(`database changed by refused request: ${res.status} ${where}`);
        }
        if (failures.length > 20) break;
      }
    }

    expect(failures).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(TOTAL_REQUESTS);
    // Every route was actually exercised with requests it refused.
    for (const r of routes) expect(refusedPerRoute.get(`${r.method} ${r.pattern}`), `${r.method} ${r.pattern}`).toBeGreaterThan(0);
  }, 60_000);
});
