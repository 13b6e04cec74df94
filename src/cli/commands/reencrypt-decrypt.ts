/**
 * `brickcrypt reencrypt --decrypt VOLUME` (and the resume of a recorded decryption): the
 * volume becomes plain data, over src/workflows/decrypt.ts. Same key options, progress,
 * SIGINT/SIGTERM stop at a zone boundary and volume lock as the re-key.
 */
import { existsSync } from 'node:fs';
import { withCancellation } from '../cancellation.js';
import { CancelledError, InvalidArgumentError, WrongPassphraseError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import type { KeyManagerCliOptions } from '../key-manager-options.js';
import { DEFAULT_TRIES } from '../passphrase-prompt.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { progressReporter } from './convert.js';
import type { DecryptVolumeReport } from '../../workflows/decrypt.js';
import type { Passphrase } from '../../secret.js';

export interface DecryptCliOptions extends KeyManagerCliOptions {
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
  workers?: string;
  json?: boolean;
}

/** True when `reencrypt` on this volume means a decryption: --decrypt, or one is recorded. */
export async function isDecryption(volume: string, o: DecryptCliOptions): Promise<boolean> {
  if (o.decrypt) return true;
  if (o.encrypt) return false;
  const { recordedDecryptionHeader } = await import('../../workflows/decrypt.js');
  return (await recordedDecryptionHeader(volume, o.header)) !== undefined;
}

function describe(volume: string, r: DecryptVolumeReport): string {
  const mib = (n: number) => (n / (1024 * 1024)).toFixed(1);
  const rate = r.seconds > 0 && r.bytes > 0 ? ` (${mib(r.bytes / r.seconds)} MiB/s)` : '';
  const lines: string[] = [];
  if (r.finished) {
    lines.push(`${volume}: decryption finished: ${mib(r.total)} MiB of plaintext${r.shift > 0 ? ' at offset 0' : ''}; the volume is no longer LUKS.`);
    if (r.truncated) lines.push(`  The file was cut by the old data offset (${r.shift} bytes).`);
    lines.push(r.headerRemoved ? `  The temporary header file ${r.header} was removed.` : `  The header file ${r.header} holds no key any more; it can be deleted.`);
  } else {
    const hint = r.header === `${volume}.decrypt-header` ? '' : ` --header ${r.header}`;
    lines.push(`${volume}: decryption recorded (${r.resilience}) in ${r.header}; resume with \`brickcrypt reencrypt --resume-only ${volume}${hint}\`.`);
  }
  lines.push(`  ${mib(r.bytes)} of ${mib(r.total)} MiB decrypted in ${r.seconds.toFixed(1)} s${rate}${r.recovered ? '; an interrupted hot zone was recovered first' : ''}${r.started ? '' : '; resumed a recorded decryption'}.`);
  return lines.join('\n') + '\n';
}

export async function decryptAction(volume: string, o: DecryptCliOptions): Promise<void> {
  if (o.encrypt) throw new InvalidArgumentError('Give --encrypt or --decrypt, not both.');
  if (o.type !== undefined || o.reduceDeviceSize !== undefined) throw new InvalidArgumentError('--type and --reduce-device-size belong to --encrypt, not --decrypt.');
  if (o.cipher !== undefined || o.keySize !== undefined || o.sectorSize !== undefined) throw new InvalidArgumentError('--cipher, --key-size and --sector-size do not apply to --decrypt.');
  if (o.resumeOnly && o.initOnly) throw new InvalidArgumentError('Give --resume-only or --init-only, not both.');
  const resilience = o.resilience === undefined ? undefined : parseChoice(o.resilience, 'resilience', ['checksum', 'journal', 'none', 'datashift-checksum', 'datashift-journal'] as const);
  const res = resilience === 'datashift-checksum' ? 'checksum' : resilience === 'datashift-journal' ? 'journal' : resilience;
  const { decryptVolume, defaultDecryptHeaderPath } = await import('../../workflows/decrypt.js');
  const headerPath = o.header ?? defaultDecryptHeaderPath(volume);
  const { oldKeyInput } = await import('./luks.js');
  // The passphrase (or token) comes from the header file once it exists, else from the volume.
  const input = await oldKeyInput(existsSync(headerPath) ? { ...o, header: headerPath } : { ...o, header: undefined }, volume);
  const tries = input.interactive ? (o.tries === undefined ? DEFAULT_TRIES : parseInteger(o.tries, 'tries', 1, 1000)) : 1;
  const json = o.json === true;
  const progress = progressReporter(json, 'decrypt');
  const lock = await VolumeLock.acquire(volume);
  let report: DecryptVolumeReport | undefined;
  try {
    for (let attempt = 1; ; attempt++) {
      const passphrase: Passphrase = await input.read();
      try {
        report = await withCancellation((signal) =>
          decryptVolume(volume, {
            passphrases: [passphrase],
            ...(o.header !== undefined ? { header: o.header } : {}),
            ...(o.keySlot !== undefined ? { keyslot: parseInteger(o.keySlot, 'key-slot', 0, 31) } : {}),
            ...(o.resumeOnly ? { resumeOnly: true } : {}),
            ...(o.initOnly ? { initOnly: true } : {}),
            ...(res !== undefined ? { resilience: res } : {}),
            ...(o.resilienceHash !== undefined ? { resilienceHash: o.resilienceHash } : {}),
            ...(o.hotzoneSize !== undefined ? { hotzoneSize: parseSize(o.hotzoneSize, 'hotzone-size') } : {}),
            ...(o.hash !== undefined ? { hash: o.hash } : {}),
            ...(o.pbkdf !== undefined ? { pbkdf: parseChoice(o.pbkdf, 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const) } : {}),
            ...(o.iterTime !== undefined ? { iterTimeMs: parseInteger(o.iterTime, 'iter-time', 1) } : {}),
            ...(o.pbkdfForceIterations !== undefined ? { iterations: parseInteger(o.pbkdfForceIterations, 'pbkdf-force-iterations', 1, 0xffffffff) } : {}),
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
      const hint = o.header !== undefined ? ` --header ${o.header}` : '';
      process.stderr.write(`${volume}: decryption stopped at a consistent point; resume with \`brickcrypt reencrypt --resume-only ${volume}${hint}\`.\n`);
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
