/**
 * `brickcrypt reencrypt --encrypt --type luks2 VOLUME`: in-place encryption of a plain file or
 * block device (cryptsetup's option names) over src/workflows/encrypt.ts. A regular file grows
 * by the header size; a block device needs --reduce-device-size (the room is taken from the end
 * of the data, and the output says how much). Same key input, progress, signals and volume lock
 * as the re-key.
 */
import { withCancellation } from '../cancellation.js';
import { CancelledError, InvalidArgumentError, NotImplementedError, WrongPassphraseError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { progressReporter } from './convert.js';
import type { EncryptReport } from '../../workflows/encrypt.js';
import type { PassphraseInput } from '../passphrase-prompt.js';

export interface EncryptCliOptions {
  type?: string;
  reduceDeviceSize?: string;
  header?: string;
  keySlot?: string;
  resumeOnly?: boolean;
  initOnly?: boolean;
  resilience?: string;
  resilienceHash?: string;
  hotzoneSize?: string;
  cipher?: string;
  keySize?: string;
  sectorSize?: string;
  hash?: string;
  pbkdf?: string;
  iterTime?: string;
  pbkdfForceIterations?: string;
  pbkdfMemory?: string;
  pbkdfParallel?: string;
  workers?: string;
  json?: boolean;
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}

function describe(volume: string, r: EncryptReport): string {
  const rate = r.seconds > 0 ? ` (${mib(r.bytes / r.seconds)} MiB/s)` : '';
  const lines = [
    r.finished
      ? `${volume}: encryption finished: LUKS2 ${r.encryption}, ${r.sectorSize}-byte sectors, data offset ${mib(r.dataOffset)} MiB, volume size ${mib(r.volumeSize)} MiB, keyslot ${r.keyslots.join(', ')}.`
      : `${volume}: encryption recorded (datashift); resume with \`brickcrypt reencrypt --resume-only ${volume}\` (or cryptsetup reencrypt --resume-only).`,
    `  ${mib(r.bytes)} of ${mib(r.total)} MiB encrypted in ${r.seconds.toFixed(1)} s${rate}${r.recovered ? '; an interrupted step was redone first' : ''}${r.started ? '' : '; resumed a recorded encryption'}.`,
  ];
  if (r.grownBytes > 0) lines.push(`  The file grew by ${mib(r.grownBytes)} MiB for the header and the moved data; it is cut back to header + data when finished.`);
  if (r.lostBytes > 0) lines.push(`  --reduce-device-size: the last ${mib(r.lostBytes)} MiB of the device were given up (${r.lostBytes} bytes); only the first ${mib(r.total)} MiB of the old data are kept.`);
  return lines.join('\n') + '\n';
}

/** Runs the encryption for the `reencrypt` command's action. */
export async function runEncrypt(volume: string, o: EncryptCliOptions, input: PassphraseInput, tries: number): Promise<void> {
  if (o.type !== undefined && o.type !== 'luks2') {
    if (o.type === 'luks1') throw new NotImplementedError('In-place encryption to LUKS1 is not built; use --type luks2.');
    throw new InvalidArgumentError(`--type must be luks2, not ${o.type}.`);
  }
  const detached = o.header !== undefined;
  const resilience = o.resilience === undefined ? undefined : parseChoice(o.resilience, 'resilience', ['checksum', 'journal', 'none', 'datashift'] as const);
  if (resilience !== undefined && (resilience === 'datashift') !== !detached) {
    throw new InvalidArgumentError(
      detached
        ? 'With a detached header the data does not move: use resilience checksum (default), journal or none.'
        : `In-place encryption without a detached header uses resilience datashift (the data moves by the header size), not ${resilience}.`,
    );
  }
  if (o.resumeOnly && o.initOnly) throw new InvalidArgumentError('Give --resume-only or --init-only, not both.');
  const json = o.json === true;
  const { encryptVolume } = await import('../../workflows/encrypt.js');
  const progress = progressReporter(json, 'encrypt');
  const lock = await VolumeLock.acquire(volume);
  let report: EncryptReport | undefined;
  try {
    for (let attempt = 1; ; attempt++) {
      const passphrase = await input.read();
      try {
        report = await withCancellation((signal) =>
          encryptVolume(volume, {
            passphrases: [passphrase],
            ...(o.header !== undefined ? { header: o.header } : {}),
            ...(o.keySlot !== undefined ? { keyslot: parseInteger(o.keySlot, 'key-slot', 0, 31) } : {}),
            ...(o.reduceDeviceSize !== undefined ? { reduceDeviceSize: parseSize(o.reduceDeviceSize, 'reduce-device-size') } : {}),
            ...(o.resumeOnly ? { resumeOnly: true } : {}),
            ...(o.initOnly ? { initOnly: true } : {}),
            ...(resilience !== undefined && resilience !== 'datashift' ? { resilience } : {}),
            ...(o.resilienceHash !== undefined ? { resilienceHash: o.resilienceHash } : {}),
            ...(o.hotzoneSize !== undefined ? { hotzoneSize: parseSize(o.hotzoneSize, 'hotzone-size') } : {}),
            ...(o.cipher !== undefined ? { cipher: o.cipher } : {}),
            ...(o.keySize !== undefined ? { keySizeBits: parseInteger(o.keySize, 'key-size', 128, 4096) } : {}),
            ...(o.sectorSize !== undefined ? { sectorSize: parseInteger(o.sectorSize, 'sector-size', 512, 4096) } : {}),
            ...(o.hash !== undefined ? { hash: o.hash } : {}),
            ...(o.pbkdf !== undefined ? { pbkdf: parseChoice(o.pbkdf, 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const) } : {}),
            ...(o.iterTime !== undefined ? { iterTimeMs: parseInteger(o.iterTime, 'iter-time', 1) } : {}),
            ...(o.pbkdfForceIterations !== undefined ? { iterations: parseInteger(o.pbkdfForceIterations, 'pbkdf-force-iterations', 1, 0xffffffff) } : {}),
            ...(o.pbkdfMemory !== undefined ? { memoryKiB: parseInteger(o.pbkdfMemory, 'pbkdf-memory', 32, 4 * 1024 * 1024) } : {}),
            ...(o.pbkdfParallel !== undefined ? { parallel: parseInteger(o.pbkdfParallel, 'pbkdf-parallel', 1, 16) } : {}),
            ...(o.workers !== undefined ? { workers: parseInteger(o.workers, 'workers', 0, 64) } : {}),
            signal,
            onProgress: ({ done, total }) => progress.update({ bytes: done, total }),
          }),
        );
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
      process.stderr.write(`${volume}: encryption stopped at a consistent point; resume with \`brickcrypt reencrypt --resume-only ${volume}\`.\n`);
    }
    throw err;
  } finally {
    progress.stop();
    await lock.release();
  }
  const peakRssBytes = process.resourceUsage().maxRSS * 1024;
  if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report, peakRssBytes }) + '\n');
  else process.stdout.write(describe(volume, report!));
}
