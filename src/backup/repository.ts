/**
 * A backup repository on an `ObjectStore`: the config, chunks and manifests, sealed and opened
 * with the subkeys of the repository's backup key (src/backup/repository-keys.ts).
 *
 * | object                 | content                                                 |
 * |------------------------|---------------------------------------------------------|
 * | `config`               | repository-config.ts (JSON, checksummed, not secret)    |
 * | `chunks/XX/ID`         | sealed chunk; ID = HMAC of its plaintext, XX = ID[0..2] |
 * | `manifests/ID`         | sealed manifest of backup ID, written last              |
 * | `locks/ID`             | lock objects (src/backup/repository-lock.ts)            |
 */
import { randomUUID } from 'node:crypto';
import { AlreadyExistsError, IntegrityError, InvalidArgumentError, NotFoundError, WrongBackupKeyError } from '../errors.js';
import type { SecretBytes } from '../secret.js';
import type { ObjectStore } from './object-store.js';
import { decodeRepositoryConfig, encodeRepositoryConfig, CHUNK_ALIGNMENT, CONFIG_FORMAT, CONFIG_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, type RepositoryConfig } from './repository-config.js';
import { chunkIdAsync, chunkIdOf, deriveRepositoryKeys, importRepositoryKeys, keyCheckMatches, keyCheckOf, wipeRepositoryKeys, type RepositoryCryptoKeys, type RepositoryKeys } from './repository-keys.js';
import { openObject, openObjectAsync, sealObject, sealObjectAsync } from './sealed-object.js';
import { decodeManifest, encodeManifest, isBackupId, type BackupManifest } from './manifest.js';
import { SealPool } from './seal-pool.js';
import { copyBytes } from '../native-addon.js';

export const CONFIG_OBJECT = 'config';
export const chunkObjectName = (id: string): string => `chunks/${id.slice(0, 2)}/${id}`;
export const manifestObjectName = (id: string): string => `manifests/${id}`;

/** The default chunk size (see docs/backup-format.md, "Chunk size", for the measurement). */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;

/** Reads the config of the repository in `store`; NotFoundError when there is none. */
export async function readRepositoryConfig(store: ObjectStore): Promise<RepositoryConfig> {
  let bytes: Uint8Array;
  try {
    bytes = await store.get(CONFIG_OBJECT);
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`No backup repository at ${store.uri} (run 'brickcrypt backup init --repo ${store.uri}').`);
    throw err;
  }
  return decodeRepositoryConfig(bytes);
}

export class Repository {
  #crypto: Promise<RepositoryCryptoKeys> | undefined;

  private constructor(
    readonly store: ObjectStore,
    readonly config: RepositoryConfig,
    private readonly keys: RepositoryKeys,
  ) {}

  get id(): string {
    return this.config.id;
  }

  get chunkSize(): number {
    return this.config.chunkSize;
  }

  /** Writes a new repository's config; AlreadyExistsError when the store already holds one. */
  static async init(store: ObjectStore, backupKey: SecretBytes, keyId: string, chunkSize = DEFAULT_CHUNK_SIZE): Promise<Repository> {
    if (!Number.isSafeInteger(chunkSize) || chunkSize % CHUNK_ALIGNMENT !== 0 || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
      throw new InvalidArgumentError(`--chunk-size: ${chunkSize} is not a multiple of 4 KiB between 64 KiB and 64 MiB.`);
    }
    if (await store.exists(CONFIG_OBJECT)) throw new AlreadyExistsError(`${store.uri} already holds a backup repository.`);
    const id = randomUUID();
    const keys = deriveRepositoryKeys(backupKey, id);
    const config: RepositoryConfig = { format: CONFIG_FORMAT, version: CONFIG_VERSION, id, created: new Date().toISOString(), keyId, chunkSize, keyCheck: keyCheckOf(keys, id) };
    await store.put(CONFIG_OBJECT, encodeRepositoryConfig(config));
    return new Repository(store, config, keys);
  }

  /** Opens with the backup key; WrongBackupKeyError when it is not the repository's key. */
  static open(store: ObjectStore, config: RepositoryConfig, backupKey: SecretBytes): Repository {
    const keys = deriveRepositoryKeys(backupKey, config.id);
    if (!keyCheckMatches(keys, config.id, config.keyCheck)) {
      wipeRepositoryKeys(keys);
      throw new WrongBackupKeyError(`This key does not open the backup repository at ${store.uri} (it was created with key ${config.keyId}).`);
    }
    return new Repository(store, config, keys);
  }

  chunkId(plain: Uint8Array): string {
    return chunkIdOf(this.keys, plain);
  }

  /** Seals a chunk (the caller computed `id`); returns the stored size. */
  sealChunk(id: string, plain: Uint8Array): Uint8Array {
    return sealObject('chunk', id, plain, this.keys.seal).bytes;
  }

  /** The subkeys as WebCrypto keys: the data path hashes and seals on the thread pool. */
  #cryptoKeys(): Promise<RepositoryCryptoKeys> {
    this.#crypto ??= importRepositoryKeys(this.keys);
    return this.#crypto;
  }

  async chunkIdAsync(plain: Uint8Array): Promise<string> {
    return chunkIdAsync(await this.#cryptoKeys(), plain);
  }

  async sealChunkAsync(id: string, plain: Uint8Array): Promise<Uint8Array> {
    return (await sealObjectAsync('chunk', id, plain, (await this.#cryptoKeys()).seal)).bytes;
  }

  /** `openChunk` on the thread pool. */
  async openChunkAsync(id: string, sealed: Uint8Array): Promise<Uint8Array> {
    const keys = await this.#cryptoKeys();
    const plain = await openObjectAsync('chunk', id, sealed, keys.seal);
    if ((await chunkIdAsync(keys, plain)) !== id) throw new IntegrityError(`chunk ${id}: its content does not have this id.`);
    return plain;
  }

  async putSealedChunk(id: string, sealed: Uint8Array): Promise<void> {
    await this.store.put(chunkObjectName(id), sealed);
  }

  /** Opens a stored chunk and checks that its plaintext has the id it is stored under. */
  openChunk(id: string, sealed: Uint8Array): Uint8Array {
    const plain = openObject('chunk', id, sealed, this.keys.seal);
    if (this.chunkId(plain) !== id) throw new IntegrityError(`chunk ${id}: its content does not have this id.`);
    return plain;
  }

  /** Worker threads that hash, seal and open chunks with this repository's subkeys (the caller closes it). */
  openSealPool(size?: number): SealPool {
    return SealPool.create(this.keys, size);
  }

  /** The sealed object of chunk `id`, read into `into` (no copy when the store can read into memory). */
  async readSealedChunkInto(id: string, into: Uint8Array): Promise<Uint8Array> {
    const name = chunkObjectName(id);
    try {
      if (this.store.getInto) return into.subarray(0, await this.store.getInto(name, into));
      const bytes = await this.store.get(name);
      if (bytes.length > into.length) throw new IntegrityError(`chunk ${id}: ${bytes.length} bytes, more than a sealed chunk can have.`);
      copyBytes(into, 0, bytes);
      return into.subarray(0, bytes.length);
    } catch (err) {
      if (err instanceof NotFoundError) throw new IntegrityError(`chunk ${id} is missing from the repository.`);
      if (err instanceof RangeError) throw new IntegrityError(`chunk ${id}: larger than a sealed chunk can be.`);
      throw err;
    }
  }

  async getChunk(id: string): Promise<Uint8Array> {
    let sealed: Uint8Array;
    try {
      sealed = await this.store.get(chunkObjectName(id));
    } catch (err) {
      if (err instanceof NotFoundError) throw new IntegrityError(`chunk ${id} is missing from the repository.`);
      throw err;
    }
    return this.openChunkAsync(id, sealed);
  }

  /** Ids of every stored chunk. */
  async listChunks(): Promise<Set<string>> {
    const names = await this.store.list('chunks/');
    const ids = new Set<string>();
    for (const n of names) {
      const id = n.slice(n.lastIndexOf('/') + 1);
      if (/^[0-9a-f]{64}$/.test(id) && n === chunkObjectName(id)) ids.add(id);
    }
    return ids;
  }

  async deleteChunk(id: string): Promise<void> {
    await this.store.delete(chunkObjectName(id));
  }

  async putManifest(m: BackupManifest): Promise<void> {
    const sealed = sealObject('manifest', m.id, encodeManifest(m), this.keys.seal).bytes;
    await this.store.put(manifestObjectName(m.id), sealed);
  }

  async getManifest(id: string): Promise<BackupManifest> {
    if (!isBackupId(id)) throw new NotFoundError(`No backup ${JSON.stringify(id)} (a backup id looks like 20260101T120000Z-0123abcd).`);
    let sealed: Uint8Array;
    try {
      sealed = await this.store.get(manifestObjectName(id));
    } catch (err) {
      if (err instanceof NotFoundError) throw new NotFoundError(`No backup ${id} in ${this.store.uri}.`);
      throw err;
    }
    const m = decodeManifest(openObject('manifest', id, sealed, this.keys.seal), id);
    if (m.repository !== this.config.id) throw new IntegrityError(`manifest ${id} belongs to another repository.`);
    return m;
  }

  /** Backup ids, oldest first (ids start with their UTC time). */
  async listBackupIds(): Promise<string[]> {
    const names = await this.store.list('manifests/');
    return names.map((n) => n.slice('manifests/'.length)).filter(isBackupId).sort();
  }

  async deleteManifest(id: string): Promise<void> {
    await this.store.delete(manifestObjectName(id));
  }

  close(): void {
    wipeRepositoryKeys(this.keys);
  }
}
