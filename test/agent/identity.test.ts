import { createHash } from 'node:crypto';

import { TokenVerifier } from 'livekit-server-sdk';
import { describe, expect, it } from 'vitest';

import {
  goJsonStringArray,
  hashedName,
  legacyIdentity,
  legacyRoomAlias,
  participantIdentity,
  roomAlias,
} from '../../src/livekit/identity.js';
import { mintJoinToken } from '../../src/livekit/tokens.js';

describe('LiveKit names (lk-jwt-service helper_test.go vectors)', () => {
  it('hashes [room_id, slot_id] to the known room alias', () => {
    expect(roomAlias('!roomid:example.com', 'slot1234')).toBe('O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc');
  });

  it('hashes [user, device, member] to the known identity', () => {
    expect(participantIdentity('@alice:example.com', 'DEVICE123', 'memberABC')).toBe(
      'J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU',
    );
  });

  it('is unpadded standard base64 of 32 bytes', () => {
    const name = hashedName(['a', 'b']);
    expect(name).toMatch(/^[A-Za-z0-9+/]{43}$/);
    expect(Buffer.from(name, 'base64')).toHaveLength(32);
  });

  it('uses the legacy slot for /sfu/get and a plain identity', () => {
    expect(legacyRoomAlias('!r:example.com')).toBe(roomAlias('!r:example.com', 'm.call#ROOM'));
    expect(legacyIdentity('@alice:example.com', 'DEV')).toBe('@alice:example.com:DEV');
  });
});

describe('Go json.Marshal compatibility', () => {
  it('escapes <, > and & as Go does', () => {
    expect(goJsonStringArray(['<a&b>'])).toBe('["\\u003ca\\u0026b\\u003e"]');
  });

  it('escapes U+2028 and U+2029', () => {
    expect(goJsonStringArray(['x\u2028y\u2029'])).toBe('["x\\u2028y\\u2029"]');
  });

  it('replaces lone surrogates with U+FFFD like Go decoding does', () => {
    expect(goJsonStringArray(['a\ud800b'])).toBe('["a\ufffdb"]');
  });

  it('escapes control characters and quotes the same way as Go 1.22+', () => {
    expect(goJsonStringArray(['"\\\n\t\b\f\u0001'])).toBe('["\\"\\\\\\n\\t\\b\\f\\u0001"]');
  });

  it('hashes the escaped form, so HTML characters change the alias', () => {
    const plain = hashedName(['!a<b:example.com', 's']);
    // The escaped JSON text is what is hashed: recompute it by hand.
    const expected = createHash('sha256')
      .update('["!a\\u003cb:example.com","s"]')
      .digest('base64')
      .replace(/=+$/, '');
    expect(plain).toBe(expected);
  });
});

describe('join token', () => {
  it('carries the lk-jwt-service grants and a 1 h lifetime', async () => {
    const jwt = await mintJoinToken({ key: 'k', secret: 'a-long-enough-secret' }, 'ROOM', 'IDENT');
    const grants = await new TokenVerifier('k', 'a-long-enough-secret').verify(jwt);
    expect(grants.sub).toBe('IDENT');
    expect(grants.video).toMatchObject({
      room: 'ROOM',
      roomJoin: true,
      roomCreate: false,
      canPublish: true,
      canSubscribe: true,
      canUpdateOwnMetadata: true,
    });
    const claims = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as Record<string, number>;
    // The SDK reads the clock once for exp and once for nbf, so a second can tick over in between.
    expect(claims.exp! - claims.nbf!).toBeGreaterThanOrEqual(3599);
    expect(claims.exp! - claims.nbf!).toBeLessThanOrEqual(3600);
  });
});
