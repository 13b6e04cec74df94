/**
 * Key material by type: a `SecretBytes` holds its bytes privately, can `wipe()` them,
 * and never prints or serialises them (inspect, toString and JSON all redact).
 */
import { inspect } from 'node:util';
import { randomBytes, timingSafeEqual } from 'node:crypto';

export class SecretBytes {
  #bytes: Uint8Array;
  #wiped = false;

  /** Takes ownership of `bytes` (they are wiped with the secret). Use `copyOf` to keep the input. */
  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  static copyOf(bytes: Uint8Array): SecretBytes {
    return new this(new Uint8Array(bytes));
  }

  static random(length: number): SecretBytes {
    return new this(new Uint8Array(randomBytes(length)));
  }

  get length(): number {
    return this.#bytes.length;
  }

  get wiped(): boolean {
    return this.#wiped;
  }

  /**
   * The raw bytes, for crypto calls. Do not keep the reference beyond the call that
   * needs it; the array is zeroed by `wipe()`.
   */
  expose(): Uint8Array {
    if (this.#wiped) throw new Error('secret was wiped');
    return this.#bytes;
  }

  /** Lowercase hex of the bytes: the os-brick LUKS passphrase convention. Returns a new secret. */
  toHexSecret(): SecretBytes {
    return new SecretBytes(new Uint8Array(Buffer.from(Buffer.from(this.expose()).toString('hex'), 'latin1')));
  }

  equals(other: SecretBytes): boolean {
    const a = this.expose();
    const b = other.expose();
    return a.length === b.length && timingSafeEqual(a, b);
  }

  clone(): SecretBytes {
    return new (this.constructor as typeof SecretBytes)(new Uint8Array(this.expose()));
  }

  wipe(): void {
    this.#bytes.fill(0);
    this.#wiped = true;
  }

  toString(): string {
    return `[${this.constructor.name}: ${this.#bytes.length} bytes, redacted]`;
  }

  toJSON(): string {
    return this.toString();
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

/** A LUKS volume (master) key. */
export class VolumeKey extends SecretBytes {}

/** A passphrase or key-file content: every byte counts, no encoding is assumed. */
export class Passphrase extends SecretBytes {
  static fromString(text: string): Passphrase {
    return new Passphrase(new Uint8Array(Buffer.from(text, 'utf8')));
  }
}
