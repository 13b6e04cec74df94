/**
 * In-place decryption of a volume file or block device (`brickcrypt reencrypt --decrypt`),
 * over the engine in src/luks/reencrypt/decrypt.ts with the cipher on the worker pool.
 *
 * The header always lives in a file of its own while the data is decrypted:
 * - a detached header (`--header FILE`, data offset 0): used where it is;
 * - an attached header: exported first, as `cryptsetup reencrypt --decrypt --header FILE`
 *   does, to FILE (kept at the end, in cryptsetup's finished state), or without `--header` to
 *   `VOLUME.decrypt-header` next to the volume (removed at the end). The export is written
 *   under a temporary name, fsynced and renamed into place, so the header file is either
 *   absent or complete; while it exists it is THE header of the volume: every later run
 *   (resume after a crash or Ctrl-C) uses it.
 *
 * @example
 * const report = await decryptVolume('vol.img', { passphrases: [pass] });
 */
import { existsSync, statSync } from 'node:fs';
import { FileDevice, removeFile, renameDurably, syncDirectory } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { CorruptHeaderError, InvalidArgumentError, UnknownFormatError } from '../errors.js';
import { readLuks2Headers } from '../luks/luks2-io.js';
import { LuksVolume } from '../luks/volume.js';
import { decodeReencryptState } from '../formats/luks2/reencrypt-state.js';
import { decryptLuks2, luks2HeaderArea, luks2HeaderAreaFromLuks1, type DecryptCipherFactory, type DecryptOptions, type DecryptReport } from '../luks/reencrypt/decrypt.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';
import { poolChecksums, poolSide, poolTransform } from './pool-zone-ciphers.js';
import { dirname } from 'node:path';

/** Where the header of an attached volume goes while it is decrypted without `--header`. */
export function defaultDecryptHeaderPath(volume: string): string {
  return `${volume}.decrypt-header`;
}

/** The decryption on `pool`: each 2 MiB piece of a zone is one job. */
export function poolDecryptCipher(pool: CryptoPool): DecryptCipherFactory {
  return (side) => {
    const from = poolSide(pool, side);
    return { decrypt: poolTransform(pool, from, undefined), digest: poolChecksums(pool), close: async () => pool.dropCipher(from.cipher) };
  };
}

export interface DecryptVolumeOptions extends Omit<DecryptOptions, 'headerDevice' | 'decryptCipher'> {
  /** Header file: a detached header, or where the header of an attached volume is exported. */
  header?: string;
  workers?: number;
}

export interface DecryptVolumeReport extends DecryptReport {
  /** The header file used. */
  header: string;
  /** This run exported the attached header to it. */
  exported: boolean;
  /** It was the default header file and is gone (the decryption finished). */
  headerRemoved: boolean;
}

/**
 * The header file of a recorded decryption of `volume`, if there is one: `header` when it
 * records a decryption, else the default header file when it exists.
 */
export async function recordedDecryptionHeader(volume: string, header?: string): Promise<string | undefined> {
  const path = header ?? defaultDecryptHeaderPath(volume);
  if (!existsSync(path)) return undefined;
  if (header === undefined) return path;
  const dev = await FileDevice.open(path, { readOnly: true });
  try {
    if ((await detectFormat(dev)) !== 'luks2') return undefined;
    const { state } = await readLuks2Headers(dev);
    return decodeReencryptState(state.metadata)?.keyslot.mode === 'decrypt' ? path : undefined;
  } catch {
    return undefined;
  } finally {
    await dev.close();
  }
}

/** Copies the attached header area of `volume` to `path` (temporary name, fsync, rename). */
async function exportHeader(volume: string, path: string): Promise<void> {
  const file = await FileDevice.open(volume, { readOnly: true });
  let area: Awaited<ReturnType<typeof luks2HeaderArea>>;
  try {
    const format = await detectFormat(file);
    if (format !== 'luks2' && format !== 'luks1') throw format === 'raw' ? new InvalidArgumentError(`${volume} is not a LUKS volume (and ${path} does not exist).`) : new UnknownFormatError(`${volume} holds ${format} data, not a LUKS volume.`);
    // LUKS1: the exported header is its LUKS2 conversion (the volume itself is not converted).
    area = format === 'luks1' ? await luks2HeaderAreaFromLuks1(file) : await luks2HeaderArea(file);
  } finally {
    await file.close();
  }
  if (area.dataOffset === 0) throw new CorruptHeaderError(`${volume}: an attached LUKS2 header with data offset 0.`);
  const tmp = `${path}.partial`;
  const out = await FileDevice.open(tmp, { create: true, size: area.bytes.length });
  try {
    await out.write(area.bytes, 0);
    await out.sync();
  } finally {
    await out.close();
  }
  await renameDurably(tmp, path);
}

/** True when `volume` still holds its own LUKS2 header with this UUID (nothing was moved over it). */
async function attachedHeaderIntact(volume: string, uuid: string): Promise<boolean> {
  const file = await FileDevice.open(volume, { readOnly: true });
  try {
    if ((await detectFormat(file)) === 'luks1') return (await LuksVolume.open(file, { readOnly: true })).uuid === uuid;
    const { state } = await readLuks2Headers(file, file.size);
    return state.bin.uuid === uuid && decodeReencryptState(state.metadata) === undefined;
  } catch {
    return false;
  } finally {
    await file.close();
  }
}

/** Decrypts (or resumes decrypting) the LUKS2 volume at `path` in place. */
export async function decryptVolume(path: string, options: DecryptVolumeOptions): Promise<DecryptVolumeReport> {
  const headerPath = options.header ?? defaultDecryptHeaderPath(path);
  const temporary = options.header === undefined;
  let exported = false;
  if (existsSync(headerPath)) {
    const [a, b] = [statSync(path), statSync(headerPath)];
    if (a.dev === b.dev && a.ino === b.ino) throw new InvalidArgumentError(`--header ${headerPath} is the volume itself: give a separate file (it receives the header before the data moves over it).`);
  } else {
    if (options.resumeOnly) throw new InvalidArgumentError(`No decryption is recorded for ${path} (${headerPath} does not exist): nothing to resume.`);
    await exportHeader(path, headerPath);
    exported = true;
  }
  const { header: _h, workers, ...rest } = options;
  const pool = CryptoPool.create(workers ?? defaultWorkerCount());
  let report: DecryptReport;
  try {
    const data = await FileDevice.open(path);
    try {
      const header = await FileDevice.open(headerPath);
      try {
        if ((await detectFormat(header)) !== 'luks2') throw new InvalidArgumentError(`${headerPath} is not a LUKS2 header.`);
        report = await decryptLuks2(data, { ...rest, headerDevice: header, decryptCipher: poolDecryptCipher(pool) });
      } finally {
        await header.close();
      }
    } finally {
      await data.close();
    }
  } catch (err) {
    // A refusal before anything was recorded: the export is a plain copy of the header the
    // volume still holds, so it is dropped again (as cryptsetup drops its export).
    if (exported && (await exportUnused(path, headerPath))) await removeFile(headerPath);
    throw err;
  } finally {
    await pool.close();
  }
  let headerRemoved = false;
  if (report.finished && temporary) {
    await removeFile(headerPath);
    await removeFile(`${headerPath}.partial`);
    await syncDirectory(dirname(headerPath));
    headerRemoved = true;
  }
  return { ...report, header: headerPath, exported, headerRemoved };
}

async function exportUnused(volume: string, headerPath: string): Promise<boolean> {
  const dev = await FileDevice.open(headerPath, { readOnly: true });
  let uuid: string;
  try {
    const { state } = await readLuks2Headers(dev);
    if (decodeReencryptState(state.metadata) !== undefined) return false;
    uuid = state.bin.uuid;
  } catch {
    return false;
  } finally {
    await dev.close();
  }
  return attachedHeaderIntact(volume, uuid);
}
