/**
 * Retries for the network stores: transient failures (connection errors, timeouts, HTTP 408,
 * 429 and 5xx) are retried with exponential backoff and jitter; anything else is returned at once.
 */
import { BrickcryptError, ObjectStoreError } from '../../errors.js';

export interface StoreRetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  timeoutMs: number;
}

export const DEFAULT_STORE_RETRY: StoreRetryPolicy = { attempts: 5, baseDelayMs: 200, maxDelayMs: 5000, timeoutMs: 60_000 };

/** True for a failure that may succeed when tried again. */
export function isTransientStoreError(err: unknown): boolean {
  if (err instanceof ObjectStoreError) return err.status === undefined || err.status === 408 || err.status === 429 || err.status >= 500;
  if (err instanceof BrickcryptError) return false;
  return true; // fetch's TypeError (network), AbortError/TimeoutError, ECONNRESET...
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function withStoreRetry<T>(what: string, fn: (signal: AbortSignal) => Promise<T>, policy: StoreRetryPolicy = DEFAULT_STORE_RETRY): Promise<T> {
  let last: unknown;
  for (let attempt = 1; attempt <= policy.attempts; attempt++) {
    try {
      return await fn(AbortSignal.timeout(policy.timeoutMs));
    } catch (err) {
      last = err;
      if (!isTransientStoreError(err) || attempt === policy.attempts) break;
      const delay = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
      await sleep(delay * (0.75 + Math.random() * 0.5));
    }
  }
  if (last instanceof BrickcryptError) throw last;
  throw new ObjectStoreError(`${what} failed after ${policy.attempts} attempts: ${(last as Error)?.message ?? String(last)}`, { cause: last });
}
