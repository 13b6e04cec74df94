/**
 * Retry with exponential backoff and a per-attempt timeout, for network key managers.
 *
 * Only transient failures are retried (connection refused/reset, timeouts, DNS
 * try-again, HTTP 5xx/429 reported as `BackendUnavailableError`); policy errors
 * (forbidden, not found) are returned at once. After the last attempt the error is a
 * `BackendUnavailableError` whose `cause` is the last failure.
 */
import { BackendUnavailableError, BrickcryptError } from '../errors.js';

export interface RetryPolicy {
  /** Total attempts including the first (default 3). */
  attempts?: number;
  /** First backoff delay in ms (default 200), doubled each retry, with +-25 % jitter. */
  baseDelayMs?: number;
  /** Upper bound for one delay (default 5000). */
  maxDelayMs?: number;
  /** Per-attempt timeout in ms (default 30000); the attempt's AbortSignal fires then. */
  timeoutMs?: number;
  /** Decides whether an error is worth another attempt (default `isTransientError`). */
  retryable?: (err: unknown) => boolean;
  /** Cancels waiting and the running attempt. */
  signal?: AbortSignal;
  /** Short description for the final error message, e.g. "barbican GET /v1/secrets". */
  what?: string;
}

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT']);

/** True for network-level failures and `BackendUnavailableError`; false for every other brickcrypt error. */
export function isTransientError(err: unknown): boolean {
  if (err instanceof BackendUnavailableError) return true;
  if (err instanceof BrickcryptError) return false;
  const e = err as { code?: string; name?: string; cause?: { code?: string } } | undefined;
  if (!e) return false;
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return true;
  return TRANSIENT_CODES.has(e.code ?? '') || TRANSIENT_CODES.has(e.cause?.code ?? '');
}

class AttemptTimeout extends Error {
  override name = 'TimeoutError';
}

/**
 * Runs `fn` until it succeeds, a non-transient error occurs, or attempts run out.
 *
 * @example
 * const body = await withRetry((signal) => fetch(url, { signal }).then(r => r.json()),
 *   { attempts: 4, timeoutMs: 10_000, what: 'barbican GET secret' });
 */
export async function withRetry<T>(fn: (signal: AbortSignal, attempt: number) => Promise<T>, policy: RetryPolicy = {}): Promise<T> {
  const attempts = Math.max(1, policy.attempts ?? 3);
  const base = policy.baseDelayMs ?? 200;
  const maxDelay = policy.maxDelayMs ?? 5000;
  const timeoutMs = policy.timeoutMs ?? 30_000;
  const retryable = policy.retryable ?? isTransientError;
  let last: unknown;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (policy.signal?.aborted) throw policy.signal.reason ?? new Error('aborted');
    const controller = new AbortController();
    const onAbort = () => controller.abort(policy.signal?.reason);
    policy.signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const err = new AttemptTimeout(`timed out after ${timeoutMs} ms`);
          controller.abort(err);
          reject(err);
        }, timeoutMs);
      });
      return await Promise.race([fn(controller.signal, attempt), timeout]);
    } catch (err) {
      last = err;
      if (policy.signal?.aborted || !retryable(err)) throw err;
      if (attempt === attempts) break;
      const delay = Math.min(maxDelay, base * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5);
      await sleep(delay, policy.signal);
    } finally {
      clearTimeout(timer);
      policy.signal?.removeEventListener('abort', onAbort);
    }
  }
  const what = policy.what ? `${policy.what}: ` : '';
  const detail = (last as Error)?.message ?? String(last);
  throw new BackendUnavailableError(`${what}key manager unavailable after ${attempts} attempt(s): ${detail}`, { cause: last });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason ?? new Error('aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
