/**
 * A key-encryption key (KEK) that wraps the secrets of the local keystore.
 *
 * The KEK itself may live in a file, be derived from a passphrase, or stay inside a
 * PKCS#11 token; the keystore only ever sees `wrap`/`unwrap`. Wrapping must be
 * authenticated encryption that binds `aad` (the keystore passes the object's id,
 * owner and type), so a wrapped blob moved to another row no longer unwraps.
 *
 * Contract for implementations:
 * - `wrap` returns a self-contained blob (nonce, ciphertext and tag together);
 *   calling it twice on the same input gives different blobs (fresh nonce).
 * - `unwrap` throws `InvalidObjectError` (src/errors.ts) when the blob was tampered
 *   with, the aad differs, or the blob was wrapped under another KEK;
 *   `BackendUnavailableError` when the token/device cannot be reached.
 * - `id` is stable for the same KEK (e.g. "file", "passphrase:argon2id",
 *   "pkcs11:<token label>/<key label>") and never contains key material.
 *
 * @example
 * const wrapped = await kek.wrap(secret.expose(), aad);
 * const again = await kek.unwrap(wrapped, aad); // Uint8Array; caller wipes it
 */
export interface KekProvider {
  readonly id: string;
  wrap(plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  unwrap(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}
