/** The body of the `reencrypt` action, shared by its re-key and in-place modes. */
import { InvalidArgumentError } from '../../errors.js';
import { formatOptionsOf, parseVolumeSize, type LuksRequestOptions } from '../volume-files.js';

export interface ReencryptParams {
  mode?: 'reencrypt' | 'encrypt' | 'decrypt';
  /** mode encrypt: the format to make (default luks2; luks1 goes through LUKS2, src/luks/reencrypt/encrypt-luks1.ts). */
  format?: 'luks1' | 'luks2';
  /** Continue the reencryption a failed or cancelled job left recorded on a volume in `error`. */
  resume?: boolean;
  cipher?: string;
  key_size?: number;
  sector_size?: number;
  resilience?: 'checksum' | 'journal' | 'none';
  /** Largest hot zone (bytes or "16M"): a stop request waits at most one zone (cryptsetup --hotzone-size). */
  hotzone_size?: number | string;
  key?: { create: true } | { id: string };
  /** KDF of the new keyslot (pbkdf, pbkdf_iterations, ...), as change_key takes it. */
  luks?: LuksRequestOptions;
}

/** KDF options of the new keyslot: only the keyslot fields of a `luks` object mean anything here. */
export function kdfOf(p: ReencryptParams, type: 'luks1' | 'luks2' = 'luks2'): ReturnType<typeof formatOptionsOf> {
  if (!p.luks) return { type };
  const { cipher: _c, key_size: _k, sector_size: _s, ...kdf } = p.luks;
  if (_c !== undefined || _k !== undefined || _s !== undefined) throw new InvalidArgumentError('reencrypt: give cipher, key_size and sector_size at the top level, not in luks.');
  const f = formatOptionsOf(type, kdf);
  delete f.sectorSize;
  return f;
}

/** The engines' `hotzoneSize` option for the request's `hotzone_size`, if any. */
export function hotzoneOf(p: ReencryptParams): { hotzoneSize?: number } {
  return p.hotzone_size === undefined ? {} : { hotzoneSize: parseVolumeSize(p.hotzone_size) };
}
