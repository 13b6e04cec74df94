/**
 * Online re-key, and with a detached header online decryption and encryption (the layouts
 * without a data shift): the process that serves the volume (`brickcrypt attach`) runs the
 * engine itself, on the same data device as its export, with the engine's zone gate
 * wired to the `ReencryptingDevice` it serves — so clients keep reading and writing while the
 * data is rewritten, and the header records progress exactly as an offline run does.
 *
 * Another process asks for it over a control socket next to the volume (`VOLUME.ctl`, mode 0600),
 * one JSON object per line:
 *   client → server  {"op":"reencrypt","passphrase":BASE64,"options":{...}}   then optionally {"op":"stop"}
 *                    (options.decrypt / options.encrypt with options.header select the mode)
 *   server → client  {"event":"progress","done":N,"total":N}* then {"event":"done","report":{...}}
 *                    or {"event":"error","code":...,"message":...,"exitCode":N}
 * `stop` (the CLI got SIGINT/SIGTERM) ends the run at the next zone boundary. A client that
 * disappears without `stop` (killed) does not stop the run: the server finishes it.
 */
import net from 'node:net';
import { chmodSync, rmSync, statSync } from 'node:fs';
import type { BlockDevice } from '../block-device.js';
import { EncryptedDevice } from '../devices/encrypted-device.js';
import { ReencryptingDevice } from '../devices/reencrypting-device.js';
import { SliceDevice } from '../devices/slice-device.js';
import { decryptLuks2, type DecryptZoneGate } from '../luks/reencrypt/decrypt.js';
import { poolDecryptCipher, type DecryptVolumeReport } from './decrypt.js';
import { poolPlainZoneCipher } from './encrypt.js';
import { encryptLuks2, type EncryptReport } from '../luks/reencrypt/encrypt.js';
import { FileDevice } from '../devices/file-device.js';
import { mandatoryRequirements, u64 } from '../formats/luks2/metadata.js';
import { decodeReencryptState, forwardOffset, REENCRYPT_REQ_VERSION, validateReencryptState } from '../formats/luks2/reencrypt-state.js';
import { readLuks2Headers } from '../luks/luks2-io.js';
import { onlineReencryptVersion } from '../luks/requirements.js';
import { openReencryptKeys, verifyReencryptDigest } from '../luks/reencrypt/keys.js';
import {
  BrickcryptError,
  CancelledError,
  CorruptHeaderError,
  DeviceIoError,
  InvalidArgumentError,
  LockedError,
  NotImplementedError,
  RemoteCommandError,
  ReencryptionInProgressError,
  UnsupportedError,
  WrongPassphraseError,
  exitCodeOf,
} from '../errors.js';
import { reencryptLuks2, type ReencryptOptions, type ReencryptReport, type ZoneGate } from '../luks/reencrypt/engine.js';
import { Passphrase, VolumeKey } from '../secret.js';
import { poolZoneCipher } from './reencrypt.js';
import type { CryptoPool } from './worker-pool.js';

/** Hot zone of an online run: small, since client requests into the zone wait for it (docs/reencrypt.md). */
export const ONLINE_HOTZONE_BYTES = 16 * 1024 * 1024;

/** The control socket of the process serving `volumePath` (an absolute path). */
export function controlPathFor(volumePath: string): string {
  return `${volumePath}.ctl`;
}

/**
 * The engine options a control client may set (the rest — devices, ciphers, gate — are the
 * server's). `decrypt` / `encrypt` ask for a decryption / an encryption (detached header
 * only); `header` is the header file the client named (absolute), checked against the one the
 * server serves with (an encryption creates it when the server has none).
 */
export type OnlineReencryptOptions = Pick<
  ReencryptOptions,
  'keyslot' | 'cipher' | 'keySizeBits' | 'sectorSize' | 'resilience' | 'resilienceHash' | 'hotzoneSize' | 'resumeOnly' | 'initOnly' | 'pbkdf' | 'hash' | 'iterTimeMs' | 'iterations' | 'memoryKiB' | 'parallel'
> & { decrypt?: boolean; encrypt?: boolean; header?: string };

const NUMBER_KEYS = ['keyslot', 'keySizeBits', 'sectorSize', 'hotzoneSize', 'iterTimeMs', 'iterations', 'memoryKiB', 'parallel'] as const;
const STRING_KEYS = ['cipher', 'resilience', 'resilienceHash', 'pbkdf', 'hash', 'header'] as const;
const BOOLEAN_KEYS = ['resumeOnly', 'initOnly', 'decrypt', 'encrypt'] as const;

/** Keeps the known option keys of the right types; anything else is an `InvalidArgumentError`. */
export function parseOnlineOptions(raw: unknown): OnlineReencryptOptions {
  if (raw === undefined) return {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new InvalidArgumentError('Online reencryption options must be an object.');
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined) continue;
    const ok =
      ((NUMBER_KEYS as readonly string[]).includes(k) && typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) ||
      ((STRING_KEYS as readonly string[]).includes(k) && typeof v === 'string') ||
      ((BOOLEAN_KEYS as readonly string[]).includes(k) && typeof v === 'boolean');
    if (!ok) throw new InvalidArgumentError(`Online reencryption option ${k} is unknown or has the wrong type.`);
    out[k] = v;
  }
  if (out.resilience !== undefined && !['checksum', 'journal', 'none'].includes(out.resilience as string)) throw new InvalidArgumentError(`Unknown resilience ${String(out.resilience)}.`);
  if (out.pbkdf !== undefined && !['pbkdf2', 'argon2i', 'argon2id'].includes(out.pbkdf as string)) throw new InvalidArgumentError(`Unknown PBKDF ${String(out.pbkdf)}.`);
  return out as OnlineReencryptOptions;
}

export interface OnlineReencryptorOptions {
  /** The data device the served view decrypts (the engine rewrites its ciphertext). */
  data: BlockDevice;
  /** Detached header, when the volume has one, and its file (to check a client's `--header` against). */
  header?: BlockDevice;
  headerPath?: string;
  /** The served view. */
  view: ReencryptingDevice;
  /** Worker pool for the engine's zone ciphers and the new-key view's offload. */
  pool: CryptoPool;
  /** As the served view's (dm-crypt allow_discards). */
  allowDiscards?: boolean;
  /**
   * The old view's geometry, checked against what the header says; `encryption` `plain` for a
   * raw volume served as it is (which only an online encryption with a detached header turns into LUKS2).
   */
  old: { encryption: string; sectorSize: number; ivTweak: number; dataOffset: number };
  log?: (message: string) => void;
}

/** Runs reencryptions of a served volume in the serving process, one at a time. */
export class OnlineReencryptor {
  #running: { promise: Promise<unknown>; abort: AbortController } | undefined;
  /** The served (old-key) view's parameters; the new ones after a finished run. */
  #old: OnlineReencryptorOptions['old'];
  /** A finished decryption: the volume is plain, the header holds no key. */
  #plain = false;
  /** The detached header and its file: given, or created by an online encryption (then closed by `close()`). */
  #header: BlockDevice | undefined;
  #headerPath: string | undefined;
  #ownHeader: FileDevice | undefined;

  constructor(readonly options: OnlineReencryptorOptions) {
    this.#old = options.old;
    this.#header = options.header;
    this.#headerPath = options.headerPath;
  }

  /** Closes a header file this reencryptor created (an online encryption); call after the last run. */
  async close(): Promise<void> {
    const h = this.#ownHeader;
    this.#ownHeader = undefined;
    await h?.close();
  }

  get running(): boolean {
    return this.#running !== undefined;
  }

  /** The zone gate wired to the served view. */
  gate(): ZoneGate {
    const { view, data, pool } = this.options;
    return {
      begin: async (from, to, area) => {
        const old = this.#old;
        const plain = from === undefined;
        if (plain !== (old.encryption === 'plain')) throw new DeviceIoError('The header no longer describes the volume as it is served; detach and re-attach it.');
        const moved = from !== undefined && (from.encryption !== old.encryption || from.sectorSize !== old.sectorSize || from.ivTweak !== old.ivTweak);
        if (moved || area.dataOffset !== old.dataOffset || area.dataSize !== view.size) {
          throw new DeviceIoError('The header no longer describes the volume as it is served; detach and re-attach it.');
        }
        if (view.hasNewView) {
          if (view.direction !== 'forward') throw new DeviceIoError('The served volume is being decrypted; resume that with `brickcrypt reencrypt --decrypt --resume-only`.');
          return;
        }
        const offload = pool.sectorCrypto({ encryption: to.encryption, keyBytes: to.keyBytes, sectorSize: to.sectorSize }, to.key);
        const params = { encryption: to.encryption, keyBytes: to.keyBytes, sectorSize: to.sectorSize, ivTweak: to.ivTweak, dataOffset: area.dataOffset, payloadSize: area.dataSize };
        let next: EncryptedDevice;
        try {
          next = EncryptedDevice.open(data, params, VolumeKey.copyOf(to.key), { allowDiscards: this.options.allowDiscards === true, cryptoOffload: offload });
        } catch (err) {
          await offload.close();
          throw err;
        }
        try {
          view.installNew(next);
        } catch (err) {
          await next.close();
          throw err;
        }
      },
      enter: (offset, length) => view.enterZone(offset, length),
      leave: (offset, length, outcome) => view.leaveZone(offset, length, outcome),
    };
  }

  /**
   * The zone gate of a decryption (detached header, backward): the new view is the data device
   * itself (plaintext at offset 0, not owned by the view), installed once the key is open.
   */
  decryptGate(): DecryptZoneGate {
    const { view, data } = this.options;
    return {
      begin: async (from, area) => {
        const old = this.#old;
        if (from.encryption !== old.encryption || from.sectorSize !== old.sectorSize || from.ivTweak !== old.ivTweak || area.dataOffset !== old.dataOffset || area.dataSize !== view.size) {
          throw new DeviceIoError('The header no longer describes the volume as it is served; detach and re-attach it.');
        }
        if (view.hasNewView) {
          if (view.direction !== 'backward') throw new DeviceIoError('The served volume is being re-keyed; finish that first.');
          return;
        }
        view.installNew(new SliceDevice(data, old.dataOffset, view.size), 'backward');
      },
      enter: (offset, length) => view.enterZone(offset, length),
      leave: (offset, length, outcome) => view.leaveZone(offset, length, outcome),
    };
  }

  /**
   * What a decryption needs that only the server can check, before anything is written: a
   * detached header at data offset 0 (the attached layout moves the data: not built online),
   * named by the client as the one served.
   */
  #checkDecrypt(options: OnlineReencryptOptions): void {
    if (this.#old.encryption === 'plain') throw new InvalidArgumentError('The served volume is plain data, not LUKS: there is nothing to decrypt.');
    if (!this.#header || this.#old.dataOffset !== 0) {
      throw new NotImplementedError('Online decryption of a volume with its header inside it (a data shift) is not built; detach the volume and run `brickcrypt reencrypt --decrypt` offline.');
    }
    this.#checkHeaderPath(options.header);
  }

  /** The client's `--header` must be the file the volume is served with (same device and inode). */
  #checkHeaderPath(given: string | undefined): void {
    const served = this.#headerPath;
    if (given === undefined) throw new InvalidArgumentError(`The volume is served with the detached header ${served ?? '(unknown)'}: give it with --header.`);
    let same = false;
    try {
      const [a, b] = [statSync(given), statSync(served!)];
      same = a.dev === b.dev && a.ino === b.ino;
    } catch {
      same = false;
    }
    if (!same) throw new InvalidArgumentError(`--header ${given} is not the header the volume is served with${served ? ` (${served})` : ''}.`);
  }

  /**
   * Re-keys the served volume (or resumes). `passphrase` is kept by the caller. Refuses a second
   * run while one is going with `LockedError`.
   */
  async run(passphrase: Passphrase, options: OnlineReencryptOptions & { signal?: AbortSignal; onProgress?: ReencryptOptions['onProgress'] }): Promise<ReencryptReport> {
    if (options.decrypt || options.encrypt) throw new InvalidArgumentError('Use decrypt() or encrypt() for a decryption or an encryption.');
    const { header: _h, decrypt: _d, encrypt: _e, ...engine } = options;
    return this.#exclusive(options.signal, async (signal) => {
      if (this.#old.encryption === 'plain') throw new InvalidArgumentError('The served volume is plain data, not LUKS: encrypt it with `brickcrypt reencrypt --encrypt --header FILE`.');
      const report = await reencryptLuks2(this.options.data, {
        ...engine,
        hotzoneSize: engine.hotzoneSize ?? ONLINE_HOTZONE_BYTES,
        passphrases: [passphrase],
        ...(this.#header ? { headerDevice: this.#header } : {}),
        zoneCipher: poolZoneCipher(this.options.pool),
        zoneGate: this.gate(),
        signal,
      });
      if (report.finished) {
        // One key again: the new view serves everything and is the old one of a next re-key.
        await this.options.view.restart();
        this.#old = { encryption: report.encryption, sectorSize: report.sectorSize, ivTweak: this.#old.ivTweak, dataOffset: this.#old.dataOffset };
      }
      return report;
    });
  }

  /**
   * Decrypts the served volume in place (or resumes a decryption): detached header only, zones
   * backward as offline (src/luks/reencrypt/decrypt.ts). At the end the old view is closed (its
   * key wiped) and the plaintext is served as it lies on the data device.
   */
  async decrypt(passphrase: Passphrase, options: OnlineReencryptOptions & { signal?: AbortSignal; onProgress?: ReencryptOptions['onProgress'] }): Promise<DecryptVolumeReport> {
    const { header: _h, decrypt: _d, encrypt: _e, cipher, keySizeBits, sectorSize, ...engine } = options;
    if (cipher !== undefined || keySizeBits !== undefined || sectorSize !== undefined) throw new InvalidArgumentError('--cipher, --key-size and --sector-size do not apply to --decrypt.');
    return this.#exclusive(options.signal, async (signal) => {
      this.#checkDecrypt(options);
      const { signal: _s, ...rest } = engine;
      const report = await decryptLuks2(this.options.data, {
        ...rest,
        hotzoneSize: rest.hotzoneSize ?? ONLINE_HOTZONE_BYTES,
        passphrases: [passphrase],
        headerDevice: this.#header!,
        decryptCipher: poolDecryptCipher(this.options.pool),
        zoneGate: this.decryptGate(),
        signal,
      });
      if (report.finished) {
        await this.options.view.retireOld();
        this.#plain = true;
      }
      return { ...report, header: this.#headerPath ?? '', exported: false, headerRemoved: false };
    });
  }

  /**
   * Encrypts a served raw volume in place into LUKS2 with a detached header (created at the
   * client's `--header` path when missing, as offline), forward as offline (the re-key engine
   * with plaintext as its old side): the new view is the encrypting view, installed once the key
   * exists. At the end the volume is LUKS2 and served through the new key; a later online re-key
   * or decryption uses that header. Growing the file (no `--header`) would shift the data: refused.
   */
  async encrypt(passphrase: Passphrase, options: OnlineReencryptOptions & { signal?: AbortSignal; onProgress?: ReencryptOptions['onProgress'] }): Promise<EncryptReport> {
    const { header: headerPath, decrypt: _d, encrypt: _e, ...engine } = options;
    return this.#exclusive(options.signal, async (signal) => {
      if (this.#old.encryption !== 'plain') throw new InvalidArgumentError('The served volume is already LUKS: there is nothing to encrypt.');
      if (headerPath === undefined) throw new NotImplementedError('Online encryption without a detached header (the file grows and the data shifts) is not built; give --header FILE.');
      if (this.#header) this.#checkHeaderPath(headerPath);
      else {
        // Created by the server (it holds the volume lock), at the path the client named.
        this.#ownHeader = await FileDevice.open(headerPath, { create: true });
        this.#header = this.#ownHeader;
        this.#headerPath = headerPath;
      }
      const { signal: _s, ...rest } = engine;
      const report = await encryptLuks2(this.options.data, {
        ...rest,
        hotzoneSize: rest.hotzoneSize ?? ONLINE_HOTZONE_BYTES,
        passphrases: [passphrase],
        headerDevice: this.#header,
        plainZoneCipher: poolPlainZoneCipher(this.options.pool),
        zoneGate: this.gate(),
        signal,
      });
      if (report.finished) {
        await this.options.view.restart();
        this.#old = { encryption: report.encryption, sectorSize: report.sectorSize, ivTweak: 0, dataOffset: 0 };
      }
      return report;
    });
  }

  /** One run at a time; `signal` (the client's stop) and `stop()` both end it at a zone boundary. */
  async #exclusive<R>(outer: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<R>): Promise<R> {
    if (this.#running) throw new LockedError(`A reencryption of this volume is already running in process ${process.pid}.`);
    if (this.#plain) throw new InvalidArgumentError('The served volume was decrypted: it is plain data now, with nothing to reencrypt online (detach it first).');
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    outer?.addEventListener('abort', onAbort, { once: true });
    if (outer?.aborted) abort.abort();
    const promise = (async () => {
      try {
        return await fn(abort.signal);
      } finally {
        outer?.removeEventListener('abort', onAbort);
      }
    })();
    this.#running = { promise, abort };
    try {
      return await promise;
    } finally {
      this.#running = undefined;
    }
  }

  /** Asks a running reencryption to stop at its next zone boundary and waits for it. */
  async stop(): Promise<void> {
    const r = this.#running;
    if (!r) return;
    r.abort.abort();
    await r.promise.catch(() => undefined);
  }
}

/** A line-delimited JSON reader over a socket. */
function onLines(socket: net.Socket, fn: (msg: unknown) => void, onBad: () => void): void {
  let buf = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > 1 << 20) {
      onBad();
      return;
    }
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim() === '') continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        onBad();
        return;
      }
      fn(msg);
    }
  });
}

function send(socket: net.Socket, msg: object): void {
  if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(msg) + '\n');
}

function errorMessage(err: unknown): object {
  if (err instanceof BrickcryptError) return { event: 'error', code: err.code, name: err.name, message: err.message, exitCode: err.exitCode };
  return { event: 'error', code: 'INTERNAL', name: 'Error', message: String((err as Error)?.message ?? err), exitCode: exitCodeOf(err) };
}

/**
 * Listens on `path` (a Unix socket, created with mode 0600: whoever may connect gets to send a
 * passphrase and start a re-key) and hands each request to `reencryptor`. Removed by `close()`.
 */
export async function serveReencryptControl(path: string, reencryptor: OnlineReencryptor, log: (m: string) => void = () => undefined): Promise<{ close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const handlers = new Set<Promise<void>>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let started = false;
    let stopRun: AbortController | undefined;
    onLines(
      socket,
      (msg) => {
        const m = msg as { op?: unknown; passphrase?: unknown; options?: unknown };
        if (m.op === 'stop') {
          stopRun?.abort();
          return;
        }
        if (m.op !== 'reencrypt' || started) {
          send(socket, errorMessage(new InvalidArgumentError(`Unexpected control request ${JSON.stringify(m.op)}.`)));
          socket.end();
          return;
        }
        started = true;
        let options: OnlineReencryptOptions;
        let passphrase: Passphrase;
        try {
          if (typeof m.passphrase !== 'string') throw new InvalidArgumentError('The control request carries no passphrase.');
          options = parseOnlineOptions(m.options);
          passphrase = new Passphrase(new Uint8Array(Buffer.from(m.passphrase, 'base64')));
        } catch (err) {
          send(socket, errorMessage(err));
          socket.end();
          return;
        }
        stopRun = new AbortController();
        log(`online reencryption requested (${options.decrypt ? 'decrypt' : options.encrypt ? 'encrypt' : 're-key'}${options.resumeOnly ? ', resume' : options.initOnly ? ', init only' : ''})`);
        let lastSent = 0;
        const runOptions = {
          ...options,
          signal: stopRun.signal,
          onProgress: ({ done, total }: { done: number; total: number }) => {
            const now = performance.now();
            if (done < total && now - lastSent < 100) return;
            lastSent = now;
            send(socket, { event: 'progress', done, total });
          },
        };
        const running: Promise<{ finished: boolean; bytes: number; seconds: number }> = options.decrypt
          ? reencryptor.decrypt(passphrase, runOptions)
          : options.encrypt
            ? reencryptor.encrypt(passphrase, runOptions)
            : reencryptor.run(passphrase, runOptions);
        const handled = running
          .then(
            (report) => {
              log(`online ${options.decrypt ? 'decryption' : options.encrypt ? 'encryption' : 'reencryption'} ${report.finished ? 'finished' : 'recorded'}: ${report.bytes} bytes rewritten in ${report.seconds.toFixed(1)} s`);
              send(socket, { event: 'done', report });
            },
            (err: unknown) => {
              log(`online reencryption stopped: ${(err as Error)?.message ?? String(err)}`);
              send(socket, errorMessage(err));
            },
          )
          .finally(() => {
            passphrase.wipe();
            socket.end();
            handlers.delete(handled);
          });
        handlers.add(handled);
      },
      () => socket.destroy(),
    );
  });
  rmSync(path, { force: true });
  // The socket is created by listen(); a restrictive umask closes the window before the chmod.
  const mask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(mask);
  }
  chmodSync(path, 0o600);
  return {
    close: async () => {
      // A run still going reports to its client first (the caller stops the reencryptor before).
      await Promise.all([...handlers]);
      const closing = new Promise<void>((resolve) => server.close(() => resolve()));
      // Ended sockets get a moment to deliver their last message, then go.
      const grace = new Promise<void>((resolve) => setTimeout(resolve, 1000).unref());
      await Promise.race([Promise.all([...sockets].map((s) => new Promise<void>((r) => (s.closed ? r() : s.once('close', () => r()))))), grace]);
      for (const s of sockets) s.destroy();
      await closing;
      rmSync(path, { force: true });
    },
  };
}

/** Maps an error event back to the error class the CLI acts on (retry, exit 130) or keeps its code and exit code. */
function remoteError(m: { code?: unknown; message?: unknown; exitCode?: unknown }): BrickcryptError {
  const message = typeof m.message === 'string' ? m.message : 'The serving process reported an error.';
  if (m.code === 'WRONG_PASSPHRASE') return new WrongPassphraseError(message);
  if (m.code === 'CANCELLED') return new CancelledError(message);
  return new RemoteCommandError(typeof m.code === 'string' ? m.code : 'INTERNAL', message, typeof m.exitCode === 'number' ? m.exitCode : 70);
}

/**
 * Asks the process serving the volume (control socket `path`) to re-key it, reporting progress
 * as it comes; `signal` sends `stop` (the server stops at the next zone boundary and reports
 * `CancelledError`). Rejects with `DeviceIoError` when the socket does not answer.
 */
export async function requestOnlineReencrypt<R = ReencryptReport>(
  path: string,
  passphrase: Passphrase,
  options: OnlineReencryptOptions & { signal?: AbortSignal; onProgress?: ReencryptOptions['onProgress'] },
): Promise<R> {
  const { signal, onProgress, ...rest } = options;
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(path, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (err) => reject(new DeviceIoError(`Cannot reach the serving process at ${path}: ${err.message}`, { cause: err })));
  });
  try {
    return await new Promise<R>((resolve, reject) => {
      let settled = false;
      const finish = (fn: () => void) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = () => send(socket, { op: 'stop' });
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.on('error', (err) => finish(() => reject(new DeviceIoError(`The serving process at ${path} failed: ${err.message}`, { cause: err }))));
      socket.on('close', () => finish(() => reject(new DeviceIoError(`The serving process at ${path} closed the control connection without a result (did it stop or crash? resume with \`brickcrypt reencrypt --resume-only\`).`))));
      onLines(
        socket,
        (msg) => {
          const m = msg as { event?: unknown; done?: unknown; total?: unknown; report?: unknown };
          if (m.event === 'progress' && typeof m.done === 'number' && typeof m.total === 'number') onProgress?.({ done: m.done, total: m.total });
          else if (m.event === 'done') finish(() => resolve(m.report as R));
          else if (m.event === 'error') finish(() => reject(remoteError(m as Record<string, unknown>)));
        },
        () => finish(() => reject(new DeviceIoError(`The serving process at ${path} sent a malformed message.`))),
      );
      const pass = Buffer.from(passphrase.expose());
      send(socket, { op: 'reencrypt', passphrase: pass.toString('base64'), options: rest });
      pass.fill(0);
      if (signal?.aborted) onAbort();
    });
  } finally {
    socket.destroy();
  }
}

/**
 * The served view of a volume whose reencryption is recorded and unfinished: a re-key (forward,
 * cryptsetup's `reencrypt` mode), or with a detached header an encryption (forward, plaintext
 * above the boundary) or a decryption (backward, plaintext above the boundary, ciphertext below).
 * The passphrase must open the keys the state names (the state's digest is checked); an
 * interrupted hot zone is fenced (requests into it fail) until `brickcrypt reencrypt
 * --resume-only` — which the returned reencryptor runs in this process — recovers it. Anything
 * else recorded (a data shift, another direction) is a `ReencryptionInProgressError`.
 */
export async function openReencryptingView(
  data: BlockDevice,
  header: BlockDevice | undefined,
  passphrase: Passphrase,
  pool: CryptoPool,
  options: { allowDiscards?: boolean } = {},
): Promise<{ view: ReencryptingDevice; old: OnlineReencryptorOptions['old']; boundary: number; hot?: { offset: number; length: number } }> {
  const hdr = header ?? data;
  const { state: st } = await readLuks2Headers(hdr, header ? undefined : data.size);
  const meta = st.metadata;
  const state = decodeReencryptState(meta);
  if (!state) throw new InvalidArgumentError('No reencryption is recorded on this volume.');
  const unknown = mandatoryRequirements(meta).filter((r) => onlineReencryptVersion(r) === undefined);
  const ks = state.keyslot;
  // Served: a re-key (forward), and with a detached header an encryption (forward, plaintext
  // before the boundary's old side) or a decryption (backward) — the layouts without a data shift.
  const prevType = meta.segments[state.previousId]?.type;
  const finType = meta.segments[state.finalId]?.type;
  const shape =
    ks.mode === 'reencrypt' && ks.direction === 'forward'
      ? 'reencrypt'
      : header && ks.mode === 'encrypt' && ks.direction === 'forward' && prevType === 'linear' && finType === 'crypt'
        ? 'encrypt'
        : header && ks.mode === 'decrypt' && ks.direction === 'backward' && prevType === 'crypt' && finType === 'linear'
          ? 'decrypt'
          : undefined;
  if (unknown.length > 0 || state.version !== REENCRYPT_REQ_VERSION || shape === undefined || state.movedId !== undefined || ks.shiftSize !== undefined) {
    throw new ReencryptionInProgressError(`The recorded reencryption (${ks.mode}, ${ks.direction}) cannot be served online; finish it with \`brickcrypt reencrypt --resume-only\` first.`);
  }
  validateReencryptState(meta, state);
  const keys = await openReencryptKeys(hdr, meta, state, [passphrase]);
  const opened: BlockDevice[] = [];
  const handed = new Set<VolumeKey>();
  try {
    await verifyReencryptDigest(meta, state, keys);
    const prev = meta.segments[state.previousId]!;
    const fin = meta.segments[state.finalId]!;
    const dataOffset = u64(fin.offset, 'segment offset');
    if (u64(prev.offset, 'segment offset') !== dataOffset) throw new UnsupportedError('Reencryption with a data shift is not supported.');
    const dataSize = data.size - dataOffset;
    const size = (id: string) => u64(meta.segments[id]!.size, 'segment size');
    let boundary: number;
    let hot: { offset: number; length: number } | undefined;
    if (shape === 'decrypt') {
      // Backward: crypt [0, boundary), plaintext above it (reencrypt_make_post_segments_backward).
      const segs = state.active.map((id) => meta.segments[id]!);
      if (state.hotId !== undefined) {
        hot = { offset: u64(meta.segments[state.hotId]!.offset, 'hot segment offset'), length: size(state.hotId) };
        boundary = hot.offset + hot.length;
      } else if (segs.length === 1) boundary = segs[0]!.type === 'linear' ? 0 : dataSize;
      else if (segs.length === 2 && segs[0]!.type === 'crypt') boundary = size(state.active[0]!);
      else throw new CorruptHeaderError(`LUKS2 decryption: unexpected layout of ${segs.length} data segments.`);
    } else {
      const single = state.active.length === 1 ? state.active[0]! : undefined;
      const allNew = single !== undefined && state.newDigestId !== undefined && meta.digests[state.newDigestId]!.segments.includes(single) && !(state.oldDigestId !== undefined && meta.digests[state.oldDigestId]!.segments.includes(single));
      if (allNew) boundary = dataSize;
      else {
        boundary = forwardOffset(meta, state);
        if (state.hotId !== undefined) hot = { offset: boundary, length: size(state.hotId) };
      }
    }
    if (boundary > dataSize || (hot && hot.offset + hot.length > dataSize)) throw new CorruptHeaderError(`The reencryption has ${boundary} bytes done but the data area is only ${dataSize} bytes.`);
    const viewOf = (seg: typeof prev, key: VolumeKey): EncryptedDevice => {
      const params = { encryption: seg.encryption!, keyBytes: key.length, sectorSize: seg.sector_size!, ivTweak: u64(seg.iv_tweak ?? '0', 'iv_tweak'), dataOffset, payloadSize: dataSize };
      const offload = pool.sectorCrypto({ encryption: params.encryption, keyBytes: params.keyBytes, sectorSize: params.sectorSize }, key.expose());
      try {
        const v = EncryptedDevice.open(data, params, key, { allowDiscards: options.allowDiscards === true, cryptoOffload: offload });
        opened.push(v);
        handed.add(key);
        return v;
      } catch (err) {
        void offload.close();
        throw err;
      }
    };
    // The plaintext side of an encryption or decryption is the data device itself (not owned).
    const plainView = () => new SliceDevice(data, dataOffset, dataSize);
    const oldView = shape === 'encrypt' ? plainView() : viewOf(prev, keys.old!);
    const newView = shape === 'decrypt' ? plainView() : viewOf(fin, keys.new!);
    const view = new ReencryptingDevice(oldView, { new: newView, boundary, direction: shape === 'decrypt' ? 'backward' : 'forward', ...(hot ? { fenced: hot } : {}) });
    return {
      view,
      old: shape === 'encrypt' ? { encryption: 'plain', sectorSize: 512, ivTweak: 0, dataOffset } : { encryption: prev.encryption!, sectorSize: prev.sector_size!, ivTweak: u64(prev.iv_tweak ?? '0', 'iv_tweak'), dataOffset },
      boundary,
      ...(hot ? { hot } : {}),
    };
  } catch (err) {
    for (const v of opened) await v.close(); // wipes their keys
    // A key handed to a view was wiped by its close; the others are wiped here.
    if (keys.old && !handed.has(keys.old)) keys.old.wipe();
    if (keys.new && !handed.has(keys.new)) keys.new.wipe();
    throw err;
  }
}
