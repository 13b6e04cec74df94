/**
 * Keyslot key material as both LUKS versions store it (LUKS1 spec 2.4, LUKS2 spec 3.2):
 * the volume key is AF-split into 4000 stripes, padded to whole 512-byte sectors and
 * encrypted with a key derived from the passphrase, IVs counting from 0 at the area start.
 */
import type { CipherSpec } from '../crypto/cipher-spec.js';
import { createSectorCipher } from '../crypto/sector-cipher.js';
import { afMerge, afSplit } from '../crypto/af-split.js';
import { deriveKey, type KdfParams } from '../crypto/kdf.js';

export const AF_STRIPES = 4000;

/** Bytes of encrypted AF material for a key: keyBytes * 4000 rounded up to 512-byte sectors. */
export function afMaterialBytes(keyBytes: number, stripes = AF_STRIPES): number {
  return Math.ceil((keyBytes * stripes) / 512) * 512;
}

/** Splits and encrypts `volumeKey` for a keyslot; returns `afMaterialBytes(key.length)` bytes. */
export function sealKeyMaterial(spec: CipherSpec, slotKey: Uint8Array, volumeKey: Uint8Array, hash: string): Uint8Array {
  const split = afSplit(volumeKey, AF_STRIPES, hash);
  const out = new Uint8Array(afMaterialBytes(volumeKey.length));
  out.set(split);
  split.fill(0);
  const cipher = createSectorCipher(spec, slotKey, 512);
  try {
    cipher.encrypt(out, 0);
  } finally {
    cipher.wipe();
  }
  return out;
}

/** Decrypts keyslot material (wiped afterwards) and merges the stripes back into a candidate key. */
export function openKeyMaterial(spec: CipherSpec, slotKey: Uint8Array, material: Uint8Array, keyBytes: number, hash: string): Uint8Array {
  const cipher = createSectorCipher(spec, slotKey, 512);
  try {
    cipher.decrypt(material, 0);
    return afMerge(material.subarray(0, keyBytes * AF_STRIPES), keyBytes, AF_STRIPES, hash);
  } finally {
    cipher.wipe();
    material.fill(0);
  }
}

/** PBKDF2 as the LUKS MK digest uses it (LUKS1: 20 bytes; LUKS2 digest: its stored length). */
export function pbkdf2Digest(hash: string, key: Uint8Array, salt: Uint8Array, iterations: number, length: number): Promise<Uint8Array> {
  return deriveKey({ type: 'pbkdf2', hash, iterations }, key, salt, length);
}

export { deriveKey, type KdfParams };
