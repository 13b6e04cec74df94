/**
 * The LUKS engine's public API.
 *
 * @example
 * import { LuksVolume } from './luks/index.js';
 * const { volume, key } = await LuksVolume.format(dev, { type: 'luks2', passphrase });
 */
export { LuksVolume, LUKS2_DEFAULTS, plannedDataOffset, plannedHeaderSize } from './volume.js';
export type { OpenOptions, UnlockOptions, UnlockResult, KeyslotInfo, AddKeyOptions } from './volume.js';
export { restoreLuksHeader, type HeaderRestoreOptions } from './header-restore.js';
export type { FormatOptions, KdfOptions, PbkdfType } from './options.js';
export { chooseKdf, KDF_DEFAULTS } from './kdf-choice.js';
export {
  addKeyManagerToken,
  hasKeyManagerToken,
  keyFromTokens,
  keyManagerTokens,
  listTokens,
  removeToken,
  unlockWithTokens,
  KEY_MANAGER_TOKEN_TYPE,
  type KeyManagerToken,
  type KeyManagerTokenFields,
  type TokenKey,
  type TokenKeyResolver,
  type TokenSummary,
} from './tokens.js';

import type { BlockDevice } from '../block-device.js';
import type { Passphrase, VolumeKey } from '../secret.js';
import { LuksVolume, type OpenOptions } from './volume.js';
import type { FormatOptions } from './options.js';

/** Opens a LUKS1/LUKS2 volume. See `LuksVolume.open`. */
export function openLuks(device: BlockDevice, options?: OpenOptions): Promise<LuksVolume> {
  return LuksVolume.open(device, options);
}

/** Formats a device. See `LuksVolume.format`. */
export function formatLuks(device: BlockDevice, options: FormatOptions & { headerDevice?: BlockDevice }): Promise<{ volume: LuksVolume; key: VolumeKey }> {
  return LuksVolume.format(device, options);
}

/**
 * Opens and unlocks in one step for payload access; returns the volume and its key (the caller
 * wipes it). A volume whose payload is fenced (`LuksVolume.payloadFence`) is refused.
 */
export async function unlockLuks(device: BlockDevice, passphrase: Passphrase, options: OpenOptions & { keyslot?: number; forWrite?: boolean } = {}): Promise<{ volume: LuksVolume; key: VolumeKey; keyslot: number }> {
  const volume = await LuksVolume.open(device, options);
  volume.assertPayloadAccess();
  const unlockOptions: { keyslot?: number; forWrite?: boolean } = {};
  if (options.keyslot !== undefined) unlockOptions.keyslot = options.keyslot;
  if (options.forWrite !== undefined) unlockOptions.forWrite = options.forWrite;
  const r = await volume.unlock(passphrase, unlockOptions);
  return { volume, key: r.key, keyslot: r.keyslot };
}
