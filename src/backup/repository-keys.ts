/**
 * The keys of one backup repository, all derived from its backup key (a 256-bit symmetric key kept
 * in the key manager, never a volume key) with HKDF-SHA256 (RFC 5869), salted with the repository id
 * so two repositories under one key still use unrelated subkeys:
 *
 * | info string                    | use                                                        |
 * |--------------------------------|------------------------------------------------------------|
 * | `brickcrypt-backup chunk-id`   | HMAC-SHA256 key: chunk id = HMAC(plaintext chunk)          |
 * | `brickcrypt-backup seal`       | AES-256-GCM key of every chunk and manifest object         |
 * | `brickcrypt-backup key-check`  | HMAC-SHA256 key of the config's key check                  |
 *
 * Chunk ids are keyed MACs, so an id reveals nothing about the content to anyone without the key
 * (a plain hash would let the store holder confirm guesses of a chunk's content).
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { SecretBytes } from '../secret.js';

export const BACKUP_KEY_BYTES = 32;

export interface RepositoryKeys {
  chunkId: SecretBytes;
  seal: SecretBytes;
  keyCheck: SecretBytes;
}

function derive(master: Uint8Array, repositoryId: string, info: string): SecretBytes {
  return new SecretBytes(new Uint8Array(hkdfSync('sha256', master, Buffer.from(repositoryId, 'utf8'), Buffer.from(info, 'utf8'), 32)));
}

/** Derives the three subkeys; the caller wipes them (`wipeRepositoryKeys`) and its master key. */
export function deriveRepositoryKeys(master: SecretBytes, repositoryId: string): RepositoryKeys {
  const bytes = master.expose();
  if (bytes.length !== BACKUP_KEY_BYTES) throw new InvalidArgumentError(`A backup key has ${BACKUP_KEY_BYTES} bytes, not ${bytes.length}.`);
  return {
    chunkId: derive(bytes, repositoryId, 'brickcrypt-backup chunk-id'),
    seal: derive(bytes, repositoryId, 'brickcrypt-backup seal'),
    keyCheck: derive(bytes, repositoryId, 'brickcrypt-backup key-check'),
  };
}

export function wipeRepositoryKeys(keys: RepositoryKeys): void {
  keys.chunkId.wipe();
  keys.seal.wipe();
  keys.keyCheck.wipe();
}

/** The id of a plaintext chunk: lowercase hex of HMAC-SHA256 under the chunk-id key. */
export function chunkIdOf(keys: RepositoryKeys, plain: Uint8Array): string {
  return createHmac('sha256', keys.chunkId.expose()).update(plain).digest('hex');
}

/** The key check stored in the config: HMAC-SHA256(key-check key, "key-check:" + repository id), hex. */
export function keyCheckOf(keys: RepositoryKeys, repositoryId: string): string {
  return createHmac('sha256', keys.keyCheck.expose()).update(`key-check:${repositoryId}`).digest('hex');
}

export function keyCheckMatches(keys: RepositoryKeys, repositoryId: string, expected: string): boolean {
  const a = Buffer.from(keyCheckOf(keys, repositoryId), 'hex');
  const b = Buffer.from(expected, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The chunk-id and seal subkeys as WebCrypto keys (non-extractable), for the parallel data path. */
export interface RepositoryCryptoKeys {
  chunkId: CryptoKey;
  seal: CryptoKey;
}

export async function importRepositoryKeys(keys: RepositoryKeys): Promise<RepositoryCryptoKeys> {
  const subtle = globalThis.crypto.subtle;
  const [chunkId, seal] = await Promise.all([
    subtle.importKey('raw', keys.chunkId.expose() as Uint8Array<ArrayBuffer>, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']),
    subtle.importKey('raw', keys.seal.expose() as Uint8Array<ArrayBuffer>, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']),
  ]);
  return { chunkId, seal };
}

/** `chunkIdOf` on WebCrypto's thread pool. */
export async function chunkIdAsync(keys: RepositoryCryptoKeys, plain: Uint8Array): Promise<string> {
  return Buffer.from(await globalThis.crypto.subtle.sign('HMAC', keys.chunkId, plain as Uint8Array<ArrayBuffer>)).toString('hex');
}
