/**
 * KDF parameters for new keyslots and digests, chosen as cryptsetup 2.6 does:
 * benchmark to `--iter-time` (default 2000 ms) unless values are forced; PBKDF2 at least 1000
 * iterations, Argon2 at least 4 passes; MK/volume-key digests benchmarked to 125 ms (at least
 * 1000 iterations), or exactly 1000 when keyslot iterations are forced.
 */
import { InvalidArgumentError } from '../errors.js';
import { hashInfo } from '../crypto/hash.js';
import { benchmarkKdf, defaultArgon2MemoryKiB, defaultArgon2Parallel, type KdfParams } from '../crypto/kdf.js';
import type { KdfOptions } from './options.js';

export const KDF_DEFAULTS = {
  iterTimeMs: 2000,
  digestTimeMs: 125,
  pbkdf2MinIterations: 1000,
  argon2MinTime: 4,
  argon2MemoryKiB: 1048576,
  argon2MaxParallel: 4,
} as const;

/** Parameters for a new keyslot of a LUKS`version` volume holding a `keyBytes` key. */
export async function chooseKdf(options: KdfOptions, version: 1 | 2, keyBytes: number): Promise<KdfParams> {
  const type = options.pbkdf ?? (version === 1 ? 'pbkdf2' : 'argon2id');
  if (version === 1 && type !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 supports only the pbkdf2 KDF.');
  const hash = hashInfo(options.hash ?? 'sha256').name;
  if (type === 'pbkdf2') {
    if (options.iterations !== undefined) {
      if (!Number.isInteger(options.iterations) || options.iterations < KDF_DEFAULTS.pbkdf2MinIterations) {
        throw new InvalidArgumentError(`Forced iteration count is too low for pbkdf2 (minimum is ${KDF_DEFAULTS.pbkdf2MinIterations}).`);
      }
      return { type, hash, iterations: options.iterations };
    }
    const p = await benchmarkKdf({ type, hash, targetMs: options.iterTimeMs ?? KDF_DEFAULTS.iterTimeMs, keyLength: keyBytes });
    return p.type === 'pbkdf2' ? { ...p, iterations: Math.max(p.iterations, KDF_DEFAULTS.pbkdf2MinIterations) } : p;
  }
  if (type !== 'argon2i' && type !== 'argon2id') throw new InvalidArgumentError(`Unknown PBKDF '${String(type)}'.`);
  const memoryKiB = options.memoryKiB ?? defaultArgon2MemoryKiB();
  const parallel = options.parallel ?? defaultArgon2Parallel();
  if (!Number.isInteger(memoryKiB) || memoryKiB < 32 || memoryKiB > 4 * 1048576) throw new InvalidArgumentError('Argon2 memory must be 32..4194304 KiB.');
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 16) throw new InvalidArgumentError('Argon2 parallel cost must be 1..16.');
  if (options.iterations !== undefined) {
    if (!Number.isInteger(options.iterations) || options.iterations < KDF_DEFAULTS.argon2MinTime) {
      throw new InvalidArgumentError(`Forced iteration count is too low for ${type} (minimum is ${KDF_DEFAULTS.argon2MinTime}).`);
    }
    return { type, time: options.iterations, memoryKiB, parallel };
  }
  return benchmarkKdf({ type, targetMs: options.iterTimeMs ?? KDF_DEFAULTS.iterTimeMs, keyLength: keyBytes, memoryKiB, parallel });
}

/** Iterations of the PBKDF2 volume-key digest (LUKS1 MK digest, LUKS2 digest object). */
export async function digestIterations(options: KdfOptions, hash: string): Promise<number> {
  if (options.digestIterations !== undefined) {
    if (!Number.isInteger(options.digestIterations) || options.digestIterations < KDF_DEFAULTS.pbkdf2MinIterations) {
      throw new InvalidArgumentError(`Digest iterations must be at least ${KDF_DEFAULTS.pbkdf2MinIterations}.`);
    }
    return options.digestIterations;
  }
  if (options.iterations !== undefined) return KDF_DEFAULTS.pbkdf2MinIterations;
  const p = await benchmarkKdf({ type: 'pbkdf2', hash, targetMs: KDF_DEFAULTS.digestTimeMs, keyLength: 32 });
  return p.type === 'pbkdf2' ? Math.max(p.iterations, KDF_DEFAULTS.pbkdf2MinIterations) : KDF_DEFAULTS.pbkdf2MinIterations;
}
