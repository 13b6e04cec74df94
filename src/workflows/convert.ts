/**
 * Conversions between raw, qcow2, LUKS1 and LUKS2 images (any pair, including LUKS to LUKS
 * with a new volume key, cipher or sector size: out-of-place re-encryption).
 *
 * Sizing never loses data: the target's payload defaults to the source's virtual size; a
 * smaller `size` is refused unless `allowTruncate`; LUKS payloads are rounded UP to the
 * sector size (zero padding, reported). An existing target's usable size is checked before
 * a byte is written.
 *
 * Crash safety: a new target is built under a temporary name in its directory and renamed
 * into place after fsync (file and directory). LUKS headers are always written last (data
 * first), so an interrupted target - temporary file or pre-existing device - carries no
 * valid header. Cancellation removes the temporary file.
 *
 * The target's cache mode follows QEMU's names. 'none' writes the data with O_DIRECT past the
 * page cache, where the file system allows it, and fsyncs at the end; 'writeback' writes
 * through the page cache and fsyncs at the end; 'unsafe' keeps the temporary name and
 * header-last order but skips every fsync (qemu-img convert's default): safe against a killed
 * process, not against a power loss. The default, 'auto', is Cinder's rule for image
 * conversions: 'none' for a block device, 'writeback' for a file.
 *
 * @example
 * const report = await convert({ source: 'disk.qcow2', target: 'disk.luks', targetFormat: 'luks2',
 *   targetPassphrase: async () => Passphrase.fromString('secret') });
 */
import { basename, dirname, join } from 'node:path';
import type { BlockDevice } from '../block-device.js';
import {
  AlreadyExistsError,
  InsufficientSpaceError,
  InvalidArgumentError,
  NotFoundError,
  UnsupportedError,
} from '../errors.js';
import { FileDevice, removeFile, renameDurably, statPath, type CacheBypassStats, type OpenFileOptions } from '../devices/file-device.js';
import { Qcow2Writer } from '../images/qcow2-writer.js';
import { LuksVolume } from '../luks/volume.js';
import { addKeyManagerToken } from '../luks/tokens.js';
import type { FormatOptions } from '../luks/options.js';
import { chooseKdf, digestIterations } from '../luks/kdf-choice.js';
import { Passphrase, type VolumeKey } from '../secret.js';
import { HeaderCapture } from './header-capture.js';
import { copyData, type CopyStats, type PipelineTarget } from './pipeline.js';
import { openSource, type ImageFormat, type OpenedSource, type PassphraseSource, type PlainSource, type SourceFormat } from './open-source.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';

/**
 * How the target is written, in QEMU's terms: 'none' = O_DIRECT data + fsync, 'writeback' =
 * page cache + fsync, 'unsafe' = page cache, never fsynced; 'auto' = 'none' for a block device,
 * 'writeback' for a file.
 */
export type CacheMode = 'auto' | 'none' | 'writeback' | 'unsafe';
export const CACHE_MODES: readonly CacheMode[] = ['auto', 'none', 'writeback', 'unsafe'];
/** The mode a conversion runs in once 'auto' is decided. */
export type EffectiveCacheMode = Exclude<CacheMode, 'auto'>;

/** LUKS format parameters for a LUKS target (cryptsetup luksFormat's options). */
export type LuksTargetOptions = Omit<FormatOptions, 'type' | 'passphrase' | 'volumeKey' | 'keyslot'>;

export interface ConvertOptions {
  /** Source path; with `sourceDevice`, only the name used in messages and the report. */
  source: string;
  /**
   * An already open source image instead of the file `source` (e.g. an image in an image
   * service, read as it streams). The caller keeps and closes it.
   */
  sourceDevice?: BlockDevice;
  /**
   * Runs after every byte is in the target and before the target is committed (LUKS header
   * written, renamed into place). Throwing here (a signature or checksum that does not
   * match) aborts the conversion and leaves no target.
   */
  beforeCommit?: () => Promise<void>;
  target: string;
  targetFormat: ImageFormat;
  /** Checked against the content (which always decides). */
  sourceFormat?: ImageFormat | 'luks' | 'plain';
  sourcePassphrase?: PassphraseSource;
  /** Tries for a typed source passphrase (cryptsetup's --tries); default 1. */
  sourcePassphraseTries?: number;
  onWrongPassphrase?: () => void;
  /** A plain dm-crypt source (with `sourceFormat: 'plain'`): parameters and key. */
  sourcePlain?: PlainSource;
  targetPassphrase?: PassphraseSource;
  /**
   * LUKS2 targets: asked once the target passphrase is read; a reference returned is written
   * into the header as a brickcrypt-key-manager token for the target's keyslot (src/luks/tokens.ts).
   */
  targetToken?: () => { keyManager?: string; keyId: string } | undefined;
  luks?: LuksTargetOptions;
  /** Usable payload size of the target in bytes (default: the source's virtual size). */
  size?: number;
  /** Allow `size` below the source size (the source's tail is dropped). */
  allowTruncate?: boolean;
  /** Write into an existing file or block device instead of creating the target. */
  targetExists?: boolean;
  /** Replace an existing target file (atomically, by rename). */
  force?: boolean;
  /** qcow2 targets: compress clusters. */
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (progress: { bytes: number; total: number }) => void;
  /** Worker threads for crypto (default: one per core, up to 4; 0 = inline). */
  workers?: number;
  chunkBytes?: number;
  /**
   * The target's cache mode (default 'auto': 'none' for a block device, 'writeback' for a
   * file, as Cinder converts images into volumes). With 'none' and 'writeback', data, header
   * and directory are fsynced before the target gets its name. 'unsafe' never fsyncs (qemu-img
   * convert's default): the target is still built under a temporary name and renamed when
   * complete, so a killed run leaves nothing that looks finished, but after a power loss or
   * kernel crash it may be incomplete. 'none' writes aligned data with O_DIRECT: nothing is
   * copied into the page cache, and the final fsync has no dirty pages to write back. qcow2
   * targets are always written through the page cache.
   */
  cache?: CacheMode;
}

export interface ConvertReport {
  source: { path: string; format: SourceFormat; size: number; keyslot?: number };
  target: {
    path: string;
    format: ImageFormat;
    /** Usable (plaintext) bytes of the target. */
    payloadSize: number;
    /** Bytes of the container: file or device size (LUKS header + payload; qcow2 virtual size for qcow2). */
    containerSize: number;
    dataOffset?: number;
    sectorSize?: number;
    encryption?: string;
    keyslot?: number;
    existing: boolean;
  };
  /** Source bytes copied. */
  copiedBytes: number;
  /** Zero bytes added after the source's end to fill whole sectors (LUKS targets). */
  paddedBytes: number;
  /** Source bytes beyond the target's size that were dropped (only with allowTruncate). */
  truncatedBytes: number;
  stats: CopyStats;
  /** The cache mode used ('auto' decided), and how many bytes went past the page cache (mode 'none'). */
  cache: { mode: EffectiveCacheMode } & CacheBypassStats;
  seconds: number;
  /** Key derivation the conversion waited for (source unlock, target KDF benchmark and any wait at the end). */
  kdfSeconds: number;
  /** Target keyslot derivation that ran during the copy (LUKS targets; overlapped, not waited for). */
  kdfBackgroundSeconds: number;
  dataSeconds: number;
  notes: string[];
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Name of the temporary file a new target is built under: hidden, in the target's directory. */
export function partialPath(target: string): string {
  return join(dirname(target), `.${basename(target)}.brickcrypt-partial`);
}

interface PreparedTarget {
  device: BlockDevice;
  /** The file underneath (for its cache statistics). */
  file: FileDevice;
  pipeline: PipelineTarget;
  /** Plaintext bytes the pipeline produces in the target. */
  length: number;
  payloadSize: number;
  containerSize: number;
  luks?: { volume: LuksVolume; capture: HeaderCapture; cipher: number };
  /**
   * Work running alongside the copy (formatting a LUKS header: the keyslot's KDF); resolves
   * with the seconds it took, rejects with its error.
   */
  ready?: Promise<number>;
  finish(): Promise<void>;
  abort(): Promise<void>;
}

/** Converts `source` into `target`; see the module comment for the rules. */
export async function convert(options: ConvertOptions): Promise<ConvertReport> {
  const started = performance.now();
  const notes: string[] = [];
  const targetIsLuks = options.targetFormat === 'luks1' || options.targetFormat === 'luks2';
  if (options.compress && options.targetFormat !== 'qcow2') throw new InvalidArgumentError('--compress applies to qcow2 targets only.');
  if (options.size !== undefined && (!Number.isSafeInteger(options.size) || options.size <= 0)) {
    throw new InvalidArgumentError(`Target size ${options.size} is not a positive number of bytes.`);
  }
  if (targetIsLuks && !options.targetPassphrase) throw new InvalidArgumentError('A LUKS target needs a passphrase (--dst-key-file).');
  if (!targetIsLuks && options.luks && Object.keys(options.luks).length > 0) {
    throw new InvalidArgumentError('LUKS format options apply to luks1/luks2 targets only.');
  }

  const requestedCache = options.cache ?? 'auto';
  if (!CACHE_MODES.includes(requestedCache)) {
    throw new InvalidArgumentError(`Unknown cache mode '${String(requestedCache)}' (use ${CACHE_MODES.join(', ')}).`);
  }
  const srcInfo = options.sourceDevice ? undefined : await statPath(options.source);
  if (srcInfo && !srcInfo.exists) throw new NotFoundError(`${options.source}: no such file or directory`);
  const dstInfo = await statPath(options.target);
  if (srcInfo && dstInfo.exists && dstInfo.identity === srcInfo.identity) {
    throw new InvalidArgumentError('Source and target are the same file; conversions are out of place.');
  }
  if (options.targetExists) {
    if (!dstInfo.exists) throw new NotFoundError(`${options.target}: --target-exists was given but the target does not exist`);
    if (options.targetFormat === 'qcow2') throw new UnsupportedError('Writing qcow2 into an existing target is not supported; omit --target-exists.');
  } else if (dstInfo.exists && !options.force) {
    throw new AlreadyExistsError(`${options.target} exists; use --force to replace it or --target-exists to write into it.`);
  } else if (dstInfo.exists && !dstInfo.isFile) {
    throw new InvalidArgumentError(`${options.target} is not a regular file; use --target-exists to write into a device.`);
  }

  // Cinder's rule (cinder/image/image_utils.py): O_DIRECT into block devices, so every byte has
  // reached the device before it is detached; files get the page cache and one flush at the end.
  const cache: EffectiveCacheMode =
    requestedCache !== 'auto' ? requestedCache : options.targetExists && dstInfo.isBlockDevice ? 'none' : 'writeback';
  if (cache === 'unsafe') notes.push('not synced (cache mode unsafe): the target may still be partly in the page cache only.');
  const pool = CryptoPool.create(options.workers ?? defaultWorkerCount());
  let src: OpenedSource | undefined;
  let target: PreparedTarget | undefined;
  try {
    src = await openSource(options.source, {
      pool,
      expected: options.sourceFormat,
      passphrase: options.sourcePassphrase,
      ...(options.sourcePassphraseTries ? { passphraseTries: options.sourcePassphraseTries } : {}),
      ...(options.onWrongPassphrase ? { onWrongPassphrase: options.onWrongPassphrase } : {}),
      ...(options.sourcePlain ? { plain: options.sourcePlain } : {}),
      ...(options.sourceDevice ? { device: options.sourceDevice } : {}),
    });
    const requested = options.size ?? src.size;
    if (requested < src.size && !options.allowTruncate) {
      throw new InsufficientSpaceError(
        `Target size ${requested} is smaller than the source's ${src.size} bytes; that would drop data (use --allow-truncate to accept).`,
      );
    }
    const copied = Math.min(src.size, requested);
    const truncatedBytes = src.size - copied;
    if (truncatedBytes > 0) notes.push(`truncated: the last ${truncatedBytes} bytes of the source were dropped (--allow-truncate).`);

    let kdfSeconds = src.kdfSeconds;
    const t0 = performance.now();
    target = targetIsLuks
      ? await prepareLuksTarget(options, cache, pool, requested, notes)
      : await preparePlainTarget(options, cache, requested, notes);
    if (target.luks) kdfSeconds += (performance.now() - t0) / 1000;
    const paddedBytes = targetIsLuks ? Math.max(0, roundUp(requested, target.luks!.volume.sectorSize) - requested) : 0;
    if (paddedBytes > 0) {
      notes.push(`padded: ${paddedBytes} zero bytes were added to fill the last ${target.luks!.volume.sectorSize}-byte sector.`);
    }

    const source = { ...src.source, size: copied };
    const tData = performance.now();
    // A failure of the background work stops the copy at once and is the error reported.
    const stop = new AbortController();
    const ready = target.ready?.catch((err: unknown) => {
      stop.abort();
      throw err;
    });
    ready?.catch(() => {});
    const fileTarget = target.device instanceof FileDevice;
    // With O_DIRECT the page cache holds none of the data: a flush during the copy would have
    // nothing to start writing back and only stalls the device.
    const direct = cache === 'none' && fileTarget && !target.file.cacheBypass.unavailable;
    let stats: CopyStats;
    try {
      stats = await copyData(source, target.pipeline, target.length, {
        pool,
        chunkBytes: options.chunkBytes,
        signal: options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal,
        onProgress: (bytes) => options.onProgress?.({ bytes, total: target!.length }),
        flushEvery: fileTarget && cache !== 'unsafe' && !direct ? FLUSH_BEHIND_BYTES : 0,
        writeConcurrency: fileTarget && direct ? DIRECT_WRITES_IN_FLIGHT : 1,
      });
    } catch (err) {
      if (stop.signal.aborted) await ready;
      throw err;
    }
    const tCopied = performance.now();
    const kdfBackgroundSeconds = (await ready) ?? 0;
    // Time the copy waited for the background KDF counts as key derivation, not data.
    const kdfWait = (performance.now() - tCopied) / 1000;
    kdfSeconds += kdfWait;
    await options.beforeCommit?.();
    await target.finish();
    const dataSeconds = (performance.now() - tData) / 1000 - kdfWait;
    const luks = target.luks;
    const bypass = target.file.cacheBypass;
    if (cache === 'none' && bypass.unavailable) notes.push(`written through the page cache: ${bypass.unavailable}.`);
    const report: ConvertReport = {
      source: { path: options.source, format: src.format, size: src.size, keyslot: src.keyslot },
      target: {
        path: options.target,
        format: options.targetFormat,
        payloadSize: target.payloadSize,
        containerSize: target.containerSize,
        dataOffset: luks?.volume.dataOffset,
        sectorSize: luks?.volume.sectorSize,
        encryption: luks?.volume.encryption,
        keyslot: luks ? 0 : undefined,
        existing: options.targetExists === true,
      },
      copiedBytes: copied,
      paddedBytes,
      truncatedBytes,
      stats,
      cache: { mode: cache, ...bypass },
      seconds: (performance.now() - started) / 1000,
      kdfSeconds,
      kdfBackgroundSeconds,
      dataSeconds,
      notes,
    };
    target = undefined;
    return report;
  } catch (err) {
    await target?.abort().catch(() => {});
    throw err;
  } finally {
    await src?.close().catch(() => {});
    await pool.close();
  }
}

/** How a target file is opened in cache mode `mode` (`direct`: may the data bypass the page cache). */
function fileOptions(mode: EffectiveCacheMode, direct: boolean): OpenFileOptions {
  return { ignoreFlush: mode === 'unsafe', bypassCache: direct && mode === 'none' };
}

/** raw (new or existing) and qcow2 (new) targets. */
async function preparePlainTarget(options: ConvertOptions, mode: EffectiveCacheMode, size: number, notes: string[]): Promise<PreparedTarget> {
  const durable = mode !== 'unsafe';
  if (options.targetExists) {
    const dev = await FileDevice.open(options.target, fileOptions(mode, true));
    if (dev.size < size) {
      await dev.close();
      throw new InsufficientSpaceError(`${options.target} holds ${dev.size} bytes; ${size} are needed. Nothing was written.`);
    }
    if (dev.size > size) notes.push(`the target's last ${dev.size - size} bytes were left as they were.`);
    return {
      device: dev,
      file: dev,
      pipeline: { device: dev, base: 0, zeros: 'write-zeroes' },
      length: size,
      payloadSize: dev.size,
      containerSize: dev.size,
      finish: async () => {
        await dev.sync();
        await dev.close();
      },
      abort: () => dev.close(),
    };
  }
  const temp = partialPath(options.target);
  await removeFile(temp); // a leftover of a killed run
  if (options.targetFormat === 'raw') {
    const dev = await FileDevice.open(temp, { create: true, exclusive: true, size, ...fileOptions(mode, true) });
    return {
      device: dev,
      file: dev,
      pipeline: { device: dev, base: 0, zeros: 'skip' },
      length: size,
      payloadSize: size,
      containerSize: size,
      finish: async () => {
        await dev.sync();
        await dev.close();
        await renameDurably(temp, options.target, durable);
      },
      abort: async () => {
        await dev.close().catch(() => {});
        await removeFile(temp);
      },
    };
  }
  // The qcow2 writer's clusters are small and in its own memory: always through the page cache.
  if (mode === 'none') notes.push('qcow2 clusters are written through the page cache (cache mode none applies to raw and LUKS targets).');
  const file = await FileDevice.open(temp, { create: true, exclusive: true, size: 0, ...fileOptions(mode, false) });
  let writer: Qcow2Writer;
  try {
    writer = await Qcow2Writer.create(file, { size, compress: options.compress });
  } catch (err) {
    await file.close();
    await removeFile(temp);
    throw err;
  }
  return {
    device: writer,
    file,
    pipeline: { device: writer, base: 0, zeros: 'skip' },
    length: size,
    payloadSize: writer.size,
    containerSize: writer.size,
    finish: async () => {
      await writer.close(); // writes the metadata and the header last, closes the file
      const again = await FileDevice.open(temp, fileOptions(mode, false));
      try {
        await again.sync();
      } finally {
        await again.close();
      }
      await renameDurably(temp, options.target, durable);
    },
    abort: async () => {
      await file.close().catch(() => {});
      await removeFile(temp);
    },
  };
}

/**
 * Background flush interval for file targets written through the page cache: writeback
 * overlaps the copy instead of following it. Small enough that the disk starts early and stays busy (measured on luks1->raw, 2 GiB:
 * data phase 2.3-3.2 s with 64 MiB against 2.5-3.6 s with 256 MiB, on a noisy VM).
 */
const FLUSH_BEHIND_BYTES = 64 << 20;

/**
 * Concurrent O_DIRECT writes (cache mode 'none'): each completes only when the device has the
 * data, so one at a time would leave the device idle between writes. Leaves threads of
 * libuv's pool (4) for the reads ahead.
 */
const DIRECT_WRITES_IN_FLIGHT = 3;

/** Room the provisional header capture leaves for any LUKS header layout. */
const HEADER_ROOM = 1 << 30;

/** LUKS1/LUKS2 targets, new or existing: formats into a capture, writes the header last. */
async function prepareLuksTarget(
  options: ConvertOptions,
  mode: EffectiveCacheMode,
  pool: CryptoPool,
  requested: number,
  notes: string[],
): Promise<PreparedTarget> {
  const luksOptions = { ...(options.luks ?? {}) };
  const type = options.targetFormat as 'luks1' | 'luks2';
  if (type === 'luks2' && luksOptions.sectorSize === undefined) luksOptions.sectorSize = 4096; // cryptsetup's default on files
  if (type === 'luks1' && luksOptions.sectorSize !== undefined && luksOptions.sectorSize !== 512) {
    throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
  }
  const sectorGuess = luksOptions.sectorSize ?? 512;
  const existing = options.targetExists ? await FileDevice.open(options.target, fileOptions(mode, true)) : undefined;
  let capture: HeaderCapture | undefined;
  let volume: LuksVolume | undefined;
  let key: VolumeKey | undefined;
  let cipher: number | undefined;
  let formatting: Promise<{ volume: LuksVolume; seconds: number }> | undefined;
  try {
    // The header's layout must be known before the container is sized (its data offset
    // decides); a capture of generous size holds the header until the payload is in place.
    const provisional = existing ? existing.size : HEADER_ROOM + roundUp(requested, sectorGuess);
    capture = new HeaderCapture(provisional);
    const passphrase = await options.targetPassphrase!();
    try {
      ({ volume, key } = await planLuksLayout(type, luksOptions, provisional));
      // Keyslot KDF parameters are benchmarked now, while the CPU is quiet (a benchmark run
      // during the copy would measure a busy machine and pick weaker parameters).
      const kdf = await chooseKdf(luksOptions, type === 'luks1' ? 1 : 2, volume.keyBytes);
      // The volume-key digest keeps cryptsetup's benchmarked cost even though the keyslot's is fixed here.
      const digest = await digestIterations(luksOptions, type === 'luks1' ? (luksOptions.hash ?? 'sha256') : 'sha256');
      const forced: LuksTargetOptions =
        kdf.type === 'pbkdf2'
          ? { pbkdf: 'pbkdf2', hash: kdf.hash, iterations: kdf.iterations, digestIterations: digest }
          : { pbkdf: kdf.type, iterations: kdf.time, memoryKiB: kdf.memoryKiB, parallel: kdf.parallel, digestIterations: digest };
      cipher = pool.addCipher({ encryption: volume.encryption, keyBytes: volume.keyBytes, sectorSize: volume.sectorSize }, key.expose());
      // The volume key is random and the layout is fixed, so the payload can be encrypted right
      // away: the keyslot derivation (the slow part of formatting) runs during the copy and
      // only the header write waits for it.
      const token = type === 'luks2' ? options.targetToken?.() : undefined;
      formatting = formatInBackground(capture, type, { ...luksOptions, ...forced }, passphrase, key, volume, token);
      formatting.catch(() => {}); // awaited by the target's ready/finish/abort
    } catch (err) {
      passphrase.wipe();
      key?.wipe();
      throw err;
    }
    const ss = volume.sectorSize;
    const needed = roundUp(requested, ss);
    const dataOffset = volume.dataOffset;

    let device: FileDevice;
    let payloadSize: number;
    let temp: string | undefined;
    if (existing) {
      const usable = Math.max(0, Math.floor((existing.size - dataOffset) / ss) * ss);
      if (usable < needed) {
        throw new InsufficientSpaceError(
          `${options.target} has ${usable} usable bytes after the ${dataOffset}-byte LUKS header; ${needed} are needed. Nothing was written.`,
        );
      }
      device = existing;
      payloadSize = usable;
      if (usable > needed) notes.push(`the payload fills the existing target: ${usable - needed} bytes after the source are encrypted zeros.`);
      // Invalidate any old header first: until the new header is written last, the target opens as nothing.
      await device.writeZeroes(0, dataOffset);
      await device.flush();
    } else {
      temp = partialPath(options.target);
      await removeFile(temp);
      payloadSize = needed;
      device = await FileDevice.open(temp, { create: true, exclusive: true, size: dataOffset + payloadSize, ...fileOptions(mode, true) });
    }
    const cap = capture;
    const vol = volume;
    const cipherId = cipher;
    const formatted = formatting;
    return {
      device,
      file: device,
      pipeline: { device, base: dataOffset, encrypt: { cipher: cipherId, ivTweak: vol.ivTweak }, zeros: 'write' },
      length: payloadSize,
      payloadSize,
      containerSize: dataOffset + payloadSize,
      luks: { volume: vol, capture: cap, cipher: cipherId },
      ready: formatted.then((f) => f.seconds),
      finish: async () => {
        await formatted;
        await device.flush(); // data durable before the header makes it a volume
        // [0, dataOffset) reads as zeros: a new file is sparse, an existing target was zeroed above.
        await cap.replay(device, { zeroed: true });
        await cap.close();
        pool.dropCipher(cipherId);
        // The written header must open and describe exactly the payload we wrote.
        const check = await LuksVolume.open(device, { readOnly: true });
        if (check.dataOffset !== dataOffset || Math.floor(check.payloadSize / ss) * ss !== payloadSize) {
          throw new InvalidArgumentError(`The written LUKS header describes ${check.payloadSize} bytes at ${check.dataOffset}, not ${payloadSize} at ${dataOffset}.`);
        }
        await device.sync();
        await device.close();
        if (temp) await renameDurably(temp, options.target, mode !== 'unsafe');
      },
      abort: async () => {
        await formatted.catch(() => {});
        await cap.close();
        await device.close().catch(() => {});
        if (temp) await removeFile(temp);
      },
    };
  } catch (err) {
    await formatting?.catch(() => {});
    await capture?.close();
    if (cipher !== undefined) pool.dropCipher(cipher);
    await existing?.close().catch(() => {});
    throw err;
  }
}


/**
 * Lays out a LUKS header with the caller's options into a throw-away capture of the real
 * device's size and the cheapest KDF, to learn the data offset, sector size and cipher the
 * real header will have (none of them depends on the keyslot KDF), and to draw the volume key.
 */
async function planLuksLayout(type: 'luks1' | 'luks2', luksOptions: LuksTargetOptions, deviceSize: number): Promise<{ volume: LuksVolume; key: VolumeKey }> {
  const scratch = new HeaderCapture(deviceSize);
  const passphrase = Passphrase.fromString('layout');
  try {
    // The cheapest KDF settings: nothing derived here is kept.
    const pbkdf = luksOptions.pbkdf ?? (type === 'luks1' ? 'pbkdf2' : 'argon2id');
    const kdf: LuksTargetOptions = pbkdf === 'pbkdf2' ? { iterations: 1000 } : { iterations: 4, memoryKiB: 32, parallel: 1 };
    return await LuksVolume.format(scratch, { ...luksOptions, ...kdf, type, passphrase });
  } finally {
    passphrase.wipe();
    await scratch.close();
  }
}

/**
 * Formats the real header into `capture` with the planned volume key and fixed KDF parameters,
 * checking that it lays out exactly as planned. Takes ownership of `passphrase` and `key` (wiped).
 * Resolves with the volume and the seconds spent.
 */
async function formatInBackground(
  capture: HeaderCapture,
  type: 'luks1' | 'luks2',
  luksOptions: LuksTargetOptions,
  passphrase: Passphrase,
  key: VolumeKey,
  planned: LuksVolume,
  token?: { keyManager?: string; keyId: string },
): Promise<{ volume: LuksVolume; seconds: number }> {
  const t0 = performance.now();
  try {
    const real = await LuksVolume.format(capture, { ...luksOptions, type, passphrase, volumeKey: key });
    real.key.wipe();
    const v = real.volume;
    // Into the capture as well: the header reaches the target once, last, token included.
    if (token) await addKeyManagerToken(v, { ...token, keyslots: v.keyslots().map((k) => k.id) });
    if (
      v.dataOffset !== planned.dataOffset ||
      v.sectorSize !== planned.sectorSize ||
      v.encryption !== planned.encryption ||
      v.keyBytes !== planned.keyBytes ||
      v.ivTweak !== planned.ivTweak
    ) {
      throw new InvalidArgumentError('The LUKS header was laid out differently from its plan; nothing was written.');
    }
    if (capture.end > v.dataOffset) throw new InvalidArgumentError('The LUKS header overlaps its own payload.');
    return { volume: v, seconds: (performance.now() - t0) / 1000 };
  } finally {
    passphrase.wipe();
    key.wipe();
  }
}
