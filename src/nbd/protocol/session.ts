/**
 * The NBD server protocol as a pure state machine: fixed newstyle handshake, option
 * haggling and transmission-phase request parsing and validation (doc/proto.md).
 *
 * Bytes go in (`receive`), actions come out: bytes to send, "upgrade to TLS", "entered
 * transmission on this export", "perform this validated I/O request", "close". It never
 * touches a socket or a device; replies to I/O requests are built with `reply*` once the
 * caller has done the I/O. Every request reaching an `io` action has been checked: known
 * command, flags allowed for it, range inside the export, not a write on a read-only export.
 *
 * Example:
 * ```ts
 * const s = new NbdSession(catalog, { tls: 'off' });
 * for (const a of s.start()) ...;            // greeting
 * for (const a of s.receive(chunk)) if (a.type === 'io') doIo(a.request);
 * ```
 */
import { NBD_ERRNO } from '../../errors.js';
import type { Extent } from '../../block-device.js';
import { ByteQueue, type CopyBytes } from './byte-queue.js';
import {
  BASE_ALLOCATION,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_FLAG,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO,
  NBD_MAX_OPTION,
  NBD_MAX_PAYLOAD,
  NBD_MAX_STRING,
  NBD_OPT,
  NBD_OPTS_MAGIC,
  NBD_REP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE,
  NBD_REQUEST_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from './constants.js';
import {
  CLIENT_FLAGS_SIZE,
  OPTION_HEADER_SIZE,
  REQUEST_HEADER_SIZE,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  decodeString,
  encodeBlockStatus,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionReply,
  encodeServerReply,
  encodeSimpleReply,
  encodeString,
  encodeStructuredReply,
  encodeStructuredReplyHeader,
  type BlockDescriptor,
  type RequestHeader,
} from './codec.js';

/** What the protocol needs to know about an export (no device: the shell owns that). */
export interface ExportInfo {
  name: string;
  description: string;
  size: number;
  readOnly: boolean;
  /** Advertise NBD_FLAG_SEND_TRIM. */
  trim: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO can succeed (zeroing is cheap); otherwise it fails fast with ENOTSUP. */
  fastZero: boolean;
  /** NBD_INFO_BLOCK_SIZE values. */
  minimumBlockSize: number;
  preferredBlockSize: number;
  maximumBlockSize: number;
}

/** Looks exports up by name; the empty name selects the default export. */
export interface ExportCatalog {
  lookup(name: string): ExportInfo | undefined;
  list(): ExportInfo[];
}

export interface SessionOptions {
  /** 'require': FORCEDTLS mode (every option but STARTTLS/ABORT is refused until TLS is up). */
  tls: 'off' | 'require';
  /** Largest READ/WRITE length accepted (default 32 MiB). */
  maxPayload?: number;
  /**
   * Where WRITE payloads go: a buffer of exactly `n` bytes the caller owns (e.g. from a pool;
   * returned to it after the write), taken when the request header arrives and filled as the
   * payload does. Default: a new Uint8Array. A payload never aliases the received bytes.
   */
  allocatePayload?: (n: number) => Uint8Array;
  /** How received bytes are copied into payload buffers (default: `TypedArray.prototype.set`). */
  copyBytes?: CopyBytes;
}

export type IoCommand = 'read' | 'write' | 'flush' | 'trim' | 'write-zeroes' | 'cache' | 'block-status';

/** A validated transmission request. */
export interface IoRequest {
  cookie: bigint;
  command: IoCommand;
  offset: number;
  length: number;
  /** Raw command flags (already checked). */
  flags: number;
  fua: boolean;
  noHole: boolean;
  fastZero: boolean;
  reqOne: boolean;
  /** READ: the client asked for a single content chunk (NBD_CMD_FLAG_DF). */
  df: boolean;
  /** WRITE payload. */
  data?: Uint8Array;
}

export type SessionAction =
  | { type: 'send'; data: Uint8Array[] }
  | { type: 'start-tls' }
  | { type: 'export'; export: ExportInfo }
  | { type: 'io'; request: IoRequest }
  /** Soft disconnect (NBD_CMD_DISC): finish in-flight requests, then close. */
  | { type: 'disconnect' }
  /** Close now; `protocolError` marks a client violation or refused export. */
  | { type: 'close'; reason: string; protocolError: boolean };

type Phase = 'client-flags' | 'options' | 'tls-upgrade' | 'transmission' | 'closed';

/** Context id handed out for base:allocation by NBD_OPT_SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1;

export class NbdSession {
  readonly #catalog: ExportCatalog;
  readonly #tlsMode: 'off' | 'require';
  readonly #maxPayload: number;
  readonly #allocatePayload: ((n: number) => Uint8Array) | undefined;
  readonly #in: ByteQueue;
  #phase: Phase = 'client-flags';
  #noZeroes = false;
  #tlsActive = false;
  #structured = false;
  #metaExport: string | undefined;
  #metaBaseAllocation = false;
  #export: ExportInfo | undefined;
  #flags = 0;
  #shuttingDown = false;
  /** Bytes of an oversized option or write payload still to be thrown away. */
  #discard = 0;
  /** Option whose data is still arriving. */
  #pendingOption: { option: number; length: number } | undefined;
  /** A WRITE whose payload is still arriving, and the buffer it is filling. */
  #pendingWrite: { header: RequestHeader; payload: Uint8Array; filled: number } | undefined;
  /** The answer to an oversized option or write, sent once its payload has been discarded. */
  #afterDiscard: (() => SessionAction[]) | undefined;

  constructor(catalog: ExportCatalog, options: SessionOptions) {
    this.#catalog = catalog;
    this.#tlsMode = options.tls;
    this.#maxPayload = options.maxPayload ?? NBD_MAX_PAYLOAD;
    this.#allocatePayload = options.allocatePayload;
    this.#in = new ByteQueue(options.copyBytes);
  }

  get phase(): Phase {
    return this.#phase;
  }
  get structuredReplies(): boolean {
    return this.#structured;
  }
  get tlsActive(): boolean {
    return this.#tlsActive;
  }
  /** The export chosen for transmission. */
  get export(): ExportInfo | undefined {
    return this.#export;
  }
  /** Transmission flags sent to the client. */
  get transmissionFlags(): number {
    return this.#flags;
  }

  /** The server greeting (sent as soon as the connection opens). */
  start(): SessionAction[] {
    return [{ type: 'send', data: [encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)] }];
  }

  /** The TLS handshake finished; the session continues with option haggling over TLS. */
  tlsEstablished(): void {
    if (this.#phase === 'tls-upgrade') this.#phase = 'options';
  }

  /** Server shutdown: further options fail with ERR_SHUTDOWN and requests with ESHUTDOWN. */
  shutdown(): void {
    this.#shuttingDown = true;
  }

  /**
   * Feeds received bytes; returns the resulting actions in order. With `transient`, the caller
   * reuses `bytes` as soon as this returns (a socket's receive buffer): the session then copies
   * whatever it keeps, and every WRITE payload lands in a buffer of its own.
   */
  receive(bytes: Uint8Array, transient = false): SessionAction[] {
    if (this.#phase === 'closed' || this.#phase === 'tls-upgrade') return [];
    try {
      return this.#receive(bytes);
    } finally {
      if (transient) this.#in.own();
    }
  }

  #receive(bytes: Uint8Array): SessionAction[] {
    this.#in.push(bytes);
    const out: SessionAction[] = [];
    for (;;) {
      const before = this.#in.length;
      const phase: Phase = this.#phase;
      const step = this.#step();
      out.push(...step);
      if (this.#stopped()) {
        // Bytes after STARTTLS were sent in clear before the upgrade: never act on them.
        this.#in.clear();
        break;
      }
      if (step.length === 0 && this.#in.length === before && this.#phase === phase) break;
    }
    return out.filter((a) => a.type !== 'send' || a.data.length > 0);
  }

  #stopped(): boolean {
    return this.#phase === 'closed' || this.#phase === 'tls-upgrade';
  }

  #close(reason: string, protocolError = true): SessionAction[] {
    this.#phase = 'closed';
    return [{ type: 'close', reason, protocolError }];
  }

  #step(): SessionAction[] {
    if (this.#discard > 0) {
      this.#discard -= this.#in.skip(this.#discard);
      if (this.#discard > 0) return [];
      const after = this.#afterDiscard;
      this.#afterDiscard = undefined;
      return after ? after() : [];
    }
    switch (this.#phase) {
      case 'client-flags':
        return this.#clientFlags();
      case 'options':
        return this.#option();
      case 'transmission':
        return this.#request();
      default:
        return [];
    }
  }

  // ------------------------------------------------------------ handshake
  #clientFlags(): SessionAction[] {
    if (this.#in.length < CLIENT_FLAGS_SIZE) return [];
    const flags = decodeClientFlags(this.#in.take(CLIENT_FLAGS_SIZE));
    // proto.md: the server MUST drop the connection on unknown client flags.
    if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      return this.#close(`unknown client flags 0x${flags.toString(16)}`);
    }
    this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
    this.#phase = 'options';
    return [{ type: 'send', data: [] }];
  }

  #reply(option: number, type: number, data?: Uint8Array): SessionAction {
    return { type: 'send', data: [encodeOptionReply(option, type, data)] };
  }
  #error(option: number, type: number, message: string): SessionAction {
    return this.#reply(option, type, encodeString(message));
  }

  #option(): SessionAction[] {
    if (this.#pendingOption) {
      const { option, length } = this.#pendingOption;
      if (this.#in.length < length) return [];
      return this.#handleOption(option, this.#in.take(length));
    }
    if (this.#in.length < OPTION_HEADER_SIZE) return [];
    const header = decodeOptionHeader(this.#in.take(OPTION_HEADER_SIZE));
    if (header.magic !== NBD_OPTS_MAGIC) return this.#close('bad option magic');
    const { option, length } = header;
    if (length > NBD_MAX_OPTION) {
      if (option === NBD_OPT.EXPORT_NAME) return this.#close('export name too long');
      this.#discard = length;
      this.#afterDiscard = () => [this.#error(option, NBD_REP.ERR_TOO_BIG, `option data of ${length} bytes is too large`)];
      return [{ type: 'send', data: [] }];
    }
    // Wait for the whole option (bounded by NBD_MAX_OPTION) before acting on it.
    if (this.#in.length < length) {
      this.#pendingOption = header;
      return [{ type: 'send', data: [] }];
    }
    return this.#handleOption(option, this.#in.take(length));
  }

  #handleOption(option: number, data: Uint8Array): SessionAction[] {
    this.#pendingOption = undefined;
    if (option === NBD_OPT.ABORT) {
      this.#phase = 'closed';
      return [this.#reply(option, NBD_REP.ACK), { type: 'close', reason: 'client aborted negotiation', protocolError: false }];
    }
    if (this.#tlsMode === 'require' && !this.#tlsActive) {
      if (option === NBD_OPT.EXPORT_NAME) return this.#close('NBD_OPT_EXPORT_NAME before TLS on a TLS-only server');
      if (option !== NBD_OPT.STARTTLS) return [this.#error(option, NBD_REP.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first')];
    }
    if (this.#shuttingDown && option !== NBD_OPT.EXPORT_NAME) {
      return [this.#error(option, NBD_REP.ERR_SHUTDOWN, 'server is shutting down')];
    }
    switch (option) {
      case NBD_OPT.EXPORT_NAME:
        return this.#optExportName(data);
      case NBD_OPT.LIST:
        return this.#optList(option, data);
      case NBD_OPT.STARTTLS:
        return this.#optStartTls(option, data);
      case NBD_OPT.INFO:
      case NBD_OPT.GO:
        return this.#optInfo(option, data);
      case NBD_OPT.STRUCTURED_REPLY:
        if (data.length !== 0) return [this.#error(option, NBD_REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data')];
        this.#structured = true;
        return [this.#reply(option, NBD_REP.ACK)];
      case NBD_OPT.LIST_META_CONTEXT:
      case NBD_OPT.SET_META_CONTEXT:
        return this.#optMetaContext(option, data);
      default:
        return [this.#error(option, NBD_REP.ERR_UNSUP, `option ${option} is not supported`)];
    }
  }

  #computeFlags(e: ExportInfo): number {
    let f = NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.SEND_CACHE | NBD_FLAG.CAN_MULTI_CONN;
    if (e.readOnly) f |= NBD_FLAG.READ_ONLY;
    else {
      f |= NBD_FLAG.SEND_WRITE_ZEROES | NBD_FLAG.SEND_FAST_ZERO;
      if (e.trim) f |= NBD_FLAG.SEND_TRIM;
    }
    // proto.md: SEND_DF only once structured replies are negotiated.
    if (this.#structured) f |= NBD_FLAG.SEND_DF;
    return f;
  }

  #enterTransmission(e: ExportInfo): SessionAction {
    this.#export = e;
    this.#flags = this.#computeFlags(e);
    // Contexts negotiated for another export do not apply to this one.
    if (this.#metaExport !== e.name) this.#metaBaseAllocation = false;
    this.#phase = 'transmission';
    return { type: 'export', export: e };
  }

  #optExportName(data: Uint8Array): SessionAction[] {
    let name: string;
    try {
      name = decodeString(data);
    } catch {
      return this.#close('export name is not valid UTF-8');
    }
    if (this.#shuttingDown) return this.#close('server is shutting down', false);
    const e = this.#catalog.lookup(name);
    // proto.md: NBD_OPT_EXPORT_NAME cannot fail with an error reply; the server MUST terminate the session.
    if (!e) return this.#close(`no export named '${name}'`);
    const flags = this.#computeFlags(e);
    const reply: SessionAction = { type: 'send', data: [encodeExportNameReply(e.size, flags, this.#noZeroes)] };
    return [reply, this.#enterTransmission(e)];
  }

  #optList(option: number, data: Uint8Array): SessionAction[] {
    if (data.length !== 0) return [this.#error(option, NBD_REP.ERR_INVALID, 'NBD_OPT_LIST takes no data')];
    const out = this.#catalog.list().map((e) => this.#reply(option, NBD_REP.SERVER, encodeServerReply(e.name, e.description)));
    out.push(this.#reply(option, NBD_REP.ACK));
    return out;
  }

  #optStartTls(option: number, data: Uint8Array): SessionAction[] {
    if (data.length !== 0) return [this.#error(option, NBD_REP.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data')];
    if (this.#tlsMode === 'off') return [this.#error(option, NBD_REP.ERR_POLICY, 'TLS is not configured on this server')];
    if (this.#tlsActive) return [this.#error(option, NBD_REP.ERR_INVALID, 'TLS is already active')];
    this.#tlsActive = true;
    this.#phase = 'tls-upgrade';
    return [this.#reply(option, NBD_REP.ACK), { type: 'start-tls' }];
  }

  #optInfo(option: number, data: Uint8Array): SessionAction[] {
    let req;
    try {
      req = decodeInfoRequest(data);
    } catch (err) {
      return [this.#error(option, NBD_REP.ERR_INVALID, (err as Error).message)];
    }
    if (encodeString(req.name).length > NBD_MAX_STRING) return [this.#error(option, NBD_REP.ERR_INVALID, 'export name too long')];
    const e = this.#catalog.lookup(req.name);
    if (!e) return [this.#error(option, NBD_REP.ERR_UNKNOWN, `no export named '${req.name}'`)];
    const out: SessionAction[] = [];
    const flags = this.#computeFlags(e);
    out.push(this.#reply(option, NBD_REP.INFO, encodeInfoReply({ type: NBD_INFO.EXPORT, size: e.size, flags })));
    const asked = new Set(req.infos);
    if (asked.has(NBD_INFO.NAME)) out.push(this.#reply(option, NBD_REP.INFO, encodeInfoReply({ type: NBD_INFO.NAME, name: e.name })));
    if (asked.has(NBD_INFO.DESCRIPTION) && e.description) {
      out.push(this.#reply(option, NBD_REP.INFO, encodeInfoReply({ type: NBD_INFO.DESCRIPTION, description: e.description })));
    }
    if (asked.has(NBD_INFO.BLOCK_SIZE)) {
      out.push(
        this.#reply(
          option,
          NBD_REP.INFO,
          encodeInfoReply({ type: NBD_INFO.BLOCK_SIZE, minimum: e.minimumBlockSize, preferred: e.preferredBlockSize, maximum: e.maximumBlockSize }),
        ),
      );
    }
    out.push(this.#reply(option, NBD_REP.ACK));
    if (option === NBD_OPT.GO) out.push(this.#enterTransmission(e));
    return out;
  }

  #optMetaContext(option: number, data: Uint8Array): SessionAction[] {
    if (!this.#structured) return [this.#error(option, NBD_REP.ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first')];
    let req;
    try {
      req = decodeMetaContextRequest(data);
    } catch (err) {
      return [this.#error(option, NBD_REP.ERR_INVALID, (err as Error).message)];
    }
    const e = this.#catalog.lookup(req.exportName);
    if (!e) return [this.#error(option, NBD_REP.ERR_UNKNOWN, `no export named '${req.exportName}'`)];
    const list = option === NBD_OPT.LIST_META_CONTEXT;
    let match: boolean;
    if (list) {
      // An empty query list, the namespace alone, or the full name all list base:allocation.
      match = req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
    } else {
      match = req.queries.includes(BASE_ALLOCATION);
      // SET replaces the previous selection.
      this.#metaExport = e.name;
      this.#metaBaseAllocation = match;
    }
    const out: SessionAction[] = [];
    if (match) out.push(this.#reply(option, NBD_REP.META_CONTEXT, encodeMetaContextReply(list ? 0 : BASE_ALLOCATION_ID, BASE_ALLOCATION)));
    out.push(this.#reply(option, NBD_REP.ACK));
    return out;
  }

  // ------------------------------------------------------------ transmission
  #request(): SessionAction[] {
    if (this.#pendingWrite) {
      // Payload bytes go straight into the request's buffer as they arrive: copied once, and
      // nothing of a large payload waits in the queue.
      const w = this.#pendingWrite;
      w.filled += this.#in.takeInto(w.payload, w.filled, w.header.length - w.filled);
      if (w.filled < w.header.length) return [];
      this.#pendingWrite = undefined;
      return this.#validate(w.header, w.payload);
    }
    if (this.#in.length < REQUEST_HEADER_SIZE) return [];
    const h = decodeRequest(this.#in.take(REQUEST_HEADER_SIZE));
    // A bad magic means we lost framing: the only safe answer is a hard disconnect.
    if (h.magic !== NBD_REQUEST_MAGIC) return this.#close(`bad request magic 0x${h.magic.toString(16)}`);
    if (h.type === NBD_CMD.WRITE) {
      if (h.length > this.#maxPayload) {
        // Too large to buffer: read and drop the payload, then fail the request (EOVERFLOW) and carry on.
        this.#discard = h.length;
        this.#afterDiscard = () => [this.#errorReply(h.cookie, NBD_ERRNO.EOVERFLOW, `write of ${h.length} bytes exceeds the ${this.#maxPayload}-byte limit`, false)];
        return [{ type: 'send', data: [] }];
      }
      if (this.#in.length < h.length) {
        this.#pendingWrite = { header: h, payload: this.#newPayload(h.length), filled: 0 };
        return [{ type: 'send', data: [] }];
      }
      return this.#validate(h, this.#in.take(h.length, this.#newPayload));
    }
    return this.#validate(h);
  }

  /** A buffer of its own for a WRITE payload of `n` bytes. */
  readonly #newPayload = (n: number): Uint8Array => {
    const buf = this.#allocatePayload ? this.#allocatePayload(n) : new Uint8Array(n);
    if (buf.length !== n) throw new RangeError(`allocatePayload returned ${buf.length} bytes, not ${n}`);
    return buf;
  };

  #validate(h: RequestHeader, data?: Uint8Array): SessionAction[] {
    const e = this.#export!;
    const isRead = h.type === NBD_CMD.READ;
    const fail = (errno: number, message: string): SessionAction[] => [this.#errorReply(h.cookie, errno, message, isRead)];
    if (h.type === NBD_CMD.DISC) {
      this.#phase = 'closed';
      return [{ type: 'disconnect' }];
    }
    if (this.#shuttingDown) return fail(NBD_ERRNO.ESHUTDOWN, 'server is shutting down');
    const spec = COMMANDS.get(h.type);
    if (!spec) return fail(NBD_ERRNO.EINVAL, `unknown command ${h.type}`);
    let allowed = spec.flags | NBD_CMD_FLAG.FUA;
    if (h.type === NBD_CMD.READ && this.#structured) allowed |= NBD_CMD_FLAG.DF;
    if ((h.flags & ~allowed) !== 0) return fail(NBD_ERRNO.EINVAL, `flags 0x${h.flags.toString(16)} are not valid for ${spec.name}`);
    if (spec.writes && e.readOnly) return fail(NBD_ERRNO.EPERM, 'export is read-only');
    if (h.type === NBD_CMD.TRIM && !e.trim) return fail(NBD_ERRNO.EINVAL, 'trim is not enabled on this export');
    if (h.type === NBD_CMD.FLUSH) {
      if (h.offset !== 0n || h.length !== 0) return fail(NBD_ERRNO.EINVAL, 'flush offset and length must be zero');
    } else {
      if (h.type === NBD_CMD.READ && h.length > this.#maxPayload) {
        return fail(NBD_ERRNO.EOVERFLOW, `read of ${h.length} bytes exceeds the ${this.#maxPayload}-byte limit`);
      }
      const end = h.offset + BigInt(h.length);
      if (end > BigInt(e.size)) {
        // proto.md "Error values": ENOSPC for writes beyond the end, EINVAL otherwise.
        return fail(spec.writes ? NBD_ERRNO.ENOSPC : NBD_ERRNO.EINVAL, `range ${h.offset}+${h.length} is outside the ${e.size}-byte export`);
      }
    }
    if (h.type === NBD_CMD.BLOCK_STATUS) {
      if (!this.#metaBaseAllocation) return fail(NBD_ERRNO.EINVAL, 'no metadata context was negotiated');
      if (h.length === 0) return fail(NBD_ERRNO.EINVAL, 'block status of zero bytes');
    }
    const fastZero = (h.flags & NBD_CMD_FLAG.FAST_ZERO) !== 0;
    if (fastZero && !e.fastZero) return fail(NBD_ERRNO.ENOTSUP, 'fast zeroing is not available on this export');
    const request: IoRequest = {
      cookie: h.cookie,
      command: spec.name,
      offset: Number(h.offset),
      length: h.length,
      flags: h.flags,
      fua: (h.flags & NBD_CMD_FLAG.FUA) !== 0,
      noHole: (h.flags & NBD_CMD_FLAG.NO_HOLE) !== 0,
      fastZero,
      reqOne: (h.flags & NBD_CMD_FLAG.REQ_ONE) !== 0,
      df: (h.flags & NBD_CMD_FLAG.DF) !== 0,
    };
    if (data) request.data = data;
    return [{ type: 'io', request }];
  }

  #errorReply(cookie: bigint, errno: number, message: string, isRead: boolean): SessionAction {
    return { type: 'send', data: this.replyError({ cookie, command: isRead ? 'read' : 'flush' }, errno, message) };
  }

  // ------------------------------------------------------------ replies
  /** Success reply without data (WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE). */
  replyOk(req: Pick<IoRequest, 'cookie' | 'command'>): Uint8Array[] {
    if (this.#structured && req.command === 'read') return [encodeStructuredReply(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NONE, req.cookie)];
    return [encodeSimpleReply(0, req.cookie)];
  }

  /** Successful READ: one OFFSET_DATA chunk (which also satisfies DF) or a simple reply with data. */
  replyRead(req: Pick<IoRequest, 'cookie' | 'offset'>, data: Uint8Array): Uint8Array[] {
    if (!this.#structured) return [encodeSimpleReply(0, req.cookie), data];
    if (data.length === 0) return [encodeStructuredReply(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NONE, req.cookie)];
    return [
      encodeOffsetDataHeader(NBD_REPLY_FLAG_DONE, req.cookie, req.offset, data.length),
      data,
    ];
  }

  /**
   * Successful READ split into content chunks: `data` pieces become OFFSET_DATA, `hole`
   * pieces (known zeros) OFFSET_HOLE. The pieces must tile the request in order; only
   * valid with structured replies and without DF (which allows one content chunk only).
   */
  replyReadChunks(req: Pick<IoRequest, 'cookie'>, pieces: Array<{ offset: number; data: Uint8Array } | { offset: number; hole: number }>): Uint8Array[] {
    const out: Uint8Array[] = [];
    pieces.forEach((p, i) => {
      const flags = i === pieces.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if ('hole' in p) out.push(encodeStructuredReply(flags, NBD_REPLY_TYPE.OFFSET_HOLE, req.cookie, encodeOffsetHole(p.offset, p.hole)));
      else out.push(encodeOffsetDataHeader(flags, req.cookie, p.offset, p.data.length), p.data);
    });
    if (pieces.length === 0) out.push(encodeStructuredReply(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.NONE, req.cookie));
    return out;
  }

  /** Successful BLOCK_STATUS for base:allocation, from device extents clipped to the request. */
  replyBlockStatus(req: Pick<IoRequest, 'cookie' | 'offset' | 'length' | 'reqOne'>, extents: Extent[]): Uint8Array[] {
    const descriptors = extentsToDescriptors(req.offset, req.length, extents, req.reqOne);
    return [encodeStructuredReply(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.BLOCK_STATUS, req.cookie, encodeBlockStatus(BASE_ALLOCATION_ID, descriptors))];
  }

  /** Failed request: a structured ERROR chunk with a message when negotiated, else a simple reply. */
  replyError(req: Pick<IoRequest, 'cookie' | 'command'>, errno: number, message: string): Uint8Array[] {
    const error = errno === 0 ? NBD_ERRNO.EIO : errno;
    if (this.#structured) return [encodeStructuredReply(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE.ERROR, req.cookie, encodeErrorChunk(error, message))];
    return [encodeSimpleReply(error, req.cookie)];
  }
}

interface CommandSpec {
  name: IoCommand;
  /** Command-specific flags besides FUA. */
  flags: number;
  writes: boolean;
}
const COMMANDS = new Map<number, CommandSpec>([
  [NBD_CMD.READ, { name: 'read', flags: 0, writes: false }],
  [NBD_CMD.WRITE, { name: 'write', flags: 0, writes: true }],
  [NBD_CMD.FLUSH, { name: 'flush', flags: 0, writes: false }],
  [NBD_CMD.TRIM, { name: 'trim', flags: 0, writes: true }],
  [NBD_CMD.CACHE, { name: 'cache', flags: 0, writes: false }],
  [NBD_CMD.WRITE_ZEROES, { name: 'write-zeroes', flags: NBD_CMD_FLAG.NO_HOLE | NBD_CMD_FLAG.FAST_ZERO, writes: true }],
  [NBD_CMD.BLOCK_STATUS, { name: 'block-status', flags: NBD_CMD_FLAG.REQ_ONE, writes: false }],
]);

/**
 * Turns device extents into base:allocation descriptors covering `[offset, offset+length)`:
 * clipped to the request, adjacent runs with equal flags merged, gaps reported as data (status 0),
 * and at most one descriptor with REQ_ONE.
 */
export function extentsToDescriptors(offset: number, length: number, extents: Extent[], reqOne = false): BlockDescriptor[] {
  const end = offset + length;
  const out: BlockDescriptor[] = [];
  let pos = offset;
  const push = (len: number, flags: number): void => {
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += len;
    else out.push({ length: len, flags });
  };
  for (const x of [...extents].sort((a, b) => a.offset - b.offset)) {
    const s = Math.max(x.offset, pos);
    const t = Math.min(x.offset + x.length, end);
    if (t <= s) continue;
    if (s > pos) push(s - pos, 0);
    push(t - s, (x.hole ? NBD_STATE_HOLE : 0) | (x.zero ? NBD_STATE_ZERO : 0));
    pos = t;
    if (pos >= end) break;
  }
  if (pos < end) push(end - pos, 0);
  return reqOne ? out.slice(0, 1) : out;
}
