/**
 * Restoring a header backup (cryptsetup luksHeaderRestore): the backup is validated as a
 * header on its own, compared with the header on the device (same version, data offset and
 * key size always; same UUID unless forced), and only then written over the header area.
 */
import type { BlockDevice } from '../block-device.js';
import { AlreadyExistsError, CorruptHeaderError, InsufficientSpaceError, InvalidArgumentError, ReadOnlyDeviceError, ReadOnlyVolumeError, UnknownFormatError } from '../errors.js';
import { MemoryDevice } from '../devices/memory-device.js';
import { LuksVolume } from './volume.js';

export interface HeaderRestoreOptions {
  headerDevice?: BlockDevice;
  /** Replace a LUKS header whose UUID differs from the backup's (cryptsetup asks; --batch-mode). */
  force?: boolean;
}

/**
 * Validates `backup` and writes it over the header area of `device`. Refuses when the device
 * holds a LUKS header with another data offset or key size (always, as cryptsetup) or
 * another UUID (unless `force`).
 *
 * @example
 * await restoreLuksHeader(device, readFileSync('vol.hdr'), { force: true });
 */
export async function restoreLuksHeader(device: BlockDevice, backup: Uint8Array, options: HeaderRestoreOptions = {}): Promise<LuksVolume> {
  const header = options.headerDevice ?? device;
  if (header.readOnly) throw new ReadOnlyDeviceError('Cannot restore a header onto a read-only device.');
  const image = new MemoryDevice(new Uint8Array(backup), true);
  let fromBackup: LuksVolume;
  try {
    fromBackup = await LuksVolume.open(image, { readOnly: true, headerOnly: true });
  } catch (err) {
    if (err instanceof UnknownFormatError) throw new UnknownFormatError('The backup file does not contain a LUKS header.');
    throw err;
  }
  if (fromBackup.headerBackupSize() > backup.length) throw new CorruptHeaderError('The backup file is truncated.');
  if (backup.length > header.size) throw new InsufficientSpaceError('The device is smaller than the header backup.');
  let current: LuksVolume | undefined;
  try {
    current = await LuksVolume.open(device, { readOnly: true, ...(options.headerDevice ? { headerDevice: options.headerDevice } : {}) });
  } catch {
    current = undefined;
  }
  if (current) {
    const fenced = current.readOnlyReason;
    if (fenced !== undefined) throw new ReadOnlyVolumeError(fenced);
    const [ka, kb] = [current.knownKeyBytes(), fromBackup.knownKeyBytes()];
    // A LUKS2 volume without keyslots does not know its key size; then only the offset is compared.
    if (current.version !== fromBackup.version || current.dataOffset !== fromBackup.dataOffset || (ka !== undefined && kb !== undefined && ka !== kb)) {
      throw new InvalidArgumentError('Data offset or key size differs on device and backup, restore failed.');
    }
    if (current.uuid !== fromBackup.uuid && !options.force) {
      throw new AlreadyExistsError(`Device already contains a LUKS header with UUID ${current.uuid} (backup: ${fromBackup.uuid}); use force to replace it.`);
    }
  }
  const size = fromBackup.headerBackupSize();
  await header.write(backup.subarray(0, size), 0);
  await header.flush();
  return LuksVolume.open(device, options.headerDevice ? { headerDevice: options.headerDevice } : {});
}
