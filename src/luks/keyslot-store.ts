/**
 * Keyslots on a header device: opening one with a passphrase (derive the slot key, read and
 * decrypt the AF-split material, merge, check the digest) and sealing a volume key into a
 * new one. LUKS1 keyslots follow the LUKS1 on-disk spec 1.2.3 (section 2.4); LUKS2 keyslots,
 * areas and digests the LUKS2 on-disk spec 1.1.x (sections 3.2, 3.4). The header records
 * themselves are not written here: the engine (volume.ts) activates a keyslot by writing the
 * header after the material returned here is durable.
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import { InvalidArgumentError, KeyslotUnavailableError, UnsupportedError } from '../errors.js';
import { cipherSpecStrings, parseEncryption, type CipherSpec } from '../crypto/cipher-spec.js';
import { hashInfo } from '../crypto/hash.js';
import { luks1KeyslotSectors, type Luks1Header } from '../formats/luks1/header.js';
import { base64, u64, type Luks2Digest, type Luks2Keyslot, type Luks2Metadata } from '../formats/luks2/metadata.js';
import { VolumeKey, type Passphrase } from '../secret.js';
import { AF_STRIPES, afMaterialBytes, deriveKey, openKeyMaterial, pbkdf2Digest, sealKeyMaterial, type KdfParams } from './keyslot-crypto.js';
import { chooseKdf } from './kdf-choice.js';
import type { KdfOptions } from './options.js';

/** Constant-time comparison of two digests. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** The key LUKS1 keyslot `slot` holds for `passphrase`, or undefined when it does not open. */
export async function openLuks1Keyslot(header: BlockDevice, hdr: Luks1Header, spec: CipherSpec, slot: number, passphrase: Passphrase): Promise<VolumeKey | undefined> {
  const ks = hdr.keyslots[slot]!;
  const slotKey = await deriveKey({ type: 'pbkdf2', hash: hdr.hashSpec, iterations: ks.iterations }, passphrase.expose(), ks.salt, hdr.keyBytes);
  const material = new Uint8Array(luks1KeyslotSectors(hdr.keyBytes, ks.stripes) * 512);
  await header.read(material, ks.keyMaterialOffset * 512);
  let candidate: Uint8Array;
  try {
    candidate = openKeyMaterial(spec, slotKey, material, hdr.keyBytes, hdr.hashSpec);
  } finally {
    slotKey.fill(0);
  }
  if (await luks1DigestMatches(hdr, candidate)) return new VolumeKey(candidate);
  candidate.fill(0);
  return undefined;
}

/** True when `key` is the volume key of a LUKS1 header (its mk-digest matches). */
export async function luks1DigestMatches(hdr: Luks1Header, key: Uint8Array): Promise<boolean> {
  if (key.length !== hdr.keyBytes) return false;
  const digest = await pbkdf2Digest(hdr.hashSpec, key, hdr.mkDigestSalt, hdr.mkDigestIterations, 20);
  return equalBytes(digest, hdr.mkDigest);
}

/** The KDF parameters of a LUKS2 keyslot. */
export function luks2KdfParams(id: string, ks: Luks2Keyslot): KdfParams {
  const kdf = ks.kdf!;
  if (kdf.type === 'pbkdf2') return { type: 'pbkdf2', hash: kdf.hash, iterations: kdf.iterations };
  if (kdf.type === 'argon2i' || kdf.type === 'argon2id') return { type: kdf.type, time: kdf.time, memoryKiB: kdf.memory, parallel: kdf.cpus };
  throw new UnsupportedError(`Keyslot ${id} uses the unsupported KDF '${String((kdf as { type: unknown }).type)}'.`);
}

/** The digest a LUKS2 keyslot belongs to, with its id. */
export function luks2DigestOfKeyslot(meta: Luks2Metadata, id: string): [string, Luks2Digest] | undefined {
  return Object.entries(meta.digests).find(([, d]) => d.keyslots.includes(id));
}

/**
 * The key LUKS2 keyslot `id` holds for `passphrase`, or undefined when it does not open
 * (the merged key does not match the keyslot's digest).
 */
export async function openLuks2Keyslot(header: BlockDevice, meta: Luks2Metadata, id: string, passphrase: Passphrase): Promise<VolumeKey | undefined> {
  const ks = meta.keyslots[id]!;
  const params = luks2KdfParams(id, ks);
  const areaSpec = parseEncryption(ks.area.encryption!, ks.area.key_size);
  const slotKey = await deriveKey(params, passphrase.expose(), base64(ks.kdf!.salt, 'kdf salt'), ks.area.key_size!);
  const material = new Uint8Array(afMaterialBytes(ks.key_size, ks.af!.stripes));
  await header.read(material, u64(ks.area.offset, 'area offset'));
  let candidate: Uint8Array;
  try {
    candidate = openKeyMaterial(areaSpec, slotKey, material, ks.key_size, ks.af!.hash);
  } finally {
    slotKey.fill(0);
  }
  const found = luks2DigestOfKeyslot(meta, id);
  if (found && (await luks2DigestMatches(found[1], candidate))) return new VolumeKey(candidate);
  candidate.fill(0);
  return undefined;
}

/** True when `key` matches a LUKS2 pbkdf2 digest. */
export async function luks2DigestMatches(d: Luks2Digest, key: Uint8Array): Promise<boolean> {
  if (d.type !== 'pbkdf2') throw new UnsupportedError(`LUKS2 digest type '${d.type}' is not supported.`);
  const want = base64(d.digest, 'digest');
  const got = await pbkdf2Digest(d.hash!, key, base64(d.salt, 'digest salt'), d.iterations!, want.length);
  return equalBytes(got, want);
}

/**
 * First gap in the LUKS2 keyslots area (from 2 * hdr_size, `keyslots_size` long) that holds
 * `size` bytes, as cryptsetup allocates: keyslot `ignoreId`'s own area counts as free.
 */
export function allocateLuks2Area(meta: Luks2Metadata, hdrSize: number, size: number, ignoreId?: string): { offset: number; size: number } {
  const start = 2 * hdrSize;
  const end = start + u64(meta.config.keyslots_size, 'keyslots_size');
  const used = Object.entries(meta.keyslots)
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

/**
 * Seals `key` for `passphrase` into a new LUKS1 keyslot's material (padded to the area size)
 * and returns it with the keyslot's new KDF fields. The caller writes the material, flushes,
 * then writes the header that enables the keyslot.
 */
export async function sealLuks1Keyslot(hdr: Luks1Header, spec: CipherSpec, key: VolumeKey, passphrase: Passphrase, kdfOptions: KdfOptions): Promise<{ material: Uint8Array; iterations: number; salt: Uint8Array }> {
  const salt = new Uint8Array(randomBytes(32));
  const params = await chooseKdf({ ...kdfOptions, pbkdf: 'pbkdf2', hash: hdr.hashSpec }, 1, hdr.keyBytes);
  if (params.type !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 keyslots use PBKDF2 only.');
  const slotKey = await deriveKey(params, passphrase.expose(), salt, hdr.keyBytes);
  try {
    return { material: sealKeyMaterial(spec, slotKey, key.expose(), hdr.hashSpec), iterations: params.iterations, salt };
  } finally {
    slotKey.fill(0);
  }
}

/**
 * Seals `key` for `passphrase` into LUKS2 keyslot material for `area` (padded to the area) and
 * returns it with the keyslot record that describes it (LUKS2 spec 3.2: af luks1, 4000 stripes,
 * area raw encrypted with the segment cipher).
 */
export async function sealLuks2Keyslot(
  segmentEncryption: string,
  key: VolumeKey,
  passphrase: Passphrase,
  kdfOptions: KdfOptions,
  area: { offset: number; size: number },
): Promise<{ material: Uint8Array; keyslot: Luks2Keyslot }> {
  const salt = new Uint8Array(randomBytes(32));
  const segSpec = parseEncryption(segmentEncryption, key.length);
  const encryption = cipherSpecStrings(segSpec).encryption;
  const keyBytes = key.length;
  const hash = hashInfo(kdfOptions.hash ?? 'sha256').name;
  const params = await chooseKdf({ ...kdfOptions, hash }, 2, keyBytes);
  const slotKey = await deriveKey(params, passphrase.expose(), salt, keyBytes);
  const padded = new Uint8Array(area.size);
  try {
    padded.set(sealKeyMaterial(segSpec, slotKey, key.expose(), hash));
  } finally {
    slotKey.fill(0);
  }
  const saltB64 = Buffer.from(salt).toString('base64');
  const kdf =
    params.type === 'pbkdf2'
      ? { type: 'pbkdf2' as const, hash: params.hash, iterations: params.iterations, salt: saltB64 }
      : { type: params.type, time: params.time, memory: params.memoryKiB, cpus: params.parallel, salt: saltB64 };
  const keyslot: Luks2Keyslot = {
    type: 'luks2',
    key_size: keyBytes,
    af: { type: 'luks1', stripes: AF_STRIPES, hash },
    area: { type: 'raw', offset: String(area.offset), size: String(area.size), encryption, key_size: keyBytes },
    kdf,
  };
  return { material: padded, keyslot };
}
