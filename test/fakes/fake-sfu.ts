// A loopback LiveKit SFU fake: the Twirp RoomService calls the agent makes (ListParticipants,
// GetParticipant, CreateRoom), each checking the Bearer JWT against the API secret and the grant
// the real server requires, with scriptable participants; and genuinely signed webhooks built
// from @livekit/protocol's WebhookEvent (the SDK subclass drops `event`). Like LiveKit's Twirp
// server it speaks both encodings: JSON (the Node SDK, so lastwill) and protobuf (the Go SDK, so
// lk-jwt-service); errors are JSON either way, as Twirp specifies.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';

import {
  CreateRoomRequest,
  DisconnectReason,
  ListParticipantsRequest,
  ListParticipantsResponse,
  ParticipantInfo,
  ParticipantInfo_State,
  Room,
  RoomParticipantIdentity,
  WebhookEvent,
} from '@livekit/protocol';
import { AccessToken, TokenVerifier } from 'livekit-server-sdk';

import { closeServer, listenLoopback, readBodyBytes, sendJson } from './http-util.js';

export interface FakeParticipant {
  identity: string;
  sid: string;
  joinedAtMs?: number;
}

export interface TwirpCall {
  method: string;
  room: string;
  /** HTTP status answered. */
  status: number;
}

export interface WebhookInit {
  event: 'participant_joined' | 'participant_left' | 'participant_connection_aborted' | 'room_started' | 'room_finished';
  room: string;
  identity?: string;
  sid?: string;
  /** A DisconnectReason name, e.g. CLIENT_INITIATED. */
  disconnectReason?: keyof typeof DisconnectReason;
  /** Event id; a fresh one by default. */
  id?: string;
  createdAtSeconds?: number;
}

export interface SignOptions {
  key?: string;
  secret?: string;
  /** Changes the body after signing. */
  tamper?: boolean;
  /** Sends `Bearer <jwt>` (which LiveKit never does and the verifier rejects). */
  bearer?: boolean;
  /** Omits the Authorization header. */
  unsigned?: boolean;
}

export interface FakeSfu {
  /** http://127.0.0.1:port (give as LIVEKIT_URL; ws:// works too). */
  readonly url: string;
  readonly wsUrl: string;
  readonly calls: TwirpCall[];
  readonly createdRooms: string[];
  /** Puts a session in a room (replacing one with the same identity). */
  join(room: string, p: FakeParticipant): void;
  leave(room: string, identity: string): void;
  /** While failing, every Twirp call answers 500 (LiveKit down). */
  setFailing(failing: boolean): void;
  /** A signed webhook request as LiveKit would send it. */
  signWebhook(init: WebhookInit, opts?: SignOptions): Promise<{ body: string; headers: Record<string, string> }>;
  /** Signs and POSTs a webhook to `target`; resolves with the HTTP status. */
  sendWebhook(target: string, init: WebhookInit, opts?: SignOptions): Promise<number>;
  close(): Promise<void>;
}

let eventCounter = 0;

export async function startFakeSfu(creds: { key: string; secret: string }): Promise<FakeSfu> {
  const rooms = new Map<string, Map<string, FakeParticipant>>();
  const calls: TwirpCall[] = [];
  const createdRooms: string[] = [];
  const verifier = new TokenVerifier(creds.key, creds.secret);
  let failing = false;

  const participantInfo = (p: FakeParticipant) =>
    new ParticipantInfo({
      sid: p.sid,
      identity: p.identity,
      state: ParticipantInfo_State.ACTIVE,
      joinedAt: BigInt(Math.floor((p.joinedAtMs ?? Date.now()) / 1000)),
      joinedAtMs: BigInt(p.joinedAtMs ?? Date.now()),
    });

  /** The request's fields, from whichever encoding it came in; undefined when it does not decode. */
  function decodeRequest(method: string, raw: Buffer, protobuf: boolean): { room?: string; name?: string; identity?: string } | undefined {
    try {
      if (!protobuf) return JSON.parse(raw.toString('utf8')) as { room?: string; name?: string; identity?: string };
      switch (method) {
        case 'ListParticipants':
          return ListParticipantsRequest.fromBinary(raw);
        case 'GetParticipant':
          return RoomParticipantIdentity.fromBinary(raw);
        case 'CreateRoom':
          return CreateRoomRequest.fromBinary(raw);
        default:
          return {};
      }
    } catch {
      return undefined;
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = await readBodyBytes(req);
    const method = (req.url ?? '').replace(/^\/twirp\/livekit\.RoomService\//, '');
    const protobuf = req.headers['content-type'] === 'application/protobuf';
    const body = decodeRequest(method, raw, protobuf) ?? {};
    const room = body.room ?? body.name ?? '';
    const call: TwirpCall = { method, room, status: 0 };
    calls.push(call);
    // `json` where LiveKit's JSON differs from protobuf-es' (it writes empty lists, for one).
    const twirp = (status: number, message: { toJson(): unknown; toBinary(): Uint8Array }, json = message.toJson()) => {
      call.status = status;
      if (!protobuf) return sendJson(res, status, json);
      const bytes = message.toBinary();
      res.writeHead(status, { 'content-type': 'application/protobuf', 'content-length': String(bytes.length) });
      res.end(bytes);
    };
    const twirpError = (status: number, code: string, msg: string) => {
      call.status = status;
      sendJson(res, status, { code, msg });
    };

    const auth = req.headers.authorization;
    if (!auth?.startsWith('Bearer ')) return twirpError(401, 'unauthenticated', 'missing token');
    let grants;
    try {
      grants = await verifier.verify(auth.slice('Bearer '.length));
    } catch {
      return twirpError(401, 'unauthenticated', 'invalid token');
    }
    if (failing) return twirpError(500, 'internal', 'scripted failure');
    const video = grants.video ?? {};
    switch (method) {
      case 'ListParticipants':
      case 'GetParticipant': {
        if (!video.roomAdmin || video.room !== room) return twirpError(401, 'unauthenticated', 'permissions denied');
        const members = rooms.get(room);
        if (method === 'ListParticipants') {
          const participants = [...(members?.values() ?? [])].map(participantInfo);
          return twirp(200, new ListParticipantsResponse({ participants }), { participants: participants.map((p) => p.toJson()) });
        }
        const p = members?.get(body.identity ?? '');
        return p ? twirp(200, participantInfo(p)) : twirpError(404, 'not_found', 'participant not found');
      }
      case 'CreateRoom': {
        if (!video.roomCreate) return twirpError(401, 'unauthenticated', 'permissions denied');
        createdRooms.push(room);
        if (!rooms.has(room)) rooms.set(room, new Map());
        return twirp(200, new Room({ sid: `RM_${room.slice(0, 8)}`, name: room, emptyTimeout: 300, departureTimeout: 20 }));
      }
      default:
        return twirpError(404, 'bad_route', 'no such method');
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  const port = await listenLoopback(server);

  async function signWebhook(init: WebhookInit, opts: SignOptions = {}) {
    const event = new WebhookEvent({
      event: init.event,
      id: init.id ?? `EV_fake${++eventCounter}_${Date.now()}`,
      createdAt: BigInt(init.createdAtSeconds ?? Math.floor(Date.now() / 1000)),
      room: new Room({ name: init.room, sid: 'RM_fake' }),
      ...(init.identity !== undefined
        ? {
            participant: new ParticipantInfo({
              identity: init.identity,
              sid: init.sid ?? '',
              state: init.event === 'participant_joined' ? ParticipantInfo_State.ACTIVE : ParticipantInfo_State.DISCONNECTED,
              joinedAtMs: BigInt(Date.now()),
              ...(init.disconnectReason !== undefined ? { disconnectReason: DisconnectReason[init.disconnectReason] } : {}),
            }),
          }
        : {}),
    });
    const body = event.toJsonString();
    const token = new AccessToken(opts.key ?? creds.key, opts.secret ?? creds.secret, { ttl: '5m' });
    token.sha256 = createHash('sha256').update(body).digest('base64');
    const jwt = await token.toJwt();
    const headers: Record<string, string> = { 'content-type': 'application/webhook+json' };
    if (!opts.unsigned) headers.authorization = opts.bearer ? `Bearer ${jwt}` : jwt;
    return { body: opts.tamper ? body.replace(init.room, `${init.room}x`) : body, headers };
  }

  return {
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    calls,
    createdRooms,
    join(room, p) {
      if (!rooms.has(room)) rooms.set(room, new Map());
      rooms.get(room)!.set(p.identity, p);
    },
    leave(room, identity) {
      rooms.get(room)?.delete(identity);
    },
    setFailing: (f) => void (failing = f),
    signWebhook,
    async sendWebhook(target, init, opts) {
      const { body, headers } = await signWebhook(init, opts);
      const res = await fetch(target, { method: 'POST', headers, body });
      await res.arrayBuffer();
      return res.status;
    },
    close: () => closeServer(server),
  };
}
