/**
 * A small HTTP shell for OpenStack Barbican's v1 REST API over node:http/node:https.
 *
 * node:https takes a custom CA and a client certificate directly (the global fetch of
 * Node 20 cannot), so no HTTP library is needed. Every request runs under `withRetry`:
 * connection failures and 5xx/429 answers are retried with backoff; 4xx answers are
 * mapped once to typed errors and never retried. POST is retried only when the request
 * provably never reached the server (connection refused), so an order is not placed twice.
 */
import http from 'node:http';
import https from 'node:https';
import {
  AlreadyExistsError,
  BackendUnavailableError,
  BrickcryptError,
  ForbiddenError,
  InvalidObjectError,
  KeyNotFoundError,
} from '../../errors.js';
import { withRetry } from '../retry.js';

export interface BarbicanTlsOptions {
  /** PEM CA bundle trusted for the server certificate (default: Node's built-in roots). */
  ca?: string | Buffer;
  /** PEM client certificate and key, for servers behind mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Default true; false only for throwaway test servers. */
  rejectUnauthorized?: boolean;
}

export interface BarbicanHttpOptions {
  /** Endpoint without the version, e.g. `http://127.0.0.1:9311` or `https://kms.example:9311`. */
  url: string;
  tls?: BarbicanTlsOptions;
  /** Per-attempt timeout in ms (default 10000). */
  timeoutMs?: number;
  /** Total attempts for transient failures (default 3). */
  attempts?: number;
  /** First backoff delay in ms (default 200). */
  baseDelayMs?: number;
}

export interface BarbicanResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** Which typed error an HTTP error status becomes; `subject` names the object for 404. */
export function mapHttpError(status: number, subject: string, detail: string): Error {
  const msg = `barbican: ${subject}: HTTP ${status}${detail ? `: ${detail}` : ''}`;
  if (status === 404) return new KeyNotFoundError(subject);
  if (status === 401 || status === 403) return new ForbiddenError(msg);
  if (status === 409) return new AlreadyExistsError(msg);
  if (status >= 500 || status === 429) return new BackendUnavailableError(msg);
  return new InvalidObjectError(msg);
}

/** Barbican's JSON error bodies carry `description` (or `title`); never echo payloads. */
function errorDetail(body: Buffer): string {
  try {
    const j = JSON.parse(body.toString('utf8')) as { description?: string; title?: string };
    return String(j.description ?? j.title ?? '').slice(0, 300);
  } catch {
    return '';
  }
}

export class BarbicanHttp {
  readonly base: URL;
  readonly #agent: http.Agent;
  readonly #opts: BarbicanHttpOptions;

  constructor(options: BarbicanHttpOptions) {
    this.#opts = options;
    this.base = new URL(options.url.endsWith('/') ? options.url : `${options.url}/`);
    if (this.base.protocol === 'https:') {
      const t = options.tls ?? {};
      this.#agent = new https.Agent({ keepAlive: true, ca: t.ca, cert: t.cert, key: t.key, rejectUnauthorized: t.rejectUnauthorized ?? true });
    } else if (this.base.protocol === 'http:') {
      this.#agent = new http.Agent({ keepAlive: true });
    } else {
      throw new InvalidObjectError(`barbican: unsupported URL scheme ${this.base.protocol}`);
    }
  }

  /**
   * Sends one request (with retries) and returns a 2xx response; other statuses throw typed errors.
   * `path` is relative to the endpoint ("v1/secrets") or an absolute href the server returned.
   */
  async request(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    subject: string,
  ): Promise<BarbicanResponse> {
    const url = this.resolve(path);
    const idempotent = method !== 'POST';
    const what = `barbican ${method} ${url.pathname}`;
    try {
      return await this.#withRetry(method, url, headers, body, subject, idempotent, what);
    } catch (err) {
      // Failures that are not retried (a refused TLS handshake, a POST that timed out) would
      // otherwise escape as raw node errors; callers get the typed error with the cause kept.
      if (err instanceof BrickcryptError) throw err;
      throw new BackendUnavailableError(`${what}: key manager unavailable: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  #withRetry(
    method: string,
    url: URL,
    headers: Record<string, string>,
    body: Buffer | undefined,
    subject: string,
    idempotent: boolean,
    what: string,
  ): Promise<BarbicanResponse> {
    return withRetry(
      async (signal) => {
        const res = await this.#once(method, url, headers, body, signal);
        if (res.status >= 200 && res.status < 300) return res;
        throw mapHttpError(res.status, subject, errorDetail(res.body));
      },
      {
        attempts: this.#opts.attempts ?? 3,
        baseDelayMs: this.#opts.baseDelayMs ?? 200,
        timeoutMs: this.#opts.timeoutMs ?? 10_000,
        what,
        retryable: (err) => {
          const code = (err as { code?: string }).code;
          if (code === 'ECONNREFUSED') return true; // never reached the server
          if (!idempotent) return false;
          if (err instanceof BackendUnavailableError) return true;
          const name = (err as { name?: string }).name;
          return name === 'TimeoutError' || ['ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'].includes(code ?? '');
        },
      },
    );
  }

  /** Refs from the server are absolute; only same-origin refs are followed (a ref is never a redirect elsewhere). */
  resolve(path: string): URL {
    const url = new URL(path, this.base);
    if (url.origin !== this.base.origin) throw new InvalidObjectError(`barbican: reference ${url.origin} is not on ${this.base.origin}`);
    return url;
  }

  #once(method: string, url: URL, headers: Record<string, string>, body: Buffer | undefined, signal: AbortSignal): Promise<BarbicanResponse> {
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        url,
        {
          method,
          agent: this.#agent,
          headers: body ? { ...headers, 'Content-Length': String(body.length) } : headers,
          signal,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const all = Buffer.concat(chunks);
            for (const c of chunks) c.fill(0); // payload bytes must not linger in pooled chunks
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: all });
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
