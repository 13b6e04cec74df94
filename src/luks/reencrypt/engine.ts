/**
 * In-place re-encryption of a LUKS2 volume under a new volume key (cryptsetup's
 * `reencrypt`, mode "reencrypt", direction forward), recorded in cryptsetup 2.6's own on-disk
 * state (formats/luks2/reencrypt-state.ts) so either tool can resume what the other started.
 *
 * One run: open the keys (or initialise: new keyslots for the new key, then ONE header write
 * that records the reencryption), recover an interrupted hot zone if the header names one, then
 * rewrite the data zone by zone, and finish with ONE header write that drops the old key, after
 * which the freed keyslot areas are wiped.
 *
 * A zone [off, off+len) with resilience checksum or journal (the crash-safety argument, see
 * docs/reencrypt.md):
 *   1. read the old ciphertext C of the zone;
 *   2. write its protection into the reencrypt keyslot area: checksum = hash of each block of C,
 *      journal = C itself; flush;
 *   3. commit A: header with the zone as the "in-reencryption" segment;
 *   4. decrypt C with the old key, encrypt with the new, write it back; flush;
 *   5. commit B: header with the zone in the new segment (for the last zone: the final header).
 * A crash before commit A leaves the zone untouched under the old key (nothing changed the data);
 * after commit B the zone is new. Between them recovery rebuilds the zone: journal from the
 * saved old ciphertext, checksum by re-encrypting exactly the blocks whose hash still equals the
 * old ciphertext's (the others were written; a block is assumed to be written whole, as
 * cryptsetup assumes of its 4096-byte checksum blocks). Resilience none skips 1-3: a crash inside
 * a zone loses that zone (as with cryptsetup); stopping on a signal is safe.
 */
import type { BlockDevice } from '../../block-device.js';
import {
  CancelledError,
  CorruptHeaderError,
  InvalidArgumentError,
  ReadOnlyDeviceError,
  UnsupportedError,
  UnsupportedRequirementError,
  WeakKeyError,
  WrongPassphraseError,
} from '../../errors.js';
import { parseEncryption, validateKeyBytes } from '../../crypto/cipher-spec.js';
import { blockDigestsInto, hashInfo } from '../../crypto/hash.js';
import { createSectorCipher } from '../../crypto/sector-cipher.js';
import { mandatoryRequirements, u64, type Luks2Metadata, type Luks2Segment } from '../../formats/luks2/metadata.js';
import {
  MAX_HOTZONE_BYTES,
  REENCRYPT_REQ_VERSION,
  SEGMENT_FLAG,
  cryptSegment,
  decodeReencryptState,
  encodeReencryptKeyslot,
  forwardOffset,
  hotSegmentsForward,
  postSegmentsForward,
  reencryptRequirementString,
  reencryptVerificationData,
  validateReencryptState,
  type LayoutPair,
  type ReencryptState,
} from '../../formats/luks2/reencrypt-state.js';
import { VolumeKey, type Passphrase } from '../../secret.js';
import { isXtsWeak } from '../format.js';
import { allocateLuks2Area, sealLuks2Keyslot } from '../keyslot-store.js';
import { defaultKeyBytes, luks2KeyslotAreaBytes } from '../layout.js';
import { readLuks2Headers, writeLuks2Headers, type Luks2HeaderState } from '../luks2-io.js';
import type { KdfOptions } from '../options.js';
import { onlineReencryptVersion } from '../requirements.js';
import { createDigest, openKeys, openReencryptKeys, startSegment, verifyReencryptDigest } from './keys.js';

export type Resilience = 'checksum' | 'journal' | 'none';

/** Cipher parameters of one side (old or new) of a reencryption. */
export interface ZoneSide {
  encryption: string;
  keyBytes: number;
  sectorSize: number;
  /** IV offset of payload byte 0, in 512-byte units (the segment's iv_tweak). */
  ivTweak: number;
  key: Uint8Array;
}

/** Re-encrypts zones in place: decrypt with the old key, encrypt with the new. */
/** Checksums of the old ciphertext, computed by the zone cipher before it transforms a zone. */
export interface ZoneChecksums {
  hash: string;
  block: number;
  /** One digest per block, in order; in a SharedArrayBuffer. */
  out: Uint8Array;
}

export interface ZoneCipher {
  /** `data` holds whole sectors of ciphertext at payload byte `pos`; it is rewritten in place. */
  transform(data: Uint8Array, pos: number): Promise<void>;
  /** Stores the digest of each block of `data` (the old ciphertext) in `checksums.out`. */
  digest(data: Uint8Array, checksums: ZoneChecksums): Promise<void>;
  /** Wipes the keys. */
  close(): Promise<void>;
}

/** Makes a `ZoneCipher` (e.g. on worker threads); keys are copied, not kept. */
export type ZoneCipherFactory = (from: ZoneSide, to: ZoneSide) => ZoneCipher;

/** The calling thread's ciphers (native XTS where built). */
export const localZoneCipher: ZoneCipherFactory = (from, to) => {
  const a = createSectorCipher(parseEncryption(from.encryption, from.keyBytes), from.key, from.sectorSize);
  const b = createSectorCipher(parseEncryption(to.encryption, to.keyBytes), to.key, to.sectorSize);
  return {
    transform: async (data, pos) => {
      a.decrypt(data, pos / 512 + from.ivTweak);
      b.encrypt(data, pos / 512 + to.ivTweak);
    },
    digest: async (data, sums) => {
      blockDigestsInto(data, sums.block, sums.hash, sums.out);
    },
    close: async () => {
      a.wipe();
      b.wipe();
    },
  };
};

/** Run control every in-place engine takes (re-key, encrypt, decrypt), with cryptsetup's meanings. */
export interface InPlaceRunOptions {
  /** Checksum hash (cryptsetup --resilience-hash), default sha256. */
  resilienceHash?: string;
  /** Largest hot zone in bytes (cryptsetup --hotzone-size); each engine says its default. */
  hotzoneSize?: number;
  /** Bytes of a zone held in memory at a time; default 16 MiB. */
  pieceBytes?: number;
  /** Only continue a recorded operation; never start one. */
  resumeOnly?: boolean;
  /** Only record the operation (keyslots, state); rewrite no data. */
  initOnly?: boolean;
  /** Stops at the next zone boundary (a consistent, resumable point) with CancelledError. */
  signal?: AbortSignal;
  onProgress?: (progress: { done: number; total: number }) => void;
}

export interface ReencryptOptions extends KdfOptions, InPlaceRunOptions {
  /** Detached header (cryptsetup --header). */
  headerDevice?: BlockDevice;
  /** Passphrases for the keyslots (each tried on each keyslot). The caller keeps and wipes them. */
  passphrases: Passphrase[];
  /** Keep only this keyslot (cryptsetup --key-slot): the others are removed when it finishes. */
  keyslot?: number;
  /** New cipher, key size and sector size (default: those of the volume). */
  cipher?: string;
  keySizeBits?: number;
  sectorSize?: number;
  /** Default checksum (cryptsetup's default). */
  resilience?: Resilience;
  zoneCipher?: ZoneCipherFactory;
  /**
   * Zone cipher of an encryption (mode encrypt, forward, detached header: the old segment is
   * linear plaintext): `transform` only encrypts. Required to resume such a state.
   */
  plainZoneCipher?: (to: ZoneSide) => ZoneCipher;
  /** Online reencryption: the served view is told about each zone (see `ZoneGate`). */
  zoneGate?: ZoneGate;
}

/**
 * Hooks for a reencryption of a volume that is served meanwhile (online): `begin` once the keys
 * are known (the callee copies what it needs), `enter` before a zone's protection is taken (the
 * callee holds back requests into it), `leave` after its last header commit or failure, saying
 * where the zone's data now is — `new` (committed), `old` (nothing written), `unknown`.
 */
export interface ZoneGate {
  /** `from` is undefined when the old side is plaintext (mode encrypt, detached header). */
  begin(from: ZoneSide | undefined, to: ZoneSide, area: { dataOffset: number; dataSize: number }): Promise<void>;
  enter(offset: number, length: number): Promise<void>;
  leave(offset: number, length: number, outcome: 'new' | 'old' | 'unknown'): void;
}

export interface ReencryptReport {
  /** This run recorded a new reencryption. */
  started: boolean;
  /** This run recovered a zone an interrupted run had left half rewritten. */
  recovered: boolean;
  /** The reencryption is complete (else it is recorded and resumable). */
  finished: boolean;
  /** Payload bytes rewritten by this run, and the payload size. */
  bytes: number;
  total: number;
  resilience: string;
  /** Keyslots that hold the new key. */
  keyslots: number[];
  encryption: string;
  sectorSize: number;
  seconds: number;
}

/**
 * Hot zone when none is given: large, so that the header commits (each several flushes) are few;
 * it is worked in PIECE_BYTES pieces, so memory does not grow with it. (cryptsetup's zone is up to
 * 1 GiB, held in memory whole.)
 */
export const DEFAULT_HOTZONE_BYTES = 256 * 1024 * 1024;
/** Piece of a zone in memory at a time (two are, read ahead and written). */
const PIECE_BYTES = 16 * 1024 * 1024;
/** Checksum block: cryptsetup uses the device block size (4096 on files), at least the sector sizes. */
const CHECKSUM_BLOCK = 4096;

function firstFreeId(used: Iterable<string>): string {
  const set = new Set(used);
  let i = 0;
  while (set.has(String(i))) i++;
  return String(i);
}

/** cryptsetup's LUKS2_find_area_max_gap: the largest free gap in the keyslots area. */
export function largestFreeArea(meta: Luks2Metadata, hdrSize: number): { offset: number; size: number } {
  const start = 2 * hdrSize;
  const end = start + u64(meta.config.keyslots_size, 'keyslots_size');
  const used = Object.values(meta.keyslots)
    .map((k) => [u64(k.area.offset, 'offset'), u64(k.area.offset, 'offset') + u64(k.area.size, 'size')] as const)
    .filter(([s, e]) => e > s)
    .sort((a, b) => a[0] - b[0]);
  let best = { offset: start, size: 0 };
  let pos = start;
  for (const [s, e] of used) {
    if (s - pos > best.size) best = { offset: pos, size: s - pos };
    pos = Math.max(pos, e);
  }
  if (end - pos > best.size) best = { offset: pos, size: end - pos };
  return best;
}

function stripFlags(s: Luks2Segment): Luks2Segment {
  const { flags: _flags, ...rest } = s;
  return rest as Luks2Segment;
}

/** The old and new layouts the backup segments record. */
function layoutsOf(meta: Luks2Metadata, s: ReencryptState): LayoutPair {
  return { previous: stripFlags(meta.segments[s.previousId]!), final: stripFlags(meta.segments[s.finalId]!) };
}

type Role = 'new' | 'old' | 'hot';

/**
 * Replaces the segments with `active` (ids 0..n-1, as cryptsetup's LUKS2_segments_set) followed
 * by the backup segments, and assigns the digests: new-key segments and the hot zone to the new
 * digest, old-key ones and the hot zone to the old digest (reencrypt_assign_segments).
 */
function setLayout(meta: Luks2Metadata, s: ReencryptState, active: Array<{ seg: Luks2Segment; role: Role }>): void {
  const prev = meta.segments[s.previousId]!;
  const fin = meta.segments[s.finalId]!;
  const segments: Record<string, Luks2Segment> = {};
  active.forEach((a, i) => (segments[String(i)] = a.seg));
  const prevId = String(active.length);
  const finId = String(active.length + 1);
  segments[prevId] = prev;
  segments[finId] = fin;
  meta.segments = segments;
  const ids = (roles: Role[]) => active.flatMap((a, i) => (roles.includes(a.role) ? [String(i)] : []));
  if (s.oldDigestId !== undefined) meta.digests[s.oldDigestId]!.segments = [...ids(['hot', 'old']), prevId];
  if (s.newDigestId !== undefined) meta.digests[s.newDigestId]!.segments = [...ids(['hot', 'new']), finId];
}

/**
 * Roles of a forward layout (hotSegmentsForward / postSegmentsForward): segments before the hot
 * zone (or the first one, without a hot zone) hold the new key, those after it the old key.
 */
function rolesForward(segs: Luks2Segment[]): Array<{ seg: Luks2Segment; role: Role }> {
  const hot = segs.findIndex((x) => x.flags?.includes(SEGMENT_FLAG.hot));
  return segs.map((seg, i) => ({ seg, role: i === hot ? 'hot' : (hot >= 0 ? i < hot : i === 0) ? 'new' : 'old' }));
}

/**
 * The final header: one new segment, the old key's keyslots and digest, the reencrypt keyslot,
 * its digest, the backup segments and the requirement gone. Returns the keyslot areas to wipe.
 */
function finalLayout(meta: Luks2Metadata, s: ReencryptState): Array<{ offset: number; size: number }> {
  const fin = stripFlags(meta.segments[s.finalId]!);
  meta.segments = { '0': fin };
  const wipe: Array<{ offset: number; size: number }> = [];
  const removed = new Set<string>([s.keyslotId]);
  if (s.oldDigestId !== undefined && s.oldDigestId !== s.newDigestId) {
    for (const k of meta.digests[s.oldDigestId]!.keyslots) removed.add(k);
    delete meta.digests[s.oldDigestId];
  }
  if (s.verificationDigestId !== undefined) delete meta.digests[s.verificationDigestId];
  for (const id of removed) {
    const ks = meta.keyslots[id];
    if (!ks) continue;
    wipe.push({ offset: u64(ks.area.offset, 'offset'), size: u64(ks.area.size, 'size') });
    delete meta.keyslots[id];
  }
  for (const d of Object.values(meta.digests)) d.keyslots = d.keyslots.filter((k) => !removed.has(k));
  for (const t of Object.values(meta.tokens)) t.keyslots = t.keyslots.filter((k) => !removed.has(k));
  if (s.newDigestId !== undefined) meta.digests[s.newDigestId]!.segments = ['0'];
  const req = meta.config.requirements;
  if (req && Array.isArray(req.mandatory)) {
    req.mandatory = req.mandatory.filter((r) => onlineReencryptVersion(r) === undefined);
    if (req.mandatory.length === 0) delete req.mandatory;
    if (Object.keys(req).length === 0) delete meta.config.requirements;
  }
  return wipe;
}


function sharedBuffer(size: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(size));
}

/** Re-encrypts (or resumes re-encrypting) a LUKS2 volume in place. See the module comment. */
export async function reencryptLuks2(device: BlockDevice, options: ReencryptOptions): Promise<ReencryptReport> {
  const t0 = performance.now();
  const header = options.headerDevice ?? device;
  const detached = header !== device;
  if (header.readOnly || device.readOnly) throw new ReadOnlyDeviceError('Reencryption needs the volume open for writing.');
  if (options.passphrases.length === 0) throw new InvalidArgumentError('Reencryption needs a passphrase.');
  const read = await readLuks2Headers(header, detached ? undefined : device.size);
  const st = read.state;
  if (read.stale.length > 0) await writeLuks2Headers(header, st);
  let meta = st.metadata;

  let state = decodeReencryptState(meta);
  const unknown = mandatoryRequirements(meta).filter((r) => onlineReencryptVersion(r) === undefined);
  if (unknown.length > 0) throw new UnsupportedRequirementError(unknown);
  if (state && state.version !== REENCRYPT_REQ_VERSION) {
    throw new UnsupportedError(`Reencryption state version ${state.version} (${state.requirement}) is not supported; brickcrypt resumes ${reencryptRequirementString(REENCRYPT_REQ_VERSION)}.`);
  }
  let started = false;
  let keys: { old?: VolumeKey; new?: VolumeKey };
  if (state) {
    validateReencryptState(meta, state);
    const plainEncrypt = state.keyslot.mode === 'encrypt' && options.plainZoneCipher !== undefined && meta.segments[state.previousId]!.type === 'linear';
    if ((state.keyslot.mode !== 'reencrypt' && !plainEncrypt) || state.keyslot.direction !== 'forward' || state.movedId !== undefined) {
      throw new UnsupportedError(`Resuming a ${state.keyslot.mode} reencryption (${state.keyslot.direction}, resilience ${state.keyslot.resilience}) is not supported yet.`);
    }
    if (options.cipher !== undefined || options.keySizeBits !== undefined || options.sectorSize !== undefined) {
      throw new InvalidArgumentError('A reencryption is already recorded: resume it without --cipher, --key-size or --sector-size.');
    }
    if (options.resilience !== undefined && options.resilience !== state.keyslot.resilience) {
      throw new InvalidArgumentError(`The recorded reencryption uses resilience ${state.keyslot.resilience}; changing it on resume is not supported.`);
    }
    if (dataAllUnderNewKey(meta, state) && state.oldDigestId !== undefined && state.oldDigestId !== state.newDigestId && meta.digests[state.oldDigestId]!.keyslots.length === 0) {
      return finishWithoutOldKey(header, st, state, options, t0);
    }
    keys = await openReencryptKeys(header, meta, state, options.passphrases);
    try {
      await verifyReencryptDigest(meta, state, keys);
    } catch (err) {
      keys.old?.wipe();
      keys.new?.wipe();
      throw err;
    }
  } else {
    if (options.resumeOnly) throw new InvalidArgumentError('No reencryption is recorded on this volume: nothing to resume.');
    const init = await initReencrypt(header, device, st, options);
    keys = init.keys;
    state = init.state;
    meta = st.metadata;
    started = true;
  }

  const report: ReencryptReport = {
    started,
    recovered: false,
    finished: false,
    bytes: 0,
    total: 0,
    resilience: state.keyslot.resilience,
    keyslots: [],
    encryption: '',
    sectorSize: 0,
    seconds: 0,
  };
  const zc =
    meta.segments[state.previousId]!.type === 'linear'
      ? options.plainZoneCipher!(sideOf(meta.segments[state.finalId]!, keys.new!))
      : (options.zoneCipher ?? localZoneCipher)(sideOf(meta.segments[state.previousId]!, keys.old!), sideOf(meta.segments[state.finalId]!, keys.new!));
  try {
    const fin = meta.segments[state.finalId]!;
    report.encryption = fin.encryption!;
    report.sectorSize = fin.sector_size!;
    const dataOffset = u64(fin.offset, 'segment offset');
    if (u64(meta.segments[state.previousId]!.offset, 'segment offset') !== dataOffset) throw new UnsupportedError('Reencryption with a data shift is not supported.');
    const alignment = Math.max(meta.segments[state.previousId]!.sector_size ?? 512, fin.sector_size!);
    const dataSize = device.size - dataOffset;
    if (dataSize <= 0 || dataSize % alignment !== 0) {
      throw new InvalidArgumentError(`The data area (${dataSize} bytes) is not a multiple of the encryption sector size ${alignment}.`);
    }
    report.total = dataSize;
    const prevSeg = meta.segments[state.previousId]!;
    await options.zoneGate?.begin(prevSeg.type === 'linear' ? undefined : sideOf(prevSeg, keys.old!), sideOf(fin, keys.new!), { dataOffset, dataSize });
    if (!options.initOnly) await runZones(header, device, st, state, zc, dataOffset, dataSize, options, report);
  } finally {
    await zc.close();
    keys.old?.wipe();
    keys.new?.wipe();
  }
  const after = decodeReencryptState(st.metadata);
  report.finished = after === undefined;
  const newDigest = Object.values(st.metadata.digests).find((d) => d.segments.includes(after ? after.finalId : '0'));
  report.keyslots = (newDigest?.keyslots ?? []).map(Number).sort((a, b) => a - b);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/** One active segment, belonging to the new key only: every zone is rewritten, only the final header is left. */
function dataAllUnderNewKey(meta: Luks2Metadata, s: ReencryptState): boolean {
  const single = s.active.length === 1 ? s.active[0]! : undefined;
  return single !== undefined && s.hotId === undefined && s.newDigestId !== undefined && meta.digests[s.newDigestId]!.segments.includes(single) && !(s.oldDigestId !== undefined && meta.digests[s.oldDigestId]!.segments.includes(single));
}

/**
 * cryptsetup's teardown of a finished re-key destroys the old keyslots one header write at a time
 * before the reencrypt keyslot (luks2_reencrypt.c, reencrypt_teardown_ok): killed in between, the
 * old key is gone while the reencryption is still recorded. All data is under the new key, so the
 * passphrase only has to open the new keyslot, and the one thing written is the final header.
 * The verification digest covers the old key and cannot be checked; nothing is decrypted or
 * rewritten on the state's word, which is what that digest guards against (CVE-2021-4122).
 */
async function finishWithoutOldKey(header: BlockDevice, st: Luks2HeaderState, state: ReencryptState, options: ReencryptOptions, t0: number): Promise<ReencryptReport> {
  const meta = st.metadata;
  const newSlots = meta.digests[state.newDigestId!]!.keyslots;
  const { keys } = await openKeys(header, meta, options.passphrases, { keyslotIds: newSlots, stopWhen: (k) => k.has(state.newDigestId!) });
  const opened = keys.has(state.newDigestId!);
  for (const k of keys.values()) k.wipe();
  if (!opened) throw new WrongPassphraseError('The passphrase does not open the new volume key of the reencryption.');
  const fin = meta.segments[state.finalId]!;
  const report: ReencryptReport = { started: false, recovered: false, finished: false, bytes: 0, total: 0, resilience: state.keyslot.resilience, keyslots: [], encryption: fin.encryption!, sectorSize: fin.sector_size!, seconds: 0 };
  if (!options.initOnly) {
    const wipe = finalLayout(meta, state);
    await writeLuks2Headers(header, st);
    await wipeAreas(header)(wipe);
    report.finished = true;
  }
  report.keyslots = newSlots.map(Number).sort((a, b) => a - b);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

function sideOf(seg: Luks2Segment, key: VolumeKey): ZoneSide {
  return { encryption: seg.encryption!, keyBytes: key.length, sectorSize: seg.sector_size!, ivTweak: u64(seg.iv_tweak ?? '0', 'iv_tweak'), key: key.expose() };
}

async function runZones(
  header: BlockDevice,
  data: BlockDevice,
  st: Luks2HeaderState,
  initial: ReencryptState,
  zc: ZoneCipher,
  dataOffset: number,
  dataSize: number,
  options: ReencryptOptions,
  report: ReencryptReport,
): Promise<void> {
  const meta = st.metadata;
  const ks = initial.keyslot;
  const resilience = ks.resilience as Resilience;
  const gate = options.zoneGate;
  const alignment = resilience === 'checksum' ? ks.checksumBlock! : Math.max(meta.segments[initial.previousId]!.sector_size ?? 512, meta.segments[initial.finalId]!.sector_size!);
  let maxZone: number;
  if (resilience === 'checksum') {
    if (dataSize % alignment !== 0) throw new InvalidArgumentError(`Checksum resilience needs a data area that is a multiple of ${alignment} bytes; use --resilience journal.`);
    maxZone = Math.floor(ks.areaSize / hashInfo(ks.hash!).digestSize) * alignment;
  } else if (resilience === 'journal') {
    maxZone = ks.areaSize;
  } else {
    maxZone = MAX_HOTZONE_BYTES;
  }
  let zone = Math.min(options.hotzoneSize ?? DEFAULT_HOTZONE_BYTES, maxZone, MAX_HOTZONE_BYTES);
  zone -= zone % alignment;
  if (zone < alignment) throw new InvalidArgumentError(`The hot zone (${zone} bytes) is smaller than the ${alignment}-byte alignment.`);
  // A zone is worked in pieces through two buffers (memory stays small however large the
  // zone): pass 1 reads the old ciphertext and stores its protection (checksums, or the journal);
  // after commit A, pass 2 reads it again (now from the page cache), re-encrypts and writes it,
  // the next piece being read and re-encrypted while the current one is written.
  const piece = options.pieceBytes ?? PIECE_BYTES;
  if (!Number.isInteger(piece) || piece < alignment || piece % alignment !== 0) throw new InvalidArgumentError(`The piece size must be a multiple of ${alignment} bytes.`);
  const pieceLen = Math.min(piece, zone, dataSize);
  const bufs = [sharedBuffer(pieceLen), sharedBuffer(dataSize > pieceLen ? pieceLen : 0)];
  const hashLen = resilience === 'checksum' ? hashInfo(ks.hash!).digestSize : 0;
  const sums = sharedBuffer(resilience === 'checksum' ? (Math.min(zone, dataSize) / alignment) * hashLen : 0);
  const layouts = layoutsOf(meta, initial);
  const pieces = (off: number, len: number) => {
    const out: Array<{ rel: number; len: number }> = [];
    for (let rel = 0; rel < len; rel += pieceLen) out.push({ rel, len: Math.min(pieceLen, len - rel) });
    return out;
  };

  const commit = async (active: Array<{ seg: Luks2Segment; role: Role }> | 'final', s: ReencryptState): Promise<void> => {
    const wipe = active === 'final' ? finalLayout(meta, s) : (setLayout(meta, s, active), []);
    await writeLuks2Headers(header, st);
    await wipeAreas(header)(wipe);
  };

  /** Pass 1: the protection of zone [off, off+len), written to the resilience area and flushed. */
  const protect = async (off: number, len: number): Promise<void> => {
    if (resilience === 'none') return;
    const list = pieces(off, len);
    let reading: Promise<Uint8Array> | undefined;
    const read = (i: number) => {
      const b = bufs[i % 2]!.subarray(0, list[i]!.len);
      return data.read(b, dataOffset + off + list[i]!.rel).then(() => b);
    };
    reading = read(0);
    try {
      for (let i = 0; i < list.length; i++) {
        const b = (await reading)!;
        reading = undefined;
        const p = list[i]!;
        const work =
          resilience === 'checksum'
            ? zc.digest(b, { hash: ks.hash!, block: alignment, out: sums.subarray((p.rel / alignment) * hashLen, ((p.rel + p.len) / alignment) * hashLen) })
            : header.write(b, ks.areaOffset + p.rel);
        // The next piece is read meanwhile (into the other buffer).
        reading = i + 1 < list.length ? read(i + 1) : undefined;
        reading?.catch(() => undefined);
        await work;
      }
    } finally {
      await reading?.catch(() => undefined);
    }
    if (resilience === 'checksum') await header.write(sums.subarray(0, (len / alignment) * hashLen), ks.areaOffset);
    await header.flush();
  };

  /** Pass 2: zone [off, off+len) re-encrypted and written (not flushed). */
  const rewrite = async (off: number, len: number, source: 'data' | 'journal' = 'data'): Promise<void> => {
    const list = pieces(off, len);
    const prep = async (i: number): Promise<Uint8Array> => {
      const b = bufs[i % 2]!.subarray(0, list[i]!.len);
      await (source === 'data' ? data.read(b, dataOffset + off + list[i]!.rel) : header.read(b, ks.areaOffset + list[i]!.rel));
      await zc.transform(b, off + list[i]!.rel);
      return b;
    };
    let next: Promise<Uint8Array> | undefined = prep(0);
    try {
      for (let i = 0; i < list.length; i++) {
        const b = await next!;
        next = i + 1 < list.length ? prep(i + 1) : undefined;
        next?.catch(() => undefined);
        await data.write(b, dataOffset + off + list[i]!.rel);
      }
    } finally {
      await next?.catch(() => undefined);
    }
  };

  for (;;) {
    const s = decodeReencryptState(meta)!;
    if (s.hotId !== undefined) {
      // An interrupted zone: rebuild it from the protection data, then mark it done.
      const off = forwardOffset(meta, s);
      const len = u64(meta.segments[s.hotId]!.size, 'hot segment size');
      if (off + len > dataSize) throw new CorruptHeaderError(`The interrupted zone ${off}+${len} lies past the ${dataSize}-byte data area.`);
      await gate?.enter(off, len);
      let outcome: 'new' | 'unknown' = 'unknown';
      try {
        if (s.keyslot.resilience === 'journal') {
          if (len > ks.areaSize) throw new CorruptHeaderError('The interrupted zone is larger than the journal.');
          await rewrite(off, len, 'journal');
        } else if (s.keyslot.resilience === 'checksum') {
          await recoverChecksummed(header, data, s, zc, dataOffset, off, len, bufs[0]!);
        } else {
          throw new CorruptHeaderError(`An interrupted zone with resilience ${s.keyslot.resilience} cannot be recovered.`);
        }
        await data.flush();
        report.recovered = true;
        await commit(off + len >= dataSize ? 'final' : rolesForward(postSegmentsForward(layouts, off + len, dataSize)), s);
        outcome = 'new';
      } finally {
        gate?.leave(off, len, outcome);
      }
      if (off + len >= dataSize) {
        options.onProgress?.({ done: dataSize, total: dataSize });
        return;
      }
      continue;
    }
    // A single segment is "not started" unless it already belongs to the new key (a run that
    // stopped between its last zone and the final header).
    const single = s.active.length === 1 ? s.active[0]! : undefined;
    const doneAll = single !== undefined && s.newDigestId !== undefined && meta.digests[s.newDigestId]!.segments.includes(single) && !(s.oldDigestId !== undefined && meta.digests[s.oldDigestId]!.segments.includes(single));
    const off = doneAll ? dataSize : forwardOffset(meta, s);
    if (!doneAll && s.active.length > 1 && off >= dataSize) {
      // The header says data under the old key lies past the end: the device shrank.
      throw new CorruptHeaderError(`The reencryption has ${off} bytes done but the data area is only ${dataSize} bytes: the device is smaller than the metadata says.`);
    }
    options.onProgress?.({ done: off, total: dataSize });
    if (off >= dataSize) {
      await commit('final', s);
      return;
    }
    if (options.signal?.aborted) throw new CancelledError('Reencryption stopped; resume it with `brickcrypt reencrypt --resume-only`.');
    const len = Math.min(zone, dataSize - off);
    const next = off + len;
    await gate?.enter(off, len);
    // The zone's data stays old until commit A (or, without it, the first data write) starts.
    let outcome: 'new' | 'old' | 'unknown' = 'old';
    try {
      await protect(off, len);
      outcome = 'unknown';
      if (resilience !== 'none') await commit(rolesForward(hotSegmentsForward(layouts, off, len, dataSize)), s);
      await rewrite(off, len);
      await data.flush();
      report.bytes += len;
      await commit(next >= dataSize ? 'final' : rolesForward(postSegmentsForward(layouts, next, dataSize)), decodeReencryptState(meta)!);
      outcome = 'new';
    } finally {
      gate?.leave(off, len, outcome);
    }
    if (next >= dataSize) {
      options.onProgress?.({ done: dataSize, total: dataSize });
      return;
    }
  }
}

function wipeAreas(header: BlockDevice): (areas: Array<{ offset: number; size: number }>) => Promise<void> {
  return async (areas) => {
    if (areas.length === 0) return;
    for (const a of areas) if (a.size > 0) await header.writeZeroes(a.offset, a.size);
    await header.flush();
  };
}

/**
 * Rebuilds an interrupted checksum zone piece by piece: blocks whose hash still equals the
 * stored hash of the old ciphertext are re-encrypted and written back; the others were written.
 */
async function recoverChecksummed(header: BlockDevice, data: BlockDevice, s: ReencryptState, zc: ZoneCipher, dataOffset: number, off: number, len: number, buf: Uint8Array): Promise<void> {
  const ks = s.keyslot;
  const block = ks.checksumBlock!;
  const hashLen = hashInfo(ks.hash!).digestSize;
  if (len % block !== 0 || (len / block) * hashLen > ks.areaSize) throw new CorruptHeaderError('The interrupted zone does not fit its checksums.');
  const stored = new Uint8Array((len / block) * hashLen);
  await header.read(stored, ks.areaOffset);
  const now = sharedBuffer((buf.length / block) * hashLen);
  for (let rel = 0; rel < len; rel += buf.length) {
    const z = buf.subarray(0, Math.min(buf.length, len - rel));
    await data.read(z, dataOffset + off + rel);
    const n = z.length / block;
    await zc.digest(z, { hash: ks.hash!, block, out: now.subarray(0, n * hashLen) });
    const base = (rel / block) * hashLen;
    const same = (k: number) => Buffer.compare(now.subarray(k * hashLen, (k + 1) * hashLen), stored.subarray(base + k * hashLen, base + (k + 1) * hashLen)) === 0;
    // Runs of blocks still holding the old ciphertext are re-encrypted and written back.
    for (let i = 0; i < n; ) {
      if (!same(i)) {
        i++;
        continue;
      }
      let j = i;
      while (j < n && same(j)) j++;
      const piece = z.subarray(i * block, j * block);
      await zc.transform(piece, off + rel + i * block);
      await data.write(piece, dataOffset + off + rel + i * block);
      i = j;
    }
  }
}

/**
 * Records a new reencryption: new keyslots sealing a new key for the passphrases that open the
 * old keyslots (their material written and flushed first), then ONE header write adding the
 * backup segments, the reencrypt keyslot, the new and the verification digests and the
 * requirement (cryptsetup's reencrypt_init). Before that write the volume is unchanged.
 */
async function initReencrypt(
  header: BlockDevice,
  device: BlockDevice,
  st: Luks2HeaderState,
  options: ReencryptOptions,
): Promise<{ keys: { old: VolumeKey; new: VolumeKey }; state: ReencryptState }> {
  const meta = structuredClone(st.metadata);
  const { segId, segment: old, digestId: oldDigestId, keyslotIds: wanted } = startSegment(meta, options.keyslot, 'Reencryption');
  const { keys, opened } = await openKeys(header, meta, options.passphrases, { keyslotIds: wanted });
  let newKey: VolumeKey | undefined;
  try {
    const oldKey = keys.get(oldDigestId);
    if (!oldKey || opened.length === 0) throw new WrongPassphraseError();
    const missing = wanted.filter((k) => !opened.some((o) => o.id === k));
    if (missing.length > 0) {
      throw new InvalidArgumentError(`The passphrase does not open keyslot${missing.length > 1 ? 's' : ''} ${missing.join(', ')}: give --key-slot to keep only the keyslot it opens (the others are removed at the end), or remove them first.`);
    }
    // The new layout.
    const encryption = options.cipher ?? old.encryption!;
    const spec = parseEncryption(encryption);
    const keyBytes = options.keySizeBits !== undefined ? options.keySizeBits / 8 : options.cipher !== undefined ? defaultKeyBytes(spec) : oldKey.length;
    if (!Number.isInteger(keyBytes)) throw new InvalidArgumentError(`Key size ${options.keySizeBits} is not a whole number of bytes.`);
    validateKeyBytes(spec, keyBytes);
    const sectorSize = options.sectorSize ?? old.sector_size!;
    if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new InvalidArgumentError(`Sector size ${sectorSize} is not 512, 1024, 2048 or 4096.`);
    const dataOffset = u64(old.offset, 'segment offset');
    if (dataOffset % sectorSize !== 0) throw new InvalidArgumentError(`The data offset ${dataOffset} is not aligned to sector size ${sectorSize}.`);
    const dataSize = device.size - dataOffset;
    const check = Math.max(sectorSize, old.sector_size!);
    if (dataSize <= 0 || dataSize % check !== 0) throw new InvalidArgumentError(`The data area (${dataSize} bytes) is not a multiple of the encryption sector size ${check}.`);
    const resilience = options.resilience ?? 'checksum';
    if (resilience === 'checksum' && dataSize % CHECKSUM_BLOCK !== 0) throw new InvalidArgumentError(`Checksum resilience needs a data area that is a multiple of ${CHECKSUM_BLOCK} bytes; use --resilience journal.`);
    const hash = hashInfo(options.resilienceHash ?? 'sha256').name;
    if (options.hotzoneSize !== undefined && (!Number.isInteger(options.hotzoneSize) || options.hotzoneSize < check || options.hotzoneSize % check !== 0)) {
      throw new InvalidArgumentError(`The hot zone size must be a positive multiple of ${check} bytes.`);
    }
    do newKey = VolumeKey.random(keyBytes);
    while (isXtsWeak(spec, newKey.expose()));
    if (isXtsWeak(spec, newKey.expose())) throw new WeakKeyError('AES-XTS volume key halves are equal.');

    // New keyslots (the material first; the header that references it comes with the init write).
    const newDigestId = firstFreeId(Object.keys(meta.digests));
    const newIds: string[] = [];
    const kdf: KdfOptions = { ...options };
    for (const o of opened) {
      const id = firstFreeId(Object.keys(meta.keyslots));
      const area = allocateLuks2Area(meta, st.bin.hdrSize, luks2KeyslotAreaBytes(keyBytes));
      const { material, keyslot } = await sealLuks2Keyslot(encryption, newKey, options.passphrases[o.passphrase]!, kdf, area);
      const oldKs = meta.keyslots[o.id]!;
      if (typeof oldKs.priority === 'number') keyslot.priority = oldKs.priority;
      await header.write(material, area.offset);
      meta.keyslots[id] = keyslot;
      newIds.push(id);
      for (const t of Object.values(meta.tokens)) if (t.keyslots.includes(o.id)) t.keyslots.push(id);
    }
    await header.flush();

    // Backup segments, digests, the reencrypt keyslot and the requirement.
    const prevId = firstFreeId(Object.keys(meta.segments));
    meta.segments[prevId] = { ...structuredClone(old), flags: [SEGMENT_FLAG.previous] };
    const finId = firstFreeId(Object.keys(meta.segments));
    meta.segments[finId] = cryptSegment(dataOffset, u64(old.iv_tweak ?? '0', 'iv_tweak'), 'dynamic', encryption, sectorSize, [SEGMENT_FLAG.final]);
    meta.digests[oldDigestId]!.segments.push(prevId);
    meta.digests[newDigestId] = await createDigest(newKey.expose(), options, newIds, [finId]);
    const reencId = firstFreeId(Object.keys(meta.keyslots));
    const area = largestFreeArea(meta, st.bin.hdrSize);
    if (area.size === 0) throw new InvalidArgumentError('No free space in the keyslots area for the reencryption data.');
    meta.keyslots[reencId] = encodeReencryptKeyslot({
      mode: 'reencrypt',
      direction: 'forward',
      resilience,
      areaOffset: area.offset,
      areaSize: area.size,
      ...(resilience === 'checksum' ? { hash, checksumBlock: CHECKSUM_BLOCK } : {}),
    });
    const req = (meta.config.requirements ??= {});
    req.mandatory = [...(req.mandatory ?? []), reencryptRequirementString(REENCRYPT_REQ_VERSION)];
    const draft = decodeReencryptState(meta)!;
    const verifyId = firstFreeId(Object.keys(meta.digests));
    meta.digests[verifyId] = { type: 'pbkdf2', keyslots: [reencId], segments: [] };
    const vstate = { ...draft, verificationDigestId: verifyId };
    const vdata = reencryptVerificationData(meta, vstate, { old: oldKey.expose(), new: newKey.expose() });
    try {
      meta.digests[verifyId] = await createDigest(vdata, options, [reencId], []);
    } finally {
      vdata.fill(0);
    }
    const state = decodeReencryptState(meta)!;
    validateReencryptState(meta, state);
    // The one write that records the reencryption.
    st.metadata = meta;
    await writeLuks2Headers(header, st);
    for (const [d, k] of keys) if (d !== oldDigestId) k.wipe();
    return { keys: { old: oldKey, new: newKey }, state };
  } catch (err) {
    for (const k of keys.values()) k.wipe();
    newKey?.wipe();
    throw err;
  }
}
