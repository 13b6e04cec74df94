/**
 * `backup restore --rekey-on-restore`: restores a backed-up LUKS volume into a new LUKS volume
 * under a new volume key, in one pass. The backup is read as a device (src/backup/backup-device.ts:
 * chunks fetched, authenticated and decompressed on demand), its LUKS header is unlocked with the
 * old volume's passphrase, and the convert pipeline (src/workflows/convert.ts) decrypts every
 * sector with the old volume key and encrypts it with a freshly generated one as it writes.
 *
 * The new volume keeps the backed-up volume's LUKS version, cipher, key size and sector size; it
 * gets a new volume key, a new UUID and one keyslot, for the new passphrase only: the old
 * passphrase (and the old volume key, should it have leaked) opens nothing in it.
 *
 * No half-restored target: convert builds a new file under a temporary name and renames it into
 * place when done; into an existing block device the LUKS header is written last, so an
 * interrupted or failed restore (a damaged chunk is an IntegrityError) leaves no header there.
 */
import { InvalidArgumentError, AlreadyExistsError } from '../errors.js';
import { statPath } from '../devices/file-device.js';
import { LuksVolume } from '../luks/volume.js';
import { convert, type ConvertReport, type LuksTargetOptions } from '../workflows/convert.js';
import type { PassphraseSource } from '../workflows/open-source.js';
import { BackupDevice } from './backup-device.js';
import type { Repository } from './repository.js';

export interface RekeyedRestoreOptions {
  /** Opens the backed-up volume (its old passphrase or managed key). */
  sourcePassphrase: PassphraseSource;
  /** The new volume's passphrase (e.g. a key created in the key manager). */
  targetPassphrase: PassphraseSource;
  /** KDF and other format choices for the new header; cipher, key size and sector size default to the old volume's. */
  luks?: LuksTargetOptions;
  signal?: AbortSignal;
  onProgress?: (p: { bytes: number; total: number }) => void;
  workers?: number;
}

export interface RekeyedRestoreReport {
  id: string;
  target: string;
  targetKind: 'new-file' | 'block-device';
  format: 'luks1' | 'luks2';
  /** UUIDs of the backed-up volume and of the restored one (new). */
  oldUuid: string;
  uuid?: string;
  encryption: string;
  sectorSize: number;
  payloadSize: number;
  containerSize: number;
  fetchedChunks: number;
  convert: ConvertReport;
}

/** Restores backup `id` (a LUKS volume) to `target` under a new volume key. */
export async function restoreRekeyed(repo: Repository, id: string, target: string, options: RekeyedRestoreOptions): Promise<RekeyedRestoreReport> {
  const m = await repo.getManifest(id);
  if (m.source.format !== 'luks1' && m.source.format !== 'luks2') {
    throw new InvalidArgumentError(`Backup ${id} is of a ${m.source.format} volume: --rekey-on-restore applies to LUKS volumes only.`);
  }
  const info = await statPath(target);
  if (info.exists && !info.isBlockDevice) throw new AlreadyExistsError(`${target} exists; restore writes a new file or an existing block device.`);
  const device = new BackupDevice(repo, m);
  try {
    // The old header's parameters (no key needed to read them).
    const old = await LuksVolume.open(device, { readOnly: true });
    const luks: LuksTargetOptions = {
      cipher: old.encryption,
      keySizeBits: old.keyBytes * 8,
      ...(old.version === 2 ? { sectorSize: old.sectorSize as 512 | 4096 } : {}),
      ...(options.luks ?? {}),
    };
    const report = await convert({
      source: `backup ${id}`,
      sourceDevice: device,
      sourceFormat: m.source.format,
      sourcePassphrase: options.sourcePassphrase,
      target,
      targetFormat: m.source.format,
      targetPassphrase: options.targetPassphrase,
      luks,
      // The payload size of the old volume: the restored one holds exactly its plaintext.
      size: old.payloadSize,
      targetExists: info.isBlockDevice,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
    });
    const restored = await readUuid(target);
    return {
      id,
      target,
      targetKind: info.isBlockDevice ? 'block-device' : 'new-file',
      format: m.source.format,
      oldUuid: old.uuid,
      ...(restored !== undefined ? { uuid: restored } : {}),
      encryption: report.target.encryption ?? old.encryption,
      sectorSize: report.target.sectorSize ?? old.sectorSize,
      payloadSize: report.target.payloadSize,
      containerSize: report.target.containerSize,
      fetchedChunks: device.fetchedChunks,
      convert: report,
    };
  } finally {
    await device.close();
  }
}

async function readUuid(path: string): Promise<string | undefined> {
  const { FileDevice } = await import('../devices/file-device.js');
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    return (await LuksVolume.open(file, { readOnly: true })).uuid;
  } catch {
    return undefined;
  } finally {
    await file.close();
  }
}
