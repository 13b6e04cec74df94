/**
 * `brickcrypt attach` serves a volume over NBD (like `qemu-nbd`), `brickcrypt detach`
 * stops it. LUKS volumes are unlocked and served as plaintext; raw files as they are;
 * qcow2 images read-only. Writers take `<volume>.lock` so two writers never share a volume.
 *
 * Example:
 *   brickcrypt attach vol.img --key-file pass --socket /run/vol.sock --daemon --pid-file /run/vol.pid
 *   qemu-img info nbd+unix:///?socket=/run/vol.sock
 *   brickcrypt detach --pid-file /run/vol.pid
 */
import type { Command } from 'commander';
import { spawn } from 'node:child_process';
import { promises as fsp, writeFileSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import type { BlockDevice } from '../../block-device.js';
import { BrickcryptError, InvalidArgumentError, NotFoundError, exitCodeOf, DeviceIoError, ReencryptionInProgressError } from '../../errors.js';
import { FileDevice } from '../../devices/file-device.js';
import { DirtyTracker } from '../../backup/dirty-tracking.js';
import { EncryptedDevice, type SectorCryptoOffload } from '../../devices/encrypted-device.js';
import { ReencryptingDevice } from '../../devices/reencrypting-device.js';
import { SliceDevice } from '../../devices/slice-device.js';
import { OnlineReencryptor, controlPathFor, openReencryptingView, serveReencryptControl } from '../../workflows/reencrypt-online.js';
import { VolumeLock, processAlive } from '../../devices/volume-lock.js';
import { detectFormat } from '../../images/detect.js';
import { openImage } from '../../images/open-image.js';
import { openLuks, unlockLuks } from '../../luks/index.js';
import { CryptoPool, serverWorkerCount } from '../../workflows/worker-pool.js';
import { NbdServer, type ListenTarget } from '../../nbd/server.js';
import { nbdUri } from '../../nbd/uri.js';
import type { Passphrase } from '../../secret.js';
import type { PassphraseInput } from '../passphrase-prompt.js';
import { passphraseInput, readPlainVolumeKey } from '../key-input.js';
import { withPassphraseTries, DEFAULT_TRIES } from '../passphrase-prompt.js';
import { addPlainOptions, PLAIN_HELP, plainParamsFrom } from '../plain-options.js';
import { describePlain, openPlainVolume } from '../../plain/plain-volume.js';
import { addKeyManagerOptions, KEY_MANAGER_HELP, passphraseFromKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger } from '../parse.js';
import { tokenPassphraseInput } from '../token-key.js';

interface AttachOptions extends KeyManagerCliOptions {
  type?: string;
  keyFile?: string;
  keyfileOffset?: string;
  keyfileSize?: string;
  tries?: string;
  keyId?: string;
  header?: string;
  socket?: string;
  listen?: string;
  readOnly?: boolean;
  exportName?: string;
  allowDiscards?: boolean;
  listenAny?: boolean;
  tlsCreds?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
  daemon?: boolean;
  pidFile?: string;
  print?: string;
  qemuSyntax?: string;
  secretFile?: string;
  serveReencrypting?: boolean;
  onlineEncrypt?: boolean;
}

/** Env var marking the detached child of `attach --daemon`. */
const DAEMON_CHILD = 'BRICKCRYPT_ATTACH_DAEMON_CHILD';

function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!m) throw new InvalidArgumentError(`--listen: '${text}' is not HOST:PORT (use [::1]:PORT for IPv6).`);
  return { host: m[1] ?? m[2]!, port: parseInteger(m[3]!, 'listen', 0, 65535) };
}

function keyfileRange(o: AttachOptions): { offset?: number; size?: number } {
  return {
    ...(o.keyfileOffset !== undefined ? { offset: parseInteger(o.keyfileOffset, 'keyfile-offset') } : {}),
    ...(o.keyfileSize !== undefined ? { size: parseInteger(o.keyfileSize, 'keyfile-size', 1) } : {}),
  };
}

/** The volume's passphrase: --key-id, --key-file, the volume's brickcrypt-key-manager token, or a prompt on a terminal. */
async function passphraseSourceFor(o: AttachOptions, what: string, volume: string): Promise<PassphraseInput> {
  const keyId = o.keyId;
  if (keyId !== undefined) return { interactive: false, read: () => passphraseFromKeyManager(o, keyId) };
  if (o.keyFile === undefined) {
    const fromToken = await tokenPassphraseInput(volume, o, o.header);
    if (fromToken) return fromToken;
    if (o.keyManager !== undefined) throw new InvalidArgumentError(`--key-manager needs --key-id ID (${volume} has no brickcrypt-key-manager token).`);
  }
  return passphraseInput({
    ...(o.keyFile !== undefined ? { keyFile: o.keyFile } : {}),
    ...keyfileRange(o),
    prompt: `Enter passphrase for ${volume}: `,
    what: `${what}: --key-file F or --key-id ID (with --key-manager URI)`,
  });
}

async function passphraseFor(o: AttachOptions, what: string, volume: string): Promise<Passphrase> {
  return (await passphraseSourceFor(o, what, volume)).read();
}

function triesOf(o: AttachOptions): number {
  return o.tries === undefined ? DEFAULT_TRIES : parseInteger(o.tries, 'tries', 1, 1000);
}

/** `--print qemu|libvirt`: configuration for QEMU's own LUKS driver (docs/native-qemu.md); nothing is served. */
async function printNative(volume: string, o: AttachOptions): Promise<void> {
  const { renderNativeConfig } = await import('../../attach/native-config.js');
  const passphrase = await passphraseFor(o, `${volume} is a LUKS volume`, volume);
  try {
    const cfg = await renderNativeConfig({
      volumePath: volume,
      target: o.print as 'qemu' | 'libvirt',
      passphrase,
      ...(o.qemuSyntax !== undefined ? { syntax: o.qemuSyntax as 'blockdev' } : {}),
      ...(o.secretFile !== undefined ? { secretFile: o.secretFile } : {}),
      ...(o.header !== undefined ? { headerPath: o.header } : {}),
      ...(o.socket !== undefined ? { nbdSocket: resolve(o.socket) } : {}),
      readOnly: o.readOnly === true,
    });
    process.stdout.write(cfg.text);
  } finally {
    passphrase.wipe();
  }
}

interface Opened {
  device: BlockDevice;
  format: string;
  readOnly: boolean;
  /** Writable LUKS2: runs online reencryptions requested over the control socket. */
  reencryptor?: OnlineReencryptor;
  /** Set for LUKS: the values QEMU's native LUKS driver needs. */
  close(): Promise<void>;
}

/**
 * A writable volume file gets a dirty-chunk bitmap (src/backup/dirty-tracking.ts): marked in use
 * before the first write, clean again after the last write and a flush. Block devices have none.
 */
async function startTracking(path: string, readOnly: boolean): Promise<DirtyTracker | undefined> {
  if (readOnly) return undefined;
  const st = await fsp.stat(path);
  if (!st.isFile()) return undefined;
  return DirtyTracker.start(path);
}

/** After the last write: flush the container, then the bitmap becomes clean (a failed flush leaves it in use). */
async function finishTracking(file: FileDevice, tracker: DirtyTracker | undefined): Promise<void> {
  if (!tracker) return;
  await file.flush();
  await tracker.finish();
}

const PLAIN_OPTION_KEYS = ['cipher', 'keySize', 'hash', 'offset', 'skip', 'size', 'sectorSize'] as const;

/** `--type plain`: the volume has no header; its parameters and key come from the options. */
async function openPlainVolumeFor(path: string, o: AttachOptions): Promise<Opened> {
  if (o.keyManager !== undefined && o.keyId === undefined) throw new InvalidArgumentError('--key-manager needs --key-id ID (a plain volume has no header to hold a token).');
  const params = plainParamsFrom(o as unknown as Record<string, unknown>, '');
  const wantReadOnly = o.readOnly === true;
  const range = keyfileRange(o);
  const keyId = o.keyId;
  const key = await readPlainVolumeKey(params, {
    ...(o.keyFile !== undefined ? { keyFile: o.keyFile } : {}),
    ...(keyId !== undefined ? { managed: () => passphraseFromKeyManager(o, keyId) } : {}),
    ...(range.offset !== undefined ? { keyfileOffset: range.offset } : {}),
    ...(range.size !== undefined ? { keyfileSize: range.size } : {}),
    prompt: `Enter passphrase for ${path}: `,
  });
  let file: FileDevice | undefined;
  let pool: CryptoPool | undefined;
  try {
    file = await FileDevice.open(path, { readOnly: wantReadOnly });
    const tracker = await startTracking(path, wantReadOnly);
    if (params.offset === 0) {
      const detected = await detectFormat(file);
      if (detected !== 'raw') throw new InvalidArgumentError(`${path} holds ${detected} data, not a plain dm-crypt volume.`);
    }
    pool = CryptoPool.create(serverWorkerCount());
    const cryptoOffload = pool.sectorCrypto({ encryption: params.encryption, keyBytes: params.keyBytes, sectorSize: params.sectorSize }, key.expose());
    const device = openPlainVolume(tracker ? tracker.wrap(file) : file, params, key, { readOnly: wantReadOnly, allowDiscards: o.allowDiscards === true, cryptoOffload });
    process.stderr.write(`brickcrypt attach: plain volume ${path}: ${describePlain(params)}\n`);
    const workers = pool;
    const data = file;
    return {
      device,
      format: 'plain',
      readOnly: wantReadOnly,
      close: async () => {
        await device.close(); // wipes the key, also in the workers
        await workers.close();
        await finishTracking(data, tracker);
        await data.close();
      },
    };
  } catch (err) {
    key.wipe();
    await pool?.close();
    await file?.close();
    throw err;
  }
}

/**
 * `--serve-reencrypting`: a LUKS2 volume with a recorded, unfinished re-key, served through both
 * keys (an interrupted hot zone is not served until an online `reencrypt --resume-only` recovers it).
 */
async function openReencrypting(path: string, file: FileDevice, header: FileDevice | undefined, input: PassphraseInput, o: AttachOptions): Promise<Opened> {
  const log = (m: string): void => void process.stderr.write(`brickcrypt attach: ${m}\n`);
  const pool = CryptoPool.create(serverWorkerCount());
  try {
    const tracker = await startTracking(path, false);
    const data = tracker ? tracker.wrap(file) : file;
    const r = await withPassphraseTries(input, (pass) => openReencryptingView(data, header, pass, pool, { allowDiscards: o.allowDiscards === true }), { tries: triesOf(o) });
    const backward = r.view.direction === 'backward';
    const done = backward ? r.view.size - r.boundary : r.boundary;
    log(`${path}: reencryption recorded, ${done} of ${r.view.size} bytes ${backward ? 'decrypted' : 'under the new key'}; finish it with \`brickcrypt reencrypt --resume-only ${path}${header ? ` --header ${o.header}` : ''}\``);
    if (r.hot) log(`bytes ${r.hot.offset}+${r.hot.length} (the interrupted hot zone) are not served until that resume recovers them`);
    const reencryptor = new OnlineReencryptor({ data, ...(header ? { header, headerPath: resolve(o.header!) } : {}), view: r.view, pool, allowDiscards: o.allowDiscards === true, old: r.old, log });
    return {
      device: r.view,
      format: 'luks2',
      readOnly: false,
      reencryptor,
      close: async () => {
        await r.view.close(); // wipes both keys, also in the workers
        await pool.close();
        await finishTracking(file, tracker);
        await file.close();
        await header?.close();
      },
    };
  } catch (err) {
    await pool.close();
    throw err;
  }
}

async function openVolume(path: string, o: AttachOptions): Promise<Opened> {
  const type = o.type === undefined ? undefined : parseChoice(o.type, 'type', ['plain', 'luks', 'luks1', 'luks2', 'raw', 'qcow2'] as const);
  if (o.onlineEncrypt && o.header !== undefined) throw new InvalidArgumentError('--online-encrypt: the header file is named by `brickcrypt reencrypt VOLUME --encrypt --header FILE`, not by attach.');
  if (o.onlineEncrypt && type === 'plain') throw new InvalidArgumentError('--online-encrypt serves a raw file; converting a plain dm-crypt volume online is not built.');
  if (type === 'plain') return openPlainVolumeFor(path, o);
  const stray = PLAIN_OPTION_KEYS.filter((k) => (o as unknown as Record<string, unknown>)[k] !== undefined);
  if (stray.length > 0) throw new InvalidArgumentError('--cipher, --key-size, --hash, --offset, --skip, --size and --sector-size describe a plain volume: they need --type plain.');
  // With a detached header the format is the header's (the data device holds only ciphertext).
  const probe = await FileDevice.open(o.header ?? path, { readOnly: true });
  let format: string;
  try {
    format = await detectFormat(probe);
  } finally {
    await probe.close();
  }
  if (type !== undefined && type !== format && !(type === 'luks' && format.startsWith('luks'))) {
    throw new InvalidArgumentError(`${path} holds ${format} data, not ${type}.`);
  }
  const wantReadOnly = o.readOnly === true;
  if (format === 'qcow2') {
    const img = await openImage(path, { readOnly: true });
    return { device: img.device, format, readOnly: true, close: () => img.close() };
  }
  if (o.onlineEncrypt && (format !== 'raw' || wantReadOnly)) throw new InvalidArgumentError(`--online-encrypt serves a writable raw file (${path} holds ${format} data${wantReadOnly ? ', and --read-only was given' : ''}).`);
  if (format === 'raw') {
    if (o.keyFile || o.keyId) throw new InvalidArgumentError(`${path} is not a LUKS volume; a key is not needed (a plain dm-crypt volume needs --type plain).`);
    const dev = await FileDevice.open(path, { readOnly: wantReadOnly });
    try {
      const tracker = await startTracking(path, wantReadOnly);
      const data = tracker ? tracker.wrap(dev) : dev;
      if (o.onlineEncrypt) {
        // Served through a view an online `reencrypt --encrypt --header H` switches over zone by
        // zone (the old side is the file itself, not owned by the view).
        const pool = CryptoPool.create(serverWorkerCount());
        const view = new ReencryptingDevice(new SliceDevice(data, 0, data.size));
        const reencryptor = new OnlineReencryptor({ data, view, pool, allowDiscards: o.allowDiscards === true, old: { encryption: 'plain', sectorSize: 512, ivTweak: 0, dataOffset: 0 }, log: (m) => process.stderr.write(`brickcrypt attach: ${m}\n`) });
        return {
          device: view,
          format,
          readOnly: false,
          reencryptor,
          close: async () => {
            await view.close(); // wipes a new key, also in the workers
            await reencryptor.close();
            await pool.close();
            await finishTracking(dev, tracker);
            await dev.close();
          },
        };
      }
      return {
        device: data,
        format,
        readOnly: wantReadOnly,
        close: async () => {
          await finishTracking(dev, tracker);
          await dev.close();
        },
      };
    } catch (err) {
      await dev.close();
      throw err;
    }
  }
  // LUKS1 / LUKS2.
  const input = await passphraseSourceFor(o, `${path} is ${format}`, path);
  const file = await FileDevice.open(path, { readOnly: wantReadOnly });
  let header: FileDevice | undefined;
  let pool: CryptoPool | undefined;
  try {
    if (o.header) header = await FileDevice.open(o.header, { readOnly: wantReadOnly });
    // A fenced payload (reencryption in progress, unknown requirement) is refused before any passphrase is asked.
    const probed = await openLuks(file, { readOnly: true, ...(header ? { headerDevice: header } : {}) });
    if (probed.payloadFence instanceof ReencryptionInProgressError && format === 'luks2' && !wantReadOnly) {
      if (o.serveReencrypting) return await openReencrypting(path, file, header, input, o);
      throw new ReencryptionInProgressError(`${probed.payloadFence.message} Or serve it meanwhile with \`brickcrypt attach --serve-reencrypting\` and finish it online.`);
    }
    probed.assertPayloadAccess();
    const { volume, key } = await withPassphraseTries(
      input,
      (passphrase) => unlockLuks(file, passphrase, { readOnly: wantReadOnly, forWrite: !wantReadOnly, ...(header ? { headerDevice: header } : {}) }),
      { tries: triesOf(o) },
    );
    // Large reads and writes are decrypted/encrypted by worker threads, in place in shared
    // memory, so the cipher work runs beside the main thread's protocol and socket work.
    const tracker = await startTracking(path, wantReadOnly);
    pool = CryptoPool.create(serverWorkerCount());
    let cryptoOffload: SectorCryptoOffload;
    try {
      const offload = pool.sectorCrypto({ encryption: volume.encryption, keyBytes: volume.keyBytes, sectorSize: volume.sectorSize }, key.expose());
      cryptoOffload = offload;
    } catch (err) {
      key.wipe();
      throw err;
    }
    const data = tracker ? tracker.wrap(file) : file;
    const plain = EncryptedDevice.open(data, volume, key, { readOnly: wantReadOnly, allowDiscards: o.allowDiscards === true, cryptoOffload });
    const workers = pool;
    // A writable LUKS2 volume is served through the view an online re-key switches over zone by zone.
    const online = format === 'luks2' && !wantReadOnly;
    const device = online ? new ReencryptingDevice(plain) : plain;
    const reencryptor = online
      ? new OnlineReencryptor({
          data,
          ...(header ? { header, headerPath: resolve(o.header!) } : {}),
          view: device as ReencryptingDevice,
          pool: workers,
          allowDiscards: o.allowDiscards === true,
          old: { encryption: volume.encryption, sectorSize: volume.sectorSize, ivTweak: volume.ivTweak, dataOffset: volume.dataOffset },
          log: (m) => process.stderr.write(`brickcrypt attach: ${m}\n`),
        })
      : undefined;
    return {
      device,
      format,
      readOnly: wantReadOnly,
      ...(reencryptor ? { reencryptor } : {}),
      close: async () => {
        await device.close(); // wipes the key, also in the workers
        await workers.close();
        await finishTracking(file, tracker);
        await file.close();
        await header?.close();
      },
    };
  } catch (err) {
    await pool?.close();
    await file.close();
    await header?.close();
    throw err;
  }
}

/** Runs the server in this process until SIGTERM/SIGINT; returns once everything is flushed and closed. */
async function runAttach(volumeArg: string, o: AttachOptions, onReady: (uri: string) => void): Promise<void> {
  const volume = resolve(volumeArg);
  await fsp.stat(volume).catch(() => {
    throw new NotFoundError(`${volume}: no such file or directory`);
  });
  const target: ListenTarget = o.socket ? { socket: resolve(o.socket) } : parseListen(o.listen!);
  const lock = o.readOnly ? undefined : await VolumeLock.acquire(volume);
  // `detach --socket S` finds the server through S.pid, so that file is written for every socket.
  const pidFiles = [...new Set([...(o.pidFile ? [resolve(o.pidFile)] : []), ...(o.socket ? [`${resolve(o.socket)}.pid`] : [])])];
  let opened: Opened | undefined;
  let server: NbdServer | undefined;
  let control: { close(): Promise<void> } | undefined;
  const controlPath = controlPathFor(volume);
  const exitCleanup = (): void => {
    if (control) rmSync(controlPath, { force: true });
    lock?.releaseSync();
    for (const f of pidFiles) rmSync(f, { force: true });
  };
  process.once('exit', exitCleanup);
  // Listen for signals from the start, so a stop request during unlocking still cleans up.
  let stop!: () => void;
  const stopped = new Promise<void>((resolveStop) => {
    stop = (): void => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolveStop();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  try {
    opened = await openVolume(volume, o);
    const exportName = o.exportName ?? '';
    const tls = o.tlsPsk ? { pskFile: o.tlsPsk } : o.tlsCreds ? { certDir: o.tlsCreds, verifyPeer: o.tlsVerifyPeer === true } : undefined;
    server = new NbdServer({
      exports: { [exportName]: { device: opened.device, readOnly: opened.readOnly, description: `${opened.format} volume ${volume}`, allowDiscards: o.allowDiscards === true } },
      defaultExport: exportName,
      ...(tls ? { tls } : {}),
      listenAny: o.listenAny === true,
      log: (m) => process.stderr.write(`brickcrypt attach: ${m}\n`),
    });
    await server.listen(target);
    const port = 'port' in target ? (server.port ?? target.port) : undefined;
    if (opened.reencryptor) {
      // `brickcrypt reencrypt VOLUME` finds this process through VOLUME.ctl (docs/reencrypt.md, "Online").
      try {
        control = await serveReencryptControl(controlPath, opened.reencryptor, (m) => process.stderr.write(`brickcrypt attach: ${m}\n`));
      } catch (err) {
        process.stderr.write(`brickcrypt attach: no online reencryption (control socket ${controlPath}: ${(err as Error).message})\n`);
      }
    }
    for (const f of pidFiles) writeFileSync(f, `${process.pid}\n`);
    const uri = nbdUri({ exportName, tls: tls !== undefined, ...('socket' in target ? { socket: target.socket } : { host: target.host, port: port! }) });
    onReady(`${uri}\n`);
    await stopped;
  } finally {
    stop();
    // A running online reencryption stops at its next zone boundary (a consistent, resumable state).
    await opened?.reencryptor?.stop();
    await control?.close().catch(() => undefined);
    await server?.close().catch((err: unknown) => process.stderr.write(`brickcrypt attach: close: ${(err as Error).message}\n`));
    await opened?.close();
    await lock?.release();
    for (const f of pidFiles) await fsp.rm(f, { force: true });
    process.off('exit', exitCleanup);
  }
}

/** `--daemon`: start a detached copy of this command, wait until it serves, print its URI. */
async function daemonize(argv: string[]): Promise<void> {
  const args = argv.slice(1).filter((a) => a !== '--daemon');
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env: { ...process.env, [DAEMON_CHILD]: '1' },
  });
  const message = await new Promise<{ ready?: string; error?: { code: string; message: string; exitCode: number } }>((res) => {
    child.once('message', (m) => res(m as { ready?: string }));
    child.once('exit', (code) => res({ error: { code: 'INTERNAL', message: `attach exited with status ${code} before serving`, exitCode: code ?? 70 } }));
  });
  child.removeAllListeners();
  if (message.error) {
    process.stderr.write(`brickcrypt: error ${message.error.code}: ${message.error.message}\n`);
    process.exitCode = message.error.exitCode;
    return;
  }
  child.disconnect();
  child.unref();
  process.stdout.write(message.ready!);
}

async function detach(o: { socket?: string; pidFile?: string; timeout?: string }): Promise<void> {
  const pidFile = o.pidFile ? resolve(o.pidFile) : o.socket ? `${resolve(o.socket)}.pid` : undefined;
  if (!pidFile) throw new InvalidArgumentError('detach needs --socket PATH or --pid-file P.');
  let text: string;
  try {
    text = (await fsp.readFile(pidFile, 'utf8')).trim();
  } catch {
    throw new NotFoundError(`No attach process found: ${pidFile} does not exist.`);
  }
  const pid = Number.parseInt(text, 10);
  if (!/^\d+$/.test(text) || !processAlive(pid)) {
    await fsp.rm(pidFile, { force: true });
    throw new NotFoundError(`Process ${text} from ${pidFile} is not running (stale pid file removed).`);
  }
  process.kill(pid, 'SIGTERM');
  const timeoutMs = (o.timeout ? parseInteger(o.timeout, 'timeout', 1) : 60) * 1000;
  const deadline = Date.now() + timeoutMs;
  while (processAlive(pid)) {
    if (Date.now() > deadline) throw new DeviceIoError(`Process ${pid} did not stop within ${timeoutMs / 1000} s.`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function register(program: Command): void {
  const attach = program
    .command('attach')
    .description('serve a volume over NBD (LUKS unlocked, raw as is, qcow2 read-only); prints the NBD URI')
    .argument('<volume>', 'volume file or block device');
  addKeyManagerOptions(attach, { help: false });
  addPlainOptions(attach, '');
  attach
    .option('--key-file <file>', 'LUKS passphrase file (every byte counts); for --type plain the key itself ("-": a passphrase on stdin)')
    .option('--key-id <id>', 'managed key whose LUKS passphrase opens the volume (key manager: --key-manager)')
    .option('--tries <n>', 'how often a passphrase typed at the terminal may be retried (default 3)')
    .option('--type <type>', 'plain for a plain dm-crypt volume (no header); luks, luks1, luks2, raw, qcow2 are checked against the content')
    .option('--header <file>', 'detached LUKS header')
    .option('--keyfile-offset <bytes>', 'skip this many bytes of the key file')
    .option('--keyfile-size <bytes>', 'read this many bytes of the key file')
    .option('--socket <path>', 'listen on a Unix socket')
    .option('--listen <host:port>', 'listen on TCP (127.0.0.1 or [::1] unless --listen-any)')
    .option('--read-only', 'serve read-only (no lock is taken)')
    .option('--export-name <name>', 'NBD export name (default: the empty, default export)')
    .option('--allow-discards', 'let TRIM/WRITE_ZEROES deallocate (reveals unused blocks of an encrypted volume)')
    .option('--listen-any', 'allow listening on non-loopback addresses')
    .option('--tls-creds <dir>', 'require TLS with ca-cert.pem, server-cert.pem, server-key.pem from DIR')
    .option('--tls-verify-peer', 'with --tls-creds: require a client certificate signed by ca-cert.pem')
    .option('--tls-psk <file>', 'require TLS with pre-shared keys (username:hexkey lines)')
    .option('--daemon', 'run in the background once serving (needs --pid-file)')
    .option('--pid-file <path>', 'write the server pid here (default with --socket: SOCKET.pid)')
    .option('--print <what>', 'instead of serving, print configuration for QEMU\'s own LUKS driver: qemu or libvirt (docs/native-qemu.md)')
    .option('--qemu-syntax <form>', 'with --print qemu: blockdev, blockdev-json or drive')
    .option('--secret-file <path>', 'with --print: where to write the passphrase file (0600)')
    .option('--online-encrypt', 'serve a raw file so that `brickcrypt reencrypt VOLUME --encrypt --header FILE` encrypts it into LUKS2 online (detached header)')
    .option('--serve-reencrypting', 'serve a LUKS2 volume whose reencryption is recorded and unfinished (a re-key; with --header also an encryption or decryption), through both sides; finish it online with `brickcrypt reencrypt --resume-only VOLUME`')
    .addHelpText('after', `
Examples:
  brickcrypt attach vol.luks --key-file pass --socket /run/vol.sock --daemon --pid-file /run/vol.pid
  brickcrypt attach vol.luks --socket /run/vol.sock            (asks for the passphrase on a terminal)
  brickcrypt attach old.plain --type plain --cipher aes-xts-plain64 --key-size 512 --key-id ID --socket /run/p.sock
Without --key-file or --key-id, a LUKS2 volume's brickcrypt-key-manager token names the key
(brickcrypt token --help; --key-manager then overrides the token's key manager). Without a token
either and with a terminal on standard input, the passphrase is asked for (no echo), up to --tries times.
  brickcrypt attach vol.luks --socket /run/vol.sock --user compute1 --roles reader   (key from the token)
${PLAIN_HELP}
${KEY_MANAGER_HELP}`)
    .action(async (volume: string, o: AttachOptions) => {
      if (o.print !== undefined) {
        parseChoice(o.print, 'print', ['qemu', 'libvirt'] as const);
        if (o.daemon || o.listen) throw new InvalidArgumentError('--print only prints configuration; it does not serve (no --daemon or --listen).');
        await printNative(resolve(volume), o);
        return;
      }
      if (o.qemuSyntax !== undefined || o.secretFile !== undefined) throw new InvalidArgumentError('--qemu-syntax and --secret-file go with --print.');
      if (!!o.socket === !!o.listen) throw new InvalidArgumentError('Give exactly one of --socket PATH or --listen HOST:PORT.');
      if (o.keyFile !== undefined && o.keyId !== undefined) throw new InvalidArgumentError('Give either --key-file or --key-manager/--key-id, not both.');
      if (o.tlsCreds && o.tlsPsk) throw new InvalidArgumentError('Give either --tls-creds or --tls-psk, not both.');
      if (o.tlsVerifyPeer && !o.tlsCreds) throw new InvalidArgumentError('--tls-verify-peer needs --tls-creds.');
      if (o.listen) parseListen(o.listen);
      if (o.daemon) {
        if (!o.pidFile) throw new InvalidArgumentError('--daemon needs --pid-file.');
        if (o.keyFile === '-') throw new InvalidArgumentError('--daemon cannot read the key from standard input.');
        await daemonize(process.argv);
        return;
      }
      const child = process.env[DAEMON_CHILD] === '1' && typeof process.send === 'function';
      try {
        await runAttach(volume, o, (text) => {
          if (child) {
            process.send!({ ready: text });
            process.disconnect();
          } else process.stdout.write(text);
        });
      } catch (err) {
        if (child && process.connected) {
          const e = err instanceof BrickcryptError ? { code: err.code, message: err.message } : { code: 'INTERNAL', message: String((err as Error)?.message ?? err) };
          process.send!({ error: { ...e, exitCode: exitCodeOf(err) } });
          process.disconnect();
        }
        throw err;
      }
    });

  program
    .command('detach')
    .description('stop an attach server: it flushes, closes and exits; waits until it is gone')
    .option('--socket <path>', 'the attach server listening on this Unix socket (uses SOCKET.pid)')
    .option('--pid-file <path>', 'pid file given to attach')
    .option('--timeout <seconds>', 'how long to wait (default 60)')
    .action(async (o: { socket?: string; pidFile?: string; timeout?: string }) => {
      if (!!o.socket === !!o.pidFile) throw new InvalidArgumentError('Give exactly one of --socket PATH or --pid-file P.');
      await detach(o);
    });
}

