/**
 * `brickcrypt convert` and `brickcrypt verify`: the CLI over src/workflows/convert.ts and
 * verify.ts. Progress is a bar on a TTY (stderr) or JSON lines on stdout with `--json`;
 * SIGINT/SIGTERM cancel cleanly (no target that looks complete is left behind).
 */
import { withCancellation } from '../cancellation.js';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { InvalidArgumentError } from '../../errors.js';
import { readKeyFile } from '../key-input.js';
import { DEFAULT_TRIES, promptPassphrase, stdinIsTerminal } from '../passphrase-prompt.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { addKeyManagerOptions, KEY_MANAGER_HELP, newVolumeKeyFromKeyManager, passphraseFromKeyManager, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { tokenPassphraseInput, tokenUriFor } from '../token-key.js';
import { CACHE_MODES, convert, type CacheMode, type ConvertReport, type LuksTargetOptions } from '../../workflows/convert.js';
import { verify } from '../../workflows/verify.js';
import { IMAGE_FORMATS, type ImageFormat, type PassphraseSource, type PlainSource } from '../../workflows/open-source.js';
import { addKeyfileRangeOptions, addPlainOptions, PLAIN_HELP, plainSourceFrom, type PlainPrefix } from '../plain-options.js';

export interface KeyOptions extends KeyManagerCliOptions {
  srcKeyFile?: string;
  dstKeyFile?: string;
  srcKeyId?: string;
  dstKeyId?: string;
  createKey?: boolean;
  /** --no-token: false. */
  token?: boolean;
}

/** With `--create-key`: the key made in the key manager for the target, once it exists. */
export interface CreatedKey {
  id?: string;
}

/** True when the side's passphrase will be typed at the terminal (no key option given, stdin is one). */
function typed(opts: KeyOptions, role: 'source' | 'target'): boolean {
  const file = role === 'source' ? opts.srcKeyFile : opts.dstKeyFile;
  const id = role === 'source' ? opts.srcKeyId : opts.dstKeyId;
  return file === undefined && id === undefined && !(role === 'target' && opts.createKey === true) && stdinIsTerminal();
}

/**
 * Where a side's LUKS passphrase comes from: its key file, its managed key, --create-key, or,
 * with none and a terminal on stdin, a prompt (`fresh`: a new passphrase, asked twice).
 */
export function passphraseSource(opts: KeyOptions, role: 'source' | 'target', created?: CreatedKey, path = '', fresh = false): PassphraseSource | undefined {
  const file = role === 'source' ? opts.srcKeyFile : opts.dstKeyFile;
  const id = role === 'source' ? opts.srcKeyId : opts.dstKeyId;
  const create = role === 'target' && opts.createKey === true;
  if ([file, id, create || undefined].filter((v) => v !== undefined).length > 1) {
    const side = role === 'source' ? 'src' : 'dst';
    throw new InvalidArgumentError(`Give one of --${side}-key-file, --${side}-key-id${role === 'target' ? ' or --create-key' : ''}.`);
  }
  if (file !== undefined) return () => readKeyFile({ keyFile: file });
  if (id !== undefined) return () => passphraseFromKeyManager(opts, id);
  if (create && created) {
    return async () => {
      const made = await newVolumeKeyFromKeyManager(opts, { name: 'brickcrypt convert target' });
      created.id = made.id;
      return made.passphrase;
    };
  }
  if (typed(opts, role)) return () => promptPassphrase(`Enter passphrase for ${path}: `, { verify: fresh });
  return undefined;
}

/**
 * An existing image's passphrase: its key option (--src-key-file, --src-key-id, ...) when given,
 * else its brickcrypt-key-manager token, else a prompt on a terminal. `typed`: asked at the terminal.
 */
async function existingImageSource(opts: KeyOptions, role: 'source' | 'target', path: string): Promise<{ source: PassphraseSource | undefined; typed: boolean }> {
  const file = role === 'source' ? opts.srcKeyFile : opts.dstKeyFile;
  const id = role === 'source' ? opts.srcKeyId : opts.dstKeyId;
  if (file === undefined && id === undefined) {
    const fromToken = await tokenPassphraseInput(path, opts);
    if (fromToken) return { source: fromToken.read, typed: false };
  }
  return { source: passphraseSource(opts, role, undefined, path), typed: typed(opts, role) };
}

function triesOf(opts: Record<string, unknown>): number {
  return opts.tries === undefined ? DEFAULT_TRIES : parseInteger(String(opts.tries), 'tries', 1, 1000);
}

const PLAIN_OPTION_NAMES = ['cipher', 'keySize', 'hash', 'offset', 'skip', 'size', 'sectorSize', 'keyfileOffset', 'keyfileSize'];

/** The plain source of one side when its format is 'plain'; plain options without it are refused. */
function plainSide(opts: Record<string, unknown>, prefix: 'src-' | 'dst-', format: string | undefined, keys: KeyOptions, path: string): PlainSource | undefined {
  const side = prefix === 'src-' ? 'src' : 'dst';
  const given = PLAIN_OPTION_NAMES.map((n) => `${side}${n[0]!.toUpperCase()}${n.slice(1)}`).filter((k) => opts[k] !== undefined);
  if (format !== 'plain') {
    if (given.length > 0) throw new InvalidArgumentError(`--${prefix}cipher, --${prefix}offset etc. describe a plain volume: they need --${prefix}format plain.`);
    return undefined;
  }
  const keyFile = prefix === 'src-' ? keys.srcKeyFile : keys.dstKeyFile;
  const keyId = prefix === 'src-' ? keys.srcKeyId : keys.dstKeyId;
  if (keyFile !== undefined && keyId !== undefined) throw new InvalidArgumentError(`Give one of --${side}-key-file or --${side}-key-id.`);
  return plainSourceFrom(opts, prefix as PlainPrefix, {
    ...(keyFile !== undefined ? { keyFile } : {}),
    ...(keyId !== undefined ? { managed: () => passphraseFromKeyManager(keys, keyId) } : {}),
    prompt: `Enter passphrase for ${path}: `,
  });
}

function checkKeyFiles(opts: KeyOptions): void {
  if (opts.srcKeyFile === '-' && opts.dstKeyFile === '-') throw new InvalidArgumentError('Only one key file can be read from standard input.');
}

const MIB = 1024 * 1024;

const onWrongPassphrase = (): void => {
  process.stderr.write('No key available with this passphrase.\n');
};

/** Progress on a TTY bar, as JSON lines, or not at all. */
export function progressReporter(json: boolean, label: string) {
  const started = performance.now();
  let last = -Infinity;
  let bar: cliProgress.SingleBar | undefined;
  const rate = (bytes: number) => bytes / Math.max(1e-3, (performance.now() - started) / 1000);
  return {
    update({ bytes, total }: { bytes: number; total: number }) {
      const now = performance.now();
      if (json) {
        if (now - last < 1000 && bytes < total) return;
        last = now;
        process.stdout.write(JSON.stringify({ event: 'progress', bytes, total, rate: Math.round(rate(bytes)) }) + '\n');
        return;
      }
      if (!process.stderr.isTTY) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${label} {bar} {percentage}% | {done}/{all} MiB | {rate} MiB/s | ETA {eta_formatted}`,
            hideCursor: true,
            etaBuffer: 50,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { done: '0', all: (total / MIB).toFixed(0), rate: '0' });
      }
      if (now - last < 200 && bytes < total) return;
      last = now;
      bar.update(bytes, { done: (bytes / MIB).toFixed(0), all: (total / MIB).toFixed(0), rate: (rate(bytes) / MIB).toFixed(0) });
    },
    stop() {
      bar?.stop();
    },
  };
}


function describe(report: ConvertReport): string {
  const t = report.target;
  const lines = [
    `Converted ${report.source.path} (${report.source.format}, ${report.source.size} bytes) to ${t.path} (${t.format}).`,
    `  payload size:   ${t.payloadSize} bytes`,
    `  container size: ${t.containerSize} bytes${t.dataOffset !== undefined ? ` (LUKS header ${t.dataOffset} bytes)` : ''}`,
  ];
  if (t.encryption) lines.push(`  encryption:     ${t.encryption}, ${t.sectorSize}-byte sectors`);
  lines.push(
    `  data:           ${(report.stats.bytes / MIB).toFixed(1)} MiB in ${report.dataSeconds.toFixed(2)} s` +
      ` (${(report.stats.bytes / MIB / Math.max(report.dataSeconds, 1e-3)).toFixed(0)} MiB/s); key derivation ${report.kdfSeconds.toFixed(2)} s`,
  );
  for (const n of report.notes) lines.push(`  note: ${n}`);
  return lines.join('\n') + '\n';
}

/** --cache, with --no-sync as its 'unsafe'. */
function cacheMode(opts: Record<string, string | boolean | undefined>): CacheMode {
  const mode = opts.cache === undefined ? undefined : parseChoice(String(opts.cache), 'cache', CACHE_MODES);
  if (opts.sync === false) {
    if (mode !== undefined && mode !== 'unsafe') throw new InvalidArgumentError(`--no-sync contradicts --cache ${mode}.`);
    return 'unsafe';
  }
  return mode ?? 'auto';
}

export function register(program: Command): void {
  const convertCommand = program
    .command('convert')
    .description('Convert an image between raw, qcow2, LUKS1 and LUKS2 (source format detected by content).')
    .argument('<src>', 'source image')
    .argument('<dst>', 'target image (created, or an existing file/device with --target-exists)')
    .requiredOption('--dst-format <format>', `target format: ${IMAGE_FORMATS.join(', ')}`)
    .option('--src-format <format>', 'expected source format (checked against the content): raw, qcow2, luks, luks1, luks2; or plain (dm-crypt without a header: see --src-cipher)')
    .option('--src-key-file <file>', "source LUKS passphrase file ('-' = stdin)")
    .option('--dst-key-file <file>', "target LUKS passphrase file ('-' = stdin)")
    .option('--src-key-id <id>', 'managed key whose LUKS passphrase opens the source (see --key-manager)')
    .option('--dst-key-id <id>', 'managed key whose LUKS passphrase the target gets')
    .option('--create-key', 'create a new key in the key manager for the LUKS target; its id is the only line on stdout')
    .option('--no-token', 'with --create-key: do not record the key manager and key id in a LUKS2 token on the target')
    .option('--tries <n>', 'how often a source passphrase typed at the terminal may be retried (default 3)')
    .option('--cipher <spec>', 'LUKS cipher, e.g. aes-xts-plain64')
    .option('--key-size <bits>', 'LUKS volume key size in bits')
    .option('--hash <name>', 'LUKS hash (PBKDF2 and header digest)')
    .option('--pbkdf <type>', 'pbkdf2, argon2i or argon2id')
    .option('--iter-time <ms>', 'keyslot unlock time target in milliseconds')
    .option('--pbkdf-force-iterations <n>', 'fixed PBKDF iterations / Argon2 time cost (no benchmark)')
    .option('--pbkdf-memory <kib>', 'Argon2 memory cost in KiB')
    .option('--pbkdf-parallel <n>', 'Argon2 lanes')
    .option('--sector-size <bytes>', 'LUKS2 encryption sector size (512 or 4096; default 4096)')
    .option('--label <text>', 'LUKS2 label')
    .option('--uuid <uuid>', 'LUKS volume UUID')
    .option('--size <size>', 'usable payload size of the target (default: the source size), e.g. 10G')
    .option('--allow-truncate', 'allow --size below the source size (drops the source tail)')
    .option('--target-exists', 'write into an existing file or block device')
    .option('--force', 'replace an existing target file')
    .option('--compress', 'compress qcow2 clusters')
    .option(
      '--cache <mode>',
      "how the target is written: none (data with O_DIRECT past the page cache, then fsync), writeback (page cache, then fsync), unsafe (never fsync, as qemu-img convert's default: a killed run still leaves no finished-looking target, but after a power loss it may be incomplete), auto (default: none for a block device, writeback for a file)",
    )
    .option('--no-sync', 'the same as --cache unsafe')
    .option('--workers <n>', 'crypto worker threads (default: one per core)')
    .option('--json', 'JSON progress lines and a JSON summary on stdout');
  addPlainOptions(convertCommand, 'src-', 'plain source');
  addKeyfileRangeOptions(convertCommand, 'src-');
  addKeyManagerOptions(convertCommand, { help: false });
  convertCommand
    .addHelpText('after', `
Examples:
  brickcrypt convert disk.qcow2 vol.luks --dst-format luks2 --dst-key-file pass.txt
  brickcrypt convert disk.raw vol.luks --dst-format luks1 --create-key --roles creator
  brickcrypt convert vol.luks disk.qcow2 --dst-format qcow2 --src-key-id ID --compress
  brickcrypt convert old.plain vol.luks --src-format plain --src-cipher aes-xts-plain64 --src-key-size 512 \\
      --src-key-id ID --dst-format luks2 --dst-key-id ID      (an os-brick "plain" volume to LUKS2)
${PLAIN_HELP}
Managed keys: a symmetric key's LUKS passphrase is the lowercase hex of its bytes (os-brick).
With --create-key a caller holding only the "creator" role makes a volume it can never open again.
Without a key option, a LUKS2 source's brickcrypt-key-manager token names its key (brickcrypt token
--help); with --create-key a LUKS2 target gets such a token (--no-token: not). Without either and with
a terminal on standard input, LUKS passphrases are asked for (no echo; the target's twice); a wrong
source passphrase is asked again up to --tries times.
${KEY_MANAGER_HELP}`)
    .action(async (src: string, dst: string, opts: Record<string, string | boolean | undefined>) => {
      const keys = opts as KeyOptions;
      checkKeyFiles(keys);
      const created: CreatedKey = {};
      const targetFormat = parseChoice(String(opts.dstFormat), 'dst-format', IMAGE_FORMATS);
      const sourceFormat =
        opts.srcFormat === undefined ? undefined : parseChoice(String(opts.srcFormat), 'src-format', [...IMAGE_FORMATS, 'luks', 'plain'] as const);
      const sourcePlain = plainSide(opts, 'src-', sourceFormat, keys, src);
      const sourceKey = sourcePlain ? { source: undefined, typed: false } : await existingImageSource(keys, 'source', src);
      // --create-key: a LUKS2 target records where its new key lives (refused before any key is made).
      const tokenUri = keys.createKey === true && targetFormat === 'luks2' && keys.token !== false ? await tokenUriFor(keys) : undefined;
      const luks: LuksTargetOptions = {};
      if (opts.cipher !== undefined) luks.cipher = String(opts.cipher);
      if (opts.keySize !== undefined) luks.keySizeBits = parseInteger(String(opts.keySize), 'key-size', 128, 4096);
      if (opts.hash !== undefined) luks.hash = String(opts.hash);
      if (opts.pbkdf !== undefined) luks.pbkdf = parseChoice(String(opts.pbkdf), 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const);
      if (opts.iterTime !== undefined) luks.iterTimeMs = parseInteger(String(opts.iterTime), 'iter-time', 1);
      if (opts.pbkdfForceIterations !== undefined) luks.iterations = parseInteger(String(opts.pbkdfForceIterations), 'pbkdf-force-iterations', 1);
      if (opts.pbkdfMemory !== undefined) luks.memoryKiB = parseInteger(String(opts.pbkdfMemory), 'pbkdf-memory', 8);
      if (opts.pbkdfParallel !== undefined) luks.parallel = parseInteger(String(opts.pbkdfParallel), 'pbkdf-parallel', 1, 16);
      if (opts.sectorSize !== undefined) {
        const ss = parseInteger(String(opts.sectorSize), 'sector-size');
        if (ss !== 512 && ss !== 4096) throw new InvalidArgumentError('--sector-size: must be 512 or 4096.');
        luks.sectorSize = ss;
      }
      if (opts.label !== undefined) luks.label = String(opts.label);
      if (opts.uuid !== undefined) luks.uuid = String(opts.uuid);
      const json = opts.json === true;
      const progress = progressReporter(json, 'convert');
      // The target's writer lock: no convert onto a volume that is attached or being converted.
      const lock = await VolumeLock.acquire(dst);
      const report = await withCancellation((signal) =>
        convert({
          source: src,
          target: dst,
          targetFormat: targetFormat as ImageFormat,
          sourceFormat,
          sourcePassphrase: sourceKey.source,
          ...(sourceKey.typed ? { sourcePassphraseTries: triesOf(opts), onWrongPassphrase } : {}),
          ...(sourcePlain ? { sourcePlain } : {}),
          targetPassphrase: passphraseSource(keys, 'target', created, dst, true),
          ...(tokenUri !== undefined ? { targetToken: () => (created.id !== undefined ? { keyManager: tokenUri, keyId: created.id } : undefined) } : {}),
          luks,
          size: opts.size === undefined ? undefined : parseSize(String(opts.size), 'size'),
          allowTruncate: opts.allowTruncate === true,
          targetExists: opts.targetExists === true,
          force: opts.force === true,
          compress: opts.compress === true,
          cache: cacheMode(opts),
          workers: opts.workers === undefined ? undefined : parseInteger(String(opts.workers), 'workers', 0, 64),
          signal,
          onProgress: (p) => progress.update(p),
        }),
      )
        .catch(async (err: unknown) => {
          // A key made for a target that was never finished would be an orphan: remove it.
          if (created.id !== undefined) await withKeyManager(keys, (km, caller) => km.delete(caller, created.id!, { force: true })).catch(() => undefined);
          throw err;
        })
        .finally(async () => {
          progress.stop();
          await lock.release();
        });
      const peakRssBytes = process.resourceUsage().maxRSS * 1024;
      if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report, ...(created.id ? { createdKeyId: created.id } : {}), peakRssBytes }) + '\n');
      else if (created.id !== undefined) {
        if (tokenUri !== undefined) process.stderr.write(`A token on ${dst} records key ${created.id} in ${tokenUri}: commands find the key without --key-id.\n`);
        else if (targetFormat === 'luks1') process.stderr.write(`LUKS1 headers have no tokens: open ${dst} with --key-id ${created.id}.\n`);
        process.stdout.write(`${created.id}\n`);
        process.stderr.write(describe(report));
      } else process.stdout.write(describe(report));
    });

  const verifyCommand = program
    .command('verify')
    .description("Compare two images' plaintext (any of raw, qcow2, LUKS1, LUKS2); exit 7 at the first difference.")
    .argument('<src>', 'first image')
    .argument('<dst>', 'second image')
    .option('--src-format <format>', "first image's expected format; plain for a plain dm-crypt volume (see --src-cipher)")
    .option('--dst-format <format>', "second image's expected format; plain for a plain dm-crypt volume (see --dst-cipher)")
    .option('--src-key-file <file>', "first image's LUKS passphrase file ('-' = stdin)")
    .option('--dst-key-file <file>', "second image's LUKS passphrase file ('-' = stdin)")
    .option('--src-key-id <id>', "managed key whose LUKS passphrase opens the first image")
    .option('--dst-key-id <id>', "managed key whose LUKS passphrase opens the second image")
    .option('--tries <n>', 'how often a passphrase typed at the terminal may be retried (default 3)')
    .option('--workers <n>', 'crypto worker threads (default: one per core)')
    .option('--json', 'JSON progress lines and a JSON summary on stdout');
  addPlainOptions(verifyCommand, 'src-', 'plain first image');
  addKeyfileRangeOptions(verifyCommand, 'src-');
  addPlainOptions(verifyCommand, 'dst-', 'plain second image');
  addKeyfileRangeOptions(verifyCommand, 'dst-');
  addKeyManagerOptions(verifyCommand, { help: false });
  verifyCommand
    .addHelpText('after', `
Examples:
  brickcrypt verify disk.qcow2 vol.luks --dst-key-file pass.txt
  brickcrypt verify old.plain vol.luks --src-format plain --src-key-size 512 --src-key-file key.bin --dst-key-file pass.txt
${PLAIN_HELP}
${KEY_MANAGER_HELP}`)
    .action(async (a: string, b: string, opts: Record<string, string | boolean | undefined>) => {
      const keys = opts as KeyOptions;
      checkKeyFiles(keys);
      const formats = [...IMAGE_FORMATS, 'luks', 'plain'] as const;
      const aFormat = opts.srcFormat === undefined ? undefined : parseChoice(String(opts.srcFormat), 'src-format', formats);
      const bFormat = opts.dstFormat === undefined ? undefined : parseChoice(String(opts.dstFormat), 'dst-format', formats);
      const aPlain = plainSide(opts, 'src-', aFormat, keys, a);
      const bPlain = plainSide(opts, 'dst-', bFormat, keys, b);
      const aKey = aPlain ? { source: undefined, typed: false } : await existingImageSource(keys, 'source', a);
      const bKey = bPlain ? { source: undefined, typed: false } : await existingImageSource(keys, 'target', b);
      const json = opts.json === true;
      const progress = progressReporter(json, 'verify');
      const report = await withCancellation((signal) =>
        verify({
          a,
          b,
          aPassphrase: aKey.source,
          bPassphrase: bKey.source,
          ...(aKey.typed ? { aPassphraseTries: triesOf(opts) } : {}),
          ...(bKey.typed ? { bPassphraseTries: triesOf(opts) } : {}),
          onWrongPassphrase,
          ...(aPlain ? { aPlain } : {}),
          ...(bPlain ? { bPlain } : {}),
          ...(aFormat !== undefined && aFormat !== 'plain' ? { aFormat } : {}),
          ...(bFormat !== undefined && bFormat !== 'plain' ? { bFormat } : {}),
          workers: opts.workers === undefined ? undefined : parseInteger(String(opts.workers), 'workers', 0, 64),
          signal,
          onProgress: (p) => progress.update(p),
        }),
      ).finally(() => progress.stop());
      if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report }) + '\n');
      else process.stdout.write(`Images are equal: ${report.bytes} bytes of plaintext compared (${report.a.format} vs ${report.b.format}).\n`);
    });
}
