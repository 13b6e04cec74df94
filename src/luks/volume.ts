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
import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import {
  type BrickcryptError,
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
import { parseCipherSpec, parseEncryption, validateKeyBytes, type CipherSpec } from '../crypto/cipher-spec.js';
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
import { LUKS2_LIMITS, mandatoryRequirements, serializeLuks2Json, u64, validateLuks2Metadata, type Luks2Digest, type Luks2Metadata, type Luks2Segment, type Luks2Token } from '../formats/luks2/metadata.js';
import { readLuks2Headers, repairLuks2Copies, writeLuks2Headers } from './luks2-io.js';
import type { FormatOptions, KdfOptions } from './options.js';
import { dumpJson, dumpText } from './dump.js';
import { isXtsWeak, writeLuks1Skeleton, writeLuks2Skeleton } from './format.js';
import { defaultKeyBytes, luks1KeyslotEnd, luks2KeyslotAreaBytes, roundUp } from './layout.js';
import {
  allocateLuks2Area,
  luks1DigestMatches,
  luks2DigestMatches,
  luks2DigestOfKeyslot,
  openLuks1Keyslot,
  openLuks2Keyslot,
  sealLuks1Keyslot,
  sealLuks2Keyslot,
} from './keyslot-store.js';
import type { LuksHeaderState } from './state.js';
import { onlineReencryptVersion, payloadFence } from './requirements.js';

export { LUKS2_DEFAULTS, plannedDataOffset, plannedHeaderSize } from './layout.js';

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

type State = LuksHeaderState;

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
    const keyBits = options.keySizeBits ?? defaultKeyBytes(spec) * 8;
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
      const skeleton = { device, header, detached, spec, keyBytes, hash, uuid, key };
      const state = options.type === 'luks1' ? await writeLuks1Skeleton(skeleton, options) : await writeLuks2Skeleton(skeleton, options);
      const volume = new LuksVolume(state, device, detached ? header : undefined, false);
      // The first keyslot, authorised by the new volume key (material before the header that enables it).
      const kdf: AddKeyOptions = options.type === 'luks1' ? { ...options } : { ...options, hash };
      await volume.addKey(key, options.passphrase, kdf);
      return { volume, key };
    } catch (err) {
      key.wipe();
      throw err;
    }
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
    if (req.length === 0) return undefined;
    const unknown = req.filter((r) => onlineReencryptVersion(r) === undefined);
    // A recorded reencryption is not "unsupported": brickcrypt reencrypt finishes it.
    if (unknown.length === 0) return `LUKS2 volume has a reencryption in progress (${req.join(', ')}); finish it with brickcrypt reencrypt --resume-only.`;
    return `LUKS2 volume has unsupported mandatory requirements: ${unknown.join(', ')}.`;
  }

  /**
   * Why the payload must not be read or written, or undefined when it may: LUKS2 with a recorded
   * reencryption (`ReencryptionInProgressError`) or another mandatory requirement
   * (`UnsupportedRequirementError`). Header-level work is not fenced.
   */
  get payloadFence(): BrickcryptError | undefined {
    return this.#state.version === 2 ? payloadFence(this.#state.h2.metadata) : undefined;
  }

  /** Throws `payloadFence`, if any: every reader or writer of the payload calls this first. */
  assertPayloadAccess(): void {
    const fence = this.payloadFence;
    if (fence !== undefined) throw fence;
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
    return luks2DigestOfKeyslot(this.#metadata(), id);
  }

  /** Active keyslots. */
  keyslots(): KeyslotInfo[] {
    const st = this.#state;
    if (st.version === 1) {
      return st.hdr.keyslots.flatMap((k, id) => (k.state === LUKS1_KEY_ENABLED ? [{ id, kdf: 'pbkdf2', unbound: false, type: 'luks1' }] : []));
    }
    // Bound: the key's digest covers an active (non-backup) segment; during a reencryption
    // both the old and the new key may be (cryptsetup's notion of "unbound").
    const active = Object.entries(st.h2.metadata.segments)
      .filter(([, s]) => !s.flags?.some((f) => f.startsWith('backup-')))
      .map(([id]) => id);
    return Object.entries(st.h2.metadata.keyslots)
      .map(([id, k]) => {
        const d = this.#digestOfKeyslot(id)?.[1];
        const info: KeyslotInfo = {
          id: Number(id),
          kdf: typeof k.kdf?.type === 'string' ? k.kdf.type : 'none',
          unbound: !d || !d.segments.some((sid) => active.includes(sid)),
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
        const key = await openLuks1Keyslot(this.#header, st.hdr, spec, info.id, passphrase);
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
      const key = await openLuks2Keyslot(this.#header, st.h2.metadata, String(info.id), passphrase);
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

  /** True when `key` is this volume's (data segment) key. */
  async verifyVolumeKey(key: VolumeKey): Promise<boolean> {
    const st = this.#state;
    if (st.version === 1) {
      return luks1DigestMatches(st.hdr, key.expose());
    }
    const d = this.#segmentDigest();
    return d !== undefined && (await luks2DigestMatches(d, key.expose()));
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

  /** Writes material for `slot`, flushes it, then writes the header that activates it. */
  async #writeKeyslot(slot: number, key: VolumeKey, passphrase: Passphrase, kdfOptions: KdfOptions, digestId?: string): Promise<void> {
    const st = this.#state;
    if (st.version === 1) {
      const hdr = st.hdr;
      const sealed = await sealLuks1Keyslot(hdr, this.#dataSpec(), key, passphrase, kdfOptions);
      const ks = hdr.keyslots[slot]!;
      await this.#header.write(sealed.material, ks.keyMaterialOffset * 512);
      await this.#header.flush();
      const next: Luks1Header = {
        ...hdr,
        keyslots: hdr.keyslots.map((k, i) => (i === slot ? { ...k, state: LUKS1_KEY_ENABLED, iterations: sealed.iterations, salt: sealed.salt, stripes: LUKS1_STRIPES } : k)),
      };
      await this.#writeLuks1(next);
      return;
    }
    const meta = st.h2.metadata;
    const area = allocateLuks2Area(meta, st.h2.bin.hdrSize, luks2KeyslotAreaBytes(key.length));
    const { material, keyslot } = await sealLuks2Keyslot(this.encryption, key, passphrase, kdfOptions, area);
    await this.#header.write(material, area.offset);
    await this.#header.flush();
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
        allocateLuks2Area(st.h2.metadata, st.h2.bin.hdrSize, luks2KeyslotAreaBytes(r.key.length));
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

  /** LUKS2 tokens as stored, by token id (a copy; LUKS1 has none). Token logic: src/luks/tokens.ts. */
  tokens(): Record<string, Luks2Token> {
    return this.#state.version === 2 ? structuredClone(this.#state.h2.metadata.tokens) : {};
  }

  /**
   * Sets LUKS2 token `id` (or removes it with `undefined`) and writes both header copies
   * (seqid + 1). Validated and sized first: a refusal leaves the header as it was.
   */
  async writeToken(id: number, token: Luks2Token | undefined): Promise<void> {
    this.#assertWritable();
    if (this.#state.version !== 2) throw new UnsupportedError('LUKS1 headers have no tokens (convert the header to LUKS2 first).');
    const h2 = this.#state.h2;
    const before = h2.metadata.tokens;
    const next = { ...before };
    if (token) next[String(id)] = structuredClone(token);
    else delete next[String(id)];
    h2.metadata.tokens = next;
    try {
      validateLuks2Metadata(h2.metadata, { hdrSize: h2.bin.hdrSize });
      try {
        serializeLuks2Json(h2.metadata, h2.bin.hdrSize - LUKS2_BINARY_HEADER_SIZE);
      } catch {
        throw new InsufficientSpaceError(`The token does not fit the ${h2.bin.hdrSize - LUKS2_BINARY_HEADER_SIZE}-byte LUKS2 JSON area.`);
      }
    } catch (err) {
      h2.metadata.tokens = before;
      throw err;
    }
    await writeLuks2Headers(this.#header, h2);
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
      : { version: 2, bin: st.h2.bin, metadata: st.h2.metadata, readOnlyReason: this.readOnlyReason, unbound: this.unboundKeyslots(), dataDeviceSize: this.#data.size };
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

  /** The volume key size, or undefined for a LUKS2 volume without a keyslot for its data segment. */
  knownKeyBytes(): number | undefined {
    try {
      return this.keyBytes;
    } catch {
      return undefined;
    }
  }
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
