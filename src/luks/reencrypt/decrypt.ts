/**
 * In-place decryption of a LUKS2 volume (cryptsetup's `reencrypt --decrypt`): the data ends up
 * as plaintext on the data device, recorded in cryptsetup 2.6's own on-disk state so either
 * tool can finish what the other started. The header always lives on its own device here:
 *
 * - data offset 0 (a detached header): mode "decrypt", direction "backward", resilience
 *   checksum | journal | none, requirement online-reencrypt-v2 — zones from the end of the
 *   device to its start, each decrypted where it lies (lib/luks2/luks2_reencrypt.c,
 *   reencrypt_make_hot/post_segments_backward);
 * - data offset S > 0 (the header exported from an attached volume): "decrypt with data shift",
 *   direction "forward", resilience datashift-checksum | datashift-journal, requirement
 *   online-reencrypt-v3 (reencrypt_decrypt_with_datashift_init). The init copies the first M
 *   bytes of ciphertext (the moved segment, M <= S) over the start of the device; then zones
 *   of S bytes are decrypted from [off+S, off+2S) to [off, off+S) (source and target never
 *   overlap, so a crash inside a zone is recovered by doing it again); last, the moved segment
 *   is decrypted in place under checksum or journal protection. The plaintext then lies at
 *   [0, D); the S bytes after it are truncated (files) or zeroed.
 *
 * One zone: (checksum/journal) store the protection of the old ciphertext in the reencrypt
 * keyslot area and flush; commit A (header with the zone as the "in-reencryption" linear
 * segment); decrypt and write, flush; commit B (the zone in the plaintext segment). The
 * crash-safety argument is in docs/reencrypt.md ("Decrypt in place").
 */
import type { BlockDevice } from '../../block-device.js';
import { CancelledError, CorruptHeaderError, InvalidArgumentError, NotImplementedError, ReadOnlyDeviceError, UnsupportedError, UnsupportedRequirementError, WrongPassphraseError } from '../../errors.js';
import { parseEncryption } from '../../crypto/cipher-spec.js';
import { blockDigestsInto, hashInfo } from '../../crypto/hash.js';
import { createSectorCipher } from '../../crypto/sector-cipher.js';
import { mandatoryRequirements, u64, type Luks2Metadata, type Luks2Segment } from '../../formats/luks2/metadata.js';
import {
  DECRYPT_DATASHIFT_REQ_VERSION,
  DEFAULT_NONE_HOTZONE_BYTES,
  MAX_HOTZONE_BYTES,
  REENCRYPT_REQ_VERSION,
  SEGMENT_FLAG,
  cryptSegment,
  decodeReencryptState,
  encodeReencryptKeyslot,
  linearSegment,
  reencryptRequirementString,
  reencryptVerificationData,
  validateReencryptState,
  type ReencryptState,
} from '../../formats/luks2/reencrypt-state.js';
import type { Passphrase, VolumeKey } from '../../secret.js';
import { readLuks2Headers, writeLuks2Headers, type Luks2HeaderState } from '../luks2-io.js';
import { convertLuksHeader } from '../convert-header.js';
import { decodeLuks1Header, LUKS1_HEADER_SIZE } from '../../formats/luks1/header.js';
import { MemoryDevice } from '../../devices/memory-device.js';
import type { KdfOptions } from '../options.js';
import { onlineReencryptVersion } from '../requirements.js';
import { DEFAULT_HOTZONE_BYTES, largestFreeArea, type InPlaceRunOptions, type Resilience, type ZoneChecksums, type ZoneGate, type ZoneSide } from './engine.js';
import { createDigest, openKeys, openReencryptKeys, startSegment, verifyReencryptDigest } from './keys.js';

/** Decrypts pieces of old ciphertext in place. */
export interface DecryptCipher {
  /** `data` holds whole sectors of ciphertext of plaintext byte `pos`; decrypted in place. */
  decrypt(data: Uint8Array, pos: number): Promise<void>;
  /** Stores the digest of each block of `data` (the old ciphertext) in `checksums.out`. */
  digest(data: Uint8Array, checksums: ZoneChecksums): Promise<void>;
  /** Wipes the key. */
  close(): Promise<void>;
}

/** Makes a `DecryptCipher` for the old side (e.g. on worker threads); the key is copied. */
export type DecryptCipherFactory = (from: ZoneSide) => DecryptCipher;

/**
 * Online decryption (no data shift only): as the re-key's `ZoneGate`, but `begin` gets the old
 * side alone (the new side is the plaintext itself); zones come backward, so a zone ends where
 * the plaintext begins.
 */
export interface DecryptZoneGate extends Omit<ZoneGate, 'begin'> {
  begin(from: ZoneSide, area: { dataOffset: number; dataSize: number }): Promise<void>;
}

/** The calling thread's cipher. */
export const localDecryptCipher: DecryptCipherFactory = (from) => {
  const c = createSectorCipher(parseEncryption(from.encryption, from.keyBytes), from.key, from.sectorSize);
  return {
    decrypt: async (data, pos) => c.decrypt(data, pos / 512 + from.ivTweak),
    digest: async (data, sums) => blockDigestsInto(data, sums.block, sums.hash, sums.out),
    close: async () => c.wipe(),
  };
};

export interface DecryptOptions extends KdfOptions, InPlaceRunOptions {
  /** The LUKS2 header: a detached header, or the header exported from the volume. */
  headerDevice: BlockDevice;
  /** Passphrases tried on the keyslots. The caller keeps and wipes them. */
  passphrases: Passphrase[];
  /** Open only this keyslot (cryptsetup --key-slot). */
  keyslot?: number;
  /** checksum (default), journal, none; with a data shift: checksum or journal for the moved segment. */
  resilience?: Resilience;
  /**
   * Largest hot zone (no data shift), or the size of the moved segment (data shift; at most
   * the data offset; default min(data offset, 20 MiB) as cryptsetup).
   */
  hotzoneSize?: number;
  decryptCipher?: DecryptCipherFactory;
  /** Online decryption: the served view is told about each zone. Refused with a data shift. */
  zoneGate?: DecryptZoneGate;
}

export interface DecryptReport {
  started: boolean;
  recovered: boolean;
  /** The data is plaintext and the header records no reencryption. */
  finished: boolean;
  /** Bytes decrypted by this run, and the plaintext size. */
  bytes: number;
  total: number;
  resilience: string;
  /** The data shift (the old data offset), 0 without one. */
  shift: number;
  /** The device was cut to the plaintext size (data shift, resizable device). */
  truncated: boolean;
  seconds: number;
}

const PIECE_BYTES = 16 * 1024 * 1024;
/** Checksum block: the device block size cryptsetup uses on files (4096). */
const CHECKSUM_BLOCK = 4096;

type Protection = 'checksum' | 'journal' | 'none' | 'datashift';

/** One zone [off, off+len) of plaintext (also its target on the device: the new data offset is 0). */
interface Zone {
  off: number;
  len: number;
  /** Device offset of its old ciphertext. */
  source: number;
  protection: Protection;
  hot: Luks2Segment[];
  post: Luks2Segment[] | 'final';
  /** Plaintext bytes done before it. */
  done: number;
}

interface Geometry {
  /** Plaintext size. */
  dataSize: number;
  /** Data shift (the old data offset); 0 for backward. */
  shift: number;
  /** Moved segment size (data shift). */
  moved: number;
  /** Largest zone (backward). */
  zone: number;
  prev: Luks2Segment;
}

function strip(s: Luks2Segment): Luks2Segment {
  const { flags: _f, ...rest } = s;
  return rest as Luks2Segment;
}

function firstFreeId(used: Iterable<string>): string {
  const set = new Set(used);
  let i = 0;
  while (set.has(String(i))) i++;
  return String(i);
}

function sharedBuffer(size: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(size));
}

/** The old-key segment covering plaintext from `pos` (reencrypt_make_segment_old). */
function oldSegment(g: Geometry, pos: number, size: number | 'dynamic'): Luks2Segment {
  const p = g.prev;
  return cryptSegment(u64(p.offset, 'offset') + pos, u64(p.iv_tweak ?? '0', 'iv_tweak') + pos / 512, size, p.encryption!, p.sector_size!);
}

function movedSegment(g: Geometry): Luks2Segment {
  const p = g.prev;
  return cryptSegment(0, u64(p.iv_tweak ?? '0', 'iv_tweak'), g.moved, p.encryption!, p.sector_size!);
}

const hotLinear = (off: number, len: number) => linearSegment(off, len, [SEGMENT_FLAG.hot]);

/**
 * The next zone as cryptsetup derives it from the header (reencrypt_offset,
 * reencrypt_make_hot_segments_backward / _decrypt_shift, and the matching post segments), or
 * undefined when every byte is plaintext.
 */
function nextZone(meta: Luks2Metadata, s: ReencryptState, g: Geometry): Zone | undefined {
  const segs = s.active.map((id) => meta.segments[id]!);
  const hot = s.hotId !== undefined ? meta.segments[s.hotId]! : undefined;
  const D = g.dataSize;
  const size = (x: Luks2Segment) => u64(x.size, 'segment size');
  if (g.shift === 0) {
    let off: number;
    let len: number;
    if (hot) {
      off = u64(hot.offset, 'hot offset');
      len = size(hot);
    } else if (segs.length === 1) {
      if (segs[0]!.type === 'linear') return undefined;
      len = Math.min(g.zone, D);
      off = D - len;
    } else if (segs.length === 2 && segs[0]!.type === 'crypt' && segs[1]!.type === 'linear') {
      const a = size(segs[0]!);
      len = Math.min(g.zone, a);
      off = a - len;
    } else {
      throw new CorruptHeaderError(`LUKS2 decryption: unexpected layout of ${segs.length} data segments.`);
    }
    if (off + len > D || len <= 0) throw new CorruptHeaderError(`LUKS2 decryption: zone ${off}+${len} lies outside the ${D}-byte data area.`);
    const hotSegs: Luks2Segment[] = [];
    if (off > 0) hotSegs.push(oldSegment(g, 0, off));
    hotSegs.push(hotLinear(off, len));
    if (off + len < D) hotSegs.push(linearSegment(off + len, 'dynamic'));
    const post = off > 0 ? [oldSegment(g, 0, off), linearSegment(off, 'dynamic')] : 'final';
    return { off, len, source: off, protection: s.keyslot.resilience as Protection, hot: hotSegs, post, done: D - off - len };
  }
  // Data shift, forward.
  let off: number;
  if (hot) off = u64(hot.offset, 'hot offset');
  else {
    const crypt = segs.map((x, i) => (x.type === 'crypt' ? i : -1)).filter((i) => i >= 0);
    if (crypt.length === 0) return undefined;
    const last = crypt[crypt.length - 1]!;
    off = last > 0 ? u64(segs[last]!.offset, 'segment offset') - g.shift : 0;
  }
  const M = g.moved;
  if (off === 0) {
    const len = hot ? size(hot) : M;
    if (len !== M) throw new CorruptHeaderError(`LUKS2 decryption: the moved segment zone is ${len} bytes, the moved segment ${M}.`);
    const hotSegs = [hotLinear(0, M)];
    if (M < D) hotSegs.push(linearSegment(M, 'dynamic'));
    const protection = s.keyslot.resilience === 'datashift-journal' ? 'journal' : 'checksum';
    return { off: 0, len: M, source: 0, protection, hot: hotSegs, post: 'final', done: D - M };
  }
  const len = hot ? size(hot) : Math.min(g.shift, D - off);
  if (off < M || off + len > D || len <= 0 || len > g.shift) throw new CorruptHeaderError(`LUKS2 decryption: zone ${off}+${len} does not fit the ${D}-byte data area.`);
  const end = off + len;
  const hotSegs = [movedSegment(g)];
  if (off > M) hotSegs.push(linearSegment(M, off - M));
  hotSegs.push(hotLinear(off, len));
  if (end < D) hotSegs.push(oldSegment(g, end, 'dynamic'));
  const post = end < D ? [movedSegment(g), linearSegment(M, end - M), oldSegment(g, end, 'dynamic')] : [movedSegment(g), linearSegment(M, 'dynamic')];
  return { off, len, source: off + g.shift, protection: 'datashift', hot: hotSegs, post, done: off - M };
}

/**
 * Sets the active segments (ids 0..n-1) followed by the backup segments, and the old digest
 * on the backup and the crypt segments (the order cryptsetup writes: backups first).
 */
function setLayout(meta: Luks2Metadata, s: Pick<ReencryptState, 'previousId' | 'finalId' | 'movedId' | 'oldDigestId'>, active: Luks2Segment[]): void {
  const prev = meta.segments[s.previousId]!;
  const fin = meta.segments[s.finalId]!;
  const moved = s.movedId !== undefined ? meta.segments[s.movedId]! : undefined;
  const segments: Record<string, Luks2Segment> = {};
  active.forEach((a, i) => (segments[String(i)] = a));
  const n = active.length;
  segments[String(n)] = prev;
  segments[String(n + 1)] = fin;
  if (moved) segments[String(n + 2)] = moved;
  meta.segments = segments;
  const crypt = active.flatMap((a, i) => (a.type === 'crypt' ? [String(i)] : []));
  meta.digests[s.oldDigestId!]!.segments = [String(n), ...(moved ? [String(n + 2)] : []), ...crypt];
}

/**
 * The finished header (cryptsetup's reencrypt_teardown_ok for decrypt): one linear segment,
 * no keyslots of the old key, no reencrypt keyslot, no digests, no requirement. With a data
 * shift the segment gets the plaintext size (so a later run can still cut the device to it).
 * Returns the keyslot areas to wipe.
 */
function finalLayout(meta: Luks2Metadata, s: ReencryptState, fixedSize?: number): Array<{ offset: number; size: number }> {
  meta.segments = { '0': linearSegment(0, fixedSize ?? 'dynamic') };
  const removed = new Set<string>([s.keyslotId, ...(s.oldDigestId !== undefined ? meta.digests[s.oldDigestId]!.keyslots : [])]);
  const wipe: Array<{ offset: number; size: number }> = [];
  for (const id of removed) {
    const ks = meta.keyslots[id];
    if (!ks) continue;
    wipe.push({ offset: u64(ks.area.offset, 'offset'), size: u64(ks.area.size, 'size') });
    delete meta.keyslots[id];
  }
  if (s.oldDigestId !== undefined) delete meta.digests[s.oldDigestId];
  if (s.verificationDigestId !== undefined) delete meta.digests[s.verificationDigestId];
  for (const d of Object.values(meta.digests)) d.keyslots = d.keyslots.filter((k) => !removed.has(k));
  for (const t of Object.values(meta.tokens)) t.keyslots = t.keyslots.filter((k) => !removed.has(k));
  const req = meta.config.requirements;
  if (req && Array.isArray(req.mandatory)) {
    req.mandatory = req.mandatory.filter((r) => onlineReencryptVersion(r) === undefined);
    if (req.mandatory.length === 0) delete req.mandatory;
    if (Object.keys(req).length === 0) delete meta.config.requirements;
  }
  return wipe;
}

/** A header whose decryption finished: one linear segment at 0 and no reencryption. */
export function finishedDecryption(meta: Luks2Metadata): { plainSize?: number } | undefined {
  const ids = Object.keys(meta.segments);
  if (ids.length !== 1) return undefined;
  const seg = meta.segments[ids[0]!]!;
  if (seg.type !== 'linear' || u64(seg.offset, 'offset') !== 0 || decodeReencryptState(meta) !== undefined) return undefined;
  return seg.size === 'dynamic' ? {} : { plainSize: u64(seg.size, 'segment size') };
}

/** Cuts a data-shifted device to the plaintext size (a file), or zeroes what lies past it. */
async function dropTail(device: BlockDevice, plainSize: number): Promise<boolean> {
  if (device.size <= plainSize) return false;
  const resize = (device as { resize?: (size: number) => unknown }).resize;
  if (device.capabilities.resize && typeof resize === 'function') {
    await resize.call(device, plainSize);
    await device.flush();
    return true;
  }
  await device.writeZeroes(plainSize, device.size - plainSize);
  await device.flush();
  return false;
}

/** Decrypts (or resumes decrypting) a LUKS2 volume in place. See the module comment. */
export async function decryptLuks2(device: BlockDevice, options: DecryptOptions): Promise<DecryptReport> {
  const t0 = performance.now();
  const header = options.headerDevice;
  if (header === device) throw new InvalidArgumentError('Decryption in place needs the LUKS2 header on its own device (--header): the data moves over the header area.');
  if (header.readOnly || device.readOnly) throw new ReadOnlyDeviceError('Decryption needs the volume and its header open for writing.');
  const read = await readLuks2Headers(header);
  const st = read.state;
  if (read.stale.length > 0) await writeLuks2Headers(header, st);
  let meta = st.metadata;
  const report: DecryptReport = { started: false, recovered: false, finished: false, bytes: 0, total: 0, resilience: '', shift: 0, truncated: false, seconds: 0 };
  const done = (): DecryptReport => ({ ...report, seconds: (performance.now() - t0) / 1000 });

  const finished = finishedDecryption(meta);
  if (finished) {
    // A run that stopped after the final header: only the tail may be left to cut.
    if (options.initOnly) throw new InvalidArgumentError('This volume is already decrypted.');
    if (finished.plainSize !== undefined) report.truncated = await dropTail(device, finished.plainSize);
    report.finished = true;
    report.total = finished.plainSize ?? device.size;
    return done();
  }
  const unknown = mandatoryRequirements(meta).filter((r) => onlineReencryptVersion(r) === undefined);
  if (unknown.length > 0) throw new UnsupportedRequirementError(unknown);

  let state = decodeReencryptState(meta);
  let key: VolumeKey | undefined;
  if (state) {
    validateReencryptState(meta, state);
    const ks = state.keyslot;
    if (ks.mode !== 'decrypt') throw new InvalidArgumentError(`The recorded reencryption is a ${ks.mode}, not a decryption: resume it without --decrypt.`);
    const shifted = ks.resilience.startsWith('datashift');
    if (shifted && options.zoneGate) throw new NotImplementedError('An online decryption with a data shift (attached header) is not built; detach the volume and resume it offline.');
    const okShape = shifted ? ks.direction === 'forward' && state.movedId !== undefined && ks.resilience !== 'datashift' : ks.direction === 'backward' && state.movedId === undefined;
    if (!okShape) throw new UnsupportedError(`Resuming a decryption with direction ${ks.direction} and resilience ${ks.resilience} is not supported.`);
    const wantVersion = shifted ? DECRYPT_DATASHIFT_REQ_VERSION : REENCRYPT_REQ_VERSION;
    if (state.version !== wantVersion) throw new UnsupportedError(`Decryption state version ${state.version} (${state.requirement}) is not supported; this layout needs ${reencryptRequirementString(wantVersion)}.`);
    if (options.resilience !== undefined && (shifted ? `datashift-${options.resilience}` : options.resilience) !== ks.resilience) {
      throw new InvalidArgumentError(`The recorded decryption uses resilience ${ks.resilience}; changing it on resume is not supported.`);
    }
    const oldKeyslots = meta.digests[state.oldDigestId!]!.keyslots.filter((k) => meta.keyslots[k]?.type === 'luks2');
    const segs = state.active.map((id) => meta.segments[id]!);
    if (oldKeyslots.length === 0 && state.hotId === undefined && segs.length === 1 && segs[0]!.type === 'linear') {
      // cryptsetup stopped between removing the keyslots and removing the state: the data is
      // plaintext; the state cannot be verified without a key, so nothing but the header is written.
      finalLayout(meta, state);
      await writeLuks2Headers(header, st);
      report.finished = true;
      report.resilience = ks.resilience;
      return done();
    }
    const keys = await openReencryptKeys(header, meta, state, options.passphrases);
    key = keys.old!;
    try {
      await verifyReencryptDigest(meta, state, keys);
    } catch (err) {
      key.wipe();
      throw err;
    }
  } else {
    if (options.resumeOnly) throw new InvalidArgumentError('No reencryption is recorded on this volume: nothing to resume.');
    if (options.zoneGate && u64(startSegment(structuredClone(meta), options.keyslot, 'Decryption').segment.offset, 'segment offset') !== 0) {
      throw new NotImplementedError('An online decryption with a data shift (a header with a data offset) is not built; detach the volume and decrypt it offline.');
    }
    const init = await initDecrypt(header, device, st, options);
    key = init.key;
    state = init.state;
    meta = st.metadata;
    report.started = true;
  }

  try {
    const ks = state.keyslot;
    report.resilience = ks.resilience;
    const prev = strip(meta.segments[state.previousId]!);
    const shift = ks.shiftSize ?? 0;
    if (shift !== 0 && u64(prev.offset, 'offset') !== shift) throw new CorruptHeaderError('LUKS2 decryption: the data shift is not the old data offset.');
    if (shift === 0 && u64(prev.offset, 'offset') !== 0) throw new CorruptHeaderError('LUKS2 decryption without a data shift needs data offset 0.');
    report.shift = shift;
    const dataSize = device.size - shift;
    const sector = prev.sector_size!;
    if (dataSize <= 0 || dataSize % sector !== 0) throw new InvalidArgumentError(`The data area (${dataSize} bytes) is not a multiple of the encryption sector size ${sector}.`);
    report.total = dataSize;
    const moved = state.movedId !== undefined ? u64(meta.segments[state.movedId]!.size, 'moved segment size') : 0;
    if (shift !== 0 && (moved <= 0 || moved > shift || moved > dataSize)) throw new CorruptHeaderError(`LUKS2 decryption: the moved segment (${moved} bytes) does not fit.`);
    const g: Geometry = { dataSize, shift, moved, zone: zoneSize(ks, sector, options, shift === 0 ? dataSize : moved), prev };
    const side = { encryption: prev.encryption!, keyBytes: key.length, sectorSize: sector, ivTweak: u64(prev.iv_tweak ?? '0', 'iv_tweak'), key: key.expose() };
    await options.zoneGate?.begin(side, { dataOffset: shift, dataSize });
    if (!options.initOnly) {
      const cipher = (options.decryptCipher ?? localDecryptCipher)(side);
      try {
        await runZones(header, device, st, g, cipher, options, report);
      } finally {
        await cipher.close();
      }
    }
  } finally {
    key.wipe();
  }
  return done();
}

/** Largest zone without a data shift (cryptsetup's reencrypt_length, capped at 1 GiB). */
function zoneSize(ks: ReencryptState['keyslot'], sector: number, options: DecryptOptions, limit: number): number {
  const block = ks.checksumBlock ?? sector;
  let max: number;
  if (ks.resilience === 'checksum' || ks.resilience === 'datashift-checksum') max = Math.floor(ks.areaSize / hashInfo(ks.hash!).digestSize) * block;
  else if (ks.resilience === 'journal' || ks.resilience === 'datashift-journal') max = ks.areaSize;
  else max = options.hotzoneSize ?? DEFAULT_NONE_HOTZONE_BYTES;
  let zone = Math.min(options.hotzoneSize ?? DEFAULT_HOTZONE_BYTES, max, MAX_HOTZONE_BYTES, Math.max(limit, block));
  zone -= zone % Math.max(block, sector);
  if (zone < Math.max(block, sector)) throw new InvalidArgumentError(`The hot zone (${zone} bytes) is smaller than the ${Math.max(block, sector)}-byte alignment.`);
  return zone;
}

async function runZones(header: BlockDevice, data: BlockDevice, st: Luks2HeaderState, g: Geometry, cipher: DecryptCipher, options: DecryptOptions, report: DecryptReport): Promise<void> {
  const meta = st.metadata;
  const first = decodeReencryptState(meta)!;
  const ks = first.keyslot;
  const piece = options.pieceBytes ?? PIECE_BYTES;
  const sector = g.prev.sector_size!;
  const block = ks.checksumBlock ?? CHECKSUM_BLOCK;
  if (!Number.isInteger(piece) || piece < block || piece % block !== 0 || piece % sector !== 0) throw new InvalidArgumentError(`The piece size must be a multiple of ${Math.max(block, sector)} bytes.`);
  const buf = sharedBuffer(Math.min(piece, Math.max(g.zone, g.shift, sector)));
  const hashLen = ks.hash !== undefined ? hashInfo(ks.hash).digestSize : 0;
  const gate = options.zoneGate;

  const commit = async (s: ReencryptState, layout: Luks2Segment[] | 'final'): Promise<void> => {
    if (layout === 'final') {
      const wipe = finalLayout(meta, s, g.shift > 0 ? g.dataSize : undefined);
      await writeLuks2Headers(header, st);
      for (const a of wipe) if (a.size > 0) await header.writeZeroes(a.offset, a.size);
      await header.flush();
      if (g.shift > 0) report.truncated = await dropTail(data, g.dataSize);
      report.finished = true;
    } else {
      setLayout(meta, s, layout);
      await writeLuks2Headers(header, st);
    }
  };
  const each = async (len: number, fn: (rel: number, b: Uint8Array) => Promise<void>): Promise<void> => {
    for (let rel = 0; rel < len; rel += buf.length) await fn(rel, buf.subarray(0, Math.min(buf.length, len - rel)));
  };

  /** Pass 1: the protection of the old ciphertext of an in-place zone, in the keyslot area, flushed. */
  const protect = async (z: Zone): Promise<void> => {
    if (z.protection === 'checksum') {
      if ((z.len / block) * hashLen > ks.areaSize || z.len % block !== 0) throw new CorruptHeaderError('The zone does not fit its checksums.');
      const sums = sharedBuffer((z.len / block) * hashLen);
      await each(z.len, async (rel, b) => {
        await data.read(b, z.source + rel);
        await cipher.digest(b, { hash: ks.hash!, block, out: sums.subarray((rel / block) * hashLen, ((rel + b.length) / block) * hashLen) });
      });
      await header.write(sums, ks.areaOffset);
    } else if (z.protection === 'journal') {
      if (z.len > ks.areaSize) throw new CorruptHeaderError('The zone is larger than the journal.');
      await each(z.len, async (rel, b) => {
        await data.read(b, z.source + rel);
        await header.write(b, ks.areaOffset + rel);
      });
    } else return;
    await header.flush();
  };

  /** Pass 2 (and recovery of datashift and journal zones): decrypt and write the zone. */
  const rewrite = async (z: Zone, from: 'data' | 'journal'): Promise<void> => {
    await each(z.len, async (rel, b) => {
      await (from === 'data' ? data.read(b, z.source + rel) : header.read(b, ks.areaOffset + rel));
      await cipher.decrypt(b, z.off + rel);
      await data.write(b, z.off + rel);
    });
  };

  /** Checksum recovery: blocks still holding the old ciphertext (hash equal) are decrypted. */
  const recoverChecksummed = async (z: Zone): Promise<void> => {
    if (z.len % block !== 0 || (z.len / block) * hashLen > ks.areaSize) throw new CorruptHeaderError('The interrupted zone does not fit its checksums.');
    const stored = new Uint8Array((z.len / block) * hashLen);
    await header.read(stored, ks.areaOffset);
    const now = sharedBuffer((buf.length / block) * hashLen);
    await each(z.len, async (rel, b) => {
      await data.read(b, z.off + rel);
      const n = b.length / block;
      await cipher.digest(b, { hash: ks.hash!, block, out: now.subarray(0, n * hashLen) });
      const base = (rel / block) * hashLen;
      const same = (k: number) => Buffer.compare(now.subarray(k * hashLen, (k + 1) * hashLen), stored.subarray(base + k * hashLen, base + (k + 1) * hashLen)) === 0;
      for (let i = 0; i < n; ) {
        if (!same(i)) {
          i++;
          continue;
        }
        let j = i;
        while (j < n && same(j)) j++;
        const run = b.subarray(i * block, j * block);
        await cipher.decrypt(run, z.off + rel + i * block);
        await data.write(run, z.off + rel + i * block);
        i = j;
      }
    });
  };

  for (;;) {
    const s = decodeReencryptState(meta)!;
    const z = nextZone(meta, s, g);
    if (!z) {
      options.onProgress?.({ done: g.dataSize, total: g.dataSize });
      await commit(s, 'final');
      return;
    }
    if (s.hotId !== undefined) {
      // An interrupted zone: rebuild it from its protection, then mark it done.
      await gate?.enter(z.off, z.len);
      let outcome: 'new' | 'unknown' = 'unknown';
      try {
        if (z.protection === 'datashift') await rewrite(z, 'data');
        else if (z.protection === 'journal') await rewrite(z, 'journal');
        else if (z.protection === 'checksum') await recoverChecksummed(z);
        else throw new CorruptHeaderError(`An interrupted zone with resilience ${z.protection} cannot be recovered.`);
        await data.flush();
        report.recovered = true;
        await commit(s, z.post);
        outcome = 'new';
      } finally {
        gate?.leave(z.off, z.len, outcome);
      }
      if (z.post === 'final') {
        options.onProgress?.({ done: g.dataSize, total: g.dataSize });
        return;
      }
      continue;
    }
    options.onProgress?.({ done: z.done, total: g.dataSize });
    if (options.signal?.aborted) throw new CancelledError('Decryption stopped; resume it with `brickcrypt reencrypt --resume-only`.');
    await gate?.enter(z.off, z.len);
    // The zone stays ciphertext until commit A (or, with `none`, the first data write) starts.
    let outcome: 'new' | 'old' | 'unknown' = 'old';
    try {
      await protect(z);
      outcome = 'unknown';
      if (z.protection !== 'none') await commit(s, z.hot);
      await rewrite(z, 'data');
      await data.flush();
      report.bytes += z.len;
      await commit(decodeReencryptState(meta)!, z.post);
      outcome = 'new';
    } finally {
      gate?.leave(z.off, z.len, outcome);
    }
    if (z.post === 'final') {
      options.onProgress?.({ done: g.dataSize, total: g.dataSize });
      return;
    }
  }
}

/**
 * Records a new decryption in ONE header write (cryptsetup's reencrypt_init for decrypt, and
 * reencrypt_decrypt_with_datashift_init for a data offset > 0, which first copies the moved
 * segment to the start of the device and flushes it). Before that write the header is
 * unchanged and the data at the old offset untouched.
 */
async function initDecrypt(header: BlockDevice, device: BlockDevice, st: Luks2HeaderState, options: DecryptOptions): Promise<{ key: VolumeKey; state: ReencryptState }> {
  const meta = structuredClone(st.metadata);
  const { segId, segment: old, digestId: oldDigestId, keyslotIds: wanted } = startSegment(meta, options.keyslot, 'Decryption');
  const { keys } = await openKeys(header, meta, options.passphrases, { keyslotIds: wanted, stopWhen: (k) => k.has(oldDigestId) });
  const key = keys.get(oldDigestId);
  for (const [d, k] of keys) if (d !== oldDigestId) k.wipe();
  if (!key) throw new WrongPassphraseError();
  try {
    const shift = u64(old.offset, 'segment offset');
    const sector = old.sector_size!;
    const dataSize = device.size - shift;
    const resilience = options.resilience ?? 'checksum';
    const hash = hashInfo(options.resilienceHash ?? 'sha256').name;
    const alignment = resilience === 'checksum' ? Math.max(CHECKSUM_BLOCK, sector) : sector;
    if (dataSize <= 0 || dataSize % sector !== 0) throw new InvalidArgumentError(`The data area (${dataSize} bytes) is not a multiple of the encryption sector size ${sector}.`);
    if (options.hotzoneSize !== undefined && (!Number.isInteger(options.hotzoneSize) || options.hotzoneSize <= 0 || options.hotzoneSize % alignment !== 0)) {
      throw new InvalidArgumentError(`The hot zone size must be a positive multiple of ${alignment} bytes.`);
    }
    const area = largestFreeArea(meta, st.bin.hdrSize);
    const prevId = firstFreeId(Object.keys(meta.segments));
    meta.segments[prevId] = { ...structuredClone(old), flags: [SEGMENT_FLAG.previous] };
    const finId = firstFreeId(Object.keys(meta.segments));
    meta.segments[finId] = linearSegment(0, 'dynamic', [SEGMENT_FLAG.final]);
    let version: number;
    let type: 'checksum' | 'journal' | 'none' | 'datashift-checksum' | 'datashift-journal';
    let moved = 0;
    if (shift === 0) {
      if (resilience === 'checksum' && dataSize % CHECKSUM_BLOCK !== 0) throw new InvalidArgumentError(`Checksum resilience needs a data area that is a multiple of ${CHECKSUM_BLOCK} bytes; use --resilience journal.`);
      version = REENCRYPT_REQ_VERSION;
      type = resilience;
      meta.digests[oldDigestId]!.segments.push(prevId);
    } else {
      // cryptsetup: datashift and none do not protect the in-place decryption of the moved segment.
      if (resilience === 'none') throw new InvalidArgumentError('Decryption with a data shift needs resilience checksum or journal (for the moved segment).');
      if (shift % CHECKSUM_BLOCK !== 0) throw new InvalidArgumentError(`The data offset ${shift} is not a multiple of ${CHECKSUM_BLOCK} bytes.`);
      // reencrypt_decrypt_with_datashift_init: the moved segment is at most the shift (default 20 MiB).
      if (options.hotzoneSize !== undefined && options.hotzoneSize > shift) throw new InvalidArgumentError(`The moved segment (--hotzone-size, ${options.hotzoneSize} bytes) cannot be larger than the data offset ${shift}.`);
      moved = Math.min(options.hotzoneSize ?? Math.min(shift, DEFAULT_NONE_HOTZONE_BYTES), dataSize);
      if (moved % alignment !== 0) throw new InvalidArgumentError(`The moved segment (${moved} bytes) is not a multiple of ${alignment} bytes; give --hotzone-size.`);
      const room = resilience === 'checksum' ? Math.floor(area.size / hashInfo(hash).digestSize) * CHECKSUM_BLOCK : area.size;
      if (moved > room) throw new InvalidArgumentError(`The moved segment (${moved} bytes) is larger than its ${resilience} area holds (${room} bytes); give a smaller --hotzone-size.`);
      version = DECRYPT_DATASHIFT_REQ_VERSION;
      type = resilience === 'checksum' ? 'datashift-checksum' : 'datashift-journal';
    }
    if (area.size === 0 && type !== 'none') throw new InvalidArgumentError('No free space in the keyslots area for the reencryption data.');
    const reencId = firstFreeId(Object.keys(meta.keyslots));
    meta.keyslots[reencId] = encodeReencryptKeyslot({
      mode: 'decrypt',
      direction: shift === 0 ? 'backward' : 'forward',
      resilience: type,
      areaOffset: area.offset,
      areaSize: area.size,
      ...(type === 'checksum' || type === 'datashift-checksum' ? { hash, checksumBlock: CHECKSUM_BLOCK } : {}),
      ...(shift !== 0 ? { shiftSize: shift } : {}),
    });
    if (shift !== 0) {
      // Active layout after the move (reencrypt_set_decrypt_shift_segments): the moved copy at 0, the rest in place.
      const movedId = firstFreeId(Object.keys(meta.segments));
      const iv = u64(old.iv_tweak ?? '0', 'iv_tweak');
      meta.segments[movedId] = cryptSegment(0, iv, moved, old.encryption!, sector, [SEGMENT_FLAG.moved]);
      const active = [cryptSegment(0, iv, moved, old.encryption!, sector)];
      if (dataSize > moved) active.push(cryptSegment(shift + moved, iv + moved / 512, 'dynamic', old.encryption!, sector));
      setLayout(meta, { previousId: prevId, finalId: finId, movedId, oldDigestId }, active);
    }
    const req = (meta.config.requirements ??= {});
    req.mandatory = [...(req.mandatory ?? []), reencryptRequirementString(version)];
    const draft = decodeReencryptState(meta)!;
    const verifyId = firstFreeId(Object.keys(meta.digests));
    meta.digests[verifyId] = { type: 'pbkdf2', keyslots: [reencId], segments: [] };
    const vdata = reencryptVerificationData(meta, { ...draft, verificationDigestId: verifyId }, { old: key.expose() });
    try {
      meta.digests[verifyId] = await createDigest(vdata, options, [reencId], []);
    } finally {
      vdata.fill(0);
    }
    const state = decodeReencryptState(meta)!;
    validateReencryptState(meta, state);
    if (shift !== 0) {
      // The moved segment: the first `moved` bytes of ciphertext, copied to the start of the
      // device (over the old header copies, whose binary headers are zeroed too).
      const hdrEnd = Math.min(2 * st.bin.hdrSize, shift);
      if (hdrEnd > moved) await device.writeZeroes(moved, hdrEnd - moved);
      const buf = new Uint8Array(Math.min(options.pieceBytes ?? PIECE_BYTES, moved));
      for (let rel = 0; rel < moved; rel += buf.length) {
        const b = buf.subarray(0, Math.min(buf.length, moved - rel));
        await device.read(b, shift + rel);
        await device.write(b, rel);
      }
      buf.fill(0);
      await device.flush();
    }
    // The one write that records the decryption.
    st.metadata = meta;
    await writeLuks2Headers(header, st);
    return { key, state };
  } catch (err) {
    key.wipe();
    throw err;
  }
}

/**
 * The header area of an attached LUKS2 volume (both header copies and the keyslots area, as
 * `cryptsetup luksHeaderBackup` stores it), to export it before a decryption with data shift.
 */
export async function luks2HeaderArea(device: BlockDevice): Promise<{ bytes: Uint8Array; uuid: string; dataOffset: number }> {
  const { state } = await readLuks2Headers(device, device.size);
  const end = 2 * state.bin.hdrSize + u64(state.metadata.config.keyslots_size, 'keyslots_size');
  const seg = Object.values(state.metadata.segments).find((x) => x.type === 'crypt' && !x.flags?.some((f) => f.startsWith('backup-')));
  const dataOffset = seg ? u64(seg.offset, 'segment offset') : 0;
  if (dataOffset > 0 && end > dataOffset) throw new CorruptHeaderError(`The LUKS2 keyslots area ends at ${end}, past the data offset ${dataOffset}.`);
  const bytes = new Uint8Array(end);
  await device.read(bytes, 0);
  return { bytes, uuid: state.bin.uuid, dataOffset };
}

/**
 * The header to export for the decryption of an attached LUKS1 volume: its header area
 * converted to LUKS2 in memory (as `cryptsetup convert` would, src/luks/convert-header.ts), so
 * the LUKS2 data-shift decryption (and cryptsetup) can work from it. The volume is not written.
 */
export async function luks2HeaderAreaFromLuks1(device: BlockDevice): Promise<{ bytes: Uint8Array; uuid: string; dataOffset: number }> {
  const head = new Uint8Array(LUKS1_HEADER_SIZE);
  await device.read(head, 0);
  const hdr = decodeLuks1Header(head);
  const dataOffset = hdr.payloadOffset * 512;
  if (dataOffset === 0 || dataOffset >= device.size) throw new UnsupportedError('A LUKS1 volume without payload after its header cannot be decrypted in place.');
  // The header area and one sector of payload, so the copy opens as an attached volume.
  const copy = new MemoryDevice(dataOffset + 4096);
  await device.read(copy.bytes.subarray(0, dataOffset), 0);
  await convertLuksHeader(copy, { type: 'luks2' });
  const out = await luks2HeaderArea(copy);
  copy.bytes.fill(0);
  return out;
}
