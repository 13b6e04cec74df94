/**
 * Opens an image file by content: qcow2 as its virtual disk (read-only), raw and LUKS
 * as the file itself (LUKS is unlocked by the LUKS engine on top of this device).
 */
import type { BlockDevice } from '../block-device.js';
import type { Passphrase } from '../secret.js';
import { FileDevice } from '../devices/file-device.js';
import { InvalidArgumentError, UnknownFormatError, UnsupportedError } from '../errors.js';
import { type ImageFormat, detectFormat } from './detect.js';
import { Qcow2Device } from './qcow2-device.js';

export interface OpenImageOptions {
  /** Expected format; `raw` forces a raw view of any file. Default: detect by content. */
  format?: ImageFormat | 'luks';
  /** Default true. qcow2 images can only be opened read-only. */
  readOnly?: boolean;
  /** Backing image of a qcow2 file: an open device (caller keeps ownership) or a path (opened by content, closed with the image). */
  backing?: BlockDevice | string;
  /** Passphrase of a LUKS-encrypted qcow2 (caller keeps and wipes it). */
  passphrase?: Passphrase;
}

export interface OpenedImage {
  format: ImageFormat;
  /** The guest-visible bytes: the virtual disk for qcow2, the file for raw and LUKS. */
  device: BlockDevice;
  /** The underlying file. */
  file: FileDevice;
  close(): Promise<void>;
}

/**
 * Opens `path`, detecting its format from its content.
 *
 * @example
 *   const img = await openImage('disk.qcow2');
 *   try { await img.device.read(buf, 0); } finally { await img.close(); }
 */
export async function openImage(path: string, options: OpenImageOptions = {}): Promise<OpenedImage> {
  const readOnly = options.readOnly !== false;
  const file = await FileDevice.open(path, { readOnly });
  let backing: OpenedImage | undefined;
  try {
    const detected = await detectFormat(file);
    let format: ImageFormat = detected;
    if (options.format === 'raw') format = 'raw';
    else if (options.format === 'luks') {
      if (detected !== 'luks1' && detected !== 'luks2') throw new UnknownFormatError(`${path} is not a LUKS image (content looks ${detected}).`);
    } else if (options.format !== undefined && options.format !== detected) {
      throw new UnknownFormatError(`${path} is not a ${options.format} image (content looks ${detected}).`);
    }
    if (format !== 'qcow2') {
      if (options.backing !== undefined) throw new InvalidArgumentError(`A backing image applies only to qcow2, and ${path} is ${format}.`);
      return { format, device: file, file, close: () => file.close() };
    }
    if (!readOnly) throw new UnsupportedError(`${path}: qcow2 images can only be opened read-only.`);
    let backingDevice: BlockDevice | undefined;
    if (typeof options.backing === 'string') {
      backing = await openImage(options.backing, { readOnly: true });
      backingDevice = backing.device;
    } else backingDevice = options.backing;
    const device = await Qcow2Device.open(file, { backing: backingDevice, passphrase: options.passphrase });
    const owned = backing;
    return {
      format,
      device,
      file,
      close: async () => {
        await device.close();
        await file.close();
        await owned?.close();
      },
    };
  } catch (err) {
    await file.close();
    await backing?.close();
    throw err;
  }
}
