/**
 * The options that describe a plain dm-crypt volume, named as cryptsetup names them
 * (`--cipher`, `--key-size`, `--hash`, `--offset`, `--skip`, `--size`, `--sector-size`,
 * `--keyfile-offset`, `--keyfile-size`), with a prefix where a command has two volumes
 * (`convert`/`verify`: `--src-cipher`, `--dst-offset`, ...).
 */
import type { Command } from 'commander';
import { PLAIN_DEFAULTS, PLAIN_DEFAULTS_BEFORE_2_7 } from '../crypto/plain-key.js';
import { resolvePlainParams, type PlainOptions, type PlainParams } from '../plain/plain-volume.js';
import type { PlainSource } from '../workflows/open-source.js';
import { readPlainVolumeKey } from './key-input.js';
import type { Passphrase } from '../secret.js';
import { parseInteger } from './parse.js';

export type PlainPrefix = '' | 'src-' | 'dst-';

/** Option keys commander gives for a prefix: '' -> cipher, 'src-' -> srcCipher. */
function key(prefix: PlainPrefix, name: string): string {
  const full = `${prefix}${name}`;
  return full.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

export const PLAIN_HELP = `
Plain dm-crypt volumes have no header: give the parameters they were opened with
(cryptsetup open --type plain / cryptsetup create). Defaults are cryptsetup 2.7's:
${PLAIN_DEFAULTS.cipher}, ${PLAIN_DEFAULTS.keyBits}-bit key, hash ${PLAIN_DEFAULTS.hash}; older cryptsetup (2.6 and before)
used ${PLAIN_DEFAULTS_BEFORE_2_7.cipher}, ${PLAIN_DEFAULTS_BEFORE_2_7.keyBits} bits, hash ${PLAIN_DEFAULTS_BEFORE_2_7.hash}.
The key: a key file (not "-") is the key itself (--hash is ignored, it must hold key-size/8 bytes);
"-" (standard input) and a passphrase typed at the terminal are hashed with --hash ("plain": not
hashed); a managed key (--key-id) is its hex passphrase fed on standard input, as os-brick does.
--offset, --skip and --size count 512-byte sectors. See docs/plain.md.`;

/** Adds the plain options with `prefix` ("src-", "dst-" or none). */
export function addPlainOptions(cmd: Command, prefix: PlainPrefix, side = 'the plain volume'): Command {
  return cmd
    .option(`--${prefix}cipher <spec>`, `${side}: dm-crypt cipher (default ${PLAIN_DEFAULTS.cipher})`)
    .option(`--${prefix}key-size <bits>`, `${side}: key size in bits (default ${PLAIN_DEFAULTS.keyBits})`)
    .option(`--${prefix}hash <hash>`, `${side}: passphrase hash, "plain" for none (default ${PLAIN_DEFAULTS.hash})`)
    .option(`--${prefix}offset <sectors>`, `${side}: start of the ciphertext in 512-byte sectors`)
    .option(`--${prefix}skip <sectors>`, `${side}: IV number of the first sector (512-byte sectors)`)
    .option(`--${prefix}size <sectors>`, `${side}: size in 512-byte sectors (default: the rest of the device)`)
    .option(`--${prefix}sector-size <bytes>`, `${side}: encryption sector size (default 512)`);
}

/** Adds `--keyfile-offset`/`--keyfile-size` with `prefix`, for commands that lack them. */
export function addKeyfileRangeOptions(cmd: Command, prefix: PlainPrefix): Command {
  return cmd
    .option(`--${prefix}keyfile-offset <bytes>`, 'skip this many bytes of the key input')
    .option(`--${prefix}keyfile-size <bytes>`, 'read this many bytes of the key input');
}

/** The parsed plain parameters from a command's options. */
export function plainParamsFrom(opts: Record<string, unknown>, prefix: PlainPrefix): PlainParams {
  const get = (name: string): string | undefined => {
    const v = opts[key(prefix, name)];
    return v === undefined ? undefined : String(v);
  };
  const o: PlainOptions = {};
  const cipher = get('cipher');
  if (cipher !== undefined) o.cipher = cipher;
  const bits = get('key-size');
  if (bits !== undefined) o.keyBits = parseInteger(bits, `${prefix}key-size`, 8);
  const hash = get('hash');
  if (hash !== undefined) o.hash = hash;
  const offset = get('offset');
  if (offset !== undefined) o.offset = parseInteger(offset, `${prefix}offset`);
  const skip = get('skip');
  if (skip !== undefined) o.skip = parseInteger(skip, `${prefix}skip`);
  const size = get('size');
  if (size !== undefined) o.size = parseInteger(size, `${prefix}size`, 1);
  const ss = get('sector-size');
  if (ss !== undefined) o.sectorSize = parseInteger(ss, `${prefix}sector-size`, 512, 4096);
  return resolvePlainParams(o);
}

/** A plain source for the workflows: parameters now, the key when the source is opened. */
export function plainSourceFrom(
  opts: Record<string, unknown>,
  prefix: PlainPrefix,
  keys: { keyFile?: string; managed?: () => Promise<Passphrase>; prompt: string },
): PlainSource {
  const params = plainParamsFrom(opts, prefix);
  const num = (name: string): number | undefined => {
    const v = opts[key(prefix, name)];
    return v === undefined ? undefined : parseInteger(String(v), `${prefix}${name}`);
  };
  const keyfileOffset = num('keyfile-offset');
  const keyfileSize = num('keyfile-size');
  return {
    params,
    key: () =>
      readPlainVolumeKey(params, {
        ...(keys.keyFile !== undefined ? { keyFile: keys.keyFile } : {}),
        ...(keys.managed ? { managed: keys.managed } : {}),
        ...(keyfileOffset !== undefined ? { keyfileOffset } : {}),
        ...(keyfileSize !== undefined ? { keyfileSize } : {}),
        prompt: keys.prompt,
      }),
  };
}
