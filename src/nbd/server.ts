/**
 * The NBD server: a thin socket shell around the pure protocol state machine
 * (`protocol/session.ts`). It accepts connections on a Unix socket or loopback TCP,
 * feeds bytes to one `NbdSession` per connection, performs the validated I/O on the
 * export's `BlockDevice` — several requests per connection at once, replies in
 * completion order as the protocol allows — and applies back-pressure: it stops
 * reading from a client while too many bytes are in flight or waiting to be sent.
 *
 * Multi-conn: every connection to an export shares one `BlockDevice`, so a FLUSH (or
 * FUA) on any connection flushes the device and covers writes completed on all of them.
 *
 * Discards: with `allowDiscards: false` (the default) TRIM and WRITE_ZEROES write
 * zeros (`writeZeroes(…, { mayTrim: false })`) instead of deallocating, so an encrypted
 * export never reveals which blocks are unused (the same trade-off as dm-crypt's
 * `--allow-discards`).
 *
 * Example:
 * ```ts
 * const server = new NbdServer({ exports: { disk: { device } }, defaultExport: 'disk' });
 * await server.listen({ socket: '/run/disk.sock' });   // nbd+unix:///disk?socket=/run/disk.sock
 * ...
 * await server.close();
 * ```
 */
import net from 'node:net';
import tls from 'node:tls';
import { promises as fsp } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import { AlreadyExistsError, BrickcryptError, InvalidArgumentError, nbdErrnoOf } from '../errors.js';
import { NBD_MAX_PAYLOAD } from './protocol/constants.js';
import { NbdSession, type ExportCatalog, type ExportInfo, type IoRequest, type SessionAction } from './protocol/session.js';
import { loadTlsCredentials, wipeTlsCredentials, type NbdTlsOptions, type TlsCredentials } from './tls-config.js';
import { BufferPool } from '../devices/buffer-pool.js';
import { copyBytes } from '../native-addon.js';

export interface NbdExport {
  device: BlockDevice;
  /** Serve read-only even if the device is writable. */
  readOnly?: boolean;
  description?: string;
  /** Let TRIM/WRITE_ZEROES deallocate (reveals unused blocks of an encrypted volume). Default false. */
  allowDiscards?: boolean;
}

export interface NbdServerOptions {
  /** Export name -> export. */
  exports: Record<string, NbdExport> | Map<string, NbdExport>;
  /** Export served to clients asking for the empty ("default") name. Default: the only export, if there is one. */
  defaultExport?: string;
  /** TLS required (FORCEDTLS) with these credentials; absent: no TLS. */
  tls?: NbdTlsOptions;
  /** Allow TCP listening on addresses other than loopback. */
  listenAny?: boolean;
  /** Largest READ/WRITE request (default 32 MiB). */
  maxPayload?: number;
  /** Stop reading from a client while this many bytes are in flight or queued (default 64 MiB). */
  maxBufferedBytes?: number;
  /**
   * Plain (non-TLS) connections receive into one reused buffer of this many bytes (default
   * 1 MiB) instead of a fresh 64 KiB buffer per read: fewer reads, no allocation, no page
   * faults, and each WRITE payload byte is copied once, into its pooled buffer. 0: Node's
   * default stream reads.
   */
  receiveBufferBytes?: number;
  /** Diagnostics (never receives data or keys). */
  log?: (message: string) => void;
}

export type ListenTarget = { socket: string } | { host: string; port: number };

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

export class NbdServer {
  readonly #exports = new Map<string, NbdExport>();
  readonly #infos = new Map<string, ExportInfo>();
  readonly #defaultExport: string | undefined;
  readonly #options: NbdServerOptions;
  readonly #connections = new Set<Connection>();
  #server: net.Server | undefined;
  #tlsOptions: tls.TLSSocketOptions | undefined;
  #tlsCreds: TlsCredentials | undefined;
  #socketPath: string | undefined;
  #closing: Promise<void> | undefined;
  /** @internal READ reply and WRITE payload buffers, reused across requests and connections. */
  readonly ioBuffers: BufferPool;

  constructor(options: NbdServerOptions) {
    this.#options = options;
    this.ioBuffers = new BufferPool({ maxPooledBytes: options.maxBufferedBytes ?? 64 * 1024 * 1024 });
    const entries = options.exports instanceof Map ? [...options.exports] : Object.entries(options.exports);
    if (entries.length === 0) throw new InvalidArgumentError('An NBD server needs at least one export.');
    for (const [name, e] of entries) {
      if (Buffer.byteLength(name) > 4096 || name.includes('\0')) throw new InvalidArgumentError(`Invalid export name '${name}'.`);
      this.#exports.set(name, e);
      const readOnly = e.readOnly === true || e.device.readOnly;
      const allowDiscards = e.allowDiscards === true;
      const maxPayload = options.maxPayload ?? NBD_MAX_PAYLOAD;
      this.#infos.set(name, {
        name,
        description: e.description ?? '',
        size: e.device.size,
        readOnly,
        trim: true,
        fastZero: allowDiscards && e.device.capabilities.writeZeroes,
        minimumBlockSize: 1,
        preferredBlockSize: Math.max(4096, e.device.alignment),
        maximumBlockSize: maxPayload,
      });
    }
    this.#defaultExport = options.defaultExport ?? (entries.length === 1 ? entries[0]![0] : undefined);
    if (this.#defaultExport !== undefined && !this.#exports.has(this.#defaultExport)) {
      throw new InvalidArgumentError(`Default export '${this.#defaultExport}' is not one of the exports.`);
    }
  }

  /** @internal Connections accepted so far that read into their own receive buffer. */
  ownBufferConnections = 0;

  /** Open connections. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** The bound TCP port (after `listen` on TCP). */
  get port(): number | undefined {
    const a = this.#server?.address();
    return a && typeof a === 'object' ? a.port : undefined;
  }

  readonly catalog: ExportCatalog = {
    lookup: (name) => {
      const key = name === '' && !this.#infos.has('') ? this.#defaultExport : name;
      return key === undefined ? undefined : this.#infos.get(key);
    },
    list: () => [...this.#infos.values()],
  };

  /** Starts listening; resolves once the socket accepts connections. */
  async listen(target: ListenTarget): Promise<void> {
    if (this.#server) throw new InvalidArgumentError('The server is already listening.');
    if (this.#options.tls) {
      this.#tlsCreds = await loadTlsCredentials(this.#options.tls);
      this.#tlsOptions = this.#makeTlsOptions(this.#tlsCreds);
    }
    if (!('socket' in target) && !this.#options.listenAny && !LOOPBACK.has(target.host)) {
      throw new InvalidArgumentError(`Refusing to listen on ${target.host}: only 127.0.0.1 and ::1 unless listenAny is set.`);
    }
    // Paused on connect: #accept may move the connection's handle to a socket with its own receive buffer.
    const server = net.createServer({ noDelay: true, pauseOnConnect: true } as net.ServerOpts, (socket) => this.#accept(socket));
    this.#server = server;
    if ('socket' in target) {
      await removeStaleSocket(target.socket);
      await listenOn(server, { path: target.socket });
      this.#socketPath = target.socket;
      await fsp.chmod(target.socket, 0o600).catch(() => undefined);
    } else {
      const host = target.host === 'localhost' ? '127.0.0.1' : target.host;
      await listenOn(server, { host, port: target.port });
    }
  }

  #makeTlsOptions(creds: TlsCredentials): tls.TLSSocketOptions {
    if (creds.kind === 'x509') {
      const key = Buffer.from(creds.key.expose());
      const ctx: tls.SecureContextOptions = { minVersion: 'TLSv1.2', cert: creds.cert, key };
      if (creds.ca) ctx.ca = creds.ca;
      const secureContext = tls.createSecureContext(ctx);
      key.fill(0);
      return { isServer: true, secureContext, requestCert: creds.verifyPeer, rejectUnauthorized: creds.verifyPeer };
    }
    // Node's PSK support covers the TLS 1.2 PSK cipher suites.
    const secureContext = tls.createSecureContext({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: PSK_CIPHERS });
    return {
      isServer: true,
      secureContext,
      pskCallback: (_socket: tls.TLSSocket, identity: string) => {
        const k = creds.keys.get(identity);
        return k ? Buffer.from(k.expose()) : null;
      },
    } as tls.TLSSocketOptions;
  }

  #log(message: string): void {
    this.#options.log?.(message);
  }

  #accept(socket: net.Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    const conn = new Connection(this, this.#exports, this.#options);
    this.#connections.add(conn);
    conn.onClosed = () => this.#connections.delete(conn);
    const bufferBytes = this.#options.tls ? 0 : (this.#options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER);
    const adopted = bufferBytes > 0 ? withReceiveBuffer(socket, new Uint8Array(bufferBytes), (bytes) => conn.receive(bytes, true)) : undefined;
    if (adopted) this.ownBufferConnections++;
    else socket.resume();
    conn.start(adopted ?? socket, adopted !== undefined);
  }

  /** @internal Wraps `raw` in a server-side TLS socket; `onFail` if the handshake fails or the client leaves. */
  upgradeToTls(raw: net.Socket, onSecure: (s: tls.TLSSocket) => void, onFail: () => void): void {
    if (!this.#tlsOptions) return onFail();
    const secure = new tls.TLSSocket(raw, this.#tlsOptions);
    let done = false;
    secure.once('secure', () => {
      const creds = this.#tlsCreds;
      if (creds?.kind === 'x509' && creds.verifyPeer && !clientCertificateTrusted(secure, creds.ca!)) {
        this.#log('TLS client certificate missing or not issued by ca-cert.pem');
        secure.destroy();
        return;
      }
      done = true;
      onSecure(secure);
    });
    secure.on('error', (err) => {
      this.#log(`TLS error: ${err.message}`);
      secure.destroy();
    });
    secure.once('close', () => {
      if (!done) onFail();
    });
  }

  /** @internal */
  sessionFor(): NbdSession {
    return new NbdSession(this.catalog, {
      tls: this.#options.tls ? 'require' : 'off',
      maxPayload: this.#options.maxPayload ?? NBD_MAX_PAYLOAD,
      // WRITE payloads land in pooled shared memory, which the device may encrypt in place.
      allocatePayload: (n) => this.ioBuffers.take(n),
      // Payloads start 28 bytes into a socket chunk; a SharedArrayBuffer target makes V8's own
      // copy byte-wise when alignments differ, so copy with memcpy.
      copyBytes,
    });
  }

  /** @internal */
  log(message: string): void {
    this.#log(message);
  }

  /**
   * Stops accepting clients, lets in-flight requests finish (new ones fail with ESHUTDOWN),
   * flushes every writable export and closes all connections. Devices stay open: the caller owns them.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const closed = this.#server ? new Promise<void>((r) => this.#server!.close(() => r())) : Promise.resolve();
      await Promise.all([...this.#connections].map((c) => c.shutdown()));
      await closed;
      for (const [name, e] of this.#exports) {
        if (!this.#infos.get(name)!.readOnly) await e.device.flush();
      }
      if (this.#socketPath) await fsp.rm(this.#socketPath, { force: true });
      if (this.#tlsCreds) wipeTlsCredentials(this.#tlsCreds);
      this.ioBuffers.wipe();
    })();
    return this.#closing;
  }
}

/** Reads shorter than this are sent as one data chunk without asking for the allocation map. */
const HOLE_READ_MIN = 64 * 1024;
/** Zero runs shorter than this are sent as data (a hole chunk would not save anything). */
const HOLE_MIN = 4096;

/** Splits a read into data pieces and known-zero holes, reading only the data. */
async function readPieces(d: BlockDevice, offset: number, length: number): Promise<Array<{ offset: number; data: Uint8Array } | { offset: number; hole: number }>> {
  const extents = await d.extents(offset, length);
  const runs: Array<{ offset: number; length: number; zero: boolean }> = [];
  let pos = offset;
  for (const e of [...extents].sort((a, b) => a.offset - b.offset)) {
    const s = Math.max(e.offset, pos);
    const t = Math.min(e.offset + e.length, offset + length);
    if (t <= s) continue;
    if (s > pos) runs.push({ offset: pos, length: s - pos, zero: false });
    runs.push({ offset: s, length: t - s, zero: e.zero && t - s >= HOLE_MIN });
    pos = t;
  }
  if (pos < offset + length) runs.push({ offset: pos, length: offset + length - pos, zero: false });
  // Merge neighbours of the same kind so data is read in as few calls as possible.
  const merged: typeof runs = [];
  for (const r of runs) {
    const last = merged[merged.length - 1];
    if (last && last.zero === r.zero) last.length += r.length;
    else merged.push({ ...r });
  }
  const out: Array<{ offset: number; data: Uint8Array } | { offset: number; hole: number }> = [];
  for (const r of merged) {
    if (r.zero) out.push({ offset: r.offset, hole: r.length });
    else {
      const data = new Uint8Array(r.length);
      await d.read(data, r.offset);
      out.push({ offset: r.offset, data });
    }
  }
  return out;
}

/**
 * A server-side TLSSocket made by hand (STARTTLS) does not get Node's `authorized` verdict,
 * so the client certificate is checked here: present, currently valid, and issued and
 * signed by one of the certificates in ca-cert.pem.
 */
function clientCertificateTrusted(secure: tls.TLSSocket, caPem: Buffer): boolean {
  const peer = secure.getPeerX509Certificate();
  if (!peer) return false;
  const now = Date.now();
  if (now < Date.parse(peer.validFrom) || now > Date.parse(peer.validTo)) return false;
  const pems = caPem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return pems.some((pem) => {
    try {
      const ca = new X509Certificate(pem);
      return peer.checkIssued(ca) && peer.verify(ca.publicKey);
    } catch {
      return false;
    }
  });
}

function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(err.code === 'EADDRINUSE' ? new AlreadyExistsError(`Address in use: ${options.path ?? `${options.host}:${options.port}`}`) : err);
    };
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** A leftover socket file with nobody listening is removed; a live one is an error. */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new AlreadyExistsError(`${path} exists and is not a socket.`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new AlreadyExistsError(`Another server is listening on ${path}.`);
  await fsp.rm(path, { force: true });
}

/** Per-connection receive buffer for plain connections (see NbdServerOptions.receiveBufferBytes). */
const DEFAULT_RECEIVE_BUFFER = 1024 * 1024;

/**
 * Moves a just-accepted (paused) connection to a socket that reads into `buffer` and hands
 * each read to `onBytes` (Node's `onread` socket option, which net.Server does not offer for
 * the sockets it accepts). Returns undefined, leaving `socket` as it was, when this Node's
 * socket internals are not the expected ones.
 */
function withReceiveBuffer(socket: net.Socket, buffer: Uint8Array, onBytes: (bytes: Uint8Array) => void): net.Socket | undefined {
  const inner = socket as unknown as { _handle?: { useUserBuffer?: unknown; readStart?: unknown } | null };
  const handle = inner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || typeof handle.readStart !== 'function') return undefined;
  inner._handle = null;
  const adopted = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: { buffer, callback: (n: number, buf: Uint8Array) => void onBytes(buf.subarray(0, n)) },
  } as net.SocketConstructorOpts);
  // The old wrapper owns nothing now; destroying it settles net.Server's connection count.
  // (TCP_NODELAY was set on the handle itself when it was accepted.)
  socket.destroy();
  return adopted;
}

/** A pooled buffer a request's reply borrows. */
interface Lease {
  buffer?: Uint8Array;
}

/** One client connection: socket <-> session <-> device. */
class Connection {
  onClosed: () => void = () => undefined;
  #socket!: net.Socket; // set by start()
  readonly #session: NbdSession;
  #export: NbdExport | undefined;
  #inflight = 0;
  #inflightBytes = 0;
  #paused = false;
  #closed = false;
  #disconnecting = false;
  #idle: Array<() => void> = [];
  readonly #maxBuffered: number;
  readonly #onData = (chunk: Buffer): void => this.receive(chunk, false);

  constructor(
    private readonly server: NbdServer,
    private readonly exports: Map<string, NbdExport>,
    options: NbdServerOptions,
  ) {
    this.#session = server.sessionFor();
    this.#maxBuffered = options.maxBufferedBytes ?? 64 * 1024 * 1024;
  }

  /** `ownBuffer`: the socket delivers its bytes through `receive` from its own buffer, not 'data' events. */
  start(socket: net.Socket, ownBuffer: boolean): void {
    this.#socket = socket;
    this.#attach(socket, ownBuffer);
    this.#run(this.#session.start());
  }

  #attach(socket: net.Socket, ownBuffer = false): void {
    if (!ownBuffer) socket.on('data', this.#onData);
    socket.on('drain', () => this.#updateFlow());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A client that hangs up mid-reply is ordinary, not worth a log line.
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') this.server.log(`connection error: ${err.message}`);
    });
    socket.on('close', () => this.#finish());
  }

  /** Bytes from the client; `transient`: `bytes` is reused once this returns. */
  receive(bytes: Uint8Array, transient: boolean): void {
    if (this.#closed) return;
    let actions: SessionAction[];
    try {
      actions = this.#session.receive(bytes, transient);
    } catch (err) {
      this.server.log(`protocol error: ${(err as Error).message}`);
      this.#destroy();
      return;
    }
    this.#run(actions);
  }

  #run(actions: SessionAction[]): void {
    for (const a of actions) {
      if (this.#closed) return;
      switch (a.type) {
        case 'send':
          this.#send(a.data);
          break;
        case 'export': {
          const key = this.exports.has(a.export.name) ? a.export.name : '';
          this.#export = this.exports.get(key);
          break;
        }
        case 'io':
          this.#io(a.request);
          break;
        case 'start-tls':
          this.#startTls();
          return;
        case 'disconnect':
          this.#disconnecting = true;
          this.#maybeEnd();
          return;
        case 'close':
          if (a.protocolError) this.server.log(`closing connection: ${a.reason}`);
          this.#socket.end();
          this.#closed = true;
          return;
      }
    }
  }

  /** Queues `parts` on the socket; `sent` runs once the last part has been handed to the kernel. */
  #send(parts: Uint8Array[], sent?: () => void): void {
    if (this.#closed || this.#socket.destroyed) return;
    let last = parts.length - 1;
    while (last > 0 && parts[last]!.length === 0) last--;
    parts.forEach((p, i) => {
      if (i === last && sent) this.#socket.write(p, (err) => void (err ? undefined : sent()));
      else if (p.length > 0) this.#socket.write(p);
    });
    this.#updateFlow();
  }

  #updateFlow(): void {
    const busy = this.#inflightBytes + this.#socket.writableLength > this.#maxBuffered;
    if (busy && !this.#paused) {
      this.#paused = true;
      this.#socket.pause();
    } else if (!busy && this.#paused) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  #startTls(): void {
    const raw = this.#socket;
    raw.off('data', this.#onData);
    raw.removeAllListeners('drain');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    raw.on('error', () => undefined);
    raw.pause();
    this.server.upgradeToTls(
      raw,
      (secure) => {
        this.#socket = secure;
        this.#session.tlsEstablished();
        this.#attach(secure);
      },
      () => {
        if (this.#socket === raw) this.#finish();
      },
    );
  }

  #io(req: IoRequest): void {
    const e = this.#export!;
    const cost = req.command === 'read' || req.command === 'write' ? req.length : 0;
    this.#inflight++;
    this.#inflightBytes += cost;
    this.#updateFlow();
    const lease: Lease = {};
    this.#perform(e, req, lease).then(
      (reply) => this.#completed(reply, cost, lease.buffer),
      (err: unknown) => {
        if (lease.buffer) this.server.ioBuffers.give(lease.buffer);
        const msg = err instanceof BrickcryptError ? err.message : 'I/O error';
        if (!(err instanceof BrickcryptError)) this.server.log(`I/O error: ${(err as Error)?.message ?? String(err)}`);
        this.#completed(this.#session.replyError(req, nbdErrnoOf(err), msg), cost);
      },
    );
  }

  /** `lease.buffer` is set to a pooled buffer the reply sends; it goes back to the pool once sent. */
  async #perform(e: NbdExport, req: IoRequest, lease: Lease): Promise<Uint8Array[]> {
    const d = e.device;
    const s = this.#session;
    switch (req.command) {
      case 'read': {
        // Known-zero runs go out as OFFSET_HOLE chunks when the device can tell (qcow2, sparse views).
        if (s.structuredReplies && !req.df && d.capabilities.extents && req.length >= HOLE_READ_MIN) {
          const pieces = await readPieces(d, req.offset, req.length);
          if (pieces.some((p) => 'hole' in p)) return s.replyReadChunks(req, pieces);
        }
        if (req.length === 0) return s.replyRead(req, new Uint8Array(0));
        const buf = (lease.buffer = this.server.ioBuffers.take(req.length));
        await d.read(buf, req.offset);
        return s.replyRead(req, buf);
      }
      case 'write':
        if (req.length > 0) {
          // The payload buffer came from the pool (sessionFor) and is ours: the device may consume it.
          lease.buffer = req.data!;
          if (d.writeConsuming) await d.writeConsuming(req.data!, req.offset);
          else await d.write(req.data!, req.offset);
        }
        if (req.fua) await d.flush();
        return s.replyOk(req);
      case 'flush':
        await d.flush();
        return s.replyOk(req);
      case 'trim':
        if (req.length > 0) {
          if (e.allowDiscards) await d.discard(req.offset, req.length);
          else await d.writeZeroes(req.offset, req.length, { mayTrim: false });
        }
        if (req.fua) await d.flush();
        return s.replyOk(req);
      case 'write-zeroes':
        if (req.length > 0) await d.writeZeroes(req.offset, req.length, { mayTrim: e.allowDiscards === true && !req.noHole });
        if (req.fua) await d.flush();
        return s.replyOk(req);
      case 'cache':
        // No server-side cache exists to populate: the range was validated, nothing else to do.
        return s.replyOk(req);
      case 'block-status': {
        const extents = await d.extents(req.offset, req.length);
        return s.replyBlockStatus(req, extents);
      }
    }
  }

  #completed(reply: Uint8Array[], cost: number, leased?: Uint8Array): void {
    this.#inflight--;
    this.#inflightBytes -= cost;
    // A buffer still queued on a socket that closes is left to the garbage collector.
    this.#send(reply, leased && (() => this.server.ioBuffers.give(leased)));
    if (this.#inflight === 0) {
      const idle = this.#idle;
      this.#idle = [];
      for (const f of idle) f();
    }
    this.#maybeEnd();
  }

  #maybeEnd(): void {
    if (this.#disconnecting && this.#inflight === 0 && !this.#closed) {
      this.#closed = true;
      this.#socket.end();
    }
  }

  #whenIdle(): Promise<void> {
    return this.#inflight === 0 ? Promise.resolve() : new Promise((r) => this.#idle.push(r));
  }

  /** Server shutdown: finish in-flight requests, then close. */
  async shutdown(): Promise<void> {
    this.#session.shutdown();
    await this.#whenIdle();
    if (!this.#socket.destroyed) {
      const gone = new Promise<void>((r) => this.#socket.once('close', () => r()));
      this.#closed = true;
      this.#socket.end();
      const t = setTimeout(() => this.#socket.destroy(), 2000);
      await gone;
      clearTimeout(t);
    }
    this.#finish();
  }

  #destroy(): void {
    this.#closed = true;
    this.#socket.destroy();
  }

  #finish(): void {
    if (this.#closed && this.#socket.destroyed) {
      this.onClosed();
      return;
    }
    this.#closed = true;
    if (!this.#socket.destroyed) this.#socket.destroy();
    this.onClosed();
  }
}
