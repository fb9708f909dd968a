/**
 * MatrixRTC routes of the homeserver, and the happy path through the real bundled homeserver end
 * to end: MSC4195 delegation → forwarded to a real agent (in process) → restart while the fake SFU
 * shows the participant → signed participant_left webhook → the hangup lands in the room.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildAgent, type Agent } from '../../src/agent/app.js';
import { type AgentConfig, agentSettings } from '../../src/config/agent.js';
import { toZod } from '../../src/config/define.js';
import { silentLogger } from '../../src/lib/logger.js';
import { LEGACY_SLOT, participantIdentity, roomAlias } from '../../src/livekit/identity.js';
import { freeTcpPort, waitFor } from '../e2e/support/proc.js';
import { type FakeSfu, startFakeSfu } from '../fakes/fake-sfu.js';
import { type Session, startTestHomeserver, type TestHomeserver } from './harness.js';

const CREDS = { key: 'rtc-test-key', secret: 'rtc-test-secret-0123456789abcdef' };
const SECRET = 'homeserver-to-agent-secret-0123456789';
const CALL_MEMBER = 'org.matrix.msc3401.call.member';
const DELEGATE = '/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave';

let hs: TestHomeserver;
let agent: Agent;
let sfu: FakeSfu;
let agentUrl: string;
let agentDir: string;
let alice: Session;
let bob: Session;
let roomId: string;

beforeAll(async () => {
  sfu = await startFakeSfu(CREDS);
  const agentPort = await freeTcpPort();
  agentUrl = `http://127.0.0.1:${agentPort}`;
  hs = await startTestHomeserver({
    rtc: { agent_url: agentUrl, agent_secret: SECRET, livekit_service_url: agentUrl, sfu_urls: [sfu.wsUrl] },
  });
  agentDir = mkdtempSync(join(tmpdir(), 'lastwill-rtc-agent-'));
  const config = toZod(agentSettings).parse({
    bind: `127.0.0.1:${agentPort}`,
    livekit: { url: sfu.url, ...CREDS },
    full_access_homeservers: ['localhost'],
    cs_api_url_overrides: { localhost: hs.url },
    homeserver_secret: SECRET,
    data_dir: agentDir,
    sqlite_synchronous: 'normal',
    engine: { disconnect_grace_ms: 200 },
  }) as AgentConfig;
  agent = buildAgent({ config, log: silentLogger() });
  await agent.start();
  await agent.app.listen('127.0.0.1', agentPort);
  alice = await hs.register('alice');
  bob = await hs.register('bob');
  roomId = await hs.createRoom(alice.accessToken, {
    preset: 'public_chat',
    power_level_content_override: { events: { [CALL_MEMBER]: 0 } },
  });
  await hs.request('POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, { token: bob.accessToken, body: {} });
});

afterAll(async () => {
  await agent?.close();
  await hs?.close();
  await sfu?.close();
  if (agentDir) rmSync(agentDir, { recursive: true, force: true });
});

/** Publishes a call membership for `who` and schedules its delayed leave; returns the delay id. */
async function joinCall(who: Session, delayMs = 3_600_000): Promise<{ delayId: string; stateKey: string }> {
  const stateKey = `_${who.userId}_${who.deviceId}`;
  const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${CALL_MEMBER}/${encodeURIComponent(stateKey)}`;
  const leave = await hs.request('PUT', `${path}?org.matrix.msc4140.delay=${delayMs}`, { token: who.accessToken, body: {} });
  expect(leave.status).toBe(200);
  const join = await hs.request('PUT', path, { token: who.accessToken, body: { application: 'm.call', device_id: who.deviceId } });
  expect(join.status).toBe(200);
  return { delayId: leave.body.delay_id as string, stateKey };
}

async function membership(stateKey: string): Promise<Record<string, unknown>> {
  const res = await hs.request(
    'GET',
    `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${CALL_MEMBER}/${encodeURIComponent(stateKey)}`,
    { token: bob.accessToken },
  );
  expect(res.status).toBe(200);
  return res.body as Record<string, unknown>;
}

describe('MatrixRTC transports (MSC4143)', () => {
  it('lists the configured LiveKit service for authenticated users', async () => {
    for (const path of ['/_matrix/client/unstable/org.matrix.msc4143/rtc/transports', '/_matrix/client/v1/rtc/transports']) {
      const res = await hs.request('GET', path, { token: alice.accessToken });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ rtc_transports: [{ type: 'livekit', livekit_service_url: agentUrl }] });
      expect((await hs.request('GET', path)).status).toBe(401);
    }
  });
});

describe('MSC4195 delegate_delayed_leave', () => {
  it('answers an unauthenticated probe with 401, not 404, so clients see support', async () => {
    const res = await hs.request('POST', DELEGATE, { body: {} });
    expect(res.status).toBe(401);
    expect(res.body.errcode).toBe('M_MISSING_TOKEN');
  });

  it('refuses delay ids that are not the caller\'s own scheduled event in that room', async () => {
    const { delayId } = await joinCall(alice);
    const base = { url: agentUrl, room_id: roomId, slot_id: LEGACY_SLOT, member_id: 'm1' };
    const cases = [
      { token: bob.accessToken, body: { ...base, delay_id: delayId } },
      { token: alice.accessToken, body: { ...base, delay_id: 'no-such-delay-id' } },
      { token: alice.accessToken, body: { ...base, room_id: '!other:localhost', delay_id: delayId } },
      { token: alice.accessToken, body: { ...base, url: 'https://elsewhere.example', delay_id: delayId } },
    ];
    for (const c of cases) {
      const res = await hs.request('POST', DELEGATE, c);
      expect(res.status, JSON.stringify(c.body)).toBe(400);
      expect(res.body.errcode).toBe('M_INVALID_PARAM');
    }
    const missing = await hs.request('POST', DELEGATE, { token: alice.accessToken, body: { room_id: roomId, slot_id: 's', delay_id: delayId } });
    expect(missing.status).toBe(400);
    // Nothing reached the agent.
    expect(agent.engine.counts().waiting + agent.engine.counts().connected).toBe(0);
  });

  it('forwards a valid delegation: restarts while connected, hangs up after the participant leaves', async () => {
    const { delayId, stateKey } = await joinCall(alice);
    const livekitRoom = roomAlias(roomId, LEGACY_SLOT);
    const identity = participantIdentity(alice.userId, alice.deviceId, 'member-1');
    sfu.join(livekitRoom, { identity, sid: 'PA_first', joinedAtMs: Date.now() });
    const scheduledBefore = await hs.request('GET', `/_matrix/client/v1/delayed_events/${delayId}`, { token: alice.accessToken });
    expect(scheduledBefore.status).toBe(200);

    // `url` names the SFU itself, as matrix-js-sdk documents it (the service URL works too).
    const res = await hs.request('POST', DELEGATE, {
      token: alice.accessToken,
      body: { url: sfu.wsUrl, room_id: roomId, slot_id: LEGACY_SLOT, member: { id: 'member-1', claimed_device_id: alice.deviceId }, delay_id: delayId },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);

    // The agent found the participant and restarted the event: scheduled_at moves forward.
    await waitFor('the agent to restart the delayed event', async () => {
      const now = await hs.request('GET', `/_matrix/client/v1/delayed_events/${delayId}`, { token: alice.accessToken });
      return now.body.scheduled_at > scheduledBefore.body.scheduled_at ? true : undefined;
    });
    expect(agent.engine.get(livekitRoom, identity)?.state).toBe('connected');
    expect(await membership(stateKey)).toMatchObject({ application: 'm.call' });

    sfu.leave(livekitRoom, identity);
    const status = await sfu.sendWebhook(`http://127.0.0.1:${new URL(agentUrl).port}/sfu_webhook`, {
      event: 'participant_left',
      room: livekitRoom,
      identity,
      sid: 'PA_first',
      disconnectReason: 'CLIENT_INITIATED',
    });
    expect(status).toBe(200);
    await waitFor('the membership to end', async () => (Object.keys(await membership(stateKey)).length === 0 ? true : undefined));
    const finished = await hs.request('GET', `/_matrix/client/v1/delayed_events/${delayId}`, { token: alice.accessToken });
    expect(finished.body.event_id).toMatch(/^\$/);
    expect(agent.engine.get(livekitRoom, identity)?.state).toBe('sent');
  });
});

describe('MSC4195 with the agent unreachable', () => {
  it('answers 503 and leaves no scoped token behind', async () => {
    const closedPort = await freeTcpPort();
    const lonely = await startTestHomeserver({
      rtc: { agent_url: `http://127.0.0.1:${closedPort}`, agent_secret: SECRET },
    });
    try {
      const carol = await lonely.register('carol');
      const room = await lonely.createRoom(carol.accessToken, { preset: 'public_chat' });
      const path = `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/state/${CALL_MEMBER}/k`;
      const leave = await lonely.request('PUT', `${path}?org.matrix.msc4140.delay=60000`, { token: carol.accessToken, body: {} });
      const tokens = () => (lonely.hs.db.prepare('SELECT COUNT(*) AS n FROM delayed_scoped_tokens').get() as { n: number }).n;
      const res = await lonely.request('POST', DELEGATE, {
        token: carol.accessToken,
        body: { room_id: room, slot_id: LEGACY_SLOT, member_id: 'm', delay_id: leave.body.delay_id },
      });
      expect(res.status).toBe(503);
      expect(res.body.errcode).toBe('M_UNKNOWN');
      expect(tokens()).toBe(0);
    } finally {
      await lonely.close();
    }
  });
});

describe('MSC4195 without an agent', () => {
  it('is not served, so clients fall back to the LiveKit service', async () => {
    const plain = await startTestHomeserver();
    try {
      const session = await plain.register('carol');
      const res = await plain.request('POST', DELEGATE, { token: session.accessToken, body: {} });
      expect(res.status).toBe(404);
      expect(res.body.errcode).toBe('M_UNRECOGNIZED');
      const transports = await plain.request('GET', '/_matrix/client/v1/rtc/transports', { token: session.accessToken });
      expect(transports.body).toEqual({ rtc_transports: [] });
    } finally {
      await plain.close();
    }
  });
});
