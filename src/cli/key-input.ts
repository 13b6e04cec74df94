/**
 * Reading passphrases the way cryptsetup does: `--key-file F` takes every byte of F
 * (no newline stripping), `-` reads standard input to EOF, `--keyfile-offset` skips
 * bytes, `--keyfile-size` caps the count (and it is an error if fewer are there).
 */
import { promises as fsp } from 'node:fs';
import { Passphrase } from '../secret.js';
import { InvalidArgumentError, NotFoundError } from '../errors.js';

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
