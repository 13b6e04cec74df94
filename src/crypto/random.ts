/**
 * Cryptographically secure random bytes (OpenSSL CSPRNG via node:crypto), as Uint8Array.
 */
import { randomBytes as nodeRandomBytes } from 'node:crypto';

/**
 * `length` random bytes in a fresh, unshared Uint8Array (safe to wipe).
 *
 * @example
 * const salt = randomBytes(32);
 */
export function randomBytes(length: number): Uint8Array {
  // node's randomBytes allocates an exclusive ArrayBuffer; view it without copying.
  const b = nodeRandomBytes(length);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
