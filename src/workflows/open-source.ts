/**
 * Opens any supported image as a plaintext pipeline source: raw, qcow2, a LUKS1/LUKS2
 * volume (unlocked; the pipeline decrypts on the worker pool), or a plain dm-crypt volume
 * described by its parameters. The format is found by content (`detectFormat`), never by the
 * file name; plain volumes have no header, so only the caller can say a source is one.
 */
import type { BlockDevice } from '../block-device.js';
import { InvalidArgumentError, UnknownFormatError, WrongPassphraseError } from '../errors.js';
import type { Passphrase, VolumeKey } from '../secret.js';
import { FileDevice } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { openImage } from '../images/open-image.js';
import { Qcow2Device } from '../images/qcow2-device.js';
import { LuksVolume } from '../luks/volume.js';
import { plainGeometry, type PlainParams } from '../plain/plain-volume.js';
import type { PipelineSource } from './pipeline.js';
import type { CryptoPool } from './worker-pool.js';

export type ImageFormat = 'raw' | 'qcow2' | 'luks1' | 'luks2';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2', 'luks1', 'luks2'];

/** Formats a source can have: the image formats, and plain dm-crypt (no header, so never detected). */
export type SourceFormat = ImageFormat | 'plain';

/** Supplies a passphrase only when a LUKS volume needs one. */
export type PassphraseSource = () => Promise<Passphrase>;

/** A plain dm-crypt source: its parameters and where its volume key comes from (asked once). */
export interface PlainSource {
  params: PlainParams;
  key: () => Promise<VolumeKey>;
}

export interface OpenedSource {
  path: string;
  format: SourceFormat;
  /** Plaintext (virtual) size. */
  size: number;
  source: PipelineSource;
  /** LUKS sources: keyslot that opened, time spent in the KDF. */
  keyslot?: number;
  kdfSeconds: number;
  /** Closes the files and drops the source cipher from the pool. */
  close(): Promise<void>;
}

/** Maps `detectFormat`'s answer onto the formats this workflow handles. */
export function normaliseFormat(detected: string): ImageFormat {
  if ((IMAGE_FORMATS as readonly string[]).includes(detected)) return detected as ImageFormat;
  throw new UnknownFormatError(`Images in ${detected} format cannot be converted.`);
}

/**
 * Opens `path` read-only. `expected` (from --src-format) must agree with the content; the
 * generic 'luks' accepts either version. 'plain' needs `plain` (parameters and key). With
 * `device`, that already open device is the image (e.g. one in an image service) and `path`
 * only names it; the caller keeps and closes the device.
 */
export async function openSource(
  path: string,
  options: {
    pool: CryptoPool;
    expected?: ImageFormat | 'luks' | 'plain';
    passphrase?: PassphraseSource;
    /** Ask `passphrase` again after a wrong one, up to this many tries in all (a typed passphrase; default 1). */
    passphraseTries?: number;
    /** Told of each wrong passphrase that is asked again. */
    onWrongPassphrase?: () => void;
    plain?: PlainSource;
    device?: BlockDevice;
  },
): Promise<OpenedSource> {
  const given = options.device;
  const file: BlockDevice = given ?? (await FileDevice.open(path, { readOnly: true }));
  let closeAll: () => Promise<void> = () => (given ? Promise.resolve() : file.close());
  try {
    if (options.expected === 'plain' || options.plain) {
      if (!options.plain) throw new InvalidArgumentError(`${path}: a plain source needs its parameters and key.`);
      const opened = await openPlainSource(path, file, options.pool, options.plain);
      closeAll = opened.close;
      return opened;
    }
    const format = normaliseFormat(await detectFormat(file));
    const expected = options.expected;
    if (expected && expected !== format && !(expected === 'luks' && format.startsWith('luks'))) {
      // Content decides: a mismatch means the user is about to convert the wrong thing.
      throw new InvalidArgumentError(`${path} holds ${format} data, not ${expected}.`);
    }
    if (format === 'raw') {
      return { path, format, size: file.size, source: { device: file, base: 0, size: file.size }, kdfSeconds: 0, close: closeAll };
    }
    if (format === 'qcow2' && given) {
      const device = await Qcow2Device.open(given);
      closeAll = () => device.close();
      return { path, format, size: device.size, source: { device, base: 0, size: device.size }, kdfSeconds: 0, close: closeAll };
    }
    if (format === 'qcow2') {
      await file.close();
      const image = await openImage(path, { format: 'qcow2', readOnly: true });
      closeAll = () => image.close();
      const device: BlockDevice = image.device;
      return { path, format, size: device.size, source: { device, base: 0, size: device.size }, kdfSeconds: 0, close: closeAll };
    }
    const volume = await LuksVolume.open(file, { readOnly: true });
    // Refused before any passphrase is asked: the payload of a fenced volume is never read.
    volume.assertPayloadAccess();
    if (!options.passphrase) throw new InvalidArgumentError(`${path} is a LUKS volume: a source passphrase is needed.`);
    const tries = Math.max(1, options.passphraseTries ?? 1);
    let unlocked;
    let kdfSeconds = 0;
    for (let attempt = 1; ; attempt++) {
      const passphrase = await options.passphrase();
      const t0 = performance.now();
      try {
        unlocked = await volume.unlock(passphrase);
        kdfSeconds += (performance.now() - t0) / 1000;
        break;
      } catch (err) {
        if (!(err instanceof WrongPassphraseError) || attempt >= tries) throw err;
        options.onWrongPassphrase?.();
      } finally {
        passphrase.wipe();
      }
    }
    let cipher: number;
    try {
      cipher = options.pool.addCipher(
        { encryption: volume.encryption, keyBytes: volume.keyBytes, sectorSize: volume.sectorSize },
        unlocked.key.expose(),
      );
    } finally {
      unlocked.key.wipe();
    }
    closeAll = async () => {
      options.pool.dropCipher(cipher);
      if (!given) await file.close();
    };
    // A data device ending inside a sector exposes whole sectors only, as dm-crypt does.
    const size = Math.floor(volume.payloadSize / volume.sectorSize) * volume.sectorSize;
    return {
      path,
      format,
      size,
      source: { device: file, base: volume.dataOffset, size, decrypt: { cipher, ivTweak: volume.ivTweak } },
      keyslot: unlocked.keyslot,
      kdfSeconds,
      close: closeAll,
    };
  } catch (err) {
    await closeAll().catch(() => {});
    throw err;
  }
}

/**
 * A plain dm-crypt source on `file`. A file whose first bytes are a LUKS or qcow2 header is
 * refused when the ciphertext would start there: that is not a plain volume, and reading it
 * as one would convert noise (cryptsetup warns about such signatures before opening).
 */
async function openPlainSource(path: string, file: BlockDevice, pool: CryptoPool, plain: PlainSource): Promise<OpenedSource> {
  const geometry = plainGeometry(plain.params, file.size);
  if (geometry.dataOffset === 0) {
    const detected = await detectFormat(file);
    if (detected !== 'raw') throw new InvalidArgumentError(`${path} holds ${detected} data, not a plain dm-crypt volume.`);
  }
  const key = await plain.key();
  let cipher: number;
  try {
    cipher = pool.addCipher({ encryption: geometry.encryption, keyBytes: geometry.keyBytes, sectorSize: geometry.sectorSize }, key.expose());
  } finally {
    key.wipe();
  }
  const size = Math.floor(geometry.payloadSize / geometry.sectorSize) * geometry.sectorSize;
  return {
    path,
    format: 'plain',
    size,
    source: { device: file, base: geometry.dataOffset, size, decrypt: { cipher, ivTweak: geometry.ivTweak } },
    kdfSeconds: 0,
    close: async () => {
      pool.dropCipher(cipher);
      await file.close();
    },
  };
}
