/**
 * brickcrypt crypto core: cipher specifications, sector ciphers, AF split, KDFs,
 * hashes and random bytes. Pure functions over bytes; no files, no devices.
 *
 * @example
 * import { parseEncryption, createSectorCipher } from './crypto/index.js';
 * const cipher = createSectorCipher(parseEncryption('aes-xts-plain64'), key, 512);
 */
export {
  parseCipherSpec,
  parseEncryption,
  cipherSpecStrings,
  validKeyLengths,
  validateKeyBytes,
  type CipherSpec,
  type CipherSpecStrings,
  type CipherMode,
  type IvGenerator,
} from './cipher-spec.js';
export { hashInfo, isHashSupported, supportedHashes, digest, type HashInfo } from './hash.js';
export {
  createSectorCipher,
  createPerSectorXtsCipher,
  encryptSectors,
  decryptSectors,
  type SectorCipher,
  type SectorCipherOptions,
} from './sector-cipher.js';
export { afSplit, afSplitWithRandom, afMerge, afSplitSize } from './af-split.js';
export {
  deriveKey,
  benchmarkKdf,
  validateKdfParams,
  defaultArgon2MemoryKiB,
  defaultArgon2Parallel,
  LUKS1_DEFAULT_KDF,
  LUKS2_DEFAULT_KDF,
  MK_DIGEST_KDF,
  PBKDF2_MIN_ITERATIONS,
  ARGON2_MIN_TIME,
  ARGON2_MIN_MEMORY_KIB,
  ARGON2_MIN_BENCH_MEMORY_KIB,
  ARGON2_MAX_MEMORY_KIB,
  ARGON2_MAX_PARALLEL,
  type KdfParams,
  type KdfType,
  type KdfBenchmarkOptions,
  type Argon2Extras,
} from './kdf.js';
export { randomBytes } from './random.js';
