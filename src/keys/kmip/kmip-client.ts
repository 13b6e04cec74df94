/**
 * A thin KMIP 1.2 client over node:tls with mutual TLS: one request message with a batch of
 * one item per call, requests serialised on one kept-alive connection.
 *
 * KMIP 1.2 section 7 (message structure), KMIP profiles 1.2 section 3.1 (TLS, port 5696).
 * The client certificate is the identity: the server owns objects by it (PyKMIP uses the CN).
 * Connection failures are retried with backoff (reconnecting); a request that may have
 * reached the server is retried only when the operation is idempotent.
 */
import tls from 'node:tls';
import {
  BackendUnavailableError,
  BrickcryptError,
  ForbiddenError,
  InvalidObjectError,
  KeyNotFoundError,
  KmipProtocolError,
  UnsupportedError,
} from '../../errors.js';
import { withRetry } from '../retry.js';
import {
  HEADER_SIZE,
  ResultReason,
  ResultStatus,
  Tag,
  child,
  children,
  decodeTtlv,
  encodeTtlv,
  get,
  t,
  ttlvMessageLength,
  type TtlvItem,
} from './ttlv.js';

export interface KmipClientOptions {
  host: string;
  /** Default 5696 (the IANA KMIP port). */
  port?: number;
  /** PEM CA bundle the server certificate must chain to. */
  ca: string | Buffer;
  /** PEM client certificate and key: the KMIP identity. */
  cert: string | Buffer;
  key: string | Buffer;
  /** TLS server name to check, when it differs from `host`. */
  servername?: string;
  /** Per-attempt timeout in ms (default 10000). */
  timeoutMs?: number;
  /** Attempts for transient failures (default 3). */
  attempts?: number;
  baseDelayMs?: number;
  /** Largest response accepted (default 4 MiB). */
  maxResponseSize?: number;
}

/** KMIP protocol version sent in every request header (PyKMIP 0.10 defaults to 1.2). */
export const PROTOCOL_VERSION = { major: 1, minor: 2 } as const;

/** Operations that change nothing if repeated, safe to resend after a broken connection. */
const IDEMPOTENT = new Set([0x0a /* Get */, 0x0b /* Get Attributes */, 0x08 /* Locate */]);

class SentError extends Error {
  constructor(readonly inner: unknown) {
    super((inner as Error)?.message ?? String(inner));
    this.name = 'SentError';
  }
}

/**
 * @example
 * const c = new KmipClient({ host: '127.0.0.1', ca, cert, key });
 * const payload = await c.call(Operation.Get, [t.text(Tag.UniqueIdentifier, '1')], '1');
 */
export class KmipClient {
  readonly #opts: KmipClientOptions;
  #socket: tls.TLSSocket | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(options: KmipClientOptions) {
    this.#opts = options;
  }

  /**
   * Sends one operation and returns its Response Payload (an empty structure if the server sent none).
   * A failed result becomes a typed error; `subject` names the object for not-found errors.
   */
  call(operation: number, payload: TtlvItem[], subject = 'request'): Promise<TtlvItem> {
    const run = () => this.#callWithRetry(operation, payload, subject);
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  async #callWithRetry(operation: number, payload: TtlvItem[], subject: string): Promise<TtlvItem> {
    const request = encodeTtlv(
      t.struct(Tag.RequestMessage, [
        t.struct(Tag.RequestHeader, [
          t.struct(Tag.ProtocolVersion, [t.int(Tag.ProtocolVersionMajor, PROTOCOL_VERSION.major), t.int(Tag.ProtocolVersionMinor, PROTOCOL_VERSION.minor)]),
          t.int(Tag.BatchCount, 1),
        ]),
        t.struct(Tag.BatchItem, [t.enum(Tag.Operation, operation), t.struct(Tag.RequestPayload, payload)]),
      ]),
    );
    try {
      const response = await withRetry(
        async (signal) => {
          try {
            return await this.#exchange(request, signal);
          } catch (err) {
            this.#drop();
            throw err;
          }
        },
        {
          attempts: this.#opts.attempts ?? 3,
          baseDelayMs: this.#opts.baseDelayMs ?? 200,
          timeoutMs: this.#opts.timeoutMs ?? 10_000,
          what: `kmip ${this.#opts.host}:${this.#opts.port ?? 5696}`,
          retryable: (err) => {
            if (err instanceof BrickcryptError) return false;
            if (err instanceof SentError) return IDEMPOTENT.has(operation) && isNetworkError(err.inner);
            return isNetworkError(err);
          },
        },
      );
      return parseResponse(response, operation, subject);
    } catch (err) {
      if (err instanceof SentError) throw new BackendUnavailableError(`kmip: connection lost during request: ${err.message}`, { cause: err.inner });
      if (err instanceof BrickcryptError) throw err;
      throw new BackendUnavailableError(`kmip: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    } finally {
      request.fill(0);
    }
  }

  #connect(signal: AbortSignal): Promise<tls.TLSSocket> {
    if (this.#closed) return Promise.reject(new BackendUnavailableError('kmip: client is closed'));
    if (this.#socket && !this.#socket.destroyed) return Promise.resolve(this.#socket);
    return new Promise((resolve, reject) => {
      const o = this.#opts;
      const socket = tls.connect({
        host: o.host,
        port: o.port ?? 5696,
        ca: o.ca,
        cert: o.cert,
        key: o.key,
        servername: o.servername ?? (isIp(o.host) ? undefined : o.host),
        minVersion: 'TLSv1.2',
        rejectUnauthorized: true,
      });
      const onAbort = () => {
        socket.destroy();
        reject(signal.reason ?? new Error('aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('secureConnect', () => {
        signal.removeEventListener('abort', onAbort);
        socket.removeListener('error', reject);
        socket.on('error', () => socket.destroy());
        this.#socket = socket;
        resolve(socket);
      });
      socket.once('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      });
    });
  }

  async #exchange(request: Uint8Array, signal: AbortSignal): Promise<Uint8Array> {
    const socket = await this.#connect(signal);
    const max = this.#opts.maxResponseSize ?? 4 * 1024 * 1024;
    return new Promise((resolve, reject) => {
      let buf = Buffer.alloc(0);
      let need = -1;
      const cleanup = () => {
        socket.removeListener('data', onData);
        socket.removeListener('close', onClose);
        socket.removeListener('error', onError);
        signal.removeEventListener('abort', onAbort);
      };
      const fail = (err: unknown) => {
        cleanup();
        buf.fill(0);
        reject(err);
      };
      const onData = (chunk: Buffer) => {
        const next = Buffer.concat([buf, chunk]);
        buf.fill(0);
        chunk.fill(0);
        buf = next;
        try {
          if (need < 0 && buf.length >= HEADER_SIZE) {
            need = ttlvMessageLength(buf.subarray(0, HEADER_SIZE));
            if (need > max) throw new KmipProtocolError(`KMIP response of ${need} bytes exceeds ${max}`);
          }
        } catch (err) {
          fail(err);
          return;
        }
        if (need >= 0 && buf.length >= need) {
          cleanup();
          if (buf.length > need) {
            buf.fill(0);
            reject(new KmipProtocolError('KMIP server sent bytes after the response'));
            return;
          }
          resolve(new Uint8Array(buf.buffer, buf.byteOffset, buf.length));
        }
      };
      const onClose = () => fail(new SentError(Object.assign(new Error('connection closed by the KMIP server'), { code: 'ECONNRESET' })));
      const onError = (err: Error) => fail(new SentError(err));
      const onAbort = () => fail(new SentError(signal.reason ?? new Error('aborted')));
      socket.on('data', onData);
      socket.once('close', onClose);
      socket.once('error', onError);
      signal.addEventListener('abort', onAbort, { once: true });
      socket.write(request);
    });
  }

  #drop(): void {
    this.#socket?.destroy();
    this.#socket = undefined;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#queue.catch(() => undefined);
    this.#drop();
  }
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

function isNetworkError(err: unknown): boolean {
  const e = err as { code?: string; name?: string } | undefined;
  if (!e) return false;
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return true;
  return ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'].includes(e.code ?? '');
}

/** Checks the response frame and the batch item's result; returns the Response Payload. */
export function parseResponse(bytes: Uint8Array, operation: number, subject: string): TtlvItem {
  const msg = decodeTtlv(bytes);
  if (msg.tag !== Tag.ResponseMessage || msg.type !== 'Structure') throw new KmipProtocolError('KMIP answer is not a Response Message');
  const header = get.struct(msg, Tag.ResponseHeader);
  const count = get.int(header, Tag.BatchCount);
  const items = children(msg, Tag.BatchItem);
  if (count !== 1 || items.length !== 1) throw new KmipProtocolError(`KMIP response has ${items.length} batch item(s), expected 1`);
  const item = items[0]!;
  const op = child(item, Tag.Operation);
  if (op && (op.type !== 'Enumeration' || op.value !== operation)) throw new KmipProtocolError('KMIP response is for another operation');
  const status = get.enum(item, Tag.ResultStatus);
  if (status === ResultStatus.Success) {
    return child(item, Tag.ResponsePayload) ?? t.struct(Tag.ResponsePayload, []);
  }
  const reasonItem = child(item, Tag.ResultReason);
  const reason = reasonItem?.type === 'Enumeration' ? reasonItem.value : undefined;
  const messageItem = child(item, Tag.ResultMessage);
  const message = messageItem?.type === 'TextString' ? messageItem.value.slice(0, 300) : '';
  throw resultError(reason, message, subject);
}

/** KMIP result reasons (KMIP 1.2 section 9.1.3.2.29) to brickcrypt errors. */
export function resultError(reason: number | undefined, message: string, subject: string): Error {
  const text = `kmip: ${subject}: ${message || `result reason 0x${(reason ?? 0).toString(16)}`}`;
  switch (reason) {
    case ResultReason.ItemNotFound:
      return new KeyNotFoundError(subject);
    case ResultReason.PermissionDenied:
    case ResultReason.AuthenticationNotSuccessful:
      return new ForbiddenError(text);
    case ResultReason.OperationNotSupported:
    case ResultReason.FeatureNotSupported:
      return new UnsupportedError(text);
    case ResultReason.GeneralFailure:
      return new BackendUnavailableError(text);
    default:
      return new InvalidObjectError(text);
  }
}
