/**
 * LUKS commands, named after cryptsetup's and taking its option names:
 * format, dump, test-key, add-key, change-key, remove-key, kill-slot, header-backup,
 * header-restore. Key files are read byte-exact (src/cli/key-input.ts).
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import type { Command } from 'commander';
import { FileDevice } from '../../devices/file-device.js';
import { AlreadyExistsError, DeviceIoError, InvalidArgumentError, NotFoundError } from '../../errors.js';
import { LuksVolume, restoreLuksHeader, plannedDataOffset, plannedHeaderSize, type FormatOptions, type KdfOptions, type PbkdfType } from '../../luks/index.js';
import { Passphrase, VolumeKey } from '../../secret.js';
import { passphraseInput, readKeyFile } from '../key-input.js';
import { DEFAULT_TRIES, withPassphraseTries, type PassphraseInput } from '../passphrase-prompt.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { addKeyManagerOptions, newVolumeKeyFromKeyManager, passphraseFromKeyManager, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { tokenPassphraseInput, tokenUriFor } from '../token-key.js';
import { addKeyManagerToken } from '../../luks/tokens.js';

export interface KeyOpts extends KeyManagerCliOptions {
  keyId?: string;
  newKeyId?: string;
  createKey?: boolean;
  /** --no-token: false. */
  token?: boolean;
  keyFile?: string;
  keyfileOffset?: string;
  keyfileSize?: string;
  newKeyFile?: string;
  newKeyfileOffset?: string;
  newKeyfileSize?: string;
  tries?: string;
}

interface KdfCliOpts {
  hash?: string;
  pbkdf?: string;
  iterTime?: string;
  pbkdfForceIterations?: string;
  pbkdfMemory?: string;
  pbkdfParallel?: string;
}

export interface HeaderOpt {
  header?: string;
}

export const KEYFILE_HELP = `
Key files: every byte counts (a trailing newline is part of the passphrase, as in cryptsetup);
"-" reads standard input to EOF; --keyfile-offset skips bytes, --keyfile-size reads exactly that many.
Without --key-file/--key-id, an existing LUKS2 volume's brickcrypt-key-manager token names its key
(brickcrypt token --help; format --create-key writes one). Without a token either and with a
terminal on standard input, the passphrase is asked for without echo (a new one twice); a wrong
one is asked again up to --tries times (default 3).
Without a terminal that is an error (exit 1): pipe a passphrase with --key-file -.`;

const MANAGED_KEY_HELP = `
Managed keys: --key-id ID (and --new-key-id) take the passphrase from a key manager instead of a
file: a symmetric key's passphrase is the lowercase hex of its bytes (the OpenStack os-brick
convention), a passphrase object's is its bytes. ${'`'}brickcrypt key --help${'`'} explains --key-manager,
--user/--project/--roles and --profile.`;

export const EXIT_HELP = `
Exit codes: 0 success, 1 bad arguments, 2 wrong passphrase, 4 not a (valid) LUKS device / unsupported,
5 keyslot busy or target exists, 8 I/O error.`;

function keyfileRange(offset: string | undefined, size: string | undefined): { offset?: number; size?: number } {
  return {
    ...(offset !== undefined ? { offset: parseInteger(offset, 'keyfile-offset') } : {}),
    ...(size !== undefined ? { size: parseInteger(size, 'keyfile-size', 1) } : {}),
  };
}

export function triesOf(o: KeyOpts): number {
  return o.tries === undefined ? DEFAULT_TRIES : parseInteger(o.tries, 'tries', 1, 1000);
}

/**
 * The existing passphrase: --key-id, --key-file, the volume's brickcrypt-key-manager token,
 * or typed at a terminal ("Enter passphrase for VOLUME: "), in that order (src/cli/token-key.ts).
 */
export async function oldKeyInput(o: KeyOpts & HeaderOpt, volume: string): Promise<PassphraseInput> {
  const keyId = o.keyId;
  if (keyId !== undefined) {
    if (o.keyFile !== undefined) throw new InvalidArgumentError('Give --key-file or --key-id, not both.');
    return { interactive: false, read: () => passphraseFromKeyManager(o, keyId) };
  }
  if (o.keyFile === undefined) {
    const fromToken = await tokenPassphraseInput(volume, o, o.header);
    if (fromToken) return fromToken;
    if (o.keyManager !== undefined) throw new InvalidArgumentError(`--key-manager needs --key-id ID (${volume} has no brickcrypt-key-manager token).`);
  }
  return passphraseInput({
    ...(o.keyFile !== undefined ? { keyFile: o.keyFile } : {}),
    ...keyfileRange(o.keyfileOffset, o.keyfileSize),
    prompt: `Enter passphrase for ${volume}: `,
    what: '--key-file (or --key-id)',
  });
}

/**
 * The existing passphrase. A typed one is first checked with `check` (an unlock), so a typo is
 * asked again up to --tries times, as cryptsetup does, before anything else happens.
 */
async function oldKey(o: KeyOpts & HeaderOpt, volume: string, check?: (passphrase: Passphrase) => Promise<void>): Promise<Passphrase> {
  const input = await oldKeyInput(o, volume);
  if (!input.interactive || !check) return input.read();
  return withPassphraseTries(
    input,
    async (passphrase) => {
      await check(passphrase);
      return passphrase.clone() as Passphrase;
    },
    { tries: triesOf(o) },
  );
}

/** A passphrase for a new keyslot or volume: --key-file style options, or typed twice at a terminal. */
function newPassphraseInput(file: string | undefined, offset: string | undefined, size: string | undefined, prompt: string, what: string): Promise<Passphrase> {
  return passphraseInput({ ...(file !== undefined ? { keyFile: file } : {}), ...keyfileRange(offset, size), prompt, what, verify: true }).read();
}

function newKey(o: KeyOpts): Promise<Passphrase> {
  if (o.newKeyId !== undefined) {
    if (o.newKeyFile !== undefined) throw new InvalidArgumentError('Give --new-key-file or --new-key-id, not both.');
    return passphraseFromKeyManager(o, o.newKeyId);
  }
  if (o.keyFile === '-' && o.newKeyFile === '-') throw new InvalidArgumentError('Only one of --key-file and --new-key-file can be standard input.');
  return newPassphraseInput(o.newKeyFile, o.newKeyfileOffset, o.newKeyfileSize, 'Enter new passphrase for key slot: ', '--new-key-file (or --new-key-id)');
}

/** Checks a typed passphrase against the volume (any keyslot, or --key-slot). */
function unlockCheck(volume: string, o: KeyOpts & HeaderOpt & { keySlot?: string }): (passphrase: Passphrase) => Promise<void> {
  return (passphrase) =>
    withVolume(volume, o, true, async (vol) => {
      const r = await vol.unlock(passphrase, o.keySlot !== undefined ? { keyslot: slotArg(o.keySlot) } : {});
      r.key.wipe();
    }, true);
}

function kdfOptions(o: KdfCliOpts): KdfOptions {
  const k: KdfOptions = {};
  if (o.hash !== undefined) k.hash = o.hash;
  if (o.pbkdf !== undefined) k.pbkdf = parseChoice<PbkdfType>(o.pbkdf, 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id']);
  if (o.iterTime !== undefined) k.iterTimeMs = parseInteger(o.iterTime, 'iter-time', 1);
  if (o.pbkdfForceIterations !== undefined) k.iterations = parseInteger(o.pbkdfForceIterations, 'pbkdf-force-iterations', 1, 0xffffffff);
  if (o.pbkdfMemory !== undefined) k.memoryKiB = parseInteger(o.pbkdfMemory, 'pbkdf-memory', 32, 4 * 1024 * 1024);
  if (o.pbkdfParallel !== undefined) k.parallel = parseInteger(o.pbkdfParallel, 'pbkdf-parallel', 1, 16);
  return k;
}

function addKdfOptions(cmd: Command): Command {
  return cmd
    .option('--hash <hash>', 'hash for PBKDF2 and the AF split (default sha256)')
    .option('--pbkdf <type>', 'pbkdf2, argon2i or argon2id (LUKS2 default argon2id, LUKS1 always pbkdf2)')
    .option('--iter-time <ms>', 'benchmark the KDF to this unlock time in milliseconds (default 2000)')
    .option('--pbkdf-force-iterations <n>', 'no benchmark: PBKDF2 iterations (>= 1000) or Argon2 time cost (>= 4)')
    .option('--pbkdf-memory <KiB>', 'Argon2 memory cost in KiB (default 1 GiB, at most half the RAM)')
    .option('--pbkdf-parallel <n>', 'Argon2 lanes (default min(4, CPUs))');
}

export function addKeyFileOptions(cmd: Command, withNew: boolean): Command {
  cmd
    .option('--key-file <file>', 'file holding the passphrase ("-" for standard input)')
    .option('--keyfile-offset <bytes>', 'skip this many bytes of the key file')
    .option('--keyfile-size <bytes>', 'read exactly this many bytes of the key file')
    .option('--key-id <id>', 'instead of --key-file: the managed key (see --key-manager) whose LUKS passphrase opens the volume')
    .option('--tries <n>', 'how often a passphrase typed at the terminal may be retried (default 3)');
  if (withNew) {
    cmd
      .option('--new-key-file <file>', 'file holding the new passphrase ("-" for standard input)')
      .option('--new-keyfile-offset <bytes>', 'skip this many bytes of the new key file')
      .option('--new-keyfile-size <bytes>', 'read exactly this many bytes of the new key file')
      .option('--new-key-id <id>', 'instead of --new-key-file: the managed key for the new passphrase');
  }
  addKeyManagerOptions(cmd, { help: false });
  cmd.addHelpText('after', MANAGED_KEY_HELP);
  return cmd;
}

/** Runs `fn` holding the volume's writer lock: keyslots never change under an attached volume or a convert. */
export async function withWriterLock<T>(volume: string, fn: () => Promise<T>): Promise<T> {
  const lock = await VolumeLock.acquire(volume);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Opens VOLUME (and --header) and runs `fn`; devices are always closed, writers hold the lock. */
async function withVolume<T>(volume: string, o: HeaderOpt, readOnly: boolean, fn: (vol: LuksVolume) => Promise<T>, inspectOnly = false): Promise<T> {
  const run = async (): Promise<T> => {
    const data = await FileDevice.open(volume, { readOnly });
    let header: FileDevice | undefined;
    try {
      if (o.header) header = await FileDevice.open(o.header, { readOnly });
      // Read-only inspection also works on a header backup file (no data behind the header), as cryptsetup's.
      const vol = await LuksVolume.open(data, { readOnly, ...(header ? { headerDevice: header } : {}), ...(inspectOnly ? { headerOnly: true } : {}) });
      return await fn(vol);
    } finally {
      await header?.close();
      await data.close();
    }
  };
  return readOnly ? run() : withWriterLock(volume, run);
}

async function exists(path: string): Promise<boolean> {
  try {
    await fsp.stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new DeviceIoError(`${path}: ${(err as Error).message}`, { cause: err });
  }
}

async function hasLuksHeader(path: string): Promise<boolean> {
  const dev = await FileDevice.open(path, { readOnly: true });
  try {
    await LuksVolume.open(dev, { readOnly: true });
    return true;
  } catch {
    const magic = new Uint8Array(6);
    if (dev.size < 6) return false;
    await dev.read(magic, 0);
    return Buffer.from(magic).toString('latin1') === 'LUKS\xba\xbe';
  } finally {
    await dev.close();
  }
}

function slotArg(text: string, option = 'key-slot'): number {
  return parseInteger(text, option, 0, 31);
}

export function register(program: Command): void {
  const format = program
    .command('format')
    .description('Create a LUKS1 or LUKS2 volume (cryptsetup luksFormat) with one keyslot.')
    .argument('<volume>', 'file or block device; a missing file is created (needs --size)')
    .requiredOption('--type <type>', 'luks1 or luks2')
    .option('--cipher <spec>', 'aes-xts-plain64 (default), aes-xts-plain, aes-cbc-essiv:sha256, aes-cbc-plain, aes-cbc-plain64')
    .option('--key-size <bits>', 'volume key size: 256 or 512 for XTS (default 512), 128 or 256 for CBC (default 256)')
    .option('--sector-size <bytes>', 'LUKS2 encryption sector size, 512 or 4096 (default 4096 when aligned)')
    .option('--label <text>', 'LUKS2 label')
    .option('--subsystem <text>', 'LUKS2 subsystem')
    .option('--uuid <uuid>', 'volume UUID (random by default)')
    .option('--size <size>', 'usable payload size for a new file (K/M/G/T suffixes); the file grows by the header')
    .option('--offset <sectors>', 'data offset in 512-byte sectors (default: 4096 sectors LUKS1 512-bit, 16 MiB LUKS2)')
    .option('--align-payload <sectors>', 'align the data offset to this many 512-byte sectors (default 2048 = 1 MiB)')
    .option('--header <file>', 'detached header file (created if missing); the data starts at offset 0 of VOLUME')
    .option('--volume-key-file <file>', 'use the volume key in this file (exactly key-size/8 bytes) instead of a random one')
    .option('--create-key', 'create a new key in the key manager (--key-manager) and use its passphrase; prints the key id on stdout')
    .option('--no-token', 'with --create-key: do not record the key manager and key id in a LUKS2 token')
    .option('--force', 'overwrite an existing LUKS header (cryptsetup asks for confirmation; brickcrypt refuses without this)')
    .option('--batch-mode', 'same as --force');
  addKeyFileOptions(format, false);
  addKdfOptions(format);
  format
    .addHelpText(
      'after',
      `
Without --force an existing LUKS header on VOLUME (or --header) is never overwritten (exit 5).
Examples:
  brickcrypt format vol.img --type luks2 --size 1G --key-file pass.txt --pbkdf argon2id --iter-time 1000
  id=$(brickcrypt format vol.img --type luks2 --size 1G --create-key)   (a token records the new key)
  brickcrypt test-key vol.img                                         (the token finds the key)
${KEYFILE_HELP}
${EXIT_HELP}`,
    )
    .action(async (volume: string, o: KeyOpts & KdfCliOpts & HeaderOpt & Record<string, string | boolean | undefined>) => {
      const type = parseChoice(String(o.type), 'type', ['luks1', 'luks2'] as const);
      const force = o.force === true || o.batchMode === true;
      const options: Omit<FormatOptions, 'passphrase'> = { type, ...kdfOptions(o) };
      if (o.cipher) options.cipher = String(o.cipher);
      if (o.keySize) options.keySizeBits = parseInteger(String(o.keySize), 'key-size', 8, 4096);
      if (o.sectorSize) options.sectorSize = parseChoice(String(o.sectorSize), 'sector-size', ['512', '4096'] as const) === '512' ? 512 : 4096;
      if (o.label !== undefined) options.label = String(o.label);
      if (o.subsystem !== undefined) options.subsystem = String(o.subsystem);
      if (o.uuid !== undefined) options.uuid = String(o.uuid);
      if (o.offset !== undefined) options.dataOffset = parseInteger(String(o.offset), 'offset') * 512;
      if (o.alignPayload !== undefined) options.alignment = parseInteger(String(o.alignPayload), 'align-payload', 1) * 512;
      const size = o.size !== undefined ? parseSize(String(o.size), 'size') : undefined;
      const detached = o.header !== undefined;
      let volumeKey: VolumeKey | undefined;
      if (o.volumeKeyFile) {
        const raw = await readKeyFile({ keyFile: String(o.volumeKeyFile) });
        volumeKey = new VolumeKey(new Uint8Array(raw.expose()));
        raw.wipe();
      }
      let createdKeyId: string | undefined;
      let formatted = false;
      let passphrase: Passphrase;
      let tokenUri: string | undefined;
      if (o.createKey === true) {
        if (o.keyFile !== undefined || o.keyId !== undefined) throw new InvalidArgumentError('--create-key excludes --key-file and --key-id.');
        if (type === 'luks2' && o.token !== false) tokenUri = await tokenUriFor(o);
        const made = await newVolumeKeyFromKeyManager(o, { name: `volume ${volume}` });
        createdKeyId = made.id;
        passphrase = made.passphrase;
      } else {
        if (o.keyId !== undefined) {
          if (o.keyFile !== undefined) throw new InvalidArgumentError('Give --key-file or --key-id, not both.');
          passphrase = await passphraseFromKeyManager(o, o.keyId);
        } else {
          if (o.keyManager !== undefined) throw new InvalidArgumentError('--key-manager needs --key-id ID.');
          passphrase = await newPassphraseInput(o.keyFile, o.keyfileOffset, o.keyfileSize, `Enter passphrase for ${volume}: `, '--key-file (or --key-id, --create-key)');
        }
      }
      const created: string[] = [];
      let lock: VolumeLock | undefined;
      try {
        lock = await VolumeLock.acquire(volume);
        for (const target of [volume, ...(detached ? [o.header!] : [])]) {
          if (!force && (await exists(target)) && (await hasLuksHeader(target))) {
            throw new AlreadyExistsError(`${target} already contains a LUKS header; use --force to overwrite it.`);
          }
        }
        const dataOffset = plannedDataOffset({ ...options, detached });
        if (!(await exists(volume))) {
          if (size === undefined) throw new NotFoundError(`${volume} does not exist; give --size to create it.`);
          created.push(volume);
        }
        const data = await FileDevice.open(volume, { create: true, ...(size !== undefined ? { size: dataOffset + size } : {}) });
        let header: FileDevice | undefined;
        try {
          if (detached) {
            const need = plannedHeaderSize(options);
            if (!(await exists(o.header!))) created.push(o.header!);
            header = await FileDevice.open(o.header!, { create: true });
            if (header.size < need && !header.isBlockDevice) await header.resize(need);
          }
          const { volume: vol, key } = await LuksVolume.format(data, { ...options, passphrase, ...(volumeKey ? { volumeKey } : {}), ...(header ? { headerDevice: header } : {}) });
          key.wipe();
          if (createdKeyId !== undefined && tokenUri !== undefined) {
            const tokenId = await addKeyManagerToken(vol, { keyslots: vol.keyslots().map((k) => k.id), keyManager: tokenUri, keyId: createdKeyId });
            process.stderr.write(`Token ${tokenId} records key ${createdKeyId} in ${tokenUri}: commands find the key without --key-id.\n`);
          } else if (createdKeyId !== undefined && type === 'luks1') {
            process.stderr.write(`LUKS1 headers have no tokens: open ${volume} with --key-id ${createdKeyId}.\n`);
          }
          if (createdKeyId !== undefined) process.stdout.write(`${createdKeyId}\n`);
          (createdKeyId !== undefined ? process.stderr : process.stdout).write(
            `Formatted ${volume} as LUKS${vol.version} (${vol.encryption}, ${vol.keyBytes * 8}-bit key, ${vol.sectorSize}-byte sectors), ` +
              `data offset ${vol.dataOffset}, payload ${vol.payloadSize} bytes, UUID ${vol.uuid}.\n`,
          );
        } finally {
          await header?.close();
          await data.close();
        }
        created.length = 0;
        formatted = true;
      } finally {
        passphrase.wipe();
        volumeKey?.wipe();
        for (const f of created) await fsp.rm(f, { force: true });
        await lock?.release();
        // A key created for a volume that was never formatted would be an orphan: remove it.
        if (!formatted && createdKeyId !== undefined) {
          await withKeyManager(o, (km, caller) => km.delete(caller, createdKeyId!, { force: true })).catch(() => undefined);
        }
      }
    });

  program
    .command('dump')
    .description('Show the LUKS header like cryptsetup luksDump. Never prints key material.')
    .argument('<volume>', 'LUKS file or block device')
    .option('--json', 'print JSON (LUKS2: the metadata as stored, plus binary header fields)')
    .option('--header <file>', 'detached header file')
    .addHelpText('after', `\nExample:\n  brickcrypt dump vol.img --json\n${EXIT_HELP}`)
    .action(async (volume: string, o: HeaderOpt & { json?: boolean }) => {
      await withVolume(volume, o, true, async (vol) => {
        process.stdout.write(o.json ? JSON.stringify(vol.dumpJson(), null, 2) + '\n' : vol.dump());
      }, true);
    });

  addKeyFileOptions(
    program
      .command('test-key')
      .description('Check that a passphrase opens the volume (cryptsetup open --test-passphrase).')
      .argument('<volume>', 'LUKS file or block device')
      .option('--key-slot <n>', 'try only this keyslot (needed for unbound LUKS2 keyslots)')
      .option('--header <file>', 'detached header file'),
    false,
  )
    .addHelpText('after', `\nExit 0 when a keyslot opens, 2 for a wrong passphrase.\nExample:\n  brickcrypt test-key vol.img --key-file pass.txt\n${KEYFILE_HELP}\n${EXIT_HELP}`)
    .action(async (volume: string, o: KeyOpts & HeaderOpt & { keySlot?: string }) => {
      await withPassphraseTries(
        await oldKeyInput(o, volume),
        (pass) =>
          withVolume(volume, o, true, async (vol) => {
            const r = await vol.unlock(pass, o.keySlot !== undefined ? { keyslot: slotArg(o.keySlot) } : {});
            r.key.wipe();
            process.stdout.write(`Key slot ${r.keyslot} unlocked${r.unbound ? ' (unbound key)' : ''}.\n`);
          }, true),
        { tries: triesOf(o) },
      );
    });

  addKdfOptions(
    addKeyFileOptions(
      program
        .command('add-key')
        .description('Add a keyslot for a new passphrase (cryptsetup luksAddKey).')
        .argument('<volume>', 'LUKS file or block device')
        .option('--slot <n>', 'keyslot for the new key (default: first free)')
        .option('--key-slot <n>', 'try only this keyslot with the existing passphrase')
        .option('--volume-key-file <file>', 'authorise with the volume key in this file instead of --key-file')
        .option('--header <file>', 'detached header file'),
      true,
    ),
  )
    .addHelpText('after', `\nExample:\n  brickcrypt add-key vol.img --key-file old.txt --new-key-file new.txt --pbkdf pbkdf2 --iter-time 500\n${KEYFILE_HELP}\n${EXIT_HELP}`)
    .action(async (volume: string, o: KeyOpts & KdfCliOpts & HeaderOpt & { slot?: string; keySlot?: string; volumeKeyFile?: string }) => {
      let auth: Passphrase | VolumeKey;
      if (o.volumeKeyFile) {
        const raw = await readKeyFile({ keyFile: o.volumeKeyFile });
        auth = new VolumeKey(new Uint8Array(raw.expose()));
        raw.wipe();
      } else auth = await oldKey(o, volume, unlockCheck(volume, o));
      const next = await newKey(o).catch((err: unknown) => {
        auth.wipe();
        throw err;
      });
      try {
        await withVolume(volume, o, false, async (vol) => {
          const opts = { ...kdfOptions(o), ...(o.slot !== undefined ? { keyslot: slotArg(o.slot, 'slot') } : {}), ...(o.keySlot !== undefined ? { unlockKeyslot: slotArg(o.keySlot) } : {}) };
          const slot = await vol.addKey(auth, next, opts);
          process.stdout.write(`Key slot ${slot} created.\n`);
        });
      } finally {
        auth.wipe();
        next.wipe();
      }
    });

  addKdfOptions(
    addKeyFileOptions(
      program
        .command('change-key')
        .description('Replace a passphrase (cryptsetup luksChangeKey): new key material, old keyslot replaced.')
        .argument('<volume>', 'LUKS file or block device')
        .option('--key-slot <n>', 'change only this keyslot')
        .option('--header <file>', 'detached header file'),
      true,
    ),
  )
    .addHelpText(
      'after',
      `
LUKS1 moves the key to a free slot (the same slot if none is free); LUKS2 keeps the keyslot number
and writes the new material to a free area first, as cryptsetup 2.6.
Example:
  brickcrypt change-key vol.img --key-file old.txt --new-key-file new.txt
${KEYFILE_HELP}
${EXIT_HELP}`,
    )
    .action(async (volume: string, o: KeyOpts & KdfCliOpts & HeaderOpt & { keySlot?: string }) => {
      const old = await oldKey(o, volume, unlockCheck(volume, o));
      const next = await newKey(o).catch((err: unknown) => {
        old.wipe();
        throw err;
      });
      try {
        await withVolume(volume, o, false, async (vol) => {
          const opts = { ...kdfOptions(o), ...(o.keySlot !== undefined ? { unlockKeyslot: slotArg(o.keySlot) } : {}) };
          const slot = await vol.changeKey(old, next, opts);
          process.stdout.write(`Key slot ${slot} changed.\n`);
        });
      } finally {
        old.wipe();
        next.wipe();
      }
    });

  addKeyFileOptions(
    program
      .command('remove-key')
      .description('Remove the keyslot a passphrase opens and wipe its area (cryptsetup luksRemoveKey).')
      .argument('<volume>', 'LUKS file or block device')
      .option('--key-slot <n>', 'try only this keyslot')
      .option('--header <file>', 'detached header file'),
    false,
  )
    .addHelpText('after', `\nExample:\n  brickcrypt remove-key vol.img --key-file old.txt\n${KEYFILE_HELP}\n${EXIT_HELP}`)
    .action(async (volume: string, o: KeyOpts & HeaderOpt & { keySlot?: string }) => {
      const pass = await oldKey(o, volume, unlockCheck(volume, o));
      try {
        await withVolume(volume, o, false, async (vol) => {
          const slot = await vol.removeKey(pass, o.keySlot !== undefined ? { keyslot: slotArg(o.keySlot) } : {});
          process.stdout.write(`Key slot ${slot} removed.\n`);
        });
      } finally {
        pass.wipe();
      }
    });

  program
    .command('kill-slot')
    .description('Wipe a keyslot without its passphrase (cryptsetup luksKillSlot --batch-mode).')
    .argument('<volume>', 'LUKS file or block device')
    .argument('<slot>', 'keyslot number')
    .option('--header <file>', 'detached header file')
    .option('--force', 'allow wiping the last active keyslot (the volume becomes unusable)')
    .addHelpText('after', `\nExample:\n  brickcrypt kill-slot vol.img 3\n${EXIT_HELP}`)
    .action(async (volume: string, slotText: string, o: HeaderOpt & { force?: boolean }) => {
      const slot = slotArg(slotText, 'slot');
      await withVolume(volume, o, false, async (vol) => {
        const active = vol.keyslots();
        if (active.length === 1 && active[0]!.id === slot && !o.force) {
          throw new InvalidArgumentError(`Keyslot ${slot} is the last one; the volume would become unusable. Use --force.`);
        }
        await vol.killSlot(slot);
        process.stdout.write(`Key slot ${slot} wiped.\n`);
      });
    });

  program
    .command('header-backup')
    .description('Save the LUKS header and keyslot areas to FILE (cryptsetup luksHeaderBackup).')
    .argument('<volume>', 'LUKS file or block device')
    .argument('<file>', 'backup file to create (must not exist)')
    .option('--header <path>', 'detached header file')
    .addHelpText('after', `\nLUKS1: up to the end of the keyslot areas; LUKS2: both headers and the keyslots area.\nExample:\n  brickcrypt header-backup vol.img vol.hdr\n${EXIT_HELP}`)
    .action(async (volume: string, file: string, o: HeaderOpt) => {
      await withVolume(volume, o, true, async (vol) => {
        const bytes = await vol.headerBackup();
        let handle: fsp.FileHandle;
        try {
          handle = await fsp.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o400);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError(`Requested header backup file ${file} already exists.`);
          throw new DeviceIoError(`${file}: ${(err as Error).message}`, { cause: err });
        }
        try {
          await handle.writeFile(bytes);
          await handle.sync();
        } finally {
          await handle.close();
        }
        process.stdout.write(`Header of ${volume} (${bytes.length} bytes) saved to ${file}.\n`);
      });
    });

  program
    .command('header-restore')
    .description('Write a header backup back onto VOLUME (cryptsetup luksHeaderRestore).')
    .argument('<volume>', 'LUKS file or block device')
    .argument('<file>', 'backup file made by header-backup or cryptsetup luksHeaderBackup')
    .option('--header <path>', 'detached header file to restore into')
    .option('--force', 'replace a LUKS header with a different UUID (cryptsetup asks for confirmation)')
    .option('--batch-mode', 'same as --force')
    .addHelpText(
      'after',
      `
The backup is validated first. A volume with another data offset or key size is always refused;
one with another UUID only with --force.
Example:
  brickcrypt header-restore vol.img vol.hdr
${EXIT_HELP}`,
    )
    .action(async (volume: string, file: string, o: HeaderOpt & { force?: boolean; batchMode?: boolean }) => {
      let backup: Buffer;
      try {
        backup = await fsp.readFile(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Backup file ${file} does not exist.`);
        throw new DeviceIoError(`${file}: ${(err as Error).message}`, { cause: err });
      }
      await withWriterLock(volume, async () => {
        const data = await FileDevice.open(volume);
        let header: FileDevice | undefined;
        try {
          if (o.header) header = await FileDevice.open(o.header);
          await restoreLuksHeader(data, new Uint8Array(backup), { force: o.force === true || o.batchMode === true, ...(header ? { headerDevice: header } : {}) });
          process.stdout.write(`Header of ${volume} restored from ${file}.\n`);
        } finally {
          await header?.close();
          await data.close();
        }
      });
    });
}
