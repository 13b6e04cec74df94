/**
 * In-place re-key of a LUKS1 volume (new volume key, optionally a new cipher or key size; the
 * sector size stays 512). cryptsetup's own LUKS1 reencryption (src/utils_reencrypt_luks1.c) needs
 * device-mapper; cryptsetup 2.x documents re-keying LUKS1 by converting it to LUKS2 first, and so
 * does this: the header is converted in place to LUKS2 (convert-header.ts), the LUKS2 engine
 * (engine.ts) re-keys it, and the header is converted back to LUKS1.
 *
 * Every step is recorded before it is taken, so a crash anywhere resumes and ends as LUKS1:
 *  - while LUKS1: a marker in the unused part of the LUKS1 header page (one 512-byte sector at
 *    byte 1024, after the 592-byte header, before the keyslots at 4096; cryptsetup ignores it),
 *    phase `up` (converting to LUKS2; the original keyslot offsets) or `down` (converting back;
 *    the final keyslot offsets);
 *  - while LUKS2: a token of type `brickcrypt-reencrypt-luks1` with the salt of the LUKS1 volume
 *    key digest (still present: not re-keyed yet) and the options asked for.
 * The steps: marker `up` (one sector) -> LUKS2 with the token (the conversion's crash-safe
 * writes; the marker stays until the LUKS2 primary header overwrites it) -> the engine's
 * reencryption (its own crash-safe state) -> keyslots renumbered to their LUKS1 numbers and the
 * digest to id 0 (one header write) -> LUKS1 with marker `down` (written with the conversion's
 * first write) -> keyslot moves and the wipe of everything but the keyslots -> marker cleared
 * (one sector).
 */
import { createHash } from 'node:crypto';
import type { BlockDevice } from '../../block-device.js';
import {
  ConversionRefusedError,
  CorruptHeaderError,
  InvalidArgumentError,
  KeyslotUnavailableError,
  Luks1ReencryptRefusedError,
  ReadOnlyDeviceError,
  UnknownFormatError,
  WrongPassphraseError,
} from '../../errors.js';
import { cipherSpecStrings, parseCipherSpec, parseEncryption, validateKeyBytes } from '../../crypto/cipher-spec.js';
import { LUKS1_HEADER_SIZE, LUKS1_KEY_ENABLED, LUKS1_MAX_KEY_BYTES, LUKS1_NUM_KEYSLOTS, LUKS1_STRIPES, decodeLuks1Header, validateLuks1Header, type Luks1Header } from '../../formats/luks1/header.js';
import { u64, type Luks2Keyslot, type Luks2Metadata, type Luks2Token } from '../../formats/luks2/metadata.js';
import { decodeReencryptState } from '../../formats/luks2/reencrypt-state.js';
import { detectFormat } from '../../images/detect.js';
import { checkLuks2ToLuks1, convertLuksHeader, finishLuks1KeyslotMoves, previewLuks1ToLuks2 } from '../convert-header.js';
import { allocateLuks2Area, openLuks1Keyslot } from '../keyslot-store.js';
import { defaultKeyBytes, luks2KeyslotAreaBytes } from '../layout.js';
import { readLuks2Headers, writeLuks2Headers } from '../luks2-io.js';
import { openKeys } from './keys.js';
import { largestFreeArea, reencryptLuks2, type ReencryptOptions, type ReencryptReport, type Resilience } from './engine.js';

/** Type of the LUKS2 token that records a LUKS1 re-key in its LUKS2 phase. */
export const LUKS1_REENCRYPT_TOKEN = 'brickcrypt-reencrypt-luks1';
/** Where the LUKS1 marker lies: the header page's third sector (the header ends at byte 592). */
export const LUKS1_MARKER_OFFSET = 1024;
const MARKER_SIZE = 512;
const MARKER_MAGIC = 'brickcrypt-reencrypt-luks1';
/** hdr_size of the LUKS2 header a conversion makes (convert-header.ts). */
const HDR_SIZE = 16384;
const CHECKSUM_BLOCK = 4096;

/** The options a re-key was started with, kept in the marker and the token for the resume. */
interface Requested {
  /** LUKS1 keyslot numbers whose passphrases get a keyslot for the new key. */
  keyslots: number[];
  cipher?: string;
  keySizeBits?: number;
  resilience?: Resilience;
}

/**
 * `down` with `encrypt`: the last phase of an in-place encryption to LUKS1 (encrypt-luks1.ts),
 * finished the same way (keyslot moves, then the marker cleared).
 */
export type Luks1Marker = ({ phase: 'up'; requested: Requested } | { phase: 'down'; encrypt?: true }) & { uuid: string; offsets: number[] };

/** Encodes a marker sector: JSON, zero padding, and the SHA-256 of the rest in the last 32 bytes. */
export function encodeLuks1Marker(m: Luks1Marker): Uint8Array {
  const out = new Uint8Array(MARKER_SIZE);
  const json = Buffer.from(JSON.stringify({ magic: MARKER_MAGIC, ...m }), 'utf8');
  if (json.length > MARKER_SIZE - 32) throw new InvalidArgumentError('The LUKS1 reencryption marker does not fit its sector.');
  out.set(json);
  out.set(createHash('sha256').update(out.subarray(0, MARKER_SIZE - 32)).digest(), MARKER_SIZE - 32);
  return out;
}

/** The marker of a LUKS1 header page, or undefined (none, or not intact). */
export async function readLuks1Marker(device: BlockDevice): Promise<Luks1Marker | undefined> {
  if (device.size < LUKS1_MARKER_OFFSET + MARKER_SIZE) return undefined;
  const b = new Uint8Array(MARKER_SIZE);
  await device.read(b, LUKS1_MARKER_OFFSET);
  const sum = createHash('sha256').update(b.subarray(0, MARKER_SIZE - 32)).digest();
  if (!sum.equals(b.subarray(MARKER_SIZE - 32))) return undefined;
  const end = b.indexOf(0);
  try {
    const o = JSON.parse(Buffer.from(b.subarray(0, end < 0 ? MARKER_SIZE - 32 : end)).toString('utf8')) as Luks1Marker & { magic?: string };
    if (o.magic !== MARKER_MAGIC || (o.phase !== 'up' && o.phase !== 'down') || !Array.isArray(o.offsets) || o.offsets.length !== LUKS1_NUM_KEYSLOTS) return undefined;
    const { magic: _m, ...marker } = o;
    return marker;
  } catch {
    return undefined;
  }
}

async function writeMarker(device: BlockDevice, bytes: Uint8Array): Promise<void> {
  await device.write(bytes, LUKS1_MARKER_OFFSET);
  await device.flush();
}

/** Zeros the marker sector (the last write of a finished operation). */
export async function clearLuks1Marker(device: BlockDevice): Promise<void> {
  await writeMarker(device, new Uint8Array(MARKER_SIZE));
}

function tokenOf(meta: Luks2Metadata): [string, Luks2Token] | undefined {
  return Object.entries(meta.tokens).find(([, t]) => t.type === LUKS1_REENCRYPT_TOKEN);
}

/** True when `device` is a LUKS1 re-key in progress: LUKS1 with a marker, or LUKS2 with the token. */
export async function isLuks1Reencryption(device: BlockDevice): Promise<boolean> {
  const format = await detectFormat(device);
  if (format === 'luks1') return (await readLuks1Marker(device)) !== undefined;
  if (format !== 'luks2') return false;
  const { state } = await readLuks2Headers(device, device.size);
  return tokenOf(state.metadata) !== undefined;
}

function readLuks1(bytes: Uint8Array, device: BlockDevice): Luks1Header {
  const hdr = decodeLuks1Header(bytes);
  validateLuks1Header(hdr, { headerDeviceSize: device.size, dataDeviceSize: device.size });
  return hdr;
}

/** Options given now, checked against those recorded when the re-key started. */
function merge(recorded: Requested, options: ReencryptOptions): Requested {
  const clash = (name: string, given: unknown, kept: unknown) => {
    if (given !== undefined && given !== kept) throw new InvalidArgumentError(`The recorded LUKS1 re-key uses ${name} ${String(kept ?? 'unchanged')}; resume it without a different --${name}.`);
  };
  clash('cipher', options.cipher, recorded.cipher);
  clash('key-size', options.keySizeBits, recorded.keySizeBits);
  clash('resilience', options.resilience, recorded.resilience ?? 'checksum');
  if (options.keyslot !== undefined && !(recorded.keyslots.length === 1 && recorded.keyslots[0] === options.keyslot)) {
    throw new InvalidArgumentError(`The recorded LUKS1 re-key keeps keyslot${recorded.keyslots.length === 1 ? '' : 's'} ${recorded.keyslots.join(', ')}; resume it without a different --key-slot.`);
  }
  return recorded;
}

function refusedByOptions(options: ReencryptOptions): void {
  if (options.headerDevice) throw new Luks1ReencryptRefusedError('detached-header', 'Re-key of a LUKS1 volume with a detached header is not supported.');
  if (options.sectorSize !== undefined && options.sectorSize !== 512) throw new Luks1ReencryptRefusedError('options', `LUKS1 has 512-byte sectors only; --sector-size ${options.sectorSize} is not possible.`);
  if (options.pbkdf !== undefined && options.pbkdf !== 'pbkdf2') throw new Luks1ReencryptRefusedError('options', `LUKS1 keyslots use pbkdf2 only, not ${options.pbkdf}.`);
  if (options.hash !== undefined && options.hash.toLowerCase() !== 'sha256') {
    throw new Luks1ReencryptRefusedError('options', `The re-keyed LUKS1 header hashes with sha256 (the LUKS2 volume-key digest's hash); --hash ${options.hash} is not possible.`);
  }
}

/** A LUKS1-compatible LUKS2 keyslot as the engine seals it (for the dry run; no material). */
export function simulatedKeyslot(encryption: string, keyBytes: number, area: { offset: number; size: number }): Luks2Keyslot {
  const salt = Buffer.alloc(32).toString('base64');
  return {
    type: 'luks2',
    key_size: keyBytes,
    kdf: { type: 'pbkdf2', hash: 'sha256', iterations: 1000, salt },
    af: { type: 'luks1', stripes: LUKS1_STRIPES, hash: 'sha256' },
    area: { type: 'raw', encryption: cipherSpecStrings(parseEncryption(encryption, keyBytes)).encryption, key_size: keyBytes, offset: String(area.offset), size: String(area.size) },
  } as Luks2Keyslot;
}

function firstFreeId(used: Iterable<string>): string {
  const set = new Set(used);
  let i = 0;
  while (set.has(String(i))) i++;
  return String(i);
}

/**
 * Checks, writing nothing, that the whole re-key fits: the LUKS2 header made of this LUKS1 one,
 * the engine's new keyslots and resilience area in its keyslots area, and the conversion back to
 * LUKS1 of the result.
 */
async function dryRun(device: BlockDevice, hdr: Luks1Header, req: Requested, token: Luks2Token, options: ReencryptOptions): Promise<void> {
  const payload = hdr.payloadOffset * 512;
  const dataSize = device.size - payload;
  if (dataSize <= 0 || dataSize % 512 !== 0) throw new Luks1ReencryptRefusedError('layout', `The data area (${dataSize} bytes) is not a positive multiple of 512 bytes.`);
  const resilience = req.resilience ?? 'checksum';
  if (resilience === 'checksum' && dataSize % CHECKSUM_BLOCK !== 0) {
    throw new Luks1ReencryptRefusedError('layout', `Checksum resilience needs a data area that is a multiple of ${CHECKSUM_BLOCK} bytes (it is ${dataSize}); use --resilience journal.`);
  }
  if (options.hotzoneSize !== undefined && (!Number.isInteger(options.hotzoneSize) || options.hotzoneSize < 512 || options.hotzoneSize % 512 !== 0)) {
    throw new InvalidArgumentError('The hot zone size must be a positive multiple of 512 bytes.');
  }
  const encryption = req.cipher ?? `${hdr.cipherName}-${hdr.cipherMode}`;
  const spec = parseEncryption(encryption);
  const keyBytes = req.keySizeBits !== undefined ? req.keySizeBits / 8 : req.cipher !== undefined ? defaultKeyBytes(spec) : hdr.keyBytes;
  if (!Number.isInteger(keyBytes)) throw new InvalidArgumentError(`Key size ${req.keySizeBits} is not a whole number of bytes.`);
  validateKeyBytes(spec, keyBytes);
  if (keyBytes > LUKS1_MAX_KEY_BYTES) throw new Luks1ReencryptRefusedError('options', `LUKS1 holds keys of up to ${LUKS1_MAX_KEY_BYTES * 8} bits.`);

  let meta: Luks2Metadata;
  try {
    meta = await previewLuks1ToLuks2(device, { tokens: { '0': token } });
  } catch (err) {
    if (err instanceof ConversionRefusedError) {
      throw new Luks1ReencryptRefusedError(err.reason === 'no-space' ? 'no-space' : 'layout', `A LUKS1 re-key runs through a temporary LUKS2 header, and this volume cannot be converted to LUKS2: ${err.message}`, { cause: err });
    }
    throw err;
  }
  const noSpace = (what: string) =>
    new Luks1ReencryptRefusedError(
      'no-space',
      `The LUKS1 data offset (${payload} bytes) leaves too little room for the re-key: the temporary LUKS2 keyslots area (${u64(meta.config.keyslots_size, 'keyslots_size')} bytes) must hold the old keyslots, one new keyslot per kept one and ${what}. Keep fewer keyslots (--key-slot, or remove some first).`,
    );
  const areas: Array<{ offset: number; size: number }> = [];
  for (const _slot of req.keyslots) {
    let area: { offset: number; size: number };
    try {
      area = allocateLuks2Area(meta, HDR_SIZE, luks2KeyslotAreaBytes(keyBytes));
    } catch (err) {
      if (err instanceof KeyslotUnavailableError) throw noSpace('nothing else');
      throw err;
    }
    meta.keyslots[firstFreeId(Object.keys(meta.keyslots))] = simulatedKeyslot(encryption, keyBytes, area);
    areas.push(area);
  }
  if (largestFreeArea(meta, HDR_SIZE).size === 0) throw noSpace('a resilience area');
  // The end state of the engine, renumbered as reencryptLuks1 does, then converted back.
  const final: Luks2Metadata = structuredClone(meta);
  final.keyslots = {};
  req.keyslots.forEach((slot, i) => (final.keyslots[String(slot)] = simulatedKeyslot(encryption, keyBytes, areas[i]!)));
  final.digests = { '0': { type: 'pbkdf2', keyslots: req.keyslots.map(String), segments: ['0'], hash: 'sha256', iterations: 1000, salt: Buffer.alloc(32).toString('base64'), digest: Buffer.alloc(32).toString('base64') } };
  final.segments = { '0': { ...meta.segments['0']!, encryption } };
  final.tokens = {};
  try {
    checkLuks2ToLuks1(final, HDR_SIZE, device.size);
  } catch (err) {
    if (err instanceof ConversionRefusedError) {
      throw new Luks1ReencryptRefusedError(err.reason === 'no-keyslot-area' || err.reason === 'no-room-for-safe-move' ? 'no-space' : 'layout', `The re-keyed volume could not be converted back to LUKS1: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/**
 * Opens the LUKS1 keyslots to keep (`only`, else --key-slot, else all) with the passphrases,
 * before anything is written; with `any`, one opened keyslot is enough.
 */
async function checkPassphrases(device: BlockDevice, hdr: Luks1Header, options: ReencryptOptions, only?: number[], any = false): Promise<number[]> {
  const active = hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_ENABLED ? [i] : []));
  let wanted = only?.filter((s) => active.includes(s)) ?? active;
  if (only === undefined && options.keyslot !== undefined) {
    if (!active.includes(options.keyslot)) throw new InvalidArgumentError(`Keyslot ${options.keyslot} does not hold the volume key.`);
    wanted = [options.keyslot];
  }
  const spec = parseCipherSpec(hdr.cipherName, hdr.cipherMode, hdr.keyBytes);
  const opened: number[] = [];
  for (const slot of wanted) {
    for (const p of options.passphrases) {
      const key = await openLuks1Keyslot(device, hdr, spec, slot, p);
      if (!key) continue;
      key.wipe();
      opened.push(slot);
      break;
    }
    if (any && opened.length > 0) return opened;
  }
  if (opened.length === 0) throw new WrongPassphraseError();
  const missing = wanted.filter((s) => !opened.includes(s));
  if (missing.length > 0) {
    throw new InvalidArgumentError(`The passphrase does not open keyslot${missing.length > 1 ? 's' : ''} ${missing.join(', ')}: give --key-slot to keep only the keyslot it opens (the others are removed at the end), or remove them first.`);
  }
  return wanted;
}

function requestedOfToken(t: Luks2Token): Requested {
  const r = t as Luks2Token & { luks1_keyslots?: unknown; cipher?: unknown; key_size?: unknown; resilience?: unknown };
  const keyslots = Array.isArray(r.luks1_keyslots) ? r.luks1_keyslots.map(Number).filter((n) => Number.isInteger(n)) : [];
  return {
    keyslots,
    ...(typeof r.cipher === 'string' ? { cipher: r.cipher } : {}),
    ...(typeof r.key_size === 'number' ? { keySizeBits: r.key_size } : {}),
    ...(r.resilience === 'checksum' || r.resilience === 'journal' || r.resilience === 'none' ? { resilience: r.resilience } : {}),
  };
}

function tokenFor(hdr: Luks1Header, req: Requested): Luks2Token {
  return {
    type: LUKS1_REENCRYPT_TOKEN,
    keyslots: [],
    luks1_digest_salt: Buffer.from(hdr.mkDigestSalt).toString('base64'),
    luks1_keyslots: req.keyslots.map(String),
    ...(req.cipher !== undefined ? { cipher: req.cipher } : {}),
    ...(req.keySizeBits !== undefined ? { key_size: req.keySizeBits } : {}),
    ...(req.resilience !== undefined ? { resilience: req.resilience } : {}),
  };
}

/**
 * The new keyslots get the numbers of the LUKS1 keyslots they replace (the engine gave them free
 * numbers, in the same order) and the digest id 0, as LUKS1 conversion needs: one header write,
 * or none when nothing changes.
 */
async function renumber(device: BlockDevice, want: number[]): Promise<void> {
  const { state: st } = await readLuks2Headers(device, device.size);
  const meta = structuredClone(st.metadata);
  const digestIds = Object.keys(meta.digests);
  if (digestIds.length !== 1) return; // convert-header refuses it with its own reason
  const did = digestIds[0]!;
  const digest = meta.digests[did]!;
  const current = digest.keyslots.map(Number).sort((a, b) => a - b);
  const others = Object.keys(meta.keyslots).filter((k) => !digest.keyslots.includes(k));
  const map = new Map<string, string>();
  if (current.length === want.length && others.every((k) => !want.map(String).includes(k))) current.forEach((c, i) => map.set(String(c), String(want[i])));
  const changed = did !== '0' || [...map].some(([a, b]) => a !== b);
  if (!changed) return;
  const keyslots: Record<string, Luks2Keyslot> = {};
  for (const [id, ks] of Object.entries(meta.keyslots)) keyslots[map.get(id) ?? id] = ks;
  meta.keyslots = keyslots;
  digest.keyslots = digest.keyslots.map((k) => map.get(k) ?? k).sort((a, b) => Number(a) - Number(b));
  for (const t of Object.values(meta.tokens)) t.keyslots = t.keyslots.map((k) => map.get(k) ?? k);
  meta.digests = { '0': digest };
  st.metadata = meta;
  await writeLuks2Headers(device, st);
}

function finishedReport(hdr: Luks1Header, device: BlockDevice, engine: ReencryptReport | undefined, started: boolean, t0: number): ReencryptReport {
  return {
    started,
    recovered: engine?.recovered ?? false,
    finished: true,
    bytes: engine?.bytes ?? 0,
    total: device.size - hdr.payloadOffset * 512,
    resilience: engine?.resilience ?? 'checksum',
    keyslots: hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_ENABLED ? [i] : [])),
    encryption: `${hdr.cipherName}-${hdr.cipherMode}`,
    sectorSize: 512,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Re-keys (or resumes re-keying) the LUKS1 volume on `device` in place; also resumes one left in
 * its LUKS2 phase (the token) by a crash, a signal or `--init-only`. Ends as LUKS1.
 * @throws Luks1ReencryptRefusedError (nothing written) when the volume or the options do not fit
 */
export async function reencryptLuks1(device: BlockDevice, options: ReencryptOptions): Promise<ReencryptReport> {
  const t0 = performance.now();
  if (device.readOnly) throw new ReadOnlyDeviceError('Reencryption needs the volume open for writing.');
  if (options.passphrases.length === 0) throw new InvalidArgumentError('Reencryption needs a passphrase.');
  refusedByOptions(options);
  let started = false;
  let engine: ReencryptReport | undefined;
  for (let step = 0; step < 8; step++) {
    const format = await detectFormat(device);
    if (format === 'luks1') {
      const head = new Uint8Array(LUKS1_HEADER_SIZE);
      await device.read(head, 0);
      const hdr = readLuks1(head, device);
      const marker = await readLuks1Marker(device);
      if (marker && marker.uuid !== hdr.uuid) throw new CorruptHeaderError('The LUKS1 reencryption marker belongs to another volume (UUID differs).');
      // A resume writes nothing for a passphrase that opens no keyslot.
      if (marker && !started) await checkPassphrases(device, hdr, options, marker.phase === 'up' ? marker.requested.keyslots : undefined, true);
      if (!marker) {
        if (engine) throw new UnknownFormatError('The LUKS1 header lost its reencryption marker.');
        if (options.resumeOnly) throw new InvalidArgumentError('No reencryption is recorded on this volume: nothing to resume.');
        const wanted = await checkPassphrases(device, hdr, options);
        const req: Requested = {
          keyslots: wanted,
          ...(options.cipher !== undefined ? { cipher: options.cipher } : {}),
          ...(options.keySizeBits !== undefined ? { keySizeBits: options.keySizeBits } : {}),
          ...(options.resilience !== undefined ? { resilience: options.resilience } : {}),
        };
        await dryRun(device, hdr, req, tokenFor(hdr, req), options);
        // The one write that records the re-key.
        await writeMarker(device, encodeLuks1Marker({ phase: 'up', uuid: hdr.uuid, offsets: hdr.keyslots.map((k) => k.keyMaterialOffset), requested: req }));
        started = true;
        continue;
      }
      if (marker.phase === 'up') {
        const req = started ? marker.requested : merge(marker.requested, options);
        await convertLuksHeader(device, { type: 'luks2', originalOffsets: marker.offsets, tokens: { '0': tokenFor(hdr, req) } });
        continue;
      }
      await finishLuks1KeyslotMoves(device, marker.offsets);
      await writeMarker(device, new Uint8Array(MARKER_SIZE));
      return finishedReport(readLuks1(head, device), device, engine, started, t0);
    }
    if (format !== 'luks2') throw new UnknownFormatError('The volume is neither LUKS1 nor LUKS2.');
    const { state: st } = await readLuks2Headers(device, device.size);
    const meta = st.metadata;
    const token = tokenOf(meta);
    if (!token) throw new InvalidArgumentError('This LUKS2 volume records no LUKS1 re-key.');
    const req = started || engine ? requestedOfToken(token[1]) : merge(requestedOfToken(token[1]), options);
    const oldSalt = (token[1] as { luks1_digest_salt?: unknown }).luks1_digest_salt;
    const notRekeyed = Object.values(meta.digests).some((d) => d.salt === oldSalt);
    if (decodeReencryptState(meta) || notRekeyed) {
      if (engine) throw new InvalidArgumentError('The LUKS2 reencryption did not finish.');
      const recorded = decodeReencryptState(meta) !== undefined;
      const { resumeOnly: _r, cipher: _c, keySizeBits: _k, keyslot: _s, resilience: _res, sectorSize: _ss, ...rest } = options;
      engine = await reencryptLuks2(device, {
        ...rest,
        pbkdf: 'pbkdf2',
        hash: 'sha256',
        ...(recorded
          ? {}
          : {
              ...(req.cipher !== undefined ? { cipher: req.cipher } : {}),
              ...(req.keySizeBits !== undefined ? { keySizeBits: req.keySizeBits } : {}),
              ...(req.resilience !== undefined ? { resilience: req.resilience } : {}),
              ...(req.keyslots.length === 1 ? { keyslot: req.keyslots[0]! } : {}),
            }),
      });
      if (!engine.finished) return { ...engine, started: started || engine.started };
      continue;
    }
    if (!engine && !started) {
      const { keys } = await openKeys(device, meta, options.passphrases, { stopWhen: (k) => k.size > 0 });
      const none = keys.size === 0;
      for (const k of keys.values()) k.wipe();
      if (none) throw new WrongPassphraseError();
    }
    await renumber(device, req.keyslots);
    try {
      await convertLuksHeader(device, {
        type: 'luks1',
        dropTokenType: LUKS1_REENCRYPT_TOKEN,
        luks1Page: (final) => ({ offset: LUKS1_MARKER_OFFSET, bytes: encodeLuks1Marker({ phase: 'down', uuid: final.uuid, offsets: final.keyslots.map((k) => k.keyMaterialOffset) }) }),
      });
    } catch (err) {
      if (err instanceof ConversionRefusedError) {
        throw new Luks1ReencryptRefusedError('layout', `The volume is re-keyed but stays LUKS2: ${err.message}`, { cause: err });
      }
      throw err;
    }
  }
  throw new InvalidArgumentError('The LUKS1 re-key made no progress.');
}
