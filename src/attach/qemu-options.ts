/**
 * QEMU command-line options for a LUKS1 volume that QEMU decrypts itself (block driver
 * `luks`, QEMU 7.2): the `secret` object holding the passphrase and the block node, in
 * `--blockdev` key=value form, `--blockdev` JSON form or the legacy `-drive` form.
 *
 * Pure: strings in, argv words out. QEMU parses `--object`, `--blockdev` and `-drive`
 * values as comma-separated key=value lists where a literal comma is written `,,`
 * (QEMU docs/system/invocation, "Options with a value containing a comma").
 */
import { InvalidArgumentError } from '../errors.js';

export type QemuSyntax = 'blockdev' | 'blockdev-json' | 'drive';

export const QEMU_SYNTAXES: readonly QemuSyntax[] = ['blockdev', 'blockdev-json', 'drive'];

export interface QemuLuksOptions {
  /** Absolute path of the LUKS1 volume (file or block device). */
  volumePath: string;
  /** The volume is a block device: protocol driver `host_device` instead of `file`. */
  isBlockDevice: boolean;
  /** File holding the raw passphrase bytes (mode 0600). */
  secretFile: string;
  /** QOM id of the secret object (e.g. `sec0`). */
  secretId: string;
  /** Node name (`--blockdev`) or drive id (`-drive`) of the decrypted disk (e.g. `vol0`). */
  nodeName: string;
  syntax: QemuSyntax;
  readOnly?: boolean;
}

/** QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'; node names at most 31 bytes. */
const QEMU_ID = /^[A-Za-z][A-Za-z0-9._-]{0,30}$/;

/**
 * Checks a QOM object id or block node name the way QEMU does, so the printed options
 * cannot fail on the id.
 *
 * @example
 * checkQemuId('sec0', 'secret id'); // ok
 * checkQemuId('0bad', 'node name'); // throws InvalidArgumentError
 */
export function checkQemuId(id: string, what: string): void {
  if (!QEMU_ID.test(id)) {
    throw new InvalidArgumentError(`${what} '${id}' is not a valid QEMU id (a letter, then up to 30 letters, digits, '-', '.' or '_').`);
  }
}

/**
 * Escapes a value for a QEMU key=value list: every `,` becomes `,,`.
 *
 * @example
 * qemuOptValue('/img/a,b.luks'); // "/img/a,,b.luks"
 */
export function qemuOptValue(value: string): string {
  return value.replace(/,/g, ',,');
}

function keyval(pairs: ReadonlyArray<readonly [string, string]>, implied?: string): string {
  const parts = pairs.map(([k, v]) => `${k}=${qemuOptValue(v)}`);
  return (implied !== undefined ? [implied, ...parts] : parts).join(',');
}

/** The `--object secret,...` value: QEMU reads the passphrase bytes from the file as they are. */
export function qemuSecretObject(secretId: string, secretFile: string): string {
  checkQemuId(secretId, 'Secret id');
  return keyval([['id', secretId], ['file', secretFile], ['format', 'raw']], 'secret');
}

/**
 * The argv words to add to a QEMU command line (qemu-system-*, qemu-storage-daemon for the
 * `--blockdev` forms).
 *
 * @example
 * qemuLuksArgs({ volumePath: '/v.img', isBlockDevice: false, secretFile: '/run/s', secretId: 'sec0', nodeName: 'vol0', syntax: 'blockdev' });
 * // ['--object', 'secret,id=sec0,file=/run/s,format=raw',
 * //  '--blockdev', 'driver=luks,node-name=vol0,key-secret=sec0,file.driver=file,file.filename=/v.img']
 */
export function qemuLuksArgs(o: QemuLuksOptions): string[] {
  checkQemuId(o.nodeName, o.syntax === 'drive' ? 'Drive id' : 'Node name');
  const protocol = o.isBlockDevice ? 'host_device' : 'file';
  const object = ['--object', qemuSecretObject(o.secretId, o.secretFile)];
  switch (o.syntax) {
    case 'blockdev': {
      const pairs: Array<[string, string]> = [['driver', 'luks'], ['node-name', o.nodeName], ['key-secret', o.secretId]];
      if (o.readOnly) pairs.push(['read-only', 'on']);
      pairs.push(['file.driver', protocol], ['file.filename', o.volumePath]);
      return [...object, '--blockdev', keyval(pairs)];
    }
    case 'blockdev-json': {
      const node: Record<string, unknown> = { driver: 'luks', 'node-name': o.nodeName, 'key-secret': o.secretId };
      if (o.readOnly) node['read-only'] = true;
      node.file = { driver: protocol, filename: o.volumePath };
      return [...object, '--blockdev', JSON.stringify(node)];
    }
    case 'drive': {
      const pairs: Array<[string, string]> = [['if', 'none'], ['id', o.nodeName], ['driver', 'luks'], ['key-secret', o.secretId]];
      if (o.readOnly) pairs.push(['readonly', 'on']);
      pairs.push(['file.driver', protocol], ['file.filename', o.volumePath]);
      return [...object, '-drive', keyval(pairs)];
    }
    default:
      throw new InvalidArgumentError(`Unknown QEMU option syntax '${String(o.syntax)}' (use ${QEMU_SYNTAXES.join(', ')}).`);
  }
}

/**
 * Options for QEMU's NBD client to reach a `brickcrypt attach --socket PATH` export (the
 * route for volumes QEMU cannot decrypt itself, e.g. LUKS2 in QEMU 7.2).
 *
 * @example
 * qemuNbdBlockdev('/run/brickcrypt/vol.sock', 'vol0');
 * // 'driver=nbd,node-name=vol0,server.type=unix,server.path=/run/brickcrypt/vol.sock'
 */
export function qemuNbdBlockdev(socketPath: string, nodeName: string, exportName?: string): string {
  checkQemuId(nodeName, 'Node name');
  const pairs: Array<[string, string]> = [['driver', 'nbd'], ['node-name', nodeName], ['server.type', 'unix'], ['server.path', socketPath]];
  if (exportName !== undefined) pairs.push(['export', exportName]);
  return keyval(pairs);
}
