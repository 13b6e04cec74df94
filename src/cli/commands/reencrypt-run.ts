/**
 * What every mode of `brickcrypt reencrypt` (re-key, --encrypt, --decrypt) shares: the options
 * commander hands over, the options common to the engines (keyslot, resilience, hot zone, KDF of
 * new keyslots, workers), and the run itself — passphrase tries, Ctrl-C/SIGTERM at a consistent
 * point, the progress bar or JSON lines, the volume lock, and the summary.
 */
import { withCancellation } from '../cancellation.js';
import { CancelledError, WrongPassphraseError } from '../../errors.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { progressReporter } from './convert.js';
import type { KeyManagerCliOptions } from '../key-manager-options.js';
import type { PassphraseInput } from '../passphrase-prompt.js';
import { DEFAULT_TRIES } from '../passphrase-prompt.js';
import type { Passphrase } from '../../secret.js';
import type { KdfOptions } from '../../luks/options.js';

/** The options of `brickcrypt reencrypt` as commander parses them. */
export interface ReencryptCliOptions extends KeyManagerCliOptions {
  keyFile?: string;
  keyfileOffset?: string;
  keyfileSize?: string;
  keyId?: string;
  keySlot?: string;
  tries?: string;
  resumeOnly?: boolean;
  initOnly?: boolean;
  resilience?: string;
  resilienceHash?: string;
  hotzoneSize?: string;
  cipher?: string;
  keySize?: string;
  sectorSize?: string;
  encrypt?: boolean;
  decrypt?: boolean;
  type?: string;
  reduceDeviceSize?: string;
  header?: string;
  hash?: string;
  pbkdf?: string;
  iterTime?: string;
  pbkdfForceIterations?: string;
  pbkdfMemory?: string;
  pbkdfParallel?: string;
  workers?: string;
  json?: boolean;
  /** `plain`: --encrypt of a plain dm-crypt volume (see the --src-* options). */
  srcFormat?: string;
  srcKeyFile?: string;
  srcKeyId?: string;
}

/** The engine options every mode takes the same way (keyslot, run control, hot zone, KDF, workers). */
export function commonEngineOptions(o: ReencryptCliOptions): KdfOptions & { header?: string; keyslot?: number; resumeOnly?: boolean; initOnly?: boolean; resilienceHash?: string; hotzoneSize?: number; workers?: number } {
  return {
    ...(o.header !== undefined ? { header: o.header } : {}),
    ...(o.keySlot !== undefined ? { keyslot: parseInteger(o.keySlot, 'key-slot', 0, 31) } : {}),
    ...(o.resumeOnly ? { resumeOnly: true } : {}),
    ...(o.initOnly ? { initOnly: true } : {}),
    ...(o.resilienceHash !== undefined ? { resilienceHash: o.resilienceHash } : {}),
    ...(o.hotzoneSize !== undefined ? { hotzoneSize: parseSize(o.hotzoneSize, 'hotzone-size') } : {}),
    ...(o.hash !== undefined ? { hash: o.hash } : {}),
    ...(o.pbkdf !== undefined ? { pbkdf: parseChoice(o.pbkdf, 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const) } : {}),
    ...(o.iterTime !== undefined ? { iterTimeMs: parseInteger(o.iterTime, 'iter-time', 1) } : {}),
    ...(o.pbkdfForceIterations !== undefined ? { iterations: parseInteger(o.pbkdfForceIterations, 'pbkdf-force-iterations', 1, 0xffffffff) } : {}),
    ...(o.pbkdfMemory !== undefined ? { memoryKiB: parseInteger(o.pbkdfMemory, 'pbkdf-memory', 32, 4 * 1024 * 1024) } : {}),
    ...(o.pbkdfParallel !== undefined ? { parallel: parseInteger(o.pbkdfParallel, 'pbkdf-parallel', 1, 16) } : {}),
    ...(o.workers !== undefined ? { workers: parseInteger(o.workers, 'workers', 0, 64) } : {}),
  };
}

/** --cipher, --key-size, --sector-size of the new encryption (re-key and --encrypt). */
export function newEncryptionOptions(o: ReencryptCliOptions): { cipher?: string; keySizeBits?: number; sectorSize?: number } {
  return {
    ...(o.cipher !== undefined ? { cipher: o.cipher } : {}),
    ...(o.keySize !== undefined ? { keySizeBits: parseInteger(o.keySize, 'key-size', 128, 4096) } : {}),
    ...(o.sectorSize !== undefined ? { sectorSize: parseInteger(o.sectorSize, 'sector-size', 512, 4096) } : {}),
  };
}

/** How often a typed passphrase may be retried (a key file or key id is tried once). */
export function triesOf(o: ReencryptCliOptions, input: PassphraseInput): number {
  return input.interactive ? (o.tries === undefined ? DEFAULT_TRIES : parseInteger(o.tries, 'tries', 1, 1000)) : 1;
}

export interface ModeRun<R> {
  volume: string;
  o: ReencryptCliOptions;
  input: PassphraseInput;
  /** The progress label and the word of the messages: reencrypt/reencryption, encrypt/encryption, ... */
  label: string;
  noun: string;
  /** The volume lock (or nothing, when another process holds it and does the work). */
  lock?: { release(): Promise<void> };
  /** Added to the resume hint after a stop (e.g. " --header FILE"). */
  resumeHint?: string;
  run(passphrase: Passphrase, signal: AbortSignal, onProgress: (p: { done: number; total: number }) => void): Promise<R>;
  describe(report: R): string;
}

/**
 * Runs one mode: each passphrase try (a wrong one is retried up to --tries when typed), stopped
 * cleanly by Ctrl-C/SIGTERM (the engines stop at a zone boundary, exit 130), then the summary:
 * one JSON line with the peak RSS, or the mode's text.
 */
export async function runMode<R extends object>(m: ModeRun<R>): Promise<void> {
  const json = m.o.json === true;
  const tries = triesOf(m.o, m.input);
  const progress = progressReporter(json, m.label);
  let report: R | undefined;
  try {
    for (let attempt = 1; ; attempt++) {
      const passphrase = await m.input.read();
      try {
        report = await withCancellation((signal) => m.run(passphrase, signal, ({ done, total }) => progress.update({ bytes: done, total })));
        break;
      } catch (err) {
        if (!(err instanceof WrongPassphraseError) || attempt >= tries) throw err;
        process.stderr.write('No key available with this passphrase.\n');
      } finally {
        passphrase.wipe();
      }
    }
  } catch (err) {
    if (err instanceof CancelledError) {
      progress.stop();
      process.stderr.write(`${m.volume}: ${m.noun} stopped at a consistent point; resume with \`brickcrypt reencrypt --resume-only ${m.volume}${m.resumeHint ?? ''}\`.\n`);
    }
    throw err;
  } finally {
    progress.stop();
    await m.lock?.release();
  }
  const peakRssBytes = process.resourceUsage().maxRSS * 1024;
  if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report, peakRssBytes }) + '\n');
  else process.stdout.write(m.describe(report!));
}
