/**
 * In-place encryption of plain data into LUKS1 (`reencrypt --encrypt --type luks1`). cryptsetup
 * does it with its legacy LUKS1 reencryption (src/utils_reencrypt_luks1.c, device-mapper and a
 * log file); here, as for the LUKS1 re-key (luks1.ts), the work is done in LUKS2 and the header
 * converted at the end: the LUKS2 encryption (encrypt.ts, datashift, or the re-key engine with a
 * detached header) runs with a layout convert-header.ts turns into LUKS1 without moving any
 * data — the data offset (= data shift) is LUKS1's default payload offset (cryptsetup's, 1 or
 * 2 MiB), 512-byte sectors, one pbkdf2/sha256 keyslot at the start of the keyslots area, whose
 * 8 LUKS1-sized areas fill it — then the finished LUKS2 header is converted down.
 *
 * Every phase is recorded before it is taken, so a crash at any instant resumes and ends as LUKS1:
 *  - nothing on the device but plaintext (and maybe the header copy in the gap): encrypt.ts's start;
 *  - LUKS2 with a reencryption state and a token of type `brickcrypt-encrypt-luks1` (written with
 *    the very first header): the LUKS2 encryption is resumed, the token kept to the end;
 *  - LUKS2 without state, with the token: converted to LUKS1 (convert-header.ts's crash-safe
 *    writes), whose first write into the LUKS1 header page also puts there the marker of
 *    luks1.ts, phase `down` with `encrypt`;
 *  - LUKS1 with that marker: the keyslot moves are finished and the marker cleared.
 * The token is not a mandatory requirement: cryptsetup may finish the LUKS2 phase (the result is
 * then LUKS2 with the token), and the next brickcrypt run converts it.
 */
import type { BlockDevice } from '../../block-device.js';
import { ConversionRefusedError, CorruptHeaderError, InsufficientSpaceError, InvalidArgumentError, NotImplementedError, UnknownFormatError, UnsupportedError, WrongPassphraseError } from '../../errors.js';
import { cipherSpecStrings, parseEncryption, validateKeyBytes } from '../../crypto/cipher-spec.js';
import { LUKS1_HEADER_SIZE, LUKS1_KEY_ENABLED, LUKS1_MAX_KEY_BYTES, LUKS1_NUM_KEYSLOTS, decodeLuks1Header, validateLuks1Header } from '../../formats/luks1/header.js';
import { LUKS2_BINARY_HEADER_SIZE } from '../../formats/luks2/binary-header.js';
import type { Luks2Metadata, Luks2Token } from '../../formats/luks2/metadata.js';
import { decodeReencryptState } from '../../formats/luks2/reencrypt-state.js';
import { detectFormat } from '../../images/detect.js';
import { checkLuks2ToLuks1, convertLuksHeader, finishLuks1KeyslotMoves } from '../convert-header.js';
import { LUKS2_DEFAULTS, defaultKeyBytes, luks2KeyslotAreaBytes, plannedDataOffset } from '../layout.js';
import { readLuks2Headers, writeLuks2Headers } from '../luks2-io.js';
import { LuksVolume } from '../volume.js';
import { GROWN_TOKEN_TYPE, encryptLuks2, interruptedStartShift, type EncryptOptions, type EncryptReport } from './encrypt.js';
import { LUKS1_MARKER_OFFSET, clearLuks1Marker, encodeLuks1Marker, readLuks1Marker, simulatedKeyslot } from './luks1.js';

/** Type of the LUKS2 token that says the encryption ends as LUKS1. */
export const ENCRYPT_LUKS1_TOKEN = 'brickcrypt-encrypt-luks1';
const HDR_SIZE = LUKS2_DEFAULTS.hdrSize;

const token = (): Luks2Token => ({ type: ENCRYPT_LUKS1_TOKEN, keyslots: [] });

/** True when the header on `header` records an encryption to LUKS1 (any phase after the start). */
export async function luks1EncryptionRecorded(header: BlockDevice, dataSize?: number): Promise<boolean> {
  try {
    const format = await detectFormat(header);
    if (format === 'luks1') {
      const m = await readLuks1Marker(header);
      return m?.phase === 'down' && m.encrypt === true;
    }
    if (format !== 'luks2') return false;
    const { state } = await readLuks2Headers(header, dataSize);
    return Object.values(state.metadata.tokens).some((t) => t.type === ENCRYPT_LUKS1_TOKEN);
  } catch {
    return false;
  }
}

/** Options LUKS1 cannot hold, refused before anything is written. */
function refuseOptions(options: EncryptOptions): void {
  if (options.source !== undefined) throw new NotImplementedError('Converting a plain dm-crypt volume in place to LUKS1 is not built; use --type luks2.');
  if (options.sectorSize !== undefined && options.sectorSize !== 512) throw new InvalidArgumentError(`LUKS1 has 512-byte sectors only; --sector-size ${options.sectorSize} is not possible.`);
  if (options.pbkdf !== undefined && options.pbkdf !== 'pbkdf2') throw new InvalidArgumentError(`LUKS1 keyslots use pbkdf2 only, not ${options.pbkdf}.`);
  if (options.hash !== undefined && options.hash.toLowerCase() !== 'sha256') {
    throw new InvalidArgumentError(`The LUKS1 header hashes with sha256 (the hash of the LUKS2 volume-key digest it is converted from); --hash ${options.hash} is not possible.`);
  }
  if (options.keyslot !== undefined && (options.keyslot < 0 || options.keyslot >= LUKS1_NUM_KEYSLOTS)) throw new InvalidArgumentError(`LUKS1 has keyslots 0..${LUKS1_NUM_KEYSLOTS - 1}, not ${options.keyslot}.`);
  if (options.label !== undefined && options.label !== '') throw new InvalidArgumentError('LUKS1 has no label.');
}

/**
 * Checks, writing nothing, that a new encryption with these options ends in a LUKS1 header:
 * the finished LUKS2 metadata it would leave converts (checkLuks2ToLuks1). Returns the header
 * size (data offset and data shift; with a detached header the header file's size).
 */
function planLuks1(device: BlockDevice, header: BlockDevice | undefined, options: EncryptOptions): number {
  const encryption = options.cipher ?? 'aes-xts-plain64';
  const spec = parseEncryption(encryption);
  const keyBytes = options.keySizeBits !== undefined ? options.keySizeBits / 8 : defaultKeyBytes(spec);
  if (!Number.isInteger(keyBytes)) throw new InvalidArgumentError(`Key size ${options.keySizeBits} is not a whole number of bytes.`);
  validateKeyBytes(spec, keyBytes);
  if (keyBytes > LUKS1_MAX_KEY_BYTES) throw new InvalidArgumentError(`LUKS1 holds keys of up to ${LUKS1_MAX_KEY_BYTES * 8} bits.`);
  const luks1Offset = plannedDataOffset({ type: 'luks1', cipher: encryption, keySizeBits: keyBytes * 8 });
  let shift: number;
  if (header) shift = options.headerSize ?? luks1Offset;
  else if (options.reduceDeviceSize !== undefined) shift = options.reduceDeviceSize / 2;
  else shift = options.headerSize ?? luks1Offset;
  if (!Number.isInteger(shift) || shift % 4096 !== 0) throw new InvalidArgumentError(`The header size ${shift} is not a multiple of 4096 bytes.`);
  // The LUKS2 keyslots area must hold the 8 LUKS1 keyslot areas (the keyslot and 7 free ones).
  const need = 2 * HDR_SIZE + LUKS1_NUM_KEYSLOTS * luks2KeyslotAreaBytes(keyBytes);
  if (shift < need) {
    const what = header ? `a detached LUKS1 header of at least ${need} bytes` : options.reduceDeviceSize !== undefined ? `--reduce-device-size of at least ${2 * Math.ceil(need / MIB) * MIB} bytes (${2 * Math.ceil(need / MIB)} MiB)` : `a header of at least ${need} bytes`;
    throw new InsufficientSpaceError(`LUKS1 with ${keyBytes * 8}-bit keys needs room for 8 keyslots of ${luks2KeyslotAreaBytes(keyBytes)} bytes: give ${what}.`);
  }
  const enc = cipherSpecStrings(parseEncryption(encryption, keyBytes)).encryption;
  const slot = String(options.keyslot ?? 0);
  const final: Luks2Metadata = {
    keyslots: { [slot]: simulatedKeyslot(enc, keyBytes, { offset: 2 * HDR_SIZE, size: luks2KeyslotAreaBytes(keyBytes) }) },
    tokens: {},
    segments: { '0': { type: 'crypt', offset: String(header ? 0 : shift), iv_tweak: '0', size: 'dynamic', encryption: enc, sector_size: 512 } },
    digests: { '0': { type: 'pbkdf2', keyslots: [slot], segments: ['0'], hash: 'sha256', iterations: 1000, salt: Buffer.alloc(32).toString('base64'), digest: Buffer.alloc(32).toString('base64') } },
    config: { json_size: String(HDR_SIZE - LUKS2_BINARY_HEADER_SIZE), keyslots_size: String(shift - 2 * HDR_SIZE) },
  } as Luks2Metadata;
  const grows = !header && options.reduceDeviceSize === undefined;
  const size = header ? Math.max(header.size, shift) : grows ? device.size + shift : device.size;
  try {
    checkLuks2ToLuks1(final, HDR_SIZE, size);
  } catch (err) {
    if (err instanceof ConversionRefusedError) throw new UnsupportedError(`The encrypted volume could not be converted to LUKS1: ${err.message}`);
    throw err;
  }
  return shift;
}

const MIB = 1024 * 1024;

/** Writes nothing for a passphrase that opens no keyslot of the header as it is now. */
async function checkPassphrase(device: BlockDevice, header: BlockDevice | undefined, options: EncryptOptions): Promise<void> {
  const vol = await LuksVolume.open(device, { readOnly: true, ...(header ? { headerDevice: header } : {}) });
  for (const p of options.passphrases) {
    try {
      await vol.testPassphrase(p);
      return;
    } catch (err) {
      if (!(err instanceof WrongPassphraseError)) throw err;
    }
  }
  throw new WrongPassphraseError();
}

/** The report of a run that finished (only) the conversion. */
function conversionReport(device: BlockDevice, engine: EncryptReport | undefined, hdrBytes: Uint8Array, detached: boolean, t0: number): EncryptReport {
  const hdr = decodeLuks1Header(hdrBytes);
  const dataOffset = hdr.payloadOffset * 512;
  return {
    type: 'luks1',
    started: engine?.started ?? false,
    recovered: engine?.recovered ?? false,
    finished: true,
    bytes: engine?.bytes ?? 0,
    total: engine?.total ?? device.size - dataOffset,
    resilience: engine?.resilience ?? (detached ? 'checksum' : 'datashift'),
    keyslots: hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_ENABLED ? [i] : [])),
    encryption: `${hdr.cipherName}-${hdr.cipherMode}`,
    sectorSize: 512,
    dataOffset,
    grownBytes: engine?.grownBytes ?? 0,
    lostBytes: engine?.lostBytes ?? 0,
    volumeSize: device.size - dataOffset,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Encrypts (or resumes encrypting) `device` in place into LUKS1; also finishes one left in any
 * phase by a crash, a signal or `initOnly`. See the module comment.
 */
export async function encryptLuks1(device: BlockDevice, options: EncryptOptions): Promise<EncryptReport> {
  const t0 = performance.now();
  refuseOptions(options);
  if (options.passphrases.length === 0) throw new InvalidArgumentError('Encryption needs a passphrase.');
  const detached = options.headerDevice !== undefined && options.headerDevice !== device;
  const header = options.headerDevice ?? device;
  let engine: EncryptReport | undefined;
  let converted = false;
  for (let step = 0; step < 6; step++) {
    const format = await detectFormat(header);
    if (format === 'luks1') {
      const marker = await readLuks1Marker(header);
      if (!marker || marker.phase !== 'down' || marker.encrypt !== true) {
        if (engine || converted) throw new UnknownFormatError('The LUKS1 header lost its encryption marker.');
        throw new InvalidArgumentError(marker ? 'This LUKS1 volume records a re-key, not an encryption: resume it with `brickcrypt reencrypt`.' : 'The device already holds a LUKS1 volume: nothing to encrypt.');
      }
      const head = new Uint8Array(LUKS1_HEADER_SIZE);
      await header.read(head, 0);
      const hdr = decodeLuks1Header(head);
      validateLuks1Header(hdr, { headerDeviceSize: header.size, detached });
      if (marker.uuid !== hdr.uuid) throw new CorruptHeaderError('The LUKS1 encryption marker belongs to another volume (UUID differs).');
      if (!engine && !converted) await checkPassphrase(device, detached ? header : undefined, options);
      await finishLuks1KeyslotMoves(header, marker.offsets);
      await clearLuks1Marker(header);
      return conversionReport(device, engine, head, detached, t0);
    }
    if (format === 'luks2') {
      // The size of a grown file changes in the LUKS2 phase.
      const st = await readLuks2Headers(header, detached ? undefined : device.size).then(
        (r) => r.state,
        (err: unknown) => {
          // A magic but no valid copy: a start cut while the header was written to the head.
          if ((err instanceof CorruptHeaderError || err instanceof UnknownFormatError) && !engine && !converted) return undefined;
          throw err;
        },
      );
      if (st) {
        const s = decodeReencryptState(st.metadata);
        const ours = Object.values(st.metadata.tokens).some((t) => t.type === ENCRYPT_LUKS1_TOKEN);
        if (!ours) {
          if (engine) throw new CorruptHeaderError(`The LUKS2 header lost its ${ENCRYPT_LUKS1_TOKEN} token.`);
          throw new InvalidArgumentError(s?.keyslot.mode === 'encrypt' ? 'The recorded encryption is to LUKS2: resume it without --type luks1.' : 'The device already holds a LUKS2 volume: nothing to encrypt.');
        }
        if (s) {
          if (engine) throw new InvalidArgumentError('The LUKS2 phase of the encryption did not finish.');
          engine = await encryptLuks2(device, options);
          if (!engine.finished) return { ...engine, type: 'luks1', seconds: (performance.now() - t0) / 1000 };
          continue;
        }
        if (converted) throw new InvalidArgumentError('The conversion to LUKS1 made no progress.');
        if (!engine) await checkPassphrase(device, detached ? header : undefined, options);
        const grown = Object.entries(st.metadata.tokens).filter(([, t]) => t.type === GROWN_TOKEN_TYPE);
        if (grown.length > 0) {
          // cryptsetup finished the LUKS2 phase of a grown file and kept encrypt.ts's token (it
          // does not cut the file back): the token goes (one header write), the size stays.
          for (const [id] of grown) delete st.metadata.tokens[id];
          await writeLuks2Headers(header, st);
        }
        await convertLuksHeader(device, {
          type: 'luks1',
          ...(detached ? { headerDevice: header } : {}),
          dropTokenType: ENCRYPT_LUKS1_TOKEN,
          luks1Page: (final) => ({ offset: LUKS1_MARKER_OFFSET, bytes: encodeLuks1Marker({ phase: 'down', encrypt: true, uuid: final.uuid, offsets: final.keyslots.map((k) => k.keyMaterialOffset) }) }),
        });
        converted = true;
        continue;
      }
    }
    if (engine || converted) throw new UnknownFormatError('The header of the encryption disappeared.');
    // No LUKS header: plaintext (a new encryption), or — attached — a start interrupted while the
    // header was written to the head (its copy waits in the gap; encrypt.ts writes it again).
    const restart = detached ? undefined : await interruptedStartShift(device, options);
    if (restart !== undefined) {
      const { reduceDeviceSize: _r, cipher: _c, keySizeBits: _k, sectorSize: _s, ...rest } = options;
      engine = await encryptLuks2(device, { ...rest, headerSize: restart, resumeOnly: true });
    } else {
      if (options.resumeOnly) throw new InvalidArgumentError('No encryption is recorded on this device: nothing to resume.');
      const shift = planLuks1(device, detached ? header : undefined, options);
      engine = await encryptLuks2(device, {
        ...options,
        sectorSize: 512,
        pbkdf: 'pbkdf2',
        hash: 'sha256',
        ...(options.reduceDeviceSize === undefined ? { headerSize: shift } : {}),
        tokens: [...(options.tokens ?? []), token()],
      });
    }
    if (!engine.finished) return { ...engine, type: 'luks1', seconds: (performance.now() - t0) / 1000 };
  }
  throw new InvalidArgumentError('The encryption to LUKS1 made no progress.');
}

/**
 * In-place encryption to `type` (default luks2); a device that records an encryption to LUKS1
 * is finished as LUKS1 when no type is given (refused with luks2) — also one whose interrupted
 * start is found and redone by the LUKS2 engine.
 */
export async function encryptLuks(device: BlockDevice, options: EncryptOptions & { type?: 'luks1' | 'luks2' }): Promise<EncryptReport> {
  const { type, ...rest } = options;
  const header = options.headerDevice ?? device;
  // Read each time: the LUKS2 phase grows and cuts a file.
  const recorded = () => luks1EncryptionRecorded(header, options.headerDevice !== undefined && options.headerDevice !== device ? undefined : device.size);
  if (type === 'luks1') return encryptLuks1(device, rest);
  if (await recorded()) {
    if (type === 'luks2') throw new InvalidArgumentError('The recorded encryption is to LUKS1: resume it without --type luks2.');
    return encryptLuks1(device, rest);
  }
  const r = await encryptLuks2(device, rest);
  if (r.finished && (await recorded())) {
    const { cipher: _c, keySizeBits: _k, sectorSize: _s, reduceDeviceSize: _r, ...more } = rest;
    const done = await encryptLuks1(device, more);
    return { ...done, started: r.started, recovered: r.recovered, bytes: r.bytes, total: r.total, grownBytes: r.grownBytes, lostBytes: r.lostBytes };
  }
  return r;
}
