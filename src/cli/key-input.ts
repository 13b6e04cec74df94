/**
 * Reading passphrases the way cryptsetup does: `--key-file F` takes every byte of F
 * (no newline stripping), `-` reads standard input to EOF, `--keyfile-offset` skips
 * bytes, `--keyfile-size` caps the count (and it is an error if fewer are there); with no
 * key file and a terminal on standard input, a prompt (src/cli/passphrase-prompt.ts).
 * Plain dm-crypt keys follow their own rules (`readPlainVolumeKey`).
 */
import { promises as fsp } from 'node:fs';
import { Passphrase, VolumeKey } from '../secret.js';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { effectivePlainHash, plainReadRule, plainVolumeKey, takePlainInput, type PlainKeyInput } from '../crypto/plain-key.js';
import type { PlainParams } from '../plain/plain-volume.js';
import { promptPassphrase, stdinIsTerminal, type PassphraseInput, type TerminalStreams } from './passphrase-prompt.js';

export interface KeyFileOptions {
  keyFile: string;
  offset?: number;
  size?: number;
}

/** Largest key file cryptsetup accepts by default (8 MiB, `--keyfile-size` may lower it). */
export const MAX_KEY_FILE_BYTES = 8 * 1024 * 1024;

export async function readKeyFile(options: KeyFileOptions, stdin: NodeJS.ReadableStream = process.stdin): Promise<Passphrase> {
  const offset = options.offset ?? 0;
  let raw: Buffer;
  if (options.keyFile === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of stdin) chunks.push(Buffer.from(chunk as Buffer));
    raw = Buffer.concat(chunks);
  } else {
    try {
      raw = await fsp.readFile(options.keyFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Key file ${options.keyFile} does not exist.`);
      throw new InvalidArgumentError(`Cannot read key file ${options.keyFile}: ${(err as Error).message}`);
    }
  }
  try {
    if (offset > raw.length) throw new InvalidArgumentError(`Key file offset ${offset} is past the end of the key file.`);
    let end = raw.length;
    if (options.size !== undefined) {
      if (offset + options.size > raw.length) {
        throw new InvalidArgumentError(`Key file ${options.keyFile} holds fewer than ${options.size} bytes after offset ${offset}.`);
      }
      end = offset + options.size;
    }
    if (end - offset > MAX_KEY_FILE_BYTES) throw new InvalidArgumentError(`Key file exceeds ${MAX_KEY_FILE_BYTES} bytes.`);
    if (end === offset) throw new InvalidArgumentError(`Key file ${options.keyFile} is empty.`);
    return Passphrase.copyOf(raw.subarray(offset, end));
  } finally {
    raw.fill(0);
  }
}

/**
 * The passphrase input of a command: `--key-file` (with offset/size) when given, else a prompt
 * when standard input is a terminal (asked twice with `verify`), else a usage error naming
 * `what` (cryptsetup would read the first line of standard input; brickcrypt wants
 * `--key-file -` for that, so a script never blocks on a prompt it cannot see).
 */
export function passphraseInput(
  options: Partial<KeyFileOptions> & { prompt: string; what: string; verify?: boolean },
  streams?: TerminalStreams,
): PassphraseInput {
  const { keyFile } = options;
  if (keyFile !== undefined) {
    return { interactive: false, read: () => readKeyFile({ keyFile, ...(options.offset !== undefined ? { offset: options.offset } : {}), ...(options.size !== undefined ? { size: options.size } : {}) }) };
  }
  if (!stdinIsTerminal(streams)) {
    throw new InvalidArgumentError(`${options.what} is required (standard input is not a terminal, so no passphrase can be asked for).`);
  }
  if (options.offset !== undefined || options.size !== undefined) throw new InvalidArgumentError('Cannot use --keyfile-offset or --keyfile-size with terminal input.');
  return { interactive: true, read: () => promptPassphrase(options.prompt, { verify: options.verify === true, ...(streams ? { streams } : {}) }) };
}

/** Where a plain volume's key comes from (the CLI's key options). */
export interface PlainKeySource {
  keyFile?: string;
  keyfileOffset?: number;
  keyfileSize?: number;
  /** A managed key's passphrase (hex of the key): os-brick feeds it to `--key-file=-`. */
  managed?: () => Promise<Passphrase>;
  /** Terminal prompt text. */
  prompt?: string;
}

/**
 * Reads and derives a plain volume's key the way `cryptsetup open --type plain` does with the
 * same input (rules in src/crypto/plain-key.ts and docs/plain.md).
 */
export async function readPlainVolumeKey(params: PlainParams, source: PlainKeySource, streams?: TerminalStreams): Promise<VolumeKey> {
  let kind: PlainKeyInput;
  if (source.managed) kind = 'stdin';
  else if (source.keyFile === '-' && stdinIsTerminal(streams)) kind = 'terminal'; // cryptsetup prompts for "-" on a terminal too
  else if (source.keyFile === '-') kind = 'stdin';
  else if (source.keyFile !== undefined) kind = 'key-file';
  else kind = 'terminal';
  const hash = effectivePlainHash(kind, params.hash);
  const rule = plainReadRule(kind, hash, params.keyBytes, source.keyfileSize);
  const offset = source.keyfileOffset ?? 0;
  if (offset > 0 && !rule.offsetAllowed) throw new InvalidArgumentError('Cannot use offset with terminal input.');
  let raw: Passphrase;
  if (source.managed) raw = await source.managed();
  else if (kind === 'terminal') {
    if (!stdinIsTerminal(streams)) throw new InvalidArgumentError('A plain volume needs --key-file F, --key-file - or --key-id ID (standard input is not a terminal).');
    raw = await promptPassphrase(source.prompt ?? 'Enter passphrase: ', streams ? { streams } : {});
  } else {
    raw = await readKeyFile({ keyFile: source.keyFile!, offset, ...(rule.exactBytes !== undefined ? { size: rule.exactBytes } : {}) }, streams?.input);
  }
  try {
    const bytes = raw.expose();
    // A managed passphrase is the whole "standard input": the offset applies to it here.
    const data = takePlainInput(source.managed ? bytes.subarray(Math.min(offset, bytes.length)) : bytes, rule);
    return new VolumeKey(plainVolumeKey(data, params.keyBytes, hash));
  } finally {
    raw.wipe();
  }
}
