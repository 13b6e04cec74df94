/**
 * Reading and comparing the plaintext of LUKS volumes in tests: the decrypted view of a device
 * opened with a passphrase, and a comparison that names the first differing byte.
 */
import assert from 'node:assert/strict';
import type { BlockDevice } from '../../src/block-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';

/** The whole plaintext of the LUKS volume on `dev`, unlocked with `passphrase`. */
export async function luksPlaintext(dev: BlockDevice, passphrase: string): Promise<Uint8Array> {
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const { key } = await vol.unlock(Passphrase.fromString(passphrase));
  const view = EncryptedDevice.open(dev, vol, key, { readOnly: true });
  const out = new Uint8Array(view.size);
  await view.read(out, 0);
  await view.close();
  return out;
}

/** Fails with the first byte where `actual` and `expected` differ (and both lengths). */
export function equalPlain(actual: Uint8Array, expected: Uint8Array, label: string): void {
  if (Buffer.compare(actual, expected) === 0) return;
  let i = 0;
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  assert.fail(`${label}: plaintext differs at byte ${i} (lengths ${actual.length}/${expected.length})`);
}

/** True when `needle` occurs in `hay` (e.g. old key bytes left in a header). */
export function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(hay).indexOf(Buffer.from(needle)) >= 0;
}

/** The volume key brickcrypt unlocks from the LUKS volume at `path` with `passphrase`, as lowercase hex. */
export async function brickcryptVolumeKeyHex(path: string, passphrase: string): Promise<string> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const { key } = await (await LuksVolume.open(file, { readOnly: true })).unlock(Passphrase.fromString(passphrase));
    const hex = Buffer.from(key.expose()).toString('hex');
    key.wipe();
    return hex;
  } finally {
    await file.close();
  }
}
