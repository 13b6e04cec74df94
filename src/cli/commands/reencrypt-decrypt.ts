/**
 * `brickcrypt reencrypt --decrypt VOLUME` (and the resume of a recorded decryption): the
 * volume becomes plain data, over src/workflows/decrypt.ts. Same key options, progress,
 * SIGINT/SIGTERM stop at a zone boundary and volume lock as the re-key.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { InvalidArgumentError, LockedError } from '../../errors.js';
import { controlPathFor, requestOnlineReencrypt } from '../../workflows/reencrypt-online.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { parseChoice } from '../parse.js';
import type { DecryptVolumeReport } from '../../workflows/decrypt.js';
import { commonEngineOptions, runMode, type ReencryptCliOptions } from './reencrypt-run.js';

export type DecryptCliOptions = ReencryptCliOptions;

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

/** The volume lock, or the control socket of the live `attach` process that holds it. */
export async function lockOrOnline(volume: string): Promise<{ lock?: VolumeLock; ctl?: string }> {
  try {
    return { lock: await VolumeLock.acquire(volume) };
  } catch (err) {
    const ctl = controlPathFor(resolve(volume));
    if (!(err instanceof LockedError) || !existsSync(ctl)) throw err;
    return { ctl };
  }
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
  // The lock comes before anything is written (the export of an attached header); a volume
  // served by `attach` is decrypted by that process instead (docs/reencrypt.md, "Online").
  const held = await lockOrOnline(volume);
  await runMode<DecryptVolumeReport>({
    volume,
    o,
    input,
    label: 'decrypt',
    noun: 'decryption',
    ...(held.lock ? { lock: held.lock } : {}),
    ...(o.header !== undefined ? { resumeHint: ` --header ${o.header}` } : {}),
    run: (passphrase, signal, onProgress) => {
      const { header: _h, workers: _w, ...engine } = commonEngineOptions(o);
      return held.ctl !== undefined
        ? requestOnlineReencrypt<DecryptVolumeReport>(held.ctl, passphrase, {
            ...engine,
            decrypt: true,
            ...(o.header !== undefined ? { header: resolve(o.header) } : {}),
            ...(res !== undefined ? { resilience: res } : {}),
            signal,
            onProgress,
          })
        : decryptVolume(volume, {
            passphrases: [passphrase],
            ...commonEngineOptions(o),
            ...(res !== undefined ? { resilience: res } : {}),
            signal,
            onProgress,
          });
    },
    describe: (r) => describe(volume, r),
  });
}
