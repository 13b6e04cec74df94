/**
 * cryptsetup's in-progress LUKS2 reencryption state (lib/luks2/luks2_reencrypt.c,
 * luks2_keyslot_reenc.c, luks2_reencrypt_digest.c of cryptsetup 2.6): decoding, validation,
 * encoding and the bytes its verification digest covers. Pure: works on the parsed metadata.
 *
 * The state lives in the ordinary JSON sections:
 * - config.requirements.mandatory holds "online-reencrypt-v2" (v3 for decrypt with data shift);
 * - a keyslot of type "reencrypt" (key_size 1, priority 0) holds mode (reencrypt | encrypt |
 *   decrypt), direction (forward | backward) and the resilience area:
 *   `area.type` checksum {hash, sector_size} | journal | none | datashift {shift_size} |
 *   datashift-checksum | datashift-journal; the area (offset/size in the keyslots area) holds
 *   the checksums of the hot zone's old ciphertext, or the journal (that ciphertext itself);
 * - segments flagged "backup-previous" (the old layout) and "backup-final" (the new one), plus
 *   "backup-moved-segment" for data shifts; the active segments between them cover the device:
 *   forward, [0, offset) under the new key and [offset, end) under the old one, with a third
 *   segment flagged "in-reencryption" (the hot zone) while a zone is being rewritten;
 * - a pbkdf2 digest assigned to the reencrypt keyslot over `verificationData` (CVE-2021-4122
 *   fix, cryptsetup >= 2.4.3): the keys and the layout cannot be changed without the keys.
 *
 * @example
 * const state = decodeReencryptState(metadata); // undefined when no reencryption is recorded
 * if (state) validateReencryptState(metadata, state);
 */
import { CorruptHeaderError } from '../../errors.js';
import { isObject, u64, type Luks2Keyslot, type Luks2Metadata, type Luks2Segment } from './metadata.js';

export type ReencryptMode = 'reencrypt' | 'encrypt' | 'decrypt';
export type ReencryptDirection = 'forward' | 'backward';
export type ResilienceType = 'checksum' | 'journal' | 'none' | 'datashift' | 'datashift-checksum' | 'datashift-journal';

export const RESILIENCE_TYPES: readonly ResilienceType[] = ['checksum', 'journal', 'none', 'datashift', 'datashift-checksum', 'datashift-journal'];

/** Requirement version cryptsetup 2.6 writes (LUKS2_REENCRYPT_REQ_VERSION); 3 is decrypt with data shift. */
export const REENCRYPT_REQ_VERSION = 2;
export const DECRYPT_DATASHIFT_REQ_VERSION = 3;

/** cryptsetup's segment flags. */
export const SEGMENT_FLAG = {
  hot: 'in-reencryption',
  previous: 'backup-previous',
  final: 'backup-final',
  moved: 'backup-moved-segment',
} as const;

/** Largest hot zone cryptsetup uses (LUKS2_REENCRYPT_MAX_HOTZONE_LENGTH, 1 GiB). */
export const MAX_HOTZONE_BYTES = 0x40000000;
/** Hot zone of resilience "none" without --hotzone-size (LUKS2_DEFAULT_NONE_REENCRYPTION_LENGTH, 20 MiB). */
export const DEFAULT_NONE_HOTZONE_BYTES = 0x1400000;

/** The requirement string for a version: "online-reencrypt" (v1) or "online-reencrypt-vN". */
export function reencryptRequirementString(version: number): string {
  return version === 1 ? 'online-reencrypt' : `online-reencrypt-v${version}`;
}

/** The decoded reencrypt keyslot. */
export interface ReencryptKeyslot {
  mode: ReencryptMode;
  direction: ReencryptDirection;
  resilience: ResilienceType;
  /** Resilience area in the keyslots area (bytes from the header start). */
  areaOffset: number;
  areaSize: number;
  /** checksum types: hash name and checksum block size. */
  hash?: string;
  checksumBlock?: number;
  /** datashift types: shift in bytes. */
  shiftSize?: number;
}

/** Decodes and validates a "reencrypt" keyslot as cryptsetup's reenc_keyslot_validate. */
export function decodeReencryptKeyslot(ks: Luks2Keyslot, id = '?'): ReencryptKeyslot {
  const bad = (what: string): never => {
    throw new CorruptHeaderError(`LUKS2 reencrypt keyslot ${id}: ${what}.`);
  };
  if (ks.type !== 'reencrypt') bad('type is not reencrypt');
  if (ks.key_size !== 1) bad('key_size must be 1');
  const mode = ks.mode;
  if (mode !== 'reencrypt' && mode !== 'encrypt' && mode !== 'decrypt') bad(`mode ${JSON.stringify(mode)} is invalid`);
  const direction = ks.direction;
  if (direction !== 'forward' && direction !== 'backward') bad(`direction ${JSON.stringify(direction)} is invalid`);
  if (!isObject(ks.area)) bad('area is missing');
  const area = ks.area;
  const type = area.type as ResilienceType;
  if (!RESILIENCE_TYPES.includes(type)) bad(`resilience ${JSON.stringify(area.type)} is invalid`);
  const out: ReencryptKeyslot = {
    mode: mode as ReencryptMode,
    direction: direction as ReencryptDirection,
    resilience: type,
    areaOffset: u64(area.offset, `reencrypt keyslot ${id} area offset`),
    areaSize: u64(area.size, `reencrypt keyslot ${id} area size`),
  };
  if (type === 'checksum' || type === 'datashift-checksum') {
    if (typeof area.hash !== 'string' || area.hash.length === 0) bad('checksum hash is missing');
    const ss = area.sector_size;
    if (typeof ss !== 'number' || !Number.isInteger(ss) || ss < 512 || ss > 0xffffffff || (ss & (ss - 1)) !== 0) bad('checksum sector_size is invalid');
    out.hash = area.hash as string;
    out.checksumBlock = ss as number;
  }
  if (type.startsWith('datashift')) {
    const shift = u64(area.shift_size, `reencrypt keyslot ${id} shift_size`);
    if (shift === 0 || shift % 512 !== 0) bad('shift_size must be a non-zero multiple of 512');
    out.shiftSize = shift;
  }
  return out;
}

/** The keyslot JSON cryptsetup writes for `k` (member order as reenc_keyslot_alloc adds them). */
export function encodeReencryptKeyslot(k: ReencryptKeyslot): Luks2Keyslot {
  const area: Luks2Keyslot['area'] = { offset: String(k.areaOffset), size: String(k.areaSize), type: k.resilience };
  if (k.resilience === 'checksum' || k.resilience === 'datashift-checksum') {
    area.hash = k.hash;
    area.sector_size = k.checksumBlock;
  }
  if (k.resilience.startsWith('datashift')) area.shift_size = String(k.shiftSize);
  return { area, type: 'reencrypt', key_size: 1, mode: k.mode, direction: k.direction, priority: 0 } as Luks2Keyslot;
}

/** Everything the header records about an unfinished reencryption. */
export interface ReencryptState {
  requirement: string;
  version: number;
  keyslotId: string;
  keyslot: ReencryptKeyslot;
  /** Segment ids of the backup segments. */
  previousId: string;
  finalId: string;
  movedId?: string;
  /** Active (non-backup) segment ids in ascending order. */
  active: string[];
  /** The active segment flagged in-reencryption (a zone was being rewritten when it stopped). */
  hotId?: string;
  /** Digest ids of the old and new volume keys (absent for encrypt resp. decrypt). */
  oldDigestId?: string;
  newDigestId?: string;
  /** Digest id of the reencryption verification digest. */
  verificationDigestId?: string;
}

function segmentWithFlag(m: Luks2Metadata, flag: string): string | undefined {
  return Object.keys(m.segments).find((id) => m.segments[id]!.flags?.includes(flag));
}

function digestOfSegment(m: Luks2Metadata, segId: string): string | undefined {
  return Object.keys(m.digests).find((d) => m.digests[d]!.segments.includes(segId));
}

function requirementOf(m: Luks2Metadata): { requirement: string; version: number } | undefined {
  const req = m.config.requirements?.mandatory;
  if (!Array.isArray(req)) return undefined;
  for (const r of req) {
    if (r === 'online-reencrypt') return { requirement: r, version: 1 };
    const v = typeof r === 'string' ? /^online-reencrypt-v([0-9]+)$/.exec(r) : null;
    if (v) return { requirement: r, version: Number(v[1]) };
  }
  return undefined;
}

/**
 * The recorded reencryption, or undefined when the header has no online-reencrypt requirement.
 * Throws `CorruptHeaderError` when the requirement is there but the state is not.
 */
export function decodeReencryptState(m: Luks2Metadata): ReencryptState | undefined {
  const req = requirementOf(m);
  if (!req) return undefined;
  const ksIds = Object.keys(m.keyslots).filter((id) => m.keyslots[id]!.type === 'reencrypt');
  if (ksIds.length !== 1) throw new CorruptHeaderError(`LUKS2 reencryption requirement set but ${ksIds.length} reencrypt keyslots.`);
  const keyslotId = ksIds[0]!;
  const keyslot = decodeReencryptKeyslot(m.keyslots[keyslotId]!, keyslotId);
  const previousId = segmentWithFlag(m, SEGMENT_FLAG.previous);
  const finalId = segmentWithFlag(m, SEGMENT_FLAG.final);
  if (previousId === undefined || finalId === undefined) throw new CorruptHeaderError('LUKS2 reencryption backup segment is missing.');
  const movedId = segmentWithFlag(m, SEGMENT_FLAG.moved);
  const active = Object.keys(m.segments)
    .filter((id) => !m.segments[id]!.flags?.some((f) => f.startsWith('backup-')))
    .sort((a, b) => Number(a) - Number(b));
  const hot = active.filter((id) => m.segments[id]!.flags?.includes(SEGMENT_FLAG.hot));
  if (hot.length > 1) throw new CorruptHeaderError('LUKS2 has more than one segment in reencryption.');
  const state: ReencryptState = { requirement: req.requirement, version: req.version, keyslotId, keyslot, previousId, finalId, active };
  if (movedId !== undefined) state.movedId = movedId;
  if (hot.length === 1) state.hotId = hot[0]!;
  const oldD = m.segments[previousId]!.type === 'crypt' ? digestOfSegment(m, previousId) : undefined;
  const newD = m.segments[finalId]!.type === 'crypt' ? digestOfSegment(m, finalId) : undefined;
  if (oldD !== undefined) state.oldDigestId = oldD;
  if (newD !== undefined) state.newDigestId = newD;
  const vd = Object.keys(m.digests).find((d) => m.digests[d]!.keyslots.includes(keyslotId));
  if (vd !== undefined) state.verificationDigestId = vd;
  return state;
}

/** cryptsetup's json_segment_cmp: same type, and for crypt the same cipher and sector size. */
export function sameSegmentKind(a: Luks2Segment, b: Luks2Segment): boolean {
  if (a.type !== b.type) return false;
  return a.type !== 'crypt' || (a.sector_size === b.sector_size && a.encryption === b.encryption);
}

/**
 * Checks the state as cryptsetup's validate_reencrypt_segments and reencrypt context load do:
 * mode-appropriate backup segments and digests, every active segment of the old or new kind,
 * the hot segment of the new kind, a verification digest. Throws `CorruptHeaderError`.
 */
export function validateReencryptState(m: Luks2Metadata, s: ReencryptState): void {
  const seg = (id: string) => m.segments[id]!;
  const prev = seg(s.previousId);
  const fin = seg(s.finalId);
  const { mode } = s.keyslot;
  if (mode !== 'encrypt' && (prev.type !== 'crypt' || s.oldDigestId === undefined)) throw new CorruptHeaderError('LUKS2 reencryption: the previous segment has no key digest.');
  if (mode !== 'decrypt' && (fin.type !== 'crypt' || s.newDigestId === undefined)) throw new CorruptHeaderError('LUKS2 reencryption: the final segment has no key digest.');
  if (s.active.length === 0) throw new CorruptHeaderError('LUKS2 reencryption: no data segment.');
  for (const id of s.active) {
    const a = seg(id);
    if (id === s.hotId ? !sameSegmentKind(a, fin) : !sameSegmentKind(a, fin) && !sameSegmentKind(a, prev)) {
      throw new CorruptHeaderError(`LUKS2 reencryption: segment ${id} matches neither the previous nor the final segment.`);
    }
  }
  if (s.verificationDigestId === undefined) throw new CorruptHeaderError('LUKS2 reencryption digest is missing.');
  if (s.keyslot.areaSize === 0 && s.keyslot.resilience !== 'none' && s.keyslot.resilience !== 'datashift') {
    throw new CorruptHeaderError('LUKS2 reencryption: the resilience area is empty.');
  }
}

// --- verification data (luks2_reencrypt_digest.c) ---

const MAX_STR = 64;

function strBytes(v: unknown, what: string): Uint8Array {
  if (typeof v !== 'string') throw new CorruptHeaderError(`LUKS2 reencryption digest: ${what} is not a string.`);
  const b = Buffer.from(v, 'utf8');
  if (b.length === 0 || b.length > MAX_STR) throw new CorruptHeaderError(`LUKS2 reencryption digest: ${what} has a bad length.`);
  return b;
}

function u64Bytes(v: unknown, what: string): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(u64(v, what)));
  return out;
}

function sizeBytes(v: unknown, what: string): Uint8Array {
  return v === 'dynamic' ? Buffer.from('dynamic') : u64Bytes(v, what);
}

function u32Bytes(v: unknown, what: string): Uint8Array {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new CorruptHeaderError(`LUKS2 reencryption digest: ${what} is not a u32.`);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, v);
  return out;
}

function segmentBytes(s: Luks2Segment, id: string): Uint8Array[] {
  const w = `segment ${id}`;
  if (s.type === 'crypt') {
    return [strBytes(s.type, w), u64Bytes(s.offset, w), sizeBytes(s.size, w), u64Bytes(s.iv_tweak, w), strBytes(s.encryption, w), u32Bytes(s.sector_size, w)];
  }
  if (s.type === 'linear') return [strBytes(s.type, w), u64Bytes(s.offset, w), sizeBytes(s.size, w)];
  throw new CorruptHeaderError(`LUKS2 reencryption digest: segment ${id} type ${s.type} is not crypt or linear.`);
}

/**
 * The bytes cryptsetup's reencryption digest covers: "v", '0'+version, the old key, the new key
 * (when it differs), the reencrypt keyslot's mode, direction and area fields, then the
 * backup-previous, backup-final (and backup-moved-segment) segments. Strings are raw bytes,
 * integers big-endian. The caller wipes the result (it holds key material).
 */
export function reencryptVerificationData(m: Luks2Metadata, s: ReencryptState, keys: { old?: Uint8Array; new?: Uint8Array }): Uint8Array {
  const parts: Uint8Array[] = [Uint8Array.of(0x76, 0x30 + s.version)];
  if (s.oldDigestId !== undefined) {
    if (!keys.old) throw new CorruptHeaderError('LUKS2 reencryption digest needs the old volume key.');
    parts.push(keys.old);
  }
  if (s.newDigestId !== undefined && s.newDigestId !== s.oldDigestId) {
    if (!keys.new) throw new CorruptHeaderError('LUKS2 reencryption digest needs the new volume key.');
    parts.push(keys.new);
  }
  const ks = m.keyslots[s.keyslotId]!;
  const area = ks.area as Record<string, unknown>;
  const w = 'reencrypt keyslot';
  parts.push(strBytes(ks.mode, w), strBytes(ks.direction, w), strBytes(area.type, w), u64Bytes(area.offset, w), u64Bytes(area.size, w));
  const type = area.type;
  if (type === 'checksum') parts.push(strBytes(area.hash, w), u32Bytes(area.sector_size, w));
  else if (type === 'datashift-checksum') parts.push(strBytes(area.hash, w), u32Bytes(area.sector_size, w), u64Bytes(area.shift_size, w));
  else if (type === 'datashift' || type === 'datashift-journal') parts.push(u64Bytes(area.shift_size, w));
  parts.push(...segmentBytes(m.segments[s.previousId]!, s.previousId), ...segmentBytes(m.segments[s.finalId]!, s.finalId));
  if (s.movedId !== undefined) parts.push(...segmentBytes(m.segments[s.movedId]!, s.movedId));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

// --- progress and segment layouts (forward direction, no data shift) ---

/** Data offset of the new layout (the backup-final segment's offset). */
export function newDataOffset(m: Luks2Metadata, s: ReencryptState): number {
  return u64(m.segments[s.finalId]!.offset, 'backup-final offset');
}

/**
 * Where the next (or interrupted) hot zone starts, in bytes from the data offset, for a forward
 * reencryption without data shift (cryptsetup's reencrypt_offset): the hot segment's start,
 * else the size of the finished first segment, else 0.
 */
export function forwardOffset(m: Luks2Metadata, s: ReencryptState): number {
  if (s.hotId !== undefined) return u64(m.segments[s.hotId]!.offset, 'hot segment offset') - newDataOffset(m, s);
  if (s.active.length === 1) return 0;
  if (s.active.length === 2) return u64(m.segments[s.active[0]!]!.size, 'first segment size');
  throw new CorruptHeaderError(`LUKS2 reencryption: ${s.active.length} data segments without a hot zone.`);
}

/** Bytes done and total (a data area of `dataSize` bytes), for dump and progress. */
export function reencryptProgress(m: Luks2Metadata, s: ReencryptState, dataSize: number): { done: number; total: number } {
  if (s.keyslot.direction !== 'forward' || s.keyslot.shiftSize !== undefined) {
    // Backward and shifting layouts: count the bytes of active segments of the final kind.
    const fin = m.segments[s.finalId]!;
    let done = 0;
    for (const id of s.active) {
      const seg = m.segments[id]!;
      if (id === s.hotId || !sameSegmentKind(seg, fin) || seg.size === 'dynamic') continue;
      if (s.keyslot.mode === 'reencrypt' && s.newDigestId !== undefined && !m.digests[s.newDigestId]!.segments.includes(id)) continue;
      done += u64(seg.size, 'segment size');
    }
    return { done: Math.min(done, dataSize), total: dataSize };
  }
  return { done: Math.min(forwardOffset(m, s), dataSize), total: dataSize };
}

/** A crypt segment as cryptsetup's json_segment_create_crypt builds it (member order kept). */
export function cryptSegment(offset: number, ivTweak: number, size: number | 'dynamic', encryption: string, sectorSize: number, flags?: string[]): Luks2Segment {
  const seg: Luks2Segment = { type: 'crypt', offset: String(offset), size: String(size), iv_tweak: String(ivTweak), encryption, sector_size: sectorSize };
  if (flags && flags.length > 0) seg.flags = flags;
  return seg;
}

/** A linear (plaintext) segment as json_segment_create_linear builds it. */
export function linearSegment(offset: number, size: number | 'dynamic', flags?: string[]): Luks2Segment {
  const seg: Luks2Segment = { type: 'linear', offset: String(offset), size: String(size) };
  if (flags && flags.length > 0) seg.flags = flags;
  return seg;
}

/** Parameters of the old and new layouts, as the backup segments record them. */
export interface LayoutPair {
  previous: Luks2Segment;
  final: Luks2Segment;
}

function segmentAt(template: Luks2Segment, rel: number, size: number | 'dynamic', flags?: string[]): Luks2Segment {
  const base = u64(template.offset, 'segment offset');
  if (template.type === 'linear') return linearSegment(base + rel, size, flags);
  const iv = u64(template.iv_tweak ?? '0', 'iv_tweak') + rel / 512;
  return cryptSegment(base + rel, iv, size, template.encryption!, template.sector_size!, flags);
}

/**
 * Active segments while the zone [offset, offset+length) is rewritten (forward, no shift), as
 * reencrypt_make_hot_segments_forward: new [0, offset), hot zone (new kind, in-reencryption),
 * old [offset+length, end) — the old segment "dynamic" unless `fixedSize`.
 */
export function hotSegmentsForward(l: LayoutPair, offset: number, length: number, dataSize: number, fixedSize = false): Luks2Segment[] {
  const out: Luks2Segment[] = [];
  if (offset > 0) out.push(segmentAt(l.final, 0, offset));
  out.push(segmentAt(l.final, offset, length, [SEGMENT_FLAG.hot]));
  const end = offset + length;
  if (end < dataSize) out.push(segmentAt(l.previous, end, fixedSize ? dataSize - end : 'dynamic'));
  return out;
}

/** Active segments once [0, done) is finished (reencrypt_make_post_segments_forward). */
export function postSegmentsForward(l: LayoutPair, done: number, dataSize: number, fixedSize = false): Luks2Segment[] {
  if (done >= dataSize) return [segmentAt(l.final, 0, fixedSize ? dataSize : 'dynamic')];
  return [segmentAt(l.final, 0, done), segmentAt(l.previous, done, fixedSize ? dataSize - done : 'dynamic')];
}
