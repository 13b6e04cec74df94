/**
 * Uploading a volume to an OpenStack Glance v2 image service in one streaming pass.
 *
 * - as-is (the default): the volume file's bytes unchanged. A LUKS volume becomes a raw/bare
 *   image whose key is a clone of the volume's key made inside the key manager (the caller
 *   never sees key bytes; a `creator` may do it), described by the properties Cinder sets on
 *   upload-to-image (`cinder_encryption_key_id`, `cinder_encryption_key_deletion_policy`)
 *   and by Glance's image-encryption properties (`os_encrypt_format`, `os_encrypt_cipher`,
 *   `os_encrypt_key_id`, `os_encrypt_key_deletion_policy`, `os_decrypt_size`), so the image
 *   and the volume can be deleted independently.
 * - decrypted: the plaintext of the volume (decrypted on the worker pool) as a raw image, or
 *   as a qcow2 image whose all-zero clusters stay unallocated (optionally deflate-compressed):
 *   a first pass over the volume finds the clusters with data (and their compressed lengths)
 *   so the tables can be sent before the data (`qcow2-stream-layout.ts`); no temporary file
 *   either way.
 *
 * While the bytes flow, their sha512 (Glance's `os_hash_value`) and, when asked, an image
 * signature (cursive's `img_signature*` properties, set once the data is in) are computed;
 * the hash Glance reports must equal ours. Data goes with `PUT .../file` or with the
 * interoperable `stage` + `import` (`glance-direct`).
 *
 * Failure or cancellation deletes the image (so no queued or half image stays) and the
 * cloned key.
 *
 * @example
 * const report = await uploadVolume({ volume: 'vol.luks', client, name: 'backup-1', keyManager, caller, volumeKeyId });
 */
import { CancelledError, IntegrityError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { FileDevice, statPath } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { planQcow2Stream, type Qcow2StreamPlan } from '../images/qcow2-stream-layout.js';
import { ClusterScanDevice, Qcow2StreamDevice } from '../images/qcow2-stream-device.js';
import { LuksVolume } from '../luks/volume.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import type { GlanceClient } from '../image-service/glance-client.js';
import type { DiskFormat, ImageRecord } from '../image-service/glance-wire.js';
import { UploadStreamDevice } from '../image-service/upload-stream-device.js';
import { startImageSigning, type SignImageOptions, type SignedImageProperties } from '../signatures/image-signature.js';
import { openSource, type OpenedSource, type PassphraseSource } from './open-source.js';
import { BackgroundHash } from './background-hash.js';
import { copyData, type PipelineSource } from './pipeline.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';

/** Image properties of an encrypted (as-is) image, as Cinder and Glance's image-encryption spec name them. */
export const ENCRYPTION_PROPERTY = {
  cinderKeyId: 'cinder_encryption_key_id',
  cinderDeletionPolicy: 'cinder_encryption_key_deletion_policy',
  format: 'os_encrypt_format',
  cipher: 'os_encrypt_cipher',
  keyId: 'os_encrypt_key_id',
  deletionPolicy: 'os_encrypt_key_deletion_policy',
  decryptSize: 'os_decrypt_size',
} as const;

/** zlib's default level, which `qemu-img convert -c` uses too. */
const QCOW2_COMPRESSION_LEVEL = 6;

/** Bytes the background hash may lag behind the upload before the upload waits. */
const HASH_BACKLOG = 64 << 20;

/** The deletion policy for a key cloned for an image: the image owns it. */
export const ON_IMAGE_DELETION = 'on_image_deletion';

export type UploadFlow = 'file' | 'glance-direct';

export interface ImageUploadOptions {
  /** The volume file or block device. */
  volume: string;
  client: GlanceClient;
  name: string;
  /** 'as-is' (default): the container bytes; 'decrypt': the plaintext. */
  mode?: 'as-is' | 'decrypt';
  /** Decrypted uploads: the image format (raw or qcow2; default raw). */
  diskFormat?: DiskFormat;
  compress?: boolean;
  /** `PUT .../file` (default) or `stage` + `import` with glance-direct. */
  flow?: UploadFlow;
  visibility?: 'private' | 'shared' | 'community' | 'public';
  /** Extra custom properties. */
  properties?: Record<string, string>;
  keyManager?: KeyManager;
  caller?: CallerIdentity;
  /** The volume's managed key: cloned for an as-is LUKS upload. */
  volumeKeyId?: string;
  /** Decrypted uploads of a LUKS volume: its passphrase. */
  passphrase?: PassphraseSource;
  /** Sign the uploaded bytes (key from the key manager or PEM; see `signImage`). */
  sign?: Omit<SignImageOptions, 'image' | 'keyManager' | 'caller'>;
  signal?: AbortSignal;
  onProgress?: (progress: { bytes: number; total: number }) => void;
  workers?: number;
}

export interface ImageUploadReport {
  imageId: string;
  name: string;
  mode: 'as-is' | 'decrypt';
  /** What the volume holds. */
  volumeFormat: string;
  diskFormat: DiskFormat;
  containerFormat: string;
  bytes: number;
  sha512: string;
  /** The properties set on the image (custom ones). */
  properties: Record<string, string>;
  /** As-is LUKS uploads: the key the image owns (a clone of the volume's). */
  clonedKeyId?: string;
  flow: UploadFlow;
  seconds: number;
}

/** Uploads `options.volume`; see the module comment. */
export async function uploadVolume(options: ImageUploadOptions): Promise<ImageUploadReport> {
  const started = performance.now();
  const mode = options.mode ?? 'as-is';
  const flow = options.flow ?? 'file';
  const client = options.client;
  if (!options.name) throw new InvalidArgumentError('An image needs a name (--name).');
  if (mode === 'as-is' && (options.diskFormat !== undefined || options.compress)) {
    throw new InvalidArgumentError('--disk-format and --compress apply to decrypted uploads (--decrypt) only.');
  }
  const diskWanted = options.diskFormat ?? 'raw';
  if (options.compress && diskWanted !== 'qcow2') throw new InvalidArgumentError('--compress applies to qcow2 images only.');
  const info = await statPath(options.volume);
  if (!info.exists) throw new NotFoundError(`${options.volume}: no such file or directory`);

  const file = await FileDevice.open(options.volume, { readOnly: true });
  const pool = CryptoPool.create(mode === 'decrypt' ? (options.workers ?? defaultWorkerCount()) : 0);
  let src: OpenedSource | undefined;
  let clonedKeyId: string | undefined;
  let image: ImageRecord | undefined;
  let hasher: BackgroundHash | undefined;
  try {
    const volumeFormat = await detectFormat(file);
    const isLuks = volumeFormat === 'luks1' || volumeFormat === 'luks2';
    const properties: Record<string, string> = { ...(options.properties ?? {}) };
    let diskFormat: DiskFormat;
    let source: PipelineSource;
    if (mode === 'as-is') {
      diskFormat = volumeFormat === 'qcow2' ? 'qcow2' : 'raw';
      source = { device: file, base: 0, size: file.size };
      if (isLuks) {
        if (!options.keyManager || !options.caller || !options.volumeKeyId) {
          throw new InvalidArgumentError('An as-is upload of a LUKS volume clones its managed key: give --key-id (and the key manager).');
        }
        const volume = await LuksVolume.open(file, { readOnly: true });
        const payload = Math.floor(volume.payloadSize / volume.sectorSize) * volume.sectorSize;
        if (options.signal?.aborted) throw new CancelledError();
        // Cloned inside the key manager: the bytes never reach this process.
        clonedKeyId = await options.keyManager.clone(options.caller, options.volumeKeyId, { name: `image ${options.name}` });
        Object.assign(properties, {
          [ENCRYPTION_PROPERTY.cinderKeyId]: clonedKeyId,
          [ENCRYPTION_PROPERTY.cinderDeletionPolicy]: ON_IMAGE_DELETION,
          [ENCRYPTION_PROPERTY.format]: volume.version === 1 ? 'LUKSv1' : 'LUKSv2',
          [ENCRYPTION_PROPERTY.cipher]: volume.encryption,
          [ENCRYPTION_PROPERTY.keyId]: clonedKeyId,
          [ENCRYPTION_PROPERTY.deletionPolicy]: ON_IMAGE_DELETION,
          [ENCRYPTION_PROPERTY.decryptSize]: String(payload),
        });
      }
    } else {
      diskFormat = diskWanted;
      const passphrase: PassphraseSource | undefined = options.passphrase;
      src = await openSource(options.volume, { pool, passphrase, device: file });
      source = src.source;
    }
    const length = source.size;

    // The signing key and certificate are checked before anything is created.
    const signing = options.sign
      ? await startImageSigning({ ...options.sign, ...(options.keyManager ? { keyManager: options.keyManager } : {}), ...(options.caller ? { caller: options.caller } : {}) })
      : undefined;
    // Off the streaming thread: the upload does not wait for the hash.
    const sha512 = (hasher = BackgroundHash.start('sha512'));

    if (options.signal?.aborted) throw new CancelledError();
    image = await client.create(
      { name: options.name, diskFormat, containerFormat: 'bare', ...(options.visibility ? { visibility: options.visibility } : {}), properties },
      options.signal,
    );
    // qcow2: a first pass finds the clusters that hold data, so the tables can go first.
    let plan: Qcow2StreamPlan | undefined;
    if (mode === 'decrypt' && diskFormat === 'qcow2') {
      const scan = new ClusterScanDevice(length, options.compress ? { compressionLevel: QCOW2_COMPRESSION_LEVEL } : {});
      await copyData(source, { device: scan, base: 0, zeros: 'skip' }, length, {
        pool,
        signal: options.signal,
        onProgress: (bytes) => options.onProgress?.({ bytes: bytes / 2, total: length }),
      });
      plan = planQcow2Stream(length, scan.allocated, 16, await scan.storedLengths());
    }
    const uploadBytes = plan ? plan.fileSize : length;
    const sink = new UploadStreamDevice(uploadBytes, {
      ...(signing ? { observe: (chunk: Uint8Array) => signing.update(chunk) } : {}),
      observeCopy: (copy) => {
        sha512.update(copy);
        return sha512.below(HASH_BACKLOG);
      },
    });
    const sending = flow === 'file' ? client.upload(image.id, sink.body(), options.signal) : client.stage(image.id, sink.body(), options.signal);
    // A refused upload stops the copy at once.
    sending.catch((err: Error) => sink.fail(err));
    const qcow2 = plan ? new Qcow2StreamDevice(plan, sink, { compressionLevel: QCOW2_COMPRESSION_LEVEL }) : undefined;
    const copying = (async () => {
      await qcow2?.start();
      await copyData(source, qcow2 ? { device: qcow2, base: 0, zeros: 'skip' } : { device: sink, base: 0, zeros: 'write' }, length, {
        pool,
        signal: options.signal,
        onProgress: (bytes) => options.onProgress?.({ bytes: qcow2 ? (length + bytes) / 2 : bytes, total: length }),
      });
      await qcow2?.finish();
    })().then(
      () => sink.end(),
      (err: Error) => {
        sink.fail(err);
        throw err;
      },
    );
    const [copied, sent] = await Promise.allSettled([copying, sending]);
    if (copied.status === 'rejected') throw copied.reason;
    if (sent.status === 'rejected') throw sent.reason;
    if (flow === 'glance-direct') {
      await client.importStaged(image.id, 'glance-direct', options.signal);
    }
    const uploaded = flow === 'glance-direct' ? await client.waitForActive(image.id, { signal: options.signal }) : await client.show(image.id, options.signal);
    const digest = await sha512.digest();
    if (uploaded.status !== 'active' || uploaded.size !== uploadBytes) {
      throw new IntegrityError(`Image ${image.id} is ${uploaded.status} with ${uploaded.size} bytes after the upload of ${uploadBytes} bytes.`);
    }
    if (uploaded.hashAlgo === 'sha512' && uploaded.hashValue !== digest) {
      throw new IntegrityError(`Image ${image.id}: the image service stored data with sha512 ${uploaded.hashValue}, not the ${digest} sent.`);
    }
    let signature: SignedImageProperties | undefined;
    if (signing) {
      signature = signing.finish();
      const patched = await client.update(
        image.id,
        Object.entries(signature).map(([name, value]) => ({ op: 'add' as const, name, value: String(value) })),
        options.signal,
      );
      if (patched.properties.img_signature !== signature.img_signature) {
        throw new IntegrityError(`Image ${image.id}: the image service did not keep the signature properties.`);
      }
      Object.assign(properties, signature);
    }
    const report: ImageUploadReport = {
      imageId: image.id,
      name: options.name,
      mode,
      volumeFormat,
      diskFormat,
      containerFormat: 'bare',
      bytes: uploadBytes,
      sha512: digest,
      properties,
      ...(clonedKeyId ? { clonedKeyId } : {}),
      flow,
      seconds: (performance.now() - started) / 1000,
    };
    image = undefined;
    clonedKeyId = undefined;
    return report;
  } catch (err) {
    // No half image and no orphaned key clone; cleanup runs even when the caller cancelled.
    if (image) await client.delete(image.id).catch(() => undefined);
    if (clonedKeyId && options.keyManager && options.caller) {
      await options.keyManager.delete(options.caller, clonedKeyId, { force: true }).catch(() => undefined);
    }
    throw err;
  } finally {
    await hasher?.close().catch(() => {});
    await src?.close().catch(() => {});
    await file.close().catch(() => {});
    await pool.close();
  }
}

/**
 * Deletes an image and then, when its deletion policy is `on_image_deletion`, the key it
 * owns (the order Cinder uses). Returns the deleted key's id.
 */
export async function deleteImage(options: { client: GlanceClient; imageId: string; keyManager?: () => Promise<{ keyManager: KeyManager; caller: CallerIdentity }> }): Promise<{ deletedKeyId?: string }> {
  const image = await options.client.show(options.imageId);
  const keyId = image.properties[ENCRYPTION_PROPERTY.keyId] ?? image.properties[ENCRYPTION_PROPERTY.cinderKeyId];
  const policy = image.properties[ENCRYPTION_PROPERTY.deletionPolicy] ?? image.properties[ENCRYPTION_PROPERTY.cinderDeletionPolicy];
  await options.client.delete(options.imageId);
  if (!keyId || policy !== ON_IMAGE_DELETION) return {};
  if (!options.keyManager) throw new InvalidArgumentError(`Image ${options.imageId} owned key ${keyId}: the key manager is needed to delete it.`);
  const { keyManager, caller } = await options.keyManager();
  await keyManager.delete(caller, keyId);
  return { deletedKeyId: keyId };
}
