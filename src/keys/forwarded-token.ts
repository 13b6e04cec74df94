/**
 * A caller's Keystone token, as an authenticating proxy passes it (`X-Auth-Token`, what
 * keystonemiddleware's auth_token forwards), held only in this process's memory so the calls
 * made for the caller (Barbican, Glance) can carry it.
 *
 * It must never reach a database, a log or an error message: `JSON.stringify` drops it
 * (`toJSON` gives undefined, so a `CallerIdentity` serialized into a job row has no token
 * field), `String()` and `util.inspect` show a placeholder, and the value sits in a private
 * field, which `structuredClone` and object spread of the token do not copy.
 */
import { inspect } from 'node:util';
import { UnauthenticatedError } from '../errors.js';

/** Keystone tokens (fernet ~180 bytes, PKI up to a few KiB); anything longer is not one. */
const MAX_TOKEN_LENGTH = 16 * 1024;

export class ForwardedToken {
  readonly #value: string;

  constructor(value: string) {
    // A header value: visible ASCII only, so it can never split a header line.
    if (value.length === 0 || value.length > MAX_TOKEN_LENGTH || !/^[\x21-\x7e]+$/.test(value)) {
      throw new UnauthenticatedError('X-Auth-Token is not a token (empty, too long or not printable ASCII).');
    }
    this.#value = value;
  }

  /** The token, for the one header that carries it. */
  reveal(): string {
    return this.#value;
  }

  toJSON(): undefined {
    return undefined;
  }

  toString(): string {
    return '[keystone token]';
  }

  [inspect.custom](): string {
    return 'ForwardedToken [redacted]';
  }
}

/** The caller's forwarded token, if it has one that is live in this process (never a stored stand-in). */
export function forwardedToken(caller: { token?: unknown } | undefined): string | undefined {
  const t = caller?.token;
  return t instanceof ForwardedToken ? t.reveal() : undefined;
}

/** A caller without its token (what is stored with a job). */
export function withoutToken<T extends { token?: unknown }>(caller: T): Omit<T, 'token'> {
  const { token: _token, ...rest } = caller;
  return rest;
}
