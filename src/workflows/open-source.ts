/**
 * Opens any supported image as a plaintext pipeline source: raw, qcow2, or a LUKS1/LUKS2
 * volume (unlocked; the pipeline decrypts on the worker pool). The format is found by
 * content (`detectFormat`), never by the file name.
 */
import type { BlockDevice } from '../block-device.js';
import { InvalidArgumentError, UnknownFormatError } from '../errors.js';
import type { Passphrase } from '../secret.js';
import { FileDevice } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { openImage } from '../images/open-image.js';
import { Qcow2Device } from '../images/qcow2-device.js';
import { LuksVolume } from '../luks/volume.js';
import type { PipelineSource } from './pipeline.js';
import type { CryptoPool } from './worker-pool.js';

export type ImageFormat = 'raw' | 'qcow2' | 'luks1' | 'luks2';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2', 'luks1', 'luks2'];

/** Supplies a passphrase only when a LUKS volume needs one. */
export type PassphraseSource = () => Promise<Passphrase>;

export interface OpenedSource {
  path: string;
  format: ImageFormat;
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
 * generic 'luks' accepts either version. With `device`, that already open device is the
 * image (e.g. one in an image service) and `path` only names it; the caller keeps and
 * closes the device.
 */
export async function openSource(
  path: string,
  options: { pool: CryptoPool; expected?: ImageFormat | 'luks'; passphrase?: PassphraseSource; device?: BlockDevice },
): Promise<OpenedSource> {
  const given = options.device;
  const file: BlockDevice = given ?? (await FileDevice.open(path, { readOnly: true }));
  let closeAll: () => Promise<void> = () => (given ? Promise.resolve() : file.close());
  try {
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
    if (!options.passphrase) throw new InvalidArgumentError(`${path} is a LUKS volume: a source passphrase is needed.`);
    const passphrase = await options.passphrase();
    const t0 = performance.now();
    let unlocked;
    try {
      unlocked = await volume.unlock(passphrase);
    } finally {
      passphrase.wipe();
    }
    const kdfSeconds = (performance.now() - t0) / 1000;
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
