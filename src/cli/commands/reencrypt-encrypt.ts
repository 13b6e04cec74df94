/**
 * `brickcrypt reencrypt --encrypt --type luks2|luks1 VOLUME`: in-place encryption of a plain file
 * or block device (cryptsetup's option names) over src/workflows/encrypt.ts (LUKS1: through a
 * LUKS2 encryption converted at the end, src/luks/reencrypt/encrypt-luks1.ts). A regular file
 * grows by the header size; a block device needs --reduce-device-size (the room is taken from
 * the end of the data, and the output says how much) or --header. Same key input, progress,
 * signals and volume lock as the re-key.
 */
import { resolve } from 'node:path';
import { InvalidArgumentError, NotImplementedError } from '../../errors.js';
import { lockOrOnline } from './reencrypt-decrypt.js';
import { requestOnlineReencrypt } from '../../workflows/reencrypt-online.js';
import { parseChoice, parseSize } from '../parse.js';
import { commonEngineOptions, newEncryptionOptions, runMode, type ReencryptCliOptions } from './reencrypt-run.js';
import type { EncryptReport } from '../../workflows/encrypt.js';
import type { PassphraseInput } from '../passphrase-prompt.js';
import type { EncryptPlainOptions } from '../../workflows/plain-to-luks2.js';
import type { VolumeKey } from '../../secret.js';
import { plainSourceFrom } from '../plain-options.js';
import { passphraseFromKeyManager } from '../key-manager-options.js';

export type EncryptCliOptions = ReencryptCliOptions;

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}

function describe(volume: string, r: EncryptReport): string {
  const rate = r.seconds > 0 ? ` (${mib(r.bytes / r.seconds)} MiB/s)` : '';
  const lines = [
    r.finished
      ? `${volume}: encryption finished: ${r.type === 'luks1' ? 'LUKS1' : 'LUKS2'} ${r.encryption}, ${r.sectorSize}-byte sectors, data offset ${mib(r.dataOffset)} MiB, volume size ${mib(r.volumeSize)} MiB, keyslot ${r.keyslots.join(', ')}.`
      : r.type === 'luks1'
        ? `${volume}: encryption to LUKS1 recorded (${r.resilience}); resume with \`brickcrypt reencrypt --resume-only ${volume}\` (cryptsetup reencrypt --resume-only finishes only its LUKS2 phase; brickcrypt then converts).`
        : `${volume}: encryption recorded (datashift); resume with \`brickcrypt reencrypt --resume-only ${volume}\` (or cryptsetup reencrypt --resume-only).`,
    `  ${mib(r.bytes)} of ${mib(r.total)} MiB encrypted in ${r.seconds.toFixed(1)} s${rate}${r.recovered ? '; an interrupted step was redone first' : ''}${r.started ? '' : '; resumed a recorded encryption'}.`,
  ];
  if (r.grownBytes > 0) lines.push(`  The file grew by ${mib(r.grownBytes)} MiB for the header and the moved data; it is cut back to header + data when finished.`);
  if (r.type === 'luks1' && r.finished) lines.push(`  Encrypted as LUKS2 and converted to LUKS1 in place (512-byte sectors, pbkdf2 keyslot${r.keyslots.length === 1 ? '' : 's'}).`);
  if (r.lostBytes > 0) lines.push(`  --reduce-device-size: the last ${mib(r.lostBytes)} MiB of the device were given up (${r.lostBytes} bytes); only the first ${mib(r.total)} MiB of the old data are kept.`);
  return lines.join('\n') + '\n';
}

/**
 * With `--src-format plain`: the plain dm-crypt volume's parameters and key (read once, before
 * the LUKS passphrase), and the conversion that decrypts it in memory (src/workflows/plain-to-luks2.ts).
 */
async function plainSourceOf(volume: string, o: EncryptCliOptions): Promise<{ key: VolumeKey; run: (options: Omit<EncryptPlainOptions, 'plain' | 'plainKey'>) => Promise<EncryptReport> } | undefined> {
  const given = Object.keys(o).filter((k) => /^src[A-Z]/.test(k) && k !== 'srcFormat' && (o as Record<string, unknown>)[k] !== undefined);
  if (o.srcFormat === undefined) {
    if (given.length > 0) throw new InvalidArgumentError('--src-cipher, --src-key-file etc. describe a plain dm-crypt volume: they need --src-format plain.');
    return undefined;
  }
  if (o.srcFormat !== 'plain') throw new InvalidArgumentError(`--src-format: in-place encryption converts plaintext (no option) or a plain dm-crypt volume (plain), not ${o.srcFormat}.`);
  if (o.header !== undefined) throw new InvalidArgumentError('Converting a plain dm-crypt volume in place puts the LUKS2 header on the device: --header is not supported with --src-format plain.');
  if (o.srcKeyFile !== undefined && o.srcKeyId !== undefined) throw new InvalidArgumentError('Give one of --src-key-file or --src-key-id.');
  const srcKeyId = o.srcKeyId;
  const source = plainSourceFrom(o as Record<string, unknown>, 'src-', {
    ...(o.srcKeyFile !== undefined ? { keyFile: o.srcKeyFile } : {}),
    ...(srcKeyId !== undefined ? { managed: () => passphraseFromKeyManager(o, srcKeyId) } : {}),
    prompt: `Enter passphrase of the plain volume ${volume}: `,
  });
  const key = await source.key();
  const { encryptPlainVolume } = await import('../../workflows/plain-to-luks2.js');
  return { key, run: (options) => encryptPlainVolume(volume, { ...options, plain: source.params, plainKey: key }) };
}

/** Runs the encryption for the `reencrypt` command's action. */
export async function runEncrypt(volume: string, o: EncryptCliOptions, input: PassphraseInput): Promise<void> {
  const type = o.type === undefined ? undefined : parseChoice(o.type, 'type', ['luks2', 'luks1'] as const);
  if (type === 'luks1' && o.srcFormat !== undefined) throw new NotImplementedError('Converting a plain dm-crypt volume in place to LUKS1 is not built; use --type luks2.');
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
  const { encryptVolume } = await import('../../workflows/encrypt.js');
  const plain = await plainSourceOf(volume, o);
  try {
    // A raw file served by `attach --online-encrypt` is encrypted by that process (docs/reencrypt.md, "Online").
    const held = await lockOrOnline(volume);
    if (held.ctl !== undefined && plain) throw new NotImplementedError('Online conversion of a plain dm-crypt volume is not built; detach it first.');
    await runMode<EncryptReport>({
      volume,
      o,
      input,
      label: 'encrypt',
      noun: 'encryption',
      ...(held.lock ? { lock: held.lock } : {}),
      run: (passphrase, signal, onProgress) => {
        if (held.ctl !== undefined) {
          const { header: _h, workers: _w, ...engine } = commonEngineOptions(o);
          if (o.reduceDeviceSize !== undefined) throw new NotImplementedError('Online encryption with --reduce-device-size (a data shift) is not built.');
          return requestOnlineReencrypt<EncryptReport>(held.ctl, passphrase, {
            ...engine,
            ...newEncryptionOptions(o),
            encrypt: true,
            ...(o.header !== undefined ? { header: resolve(o.header) } : {}),
            ...(resilience !== undefined && resilience !== 'datashift' ? { resilience } : {}),
            signal,
            onProgress,
          });
        }
        const options = {
          passphrases: [passphrase],
          ...commonEngineOptions(o),
          ...newEncryptionOptions(o),
          ...(o.reduceDeviceSize !== undefined ? { reduceDeviceSize: parseSize(o.reduceDeviceSize, 'reduce-device-size') } : {}),
          ...(resilience !== undefined && resilience !== 'datashift' ? { resilience } : {}),
          ...(type !== undefined ? { type } : {}),
          signal,
          onProgress,
        };
        return plain ? plain.run(options) : encryptVolume(volume, options);
      },
      describe: (r) => describe(volume, r),
    });
  } finally {
    plain?.key.wipe();
  }
}
