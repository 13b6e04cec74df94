/**
 * Growing and shrinking a LUKS1 or LUKS2 volume (cryptsetup `resize`, Cinder's extend) with exact
 * payload accounting: the size asked for is the usable, decrypted size; the header is extra.
 *
 * New space reads as zeros: a file grown by ftruncate holds zeros, which are ciphertext of noise,
 * and a grown block device holds whatever was there, so every new payload byte is written as
 * encrypted zeros (with a `SectorCryptoOffload`, by worker threads in large pieces).
 *
 * Write order (docs/luks.md, "resize"): a LUKS2 segment changes size only in a header write
 * (both copies, seqid + 1, LUKS2 spec 2.4), after the zeros are durable when growing and before
 * the file is cut when shrinking. A dynamic segment is pinned to its old size by a header write
 * first, so a crash in the middle leaves the old size; the last header write makes it dynamic
 * again. LUKS1 has no size field (its payload is the rest of the device), so the file size is the
 * volume size.
 *
 * @example
 * const r = await resizeLuks(file, { payloadSize: 2 * GiB, key });   // key: only to grow
 */
import type { BlockDevice } from '../block-device.js';
import { EncryptedDevice, type SectorCryptoOffload } from '../devices/encrypted-device.js';
import { InsufficientSpaceError, InvalidArgumentError, ReadOnlyDeviceError, ReadOnlyVolumeError, ShrinkRefusedError, WrongPassphraseError } from '../errors.js';
import type { Luks2Metadata } from '../formats/luks2/metadata.js';
import { VolumeKey } from '../secret.js';
import { readLuks2Headers, writeLuks2Headers } from './luks2-io.js';
import { LuksVolume } from './volume.js';

/** A device that can change size (a regular file, a memory device). */
export interface ResizableDevice extends BlockDevice {
  resize(size: number): Promise<void> | void;
}

export function isResizable(device: BlockDevice): device is ResizableDevice {
  return device.capabilities.resize && typeof (device as Partial<ResizableDevice>).resize === 'function';
}

export interface ResizeOptions {
  /** The usable (decrypted) size wanted, in bytes: a multiple of the encryption sector size. */
  payloadSize: number;
  /** Detached header (cryptsetup --header). */
  headerDevice?: BlockDevice;
  /** The volume key: needed to grow (the new space is written as encrypted zeros). Not kept. */
  key?: VolumeKey;
  /** Allow a smaller size (the cut-off payload is lost). */
  allowTruncate?: boolean;
  /** Encrypts the zeros elsewhere (a worker pool's `sectorCrypto`); closed by the caller. */
  cryptoOffload?: SectorCryptoOffload;
}

/** What a resize does, decided before anything is written. */
export interface ResizePlan {
  version: 1 | 2;
  /** How the size is stored: LUKS1 (none), a LUKS2 dynamic segment, or a fixed one. */
  segment: 'luks1' | 'dynamic' | 'fixed';
  dataOffset: number;
  oldPayloadSize: number;
  newPayloadSize: number;
  oldDeviceSize: number;
  /** The data device size afterwards (a file is grown or cut to it). */
  newDeviceSize: number;
  /** Bytes written as encrypted zeros. */
  zeroBytes: number;
}

/** Pieces of encrypted zeros in flight at once, and their size. */
const ZERO_PIECE = 4 << 20;
const ZERO_PARALLEL = 4;

/**
 * Decides the resize of an opened volume: sizes, what the header and the device need, and the
 * refusals (typed, nothing written): shrinking without `allowTruncate` (ShrinkRefusedError), a
 * size that is not whole sectors (InvalidArgumentError), a block device too small
 * (InsufficientSpaceError), a fenced volume (ReadOnlyVolumeError).
 */
export function planResize(volume: LuksVolume, payloadSize: number, options: { allowTruncate?: boolean } = {}): ResizePlan {
  const reason = volume.readOnlyReason;
  if (reason !== undefined) throw new ReadOnlyVolumeError(reason);
  const data = volume.dataDevice;
  const ss = volume.sectorSize;
  if (!Number.isSafeInteger(payloadSize) || payloadSize <= 0) throw new InvalidArgumentError(`Size ${payloadSize} is not a positive number of bytes.`);
  if (payloadSize % ss !== 0) throw new InvalidArgumentError(`Size ${payloadSize} is not a multiple of the ${ss}-byte encryption sector.`);
  const dataOffset = volume.dataOffset;
  const oldPayloadSize = volume.payloadSize;
  let segment: ResizePlan['segment'] = 'luks1';
  if (volume.version === 2) segment = dataSegmentOf((volume.dumpJson() as { metadata: Luks2Metadata }).metadata).size === 'dynamic' ? 'dynamic' : 'fixed';
  if (payloadSize < oldPayloadSize && !options.allowTruncate) {
    throw new ShrinkRefusedError(
      `Refusing to shrink the volume from ${oldPayloadSize} to ${payloadSize} bytes: the data past the new end would be lost. Use --allow-truncate.`,
    );
  }
  const needed = dataOffset + payloadSize;
  const oldDeviceSize = data.size;
  let newDeviceSize = oldDeviceSize;
  if (isResizable(data) && !data.readOnly) {
    if (needed > oldDeviceSize) newDeviceSize = needed;
    // The file follows the volume when its size is the volume's size (always for LUKS1 and dynamic).
    else if (needed < oldDeviceSize && (segment !== 'fixed' || oldDeviceSize === dataOffset + oldPayloadSize)) newDeviceSize = needed;
  } else {
    if (needed > oldDeviceSize) throw new InsufficientSpaceError(`The ${oldDeviceSize}-byte device cannot hold ${payloadSize} bytes after the ${dataOffset}-byte header.`);
    if (segment !== 'fixed' && payloadSize !== oldPayloadSize) {
      throw new InvalidArgumentError(
        `A ${segment === 'luks1' ? 'LUKS1' : 'dynamic LUKS2'} volume on a device that cannot change size always spans the device (${oldPayloadSize} bytes).`,
      );
    }
  }
  return {
    version: volume.version,
    segment,
    dataOffset,
    oldPayloadSize,
    newPayloadSize: payloadSize,
    oldDeviceSize,
    newDeviceSize,
    zeroBytes: Math.max(0, payloadSize - oldPayloadSize),
  };
}

/** The crypt data segment (LuksVolume already refused volumes with several). */
function dataSegmentOf(meta: Luks2Metadata): Luks2Metadata['segments'][string] {
  const segments = Object.values(meta.segments).filter((s) => s.type === 'crypt' && !s.flags?.some((f) => f.startsWith('backup-')));
  if (segments.length !== 1) throw new InvalidArgumentError('The LUKS2 volume does not have exactly one data segment.');
  return segments[0]!;
}

/** Sets the size of the LUKS2 crypt data segment ("dynamic" or bytes) in both header copies. */
async function writeSegmentSize(header: BlockDevice, data: BlockDevice, detached: boolean, size: 'dynamic' | number): Promise<void> {
  const { state } = await readLuks2Headers(header, detached ? undefined : data.size);
  dataSegmentOf(state.metadata).size = size === 'dynamic' ? 'dynamic' : String(size);
  await writeLuks2Headers(header, state);
}

/** Writes encrypted zeros over plaintext `[from, to)` of `plain`, several large pieces at a time. */
export async function writeEncryptedZeros(plain: EncryptedDevice, from: number, to: number): Promise<void> {
  const buffers = Array.from({ length: ZERO_PARALLEL }, () => new Uint8Array(new SharedArrayBuffer(ZERO_PIECE)));
  let next = from;
  const worker = async (buf: Uint8Array): Promise<void> => {
    while (next < to) {
      const at = next;
      const len = Math.min(ZERO_PIECE, to - at);
      next += len;
      const piece = buf.subarray(0, len);
      piece.fill(0); // the previous piece left ciphertext here
      await plain.writeConsuming(piece, at);
    }
  };
  await Promise.all(buffers.map(worker));
}

/**
 * Grows or shrinks a LUKS volume to `options.payloadSize` usable bytes. Growing needs the volume
 * key (checked against the header's digest first). Returns the plan it carried out.
 */
export async function resizeLuks(data: BlockDevice, options: ResizeOptions): Promise<ResizePlan> {
  const header = options.headerDevice ?? data;
  const detached = header !== data;
  if (data.readOnly || header.readOnly) throw new ReadOnlyDeviceError('Cannot resize a volume opened read-only.');
  // Inspect read-only: a refusal must not even repair a stale LUKS2 copy (header writes go through luks2-io).
  const volume = await LuksVolume.open(data, { readOnly: true, ...(detached ? { headerDevice: header } : {}) });
  const plan = planResize(volume, options.payloadSize, options.allowTruncate !== undefined ? { allowTruncate: options.allowTruncate } : {});
  const { segment } = plan;
  if (plan.newPayloadSize === plan.oldPayloadSize && plan.newDeviceSize === plan.oldDeviceSize) return plan;
  if (plan.newPayloadSize > plan.oldPayloadSize) {
    const key = options.key;
    if (!key) throw new InvalidArgumentError('Growing a volume needs its key: the new space is written as encrypted zeros.');
    if (!(await volume.verifyVolumeKey(key))) throw new WrongPassphraseError('The key does not match the volume.');
    // Pin a dynamic segment to its old size, so a crash before the last header write keeps it.
    if (segment === 'dynamic') await writeSegmentSize(header, data, detached, plan.oldPayloadSize);
    if (plan.newDeviceSize > data.size) await (data as ResizableDevice).resize(plan.newDeviceSize);
    const plain = EncryptedDevice.open(
      data,
      { ...encryptionParamsOf(volume), payloadSize: plan.newPayloadSize },
      VolumeKey.copyOf(key.expose()),
      options.cryptoOffload ? { cryptoOffload: wrapOffload(options.cryptoOffload) } : {},
    );
    try {
      await writeEncryptedZeros(plain, plan.oldPayloadSize, plan.newPayloadSize);
      await plain.flush();
    } finally {
      await plain.close();
    }
    if (segment !== 'luks1') await writeSegmentSize(header, data, detached, segment === 'dynamic' ? 'dynamic' : plan.newPayloadSize);
    return plan;
  }
  // Shrinking (or only cutting a file that had room past a fixed segment).
  if (segment === 'fixed' && plan.newPayloadSize !== plan.oldPayloadSize) await writeSegmentSize(header, data, detached, plan.newPayloadSize);
  if (segment === 'dynamic' && plan.newPayloadSize < plan.oldPayloadSize) await writeSegmentSize(header, data, detached, plan.newPayloadSize);
  if (plan.newDeviceSize !== data.size) {
    await (data as ResizableDevice).resize(plan.newDeviceSize);
    await data.flush();
  }
  if (segment === 'dynamic' && plan.newPayloadSize < plan.oldPayloadSize) await writeSegmentSize(header, data, detached, 'dynamic');
  return plan;
}

function encryptionParamsOf(volume: LuksVolume): { encryption: string; keyBytes: number; sectorSize: number; ivTweak: number; dataOffset: number } {
  return { encryption: volume.encryption, keyBytes: volume.keyBytes, sectorSize: volume.sectorSize, ivTweak: volume.ivTweak, dataOffset: volume.dataOffset };
}

/** The caller owns the offload: the view's close() must not close it. */
function wrapOffload(offload: SectorCryptoOffload): SectorCryptoOffload {
  const wrapped: SectorCryptoOffload = { decryptInPlace: (d, iv) => offload.decryptInPlace(d, iv), close: async () => {} };
  if (offload.encryptInPlace) wrapped.encryptInPlace = (d, iv) => offload.encryptInPlace!(d, iv);
  if (offload.encryptAndWrite) wrapped.encryptAndWrite = (d, iv, fd, pos) => offload.encryptAndWrite!(d, iv, fd, pos);
  if (offload.readAndDecrypt) wrapped.readAndDecrypt = (d, iv, fd, pos) => offload.readAndDecrypt!(d, iv, fd, pos);
  return wrapped;
}

