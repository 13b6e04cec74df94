/**
 * Creating a volume from an image in an OpenStack Glance v2 image service in one streaming
 * pass, with no temporary copy of the image.
 *
 * - A plain image (raw or qcow2) is converted as `convert` does (any target format, exact
 *   sizing), reading the image while it downloads: a raw image is one long download; a qcow2
 *   image reads its tables with range requests where they lie and its data clusters from
 *   the long download (see `RemoteImageDevice`).
 * - An image uploaded as-is from an encrypted volume (`cinder_encryption_key_id` or
 *   `os_encrypt_key_id`, LUKS content) becomes a volume whose ciphertext is copied
 *   unchanged and whose key is a fresh clone of the image's key, made inside the key
 *   manager: the volume and the image can be deleted independently, and no byte is decrypted.
 *   Asked for a new key (a target passphrase) or another format, it is re-keyed instead:
 *   decrypted with the image's key (read from the key manager) and encrypted under the new one.
 *
 * Integrity: with `img_signature*` properties the signature is verified on the bytes as they
 * stream (the certificate is checked before the first byte); `requireSignature` refuses an
 * unsigned image. The sha512 of the bytes must equal Glance's `os_hash_value`. Both checks
 * finish before the target is committed: a failure (exit 7) leaves no target and no key.
 *
 * @example
 * const report = await downloadImage({ client, imageId, target: 'vol.luks', targetFormat: 'luks2',
 *   targetPassphrase: async () => Passphrase.fromString('secret') });
 */
import { AlreadyExistsError, CancelledError, IntegrityError, InvalidArgumentError } from '../errors.js';
import { passphraseForLuks } from '../keys/luks-passphrase.js';
import { FileDevice, removeFile, renameDurably, statPath } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { LuksVolume } from '../luks/volume.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import type { GlanceClient } from '../image-service/glance-client.js';
import type { ImageRecord } from '../image-service/glance-wire.js';
import { RemoteImageDevice } from '../image-service/remote-image-device.js';
import { SIGNATURE_PROPERTY, startSignatureVerification, type StreamingSignatureVerification, type VerifiedImageSignature } from '../signatures/image-signature.js';
import type { ParsedCertificate } from '../signatures/certificate-validation.js';
import { convert, partialPath, type CacheMode, type ConvertReport, type LuksTargetOptions } from './convert.js';
import { ENCRYPTION_PROPERTY } from './image-upload.js';
import type { ImageFormat, PassphraseSource } from './open-source.js';
import { BackgroundHash } from './background-hash.js';
import { copyData } from './pipeline.js';
import { CryptoPool } from './worker-pool.js';

export interface ImageDownloadOptions {
  client: GlanceClient;
  imageId: string;
  target: string;
  targetFormat: ImageFormat;
  keyManager?: KeyManager;
  caller?: CallerIdentity;
  /** Refuse images without signature properties. */
  requireSignature?: boolean;
  /** The signing certificate must chain to one of these. */
  trustedCertificates?: readonly ParsedCertificate[];
  /** LUKS targets of plain images. */
  targetPassphrase?: PassphraseSource;
  luks?: LuksTargetOptions;
  size?: number;
  force?: boolean;
  compress?: boolean;
  cache?: CacheMode;
  workers?: number;
  signal?: AbortSignal;
  onProgress?: (progress: { bytes: number; total: number }) => void;
}

export interface ImageDownloadReport {
  imageId: string;
  target: string;
  targetFormat: ImageFormat;
  /**
   * 'as-is': ciphertext copied with a cloned key; 'convert': converted from a plain image;
   * 're-key': an encrypted image decrypted with its key and encrypted under the target's.
   */
  mode: 'as-is' | 'convert' | 're-key';
  imageBytes: number;
  sha512: string;
  signature?: VerifiedImageSignature;
  /** As-is: the volume's key, a clone of the image's. */
  clonedKeyId?: string;
  convert?: ConvertReport;
  /** Range requests outside the long download, and resumes after dropped connections. */
  transfer: { sideRequests: number; sideBytes: number; resumes: number };
  seconds: number;
}

/** The image's key id when it was uploaded as-is from an encrypted volume. */
export function encryptedImageKeyId(image: ImageRecord): string | undefined {
  return image.properties[ENCRYPTION_PROPERTY.keyId] ?? image.properties[ENCRYPTION_PROPERTY.cinderKeyId];
}

export async function downloadImage(options: ImageDownloadOptions): Promise<ImageDownloadReport> {
  const started = performance.now();
  const { client, imageId } = options;
  const image = await client.show(imageId, options.signal);
  if (image.status !== 'active' || image.size === null) {
    throw new InvalidArgumentError(`Image ${imageId} is ${image.status}: only an active image with data can become a volume.`);
  }
  const signed = image.properties[SIGNATURE_PROPERTY.signature] !== undefined;
  if (!signed && options.requireSignature) {
    throw new IntegrityError(`Image ${imageId} has no ${SIGNATURE_PROPERTY.signature} property, and a signature is required.`);
  }
  let verification: StreamingSignatureVerification | undefined;
  if (signed) {
    if (!options.keyManager || !options.caller) throw new InvalidArgumentError(`Image ${imageId} is signed: its certificate is read from the key manager.`);
    verification = await startSignatureVerification({
      properties: image.properties,
      keyManager: options.keyManager,
      caller: options.caller,
      ...(options.trustedCertificates ? { trustedCertificates: options.trustedCertificates } : {}),
    });
  }
  // The sha512 runs on a worker thread over staged shared copies: the download does not wait for it
  // (up to the staging blocks' 64 MiB backlog).
  const sha512 = BackgroundHash.start('sha512');
  const device = new RemoteImageDevice(client, imageId, image.size, {
    observe: (chunk) => {
      verification?.update(chunk);
      return sha512.copyIn(chunk);
    },
    ...(options.signal ? { signal: options.signal } : {}),
  });
  let signature: VerifiedImageSignature | undefined;
  let digest = '';
  // Reads the rest of the file and settles both checks; runs before the target is committed.
  const checkIntegrity = async () => {
    await device.finish();
    digest = await sha512.digest();
    if (verification) signature = verification.finish();
    if (image.hashAlgo === 'sha512' && image.hashValue && image.hashValue !== digest) {
      throw new IntegrityError(`Image ${imageId}: the data read has sha512 ${digest}, not the ${image.hashValue} the image service recorded.`);
    }
  };
  try {
    const keyId = encryptedImageKeyId(image);
    const content = await detectFormat(device);
    let report: Omit<ImageDownloadReport, 'transfer' | 'seconds' | 'sha512' | 'signature'>;
    const encrypted = keyId !== undefined && (content === 'luks1' || content === 'luks2');
    // Asked for a new key (or another format): re-key, i.e. decrypt with the image's key and
    // encrypt under the new one. Otherwise the ciphertext is copied and the key cloned.
    const rekey = encrypted && (options.targetPassphrase !== undefined || options.targetFormat !== content);
    if (encrypted && !rekey) {
      report = await copyEncrypted(options, device, content as 'luks1' | 'luks2', keyId!, checkIntegrity);
    } else {
      if (rekey && (!options.keyManager || !options.caller)) throw new InvalidArgumentError('Re-keying an encrypted image reads its key from the key manager.');
      const sourcePassphrase: PassphraseSource | undefined = rekey
        ? async () => {
            const object = await options.keyManager!.get(options.caller!, keyId!);
            try {
              return passphraseForLuks(object);
            } finally {
              object.secret.wipe();
            }
          }
        : undefined;
      const converted = await convert({
        source: `image ${imageId}`,
        sourceDevice: device,
        target: options.target,
        targetFormat: options.targetFormat,
        ...(sourcePassphrase ? { sourcePassphrase } : {}),
        ...(options.targetPassphrase ? { targetPassphrase: options.targetPassphrase } : {}),
        ...(options.luks ? { luks: options.luks } : {}),
        ...(options.size !== undefined ? { size: options.size } : {}),
        force: options.force === true,
        compress: options.compress === true,
        ...(options.cache ? { cache: options.cache } : {}),
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        beforeCommit: checkIntegrity,
      });
      report = { imageId, target: options.target, targetFormat: options.targetFormat, mode: rekey ? 're-key' : 'convert', imageBytes: image.size, convert: converted };
    }
    return {
      ...report,
      sha512: digest,
      ...(signature ? { signature } : {}),
      transfer: { sideRequests: device.stats.sideRequests, sideBytes: device.stats.sideBytes, resumes: device.stats.resumes },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await device.close();
    await sha512.close().catch(() => {});
  }
}

/**
 * An encrypted as-is image: the LUKS container is copied byte for byte into a new target
 * file, checked, and given a clone of the image's key.
 */
async function copyEncrypted(
  options: ImageDownloadOptions,
  device: RemoteImageDevice,
  content: 'luks1' | 'luks2',
  keyId: string,
  checkIntegrity: () => Promise<void>,
): Promise<Omit<ImageDownloadReport, 'transfer' | 'seconds' | 'sha512' | 'signature'>> {
  if (options.luks || options.size !== undefined || options.compress) {
    throw new InvalidArgumentError('An encrypted image copied as-is keeps its LUKS header: LUKS and size options need a new key (re-keying).');
  }
  if (!options.keyManager || !options.caller) throw new InvalidArgumentError('An encrypted image needs the key manager to clone its key.');
  const dst = await statPath(options.target);
  if (dst.exists && !options.force) throw new AlreadyExistsError(`${options.target} exists; use --force to replace it.`);
  if (dst.exists && !dst.isFile) throw new InvalidArgumentError(`${options.target} is not a regular file.`);
  const temp = partialPath(options.target);
  await removeFile(temp);
  const size = device.size;
  const file = await FileDevice.open(temp, { create: true, exclusive: true, size });
  const pool = CryptoPool.create(0);
  let clonedKeyId: string | undefined;
  try {
    await copyData({ device, base: 0, size }, { device: file, base: 0, zeros: 'skip' }, size, {
      pool,
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (bytes) => options.onProgress?.({ bytes, total: size }),
    });
    await checkIntegrity();
    // The copy must open as the LUKS volume it claims to be before it gets a key and a name.
    const check = await LuksVolume.open(file, { readOnly: true });
    if (check.version !== (content === 'luks1' ? 1 : 2)) throw new IntegrityError(`The copied image does not open as ${content}.`);
    if (options.signal?.aborted) throw new CancelledError();
    clonedKeyId = await options.keyManager.clone(options.caller, keyId, { name: `volume ${options.target}` });
    await file.sync();
    await file.close();
    await renameDurably(temp, options.target, true);
    const report = { imageId: options.imageId, target: options.target, targetFormat: content, mode: 'as-is' as const, imageBytes: size, clonedKeyId };
    clonedKeyId = undefined;
    return report;
  } catch (err) {
    await file.close().catch(() => {});
    await removeFile(temp).catch(() => {});
    if (clonedKeyId) await options.keyManager.delete(options.caller, clonedKeyId, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    await pool.close();
  }
}
