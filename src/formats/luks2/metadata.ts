/**
 * LUKS2 JSON metadata (LUKS2 On-Disk Format Specification, section 3): parsing into a typed
 * view, validation with cryptsetup 2.6's rules, and serialisation into the JSON area.
 *
 * The typed structure IS the parsed JSON object: unknown fields, tokens and unknown object
 * types stay in place and survive a rewrite unchanged.
 *
 * @example
 * const { metadata, escapeSlashes, keyOrder } = parseLuks2Json(jsonArea);
 * validateLuks2Metadata(metadata, { hdrSize: 16384 });
 * const area = serializeLuks2Json(metadata, jsonArea.length, { escapeSlashes, keyOrder });
 */
import { CorruptHeaderError } from '../../errors.js';

/** cryptsetup limits (lib/luks2/luks2.h). */
export const LUKS2_LIMITS = { keyslots: 32, tokens: 32, digests: 8, segments: 32 } as const;
/** The AF stripes every LUKS2 "luks2" keyslot uses. */
export const LUKS2_STRIPES = 4000;
/** Largest keyslots area cryptsetup accepts (LUKS2_MAX_KEYSLOTS_SIZE, 128 MiB). */
export const LUKS2_MAX_KEYSLOTS_SIZE = 128 * 1024 * 1024;

type Extra = { [key: string]: unknown };

export type Luks2Kdf =
  | ({ type: 'pbkdf2'; hash: string; iterations: number; salt: string } & Extra)
  | ({ type: 'argon2i' | 'argon2id'; time: number; memory: number; cpus: number; salt: string } & Extra);

export interface Luks2Keyslot extends Extra {
  type: string;
  key_size: number;
  priority?: number;
  af?: { type: string; stripes: number; hash: string } & Extra;
  area: { type: string; offset: string; size: string; encryption?: string; key_size?: number } & Extra;
  kdf?: Luks2Kdf;
}

export interface Luks2Segment extends Extra {
  type: string;
  offset: string;
  size: string; // decimal or "dynamic"
  iv_tweak?: string;
  encryption?: string;
  sector_size?: number;
  flags?: string[];
}

export interface Luks2Digest extends Extra {
  type: string;
  keyslots: string[];
  segments: string[];
  hash?: string;
  iterations?: number;
  salt?: string;
  digest?: string;
}

export interface Luks2Token extends Extra {
  type: string;
  keyslots: string[];
}

export interface Luks2Config extends Extra {
  json_size: string;
  keyslots_size: string;
  flags?: string[];
  requirements?: { mandatory?: string[] } & Extra;
}

export interface Luks2Metadata extends Extra {
  keyslots: Record<string, Luks2Keyslot>;
  tokens: Record<string, Luks2Token>;
  segments: Record<string, Luks2Segment>;
  digests: Record<string, Luks2Digest>;
  config: Luks2Config;
}

export interface ParsedLuks2Json {
  metadata: Luks2Metadata;
  /** The source wrote "/" as "\/" (json-c without NOSLASHESCAPE, cryptsetup < 2.1). Kept on rewrite. */
  escapeSlashes: boolean;
  /** Byte length of the JSON text (before the terminating NUL). */
  textLength: number;
  /**
   * Key order of the top-level sections as written (JS objects list integer-like keys in
   * ascending order, json-c keeps insertion order). Used to rewrite the text identically.
   */
  keyOrder: Record<string, string[]>;
}

/**
 * Records the member names of each object directly under the top-level object, in text order.
 * The text is already known to be valid JSON.
 */
function sectionKeyOrder(text: string): Record<string, string[]> {
  const order: Record<string, string[]> = {};
  let depth = 0;
  let section = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const raw = text.slice(i, j + 1);
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k]!)) k++;
      if (text[k] === ':') {
        const name = JSON.parse(raw) as string;
        if (depth === 1) section = name;
        else if (depth === 2) (order[section] ??= []).push(name);
      }
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    i++;
  }
  return order;
}

/** JSON text of `value`, objects directly under the top level in `keyOrder` where given (new keys last). */
function stringifyOrdered(metadata: Luks2Metadata, keyOrder: Record<string, string[]> | undefined): string {
  if (!keyOrder) return JSON.stringify(metadata);
  const parts: string[] = [];
  for (const [name, value] of Object.entries(metadata)) {
    if (value === undefined) continue;
    const order = keyOrder[name];
    if (!order || !isObject(value)) {
      parts.push(`${JSON.stringify(name)}:${JSON.stringify(value)}`);
      continue;
    }
    const keys = [...order.filter((k) => k in value), ...Object.keys(value).filter((k) => !order.includes(k))];
    const inner = keys.filter((k) => value[k] !== undefined).map((k) => `${JSON.stringify(k)}:${JSON.stringify(value[k])}`);
    parts.push(`${JSON.stringify(name)}:{${inner.join(',')}}`);
  }
  return `{${parts.join(',')}}`;
}

/** Parses the JSON area (text up to the first NUL). Throws `CorruptHeaderError` on anything but a JSON object. */
export function parseLuks2Json(area: Uint8Array): ParsedLuks2Json {
  const end = area.indexOf(0);
  if (end < 0) throw new CorruptHeaderError('LUKS2 JSON area has no terminating NUL.');
  const bytes = area.subarray(0, end);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (err) {
    throw new CorruptHeaderError('LUKS2 JSON metadata is not valid UTF-8.', { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CorruptHeaderError(`LUKS2 JSON metadata does not parse: ${(err as Error).message}`, { cause: err });
  }
  if (!isObject(value)) throw new CorruptHeaderError('LUKS2 JSON metadata is not an object.');
  return { metadata: value as Luks2Metadata, escapeSlashes: text.includes('\\/'), textLength: end, keyOrder: sectionKeyOrder(text) };
}

/** Serialises metadata into a JSON area of `jsonSize` bytes (text, NUL, zeros), the form cryptsetup writes. */
export function serializeLuks2Json(
  metadata: Luks2Metadata,
  jsonSize: number,
  options: { escapeSlashes?: boolean; keyOrder?: Record<string, string[]> } = {},
): Uint8Array {
  let text = stringifyOrdered(metadata, options.keyOrder);
  if (options.escapeSlashes) text = text.replace(/\//g, '\\/');
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length >= jsonSize) {
    throw new CorruptHeaderError(`LUKS2 JSON metadata (${bytes.length} bytes) does not fit the ${jsonSize}-byte JSON area.`);
  }
  const out = new Uint8Array(jsonSize);
  out.set(bytes);
  return out;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const DECIMAL_U64 = /^(0|[1-9][0-9]{0,19})$/;

/** Reads a JSON decimal-string u64 (spec 3: offsets and sizes are strings). Throws on anything else. */
export function u64(value: unknown, what: string): number {
  if (typeof value !== 'string' || !DECIMAL_U64.test(value)) throw new CorruptHeaderError(`LUKS2 ${what} is not a decimal string.`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new CorruptHeaderError(`LUKS2 ${what} ${value} is out of range.`);
  return n;
}

function int(value: unknown, what: string, min = 0, max = 0x7fffffff): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new CorruptHeaderError(`LUKS2 ${what} must be an integer in ${min}..${max}.`);
  }
  return value;
}

function str(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new CorruptHeaderError(`LUKS2 ${what} must be a non-empty string.`);
  return value;
}

function obj(value: unknown, what: string): Record<string, unknown> {
  if (!isObject(value)) throw new CorruptHeaderError(`LUKS2 ${what} must be an object.`);
  return value;
}

function strArray(value: unknown, what: string): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new CorruptHeaderError(`LUKS2 ${what} must be an array of strings.`);
  }
  return value as string[];
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Decodes standard padded base64, throwing `CorruptHeaderError` for anything else (Buffer would be lenient). */
export function base64(value: unknown, what: string): Uint8Array {
  if (typeof value !== 'string' || !BASE64.test(value)) throw new CorruptHeaderError(`LUKS2 ${what} is not valid base64.`);
  return new Uint8Array(Buffer.from(value, 'base64'));
}

function ids(o: Record<string, unknown>, what: string, max: number): string[] {
  const keys = Object.keys(o);
  for (const k of keys) {
    if (!/^(0|[1-9][0-9]*)$/.test(k) || Number(k) >= max) throw new CorruptHeaderError(`LUKS2 ${what} id '${k}' is invalid.`);
  }
  return keys;
}

export interface Luks2ValidateOptions {
  /** hdr_size of the binary header this JSON came with. */
  hdrSize: number;
  /** Data device size in bytes, to reject a segment starting past its end. */
  dataDeviceSize?: number;
}

/**
 * Validates the metadata as cryptsetup's LUKS2_hdr_validate does: required sections, ids and
 * limits, decimal-string sizes, keyslot areas inside [2*hdr_size, 2*hdr_size + keyslots_size)
 * and non-overlapping, 4000 AF stripes, KDF parameters and base64 salts, segments, digests and
 * tokens that reference existing objects, config sizes. Throws `CorruptHeaderError`.
 */
export function validateLuks2Metadata(m: Luks2Metadata, options: Luks2ValidateOptions): void {
  for (const section of ['keyslots', 'tokens', 'segments', 'digests', 'config']) obj(m[section], `'${section}' section`);
  const config = m.config;
  const jsonSize = u64(config.json_size, 'config.json_size');
  if (jsonSize !== options.hdrSize - 4096) throw new CorruptHeaderError(`LUKS2 json_size ${jsonSize} does not match hdr_size ${options.hdrSize}.`);
  const keyslotsSize = u64(config.keyslots_size, 'config.keyslots_size');
  if (keyslotsSize % 4096 !== 0 || keyslotsSize > LUKS2_MAX_KEYSLOTS_SIZE) {
    throw new CorruptHeaderError(`LUKS2 keyslots_size ${keyslotsSize} is not a multiple of 4096 up to 128 MiB.`);
  }
  if (config.flags !== undefined) strArray(config.flags, 'config.flags');
  if (config.requirements !== undefined) {
    const req = obj(config.requirements, 'config.requirements');
    if (req.mandatory !== undefined) strArray(req.mandatory, 'config.requirements.mandatory');
  }
  const areaStart = 2 * options.hdrSize;
  const areaEnd = areaStart + keyslotsSize;

  const keyslotIds = ids(m.keyslots, 'keyslot', LUKS2_LIMITS.keyslots);
  const areas: Array<[string, number, number]> = [];
  for (const id of keyslotIds) {
    const ks = obj(m.keyslots[id], `keyslot ${id}`) as Luks2Keyslot;
    const type = str(ks.type, `keyslot ${id} type`);
    int(ks.key_size, `keyslot ${id} key_size`, 0, 1024);
    if (ks.priority !== undefined) int(ks.priority, `keyslot ${id} priority`, 0, 2);
    const area = obj(ks.area, `keyslot ${id} area`);
    str(area.type, `keyslot ${id} area type`);
    const offset = u64(area.offset, `keyslot ${id} area offset`);
    const size = u64(area.size, `keyslot ${id} area size`);
    if (area.type === 'raw') {
      str(area.encryption, `keyslot ${id} area encryption`);
      int(area.key_size, `keyslot ${id} area key_size`, 1, 1024);
    }
    if (type === 'luks2') {
      int(ks.key_size, `keyslot ${id} key_size`, 1, 1024);
      const af = obj(ks.af, `keyslot ${id} af`);
      if (af.type !== 'luks1') throw new CorruptHeaderError(`LUKS2 keyslot ${id} af type must be luks1.`);
      if (af.stripes !== LUKS2_STRIPES) throw new CorruptHeaderError(`LUKS2 keyslot ${id} af stripes must be 4000.`);
      str(af.hash, `keyslot ${id} af hash`);
      const kdf = obj(ks.kdf, `keyslot ${id} kdf`);
      const kdfType = str(kdf.type, `keyslot ${id} kdf type`);
      if (kdfType === 'pbkdf2') {
        str(kdf.hash, `keyslot ${id} kdf hash`);
        int(kdf.iterations, `keyslot ${id} kdf iterations`, 1, 0xffffffff);
      } else {
        int(kdf.time, `keyslot ${id} kdf time`, 1, 0xffffffff);
        int(kdf.memory, `keyslot ${id} kdf memory`, 1, 0xffffffff);
        int(kdf.cpus, `keyslot ${id} kdf cpus`, 1, 0xffffff);
      }
      base64(kdf.salt, `keyslot ${id} kdf salt`);
      if (area.type !== 'raw') throw new CorruptHeaderError(`LUKS2 keyslot ${id} area type must be raw.`);
      if (size < Math.ceil((ks.key_size * LUKS2_STRIPES) / 512) * 512) {
        throw new CorruptHeaderError(`LUKS2 keyslot ${id} area is too small for its key material.`);
      }
    }
    if (size > 0) {
      if (offset < areaStart || offset + size > areaEnd) {
        throw new CorruptHeaderError(`LUKS2 keyslot ${id} area ${offset}+${size} lies outside the keyslots area ${areaStart}..${areaEnd}.`);
      }
      for (const [other, s, e] of areas) {
        if (offset < e && s < offset + size) throw new CorruptHeaderError(`LUKS2 keyslot areas ${other} and ${id} overlap.`);
      }
      areas.push([id, offset, offset + size]);
    }
  }

  const segmentIds = ids(m.segments, 'segment', LUKS2_LIMITS.segments);
  let firstDataOffset: number | undefined;
  const segs: Array<[string, number, number]> = [];
  for (const id of segmentIds) {
    const seg = obj(m.segments[id], `segment ${id}`) as Luks2Segment;
    str(seg.type, `segment ${id} type`);
    const offset = u64(seg.offset, `segment ${id} offset`);
    const dynamic = seg.size === 'dynamic';
    const size = dynamic ? Number.MAX_SAFE_INTEGER - offset : u64(seg.size, `segment ${id} size`);
    if (seg.flags !== undefined) strArray(seg.flags, `segment ${id} flags`);
    if (seg.type === 'crypt') {
      u64(seg.iv_tweak, `segment ${id} iv_tweak`);
      str(seg.encryption, `segment ${id} encryption`);
      const ss = int(seg.sector_size, `segment ${id} sector_size`, 512, 4096);
      if ((ss & (ss - 1)) !== 0) throw new CorruptHeaderError(`LUKS2 segment ${id} sector_size ${ss} is not a power of two.`);
      if (offset % ss !== 0) throw new CorruptHeaderError(`LUKS2 segment ${id} offset is not aligned to its sector size.`);
      if (!dynamic && size % ss !== 0) throw new CorruptHeaderError(`LUKS2 segment ${id} size is not a multiple of its sector size.`);
    }
    if (!seg.flags?.some((f) => f.startsWith('backup-'))) {
      for (const [other, s, e] of segs) {
        if (offset < e && s < offset + size) throw new CorruptHeaderError(`LUKS2 segments ${other} and ${id} overlap.`);
      }
      segs.push([id, offset, offset + size]);
      if (firstDataOffset === undefined || offset < firstDataOffset) firstDataOffset = offset;
    }
    if (options.dataDeviceSize !== undefined && offset > options.dataDeviceSize) {
      throw new CorruptHeaderError(`LUKS2 segment ${id} starts at ${offset}, past the end of the ${options.dataDeviceSize}-byte device.`);
    }
  }
  // The metadata and keyslots areas must end before the data (offset 0 means a detached header).
  if (firstDataOffset !== undefined && firstDataOffset !== 0 && areaEnd > firstDataOffset) {
    throw new CorruptHeaderError(`LUKS2 keyslots area (ends at ${areaEnd}) overlaps the data segment at ${firstDataOffset}.`);
  }

  const digestIds = ids(m.digests, 'digest', LUKS2_LIMITS.digests);
  if (digestIds.length > LUKS2_LIMITS.digests) throw new CorruptHeaderError('LUKS2 has too many digests.');
  const covered = new Set<string>();
  for (const id of digestIds) {
    const d = obj(m.digests[id], `digest ${id}`) as Luks2Digest;
    const type = str(d.type, `digest ${id} type`);
    for (const k of strArray(d.keyslots, `digest ${id} keyslots`)) {
      if (!(k in m.keyslots)) throw new CorruptHeaderError(`LUKS2 digest ${id} references missing keyslot ${k}.`);
      if (covered.has(k)) throw new CorruptHeaderError(`LUKS2 keyslot ${k} is assigned to more than one digest.`);
      covered.add(k);
    }
    for (const s of strArray(d.segments, `digest ${id} segments`)) {
      if (!(s in m.segments)) throw new CorruptHeaderError(`LUKS2 digest ${id} references missing segment ${s}.`);
    }
    if (type === 'pbkdf2') {
      str(d.hash, `digest ${id} hash`);
      int(d.iterations, `digest ${id} iterations`, 1, 0xffffffff);
      base64(d.salt, `digest ${id} salt`);
      const digest = base64(d.digest, `digest ${id} digest`);
      if (digest.length === 0 || digest.length > 64) throw new CorruptHeaderError(`LUKS2 digest ${id} has a bad length.`);
    }
  }
  for (const id of keyslotIds) {
    if (m.keyslots[id]!.type === 'luks2' && !covered.has(id)) throw new CorruptHeaderError(`LUKS2 keyslot ${id} is not assigned to any digest.`);
  }

  const tokenIds = ids(m.tokens, 'token', LUKS2_LIMITS.tokens);
  for (const id of tokenIds) {
    const t = obj(m.tokens[id], `token ${id}`);
    str(t.type, `token ${id} type`);
    for (const k of strArray(t.keyslots, `token ${id} keyslots`)) {
      if (!(k in m.keyslots)) throw new CorruptHeaderError(`LUKS2 token ${id} references missing keyslot ${k}.`);
    }
  }
}

/** Unknown entries of config.requirements.mandatory (brickcrypt knows none: any makes the volume read-only). */
export function mandatoryRequirements(m: Luks2Metadata): string[] {
  const req = m.config.requirements;
  return isObject(req) && Array.isArray(req.mandatory) ? req.mandatory.filter((r): r is string => typeof r === 'string') : [];
}
