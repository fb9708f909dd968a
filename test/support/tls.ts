// Throwaway self-signed certificates for test servers on loopback (openssl, which every machine
// of this kind has).
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A key and certificate valid for 127.0.0.1 and localhost, written into `dir` (a fresh temp dir by default). */
export function makeSelfSignedCert(dir = mkdtempSync(join(tmpdir(), 'lastwill-cert-'))): {
  dir: string;
  keyFile: string;
  certFile: string;
} {
  const keyFile = join(dir, 'tls.key');
  const certFile = join(dir, 'tls.crt');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
    { stdio: 'ignore' },
  );
  return { dir, keyFile, certFile };
}
