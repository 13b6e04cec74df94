/**
 * The LUKS volume engine: LUKS1 and LUKS2 headers on a `BlockDevice` (optionally a detached
 * header device), unlock, keyslot management, dump and header backup/restore, with the
 * layouts and write ordering of cryptsetup 2.6.
 *
 * @example
 * const vol = await LuksVolume.open(device);
 * const { key } = await vol.unlock(Passphrase.fromString('secret'));
 * // ... use key with an EncryptedDevice, then key.wipe()
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import {
  AlreadyExistsError,
  CorruptHeaderError,
  InsufficientSpaceError,
  InvalidArgumentError,
  KeyslotNotFoundError,
  KeyslotUnavailableError,
  ReadOnlyDeviceError,
  ReadOnlyVolumeError,
  UnknownFormatError,
  UnsupportedError,
  WeakKeyError,
  WrongPassphraseError,
} from '../errors.js';
import { Passphrase, VolumeKey } from '../secret.js';
import { cipherSpecStrings, parseCipherSpec, parseEncryption, validateKeyBytes, type CipherSpec } from '../crypto/cipher-spec.js';
import { hashInfo } from '../crypto/hash.js';
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
import { LUKS2_BINARY_HEADER_SIZE, LUKS2_HDR_SIZES, isLuks2Magic } from '../formats/luks2/binary-header.js';
import {
  LUKS2_LIMITS,
  base64,
  mandatoryRequirements,
  u64,
  type Luks2Digest,
  type Luks2Keyslot,
  type Luks2Metadata,
  type Luks2Segment,
} from '../formats/luks2/metadata.js';
import { AF_STRIPES, afMaterialBytes, deriveKey, openKeyMaterial, pbkdf2Digest, sealKeyMaterial, type KdfParams } from './keyslot-crypto.js';
import { chooseKdf, digestIterations } from './kdf-choice.js';
import { readLuks2Headers, repairLuks2Copies, writeLuks2Headers, type Luks2HeaderState } from './luks2-io.js';
import type { FormatOptions, KdfOptions } from './options.js';
import { dumpJson, dumpText } from './dump.js';

export interface OpenOptions {
  /** Detached header (cryptsetup --header): header and keyslots live here, the data device holds only data. */
  headerDevice?: BlockDevice;
  /** Never write, not even to repair a damaged LUKS2 header copy. */
  readOnly?: boolean;
  /** The device holds only a header (e.g. a backup file): skip checks against the data size. */
  headerOnly?: boolean;
}

export interface UnlockOptions {
  /** Try only this keyslot (also the way to open an unbound LUKS2 keyslot). */
  keyslot?: number;
  /** The caller will write data with the key: refused on a volume fenced by a requirement. */
  forWrite?: boolean;
}

export interface UnlockResult {
  key: VolumeKey;
  keyslot: number;
  /** LUKS2 keyslot not assigned to a data segment: its key must not be used for data. */
  unbound: boolean;
}

export interface KeyslotInfo {
  id: number;
  /** pbkdf2 / argon2i / argon2id (or the raw type for unknown ones). */
  kdf: string;
  /** LUKS2 only: the key is not assigned to any data segment. */
  unbound: boolean;
  /** LUKS2 priority: 0 ignore, 1 normal, 2 high. */
  priority?: number;
  /** LUKS2 keyslot type ("luks2"; others, e.g. "reencrypt", are never unlocked). */
  type: string;
}

export interface AddKeyOptions extends KdfOptions {
  /** Keyslot number for the new key; default the first free one. */
  keyslot?: number;
  /** Try only this keyslot to unlock with the existing passphrase. */
  unlockKeyslot?: number;
}

export interface HeaderRestoreOptions {
  headerDevice?: BlockDevice;
  /** Replace a LUKS header whose UUID differs from the backup's (cryptsetup asks; --batch-mode). */
  force?: boolean;
}

type State = { version: 1; hdr: Luks1Header } | { version: 2; h2: Luks2HeaderState };

const MIB = 1024 * 1024;
/** cryptsetup 2.6 LUKS2 defaults (lib/luks2/luks2.h, setup.c). */
export const LUKS2_DEFAULTS = { hdrSize: 16384, dataOffset: 16 * MIB, keyslotsSize: 16 * MIB - 2 * 16384 } as const;
const DEFAULT_ALIGNMENT = MIB;

function isXtsWeak(spec: CipherSpec, key: Uint8Array): boolean {
  if (spec.mode !== 'xts') return false;
  const half = key.length / 2;
  for (let i = 0; i < half; i++) if (key[i] !== key[half + i]) return false;
  return true;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

export class LuksVolume {
  #state: State;
  readonly #data: BlockDevice;
  readonly #header: BlockDevice;
  readonly #detached: boolean;
  readonly #readOnly: boolean;

  private constructor(state: State, data: BlockDevice, header: BlockDevice | undefined, readOnly: boolean) {
    this.#state = state;
    this.#data = data;
    this.#header = header ?? data;
    this.#detached = header !== undefined && header !== data;
    this.#readOnly = readOnly || this.#header.readOnly;
  }

  /**
   * Reads and validates the header (LUKS1, or both LUKS2 copies). A damaged or stale LUKS2 copy
   * is rewritten from the good one unless the volume is read-only or fenced by a requirement.
   */
  static async open(device: BlockDevice, options: OpenOptions = {}): Promise<LuksVolume> {
    const header = options.headerDevice ?? device;
    const detached = options.headerDevice !== undefined && options.headerDevice !== device;
    const readOnly = options.readOnly === true || header.readOnly;
    if (header.size < 8) throw new UnknownFormatError('Device is too small to hold a LUKS header.');
    const magic = new Uint8Array(8);
    await header.read(magic, 0);
    const luksMagic = LUKS1_MAGIC.every((b, i) => magic[i] === b);
    const version = luksMagic ? (magic[6]! << 8) | magic[7]! : 0;
    if (luksMagic && version === 1) {
      if (header.size < LUKS1_HEADER_SIZE) throw new CorruptHeaderError('LUKS1 header is truncated.');
      const bytes = new Uint8Array(LUKS1_HEADER_SIZE);
      await header.read(bytes, 0);
      const hdr = decodeLuks1Header(bytes);
      validateLuks1Header(hdr, options.headerOnly ? { headerDeviceSize: header.size, detached } : { headerDeviceSize: header.size, dataDeviceSize: device.size, detached });
      return new LuksVolume({ version: 1, hdr }, device, options.headerDevice, readOnly);
    }
    if (!(luksMagic && version === 2) && !(await hasLuks2Secondary(header))) {
      if (luksMagic) throw new UnknownFormatError(`Unsupported LUKS version ${version}.`);
      throw new UnknownFormatError('Device is not a valid LUKS device (no LUKS signature).');
    }
    const result = await readLuks2Headers(header, detached || options.headerOnly ? undefined : device.size);
    const vol = new LuksVolume({ version: 2, h2: result.state }, device, options.headerDevice, readOnly);
    if (detached && !options.headerOnly) validateDataSegments(result.state.metadata, device.size);
    if (result.stale.length > 0 && !vol.#readOnly && vol.readOnlyReason === undefined) {
      await repairLuks2Copies(header, result.state, result.stale);
    }
    return vol;
  }

  /**
   * Writes a new LUKS1 or LUKS2 header with one keyslot for `options.passphrase`. The device
   * must already be large enough for header + payload (the caller grows files).
   */
  static async format(device: BlockDevice, options: FormatOptions & { headerDevice?: BlockDevice }): Promise<{ volume: LuksVolume; key: VolumeKey }> {
    const header = options.headerDevice ?? device;
    if (header.readOnly || device.readOnly) throw new ReadOnlyDeviceError('Cannot format a read-only device.');
    const detached = options.headerDevice !== undefined && options.headerDevice !== device;
    const cipher = options.cipher ?? 'aes-xts-plain64';
    const spec = parseEncryption(cipher);
    const keyBits = options.keySizeBits ?? (spec.mode === 'xts' ? 512 : 256);
    if (keyBits % 8 !== 0) throw new InvalidArgumentError(`Key size ${keyBits} is not a whole number of bytes.`);
    const keyBytes = keyBits / 8;
    validateKeyBytes(spec, keyBytes);
    const hash = hashInfo(options.hash ?? 'sha256').name;
    let key: VolumeKey;
    if (options.volumeKey) {
      if (options.volumeKey.length !== keyBytes) throw new InvalidArgumentError(`Volume key has ${options.volumeKey.length} bytes, the key size needs ${keyBytes}.`);
      key = VolumeKey.copyOf(options.volumeKey.expose());
    } else {
      do key = VolumeKey.random(keyBytes);
      while (isXtsWeak(spec, key.expose()));
    }
    try {
      if (isXtsWeak(spec, key.expose())) throw new WeakKeyError('AES-XTS volume key halves are equal.');
      const uuid = options.uuid ?? randomUUID();
      if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(uuid)) {
        throw new InvalidArgumentError(`'${uuid}' is not a UUID.`);
      }
      const volume =
        options.type === 'luks1'
          ? await formatLuks1(device, header, detached, spec, keyBytes, hash, uuid, key, options)
          : await formatLuks2(device, header, detached, spec, keyBytes, hash, uuid, key, options);
      return { volume, key };
    } catch (err) {
      key.wipe();
      throw err;
    }
  }

  /** @internal */
  static _create(state: State, data: BlockDevice, header: BlockDevice | undefined): LuksVolume {
    return new LuksVolume(state, data, header, false);
  }

  get version(): 1 | 2 {
    return this.#state.version;
  }

  get uuid(): string {
    return this.#state.version === 1 ? this.#state.hdr.uuid : this.#state.h2.bin.uuid;
  }

  get label(): string | undefined {
    return this.#state.version === 2 ? this.#state.h2.bin.label : undefined;
  }

  /** The crypt data segment ("0" for volumes brickcrypt and cryptsetup create). */
  #segment(): [string, Luks2Segment] {
    if (this.#state.version !== 2) throw new Error('not LUKS2');
    const segs = Object.entries(this.#state.h2.metadata.segments).filter(([, s]) => s.type === 'crypt' && !s.flags?.some((f) => f.startsWith('backup-')));
    if (segs.length === 0) throw new UnsupportedError('LUKS2 volume has no crypt data segment.');
    if (segs.length > 1) throw new UnsupportedError('LUKS2 volumes with several data segments (reencryption in progress) are not supported.');
    return segs[0]!;
  }

  get encryption(): string {
    if (this.#state.version === 1) return `${this.#state.hdr.cipherName}-${this.#state.hdr.cipherMode}`;
    return this.#segment()[1].encryption!;
  }

  get keyBytes(): number {
    if (this.#state.version === 1) return this.#state.hdr.keyBytes;
    const digest = this.#segmentDigest();
    const slot = digest?.keyslots.map((k) => this.#metadata().keyslots[k]).find((k) => k !== undefined);
    if (!slot) throw new UnsupportedError('LUKS2 volume has no keyslot for its data segment; the key size is unknown.');
    return slot.key_size;
  }

  get sectorSize(): number {
    return this.#state.version === 1 ? 512 : this.#segment()[1].sector_size!;
  }

  get ivTweak(): number {
    return this.#state.version === 1 ? 0 : u64(this.#segment()[1].iv_tweak ?? '0', 'iv_tweak');
  }

  get dataOffset(): number {
    return this.#state.version === 1 ? this.#state.hdr.payloadOffset * 512 : u64(this.#segment()[1].offset, 'segment offset');
  }

  get payloadSize(): number {
    const off = this.dataOffset;
    if (this.#state.version === 2) {
      const seg = this.#segment()[1];
      if (seg.size !== 'dynamic') return u64(seg.size, 'segment size');
    }
    const ss = this.sectorSize;
    return Math.max(0, Math.floor((this.#data.size - off) / ss) * ss);
  }

  /** Set when an unknown LUKS2 mandatory requirement fences the volume: inspect only. */
  get readOnlyReason(): string | undefined {
    if (this.#state.version !== 2) return undefined;
    const req = mandatoryRequirements(this.#state.h2.metadata);
    return req.length > 0 ? `LUKS2 volume has unsupported mandatory requirements: ${req.join(', ')}.` : undefined;
  }

  /** True when the header is on a separate device. */
  get detachedHeader(): boolean {
    return this.#detached;
  }

  /** The data device (ciphertext at `dataOffset`). */
  get dataDevice(): BlockDevice {
    return this.#data;
  }

  #metadata(): Luks2Metadata {
    if (this.#state.version !== 2) throw new Error('not LUKS2');
    return this.#state.h2.metadata;
  }

  #segmentDigest(): Luks2Digest | undefined {
    const [segId] = this.#segment();
    return Object.values(this.#metadata().digests).find((d) => d.segments.includes(segId));
  }

  #digestOfKeyslot(id: string): [string, Luks2Digest] | undefined {
    return Object.entries(this.#metadata().digests).find(([, d]) => d.keyslots.includes(id));
  }

  /** Active keyslots. */
  keyslots(): KeyslotInfo[] {
    const st = this.#state;
    if (st.version === 1) {
      return st.hdr.keyslots.flatMap((k, id) => (k.state === LUKS1_KEY_ENABLED ? [{ id, kdf: 'pbkdf2', unbound: false, type: 'luks1' }] : []));
    }
    let segId: string | undefined;
    try {
      segId = this.#segment()[0];
    } catch {
      segId = undefined;
    }
    return Object.entries(st.h2.metadata.keyslots)
      .map(([id, k]) => {
        const d = this.#digestOfKeyslot(id)?.[1];
        const info: KeyslotInfo = {
          id: Number(id),
          kdf: typeof k.kdf?.type === 'string' ? k.kdf.type : 'none',
          unbound: !d || segId === undefined || !d.segments.includes(segId),
          type: k.type,
        };
        if (typeof k.priority === 'number') info.priority = k.priority;
        return info;
      })
      .sort((a, b) => a.id - b.id);
  }

  /** LUKS2 keyslots whose key is not assigned to the data segment (cryptsetup "unbound" keys). */
  unboundKeyslots(): number[] {
    return this.keyslots().filter((k) => k.unbound).map((k) => k.id);
  }

  #assertWritable(): void {
    const reason = this.readOnlyReason;
    if (reason !== undefined) throw new ReadOnlyVolumeError(reason);
    if (this.#readOnly) throw new ReadOnlyDeviceError('The LUKS header device is open read-only.');
  }

  #dataSpec(): CipherSpec {
    if (this.#state.version === 1) return parseCipherSpec(this.#state.hdr.cipherName, this.#state.hdr.cipherMode, this.#state.hdr.keyBytes);
    return parseEncryption(this.encryption, this.keyBytes);
  }

  /**
   * Finds the keyslot `passphrase` opens and returns the volume key (caller wipes it).
   * Without `keyslot`, LUKS2 tries keyslots of the data segment by priority (high first,
   * "ignore" skipped), as cryptsetup does; an explicit keyslot may be unbound.
   */
  async unlock(passphrase: Passphrase, options: UnlockOptions = {}): Promise<UnlockResult> {
    if (options.forWrite) {
      const reason = this.readOnlyReason;
      if (reason !== undefined) throw new ReadOnlyVolumeError(reason);
    }
    const st = this.#state;
    if (options.keyslot !== undefined && !this.keyslots().some((k) => k.id === options.keyslot)) {
      throw new KeyslotNotFoundError(`Keyslot ${options.keyslot} is not active.`);
    }
    if (st.version === 1) {
      const spec = this.#dataSpec();
      for (const info of this.keyslots()) {
        if (options.keyslot !== undefined && info.id !== options.keyslot) continue;
        const key = await this.#tryLuks1Slot(spec, info.id, passphrase);
        if (key) return { key, keyslot: info.id, unbound: false };
      }
      throw new WrongPassphraseError();
    }
    let candidates = this.keyslots().filter((k) => k.type === 'luks2');
    if (options.keyslot !== undefined) {
      candidates = candidates.filter((k) => k.id === options.keyslot);
    } else {
      candidates = candidates.filter((k) => !k.unbound && k.priority !== 0);
      candidates.sort((a, b) => (b.priority ?? 1) - (a.priority ?? 1) || a.id - b.id);
    }
    for (const info of candidates) {
      const key = await this.#tryLuks2Slot(String(info.id), passphrase);
      if (key) {
        if (options.forWrite && info.unbound) {
          key.wipe();
          throw new InvalidArgumentError(`Keyslot ${info.id} holds an unbound key that is not the data key.`);
        }
        return { key, keyslot: info.id, unbound: info.unbound };
      }
    }
    throw new WrongPassphraseError();
  }

  async #tryLuks1Slot(spec: CipherSpec, slot: number, passphrase: Passphrase): Promise<VolumeKey | undefined> {
    if (this.#state.version !== 1) return undefined;
    const hdr = this.#state.hdr;
    const ks = hdr.keyslots[slot]!;
    const slotKey = await deriveKey({ type: 'pbkdf2', hash: hdr.hashSpec, iterations: ks.iterations }, passphrase.expose(), ks.salt, hdr.keyBytes);
    const material = new Uint8Array(luks1KeyslotSectors(hdr.keyBytes, ks.stripes) * 512);
    await this.#header.read(material, ks.keyMaterialOffset * 512);
    let candidate: Uint8Array;
    try {
      candidate = openKeyMaterial(spec, slotKey, material, hdr.keyBytes, hdr.hashSpec);
    } finally {
      slotKey.fill(0);
    }
    const digest = await pbkdf2Digest(hdr.hashSpec, candidate, hdr.mkDigestSalt, hdr.mkDigestIterations, 20);
    if (equalBytes(digest, hdr.mkDigest)) return new VolumeKey(candidate);
    candidate.fill(0);
    return undefined;
  }

  async #tryLuks2Slot(id: string, passphrase: Passphrase): Promise<VolumeKey | undefined> {
    const ks = this.#metadata().keyslots[id]!;
    const kdf = ks.kdf!;
    let params: KdfParams;
    if (kdf.type === 'pbkdf2') params = { type: 'pbkdf2', hash: kdf.hash, iterations: kdf.iterations };
    else if (kdf.type === 'argon2i' || kdf.type === 'argon2id') {
      params = { type: kdf.type, time: kdf.time, memoryKiB: kdf.memory, parallel: kdf.cpus };
    } else throw new UnsupportedError(`Keyslot ${id} uses the unsupported KDF '${String((kdf as { type: unknown }).type)}'.`);
    const areaSpec = parseEncryption(ks.area.encryption!, ks.area.key_size);
    const slotKey = await deriveKey(params, passphrase.expose(), base64(kdf.salt, 'kdf salt'), ks.area.key_size!);
    const material = new Uint8Array(afMaterialBytes(ks.key_size, ks.af!.stripes));
    await this.#header.read(material, u64(ks.area.offset, 'area offset'));
    let candidate: Uint8Array;
    try {
      candidate = openKeyMaterial(areaSpec, slotKey, material, ks.key_size, ks.af!.hash);
    } finally {
      slotKey.fill(0);
    }
    const found = this.#digestOfKeyslot(id);
    if (found && (await this.#luks2DigestMatches(found[1], candidate))) return new VolumeKey(candidate);
    candidate.fill(0);
    return undefined;
  }

  async #luks2DigestMatches(d: Luks2Digest, key: Uint8Array): Promise<boolean> {
    if (d.type !== 'pbkdf2') throw new UnsupportedError(`LUKS2 digest type '${d.type}' is not supported.`);
    const want = base64(d.digest, 'digest');
    const got = await pbkdf2Digest(d.hash!, key, base64(d.salt, 'digest salt'), d.iterations!, want.length);
    return equalBytes(got, want);
  }

  /** True when `key` is this volume's (data segment) key. */
  async verifyVolumeKey(key: VolumeKey): Promise<boolean> {
    const st = this.#state;
    if (st.version === 1) {
      if (key.length !== st.hdr.keyBytes) return false;
      const d = await pbkdf2Digest(st.hdr.hashSpec, key.expose(), st.hdr.mkDigestSalt, st.hdr.mkDigestIterations, 20);
      return equalBytes(d, st.hdr.mkDigest);
    }
    const d = this.#segmentDigest();
    return d !== undefined && (await this.#luks2DigestMatches(d, key.expose()));
  }

  /** Tests a passphrase; returns the keyslot it opens (unbound keyslots only when named). */
  async testPassphrase(passphrase: Passphrase, options: { keyslot?: number } = {}): Promise<number> {
    const r = await this.unlock(passphrase, options);
    r.key.wipe();
    return r.keyslot;
  }

  async #resolveKey(auth: Passphrase | VolumeKey, keyslot?: number): Promise<VolumeKey> {
    if (auth instanceof VolumeKey) {
      if (!(await this.verifyVolumeKey(auth))) throw new WrongPassphraseError('Volume key does not match the volume.');
      return VolumeKey.copyOf(auth.expose());
    }
    const opts: UnlockOptions = {};
    if (keyslot !== undefined) opts.keyslot = keyslot;
    const r = await this.unlock(auth, opts);
    if (r.unbound) {
      r.key.wipe();
      throw new WrongPassphraseError('The passphrase opens an unbound keyslot, not the volume key.');
    }
    return r.key;
  }

  /**
   * Adds a keyslot for `newPassphrase`, authorised by an existing passphrase or the volume key.
   * Key material is written (and flushed) before the header that activates it.
   * @returns the new keyslot number
   */
  async addKey(auth: Passphrase | VolumeKey, newPassphrase: Passphrase, options: AddKeyOptions = {}): Promise<number> {
    this.#assertWritable();
    const key = await this.#resolveKey(auth, options.unlockKeyslot);
    try {
      const slot = this.#pickFreeSlot(options.keyslot);
      await this.#writeKeyslot(slot, key, newPassphrase, options);
      return slot;
    } finally {
      key.wipe();
    }
  }

  #pickFreeSlot(wanted?: number): number {
    const max = this.#state.version === 1 ? LUKS1_NUM_KEYSLOTS : LUKS2_LIMITS.keyslots;
    const used = new Set(
      this.#state.version === 1
        ? this.#state.hdr.keyslots.flatMap((k, i) => (k.state === LUKS1_KEY_DISABLED ? [] : [i]))
        : Object.keys(this.#state.h2.metadata.keyslots).map(Number),
    );
    if (wanted !== undefined) {
      if (!Number.isInteger(wanted) || wanted < 0 || wanted >= max) throw new InvalidArgumentError(`Keyslot ${wanted} is out of range 0..${max - 1}.`);
      if (used.has(wanted)) throw new KeyslotUnavailableError(`Keyslot ${wanted} is in use.`);
      return wanted;
    }
    for (let i = 0; i < max; i++) if (!used.has(i)) return i;
    throw new KeyslotUnavailableError('All keyslots are full.');
  }

  /** Writes material for `slot` and activates it. For LUKS2, `replaceArea` lets an existing slot id move to a new area. */
  async #writeKeyslot(slot: number, key: VolumeKey, passphrase: Passphrase, kdfOptions: KdfOptions, digestId?: string): Promise<void> {
    const st = this.#state;
    const salt = new Uint8Array(randomBytes(32));
    if (st.version === 1) {
      const hdr = st.hdr;
      const params = await chooseKdf({ ...kdfOptions, pbkdf: 'pbkdf2', hash: hdr.hashSpec }, 1, hdr.keyBytes);
      if (params.type !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 keyslots use PBKDF2 only.');
      const slotKey = await deriveKey(params, passphrase.expose(), salt, hdr.keyBytes);
      let material: Uint8Array;
      try {
        material = sealKeyMaterial(this.#dataSpec(), slotKey, key.expose(), hdr.hashSpec);
      } finally {
        slotKey.fill(0);
      }
      const ks = hdr.keyslots[slot]!;
      await this.#header.write(material, ks.keyMaterialOffset * 512);
      await this.#header.flush();
      const next: Luks1Header = {
        ...hdr,
        keyslots: hdr.keyslots.map((k, i) => (i === slot ? { ...k, state: LUKS1_KEY_ENABLED, iterations: params.iterations, salt, stripes: LUKS1_STRIPES } : k)),
      };
      await this.#writeLuks1(next);
      return;
    }
    const meta = st.h2.metadata;
    const segSpec = parseEncryption(this.encryption, key.length);
    const encryption = cipherSpecStrings(segSpec).encryption;
    const keyBytes = key.length;
    const hash = hashInfo(kdfOptions.hash ?? 'sha256').name;
    const params = await chooseKdf({ ...kdfOptions, hash }, 2, keyBytes);
    const area = this.#allocateArea(afMaterialBytesAligned(keyBytes));
    const slotKey = await deriveKey(params, passphrase.expose(), salt, keyBytes);
    let material: Uint8Array;
    try {
      material = sealKeyMaterial(segSpec, slotKey, key.expose(), hash);
    } finally {
      slotKey.fill(0);
    }
    const padded = new Uint8Array(area.size);
    padded.set(material);
    await this.#header.write(padded, area.offset);
    await this.#header.flush();
    const kdf =
      params.type === 'pbkdf2'
        ? { type: 'pbkdf2' as const, hash: params.hash, iterations: params.iterations, salt: Buffer.from(salt).toString('base64') }
        : { type: params.type, time: params.time, memory: params.memoryKiB, cpus: params.parallel, salt: Buffer.from(salt).toString('base64') };
    const keyslot: Luks2Keyslot = {
      type: 'luks2',
      key_size: keyBytes,
      af: { type: 'luks1', stripes: AF_STRIPES, hash },
      area: { type: 'raw', offset: String(area.offset), size: String(area.size), encryption, key_size: keyBytes },
      kdf,
    };
    const id = String(slot);
    const previous = meta.keyslots[id];
    if (previous && typeof previous.priority === 'number') keyslot.priority = previous.priority;
    meta.keyslots[id] = keyslot;
    const dId = digestId ?? this.#digestIdForKey();
    if (!meta.digests[dId]!.keyslots.includes(id)) meta.digests[dId]!.keyslots.push(id);
    await writeLuks2Headers(this.#header, st.h2);
  }

  #digestIdForKey(): string {
    const [segId] = this.#segment();
    const found = Object.entries(this.#metadata().digests).find(([, d]) => d.segments.includes(segId));
    if (!found) throw new CorruptHeaderError('LUKS2 data segment has no digest.');
    return found[0];
  }

  /** First gap in the keyslots area that holds `size` bytes (cryptsetup allocates the same way). */
  #allocateArea(size: number, ignoreId?: string): { offset: number; size: number } {
    const st = this.#state;
    if (st.version !== 2) throw new Error('not LUKS2');
    const start = 2 * st.h2.bin.hdrSize;
    const end = start + u64(st.h2.metadata.config.keyslots_size, 'keyslots_size');
    const used = Object.entries(st.h2.metadata.keyslots)
      .filter(([id]) => id !== ignoreId)
      .map(([, k]) => [u64(k.area.offset, 'offset'), u64(k.area.offset, 'offset') + u64(k.area.size, 'size')] as const)
      .sort((a, b) => a[0] - b[0]);
    let pos = start;
    for (const [s, e] of used) {
      if (s - pos >= size) break;
      pos = Math.max(pos, e);
    }
    if (pos + size > end) throw new KeyslotUnavailableError('No space left in the LUKS2 keyslots area.');
    return { offset: pos, size };
  }

  async #writeLuks1(next: Luks1Header): Promise<void> {
    validateLuks1Header(next, { headerDeviceSize: this.#header.size, detached: this.#detached });
    await this.#header.write(encodeLuks1Header(next), 0);
    await this.#header.flush();
    if (this.#state.version === 1) this.#state.hdr = next;
  }

  /** Removes the keyslot `passphrase` opens (its area is wiped). Returns its number. */
  async removeKey(passphrase: Passphrase, options: { keyslot?: number } = {}): Promise<number> {
    this.#assertWritable();
    const r = await this.unlock(passphrase, options);
    r.key.wipe();
    await this.killSlot(r.keyslot);
    return r.keyslot;
  }

  /**
   * Wipes a keyslot's area and removes it from the header (cryptsetup luksKillSlot). The area
   * is wiped first so the key is gone even if the header write is interrupted.
   */
  async killSlot(slot: number): Promise<void> {
    this.#assertWritable();
    const st = this.#state;
    if (!this.keyslots().some((k) => k.id === slot)) throw new KeyslotNotFoundError(`Keyslot ${slot} is not active.`);
    if (st.version === 1) {
      const hdr = st.hdr;
      const ks = hdr.keyslots[slot]!;
      await this.#header.writeZeroes(ks.keyMaterialOffset * 512, luks1KeyslotSectors(hdr.keyBytes, ks.stripes) * 512);
      await this.#header.flush();
      await this.#writeLuks1({
        ...hdr,
        keyslots: hdr.keyslots.map((k, i) => (i === slot ? { ...k, state: LUKS1_KEY_DISABLED, iterations: 0, salt: new Uint8Array(32) } : k)),
      });
      return;
    }
    const meta = st.h2.metadata;
    const id = String(slot);
    const ks = meta.keyslots[id]!;
    await this.#header.writeZeroes(u64(ks.area.offset, 'offset'), u64(ks.area.size, 'size'));
    await this.#header.flush();
    delete meta.keyslots[id];
    for (const d of Object.values(meta.digests)) d.keyslots = d.keyslots.filter((k) => k !== id);
    for (const t of Object.values(meta.tokens)) t.keyslots = t.keyslots.filter((k) => k !== id);
    await writeLuks2Headers(this.#header, st.h2);
  }

  /**
   * Replaces the passphrase of the keyslot `oldPassphrase` opens, as cryptsetup luksChangeKey:
   * LUKS1 writes the new key into a free slot (the same slot when none is free) and then
   * kills the old one; LUKS2 keeps the keyslot number and writes the new material into a
   * free area before releasing the old area (in place only when no area is free).
   */
  async changeKey(oldPassphrase: Passphrase, newPassphrase: Passphrase, options: AddKeyOptions = {}): Promise<number> {
    this.#assertWritable();
    const unlockOpts: UnlockOptions = {};
    if (options.unlockKeyslot !== undefined) unlockOpts.keyslot = options.unlockKeyslot;
    const r = await this.unlock(oldPassphrase, unlockOpts);
    try {
      if (r.unbound) throw new UnsupportedError('Changing the passphrase of an unbound keyslot is not supported.');
      const st = this.#state;
      if (st.version === 1) {
        let target: number;
        try {
          target = this.#pickFreeSlot(options.keyslot);
        } catch (err) {
          if (!(err instanceof KeyslotUnavailableError) || options.keyslot !== undefined) throw err;
          target = r.keyslot;
        }
        if (target === r.keyslot) {
          await this.#writeKeyslot(target, r.key, newPassphrase, options);
          return target;
        }
        await this.#writeKeyslot(target, r.key, newPassphrase, options);
        await this.killSlot(r.keyslot);
        return target;
      }
      const id = String(r.keyslot);
      const old = st.h2.metadata.keyslots[id]!;
      const oldArea = { offset: u64(old.area.offset, 'offset'), size: u64(old.area.size, 'size') };
      const digestId = this.#digestOfKeyslot(id)![0];
      let inPlace = false;
      try {
        this.#allocateArea(afMaterialBytesAligned(r.key.length));
      } catch (err) {
        if (!(err instanceof KeyslotUnavailableError)) throw err;
        inPlace = true;
      }
      if (!inPlace) {
        await this.#writeKeyslot(r.keyslot, r.key, newPassphrase, options, digestId);
        // The old area is no longer referenced: wipe it.
        await this.#header.writeZeroes(oldArea.offset, oldArea.size);
        await this.#header.flush();
      } else {
        delete st.h2.metadata.keyslots[id];
        await this.#header.writeZeroes(oldArea.offset, oldArea.size);
        await this.#writeKeyslot(r.keyslot, r.key, newPassphrase, options, digestId);
      }
      return r.keyslot;
    } finally {
      r.key.wipe();
    }
  }

  /** Human-readable dump in the layout of `cryptsetup luksDump`. Never contains key material. */
  dump(): string {
    return dumpText(this.#dumpInput());
  }

  /** Machine-readable dump (LUKS2: the metadata object as stored, plus binary header fields). */
  dumpJson(): Record<string, unknown> {
    return dumpJson(this.#dumpInput());
  }

  #dumpInput(): Parameters<typeof dumpText>[0] {
    const st = this.#state;
    return st.version === 1
      ? { version: 1, hdr: st.hdr, readOnlyReason: undefined, unbound: [] }
      : { version: 2, bin: st.h2.bin, metadata: st.h2.metadata, readOnlyReason: this.readOnlyReason, unbound: this.unboundKeyslots() };
  }

  /** Size in bytes of the header backup (cryptsetup luksHeaderBackup). */
  headerBackupSize(): number {
    const st = this.#state;
    if (st.version === 1) return roundUp(luks1KeyslotEnd(st.hdr), 4096);
    return 2 * st.h2.bin.hdrSize + u64(st.h2.metadata.config.keyslots_size, 'keyslots_size');
  }

  /**
   * The header and keyslot areas as cryptsetup's luksHeaderBackup writes them: LUKS1 up to the
   * end of the last keyslot area (page aligned), LUKS2 both headers and the keyslots area.
   */
  async headerBackup(): Promise<Uint8Array> {
    const size = this.headerBackupSize();
    if (size > this.#header.size) throw new CorruptHeaderError('Header area extends past the end of the device.');
    const out = new Uint8Array(size);
    await this.#header.read(out, 0);
    const st = this.#state;
    if (st.version === 1 && st.hdr.keyslots[0]!.keyMaterialOffset * 512 === 4096) {
      // cryptsetup zeroes the gap between the header and the first aligned keyslot in backups.
      out.fill(0, LUKS1_HEADER_SIZE, 4096);
    }
    return out;
  }

  /**
   * Validates `backup` and writes it over the header area of `device`. Refuses when the device
   * holds a LUKS header with another data offset or key size (always, as cryptsetup) or
   * another UUID (unless `force`).
   */
  static async headerRestore(device: BlockDevice, backup: Uint8Array, options: HeaderRestoreOptions = {}): Promise<LuksVolume> {
    const header = options.headerDevice ?? device;
    if (header.readOnly) throw new ReadOnlyDeviceError('Cannot restore a header onto a read-only device.');
    const { MemoryDevice } = await import('../devices/memory-device.js');
    const image = new MemoryDevice(new Uint8Array(backup), true);
    let fromBackup: LuksVolume;
    try {
      fromBackup = await LuksVolume.open(image, { readOnly: true, headerOnly: true });
    } catch (err) {
      if (err instanceof UnknownFormatError) throw new UnknownFormatError('The backup file does not contain a LUKS header.');
      throw err;
    }
    if (fromBackup.headerBackupSize() > backup.length) throw new CorruptHeaderError('The backup file is truncated.');
    if (backup.length > header.size) throw new InsufficientSpaceError('The device is smaller than the header backup.');
    let current: LuksVolume | undefined;
    try {
      current = await LuksVolume.open(device, { readOnly: true, ...(options.headerDevice ? { headerDevice: options.headerDevice } : {}) });
    } catch {
      current = undefined;
    }
    if (current) {
      const fenced = current.readOnlyReason;
      if (fenced !== undefined) throw new ReadOnlyVolumeError(fenced);
      const [ka, kb] = [current.#volumeKeyBytes(), fromBackup.#volumeKeyBytes()];
      // A LUKS2 volume without keyslots does not know its key size; then only the offset is compared.
      if (current.version !== fromBackup.version || current.dataOffset !== fromBackup.dataOffset || (ka !== undefined && kb !== undefined && ka !== kb)) {
        throw new InvalidArgumentError('Data offset or key size differs on device and backup, restore failed.');
      }
      if (current.uuid !== fromBackup.uuid && !options.force) {
        throw new AlreadyExistsError(`Device already contains a LUKS header with UUID ${current.uuid} (backup: ${fromBackup.uuid}); use force to replace it.`);
      }
    }
    const size = fromBackup.headerBackupSize();
    await header.write(backup.subarray(0, size), 0);
    await header.flush();
    return LuksVolume.open(device, options.headerDevice ? { headerDevice: options.headerDevice } : {});
  }

  #volumeKeyBytes(): number | undefined {
    try {
      return this.keyBytes;
    } catch {
      return undefined;
    }
  }
}

function afMaterialBytesAligned(keyBytes: number): number {
  return roundUp(keyBytes * AF_STRIPES, 4096);
}

function luks1KeyslotEnd(hdr: Luks1Header): number {
  const sectors = luks1KeyslotSectors(hdr.keyBytes);
  return Math.max(...hdr.keyslots.map((k) => k.keyMaterialOffset + sectors)) * 512;
}

async function hasLuks2Secondary(dev: BlockDevice): Promise<boolean> {
  const magic = new Uint8Array(8);
  for (const off of LUKS2_HDR_SIZES) {
    if (off + LUKS2_BINARY_HEADER_SIZE > dev.size) return false;
    await dev.read(magic, off);
    if (isLuks2Magic(magic) === 'secondary') return true;
  }
  return false;
}

function validateDataSegments(meta: Luks2Metadata, dataSize: number): void {
  for (const [id, s] of Object.entries(meta.segments)) {
    if (u64(s.offset, 'segment offset') > dataSize) throw new CorruptHeaderError(`LUKS2 segment ${id} starts past the end of the data device.`);
  }
}

async function formatLuks1(
  device: BlockDevice,
  header: BlockDevice,
  detached: boolean,
  spec: CipherSpec,
  keyBytes: number,
  hash: string,
  uuid: string,
  key: VolumeKey,
  options: FormatOptions,
): Promise<LuksVolume> {
  if (options.pbkdf !== undefined && options.pbkdf !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 supports only the pbkdf2 KDF.');
  if (options.sectorSize !== undefined && options.sectorSize !== 512) throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
  if (options.label || options.subsystem) throw new InvalidArgumentError('LUKS1 has no label or subsystem.');
  // Keyslot areas 4 KiB aligned from sector 8 (cryptsetup LUKS_generate_phdr).
  const areaSectors = luks1KeyslotSectors(keyBytes);
  const keyslots = [];
  let sector = 8;
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) {
    keyslots.push({ state: LUKS1_KEY_DISABLED, iterations: 0, salt: new Uint8Array(32), keyMaterialOffset: sector, stripes: LUKS1_STRIPES });
    sector = roundUp(sector + areaSectors, 8);
  }
  const align = (options.alignment ?? DEFAULT_ALIGNMENT) / 512;
  if (!Number.isInteger(align) || align < 1) throw new InvalidArgumentError('Alignment must be a positive multiple of 512 bytes.');
  let payloadOffset: number;
  if (options.dataOffset !== undefined) {
    if (options.dataOffset % 512 !== 0) throw new InvalidArgumentError('Data offset must be a multiple of 512 bytes.');
    payloadOffset = options.dataOffset / 512;
    if (!detached && payloadOffset < sector) throw new InvalidArgumentError(`Data offset must be at least ${sector * 512} bytes for this key size.`);
  } else {
    payloadOffset = detached ? 0 : roundUp(sector, align);
  }
  if (payloadOffset > 0xffffffff) throw new InvalidArgumentError('Data offset is too large for LUKS1.');
  if (header.size < (detached ? sector * 512 : payloadOffset * 512)) {
    throw new InsufficientSpaceError(`Device is too small for the LUKS1 header (needs ${(detached ? sector : payloadOffset) * 512} bytes).`);
  }
  if (device.size < payloadOffset * 512) throw new InsufficientSpaceError('Data device is smaller than the data offset.');
  const mkSalt = new Uint8Array(randomBytes(32));
  const mkIter = await digestIterations(options, hash);
  const hdr: Luks1Header = {
    magic: LUKS1_MAGIC,
    version: 1,
    cipherName: spec.cipher,
    cipherMode: cipherSpecStrings(spec).cipherMode,
    hashSpec: hash,
    payloadOffset,
    keyBytes,
    mkDigest: await pbkdf2Digest(hash, key.expose(), mkSalt, mkIter, 20),
    mkDigestSalt: mkSalt,
    mkDigestIterations: mkIter,
    uuid,
    keyslots,
  };
  validateLuks1Header(hdr, { headerDeviceSize: header.size, dataDeviceSize: device.size, detached });
  // Clear old signatures and keyslots first, then key material, then the header.
  await header.writeZeroes(0, detached ? sector * 512 : payloadOffset * 512);
  await header.flush();
  const vol = LuksVolume._create({ version: 1, hdr }, device, detached ? header : undefined);
  // The disabled header first (the area was zeroed), then addKey writes key material and the enabled header.
  await header.write(encodeLuks1Header(hdr), 0);
  await header.flush();
  return finishFormat(vol, key, options);
}

async function formatLuks2(
  device: BlockDevice,
  header: BlockDevice,
  detached: boolean,
  spec: CipherSpec,
  keyBytes: number,
  hash: string,
  uuid: string,
  key: VolumeKey,
  options: FormatOptions,
): Promise<LuksVolume> {
  const hdrSize = options.hdrSize ?? LUKS2_DEFAULTS.hdrSize;
  if (!(LUKS2_HDR_SIZES as readonly number[]).includes(hdrSize)) throw new InvalidArgumentError(`LUKS2 header size ${hdrSize} is not one of 16 KiB..4 MiB.`);
  let dataOffset: number;
  if (options.dataOffset !== undefined) dataOffset = options.dataOffset;
  else if (detached) dataOffset = 0;
  else dataOffset = Math.max(LUKS2_DEFAULTS.dataOffset, roundUp(2 * hdrSize + (options.keyslotsSize ?? 0), options.alignment ?? DEFAULT_ALIGNMENT));
  let keyslotsSize = options.keyslotsSize ?? (detached || dataOffset === 0 ? LUKS2_DEFAULTS.dataOffset - 2 * hdrSize : dataOffset - 2 * hdrSize);
  keyslotsSize = Math.floor(keyslotsSize / 4096) * 4096;
  if (keyslotsSize < afMaterialBytesAligned(keyBytes)) throw new InvalidArgumentError('The keyslots area is too small for one keyslot.');
  if (!detached && dataOffset < 2 * hdrSize + keyslotsSize) throw new InvalidArgumentError('Data offset overlaps the LUKS2 header and keyslots area.');
  const sectorSize = options.sectorSize ?? (dataOffset % 4096 === 0 && (device.size - dataOffset) % 4096 === 0 ? 4096 : 512);
  if (sectorSize !== 512 && sectorSize !== 4096) throw new InvalidArgumentError('Sector size must be 512 or 4096.');
  if (dataOffset % sectorSize !== 0) throw new InvalidArgumentError('Data offset must be a multiple of the sector size.');
  const metaEnd = 2 * hdrSize + keyslotsSize;
  if (header.size < metaEnd) throw new InsufficientSpaceError(`Device is too small for the LUKS2 header (needs ${metaEnd} bytes).`);
  if (device.size < dataOffset) throw new InsufficientSpaceError('Data device is smaller than the data offset.');
  if ((device.size - dataOffset) % sectorSize !== 0) throw new InvalidArgumentError(`Payload size is not a multiple of the ${sectorSize}-byte sector size.`);
  for (const [what, v, max] of [
    ['label', options.label, 47],
    ['subsystem', options.subsystem, 47],
  ] as const) {
    if (v !== undefined && Buffer.byteLength(v, 'latin1') > max) throw new InvalidArgumentError(`LUKS2 ${what} is longer than ${max} bytes.`);
  }
  const digestSalt = new Uint8Array(randomBytes(32));
  const iterations = await digestIterations(options, 'sha256');
  const digest = await pbkdf2Digest('sha256', key.expose(), digestSalt, iterations, 32);
  const metadata: Luks2Metadata = {
    keyslots: {},
    tokens: {},
    segments: {
      '0': {
        type: 'crypt',
        offset: String(dataOffset),
        size: 'dynamic',
        iv_tweak: '0',
        encryption: cipherSpecStrings(spec).encryption,
        sector_size: sectorSize,
      },
    },
    digests: {
      '0': {
        type: 'pbkdf2',
        keyslots: [],
        segments: ['0'],
        hash: 'sha256',
        iterations,
        salt: Buffer.from(digestSalt).toString('base64'),
        digest: Buffer.from(digest).toString('base64'),
      },
    },
    config: { json_size: String(hdrSize - 4096), keyslots_size: String(keyslotsSize) },
  };
  const h2: Luks2HeaderState = {
    bin: {
      magic: new Uint8Array(6),
      version: 2,
      hdrSize,
      seqid: 0n,
      label: options.label ?? '',
      checksumAlg: 'sha256',
      salt: new Uint8Array(64),
      uuid,
      subsystem: options.subsystem ?? '',
      hdrOffset: 0,
      checksum: new Uint8Array(64),
      padding: new Uint8Array(184),
      padding4096: new Uint8Array(3584),
    },
    metadata,
    escapeSlashes: false,
    salts: [new Uint8Array(randomBytes(64)), new Uint8Array(randomBytes(64))],
  };
  await header.writeZeroes(0, metaEnd);
  await header.flush();
  const vol = LuksVolume._create({ version: 2, h2 }, device, detached ? header : undefined);
  return finishFormat(vol, key, { ...options, hash });
}

/** Adds the first keyslot, authorised by the new volume key (material before the header that enables it). */
async function finishFormat(vol: LuksVolume, key: VolumeKey, options: FormatOptions): Promise<LuksVolume> {
  const kdf: AddKeyOptions = { ...options };
  if (options.keyslot !== undefined) kdf.keyslot = options.keyslot;
  await vol.addKey(key, options.passphrase, kdf);
  return vol;
}

/**
 * The data offset `LuksVolume.format` will choose for these options, so a caller can size a
 * new file (header + payload) before formatting it.
 */
export function plannedDataOffset(options: Pick<FormatOptions, 'type' | 'cipher' | 'keySizeBits' | 'dataOffset' | 'alignment' | 'hdrSize' | 'keyslotsSize'> & { detached?: boolean }): number {
  if (options.dataOffset !== undefined) return options.dataOffset;
  if (options.detached) return 0;
  if (options.type === 'luks2') {
    const hdrSize = options.hdrSize ?? LUKS2_DEFAULTS.hdrSize;
    return Math.max(LUKS2_DEFAULTS.dataOffset, roundUp(2 * hdrSize + (options.keyslotsSize ?? 0), options.alignment ?? DEFAULT_ALIGNMENT));
  }
  const spec = parseEncryption(options.cipher ?? 'aes-xts-plain64');
  const keyBytes = (options.keySizeBits ?? (spec.mode === 'xts' ? 512 : 256)) / 8;
  const areaSectors = luks1KeyslotSectors(keyBytes);
  let sector = 8;
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) sector = roundUp(sector + areaSectors, 8);
  return roundUp(sector, (options.alignment ?? DEFAULT_ALIGNMENT) / 512) * 512;
}

/** Bytes a detached header file needs for these options. */
export function plannedHeaderSize(options: Pick<FormatOptions, 'type' | 'cipher' | 'keySizeBits' | 'hdrSize' | 'keyslotsSize'>): number {
  if (options.type === 'luks2') {
    const hdrSize = options.hdrSize ?? LUKS2_DEFAULTS.hdrSize;
    return 2 * hdrSize + (options.keyslotsSize ?? LUKS2_DEFAULTS.dataOffset - 2 * hdrSize);
  }
  const spec = parseEncryption(options.cipher ?? 'aes-xts-plain64');
  const keyBytes = (options.keySizeBits ?? (spec.mode === 'xts' ? 512 : 256)) / 8;
  let sector = 8;
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) sector = roundUp(sector + luks1KeyslotSectors(keyBytes), 8);
  return sector * 512;
}
