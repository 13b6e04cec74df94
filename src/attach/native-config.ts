/**
 * `brickcrypt attach VOLUME --print qemu|libvirt`: configuration for consumers that decrypt
 * a LUKS volume inside QEMU (its `luks` block driver) instead of through brickcrypt's NBD
 * server.
 *
 * What QEMU 7.2 (Debian 12) can do, and so what this module accepts:
 * - LUKS1 only: its luks driver rejects LUKS2 ("LUKS version 2 is not supported").
 * - No detached header: the luks driver's `header` option arrived in QEMU 9.0.
 * - Ciphers aes/cast5/serpent/twofish, modes ecb/cbc/xts/ctr, IV generators
 *   plain/plain64/essiv (crypto/block-luks.c name tables).
 * Anything else gets an `UnsupportedError` whose message names the NBD route.
 *
 * The passphrase is checked against the header (read-only) before anything is printed, and
 * handed over in a 0600 file, never on a command line.
 */
import { resolve, basename, join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../errors.js';
import { FileDevice, statPath } from '../devices/file-device.js';
import { LuksVolume } from '../luks/index.js';
import type { Passphrase } from '../secret.js';
import { qemuLuksArgs, qemuNbdBlockdev, checkQemuId, QEMU_SYNTAXES, type QemuSyntax } from './qemu-options.js';
import { libvirtDiskXml, libvirtSecretXml, checkXmlSafe } from './libvirt-xml.js';
import { shellJoin, shellQuote } from './shell-quote.js';
import { removeSecretFile, writeSecretFile, type SecretFile } from './secret-file.js';

export { removeSecretFile, writeSecretFile, type SecretFile, type SecretFileOptions } from './secret-file.js';

export type NativeTarget = 'qemu' | 'libvirt';
export const NATIVE_TARGETS: readonly NativeTarget[] = ['qemu', 'libvirt'];
export { QEMU_SYNTAXES, type QemuSyntax } from './qemu-options.js';

export interface NativeConfigOptions {
  /** The LUKS volume (file or block device); printed as an absolute path. */
  volumePath: string;
  target: NativeTarget;
  /** Opens a keyslot; checked before anything is written or printed. The caller keeps (and wipes) it. */
  passphrase: Passphrase;
  /** QEMU option form. Default `blockdev` (key=value). */
  syntax?: QemuSyntax;
  /** Where to write the passphrase file (`--secret-file`). Default: `$XDG_RUNTIME_DIR/brickcrypt/` or a new temp dir. */
  secretFile?: string;
  /** Replace an existing `secretFile`. */
  overwriteSecretFile?: boolean;
  /** QEMU secret object id. Default `sec0`. */
  secretId?: string;
  /** QEMU node name / drive id. Default `vol0`. */
  nodeName?: string;
  /** libvirt secret UUID. Default: derived from the LUKS UUID and the volume path (`libvirtSecretUuid`), so re-running redefines the same secret. */
  secretUuid?: string;
  /** libvirt guest disk name and bus. Default `vdb`, `virtio`. */
  targetDev?: string;
  targetBus?: string;
  /** libvirt domain for `virsh attach-device`. Default: the script reads `$DOMAIN`. */
  domain?: string;
  /** Attach read-only. */
  readOnly?: boolean;
  /** Detached LUKS header: QEMU 7.2 cannot use one, so this is refused (with the NBD route). */
  headerPath?: string;
  /** Check only this keyslot. */
  keyslot?: number;
  /** Socket path shown in the NBD-route advice. */
  nbdSocket?: string;
  /** Environment for `XDG_RUNTIME_DIR`. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

/** What the header says, as far as QEMU cares. */
export interface NativeVolumeInfo {
  path: string;
  isBlockDevice: boolean;
  version: 1 | 2;
  uuid: string;
  encryption: string;
  keyBytes: number;
  /** Bytes of header before the ciphertext. */
  dataOffset: number;
  payloadSize: number;
  detachedHeader: boolean;
}

export interface NativeConfig {
  /** Ready to print as-is (ends with a newline). */
  text: string;
  target: NativeTarget;
  /** QEMU option form (qemu target only). */
  syntax?: QemuSyntax;
  /** The passphrase file written (0600). The consumer reads it at start; delete it afterwards. */
  secretFile: SecretFile;
  volume: NativeVolumeInfo;
  /** qemu: the argv words the text prints (`--object ... --blockdev ...`). */
  qemuArgs?: string[];
  /** libvirt: the XML documents and the secret UUID the text prints. */
  libvirt?: { secretUuid: string; secretXml: string; diskXml: string };
}

const QEMU_CIPHERS = new Set(['aes', 'cast5', 'serpent', 'twofish']);
const QEMU_MODES = new Set(['ecb', 'cbc', 'xts', 'ctr']);
const QEMU_IVGENS = new Set(['plain', 'plain64', 'essiv']);

/**
 * Throws `UnsupportedError` (naming the NBD route) when QEMU 7.2's luks driver cannot open
 * a volume with these properties. Pure.
 *
 * @example
 * checkQemuLuksSupport({ path: '/v', version: 2, encryption: 'aes-xts-plain64', detachedHeader: false });
 * // throws: "QEMU 7.2 decrypts LUKS1 only ... brickcrypt attach /v --socket ..."
 */
export function checkQemuLuksSupport(
  volume: Pick<NativeVolumeInfo, 'path' | 'version' | 'encryption' | 'detachedHeader'>,
  advice: { nbdSocket?: string; nodeName?: string; env?: NodeJS.ProcessEnv } = {},
): void {
  const route = () => nbdRouteAdvice(volume.path, advice);
  if (volume.version !== 1) {
    throw new UnsupportedError(
      `${volume.path} is a LUKS${volume.version} volume; QEMU 7.2 decrypts LUKS1 only (its luks driver says "LUKS version 2 is not supported"), so it cannot be attached natively.\n${route()}`,
    );
  }
  if (volume.detachedHeader) {
    throw new UnsupportedError(
      `${volume.path} has a detached LUKS header; QEMU's luks driver takes a separate header only from QEMU 9.0 on (option 'header'), not in 7.2.\n${route()}`,
    );
  }
  const [cipher = '', mode = '', ...rest] = volume.encryption.split('-');
  const ivgen = rest.join('-').split(':')[0] ?? '';
  const problem = !QEMU_CIPHERS.has(cipher)
    ? `cipher '${cipher}'`
    : !QEMU_MODES.has(mode)
      ? `cipher mode '${mode}'`
      : ivgen !== '' && !QEMU_IVGENS.has(ivgen)
        ? `IV generator '${ivgen}'`
        : undefined;
  if (problem !== undefined) {
    throw new UnsupportedError(`${volume.path} uses ${volume.encryption}; QEMU 7.2's luks driver has no ${problem}.\n${route()}`);
  }
}

/**
 * The advice for volumes QEMU cannot decrypt: serve the plaintext over NBD with
 * brickcrypt and point QEMU's nbd driver at the socket.
 *
 * @example
 * nbdRouteAdvice('/srv/vol.img', { nbdSocket: '/run/vol.sock' });
 */
export function nbdRouteAdvice(volumePath: string, options: { nbdSocket?: string; nodeName?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const socket = options.nbdSocket ?? defaultNbdSocket(volumePath, options.env ?? process.env);
  return [
    'Use the NBD route instead (brickcrypt decrypts, QEMU reads plaintext over a Unix socket):',
    `  ${shellJoin(['brickcrypt', 'attach', volumePath, '--socket', socket])}`,
    'then give QEMU:',
    `  ${shellJoin(['--blockdev', qemuNbdBlockdev(socket, options.nodeName ?? 'vol0')])}`,
  ].join('\n');
}

function defaultNbdSocket(volumePath: string, env: NodeJS.ProcessEnv): string {
  const base = env.XDG_RUNTIME_DIR?.startsWith('/') ? env.XDG_RUNTIME_DIR : tmpdir();
  return join(base, 'brickcrypt', `${basename(volumePath).replace(/[^A-Za-z0-9._-]/g, '_')}.sock`);
}

/**
 * Reads the header read-only and checks that `passphrase` opens it and that QEMU 7.2 can
 * decrypt the volume. Throws `WrongPassphraseError`, `UnsupportedError`, `NotFoundError`,
 * `UnknownFormatError`/`CorruptHeaderError`.
 */
export async function inspectForQemu(
  volumePath: string,
  passphrase: Passphrase,
  options: Pick<NativeConfigOptions, 'headerPath' | 'keyslot' | 'nbdSocket' | 'nodeName' | 'env'> = {},
): Promise<NativeVolumeInfo> {
  const path = resolve(volumePath);
  const st = await statPath(path);
  if (!st.exists) throw new NotFoundError(`${path}: no such file or device.`);
  const data = await FileDevice.open(path, { readOnly: true });
  const header = options.headerPath !== undefined ? await FileDevice.open(resolve(options.headerPath), { readOnly: true }).catch(async (err) => {
    await data.close();
    throw err;
  }) : undefined;
  try {
    const vol = await LuksVolume.open(data, header ? { readOnly: true, headerDevice: header } : { readOnly: true });
    const info: NativeVolumeInfo = {
      path,
      isBlockDevice: st.isBlockDevice,
      version: vol.version,
      uuid: vol.uuid,
      encryption: vol.version === 1 ? vol.encryption : safeGet(() => vol.encryption, 'unknown'),
      keyBytes: vol.version === 1 ? vol.keyBytes : safeGet(() => vol.keyBytes, 0),
      dataOffset: vol.version === 1 ? vol.dataOffset : safeGet(() => vol.dataOffset, 0),
      payloadSize: vol.version === 1 ? vol.payloadSize : safeGet(() => vol.payloadSize, 0),
      // LUKS1 payload offset 0 means the header lives elsewhere (cryptsetup --header).
      detachedHeader: vol.detachedHeader || (vol.version === 1 && vol.dataOffset === 0),
    };
    vol.assertPayloadAccess();
    checkQemuLuksSupport(info, options);
    const unlockOptions = options.keyslot !== undefined ? { keyslot: options.keyslot } : {};
    const { key } = await vol.unlock(passphrase, unlockOptions);
    key.wipe();
    return info;
  } finally {
    await data.close();
    await header?.close();
  }
}

function safeGet<T>(get: () => T, fallback: T): T {
  try {
    return get();
  } catch {
    return fallback;
  }
}

/**
 * Checks the volume and passphrase, writes the passphrase to a 0600 file and renders the
 * QEMU options or the libvirt secret + disk definitions, ready to print.
 *
 * @example
 * const pass = await readKeyFile({ keyFile: 'vol.key' });
 * try {
 *   const cfg = await renderNativeConfig({ volumePath: 'vol.img', target: 'qemu', passphrase: pass });
 *   process.stdout.write(cfg.text);
 * } finally { pass.wipe(); }
 */
export async function renderNativeConfig(options: NativeConfigOptions): Promise<NativeConfig> {
  if (!NATIVE_TARGETS.includes(options.target)) {
    throw new InvalidArgumentError(`--print: '${String(options.target)}' is not one of ${NATIVE_TARGETS.join(', ')}.`);
  }
  const syntax = options.syntax ?? 'blockdev';
  if (!QEMU_SYNTAXES.includes(syntax)) throw new InvalidArgumentError(`Unknown QEMU option syntax '${String(syntax)}' (use ${QEMU_SYNTAXES.join(', ')}).`);
  if (options.syntax !== undefined && options.target !== 'qemu') throw new InvalidArgumentError('A QEMU option syntax only applies to --print qemu.');
  const secretId = options.secretId ?? 'sec0';
  const nodeName = options.nodeName ?? 'vol0';
  checkQemuId(secretId, 'Secret id');
  checkQemuId(nodeName, options.syntax === 'drive' ? 'Drive id' : 'Node name');
  const givenUuid = options.secretUuid?.toLowerCase();
  const volumePath = resolve(options.volumePath);
  checkXmlSafe(volumePath, 'The volume path');
  if (options.domain !== undefined && (options.domain === '' || /[\u0000-\u001f]/.test(options.domain))) {
    throw new InvalidArgumentError('The libvirt domain name is empty or contains control characters.');
  }
  if (options.secretFile !== undefined) checkXmlSafe(resolve(options.secretFile), 'The secret file path');
  // Render once with placeholders so bad ids/uuids/device names fail before any file is written.
  renderText(options, syntax, secretId, nodeName, givenUuid ?? PLACEHOLDER_UUID, placeholderInfo(volumePath), '/nonexistent');

  const volume = await inspectForQemu(volumePath, options.passphrase, options);
  const secretUuid = givenUuid ?? libvirtSecretUuid(volume.uuid, volume.path);
  const secretFile = await writeSecretFile(options.passphrase, {
    volumePath,
    ...(options.secretFile !== undefined ? { path: options.secretFile } : {}),
    ...(options.overwriteSecretFile !== undefined ? { overwrite: options.overwriteSecretFile } : {}),
    ...(options.env !== undefined ? { env: options.env } : {}),
  });
  try {
    checkXmlSafe(secretFile.path, 'The secret file path');
    const r = renderText(options, syntax, secretId, nodeName, secretUuid, volume, secretFile.path);
    return { ...r, target: options.target, secretFile, volume };
  } catch (err) {
    await removeSecretFile(secretFile);
    throw err;
  }
}

const PLACEHOLDER_UUID = '00000000-0000-4000-8000-000000000000';

/** RFC 4122 name-based (SHA-1, version 5) UUID namespace for brickcrypt's libvirt secrets. */
const SECRET_UUID_NAMESPACE = Buffer.from('6f1d2c4e8b7a4f0e9c3d5a1b2e4f6a7c', 'hex');

/**
 * The default libvirt secret UUID: a version 5 UUID of the LUKS UUID and the volume path.
 * Stable, so printing the configuration again redefines the same secret instead of adding a
 * second one for the same volume (libvirt refuses two secrets with one usage path).
 *
 * @example
 * libvirtSecretUuid('3f1c...-luks-uuid', '/srv/vol.img'); // '9b2e4c1a-....-5...-....-............'
 */
export function libvirtSecretUuid(luksUuid: string, volumePath: string): string {
  const h = createHash('sha1').update(SECRET_UUID_NAMESPACE).update(`${luksUuid}\n${volumePath}`, 'utf8').digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

function placeholderInfo(path: string): NativeVolumeInfo {
  return { path, isBlockDevice: false, version: 1, uuid: '', encryption: '', keyBytes: 0, dataOffset: 0, payloadSize: 0, detachedHeader: false };
}

function describe(v: NativeVolumeInfo): string {
  return `LUKS1, ${v.encryption}, ${v.keyBytes * 8}-bit key, ${humanSize(v.payloadSize)} of data at offset ${v.dataOffset}`;
}

function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  return `${v} ${units[i]}`;
}

type Rendered = Pick<NativeConfig, 'text' | 'syntax' | 'qemuArgs' | 'libvirt'>;

function renderText(o: NativeConfigOptions, syntax: QemuSyntax, secretId: string, nodeName: string, secretUuid: string, v: NativeVolumeInfo, secretPath: string): Rendered {
  return o.target === 'qemu' ? renderQemu(o, syntax, secretId, nodeName, v, secretPath) : renderLibvirt(o, secretUuid, v, secretPath);
}

function renderQemu(o: NativeConfigOptions, syntax: QemuSyntax, secretId: string, nodeName: string, v: NativeVolumeInfo, secretPath: string): Rendered {
  const args = qemuLuksArgs({
    volumePath: v.path,
    isBlockDevice: v.isBlockDevice,
    secretFile: secretPath,
    secretId,
    nodeName,
    syntax,
    ...(o.readOnly ? { readOnly: true } : {}),
  });
  const consumers = syntax === 'drive' ? 'qemu-system-*' : 'qemu-system-* or qemu-storage-daemon';
  const device = syntax === 'drive' ? `-device virtio-blk-pci,drive=${nodeName}` : `--device virtio-blk-pci,drive=${nodeName}`;
  const lines = [
    `# QEMU decrypts ${v.path} itself (${describe(v)}).`,
    `# Passphrase file (mode 0600, raw bytes): ${secretPath}`,
    `#   QEMU reads it once at start-up; remove it afterwards: ${shellJoin(['rm', '-f', '--', secretPath])}`,
    `# Add these options to the ${consumers} command line; give the guest the disk with e.g.`,
    `#   ${device}`,
  ];
  const optionLines: string[] = [];
  for (let i = 0; i < args.length; i += 2) optionLines.push(`${shellQuote(args[i]!)} ${shellQuote(args[i + 1]!)}`);
  lines.push(optionLines.join(' \\\n'));
  return { text: lines.join('\n') + '\n', syntax, qemuArgs: args };
}

/** A here-document delimiter that cannot occur in the XML (which has no line breaks in values). */
const HEREDOC = 'BRICKCRYPT_XML_END';

function renderLibvirt(o: NativeConfigOptions, secretUuid: string, v: NativeVolumeInfo, secretPath: string): Rendered {
  const secretXml = libvirtSecretXml({ uuid: secretUuid, volumePath: v.path });
  const diskXml = libvirtDiskXml({
    volumePath: v.path,
    isBlockDevice: v.isBlockDevice,
    secretUuid,
    targetDev: o.targetDev ?? 'vdb',
    targetBus: o.targetBus ?? 'virtio',
    ...(o.readOnly ? { readOnly: true } : {}),
  });
  const domain = o.domain !== undefined ? shellQuote(o.domain) : '"${DOMAIN:?set DOMAIN to the libvirt domain name}"';
  const lines = [
    `# libvirt: QEMU decrypts ${v.path} itself (${describe(v)}).`,
    `# Passphrase file (mode 0600, raw bytes): ${secretPath}`,
    '# 1. Define the libvirt secret (usage type volume, keyed by the volume path):',
    `virsh secret-define /dev/stdin <<'${HEREDOC}'`,
    secretXml.trimEnd(),
    HEREDOC,
    '# 2. Give it the passphrase from the file, then remove the file.',
    '#    (virsh without --file: --base64 "$(base64 -w0 FILE)" works too, but shows the value in the process list.)',
    `${shellJoin(['virsh', 'secret-set-value', '--secret', secretUuid, '--file', secretPath, '--plain'])} && ${shellJoin(['rm', '-f', '--', secretPath])}`,
    '# 3. Attach the disk (or paste the <disk> element into the domain with virsh edit):',
    `virsh attach-device ${domain} /dev/stdin --persistent <<'${HEREDOC}'`,
    diskXml.trimEnd(),
    HEREDOC,
  ];
  return { text: lines.join('\n') + '\n', libvirt: { secretUuid, secretXml, diskXml } };
}
