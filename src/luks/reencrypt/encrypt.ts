/**
 * In-place encryption of a plain device into LUKS2 (cryptsetup's `reencrypt --encrypt --type
 * luks2`, mode "encrypt", direction backward, resilience "datashift" with a
 * "backup-moved-segment"), recorded in cryptsetup 2.6's own on-disk state so either tool can
 * finish what the other started (lib/luks2/luks2_reencrypt.c: reencrypt_set_encrypt_segments,
 * reencrypt_make_hot_segments_encrypt_shift, _enc_create_segments_shift_after,
 * reencrypt_offset_backward_moved, reencrypt_move_data, reencrypt_wipe_unused_device_area).
 *
 * Layout with a data shift S (the new data offset, S = header size): a device of N bytes keeps
 * the plaintext of [0, N-2S). The first S bytes are copied to [N-S, N) (the moved segment), the
 * header goes to [0, S), and the data is encrypted zone by zone from the end backwards, each
 * zone read at [o, o+z) and written encrypted at [S+o, S+o+z) (z <= S, so the source of the zone
 * being written is never overwritten by it: recovery just redoes the zone). The last zone,
 * logical [0, S), is read from the moved copy. The result is a LUKS2 volume of N-S bytes whose
 * first N-2S hold the old plaintext.
 *
 * A regular file without --reduce-device-size is grown by 2S first (N = P+2S) and, once done,
 * cut back to P+S: a normal LUKS2 volume whose usable size is the old file size P. That choice
 * is recorded in a token (type brickcrypt-encrypt-grown) so a resume knows it.
 *
 * The start is crash-safe too: the moved copy is written and flushed, then a copy of the new
 * header H (its used part: binary headers, JSON and keyslot areas) is written into the free gap
 * at max(N-2S, S) and flushed, and only then is H written over [0, S). (With less plaintext than
 * S the gap [N-2S, N-S) reaches into [0, S), so the copy goes to S: free too until the first
 * zone is written.) A crash while H is written at the head leaves a device without a valid head
 * but with H in the gap: a resume finds it there (it checks H's keyslot opens with the
 * passphrase), writes it to the head again (zeros after its used part) and goes on. Before H is
 * in the gap nothing of the plaintext is changed.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { BlockDevice } from '../../block-device.js';
import {
  CancelledError,
  CorruptHeaderError,
  InsufficientSpaceError,
  InvalidArgumentError,
  NotImplementedError,
  ReadOnlyDeviceError,
  UnknownFormatError,
  UnsupportedError,
  WeakKeyError,
  WrongPassphraseError,
} from '../../errors.js';
import { parseEncryption, validateKeyBytes, cipherSpecStrings } from '../../crypto/cipher-spec.js';
import { blockDigestsInto, hashInfo } from '../../crypto/hash.js';
import { createSectorCipher } from '../../crypto/sector-cipher.js';
import { u64, validateLuks2Metadata, type Luks2Metadata, type Luks2Segment, type Luks2Token } from '../../formats/luks2/metadata.js';
import {
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
import { LUKS2_BINARY_HEADER_SIZE } from '../../formats/luks2/binary-header.js';
import { VolumeKey, type Passphrase } from '../../secret.js';
import { SliceDevice } from '../../devices/slice-device.js';
import { isXtsWeak } from '../format.js';
import { allocateLuks2Area, sealLuks2Keyslot } from '../keyslot-store.js';
import { LUKS2_DEFAULTS, defaultKeyBytes, luks2KeyslotAreaBytes } from '../layout.js';
import { buildLuks2Copy, newLuks2HeaderState, readLuks2Headers, writeLuks2Headers, type Luks2HeaderState } from '../luks2-io.js';
import type { KdfOptions } from '../options.js';
import { onlineReencryptVersion } from '../requirements.js';
import { createDigest, openReencryptKeys, verifyReencryptDigest } from './keys.js';
import { largestFreeArea, reencryptLuks2, type InPlaceRunOptions, type Resilience, type ZoneCipher, type ZoneGate, type ZoneSide } from './engine.js';

/** Token that marks a reencryption which grew a regular file: the file is cut back at the end. */
export const GROWN_TOKEN_TYPE = 'brickcrypt-encrypt-grown';

/**
 * Mandatory requirement and token of an encryption whose source is not plaintext but another
 * scheme's ciphertext (a plain dm-crypt volume): while it runs, cryptsetup (which refuses unknown
 * mandatory requirements) and a resume without that source cannot read the old data as plaintext.
 */
export const ENCRYPT_SOURCE_REQUIREMENT = 'brickcrypt-encrypt-source';
export const ENCRYPT_SOURCE_TOKEN_TYPE = 'brickcrypt-encrypt-source';

/** What an encryption from a non-plaintext source records, and how a resume checks it. */
export interface EncryptSource {
  /** The token describing the source (type ENCRYPT_SOURCE_TOKEN_TYPE), written at the start. */
  token: Luks2Metadata['tokens'][string];
  /** Throws (e.g. WrongPassphraseError) when the recorded token is not this source. */
  check(recorded: Luks2Metadata['tokens'][string]): void;
}

/** Encrypts whole sectors of plaintext in place; `pos` is the byte position in the new payload. */
export interface EncryptCipher {
  encrypt(data: Uint8Array, pos: number): Promise<void>;
  close(): Promise<void>;
}

export type EncryptCipherFactory = (side: { encryption: string; keyBytes: number; sectorSize: number; ivTweak: number; key: Uint8Array }) => EncryptCipher;

/** The calling thread's cipher. */
export const localEncryptCipher: EncryptCipherFactory = (side) => {
  const c = createSectorCipher(parseEncryption(side.encryption, side.keyBytes), side.key, side.sectorSize);
  return {
    encrypt: async (data, pos) => c.encrypt(data, pos / 512 + side.ivTweak),
    close: async () => c.wipe(),
  };
};

/** A device that can change its size (a regular file). */
type Growable = BlockDevice & { resize(size: number): Promise<void> | void };

function growable(dev: BlockDevice): dev is Growable {
  return dev.capabilities.resize && typeof (dev as Partial<Growable>).resize === 'function';
}

export interface EncryptOptions extends KdfOptions, InPlaceRunOptions {
  /** Passphrases: the first seals the new keyslot; on resume each is tried. The caller wipes them. */
  passphrases: Passphrase[];
  /**
   * Detached header (cryptsetup --header): the data stays where it is (no shift), encrypted
   * forward with resilience checksum (default), journal or none by the re-key engine.
   */
  headerDevice?: BlockDevice;
  /** With a detached header: the hot zone protection (checksum hash: `resilienceHash`). */
  resilience?: Resilience;
  /** With a detached header: the zone cipher (encrypt only, plus checksums). */
  plainZoneCipher?: (to: ZoneSide) => ZoneCipher;
  /** Online encryption (detached header only): the served view is told about each zone. */
  zoneGate?: ZoneGate;
  /** New keyslot number (default 0). */
  keyslot?: number;
  cipher?: string;
  keySizeBits?: number;
  /** Encryption sector size; default 4096 when the data is a multiple of it, else 512. */
  sectorSize?: number;
  /**
   * cryptsetup --reduce-device-size: the device keeps its size, the last `reduceDeviceSize`
   * bytes of it are given up (half for the header, half as the moved-segment room). Needed on a
   * block device; without it a regular file grows instead.
   */
  reduceDeviceSize?: number;
  /** Header size (the data offset and the data shift) when growing a file, or of a new detached header; default 16 MiB. */
  headerSize?: number;
  /** Largest hot zone (at most the data shift, which is the default). */
  hotzoneSize?: number;
  label?: string;
  uuid?: string;
  cipherFactory?: EncryptCipherFactory;
  /**
   * The device holds another scheme's ciphertext, which `cipherFactory` turns into plaintext
   * before encrypting (no plaintext is ever written). Attached header only.
   */
  source?: EncryptSource;
  /**
   * Tokens recorded with the new header and kept when it finishes (e.g. the LUKS1 target of
   * encrypt-luks1.ts, which converts the finished volume down).
   */
  tokens?: Luks2Token[];
}

export interface EncryptReport {
  /** What the volume is when finished (encrypt-luks1.ts converts the LUKS2 result to LUKS1). */
  type: 'luks1' | 'luks2';
  started: boolean;
  /** An interrupted zone (or header write of the start) was redone. */
  recovered: boolean;
  finished: boolean;
  /** Plaintext bytes encrypted by this run, and the plaintext kept. */
  bytes: number;
  total: number;
  resilience: string;
  keyslots: number[];
  encryption: string;
  sectorSize: number;
  /** Data offset (header size) and data shift of the new volume. */
  dataOffset: number;
  /** The file was grown by this much at the start (cut back by half at the end). */
  grownBytes: number;
  /** Bytes at the end of the device given up (--reduce-device-size); 0 when growing. */
  lostBytes: number;
  /** Size of the LUKS2 payload when finished. */
  volumeSize: number;
  seconds: number;
}

const MIB = 1024 * 1024;
const PIECE_BYTES = 16 * MIB;
/** Area cryptsetup gives the reencrypt keyslot for datashift (LUKS2_keyslot_reencrypt_allocate). */
const DATASHIFT_AREA = 4096;

/** Encrypts (or resumes encrypting) `device` in place. See the module comment. */
export async function encryptLuks2(device: BlockDevice, options: EncryptOptions): Promise<EncryptReport> {
  const t0 = performance.now();
  if (device.readOnly) throw new ReadOnlyDeviceError('Encryption needs the device open for writing.');
  if (options.passphrases.length === 0) throw new InvalidArgumentError('Encryption needs a passphrase.');
  if (options.headerDevice !== undefined) {
    if (options.source !== undefined) throw new InvalidArgumentError('Encryption from a plain dm-crypt source needs the header on the device (no --header).');
    return encryptDetached(device, options.headerDevice, options, t0);
  }
  if (options.zoneGate) throw new NotImplementedError('An online encryption that grows the file or shifts the data is not built; give a detached header (--header FILE).');
  const report: EncryptReport = {
    type: 'luks2',
    started: false,
    recovered: false,
    finished: false,
    bytes: 0,
    total: 0,
    resilience: 'datashift',
    keyslots: [],
    encryption: '',
    sectorSize: 0,
    dataOffset: 0,
    grownBytes: 0,
    lostBytes: 0,
    volumeSize: 0,
    seconds: 0,
  };

  let st: Luks2HeaderState | undefined;
  try {
    const read = await readLuks2Headers(device, device.size);
    st = read.state;
    if (read.stale.length > 0) await writeLuks2Headers(device, st);
  } catch (err) {
    if (!(err instanceof CorruptHeaderError) && !(err instanceof UnknownFormatError)) throw err;
    // No valid header at the head: a plain device, or a start interrupted while the header was
    // written there (then its copy is in the gap).
    st = await recoverStart(device, options);
    if (st) report.recovered = true;
  }
  // --reduce-device-size says where the copy of an interrupted start is: then it is no change.
  const fromStartCopy = report.recovered;

  let key: VolumeKey;
  if (st) {
    const state = decodeReencryptState(st.metadata);
    if (!state) throw new InvalidArgumentError('The device already holds a LUKS2 volume: nothing to encrypt.');
    const mandatory = st.metadata.config.requirements?.mandatory ?? [];
    const fromSource = mandatory.includes(ENCRYPT_SOURCE_REQUIREMENT);
    if (fromSource !== (options.source !== undefined)) {
      throw new InvalidArgumentError(
        fromSource
          ? 'This encryption converts a plain dm-crypt volume: resume it with the same --src-format plain options and key.'
          : 'The recorded encryption is of plaintext, not of a plain dm-crypt volume: resume it without --src-format plain.',
      );
    }
    const unknown = mandatory.filter((r) => onlineReencryptVersion(r) === undefined && r !== ENCRYPT_SOURCE_REQUIREMENT);
    if (unknown.length > 0) throw new UnsupportedError(`The volume has unknown requirements: ${unknown.join(', ')}.`);
    checkEncryptState(st.metadata, state);
    if (options.source) {
      const token = Object.values(st.metadata.tokens).find((t) => t.type === ENCRYPT_SOURCE_TOKEN_TYPE);
      if (!token) throw new CorruptHeaderError(`The header requires ${ENCRYPT_SOURCE_REQUIREMENT} but has no ${ENCRYPT_SOURCE_TOKEN_TYPE} token.`);
      options.source.check(token);
    }
    if (options.cipher !== undefined || options.keySizeBits !== undefined || options.sectorSize !== undefined || (options.reduceDeviceSize !== undefined && !fromStartCopy)) {
      throw new InvalidArgumentError('An encryption is already recorded: resume it without --cipher, --key-size, --sector-size or --reduce-device-size.');
    }
    const keys = await openReencryptKeys(device, st.metadata, state, options.passphrases);
    key = keys.new!;
    try {
      await verifyReencryptDigest(st.metadata, state, { new: key });
    } catch (err) {
      key.wipe();
      throw err;
    }
  } else {
    if (options.resumeOnly) throw new InvalidArgumentError('No encryption is recorded on this device: nothing to resume.');
    const init = await initEncrypt(device, options, report);
    st = init.st;
    key = init.key;
    report.started = true;
  }

  const meta = st.metadata;
  const state = decodeReencryptState(meta)!;
  const fin = meta.segments[state.finalId]!;
  const moved = meta.segments[state.movedId!]!;
  const dataOffset = u64(fin.offset, 'final segment offset');
  const plainSize = u64(meta.segments[state.previousId]!.size, 'previous segment size');
  report.encryption = fin.encryption!;
  report.sectorSize = fin.sector_size!;
  report.dataOffset = dataOffset;
  report.total = plainSize;
  const grown = Object.values(meta.tokens).some((t) => t.type === GROWN_TOKEN_TYPE);
  report.volumeSize = (grown ? u64(moved.offset, 'moved segment offset') : device.size) - dataOffset;
  const cipher = (options.cipherFactory ?? localEncryptCipher)({ encryption: fin.encryption!, keyBytes: key.length, sectorSize: fin.sector_size!, ivTweak: u64(fin.iv_tweak ?? '0', 'iv_tweak'), key: key.expose() });
  try {
    if (!options.initOnly) await runZones(device, st, cipher, options, report, grown);
  } finally {
    await cipher.close();
    key.wipe();
  }
  const after = decodeReencryptState(st.metadata);
  report.finished = after === undefined;
  const digest = Object.values(st.metadata.digests).find((d) => d.segments.includes(after ? after.finalId : '0'));
  report.keyslots = (digest?.keyslots ?? []).map(Number).sort((a, b) => a - b);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/** What this engine resumes: cryptsetup's encrypt, backward, datashift, moved segment, shift = data offset. */
function checkEncryptState(meta: Luks2Metadata, s: ReencryptState): void {
  const ks = s.keyslot;
  if (s.version !== REENCRYPT_REQ_VERSION) throw new UnsupportedError(`Reencryption state version ${s.version} is not supported.`);
  if (ks.mode !== 'encrypt') throw new UnsupportedError(`The recorded reencryption is mode ${ks.mode}, not encrypt.`);
  if (ks.direction !== 'backward' || ks.resilience !== 'datashift' || s.movedId === undefined) {
    throw new UnsupportedError(`Resuming an encryption with direction ${ks.direction}, resilience ${ks.resilience}${s.movedId === undefined ? ', without a moved segment' : ''} is not supported yet.`);
  }
  validateReencryptState(meta, s);
  const fin = meta.segments[s.finalId]!;
  const prev = meta.segments[s.previousId]!;
  const moved = meta.segments[s.movedId]!;
  if (prev.type !== 'linear' || moved.type !== 'linear' || u64(prev.offset, 'offset') !== 0) throw new CorruptHeaderError('LUKS2 encryption: the previous or moved segment is not the expected linear segment.');
  if (u64(fin.offset, 'offset') !== ks.shiftSize) throw new UnsupportedError('Encryption with a data shift other than the data offset is not supported.');
  if (u64(moved.size, 'size') > ks.shiftSize!) throw new CorruptHeaderError('LUKS2 encryption: the moved segment is larger than the data shift.');
}

interface Piece {
  seg: Luks2Segment;
  kind: 'linear' | 'crypt';
}

function activeSegments(meta: Luks2Metadata, s: ReencryptState): Piece[] {
  return s.active.map((id) => {
    const seg = meta.segments[id]!;
    if (seg.type !== 'linear' && seg.type !== 'crypt') throw new CorruptHeaderError(`LUKS2 encryption: segment ${id} has type ${seg.type}.`);
    return { seg, kind: seg.type };
  });
}

/**
 * Replaces the active segments (ids 0..n-1) keeping the backup segments after them, and gives
 * the crypt ones (and backup-final) to the new key's digest (reencrypt_assign_segments).
 */
function setSegments(meta: Luks2Metadata, s: ReencryptState, active: Luks2Segment[]): void {
  // Backups in the order reencrypt_assign_segments_simple adds them: previous, final, moved.
  const backups = [s.previousId, s.finalId, s.movedId!].map((id) => meta.segments[id]!);
  const segments: Record<string, Luks2Segment> = {};
  active.forEach((seg, i) => (segments[String(i)] = seg));
  const ids = backups.map((_, i) => String(active.length + i));
  backups.forEach((seg, i) => (segments[ids[i]!] = seg));
  meta.segments = segments;
  meta.digests[s.newDigestId!]!.segments = [ids[1]!, ...active.flatMap((seg, i) => (seg.type === 'crypt' ? [String(i)] : []))];
}

/** The final header: one crypt segment, no reencrypt keyslot, digest, backups, requirement or token. */
function finalMeta(meta: Luks2Metadata, s: ReencryptState): void {
  const fin = { ...meta.segments[s.finalId]! };
  delete fin.flags;
  meta.segments = { '0': fin };
  delete meta.keyslots[s.keyslotId];
  if (s.verificationDigestId !== undefined) delete meta.digests[s.verificationDigestId];
  meta.digests[s.newDigestId!]!.segments = ['0'];
  for (const [id, t] of Object.entries(meta.tokens)) if (t.type === GROWN_TOKEN_TYPE || t.type === ENCRYPT_SOURCE_TOKEN_TYPE) delete meta.tokens[id];
  const req = meta.config.requirements;
  if (req && Array.isArray(req.mandatory)) {
    req.mandatory = req.mandatory.filter((r) => onlineReencryptVersion(r) === undefined && r !== ENCRYPT_SOURCE_REQUIREMENT);
    if (req.mandatory.length === 0) delete req.mandatory;
    if (Object.keys(req).length === 0) delete meta.config.requirements;
  }
}

/** The next zone (reencrypt_offset_backward_moved): it ends where the linear segments end. */
function nextZone(active: Piece[], shift: number, maxZone: number): { offset: number; length: number; sg: number } | 'done' {
  const linear = active.filter((p) => p.kind === 'linear');
  if (linear.length === 0) {
    if (active.length === 1) return 'done';
    throw new CorruptHeaderError('LUKS2 encryption: several crypt segments and no plaintext left.');
  }
  // Linear segments come first (logically), then the one crypt segment.
  const sg = linear.length - 1;
  if (active.slice(0, linear.length).some((p) => p.kind !== 'linear') || active.length > linear.length + 1) {
    throw new CorruptHeaderError('LUKS2 encryption: unexpected segment order.');
  }
  const linearLength = linear.reduce((n, p) => n + u64(p.seg.size, 'segment size'), 0);
  const last = u64(linear[sg]!.seg.size, 'segment size');
  if (sg > 0 && linearLength < shift) throw new CorruptHeaderError('LUKS2 encryption: the plaintext left is shorter than the data shift.');
  // The moved segment (logical [0, size)) is one zone, as cryptsetup reads it whole from the copy.
  const length = sg === 0 ? last : Math.min(last, maxZone);
  return { offset: linearLength - length, length, sg };
}

/** Active segments while zone [offset, offset+length) is encrypted (reencrypt_make_hot_segments_encrypt_shift). */
function hotSegments(active: Piece[], fin: Luks2Segment, dataOffset: number, z: { offset: number; length: number; sg: number }): Luks2Segment[] {
  const out: Luks2Segment[] = [];
  for (let i = 0; i < z.sg; i++) out.push(active[i]!.seg);
  const last = active[z.sg]!.seg;
  const size = u64(last.size, 'segment size');
  if (size > z.length) out.push({ ...last, size: String(size - z.length) });
  out.push(cryptSegment(dataOffset + z.offset, z.offset / 512, z.length, fin.encryption!, fin.sector_size!, [SEGMENT_FLAG.hot]));
  const crypt = active.find((p) => p.kind === 'crypt');
  if (crypt) out.push(crypt.seg);
  return out;
}

/** Active segments after the zone (_enc_create_segments_shift_after): the zone joins the crypt segment. */
function postSegments(hot: Luks2Segment[], dataOffset: number, z: { offset: number; length: number }): Luks2Segment[] {
  const h = hot.findIndex((s) => s.flags?.includes(SEGMENT_FLAG.hot));
  const out = hot.slice(0, h);
  const after = hot[h + 1];
  const size = after ? u64(after.size, 'segment size') + z.length : z.length;
  const seg = cryptSegment(dataOffset + z.offset, z.offset / 512, h > 0 ? size : 'dynamic', hot[h]!.encryption!, hot[h]!.sector_size!);
  out.push(seg);
  return out;
}

async function runZones(device: BlockDevice, st: Luks2HeaderState, cipher: EncryptCipher, options: EncryptOptions, report: EncryptReport, grown: boolean): Promise<void> {
  const meta = st.metadata;
  const s0 = decodeReencryptState(meta)!;
  const fin = { ...meta.segments[s0.finalId]! };
  delete fin.flags;
  const movedSeg = meta.segments[s0.movedId!]!;
  const movedOffset = u64(movedSeg.offset, 'moved segment offset');
  const movedSize = u64(movedSeg.size, 'moved segment size');
  const shift = s0.keyslot.shiftSize!;
  const dataOffset = u64(fin.offset, 'final offset');
  const plainSize = report.total;
  const align = Math.max(fin.sector_size!, 512);
  let maxZone = Math.min(options.hotzoneSize ?? shift, shift);
  maxZone -= maxZone % align;
  if (maxZone < align) throw new InvalidArgumentError(`The hot zone must be at least ${align} bytes.`);
  const pieceLen = Math.min(options.pieceBytes ?? PIECE_BYTES, shift);
  if (pieceLen % align !== 0) throw new InvalidArgumentError(`The piece size must be a multiple of ${align} bytes.`);
  if (movedOffset + movedSize > device.size && decodeReencryptState(meta)!.active.length > 1) {
    throw new CorruptHeaderError(`The moved segment ${movedOffset}+${movedSize} lies past the end of the ${device.size}-byte device.`);
  }
  const buf = new Uint8Array(new SharedArrayBuffer(pieceLen));

  const doneBytes = (active: Piece[]) => Math.min(plainSize, active.filter((p) => p.kind === 'crypt' && p.seg.size !== 'dynamic').reduce((n, p) => n + u64(p.seg.size, 'size'), 0));

  /** Zone [off, off+len): read the plaintext at `src`, encrypt, write at dataOffset+off; flush. */
  const encryptZone = async (src: number, off: number, len: number): Promise<void> => {
    for (let rel = 0; rel < len; rel += pieceLen) {
      const b = buf.subarray(0, Math.min(pieceLen, len - rel));
      await device.read(b, src + rel);
      await cipher.encrypt(b, off + rel);
      await device.write(b, dataOffset + off + rel);
    }
    buf.fill(0);
    await device.flush();
  };

  for (;;) {
    const s = decodeReencryptState(meta)!;
    const active = activeSegments(meta, s);
    const hotIdx = s.hotId !== undefined ? s.active.indexOf(s.hotId) : -1;
    if (hotIdx >= 0) {
      // An interrupted zone: its source is intact (datashift), so it is simply done again.
      const hot = active[hotIdx]!.seg;
      const off = u64(hot.offset, 'hot offset') - dataOffset;
      const len = u64(hot.size, 'hot size');
      const src = hotIdx === 0 ? movedOffset : dataOffset + off - shift;
      if (len > shift || src + len > device.size || dataOffset + off + len > device.size) throw new CorruptHeaderError('LUKS2 encryption: the interrupted zone lies outside the device.');
      await encryptZone(src, off, len);
      report.recovered = true;
      report.bytes += len;
      setSegments(meta, s, postSegments(active.map((p) => p.seg), dataOffset, { offset: off, length: len }));
      await writeLuks2Headers(device, st);
      continue;
    }
    const z = nextZone(active, shift, maxZone);
    options.onProgress?.({ done: z === 'done' ? plainSize : doneBytes(active), total: plainSize });
    if (z === 'done') {
      await finish(device, st, s, movedOffset, movedSize, grown);
      return;
    }
    if (options.signal?.aborted) throw new CancelledError('Encryption stopped; resume it with `brickcrypt reencrypt --resume-only`.');
    if (z.offset % align !== 0 || z.length % align !== 0) throw new CorruptHeaderError(`LUKS2 encryption: zone ${z.offset}+${z.length} is not aligned to ${align} bytes.`);
    const hot = hotSegments(active, fin, dataOffset, z);
    setSegments(meta, s, hot);
    await writeLuks2Headers(device, st);
    const src = z.sg === 0 ? movedOffset : dataOffset + z.offset - shift;
    await encryptZone(src, z.offset, z.length);
    report.bytes += z.length;
    setSegments(meta, decodeReencryptState(meta)!, postSegments(hot, dataOffset, z));
    await writeLuks2Headers(device, st);
  }
}

/**
 * After the last zone: the moved copy of the plaintext head is removed — a grown file is cut
 * back to the moved segment's offset, otherwise the area is overwritten with random bytes (as
 * cryptsetup's reencrypt_wipe_unused_device_area) — then the final header is written.
 */
async function finish(device: BlockDevice, st: Luks2HeaderState, s: ReencryptState, movedOffset: number, movedSize: number, grown: boolean): Promise<void> {
  if (grown && growable(device)) {
    if (device.size > movedOffset) {
      await device.resize(movedOffset);
      await device.flush();
    }
  } else if (movedOffset + movedSize <= device.size) {
    for (let rel = 0; rel < movedSize; rel += PIECE_BYTES) {
      const n = Math.min(PIECE_BYTES, movedSize - rel);
      await device.write(new Uint8Array(randomBytes(n)), movedOffset + rel);
    }
    await device.flush();
  }
  finalMeta(st.metadata, s);
  await writeLuks2Headers(device, st);
}

/** Where a new encryption puts things. */
interface Plan {
  /** Data offset = data shift = header size. */
  shift: number;
  /** Device size once grown (or as is). */
  deviceSize: number;
  /** Plaintext kept: [0, plainSize). */
  plainSize: number;
  grow: boolean;
}

function planLayout(device: BlockDevice, options: EncryptOptions): Plan {
  if (options.reduceDeviceSize !== undefined) {
    const r = options.reduceDeviceSize;
    if (!Number.isInteger(r) || r <= 0 || r % (2 * 4096) !== 0) throw new InvalidArgumentError('--reduce-device-size must be a positive multiple of 8 KiB (half of it becomes the header).');
    if (r > device.size) throw new InsufficientSpaceError(`--reduce-device-size ${r} is larger than the ${device.size}-byte device.`);
    return { shift: r / 2, deviceSize: device.size, plainSize: device.size - r, grow: false };
  }
  if (!growable(device)) {
    throw new InsufficientSpaceError('There is no room for the LUKS2 header on this block device: give --reduce-device-size SIZE (the last SIZE bytes of the device are given up, the filesystem must have been shrunk first) or a detached header with --header.');
  }
  const shift = options.headerSize ?? LUKS2_DEFAULTS.dataOffset;
  if (!Number.isInteger(shift) || shift <= 0 || shift % 4096 !== 0) throw new InvalidArgumentError('The header size must be a positive multiple of 4096 bytes.');
  return { shift, deviceSize: device.size + 2 * shift, plainSize: device.size, grow: true };
}

/**
 * Records a new encryption (cryptsetup's encrypt_luks2_init + reencrypt_init with
 * CRYPT_REENCRYPT_MOVE_FIRST_SEGMENT): builds the header in memory, grows a file, copies the
 * first S bytes to the moved segment, puts a copy of the header into the gap, then the header
 * at the head. Each step is flushed before the next (see the module comment).
 */
async function initEncrypt(device: BlockDevice, options: EncryptOptions, report: EncryptReport): Promise<{ st: Luks2HeaderState; key: VolumeKey }> {
  const plan = planLayout(device, options);
  const { shift, deviceSize, plainSize } = plan;
  const hdrSize = LUKS2_DEFAULTS.hdrSize;
  const keyslotsSize = shift - 2 * hdrSize;
  if (plainSize <= 0) throw new InsufficientSpaceError('Nothing would be left of the data.');
  const encryption = options.cipher ?? 'aes-xts-plain64';
  const spec = parseEncryption(encryption);
  const keyBytes = options.keySizeBits !== undefined ? options.keySizeBits / 8 : defaultKeyBytes(spec);
  if (!Number.isInteger(keyBytes)) throw new InvalidArgumentError(`Key size ${options.keySizeBits} is not a whole number of bytes.`);
  validateKeyBytes(spec, keyBytes);
  if (keyslotsSize < luks2KeyslotAreaBytes(keyBytes) + DATASHIFT_AREA) throw new InsufficientSpaceError(`A header of ${shift} bytes is too small for a keyslot.`);
  const sectorSize = options.sectorSize ?? (plainSize % 4096 === 0 ? 4096 : 512);
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new InvalidArgumentError(`Sector size ${sectorSize} is not 512, 1024, 2048 or 4096.`);
  if (plainSize % sectorSize !== 0) throw new InvalidArgumentError(`The data (${plainSize} bytes) is not a multiple of the ${sectorSize}-byte encryption sector size.`);
  if (shift % sectorSize !== 0) throw new InvalidArgumentError(`The header size ${shift} is not a multiple of the sector size ${sectorSize}.`);
  const slot = String(options.keyslot ?? 0);
  const passphrase = options.passphrases[0]!;

  let key: VolumeKey | undefined;
  try {
    do key = VolumeKey.random(keyBytes);
    while (isXtsWeak(spec, key.expose()));
    if (isXtsWeak(spec, key.expose())) throw new WeakKeyError('AES-XTS volume key halves are equal.');
    const enc = cipherSpecStrings(parseEncryption(encryption, keyBytes)).encryption;

    // Segments as reencrypt_set_encrypt_segments with move_first_segment: the future layout is
    // [header S][second segment][gap S][first segment S]; offsets are absolute.
    const movedOffset = deviceSize - shift;
    const first = linearSegment(movedOffset, Math.min(shift, plainSize));
    const active: Luks2Segment[] = [first];
    if (plainSize > shift) active.push(linearSegment(shift, plainSize - shift));
    const meta: Luks2Metadata = { keyslots: {}, tokens: {}, segments: {}, digests: {}, config: { json_size: String(hdrSize - LUKS2_BINARY_HEADER_SIZE), keyslots_size: String(keyslotsSize) } };
    active.forEach((seg, i) => (meta.segments[String(i)] = seg));
    const movedId = String(active.length);
    const prevId = String(active.length + 1);
    const finId = String(active.length + 2);
    meta.segments[movedId] = { ...first, flags: [SEGMENT_FLAG.moved] };
    meta.segments[prevId] = linearSegment(0, plainSize, [SEGMENT_FLAG.previous]);
    meta.segments[finId] = cryptSegment(shift, 0, 'dynamic', enc, sectorSize, [SEGMENT_FLAG.final]);

    const area = allocateLuks2Area(meta, hdrSize, luks2KeyslotAreaBytes(keyBytes));
    const sealed = await sealLuks2Keyslot(enc, key, passphrase, { ...options }, area);
    meta.keyslots[slot] = sealed.keyslot;
    meta.digests['0'] = await createDigest(key.expose(), options, [slot], [finId]);
    const reencId = slot === '1' ? '0' : '1';
    const rarea = allocateLuks2Area(meta, hdrSize, DATASHIFT_AREA);
    meta.keyslots[reencId] = encodeReencryptKeyslot({ mode: 'encrypt', direction: 'backward', resilience: 'datashift', areaOffset: rarea.offset, areaSize: rarea.size, shiftSize: shift });
    if (plan.grow) meta.tokens['0'] = { type: GROWN_TOKEN_TYPE, keyslots: [] } as Luks2Metadata['tokens'][string];
    meta.config.requirements = { mandatory: [reencryptRequirementString(REENCRYPT_REQ_VERSION)] };
    if (options.source) {
      meta.tokens[String(Object.keys(meta.tokens).length)] = options.source.token;
      meta.config.requirements.mandatory!.push(ENCRYPT_SOURCE_REQUIREMENT);
    }
    for (const t of options.tokens ?? []) meta.tokens[String(Object.keys(meta.tokens).length)] = structuredClone(t);
    meta.digests['1'] = { type: 'pbkdf2', keyslots: [reencId], segments: [] };
    const draft = decodeReencryptState(meta)!;
    const vdata = reencryptVerificationData(meta, draft, { new: key.expose() });
    try {
      meta.digests['1'] = await createDigest(vdata, options, [reencId], []);
    } finally {
      vdata.fill(0);
    }
    validateReencryptState(meta, decodeReencryptState(meta)!);
    validateLuks2Metadata(meta, { hdrSize });
    const st = newLuks2HeaderState({ hdrSize, metadata: meta, uuid: options.uuid ?? randomUUID(), label: options.label ?? '', seqid: 1n });
    const image = new Uint8Array(shift);
    image.set(sealed.material, area.offset);
    image.set(buildLuks2Copy(st, 'primary'), 0);
    image.set(buildLuks2Copy(st, 'secondary'), hdrSize);
    sealed.material.fill(0);

    // The copy of the header must fit between the head and the moved segment.
    const used = headerBytesUsed(meta, hdrSize);
    if (startCopyAt(deviceSize, shift) + used > movedOffset) {
      throw new InsufficientSpaceError(`${plainSize} bytes of data are too few to encrypt in place crash-safely: the copy of the header needs ${used} bytes of room before the moved data.`);
    }
    // 1. Room: a file grows by 2S (the gap and the moved segment).
    if (plan.grow) {
      await (device as Growable).resize(deviceSize);
      report.grownBytes = 2 * shift;
    } else {
      report.lostBytes = options.reduceDeviceSize!;
    }
    // 2. The first S bytes of plaintext to the moved segment (reencrypt_move_data), flushed.
    const movedLen = Math.min(shift, plainSize);
    for (let rel = 0; rel < movedLen; rel += PIECE_BYTES) {
      const b = new Uint8Array(Math.min(PIECE_BYTES, movedLen - rel));
      await device.read(b, rel);
      await device.write(b, movedOffset + rel);
      b.fill(0);
    }
    await device.flush();
    // 3. A copy of the header into the gap (free until the first zone), then 4. the header at the head.
    await writeHeaderImage(device, startCopyAt(deviceSize, shift), image.subarray(0, used), hdrSize);
    await writeHeaderImage(device, 0, image, hdrSize);
    image.fill(0);
    return { st, key };
  } catch (err) {
    key?.wipe();
    throw err;
  }
}

/** Where the copy of a new header goes: the gap [N-2S, N-S), or S when that reaches into the head [0, S). */
function startCopyAt(deviceSize: number, shift: number): number {
  return Math.max(deviceSize - 2 * shift, shift);
}

/** Bytes of a header image that matter: the binary headers and JSON, and the keyslot areas (4 KiB aligned). */
function headerBytesUsed(meta: Luks2Metadata, hdrSize: number): number {
  let end = 2 * hdrSize;
  for (const ks of Object.values(meta.keyslots)) end = Math.max(end, u64(ks.area.offset, 'area offset') + u64(ks.area.size, 'area size'));
  return Math.ceil(end / 4096) * 4096;
}

/** Writes a header image at `base`: everything but the two binary headers, flush, then those, flush. */
async function writeHeaderImage(device: BlockDevice, base: number, image: Uint8Array, hdrSize: number): Promise<void> {
  const bin = LUKS2_BINARY_HEADER_SIZE;
  await device.write(image.subarray(bin, hdrSize), base + bin);
  await device.write(image.subarray(hdrSize + bin), base + hdrSize + bin);
  await device.flush();
  await device.write(image.subarray(hdrSize, hdrSize + bin), base + hdrSize);
  await device.write(image.subarray(0, bin), base);
  await device.flush();
}

/**
 * Header sizes an interrupted start is looked for with when none is given: LUKS2's default and
 * the LUKS1 payload offsets of 128-, 256- and 512-bit keys (encrypt-luks1.ts), 1 and 2 MiB.
 */
const START_COPY_SHIFTS = [LUKS2_DEFAULTS.dataOffset, 2 * MIB, 1 * MIB];

/**
 * The copy of the header a start left at startCopyAt (written after the moved copy was flushed)
 * when it describes this very layout for one of the candidate shifts; reads only.
 */
async function findStartCopy(device: BlockDevice, options: Pick<EncryptOptions, 'reduceDeviceSize' | 'headerSize'>): Promise<{ gap: SliceDevice; st: Luks2HeaderState; s: ReencryptState; shift: number } | undefined> {
  const given = options.reduceDeviceSize !== undefined ? options.reduceDeviceSize / 2 : options.headerSize;
  for (const shift of given !== undefined ? [given] : START_COPY_SHIFTS) {
    if (!Number.isInteger(shift) || shift <= 0 || device.size < 2 * shift) continue;
    const gap = new SliceDevice(device, startCopyAt(device.size, shift), shift);
    let st: Luks2HeaderState;
    try {
      st = (await readLuks2Headers(gap)).state;
    } catch {
      continue;
    }
    const s = (() => {
      try {
        return decodeReencryptState(st.metadata);
      } catch {
        return undefined;
      }
    })();
    if (!s || s.keyslot.mode !== 'encrypt' || s.movedId === undefined || s.keyslot.shiftSize !== shift) continue;
    const prev = st.metadata.segments[s.previousId]!;
    const moved = st.metadata.segments[s.movedId]!;
    if (u64(prev.size, 'size') !== device.size - 2 * shift || u64(moved.offset, 'offset') !== device.size - shift) continue;
    return { gap, st, s, shift };
  }
  return undefined;
}

/**
 * The header size (data shift) of a start interrupted while the header was written to the head
 * of `device` (no valid header there, its copy in the gap), or undefined. Reads only, no KDF.
 */
export async function interruptedStartShift(device: BlockDevice, options: Pick<EncryptOptions, 'reduceDeviceSize' | 'headerSize'> = {}): Promise<number | undefined> {
  return (await findStartCopy(device, options))?.shift;
}

/**
 * A start interrupted while the header was written to the head: the gap [N-2S, N-S) holds a
 * copy of the header. When it describes this very layout and the passphrase opens its keyslot,
 * it is written to the head again.
 */
async function recoverStart(device: BlockDevice, options: EncryptOptions): Promise<Luks2HeaderState | undefined> {
  const found = await findStartCopy(device, options);
  if (!found) return undefined;
  const { gap, st, s, shift } = found;
  // Only the header it was written with: its keyslot must open with the passphrase. A copy it
  // does not open is still the record of an interrupted start (findStartCopy checked its shape),
  // so the run stops here: treating the device as plaintext would encrypt over the head.
  try {
    const keys = await openReencryptKeys(gap, st.metadata, s, options.passphrases);
    keys.new?.wipe();
  } catch (err) {
    if (err instanceof WrongPassphraseError) throw new WrongPassphraseError('An interrupted encryption start is recorded on this device, and the passphrase does not open it.');
    throw err;
  }
  const image = new Uint8Array(shift);
  const used = headerBytesUsed(st.metadata, st.bin.hdrSize);
  if (used > shift) throw new CorruptHeaderError('The copy of the header describes keyslots past its end.');
  await gap.read(image.subarray(0, used), 0);
  await writeHeaderImage(device, 0, image, st.bin.hdrSize);
  image.fill(0);
  return (await readLuks2Headers(device, device.size)).state;
}

/** The calling thread's encrypt-only zone cipher for the re-key engine (detached header). */
export const localPlainZoneCipher = (to: ZoneSide): ZoneCipher => {
  const c = createSectorCipher(parseEncryption(to.encryption, to.keyBytes), to.key, to.sectorSize);
  return {
    transform: async (data, pos) => c.encrypt(data, pos / 512 + to.ivTweak),
    digest: async (data, sums) => {
      blockDigestsInto(data, sums.block, sums.hash, sums.out);
    },
    close: async () => c.wipe(),
  };
};

/** Checksum block of the detached-header encryption (cryptsetup: the device block size, 4096 on files). */
const CHECKSUM_BLOCK = 4096;

/**
 * Encryption with a detached header (cryptsetup's encrypt_luks2_init without data shift): the
 * header device gets a LUKS2 header whose segments say "all plaintext" (linear, offset 0) with
 * the new crypt segment as backup-final, mode encrypt, direction forward; the re-key engine
 * then rewrites the data in place zone by zone with the chosen resilience (its old side being
 * linear, the zone cipher only encrypts). A state already on the header device is resumed.
 */
async function encryptDetached(device: BlockDevice, header: BlockDevice, options: EncryptOptions, t0: number): Promise<EncryptReport> {
  if (header.readOnly) throw new ReadOnlyDeviceError('Encryption needs the header device open for writing.');
  if (options.reduceDeviceSize !== undefined) throw new InvalidArgumentError('--reduce-device-size is not used with a detached header (the data does not move).');
  let st: Luks2HeaderState | undefined;
  try {
    st = (await readLuks2Headers(header, device.size)).state;
  } catch (err) {
    if (!(err instanceof CorruptHeaderError) && !(err instanceof UnknownFormatError)) throw err;
  }
  let started = false;
  if (st) {
    const s = decodeReencryptState(st.metadata);
    if (!s) throw new InvalidArgumentError('The header already describes a LUKS2 volume: nothing to encrypt.');
    if (s.keyslot.mode !== 'encrypt') throw new UnsupportedError(`The recorded reencryption is mode ${s.keyslot.mode}, not encrypt.`);
    if (options.cipher !== undefined || options.keySizeBits !== undefined || options.sectorSize !== undefined) {
      throw new InvalidArgumentError('An encryption is already recorded: resume it without --cipher, --key-size or --sector-size.');
    }
  } else {
    if (options.resumeOnly) throw new InvalidArgumentError('No encryption is recorded on this header: nothing to resume.');
    await initDetached(device, header, options);
    started = true;
  }
  const base: EncryptReport = {
    type: 'luks2',
    started,
    recovered: false,
    finished: false,
    bytes: 0,
    total: device.size,
    resilience: options.resilience ?? 'checksum',
    keyslots: [],
    encryption: '',
    sectorSize: 0,
    dataOffset: 0,
    grownBytes: 0,
    lostBytes: 0,
    volumeSize: device.size,
    seconds: 0,
  };
  // The recorded state carries the layout: the engine resumes it (cipher options are not repeated).
  const { cipher: _c, keySizeBits: _k, sectorSize: _s, keyslot: _ks, headerSize: _h, reduceDeviceSize: _r, ...rest } = options;
  const r = await reencryptLuks2(device, { ...rest, headerDevice: header, resumeOnly: true, plainZoneCipher: options.plainZoneCipher ?? localPlainZoneCipher });
  return { ...base, ...r, started, seconds: (performance.now() - t0) / 1000 };
}

async function initDetached(device: BlockDevice, header: BlockDevice, options: EncryptOptions): Promise<void> {
  const hdrSize = LUKS2_DEFAULTS.hdrSize;
  const metaEnd = options.headerSize ?? LUKS2_DEFAULTS.dataOffset;
  if (!Number.isInteger(metaEnd) || metaEnd % 4096 !== 0 || metaEnd < 2 * hdrSize + luks2KeyslotAreaBytes(64) + 4096) throw new InvalidArgumentError(`Header size ${metaEnd} is not a multiple of 4096 bytes large enough for a keyslot.`);
  if (header.size < metaEnd) {
    if (!growable(header)) throw new InsufficientSpaceError(`The header device needs ${metaEnd} bytes.`);
    await header.resize(metaEnd);
  }
  const plainSize = device.size;
  const encryption = options.cipher ?? 'aes-xts-plain64';
  const spec = parseEncryption(encryption);
  const keyBytes = options.keySizeBits !== undefined ? options.keySizeBits / 8 : defaultKeyBytes(spec);
  if (!Number.isInteger(keyBytes)) throw new InvalidArgumentError(`Key size ${options.keySizeBits} is not a whole number of bytes.`);
  validateKeyBytes(spec, keyBytes);
  const sectorSize = options.sectorSize ?? (plainSize % 4096 === 0 ? 4096 : 512);
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new InvalidArgumentError(`Sector size ${sectorSize} is not 512, 1024, 2048 or 4096.`);
  if (plainSize === 0 || plainSize % sectorSize !== 0) throw new InvalidArgumentError(`The data (${plainSize} bytes) is not a multiple of the ${sectorSize}-byte encryption sector size.`);
  const resilience = options.resilience ?? 'checksum';
  if (resilience === 'checksum' && plainSize % CHECKSUM_BLOCK !== 0) throw new InvalidArgumentError(`Checksum resilience needs data that is a multiple of ${CHECKSUM_BLOCK} bytes; use --resilience journal.`);
  const slot = String(options.keyslot ?? 0);
  let key: VolumeKey | undefined;
  try {
    do key = VolumeKey.random(keyBytes);
    while (isXtsWeak(spec, key.expose()));
    const enc = cipherSpecStrings(parseEncryption(encryption, keyBytes)).encryption;
    const meta: Luks2Metadata = {
      keyslots: {},
      tokens: {},
      segments: {
        '0': linearSegment(0, 'dynamic'),
        '1': linearSegment(0, 'dynamic', [SEGMENT_FLAG.previous]),
        '2': cryptSegment(0, 0, 'dynamic', enc, sectorSize, [SEGMENT_FLAG.final]),
      },
      digests: {},
      config: { json_size: String(hdrSize - LUKS2_BINARY_HEADER_SIZE), keyslots_size: String(metaEnd - 2 * hdrSize) },
    };
    const area = allocateLuks2Area(meta, hdrSize, luks2KeyslotAreaBytes(keyBytes));
    const sealed = await sealLuks2Keyslot(enc, key, options.passphrases[0]!, { ...options }, area);
    meta.keyslots[slot] = sealed.keyslot;
    meta.digests['0'] = await createDigest(key.expose(), options, [slot], ['2']);
    const reencId = slot === '1' ? '0' : '1';
    const rarea = largestFreeArea(meta, hdrSize);
    meta.keyslots[reencId] = encodeReencryptKeyslot({
      mode: 'encrypt',
      direction: 'forward',
      resilience,
      areaOffset: rarea.offset,
      areaSize: rarea.size,
      ...(resilience === 'checksum' ? { hash: hashInfo(options.resilienceHash ?? 'sha256').name, checksumBlock: CHECKSUM_BLOCK } : {}),
    });
    meta.config.requirements = { mandatory: [reencryptRequirementString(REENCRYPT_REQ_VERSION)] };
    (options.tokens ?? []).forEach((t, i) => (meta.tokens[String(i)] = structuredClone(t)));
    meta.digests['1'] = { type: 'pbkdf2', keyslots: [reencId], segments: [] };
    const vdata = reencryptVerificationData(meta, decodeReencryptState(meta)!, { new: key.expose() });
    try {
      meta.digests['1'] = await createDigest(vdata, options, [reencId], []);
    } finally {
      vdata.fill(0);
    }
    validateReencryptState(meta, decodeReencryptState(meta)!);
    const st = newLuks2HeaderState({ hdrSize, metadata: meta, uuid: options.uuid ?? randomUUID(), label: options.label ?? '' });
    // The header device only: the data is not touched until the engine runs.
    await header.writeZeroes(0, metaEnd);
    await header.write(sealed.material, area.offset);
    sealed.material.fill(0);
    await header.flush();
    await writeLuks2Headers(header, st);
  } finally {
    key?.wipe();
  }
}
