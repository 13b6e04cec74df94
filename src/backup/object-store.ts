/**
 * Where a backup repository keeps its objects: one small interface, one adapter per kind of store.
 *
 * | URI                                   | adapter                                      |
 * |---------------------------------------|----------------------------------------------|
 * | `file:DIR` (also `file://DIR`)        | a directory (src/backup/stores/file-store.ts) |
 * | `swift+http(s)://HOST:PORT/CONTAINER` | OpenStack Swift (stores/swift-store.ts)       |
 * | `s3://HOST:PORT/BUCKET` (`s3+https`)  | the S3 API (stores/s3-store.ts)               |
 *
 * Object names are `/`-separated paths of `[A-Za-z0-9._-]` segments (`config`, `chunks/ab/ab…`,
 * `manifests/ID`, `locks/ID`). Every adapter makes `put` atomic: a reader sees the whole object
 * or none (a file is renamed into place; Swift and S3 PUTs replace an object whole).
 */
import { InvalidArgumentError } from '../errors.js';

export interface ObjectStore {
  /** The URI, for messages (never with credentials). */
  readonly uri: string;
  /** How many requests the adapter runs well in parallel. */
  readonly parallelism: number;
  /** Stores `data` as `name`, replacing any object of that name, atomically. */
  put(name: string, data: Uint8Array): Promise<void>;
  /** The object's bytes; NotFoundError when there is none. */
  get(name: string): Promise<Uint8Array>;
  /**
   * Optional: reads the object into `into` (which must be large enough) and returns its length;
   * NotFoundError when there is none, RangeError when it does not fit. Saves an allocation and a
   * copy per chunk on restore.
   */
  getInto?(name: string, into: Uint8Array): Promise<number>;
  exists(name: string): Promise<boolean>;
  /** Removes the object; an absent one is not an error. */
  delete(name: string): Promise<void>;
  /** Names of every object whose name starts with `prefix`, in no particular order. */
  list(prefix: string): Promise<string[]>;
  /**
   * Makes every completed `put` durable. Network stores are durable when a PUT is acknowledged and
   * have nothing to do; the file store batches chunk files and syncs them here (and before any put
   * outside `chunks/`, so a manifest never becomes durable before its chunks).
   */
  sync?(): Promise<void>;
  close(): Promise<void>;
}

const NAME = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** Refuses names outside the repository's alphabet (no `..`, no absolute paths). */
export function checkObjectName(name: string): void {
  if (!NAME.test(name) || name.split('/').some((s) => s === '.' || s === '..')) {
    throw new InvalidArgumentError(`Invalid object name ${JSON.stringify(name)}.`);
  }
}

export type ParsedStoreUri =
  | { kind: 'file'; path: string }
  | { kind: 'swift'; endpoint: string; container: string }
  | { kind: 's3'; endpoint: string; bucket: string };

/**
 * Parses a repository URI (no I/O).
 *
 * @example
 * parseStoreUri('swift+http://127.0.0.1:8080/backups') // { kind: 'swift', endpoint: 'http://127.0.0.1:8080', container: 'backups' }
 */
export function parseStoreUri(uri: string): ParsedStoreUri {
  if (uri.startsWith('file:')) {
    let path = uri.slice('file:'.length);
    if (path.startsWith('//')) path = path.slice(2);
    if (path === '') throw new InvalidArgumentError(`--repo: '${uri}' names no directory.`);
    return { kind: 'file', path };
  }
  const m = /^(swift\+https?|s3|s3\+https?):\/\/([^/]+)\/([^/]+)\/?$/.exec(uri);
  if (m) {
    const [, scheme, host, bucket] = m as unknown as [string, string, string, string];
    if (scheme.startsWith('swift')) return { kind: 'swift', endpoint: `${scheme.slice('swift+'.length)}://${host}`, container: decodeURIComponent(bucket) };
    const proto = scheme === 's3+https' ? 'https' : 'http';
    return { kind: 's3', endpoint: `${proto}://${host}`, bucket: decodeURIComponent(bucket) };
  }
  throw new InvalidArgumentError(`--repo: '${uri}' is not one of file:DIR, swift+http(s)://HOST:PORT/CONTAINER, s3://HOST:PORT/BUCKET.`);
}

/** Opens the store a URI names; network adapters are loaded only when used. */
export async function openObjectStore(uri: string, env: NodeJS.ProcessEnv = process.env): Promise<ObjectStore> {
  const p = parseStoreUri(uri);
  switch (p.kind) {
    case 'file': {
      const { FileObjectStore } = await import('./stores/file-store.js');
      return FileObjectStore.open(p.path, uri);
    }
    case 'swift': {
      const { SwiftObjectStore } = await import('./stores/swift-store.js');
      return SwiftObjectStore.fromEnvironment(p.endpoint, p.container, uri, env);
    }
    case 's3': {
      const { S3ObjectStore } = await import('./stores/s3-store.js');
      return S3ObjectStore.fromEnvironment(p.endpoint, p.bucket, uri, env);
    }
  }
}
