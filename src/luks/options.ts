/** Options of the LUKS engine: format parameters and keyslot KDF choices. */
import type { VolumeKey } from '../secret.js';

export type PbkdfType = 'pbkdf2' | 'argon2i' | 'argon2id';

/** How a new keyslot's passphrase is stretched (cryptsetup's --pbkdf* and --iter-time). */
export interface KdfOptions {
  /** Default: pbkdf2 for LUKS1 (the only one it has), argon2id for LUKS2 (as cryptsetup 2.6). */
  pbkdf?: PbkdfType;
  /** PBKDF2 hash (and LUKS1 header hash). Default sha256. */
  hash?: string;
  /** Target unlock time in ms when benchmarking. Default 2000 (cryptsetup's --iter-time). */
  iterTimeMs?: number;
  /** Forced iterations (PBKDF2) or time cost (Argon2): no benchmark. */
  iterations?: number;
  /** Argon2 memory cost in KiB. Default 1048576 (capped by the benchmark like cryptsetup). */
  memoryKiB?: number;
  /** Argon2 lanes. Default min(4, CPUs). */
  parallel?: number;
  /**
   * PBKDF2 iterations of the volume-key digest. Default: benchmarked to 125 ms as cryptsetup
   * does (the minimum, 1000, when `iterations` is forced).
   */
  digestIterations?: number;
}

export interface FormatOptions extends KdfOptions {
  type: 'luks1' | 'luks2';
  /** The first keyslot's passphrase. */
  passphrase: import('../secret.js').Passphrase;
  /** dm-crypt cipher string. Default aes-xts-plain64. */
  cipher?: string;
  /** Volume key size in bits. Default 512 for XTS, 256 otherwise. */
  keySizeBits?: number;
  /** LUKS2 encryption sector size. Default 4096 when the layout allows it, else 512. */
  sectorSize?: 512 | 4096;
  /** LUKS2 label and subsystem. */
  label?: string;
  subsystem?: string;
  /** Volume UUID (random v4 otherwise). */
  uuid?: string;
  /** Data offset in bytes (cryptsetup --offset * 512); default 1 MiB-aligned (LUKS1) or 16 MiB (LUKS2). */
  dataOffset?: number;
  /** Data alignment in bytes (cryptsetup --align-payload * 512). Default 1 MiB. */
  alignment?: number;
  /** Use this volume key instead of a random one. The caller keeps ownership. */
  volumeKey?: VolumeKey;
  /** LUKS2 hdr_size in bytes (16 KiB .. 4 MiB). Default 16384. */
  hdrSize?: number;
  /** LUKS2 keyslots area size in bytes. Default: up to a 16 MiB data offset. */
  keyslotsSize?: number;
  /** Keyslot for the first passphrase. Default 0. */
  keyslot?: number;
}
