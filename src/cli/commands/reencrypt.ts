/**
 * `brickcrypt reencrypt VOLUME`: in-place re-encryption of a LUKS2 volume under a new volume key
 * (cryptsetup reencrypt's option names), over src/workflows/reencrypt.ts. Progress is a bar on a
 * TTY (stderr) or JSON lines with `--json`; SIGINT/SIGTERM stop at the next zone boundary, where
 * the header records a consistent, resumable state; the volume's writer lock is held throughout.
 */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { InvalidArgumentError, LockedError, NotImplementedError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { addKeyManagerOptions, KEY_MANAGER_HELP } from '../key-manager-options.js';
import { commonEngineOptions, newEncryptionOptions, runMode, type ReencryptCliOptions } from './reencrypt-run.js';
import { addKeyfileRangeOptions, addPlainOptions } from '../plain-options.js';
import type { PassphraseInput } from '../passphrase-prompt.js';
import { parseChoice } from '../parse.js';
import type { ReencryptReport, ReencryptVolumeOptions } from '../../workflows/reencrypt.js';


/**
 * The passphrase: --key-id, --key-file, the volume's brickcrypt-key-manager token, or typed at a
 * terminal, in that order — the same rule as every other command that opens a volume.
 */
async function keyInput(o: ReencryptCliOptions, volume: string): Promise<PassphraseInput> {
  const { oldKeyInput } = await import('./luks.js');
  return oldKeyInput(o, volume);
}

/**
 * The volume's writer lock, or — when a live `attach` holds it and listens on VOLUME.ctl — the
 * request to that process instead (`--header` must then be the one it serves; `--workers` is its own).
 */
async function acquireOrOnline(volume: string, o: ReencryptCliOptions): Promise<{ lock?: VolumeLock; online?: (v: string, options: ReencryptVolumeOptions) => Promise<ReencryptReport> }> {
  try {
    return { lock: await VolumeLock.acquire(volume) };
  } catch (err) {
    if (!(err instanceof LockedError)) throw err;
    const { controlPathFor, requestOnlineReencrypt } = await import('../../workflows/reencrypt-online.js');
    const ctl = controlPathFor(resolve(volume));
    if (!existsSync(ctl)) throw err;
    // `--resume-only --header H` of an encryption the server started online (and was stopped) resumes that.
    const { encryptionRecorded } = await import('../../workflows/encrypt.js');
    const encrypting = o.header !== undefined && (await encryptionRecorded(volume, false, o.header));
    if (o.header !== undefined && !encrypting) throw new InvalidArgumentError(`${volume} is attached: it is re-keyed online with the header it is served with; leave out --header.`);
    return {
      online: (_v, { passphrases, header: _h, workers: _w, onProgress, signal, ...rest }) =>
        requestOnlineReencrypt(ctl, passphrases[0]!, { ...rest, ...(encrypting ? { encrypt: true, header: resolve(o.header!) } : {}), ...(onProgress ? { onProgress } : {}), ...(signal ? { signal } : {}) }),
    };
  }
}

function describe(volume: string, r: ReencryptReport): string {
  const mib = (n: number) => (n / (1024 * 1024)).toFixed(1);
  const rate = r.seconds > 0 ? ` (${mib(r.bytes / r.seconds)} MiB/s)` : '';
  const lines = [
    r.finished
      ? `${volume}: reencryption finished: ${r.encryption}, ${r.sectorSize}-byte sectors, new volume key in keyslot${r.keyslots.length === 1 ? '' : 's'} ${r.keyslots.join(', ')}.`
      : `${volume}: reencryption recorded (${r.resilience}); resume with \`brickcrypt reencrypt --resume-only ${volume}\`.`,
    `  ${mib(r.bytes)} of ${mib(r.total)} MiB rewritten in ${r.seconds.toFixed(1)} s${rate}${r.recovered ? '; an interrupted hot zone was recovered first' : ''}${r.started ? '' : '; resumed a recorded reencryption'}.`,
  ];
  return lines.join('\n') + '\n';
}

export function register(program: Command): void {
  const cmd = program
    .command('reencrypt')
    .description('Re-encrypt a volume in place (cryptsetup reencrypt): re-key LUKS2/LUKS1, --encrypt plain data into LUKS2 or LUKS1 (a plain dm-crypt volume into LUKS2), --decrypt to plain; crash-safe and resumable, also by cryptsetup.')
    .argument('<volume>', 'volume file or block device')
    .option('--key-file <file>', "passphrase file ('-' = stdin); the same passphrase opens the new keyslots")
    .option('--keyfile-offset <bytes>', 'skip this many bytes of the key file')
    .option('--keyfile-size <bytes>', 'read at most this many bytes of the key file')
    .option('--key-id <id>', 'managed key whose LUKS passphrase opens the volume (see --key-manager)')
    .option('--key-slot <n>', 'keep only this keyslot (the others are removed when the reencryption finishes)')
    .option('--tries <n>', 'how often a passphrase typed at the terminal may be retried (default 3)')
    .option('--resume-only', 'only continue a recorded (interrupted) reencryption')
    .option('--init-only', 'only record the reencryption (new keyslots and state); rewrite no data')
    .option('--resilience <mode>', 'hot zone protection: checksum (default), journal, none; datashift (--encrypt/--decrypt without a detached header, the default there)')
    .option('--resilience-hash <hash>', 'checksum resilience hash (default sha256)')
    .option('--hotzone-size <size>', 'largest hot zone, e.g. 64M (default 48 MiB, within what the resilience area holds)')
    .option('--cipher <spec>', 'new cipher, e.g. aes-xts-plain64 (default: the current one)')
    .option('--key-size <bits>', 'new volume key size in bits (default: the current one)')
    .option('--sector-size <bytes>', 'new encryption sector size: 512, 1024, 2048 or 4096 (default: the current one)')
    .option('--header <file>', 'detached LUKS2 header; with --decrypt of an attached header: where it is exported')
    .option('--encrypt', 'encrypt a plain file or device in place into LUKS2 or LUKS1 (--type; a file grows by the header size)')
    .option('--decrypt', 'decrypt a LUKS2 device in place (header kept in --header FILE, default VOLUME.decrypt-header)')
    .option('--type <type>', 'with --encrypt: luks2 (default) or luks1 (512-byte sectors, pbkdf2; made as LUKS2 and converted in place)')
    .option('--reduce-device-size <size>', 'with --encrypt: room for the header taken from the device end (needed on a block device; half of it becomes the header)')
    .option('--src-format <format>', 'with --encrypt: plain when the device is a plain dm-crypt volume (converted to LUKS2 without writing plaintext; see --src-cipher)')
    .option('--src-key-file <file>', 'with --src-format plain: the plain volume\'s key file, or - (hashed with --src-hash)')
    .option('--src-key-id <id>', 'with --src-format plain: managed key whose hex passphrase is the plain volume\'s key input (os-brick)')
    .option('--hash <name>', 'PBKDF2 hash of the new keyslots')
    .option('--pbkdf <type>', 'KDF of the new keyslots: pbkdf2, argon2i or argon2id')
    .option('--iter-time <ms>', 'keyslot unlock time target in milliseconds')
    .option('--pbkdf-force-iterations <n>', 'fixed PBKDF iterations / Argon2 time cost (no benchmark)')
    .option('--pbkdf-memory <kib>', 'Argon2 memory cost in KiB')
    .option('--pbkdf-parallel <n>', 'Argon2 lanes')
    .option('--workers <n>', 'crypto worker threads (default: one per core)')
    .option('--json', 'JSON progress lines and a JSON summary on stdout');
  addPlainOptions(cmd, 'src-', 'with --src-format plain, the plain volume');
  addKeyfileRangeOptions(cmd, 'src-');
  addKeyManagerOptions(cmd, { help: false });
  cmd
    .addHelpText('after', `
Examples:
  brickcrypt reencrypt vol.img --key-file pass.txt                      (new volume key, same cipher)
  brickcrypt reencrypt vol.img --key-file pass.txt --cipher aes-xts-plain64 --key-size 256 --sector-size 4096
  brickcrypt reencrypt vol.img --key-file pass.txt --resilience journal --hotzone-size 16M
  brickcrypt reencrypt vol.img --key-id ID --key-manager barbican+https://kms:9311 --key-slot 0
  brickcrypt reencrypt --resume-only vol.img --key-file pass.txt        (after a crash, kill or Ctrl-C)
  brickcrypt reencrypt --encrypt --type luks2 disk.img --key-file pass.txt   (encrypt a plain file in place; it grows by 16 MiB)
  brickcrypt reencrypt --encrypt --type luks2 --reduce-device-size 32M /dev/sdX1 --key-file pass.txt
  brickcrypt reencrypt --encrypt --type luks1 disk.img --key-file pass.txt   (LUKS1: the file grows by 2 MiB, its payload offset)
  brickcrypt reencrypt --decrypt vol.img --key-file pass.txt            (to plain data; the header waits in vol.img.decrypt-header)
  brickcrypt reencrypt --decrypt vol.img --header vol.hdr --key-file pass.txt   (detached header, or where to export it)
  brickcrypt reencrypt --encrypt disk.plain --key-file pass.txt --src-format plain --src-key-size 512 --src-key-file plain.key

The state on disk is cryptsetup 2.6's own (online-reencrypt-v2): a reencryption either tool started
can be finished by the other ("cryptsetup reencrypt --resume-only"; after a crash inside a hot zone
cryptsetup wants "cryptsetup repair" first, brickcrypt recovers it by itself). Until it finishes,
commands that read the data (convert, verify, attach) refuse the volume. The passphrase must open
every keyslot of the volume key, or name the one to keep with --key-slot; each gets a new keyslot
(new number) for the new key, and the old keyslots and key are removed at the end.
Resilience: checksum and journal survive a crash at any instant; none is safe only against
Ctrl-C/SIGTERM (it stops at a zone boundary). A volume served by "brickcrypt attach" is re-keyed
online by the attach process (clients keep reading and writing; default hot zone 16 MiB); so is
--decrypt --header H of a volume served with "attach --header H", and --encrypt --header H of a raw
file served with "attach --online-encrypt". If this command is killed the server goes on, Ctrl-C
stops it at a zone boundary. See docs/reencrypt.md.
A LUKS1 volume is converted in place to LUKS2, re-keyed and converted back to LUKS1 (512-byte
sectors, pbkdf2 keyslots keeping their numbers); a crash in any phase is resumed by the next run.
--encrypt --type luks1 encrypts as LUKS2 with a layout LUKS1 can hold (payload at 2 MiB, or 1 MiB
for 128-bit keys) and converts the header at the end; a resume, with or without --type, ends as LUKS1.
${KEY_MANAGER_HELP}`)
    .action(async (volume: string, o: ReencryptCliOptions) => {
      if (o.encrypt && o.decrypt) throw new InvalidArgumentError('Give --encrypt or --decrypt, not both.');
      if (o.encrypt || o.srcFormat !== undefined) {
        const input = await keyInput(o, volume);
        const { runEncrypt } = await import('./reencrypt-encrypt.js');
        return runEncrypt(volume, o, input);
      }
      const decrypt = await import('./reencrypt-decrypt.js');
      if (await decrypt.isDecryption(volume, o)) return decrypt.decryptAction(volume, o);
      if (o.type !== undefined || o.reduceDeviceSize !== undefined) {
        throw new InvalidArgumentError('--type and --reduce-device-size go with --encrypt.');
      }
      const resilience = o.resilience === undefined ? undefined : parseChoice(o.resilience, 'resilience', ['checksum', 'journal', 'none', 'datashift'] as const);
      if (resilience === 'datashift') throw new NotImplementedError('A re-key with resilience datashift (moving the data) is not built; --encrypt uses datashift by itself.');
      if (o.resumeOnly && o.initOnly) throw new InvalidArgumentError('Give --resume-only or --init-only, not both.');
      const input = await keyInput(o, volume);
      const { reencryptVolume } = await import('../../workflows/reencrypt.js');
      // A volume served by `attach` is re-keyed by that process (docs/reencrypt.md, "Online").
      const held = await acquireOrOnline(volume, o);
      await runMode<ReencryptReport>({
        volume,
        o,
        input,
        label: 'reencrypt',
        noun: 'reencryption',
        ...(held.lock ? { lock: held.lock } : {}),
        run: (passphrase, signal, onProgress) =>
          (held.online ?? reencryptVolume)(volume, {
            passphrases: [passphrase],
            ...commonEngineOptions(o),
            ...newEncryptionOptions(o),
            ...(resilience !== undefined ? { resilience } : {}),
            signal,
            onProgress,
          }),
        describe: (r) => describe(volume, r),
      });
    });
}
