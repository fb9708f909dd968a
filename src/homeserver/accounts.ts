/**
 * Accounts and credentials: user creation, password hashing, login sessions, OpenID tokens and
 * the Synapse shared-secret registration nonces.
 */
import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

import { fail } from '../lib/errors.js';
import { transaction } from '../lib/sqlite.js';
import type { Clock } from '../lib/timer-heap.js';
import { LOCALPART_RE, newAccessToken, newDeviceId, randomToken } from './ids.js';
import type { CoreStore } from './store.js';

const scryptAsync = promisify(scrypt) as (pw: string, salt: Buffer, len: number) => Promise<Buffer>;

const NONCE_TTL_MS = 60_000;
const OPENID_TTL_MS = 3600_000;
const MAX_NONCES = 10_000;

export interface Session {
  userId: string;
  accessToken: string;
  deviceId: string;
}

export class Accounts {
  /** Shared-secret registration nonces → issue time; in memory like Synapse's. */
  private readonly nonces = new Map<string, number>();

  constructor(
    private readonly store: CoreStore,
    private readonly clock: Clock,
    private readonly serverName: string,
  ) {}

  userIdOf(localpart: string): string {
    return `@${localpart}:${this.serverName}`;
  }

  /** Checks a requested localpart (case-folded like Synapse) and that it is free. */
  checkLocalpart(raw: string): string {
    const localpart = raw.toLowerCase();
    if (!LOCALPART_RE.test(localpart) || localpart.length > 200) {
      throw fail.invalidUsername('User ID can only contain characters a-z, 0-9, or ._=-/+');
    }
    if (this.store.getUser(this.userIdOf(localpart))) throw fail.userInUse('User ID already taken.');
    return localpart;
  }

  /**
   * Creates the user and a first session in one transaction. The password is hashed before the
   * transaction starts, so nothing is written when a later check fails.
   */
  async register(opts: {
    localpart?: string;
    password?: string;
    admin?: boolean;
    displayname?: string;
    deviceId?: string;
  }): Promise<Session> {
    const localpart = opts.localpart !== undefined ? this.checkLocalpart(opts.localpart) : this.generatedLocalpart();
    const hash = opts.password !== undefined ? await hashPassword(opts.password) : null;
    const userId = this.userIdOf(localpart);
    return transaction(this.store.db, () => {
      // Checked again: another registration may have taken the name while we hashed.
      if (this.store.getUser(userId)) throw fail.userInUse('User ID already taken.');
      this.store.insertUser(userId, hash, opts.admin === true, opts.displayname ?? localpart, this.clock.now());
      return this.newSession(userId, opts.deviceId);
    });
  }

  async login(userIdOrLocalpart: string, password: string, deviceId?: string): Promise<Session> {
    const userId = userIdOrLocalpart.startsWith('@')
      ? userIdOrLocalpart
      : this.userIdOf(userIdOrLocalpart.toLowerCase());
    const user = this.store.getUser(userId);
    if (!user?.password_hash || !(await verifyPassword(password, user.password_hash))) {
      throw fail.forbidden('Invalid username or password');
    }
    return transaction(this.store.db, () => this.newSession(userId, deviceId));
  }

  logout(token: string): void {
    this.store.deleteToken(token);
  }

  logoutAll(userId: string): void {
    this.store.deleteUserTokens(userId);
  }

  issueOpenidToken(userId: string): { token: string; expiresInSeconds: number } {
    const now = this.clock.now();
    const token = randomToken(32);
    this.store.pruneOpenid(now);
    this.store.insertOpenid(token, userId, now + OPENID_TTL_MS);
    return { token, expiresInSeconds: OPENID_TTL_MS / 1000 };
  }

  openidUser(token: string): string | undefined {
    return this.store.getOpenid(token, this.clock.now());
  }

  newNonce(): string {
    const now = this.clock.now();
    for (const [nonce, issued] of this.nonces) {
      if (now - issued > NONCE_TTL_MS || this.nonces.size > MAX_NONCES) this.nonces.delete(nonce);
    }
    const nonce = randomToken(24);
    this.nonces.set(nonce, now);
    return nonce;
  }

  /** Consumes the nonce (single use); false when unknown or expired. */
  takeNonce(nonce: string): boolean {
    const issued = this.nonces.get(nonce);
    if (issued === undefined) return false;
    this.nonces.delete(nonce);
    return this.clock.now() - issued <= NONCE_TTL_MS;
  }

  private newSession(userId: string, deviceId?: string): Session {
    const accessToken = newAccessToken();
    const device = deviceId ?? newDeviceId();
    this.store.insertToken(accessToken, userId, device, this.clock.now());
    return { userId, accessToken, deviceId: device };
  }

  private generatedLocalpart(): string {
    for (;;) {
      const candidate = `u${randomBytes(6).toString('hex')}`;
      if (!this.store.getUser(this.userIdOf(candidate))) return candidate;
    }
  }
}

/** The hex HMAC-SHA1 Synapse's shared-secret registration expects. */
export function registrationMac(
  secret: string,
  fields: { nonce: string; username: string; password: string; admin: boolean; userType?: string },
): string {
  const parts = [fields.nonce, fields.username, fields.password, fields.admin ? 'admin' : 'notadmin'];
  if (fields.userType !== undefined) parts.push(fields.userType);
  return createHmac('sha1', secret).update(parts.join('\0'), 'utf8').digest('hex');
}

/** Constant-time comparison of two hex MACs of possibly different lengths. */
export function macMatches(expectedHex: string, givenHex: string): boolean {
  const a = Buffer.from(expectedHex, 'utf8');
  const b = Buffer.from(givenHex, 'utf8');
  // Compare against a same-length buffer either way so timing does not reveal the length check.
  const equal = timingSafeEqual(a, b.length === a.length ? b : a);
  return equal && b.length === a.length;
}

async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, 32);
  return `scrypt$${salt.toString('base64')}$${key.toString('base64')}`;
}

async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, saltB64, keyB64] = stored.split('$');
  if (scheme !== 'scrypt' || !saltB64 || !keyB64) return false;
  const expected = Buffer.from(keyB64, 'base64');
  const key = await scryptAsync(password, Buffer.from(saltB64, 'base64'), expected.length);
  return timingSafeEqual(key, expected);
}
