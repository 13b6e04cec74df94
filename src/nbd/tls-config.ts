/**
 * TLS credentials for the NBD server, in the layouts other NBD tools use:
 * - x509 like qemu-nbd `--tls-creds`: a directory with `ca-cert.pem`, `server-cert.pem`,
 *   `server-key.pem` (the CA is needed only to verify client certificates);
 * - PSK like nbdkit `--tls-psk` / GnuTLS `psktool`: a file of `username:hexkey` lines.
 *
 * Example: `const creds = await loadTlsCredentials({ certDir: '/etc/brickcrypt/tls' });`
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { SecretBytes } from '../secret.js';

export interface NbdTlsOptions {
  /** Directory with ca-cert.pem (optional), server-cert.pem and server-key.pem. */
  certDir?: string;
  /** Require and verify a client certificate signed by ca-cert.pem. */
  verifyPeer?: boolean;
  /** PSK file of `username:hexkey` lines. */
  pskFile?: string;
}

export type TlsCredentials =
  | { kind: 'x509'; cert: Buffer; key: SecretBytes; ca?: Buffer; verifyPeer: boolean }
  | { kind: 'psk'; keys: Map<string, SecretBytes> };

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await fsp.readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InvalidArgumentError(`Cannot read ${path}: ${(err as Error).message}`);
  }
}

/** Parses a PSK file (`username:hexkey` per line, `#` comments and blank lines ignored). */
export function parsePskFile(text: string): Map<string, SecretBytes> {
  const keys = new Map<string, SecretBytes>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
      throw new InvalidArgumentError(`PSK file line ${i + 1}: expected 'username:hexkey'.`);
    }
    keys.set(user, new SecretBytes(new Uint8Array(Buffer.from(hex, 'hex'))));
  });
  if (keys.size === 0) throw new InvalidArgumentError('PSK file holds no keys.');
  return keys;
}

/** Reads the credentials named by `options`; PSK wins when both are given. */
export async function loadTlsCredentials(options: NbdTlsOptions): Promise<TlsCredentials> {
  if (options.pskFile) {
    const raw = await readOptional(options.pskFile);
    if (!raw) throw new NotFoundError(`PSK file ${options.pskFile} does not exist.`);
    try {
      return { kind: 'psk', keys: parsePskFile(raw.toString('utf8')) };
    } finally {
      raw.fill(0);
    }
  }
  if (!options.certDir) throw new InvalidArgumentError('TLS needs a certificate directory or a PSK file.');
  const cert = await readOptional(join(options.certDir, 'server-cert.pem'));
  const key = await readOptional(join(options.certDir, 'server-key.pem'));
  const ca = await readOptional(join(options.certDir, 'ca-cert.pem'));
  if (!cert || !key) throw new NotFoundError(`${options.certDir} must hold server-cert.pem and server-key.pem.`);
  const verifyPeer = options.verifyPeer === true;
  if (verifyPeer && !ca) throw new NotFoundError(`Client certificate verification needs ${join(options.certDir, 'ca-cert.pem')}.`);
  const creds: TlsCredentials = { kind: 'x509', cert, key: new SecretBytes(new Uint8Array(key)), verifyPeer };
  key.fill(0);
  if (ca) creds.ca = ca;
  return creds;
}

/** Wipes the private key / PSKs. */
export function wipeTlsCredentials(creds: TlsCredentials): void {
  if (creds.kind === 'x509') creds.key.wipe();
  else for (const k of creds.keys.values()) k.wipe();
}
