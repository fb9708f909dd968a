/**
 * HS256, the one JWT algorithm LiveKit uses between a server and its SFU, signed and checked
 * synchronously with node:crypto. The secret is imported once: createHmac with a raw secret
 * re-imports it on every call, which was most of the cost of a signature.
 */
import { createHmac, createSecretKey, type KeyObject } from 'node:crypto';

const HEADER = Buffer.from('{"alg":"HS256"}').toString('base64url');

export class Hs256 {
  private readonly key: KeyObject;

  constructor(secret: string) {
    this.key = createSecretKey(Buffer.from(secret, 'utf8'));
  }

  /** The raw signature of a JWT's signing input (`header.payload`, both base64url). */
  signature(signingInput: string): Buffer {
    return createHmac('sha256', this.key).update(signingInput).digest();
  }

  /** A compact JWT carrying `claims`. */
  sign(claims: Record<string, unknown>): string {
    const signingInput = `${HEADER}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
    return `${signingInput}.${this.signature(signingInput).toString('base64url')}`;
  }
}
