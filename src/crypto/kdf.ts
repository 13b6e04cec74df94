/**
 * Key derivation for LUKS keyslots and digests: PBKDF2 (node:crypto / OpenSSL)
 * and Argon2i/Argon2id (RFC 9106, version 0x13, via the `argon2` package), plus a
 * benchmark that picks parameters for a target unlock time like cryptsetup's
 * `--iter-time` (lib/crypto_backend/pbkdf_check.c, lib/utils_pbkdf.c).
 */
import { pbkdf2 } from 'node:crypto';
import { availableParallelism, totalmem } from 'node:os';
import argon2 from 'argon2';
import { InvalidArgumentError, UnsupportedError } from '../errors.js';
import { hashInfo } from './hash.js';

/** KDF parameters as LUKS stores them (argon2 memory in KiB, lanes = parallel). */
export type KdfParams =
  | { type: 'pbkdf2'; hash: string; iterations: number }
  | { type: 'argon2i' | 'argon2id'; time: number; memoryKiB: number; parallel: number };

export type KdfType = KdfParams['type'];

/** Extra Argon2 inputs (RFC 9106 K and X); LUKS uses neither, the RFC test vectors use both. */
export interface Argon2Extras {
  secret?: Uint8Array;
  associatedData?: Uint8Array;
}

/** cryptsetup's hard PBKDF limits (crypt_pbkdf_get_limits). */
export const PBKDF2_MIN_ITERATIONS = 1000;
export const ARGON2_MIN_TIME = 4;
export const ARGON2_MIN_MEMORY_KIB = 32;
export const ARGON2_MIN_BENCH_MEMORY_KIB = 64 * 1024;
export const ARGON2_MAX_MEMORY_KIB = 4 * 1024 * 1024;
export const ARGON2_MAX_PARALLEL = 4;

/** cryptsetup 2.6 defaults for LUKS1 keyslots: PBKDF2-SHA256 benchmarked to 2 s. */
export const LUKS1_DEFAULT_KDF = Object.freeze({ type: 'pbkdf2' as const, hash: 'sha256', iterTimeMs: 2000 });

/** cryptsetup 2.6 defaults for LUKS2 keyslots: Argon2id, 2 s, at most 1 GiB and 4 threads. */
export const LUKS2_DEFAULT_KDF = Object.freeze({
  type: 'argon2id' as const,
  hash: 'sha256',
  iterTimeMs: 2000,
  maxMemoryKiB: 1024 * 1024,
  maxParallel: 4,
});

/** Volume-key digest (LUKS1 mk-digest, LUKS2 pbkdf2 digest): PBKDF2 benchmarked to 125 ms, at least 1000 iterations. */
export const MK_DIGEST_KDF = Object.freeze({ type: 'pbkdf2' as const, iterTimeMs: 125, minIterations: 1000 });

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function positiveInt(value: number, what: string, min = 1, max = 0xffffffff): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${what} ${value} is out of range (${min}..${max}).`);
  }
}

/** Checks parameters for sanity (not cryptsetup's minimums: existing headers may hold smaller values). */
export function validateKdfParams(params: KdfParams): void {
  if (params.type === 'pbkdf2') {
    hashInfo(params.hash);
    positiveInt(params.iterations, 'PBKDF2 iterations');
    return;
  }
  if (params.type !== 'argon2i' && params.type !== 'argon2id') {
    throw new UnsupportedError(`KDF ${(params as { type: string }).type} is not supported.`);
  }
  positiveInt(params.time, 'Argon2 time cost');
  positiveInt(params.parallel, 'Argon2 parallel cost', 1, 0xffffff);
  // RFC 9106 3.1: m >= 8 * p KiB.
  positiveInt(params.memoryKiB, 'Argon2 memory cost', 8 * params.parallel);
}

/**
 * Derives `length` key bytes from a passphrase.
 *
 * @example
 * const dk = await deriveKey({ type: 'pbkdf2', hash: 'sha256', iterations: 1000 }, pass, salt, 64);
 * const dk2 = await deriveKey({ type: 'argon2id', time: 4, memoryKiB: 65536, parallel: 4 }, pass, salt, 64);
 */
export async function deriveKey(
  params: KdfParams,
  passphrase: Uint8Array,
  salt: Uint8Array,
  length: number,
  extras: Argon2Extras = {},
): Promise<Uint8Array> {
  validateKdfParams(params);
  positiveInt(length, 'Derived key length');
  if (params.type === 'pbkdf2') {
    const digest = hashInfo(params.hash).name;
    const out = await new Promise<Buffer>((resolve, reject) =>
      pbkdf2(passphrase, salt, params.iterations, length, digest, (err, key) => (err ? reject(err) : resolve(key))),
    );
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }
  if (length < 4) throw new InvalidArgumentError('Argon2 output must be at least 4 bytes.');
  if (salt.length < 8) throw new InvalidArgumentError('Argon2 salt must be at least 8 bytes.');
  const out = await argon2.hash(asBuffer(passphrase), {
    raw: true,
    type: params.type === 'argon2i' ? argon2.argon2i : argon2.argon2id,
    version: 0x13,
    salt: asBuffer(salt),
    timeCost: params.time,
    memoryCost: params.memoryKiB,
    parallelism: params.parallel,
    hashLength: length,
    ...(extras.secret ? { secret: asBuffer(extras.secret) } : {}),
    ...(extras.associatedData ? { associatedData: asBuffer(extras.associatedData) } : {}),
  });
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** Options for `benchmarkKdf`. */
export interface KdfBenchmarkOptions {
  type: KdfType;
  /** PBKDF2 hash (default sha256). */
  hash?: string;
  /** Wanted unlock time in ms (cryptsetup --iter-time). */
  targetMs: number;
  /** Derived key length (the volume key size for keyslots). */
  keyLength: number;
  /** Argon2 maximum memory in KiB (default 1 GiB, capped at half the physical memory). */
  memoryKiB?: number;
  /** Argon2 lanes (default min(4, CPUs)). */
  parallel?: number;
  /** Argon2: after extrapolating, measure and re-estimate until within 95..110 % of the target (as cryptsetup does). Default false. */
  refine?: boolean;
  /** Shortest measurement to extrapolate from (default: 250 ms for argon2, 100 ms for pbkdf2). */
  minSampleMs?: number;
  /** PBKDF2: measure again even if this hash was measured in the last 10 s. Default false. */
  fresh?: boolean;
}

/** Argon2 memory default: 1 GiB, but never more than half of physical memory (utils_pbkdf.c). */
export function defaultArgon2MemoryKiB(): number {
  const halfPhysKiB = Math.floor(totalmem() / 1024 / 2);
  if (halfPhysKiB < 64 * 1024) return LUKS2_DEFAULT_KDF.maxMemoryKiB;
  return Math.min(LUKS2_DEFAULT_KDF.maxMemoryKiB, halfPhysKiB);
}

/** Argon2 lanes default: min(4, online CPUs). */
export function defaultArgon2Parallel(): number {
  return Math.max(1, Math.min(LUKS2_DEFAULT_KDF.maxParallel, availableParallelism()));
}

const BENCH_PASSPHRASE = new Uint8Array(Buffer.from('foobarfo'));
const BENCH_SALT = new Uint8Array(32).fill(0x62);

async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/**
 * Picks KDF parameters so one derivation takes about `targetMs`, extrapolating from
 * short measurements (as cryptsetup's benchmark).
 * PBKDF2: iterations (at least 1000). Argon2: time cost (at least 4) and memory up to the limit.
 *
 * @example
 * const p = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha256', targetMs: 2000, keyLength: 64 });
 * // { type: 'pbkdf2', hash: 'sha256', iterations: 2_500_000 }
 */
export async function benchmarkKdf(options: KdfBenchmarkOptions): Promise<KdfParams> {
  positiveInt(options.targetMs, 'Target time');
  positiveInt(options.keyLength, 'Key length');
  if (options.type === 'pbkdf2') return benchmarkPbkdf2(options);
  if (options.type === 'argon2i' || options.type === 'argon2id') return benchmarkArgon2(options);
  throw new UnsupportedError(`KDF ${String(options.type)} is not supported.`);
}

/**
 * PBKDF2 speed measured recently, per hash: hash-block iterations per ms. PBKDF2's cost is
 * iterations x ceil(keyLength / hash size) compression runs, so one measurement serves every
 * key length. cryptsetup likewise benchmarks once per format and derives the volume-key
 * digest's iterations from the keyslot's (lib/luks1/keymanage.c: LUKS_MKD_ITERATIONS_MS).
 */
const pbkdf2Rates = new Map<string, { blockItersPerMs: number; at: number }>();
/** How long a PBKDF2 measurement is reused (the machine's load may change after that). */
const PBKDF2_RATE_TTL_MS = 10_000;

function pbkdf2Blocks(hash: string, keyLength: number): number {
  return Math.ceil(keyLength / hashInfo(hash).digestSize);
}

async function benchmarkPbkdf2(options: KdfBenchmarkOptions): Promise<KdfParams> {
  const hash = hashInfo(options.hash ?? 'sha256').name;
  const blocks = pbkdf2Blocks(hash, options.keyLength);
  const fromRate = (blockItersPerMs: number): KdfParams => {
    const estimate = Math.floor((blockItersPerMs * options.targetMs) / blocks);
    return { type: 'pbkdf2', hash, iterations: Math.min(0xffffffff, Math.max(PBKDF2_MIN_ITERATIONS, estimate)) };
  };
  const known = pbkdf2Rates.get(hash);
  if (known && !options.fresh && performance.now() - known.at < PBKDF2_RATE_TTL_MS) return fromRate(known.blockItersPerMs);
  const minMs = options.minSampleMs ?? 100;
  let iterations = 1 << 12;
  for (let step = 0; ; step++) {
    const ms = await timeMs(() => deriveKey({ type: 'pbkdf2', hash, iterations }, BENCH_PASSPHRASE, BENCH_SALT, options.keyLength));
    if (ms > minMs || step > 12) {
      const blockItersPerMs = (iterations * blocks) / Math.max(ms, 1e-3);
      pbkdf2Rates.set(hash, { blockItersPerMs, at: performance.now() });
      return fromRate(blockItersPerMs);
    }
    // Same growth steps as cryptsetup's crypt_pbkdf_check.
    iterations *= ms <= minMs / 8 ? 16 : ms <= minMs / 4 ? 8 : ms <= minMs / 2 ? 4 : 2;
  }
}

/**
 * cryptsetup's next_argon2_params: scale m first when growing, t first when shrinking.
 * Returns true when the estimate is final.
 */
function nextArgon2(p: { t: number; m: number }, minT: number, minM: number, maxM: number, ms: number, target: number): boolean {
  const oldT = p.t;
  const oldM = p.m;
  if (ms > target) {
    const newT = Math.floor((p.t * target) / ms);
    if (newT < minT) {
      p.m = Math.floor((p.t * p.m * target) / (minT * ms));
      p.t = minT;
      if (p.m < minM) {
        p.m = minM;
        return true;
      }
    } else {
      p.t = newT;
    }
  } else {
    const newM = Math.floor((p.m * target) / ms);
    if (newM > maxM) {
      p.t = Math.floor((p.t * p.m * target) / (maxM * ms));
      p.m = maxM;
      if (p.t <= minT) {
        p.t = minT;
        return true;
      }
    } else if (newM < minM) {
      p.m = minM;
      return true;
    } else {
      p.m = newM;
    }
  }
  return oldT === p.t && oldM === p.m;
}

async function benchmarkArgon2(options: KdfBenchmarkOptions): Promise<KdfParams> {
  const type = options.type as 'argon2i' | 'argon2id';
  const parallel = options.parallel ?? defaultArgon2Parallel();
  positiveInt(parallel, 'Argon2 parallel cost', 1, ARGON2_MAX_PARALLEL);
  const maxM = options.memoryKiB ?? defaultArgon2MemoryKiB();
  positiveInt(maxM, 'Argon2 memory cost', Math.max(ARGON2_MIN_MEMORY_KIB, 8 * parallel), ARGON2_MAX_MEMORY_KIB);
  const minT = ARGON2_MIN_TIME;
  const minM = Math.max(Math.min(ARGON2_MIN_BENCH_MEMORY_KIB, maxM), 8 * parallel);
  const target = options.targetMs;
  const minSample = options.minSampleMs ?? 250;
  const measure = (t: number, m: number) =>
    timeMs(() => deriveKey({ type, time: t, memoryKiB: m, parallel }, BENCH_PASSPHRASE, BENCH_SALT, options.keyLength));

  // 1. Grow the (small) parameters until one run takes minSample ms.
  const p = { t: minT, m: minM };
  let ms = await measure(p.t, p.m);
  for (let rounds = 0; ms < minSample && rounds < 16; rounds++) {
    if (p.m === maxM) {
      const t = ms < 10 ? p.t * 16 : Math.floor((p.t * minSample) / ms);
      if (t === p.t) break;
      p.t = t;
    } else {
      const m = ms < 10 ? p.m * 16 : Math.floor((p.m * minSample) / ms);
      if (m === p.m) break;
      p.m = Math.min(m, maxM);
    }
    ms = await measure(p.t, p.m);
  }
  // 2. Extrapolate to the target; 3. optionally measure and correct within 95..110 %.
  for (let rounds = 0; rounds < 8; rounds++) {
    if (nextArgon2(p, minT, minM, maxM, ms, target)) break;
    if (!options.refine) break;
    ms = await measure(p.t, p.m);
    if (ms >= target * 0.95 && ms <= target * 1.1) break;
  }
  return { type, time: p.t, memoryKiB: p.m, parallel };
}
