/**
 * LUKS1 <-> LUKS2 header conversion in place (cryptsetup `convert`), with cryptsetup 2.6's rules,
 * refusals and resulting layout (lib/luks2/luks2_luks1_convert.c): LUKS2 keyslot areas are the
 * LUKS1 ones moved up by 2 * 16 KiB - 4 KiB (hdr_size 16 KiB, keyslots area up to the data),
 * LUKS1 keyslots the LUKS2 ones moved down by as much, free LUKS1 slots placed in the first gaps.
 *
 * cryptsetup moves the whole keyslot area in one overlapping copy: a crash in the middle loses
 * the keys. Here every step leaves a header that opens with every passphrase (docs/luks.md,
 * "convert-header"):
 *  - keyslot material moves while the volume is LUKS1 (which may point a keyslot anywhere), one
 *    keyslot at a time: copied to a place no header references, flushed, then the header points
 *    there. A keyslot whose target overlaps its own material goes through a free parking place.
 *    Each LUKS1 header change touches one 512-byte sector; where a change spans both sectors of the
 *    592-byte header it is split in two with a valid header in between.
 *  - LUKS2 -> LUKS1 starts by writing a LUKS1 header that points at the LUKS2 keyslot areas as
 *    they are: its second sector first (the LUKS2 primary fails its checksum, the untouched
 *    secondary still opens), then the first sector with the magic (now it is LUKS1).
 *  - LUKS1 -> LUKS2 ends with the material in its LUKS2 places; then the secondary LUKS2 header,
 *    the primary's JSON area, the primary's first sector (with the magic: the volume opens as
 *    LUKS2 through the secondary) and the rest of the primary binary header.
 * Copies of key material left in unused places are wiped at the end.
 *
 * The plan is computed and checked before anything is written; a refusal (ConversionRefusedError
 * with a stable `reason`) leaves the volume untouched.
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import { ConversionRefusedError, ReadOnlyDeviceError, type ConversionRefusal } from '../errors.js';
import { parseCipherSpec, parseEncryption } from '../crypto/cipher-spec.js';
import {
  LUKS1_HEADER_SIZE,
  LUKS1_KEY_DISABLED,
  LUKS1_KEY_ENABLED,
  LUKS1_MAGIC,
  LUKS1_NUM_KEYSLOTS,
  LUKS1_STRIPES,
  decodeLuks1Header,
  encodeLuks1Header,
  luks1KeyslotSectors,
  validateLuks1Header,
  type Luks1Header,
} from '../formats/luks1/header.js';
import { LUKS2_BINARY_HEADER_SIZE } from '../formats/luks2/binary-header.js';
import { base64, u64, validateLuks2Metadata, type Luks2Keyslot, type Luks2Metadata, type Luks2Token } from '../formats/luks2/metadata.js';
import { buildLuks2Copy, readLuks2Headers, type Luks2HeaderState } from './luks2-io.js';
import { LuksVolume } from './volume.js';

const SECTOR = 512;
/** LUKS2 hdr_size of a converted header (cryptsetup LUKS2_HDR_16K_LEN). */
const HDR_SIZE = 16384;
/** LUKS1 keyslots start at 4 KiB (cryptsetup LUKS_ALIGN_KEYSLOTS). */
const LUKS1_KEYSLOTS_AT = 4096;
/** How far keyslot areas move: 2 * hdr_size - 4 KiB = 28672 bytes, 56 sectors. */
const SHIFT = 2 * HDR_SIZE - LUKS1_KEYSLOTS_AT;
/** Lowest sector a placeholder or parking place may use (the LUKS1 header page stays clean). */
const LOW = LUKS1_KEYSLOTS_AT / SECTOR;
/** Lowest sector a LUKS1 keyslot may start at (cryptsetup: after the 592-byte header). */
const MIN_KEYSLOT_SECTOR = Math.ceil(LUKS1_HEADER_SIZE / SECTOR);
/** Keyslot records 0..5 lie in the header's first sector, 6 and 7 reach into the second. */
const FIRST_SECTOR_SLOTS = 6;

export interface ConvertHeaderOptions {
  type: 'luks1' | 'luks2';
  /** Detached header (cryptsetup --header). */
  headerDevice?: BlockDevice;
  /** LUKS1 -> LUKS2: tokens of the new header. */
  tokens?: Record<string, Luks2Token>;
  /**
   * LUKS1 -> LUKS2 taken up again after a crash: the offsets (sectors) of the 8 keyslots before it
   * began. The keyslots move from where the header has them now to these plus the shift.
   */
  originalOffsets?: number[];
  /** LUKS2 -> LUKS1: tokens of this type are dropped instead of refused. */
  dropTokenType?: string;
  /** LUKS2 -> LUKS1: bytes for the unused rest of the LUKS1 header page, written with its first write. */
  luks1Page?: (final: Luks1Header) => { offset: number; bytes: Uint8Array };
}

export interface ConvertHeaderResult {
  from: 1 | 2;
  to: 1 | 2;
  /** Active keyslots (numbers unchanged). */
  keyslots: number[];
  /** Writes of the plan (copies and header sectors), for tests and diagnostics. */
  steps: number;
}

function refuse(reason: ConversionRefusal, message: string): never {
  throw new ConversionRefusedError(reason, `Cannot convert to ${reason === 'same-type' ? 'that' : 'the other'} format: ${message} (reason: ${reason})`);
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

// --- keyslot moves in LUKS1 state ---------------------------------------------------------

/** One step of a plan: copy keyslot material (sectors), or write LUKS1 header offsets. */
export type MoveStep = { kind: 'copy'; slot: number; from: number; to: number } | { kind: 'header'; offsets: number[] };

interface MoveProblem {
  /** Sectors of key material per keyslot. */
  length: number;
  /** Keyslot areas must end at or before this sector. */
  limit: number;
  active: Set<number>;
  /** Offsets (sectors) of all 8 keyslots in the header the moves start from. */
  start: number[];
  /** Target offsets of the active keyslots. */
  target: Map<number, number>;
  /** Offsets of the header to end with (all 8), or undefined: any valid placeholders. */
  final?: number[];
}

const overlaps = (a: number, b: number, len: number): boolean => a < b + len && b < a + len;

/** True when all 8 areas of `offsets` are inside the header area and pairwise disjoint. */
export function validLayout(offsets: number[], length: number, limit: number): boolean {
  for (let i = 0; i < offsets.length; i++) {
    const o = offsets[i]!;
    if (o < MIN_KEYSLOT_SECTOR || o + length > limit) return false;
    for (let j = 0; j < i; j++) if (overlaps(o, offsets[j]!, length)) return false;
  }
  return true;
}

/** Places of `length` sectors in [LOW, limit) overlapping none of `avoid`: each gap's first and last fit, 8-aligned and exact. */
function freePlaces(avoid: number[], length: number, limit: number): number[] {
  const taken = [...avoid].sort((x, y) => x - y);
  const gaps: Array<[number, number]> = [];
  let pos = LOW;
  for (const a of taken) {
    if (a > pos) gaps.push([pos, a]);
    pos = Math.max(pos, a + length);
  }
  if (limit > pos) gaps.push([pos, limit]);
  const out: number[] = [];
  for (const [s, e] of gaps) {
    if (e - s < length) continue;
    for (const c of [roundUp(s, 8), s, Math.floor((e - length) / 8) * 8, e - length]) {
      if (c >= s && c + length <= e && !out.includes(c)) out.push(c);
    }
  }
  return out;
}

/** The first free place (see freePlaces), or undefined. */
function findFree(avoid: number[], length: number, limit: number): number | undefined {
  return freePlaces(avoid, length, limit)[0];
}

/**
 * Candidate layouts for a header with the active keyslots at `activeAt`, best first: free
 * keyslots stay where they can and only colliding ones move; or each collision moves in turn;
 * or all free keyslots are packed anew from the start (8-aligned, then sector-exact).
 */
function layouts(p: MoveProblem, previous: number[], activeAt: Map<number, number>): number[][] {
  const inactive = [...Array(LUKS1_NUM_KEYSLOTS).keys()].filter((s) => !p.active.has(s));
  const base = (): number[] => {
    const out = new Array<number>(LUKS1_NUM_KEYSLOTS).fill(-1);
    for (const [slot, at] of activeAt) out[slot] = at;
    return out;
  };
  const fits = (o: number) => o >= MIN_KEYSLOT_SECTOR && o + p.length <= p.limit;
  const candidates: Array<number[] | undefined> = [];
  // 1. keep what collides with nothing, then place the rest in free places.
  {
    const out = base();
    const displaced: number[] = [];
    for (const slot of inactive) {
      const keep = previous[slot]!;
      if (fits(keep) && !out.some((o) => o >= 0 && overlaps(o, keep, p.length))) out[slot] = keep;
      else displaced.push(slot);
    }
    let ok = true;
    for (const slot of displaced) {
      const free = findFree(out.filter((o) => o >= 0), p.length, p.limit);
      if (free === undefined) ok = false;
      else out[slot] = free;
    }
    candidates.push(ok ? out : undefined);
  }
  // 2. in slot order: keep if possible, else the first free place.
  {
    const out = base();
    let ok = true;
    for (const slot of inactive) {
      const keep = previous[slot]!;
      if (fits(keep) && !out.some((o) => o >= 0 && overlaps(o, keep, p.length))) out[slot] = keep;
      else {
        const free = findFree(out.filter((o) => o >= 0), p.length, p.limit);
        if (free === undefined) ok = false;
        else out[slot] = free;
      }
    }
    candidates.push(ok ? out : undefined);
  }
  // 3. pack every free keyslot anew, lowest places first (8-aligned, then exact).
  for (const align of [8, 1]) {
    const out = base();
    let ok = true;
    for (const slot of inactive) {
      const places = freePlaces(out.filter((o) => o >= 0), p.length, p.limit).filter((c) => align === 1 || c % 8 === 0);
      if (places.length === 0) ok = false;
      else out[slot] = Math.min(...places);
    }
    candidates.push(ok ? out : undefined);
  }
  return candidates.filter((c): c is number[] => c !== undefined && validLayout(c, p.length, p.limit));
}

/** The first candidate layout (see layouts), or undefined. */
function withPlaceholders(p: MoveProblem, previous: number[], activeAt: Map<number, number>): number[] | undefined {
  return layouts(p, previous, activeAt)[0];
}

/**
 * Header steps from `from` to `to`, each changing one sector of the LUKS1 header: a change to
 * records in both sectors goes through a valid mix (first sector's records new, second's old,
 * or the other way round). Undefined when neither mix is a valid header.
 */
function headerSteps(from: number[], to: number[], p: MoveProblem): MoveStep[] | undefined {
  const changed = (lo: number, hi: number) => from.slice(lo, hi).some((o, i) => o !== to[lo + i]);
  const first = changed(0, FIRST_SECTOR_SLOTS);
  const second = changed(FIRST_SECTOR_SLOTS, LUKS1_NUM_KEYSLOTS);
  if (!first && !second) return [];
  if (!(first && second)) return [{ kind: 'header', offsets: to }];
  const firstNew = [...to.slice(0, FIRST_SECTOR_SLOTS), ...from.slice(FIRST_SECTOR_SLOTS)];
  if (validLayout(firstNew, p.length, p.limit)) return [{ kind: 'header', offsets: firstNew }, { kind: 'header', offsets: to }];
  const secondNew = [...from.slice(0, FIRST_SECTOR_SLOTS), ...to.slice(FIRST_SECTOR_SLOTS)];
  if (validLayout(secondNew, p.length, p.limit)) return [{ kind: 'header', offsets: secondNew }, { kind: 'header', offsets: to }];
  return undefined;
}

/**
 * Plans moving every active keyslot to its target through LUKS1 headers that are all valid and
 * that only ever point at complete copies. Undefined when no such order exists in the space.
 */
export function planKeyslotMoves(p: MoveProblem): MoveStep[] | undefined {
  const steps: MoveStep[] = [];
  let header = [...p.start];
  const at = new Map<number, number>([...p.active].map((s) => [s, p.start[s]!]));
  const setHeader = (): boolean => {
    for (const next of layouts(p, header, at)) {
      const hs = headerSteps(header, next, p);
      if (!hs) continue;
      steps.push(...hs);
      header = next;
      return true;
    }
    return false;
  };
  const move = (slot: number, to: number): boolean => {
    const from = at.get(slot)!;
    const mark = steps.length;
    steps.push({ kind: 'copy', slot, from, to });
    at.set(slot, to);
    if (setHeader()) return true;
    steps.length = mark;
    at.set(slot, from);
    return false;
  };
  /** Moves `slot` to a parking place clear of every active keyslot and of `avoid`. */
  const park = (slot: number, avoid: number[]): boolean => {
    for (const place of freePlaces([...at.values(), ...avoid], p.length, p.limit)) if (move(slot, place)) return true;
    return false;
  };
  const up = [...p.target].some(([slot, t]) => t > at.get(slot)!);
  // Moving up, the highest keyslot goes first (its target is free of the others); moving down, the lowest.
  const order = [...p.active].sort((a, b) => (up ? at.get(b)! - at.get(a)! : at.get(a)! - at.get(b)!));
  const targets = [...p.target.values()];
  for (const slot of order) {
    const target = p.target.get(slot)!;
    if (at.get(slot) === target) continue;
    for (const other of order) {
      if (other !== slot && overlaps(at.get(other)!, target, p.length) && !park(other, targets)) return undefined;
    }
    if (overlaps(at.get(slot)!, target, p.length) && !park(slot, [target])) return undefined;
    if (!move(slot, target)) return undefined;
  }
  if (p.final) {
    if (!validLayout(p.final, p.length, p.limit)) return undefined;
    const hs = headerSteps(header, p.final, p);
    if (!hs) return undefined;
    steps.push(...hs);
  }
  return steps;
}

// --- LUKS1 -> LUKS2 ---------------------------------------------------------------------------

interface Luks1ToLuks2Plan {
  hdr: Luks1Header;
  moves: MoveStep[];
  state: Luks2HeaderState;
  active: number[];
  length: number;
}

/** The LUKS2 metadata cryptsetup makes of a LUKS1 header (same members, same order). */
function luks2MetadataOf(hdr: Luks1Header, keyslotsSize: number, length: number): Luks2Metadata {
  const encryption = hdr.cipherMode ? `${hdr.cipherName}-${hdr.cipherMode}` : hdr.cipherName;
  const keyslots: Record<string, Luks2Keyslot> = {};
  const active: string[] = [];
  hdr.keyslots.forEach((ks, i) => {
    if (ks.state !== LUKS1_KEY_ENABLED) return;
    active.push(String(i));
    keyslots[String(i)] = {
      type: 'luks2',
      key_size: hdr.keyBytes,
      kdf: { type: 'pbkdf2', hash: hdr.hashSpec, iterations: ks.iterations, salt: Buffer.from(ks.salt).toString('base64') },
      af: { type: 'luks1', hash: hdr.hashSpec, stripes: LUKS1_STRIPES },
      area: { type: 'raw', encryption, key_size: hdr.keyBytes, offset: String(ks.keyMaterialOffset * SECTOR + SHIFT), size: String(roundUp(length * SECTOR, 4096)) },
    } as Luks2Keyslot;
  });
  return {
    keyslots,
    tokens: {},
    segments: { '0': { type: 'crypt', offset: String(hdr.payloadOffset * SECTOR), iv_tweak: '0', size: 'dynamic', encryption, sector_size: SECTOR } },
    digests: {
      '0': {
        type: 'pbkdf2',
        keyslots: active,
        segments: ['0'],
        hash: hdr.hashSpec,
        salt: Buffer.from(hdr.mkDigestSalt).toString('base64'),
        digest: Buffer.from(hdr.mkDigest).toString('base64'),
        iterations: hdr.mkDigestIterations,
      },
    },
    config: { json_size: String(HDR_SIZE - LUKS2_BINARY_HEADER_SIZE), keyslots_size: String(keyslotsSize) },
  } as Luks2Metadata;
}

async function planLuks1ToLuks2(header: BlockDevice, data: BlockDevice, detached: boolean, extras: Pick<ConvertHeaderOptions, 'tokens' | 'originalOffsets'> = {}): Promise<Luks1ToLuks2Plan> {
  const bytes = new Uint8Array(LUKS1_HEADER_SIZE);
  await header.read(bytes, 0);
  const current = decodeLuks1Header(bytes);
  const resumed = extras.originalOffsets !== undefined;
  if (resumed && extras.originalOffsets!.length !== LUKS1_NUM_KEYSLOTS) throw new RangeError('originalOffsets needs the 8 keyslot offsets.');
  // Resumed: the checks, the metadata and the targets are those of the header before any move.
  const hdr: Luks1Header = resumed ? { ...current, keyslots: current.keyslots.map((k, i) => ({ ...k, keyMaterialOffset: extras.originalOffsets![i]! })) } : current;
  const length = luks1KeyslotSectors(hdr.keyBytes);
  const offsets = hdr.keyslots.map((k) => k.keyMaterialOffset);
  if (Math.min(...offsets) !== LUKS1_KEYSLOTS_AT / SECTOR) {
    refuse('keyslots-offset', `the LUKS1 keyslots start at sector ${Math.min(...offsets)}, not 8 (an old LUKS 1.0 layout).`);
  }
  try {
    parseCipherSpec(hdr.cipherName, hdr.cipherMode, hdr.keyBytes);
  } catch (err) {
    refuse('cipher', `the cipher ${hdr.cipherName}-${hdr.cipherMode} cannot be used for LUKS2 (${(err as Error).message}).`);
  }
  const luks1Size = roundUp((Math.max(...offsets) + length) * SECTOR, 4096);
  if (!resumed && luks1Size + 8 <= header.size) {
    const magic = new Uint8Array(8);
    await header.read(magic, luks1Size);
    if (Buffer.from(magic).toString('latin1') === 'LUKSMETA') refuse('luksmeta', 'the header is followed by LUKSMETA metadata (luksmeta package).');
  }
  // The LUKS2 metadata may use everything up to the data (a detached header: the header device).
  const maxSize = hdr.payloadOffset > 0 ? hdr.payloadOffset * SECTOR : header.size;
  const required = luks1Size + SHIFT;
  if (maxSize < required) {
    refuse('no-space', `the LUKS2 headers and keyslots need ${required} bytes before the data, there are ${maxSize} (keyslot area cannot move).`);
  }
  const keyslotsSize = Math.floor((maxSize - 2 * HDR_SIZE) / 4096) * 4096;
  if (luks1Size - LUKS1_KEYSLOTS_AT > keyslotsSize) refuse('no-space', 'the LUKS2 keyslots area would be smaller than the LUKS1 one.');
  const metadata = luks2MetadataOf(hdr, keyslotsSize, length);
  if (extras.tokens) metadata.tokens = structuredClone(extras.tokens);
  try {
    validateLuks2Metadata(metadata, { hdrSize: HDR_SIZE, ...(detached ? {} : { dataDeviceSize: data.size }) });
  } catch (err) {
    refuse('no-space', `the LUKS2 metadata would be invalid: ${(err as Error).message}`);
  }
  const active = hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_ENABLED ? [i] : []));
  const limit = Math.floor(Math.min(maxSize, header.size) / SECTOR);
  const moves = planKeyslotMoves({
    length,
    limit,
    active: new Set(active),
    start: current.keyslots.map((k) => k.keyMaterialOffset),
    target: new Map(active.map((s) => [s, offsets[s]! + SHIFT / SECTOR])),
  });
  if (!moves) {
    refuse('no-room-for-safe-move', 'there is no free place to move the keyslots through without risking them on a crash (cryptsetup would move them unprotected).');
  }
  const state: Luks2HeaderState = {
    bin: {
      magic: new Uint8Array(6),
      version: 2,
      hdrSize: HDR_SIZE,
      // cryptsetup creates the header with seqid 1 and its write makes it 2.
      seqid: 2n,
      label: '',
      checksumAlg: 'sha256',
      salt: new Uint8Array(64),
      uuid: hdr.uuid,
      subsystem: '',
      hdrOffset: 0,
      checksum: new Uint8Array(64),
      padding: new Uint8Array(184),
      padding4096: new Uint8Array(3584),
    },
    metadata,
    escapeSlashes: false,
    salts: [new Uint8Array(randomBytes(64)), new Uint8Array(randomBytes(64))],
  };
  return { hdr: current, moves, state, active, length };
}

/**
 * The LUKS2 metadata a LUKS1 -> LUKS2 conversion of `data` would write (nothing is written).
 * @throws ConversionRefusedError when the conversion is refused
 */
export async function previewLuks1ToLuks2(data: BlockDevice, extras: Pick<ConvertHeaderOptions, 'tokens' | 'originalOffsets'> = {}): Promise<Luks2Metadata> {
  return structuredClone((await planLuks1ToLuks2(data, data, false, extras)).state.metadata);
}

// --- LUKS2 -> LUKS1 ---------------------------------------------------------------------------

interface Luks2ToLuks1Plan {
  /** The LUKS1 header written first: active keyslots where LUKS2 has them. */
  first: Luks1Header;
  moves: MoveStep[];
  final: Luks1Header;
  active: number[];
  length: number;
  /** End (bytes) of the LUKS2 keyslots area. */
  keyslotsEnd: number;
}

/** cryptsetup's keyslot_LUKS1_compatible(). */
function luks1Compatible(ks: Luks2Keyslot, keyBytes: number, hash: string, encryption: string, length: number): boolean {
  if (ks.type !== 'luks2' || ks.kdf?.type !== 'pbkdf2' || ks.kdf.hash !== hash) return false;
  if (ks.af?.stripes !== LUKS1_STRIPES || ks.af.hash !== hash) return false;
  if (ks.area.encryption !== encryption || ks.area.key_size !== keyBytes || ks.key_size !== keyBytes) return false;
  return u64(ks.area.size, 'area size') === roundUp(length * SECTOR, 4096);
}

/** cryptsetup's LUKS2_find_area_gap(): the first gap of a keyslot area's size in the LUKS2 keyslots area. */
function findAreaGap(used: Array<[number, number]>, areaBytes: number, start: number, end: number): number | undefined {
  let offset = start;
  for (const [s, len] of [...used].sort((a, b) => a[0] - b[0])) {
    if (offset < s && offset + areaBytes <= s) break;
    offset = Math.max(offset, s + len);
  }
  return offset + areaBytes > end ? undefined : offset;
}

function planLuks2ToLuks1(volume: Pick<LuksVolume, 'readOnlyReason'>, state: Luks2HeaderState, header: Pick<BlockDevice, 'size'>, detached: boolean, dropTokenType?: string): Luks2ToLuks1Plan {
  const meta = state.metadata;
  if (volume.readOnlyReason !== undefined) refuse('requirements', volume.readOnlyReason);
  const digestIds = Object.keys(meta.digests);
  const digest = meta.digests['0'];
  const segment = meta.segments['0'];
  if (!segment || segment.type !== 'crypt') refuse('segments', 'there is no default crypt segment.');
  if (segment.sector_size !== SECTOR) refuse('sector-size', `the data segment uses ${segment.sector_size}-byte sectors, LUKS1 only 512.`);
  if (!digest || digest.type !== 'pbkdf2' || digestIds.length !== 1) refuse('digest', 'the keyslot digests are not LUKS1 compatible (one pbkdf2 digest needed).');
  const hash = digest.hash!;
  const encryption = segment.encryption!;
  if (/^paes/i.test(encryption)) refuse('wrapped-key', `the volume uses the wrapped key cipher ${encryption}.`);
  let cipherName: string;
  let cipherMode: string;
  try {
    const spec = parseEncryption(encryption);
    cipherName = spec.cipher;
    cipherMode = encryption.slice(encryption.indexOf('-') + 1);
  } catch (err) {
    refuse('cipher', `the cipher ${encryption} cannot be used (${(err as Error).message}).`);
  }
  if (Object.keys(meta.segments).length !== 1) refuse('segments', 'the volume has more than one segment.');
  const tokens = Object.values(meta.tokens).filter((t) => dropTokenType === undefined || t.type !== dropTokenType).length;
  if (tokens > 0) refuse('tokens', `the LUKS2 header contains ${tokens} token(s).`);
  const firstSlot = digest.keyslots.map((k) => meta.keyslots[k]).find((k) => k !== undefined);
  if (!firstSlot) refuse('digest', 'no keyslot holds the volume key, its size is unknown.');
  const keyBytes = firstSlot.key_size;
  const length = luks1KeyslotSectors(keyBytes);
  const ids = Object.keys(meta.keyslots).map(Number).sort((a, b) => a - b);
  for (const id of ids) {
    if (id >= LUKS1_NUM_KEYSLOTS) refuse('keyslot-number', `keyslot ${id} (over the 8 LUKS1 keyslots) is still active.`);
    const ks = meta.keyslots[String(id)]!;
    if (!digest.keyslots.includes(String(id)) || !luks1Compatible(ks, keyBytes, hash, encryption, length)) {
      refuse('keyslot-incompatible', `keyslot ${id} is not LUKS1 compatible (LUKS1 needs PBKDF2 with the digest's hash ${hash}, the data cipher and the standard area size).`);
    }
    if (base64(ks.kdf!.salt, 'kdf salt').length !== 32) refuse('keyslot-incompatible', `keyslot ${id} has a salt LUKS1 cannot hold.`);
  }
  const mkDigest = base64(digest.digest, 'digest');
  const mkSalt = base64(digest.salt, 'digest salt');
  if (mkDigest.length < 20 || mkSalt.length !== 32) refuse('digest', 'the digest or its salt does not fit LUKS1.');
  const hdrSize = state.bin.hdrSize;
  const areaStart = 2 * hdrSize;
  const keyslotsEnd = areaStart + u64(meta.config.keyslots_size, 'keyslots_size');
  const areaBytes = roundUp(keyBytes * LUKS1_STRIPES, 4096);
  const used: Array<[number, number]> = ids.map((id) => [u64(meta.keyslots[String(id)]!.area.offset, 'offset'), u64(meta.keyslots[String(id)]!.area.size, 'size')]);
  const luks2At: number[] = [];
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) {
    const ks = meta.keyslots[String(i)];
    if (ks) luks2At.push(u64(ks.area.offset, 'offset'));
    else {
      // Free LUKS1 keyslots take the first gaps, one after the other (cryptsetup's placeholders).
      const gap = findAreaGap(used, areaBytes, areaStart, keyslotsEnd);
      if (gap === undefined) refuse('no-keyslot-area', 'the LUKS2 keyslots area has no room for all 8 LUKS1 keyslot areas.');
      used.push([gap, areaBytes]);
      luks2At.push(gap);
    }
  }
  const finalOffsets = luks2At.map((o) => (o - SHIFT) / SECTOR);
  if (finalOffsets.some((o) => !Number.isInteger(o) || o < MIN_KEYSLOT_SECTOR || o > 0xffffffff)) refuse('no-keyslot-area', 'the keyslot areas cannot be placed in LUKS1.');
  const payloadOffset = u64(segment.offset, 'segment offset') / SECTOR;
  if (!Number.isInteger(payloadOffset) || payloadOffset > 0xffffffff) refuse('segments', 'the data offset does not fit LUKS1.');
  const final: Luks1Header = {
    magic: LUKS1_MAGIC,
    version: 1,
    cipherName: cipherName!,
    cipherMode: cipherMode!,
    hashSpec: hash,
    payloadOffset,
    keyBytes,
    mkDigest: mkDigest.slice(0, 20),
    mkDigestSalt: mkSalt,
    mkDigestIterations: digest.iterations!,
    uuid: state.bin.uuid,
    keyslots: finalOffsets.map((keyMaterialOffset, i) => {
      const ks = meta.keyslots[String(i)];
      return ks
        ? { state: LUKS1_KEY_ENABLED, iterations: (ks.kdf as { iterations: number }).iterations, salt: base64(ks.kdf!.salt, 'salt'), keyMaterialOffset, stripes: LUKS1_STRIPES }
        : { state: LUKS1_KEY_DISABLED, iterations: 0, salt: new Uint8Array(32), keyMaterialOffset, stripes: LUKS1_STRIPES };
    }),
  };
  const limit = Math.floor(Math.min(payloadOffset > 0 ? payloadOffset * SECTOR : header.size, header.size) / SECTOR);
  try {
    validateLuks1Header(final, { headerDeviceSize: header.size, detached });
  } catch (err) {
    refuse('no-keyslot-area', `the LUKS1 header would be invalid: ${(err as Error).message}`);
  }
  const active = ids;
  const activeSet = new Set(active);
  const problem: MoveProblem = {
    length,
    limit,
    active: activeSet,
    start: [],
    target: new Map(active.map((s) => [s, finalOffsets[s]!])),
    final: finalOffsets,
  };
  // The first LUKS1 header: active keyslots where LUKS2 keeps them, free ones wherever they fit.
  const startActive = new Map(active.map((s) => [s, u64(meta.keyslots[String(s)]!.area.offset, 'offset') / SECTOR]));
  const firstOffsets = withPlaceholders(problem, finalOffsets, startActive);
  if (!firstOffsets) refuse('no-room-for-safe-move', 'there is no room for a LUKS1 header over the LUKS2 keyslot areas (all 8 keyslots in a full area; cryptsetup would move them unprotected).');
  problem.start = firstOffsets;
  const moves = planKeyslotMoves(problem);
  if (!moves) refuse('no-room-for-safe-move', 'there is no free place to move the keyslots through without risking them on a crash (cryptsetup would move them unprotected).');
  const first: Luks1Header = { ...final, keyslots: final.keyslots.map((k, i) => ({ ...k, keyMaterialOffset: firstOffsets[i]! })) };
  validateLuks1Header(first, { headerDeviceSize: header.size, detached });
  return { first, moves, final, active, length, keyslotsEnd };
}

/**
 * Checks that LUKS2 `metadata` (hdr_size `hdrSize`, on a device of `deviceSize` bytes) would
 * convert to LUKS1 with every step crash-safe; returns the LUKS1 header it would end with.
 * @throws ConversionRefusedError when the conversion would be refused
 */
export function checkLuks2ToLuks1(metadata: Luks2Metadata, hdrSize: number, deviceSize: number, dropTokenType?: string): Luks1Header {
  const state = { bin: { hdrSize, uuid: '' }, metadata } as unknown as Luks2HeaderState;
  return planLuks2ToLuks1({ readOnlyReason: undefined }, state, { size: deviceSize }, false, dropTokenType).final;
}

// --- execution --------------------------------------------------------------------------------

async function writeFlushed(dev: BlockDevice, bytes: Uint8Array, offset: number): Promise<void> {
  await dev.write(bytes, offset);
  await dev.flush();
}

/** Runs the keyslot moves: copies (flushed) and single-sector LUKS1 header updates. Returns the last header. */
async function runMoves(dev: BlockDevice, base: Luks1Header, current: Uint8Array, moves: MoveStep[], length: number): Promise<Uint8Array> {
  let encoded = current;
  for (const step of moves) {
    if (step.kind === 'copy') {
      const material = new Uint8Array(length * SECTOR);
      await dev.read(material, step.from * SECTOR);
      await writeFlushed(dev, material, step.to * SECTOR);
      material.fill(0);
      continue;
    }
    const next = encodeLuks1Header({ ...base, keyslots: base.keyslots.map((k, i) => ({ ...k, keyMaterialOffset: step.offsets[i]! })) });
    for (const s of [0, 1]) {
      const a = next.subarray(s * SECTOR, Math.min(LUKS1_HEADER_SIZE, (s + 1) * SECTOR));
      const b = encoded.subarray(s * SECTOR, Math.min(LUKS1_HEADER_SIZE, (s + 1) * SECTOR));
      if (!Buffer.from(a).equals(Buffer.from(b))) await writeFlushed(dev, a, s * SECTOR);
    }
    encoded = next;
  }
  return encoded;
}

/** Zeros `[from, to)` except the given areas (bytes): copies of key material nothing references. */
async function wipeExcept(dev: BlockDevice, from: number, to: number, keep: Array<[number, number]>): Promise<void> {
  let pos = from;
  for (const [s, e] of [...keep].sort((a, b) => a[0] - b[0])) {
    if (s > pos) await dev.writeZeroes(pos, Math.min(s, to) - pos);
    pos = Math.max(pos, e);
    if (pos >= to) break;
  }
  if (pos < to) await dev.writeZeroes(pos, to - pos);
  await dev.flush();
}

function highestEnd(moves: MoveStep[], offsets: number[], length: number): number {
  let end = 0;
  for (const o of offsets) end = Math.max(end, o + length);
  for (const m of moves) if (m.kind === 'copy') end = Math.max(end, m.from + length, m.to + length);
  return end * SECTOR;
}

/**
 * Converts the LUKS header of `data` (or `options.headerDevice`) to `options.type` in place. No
 * passphrase is needed: keyslots, digest, cipher and UUID carry over; data is not touched.
 * @throws ConversionRefusedError (nothing written) for every case cryptsetup refuses
 */
export async function convertLuksHeader(data: BlockDevice, options: ConvertHeaderOptions): Promise<ConvertHeaderResult> {
  if (options.originalOffsets !== undefined && options.type !== 'luks2') throw new RangeError('originalOffsets is for LUKS1 -> LUKS2.');
  const header = options.headerDevice ?? data;
  const detached = header !== data;
  if (header.readOnly) throw new ReadOnlyDeviceError('Cannot convert a header opened read-only.');
  // Inspect read-only: a refusal must not even repair a stale LUKS2 copy.
  const volume = await LuksVolume.open(data, { readOnly: true, ...(detached ? { headerDevice: header } : {}) });
  const to = options.type === 'luks1' ? 1 : 2;
  if (volume.version === to) refuse('same-type', `the device is already ${options.type}.`);

  if (volume.version === 1) {
    const plan = await planLuks1ToLuks2(header, data, detached, options);
    const start = encodeLuks1Header(plan.hdr);
    await runMoves(header, plan.hdr, start, plan.moves, plan.length);
    const primary = buildLuks2Copy(plan.state, 'primary');
    const secondary = buildLuks2Copy(plan.state, 'secondary');
    // Secondary first (the LUKS1 header still rules), then the primary's JSON, then its magic sector.
    await writeFlushed(header, secondary.subarray(LUKS2_BINARY_HEADER_SIZE), HDR_SIZE + LUKS2_BINARY_HEADER_SIZE);
    await writeFlushed(header, secondary.subarray(0, LUKS2_BINARY_HEADER_SIZE), HDR_SIZE);
    await writeFlushed(header, primary.subarray(LUKS2_BINARY_HEADER_SIZE), LUKS2_BINARY_HEADER_SIZE);
    await writeFlushed(header, primary.subarray(0, SECTOR), 0);
    await writeFlushed(header, primary.subarray(SECTOR, LUKS2_BINARY_HEADER_SIZE), SECTOR);
    const keep = plan.active.map((s): [number, number] => {
      const o = u64(plan.state.metadata.keyslots[String(s)]!.area.offset, 'offset');
      return [o, o + plan.length * SECTOR];
    });
    await wipeExcept(header, 2 * HDR_SIZE, highestEnd(plan.moves, plan.hdr.keyslots.map((k) => k.keyMaterialOffset), plan.length), keep);
    return { from: 1, to: 2, keyslots: plan.active, steps: plan.moves.length + 5 };
  }

  const { state } = await readLuks2Headers(header, detached ? undefined : data.size);
  const plan = planLuks2ToLuks1(volume, state, header, detached, options.dropTokenType);
  const first = encodeLuks1Header(plan.first);
  // The rest of the header page (zeros and the header's second sector) first: only the LUKS2
  // primary's checksum breaks, the secondary still opens. Then the sector with the LUKS1 magic.
  const page = new Uint8Array(LUKS1_KEYSLOTS_AT - SECTOR);
  page.set(first.subarray(SECTOR));
  if (options.luks1Page) {
    const extra = options.luks1Page(plan.final);
    if (extra.offset < LUKS1_HEADER_SIZE || extra.offset + extra.bytes.length > LUKS1_KEYSLOTS_AT) throw new RangeError('luks1Page data must lie between the LUKS1 header and its keyslots.');
    page.set(extra.bytes, extra.offset - SECTOR);
  }
  await writeFlushed(header, page, SECTOR);
  await writeFlushed(header, first.subarray(0, SECTOR), 0);
  await runMoves(header, plan.final, first, plan.moves, plan.length);
  const keep = plan.active.map((s): [number, number] => [plan.final.keyslots[s]!.keyMaterialOffset * SECTOR, (plan.final.keyslots[s]!.keyMaterialOffset + plan.length) * SECTOR]);
  const end = Math.max(plan.keyslotsEnd, highestEnd(plan.moves, plan.first.keyslots.map((k) => k.keyMaterialOffset), plan.length));
  await wipeExcept(header, LUKS1_KEYSLOTS_AT, Math.min(end, header.size, plan.final.payloadOffset > 0 ? plan.final.payloadOffset * SECTOR : header.size), keep);
  return { from: 2, to: 1, keyslots: plan.active, steps: plan.moves.length + 2 };
}

/**
 * Finishes a LUKS2 -> LUKS1 conversion a crash interrupted after the LUKS1 magic was written:
 * moves the active keyslots from where the LUKS1 header has them now to `finalOffsets` (sectors,
 * all 8) with the same crash-safe steps, then wipes everything between the header page and the
 * data (or the device end) but the active keyslot areas.
 */
export async function finishLuks1KeyslotMoves(header: BlockDevice, finalOffsets: number[]): Promise<{ keyslots: number[]; steps: number }> {
  if (header.readOnly) throw new ReadOnlyDeviceError('Cannot convert a header opened read-only.');
  const bytes = new Uint8Array(LUKS1_HEADER_SIZE);
  await header.read(bytes, 0);
  const hdr = decodeLuks1Header(bytes);
  validateLuks1Header(hdr, { headerDeviceSize: header.size });
  const length = luks1KeyslotSectors(hdr.keyBytes);
  const end = Math.min(header.size, hdr.payloadOffset > 0 ? hdr.payloadOffset * SECTOR : header.size);
  const limit = Math.floor(end / SECTOR);
  const active = hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_ENABLED ? [i] : []));
  const moves = planKeyslotMoves({
    length,
    limit,
    active: new Set(active),
    start: hdr.keyslots.map((k) => k.keyMaterialOffset),
    target: new Map(active.map((s) => [s, finalOffsets[s]!])),
    final: finalOffsets,
  });
  if (!moves) refuse('no-room-for-safe-move', 'there is no free place to move the keyslots through without risking them on a crash.');
  await runMoves(header, hdr, bytes, moves, length);
  const keep = active.map((s): [number, number] => [finalOffsets[s]! * SECTOR, (finalOffsets[s]! + length) * SECTOR]);
  await wipeExcept(header, LUKS1_KEYSLOTS_AT, end, keep);
  return { keyslots: active, steps: moves.length };
}
