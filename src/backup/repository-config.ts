/**
 * The repository config object (`config`), pure encode/decode/validate. It is written once by
 * `backup init` and names the backup key by its key-manager id (the key itself is never stored).
 * It is JSON and not secret; `checksum` (SHA-256 of the canonical JSON without it) catches any
 * changed byte as an integrity error, and `keyCheck` tells a wrong key from a damaged object.
 *
 * | field         | meaning                                                             |
 * |---------------|---------------------------------------------------------------------|
 * | format        | `brickcrypt-backup-repository`                                      |
 * | version       | 1                                                                   |
 * | id            | repository id (UUID): the HKDF salt of every subkey                 |
 * | created       | ISO 8601                                                            |
 * | keyId         | the backup key's id in the key manager                              |
 * | chunkSize     | bytes per chunk (a multiple of 4096)                                |
 * | keyCheck      | HMAC-SHA256(key-check subkey, "key-check:" + id), hex               |
 * | checksum      | SHA-256 of the JSON of all the fields above, in this order, hex     |
 */
import { createHash } from 'node:crypto';
import { IntegrityError } from '../errors.js';

export const CONFIG_FORMAT = 'brickcrypt-backup-repository';
export const CONFIG_VERSION = 1;
export const CHUNK_ALIGNMENT = 4096;
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

export interface RepositoryConfig {
  format: typeof CONFIG_FORMAT;
  version: typeof CONFIG_VERSION;
  id: string;
  created: string;
  keyId: string;
  chunkSize: number;
  keyCheck: string;
}

function canonical(c: RepositoryConfig): string {
  return JSON.stringify({ format: c.format, version: c.version, id: c.id, created: c.created, keyId: c.keyId, chunkSize: c.chunkSize, keyCheck: c.keyCheck });
}

export function encodeRepositoryConfig(c: RepositoryConfig): Uint8Array {
  validateRepositoryConfig(c);
  const body = JSON.parse(canonical(c)) as Record<string, unknown>;
  body.checksum = createHash('sha256').update(canonical(c)).digest('hex');
  return Buffer.from(JSON.stringify(body, null, 2) + '\n', 'utf8');
}

/** Decodes and checks the checksum and every field; any problem is an IntegrityError. */
export function decodeRepositoryConfig(bytes: Uint8Array): RepositoryConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new IntegrityError('The repository config is not valid JSON (damaged).');
  }
  if (raw === null || typeof raw !== 'object') throw new IntegrityError('The repository config is not a JSON object.');
  const c = {
    format: raw.format,
    version: raw.version,
    id: raw.id,
    created: raw.created,
    keyId: raw.keyId,
    chunkSize: raw.chunkSize,
    keyCheck: raw.keyCheck,
  } as RepositoryConfig;
  const sum = createHash('sha256').update(canonical(c)).digest('hex');
  if (raw.checksum !== sum) throw new IntegrityError('The repository config does not match its checksum (damaged).');
  validateRepositoryConfig(c);
  return c;
}

export function validateRepositoryConfig(c: RepositoryConfig): void {
  const bad = (why: string): never => {
    throw new IntegrityError(`The repository config is invalid: ${why}.`);
  };
  if (c.format !== CONFIG_FORMAT) bad(`format is ${JSON.stringify(c.format)}`);
  if (c.version !== CONFIG_VERSION) bad(`version ${String(c.version)} is not supported`);
  if (typeof c.id !== 'string' || !/^[0-9a-f-]{36}$/.test(c.id)) bad('id is not a UUID');
  if (typeof c.created !== 'string' || Number.isNaN(Date.parse(c.created))) bad('created is not a date');
  if (typeof c.keyId !== 'string' || c.keyId === '') bad('keyId is empty');
  if (!Number.isSafeInteger(c.chunkSize) || c.chunkSize % CHUNK_ALIGNMENT !== 0 || c.chunkSize < MIN_CHUNK_SIZE || c.chunkSize > MAX_CHUNK_SIZE) {
    bad(`chunkSize ${String(c.chunkSize)} is not a multiple of ${CHUNK_ALIGNMENT} between ${MIN_CHUNK_SIZE} and ${MAX_CHUNK_SIZE}`);
  }
  if (typeof c.keyCheck !== 'string' || !/^[0-9a-f]{64}$/.test(c.keyCheck)) bad('keyCheck is not 32 bytes of hex');
}
