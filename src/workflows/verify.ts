/**
 * Compares the plaintext views of two images of any supported formats (raw, qcow2, LUKS1,
 * LUKS2). The shorter image reads as zeros past its end, so a LUKS copy padded to a whole
 * sector still equals its source; any other difference is an `IntegrityError` naming the
 * first differing byte offset.
 *
 * @example
 * await verify({ a: 'disk.raw', b: 'disk.luks', bPassphrase: async () => Passphrase.fromString('pw') });
 */
import { IntegrityError } from '../errors.js';
import { compareData } from './pipeline.js';
import { openSource, type ImageFormat, type OpenedSource, type PassphraseSource, type PlainSource, type SourceFormat } from './open-source.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';

export interface VerifyOptions {
  a: string;
  b: string;
  aPassphrase?: PassphraseSource;
  bPassphrase?: PassphraseSource;
  /** Either side may be a plain dm-crypt volume: its parameters and key. */
  aPlain?: PlainSource;
  bPlain?: PlainSource;
  /** Tries for typed passphrases (cryptsetup's --tries); default 1. */
  aPassphraseTries?: number;
  bPassphraseTries?: number;
  onWrongPassphrase?: () => void;
  /** Expected formats, checked against the content. */
  aFormat?: ImageFormat | 'luks';
  bFormat?: ImageFormat | 'luks';
  signal?: AbortSignal;
  onProgress?: (progress: { bytes: number; total: number }) => void;
  workers?: number;
  chunkBytes?: number;
}

export interface VerifyReport {
  equal: true;
  a: { path: string; format: SourceFormat; size: number };
  b: { path: string; format: SourceFormat; size: number };
  /** Bytes compared (the larger size). */
  bytes: number;
  seconds: number;
}

/** Resolves when the plaintexts are equal; throws `IntegrityError` at the first difference. */
export async function verify(options: VerifyOptions): Promise<VerifyReport> {
  const started = performance.now();
  const pool = CryptoPool.create(options.workers ?? defaultWorkerCount());
  let a: OpenedSource | undefined;
  let b: OpenedSource | undefined;
  try {
    a = await openSource(options.a, { pool, passphrase: options.aPassphrase, ...(options.aPassphraseTries ? { passphraseTries: options.aPassphraseTries } : {}), ...(options.onWrongPassphrase ? { onWrongPassphrase: options.onWrongPassphrase } : {}), ...(options.aFormat ? { expected: options.aFormat } : {}), ...(options.aPlain ? { plain: options.aPlain } : {}) });
    b = await openSource(options.b, { pool, passphrase: options.bPassphrase, ...(options.bPassphraseTries ? { passphraseTries: options.bPassphraseTries } : {}), ...(options.onWrongPassphrase ? { onWrongPassphrase: options.onWrongPassphrase } : {}), ...(options.bFormat ? { expected: options.bFormat } : {}), ...(options.bPlain ? { plain: options.bPlain } : {}) });
    const length = Math.max(a.size, b.size);
    const diff = await compareData(a.source, b.source, length, {
      pool,
      chunkBytes: options.chunkBytes,
      signal: options.signal,
      onProgress: (bytes) => options.onProgress?.({ bytes, total: length }),
    });
    if (diff >= 0) {
      const where = diff >= Math.min(a.size, b.size) ? ` (past the end of the ${a.size < b.size ? 'first' : 'second'} image, which reads as zeros)` : '';
      throw new IntegrityError(`Images differ at byte offset ${diff}${where}.`);
    }
    return {
      equal: true,
      a: { path: a.path, format: a.format, size: a.size },
      b: { path: b.path, format: b.format, size: b.size },
      bytes: length,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await a?.close().catch(() => {});
    await b?.close().catch(() => {});
    await pool.close();
  }
}
