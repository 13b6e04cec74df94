/**
 * Every error brickcrypt raises on purpose, in one place, each with a stable code.
 *
 * The code is what scripts match on; the message is for people. Each class maps once
 * to a CLI exit code, an NBD errno and an HTTP status (see `EXIT_CODES`,
 * `nbdErrnoOf`, `httpStatusOf`), so the CLI, NBD server and HTTP API never guess.
 *
 * Exit codes follow cryptsetup where it has one (1 bad parameters, 2 wrong
 * passphrase / permission, 3 out of memory, 4 wrong device or format, 5 busy or
 * exists); brickcrypt adds 6 for key-manager failures, 7 for integrity failures
 * and 8 for I/O errors.
 */

export const EXIT_CODES = {
  ok: 0,
  usage: 1,
  permission: 2,
  resource: 3,
  device: 4,
  busy: 5,
  keyManager: 6,
  integrity: 7,
  io: 8,
  internal: 70,
} as const;

/** NBD errno values from the NBD protocol (doc/proto.md, "Error values"). */
export const NBD_ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export interface ErrorMapping {
  exitCode: number;
  nbdErrno: number;
  httpStatus: number;
}

export class BrickcryptError extends Error {
  /** Stable machine-readable code, e.g. `WRONG_PASSPHRASE`. */
  readonly code: string;
  readonly exitCode: number;
  readonly nbdErrno: number;
  readonly httpStatus: number;

  constructor(code: string, message: string, mapping: ErrorMapping, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.exitCode = mapping.exitCode;
    this.nbdErrno = mapping.nbdErrno;
    this.httpStatus = mapping.httpStatus;
  }

  toJSON(): { code: string; error: string; message: string } {
    return { code: this.code, error: this.name, message: this.message };
  }
}

const USAGE: ErrorMapping = { exitCode: EXIT_CODES.usage, nbdErrno: NBD_ERRNO.EINVAL, httpStatus: 400 };
const PERMISSION: ErrorMapping = { exitCode: EXIT_CODES.permission, nbdErrno: NBD_ERRNO.EPERM, httpStatus: 403 };
const DEVICE: ErrorMapping = { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.EIO, httpStatus: 422 };
const BUSY: ErrorMapping = { exitCode: EXIT_CODES.busy, nbdErrno: NBD_ERRNO.EIO, httpStatus: 409 };
const IO: ErrorMapping = { exitCode: EXIT_CODES.io, nbdErrno: NBD_ERRNO.EIO, httpStatus: 500 };

/** A command-line or API argument is malformed or contradictory. */
export class InvalidArgumentError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_ARGUMENT', message, USAGE, options);
  }
}

/** The passphrase (or key file, or managed key) opens no keyslot. */
export class WrongPassphraseError extends BrickcryptError {
  constructor(message = 'No key available with this passphrase.') {
    super('WRONG_PASSPHRASE', message, PERMISSION);
  }
}

/** A header or image structure is damaged or violates its specification. */
export class CorruptHeaderError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CORRUPT_HEADER', message, DEVICE, options);
  }
}

/** The input is not in a format brickcrypt recognises (e.g. no LUKS magic). */
export class UnknownFormatError extends BrickcryptError {
  constructor(message: string) {
    super('UNKNOWN_FORMAT', message, DEVICE);
  }
}

/** A valid feature brickcrypt does not implement (a cipher, a qcow2 feature, a LUKS2 segment type). */
export class UnsupportedError extends BrickcryptError {
  constructor(message: string) {
    super('UNSUPPORTED', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.ENOTSUP, httpStatus: 422 });
  }
}

/** A cipher specification brickcrypt cannot run (serpent, twofish, ...). Names the cipher. */
export class UnsupportedCipherError extends BrickcryptError {
  readonly cipher: string;
  constructor(cipher: string, reason = 'is not supported') {
    super('UNSUPPORTED_CIPHER', `Cipher ${cipher} ${reason}.`, {
      exitCode: EXIT_CODES.device,
      nbdErrno: NBD_ERRNO.ENOTSUP,
      httpStatus: 422,
    });
    this.cipher = cipher;
  }
}

/** A key violates a rule of its cipher (e.g. AES-XTS key halves are equal). */
export class WeakKeyError extends BrickcryptError {
  constructor(message: string) {
    super('WEAK_KEY', message, USAGE);
  }
}

/**
 * The volume carries a LUKS2 mandatory requirement brickcrypt does not know (or an
 * unfinished reencryption): it may be inspected but never unlocked for writing or modified.
 */
export class ReadOnlyVolumeError extends BrickcryptError {
  constructor(message: string) {
    super('READ_ONLY_VOLUME', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.EPERM, httpStatus: 409 });
  }
}

/** Every keyslot is taken, or the requested slot is in use. */
export class KeyslotUnavailableError extends BrickcryptError {
  constructor(message: string) {
    super('KEYSLOT_UNAVAILABLE', message, BUSY);
  }
}

/** The named keyslot (or token, digest) does not exist or is inactive. */
export class KeyslotNotFoundError extends BrickcryptError {
  constructor(message: string) {
    super('KEYSLOT_NOT_FOUND', message, DEVICE);
  }
}

/** A target exists and `--force` was not given, or a resource is locked by another user. */
export class AlreadyExistsError extends BrickcryptError {
  constructor(message: string) {
    super('ALREADY_EXISTS', message, BUSY);
  }
}

/** Another process holds the volume (a writer lock). */
export class LockedError extends BrickcryptError {
  constructor(message: string) {
    super('LOCKED', message, BUSY);
  }
}

/** A file, device or object does not exist. */
export class NotFoundError extends BrickcryptError {
  constructor(message: string) {
    super('NOT_FOUND', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.EINVAL, httpStatus: 404 });
  }
}

/** The target cannot hold the data (too small for header + payload), or the caller asked to shrink. */
export class InsufficientSpaceError extends BrickcryptError {
  constructor(message: string) {
    super('INSUFFICIENT_SPACE', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.ENOSPC, httpStatus: 422 });
  }
}

/** A read or write lies outside the device. */
export class OutOfRangeError extends BrickcryptError {
  constructor(message: string) {
    super('OUT_OF_RANGE', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.EINVAL, httpStatus: 416 });
  }
}

/** A write was attempted on a read-only device or export. */
export class ReadOnlyDeviceError extends BrickcryptError {
  constructor(message = 'The device is read-only.') {
    super('READ_ONLY_DEVICE', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.EPERM, httpStatus: 409 });
  }
}

/** Data does not match its checksum, signature or digest. */
export class IntegrityError extends BrickcryptError {
  constructor(message: string) {
    super('INTEGRITY', message, { exitCode: EXIT_CODES.integrity, nbdErrno: NBD_ERRNO.EIO, httpStatus: 422 });
  }
}

/** An operating-system I/O call failed. Wraps the original error as `cause`. */
export class DeviceIoError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('IO_ERROR', message, IO, options);
  }
}

/** Key-manager: the object does not exist (or the caller may not know it exists). */
export class KeyNotFoundError extends BrickcryptError {
  constructor(id: string) {
    super('KEY_NOT_FOUND', `Managed object ${id} not found.`, {
      exitCode: EXIT_CODES.keyManager,
      nbdErrno: NBD_ERRNO.EPERM,
      httpStatus: 404,
    });
  }
}

/** Key-manager: the caller's identity does not allow this operation. */
export class ForbiddenError extends BrickcryptError {
  constructor(message: string) {
    super('FORBIDDEN', message, PERMISSION);
  }
}

/** Key-manager: the backend could not be reached or failed after retries. */
export class BackendUnavailableError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKEND_UNAVAILABLE', message, { exitCode: EXIT_CODES.keyManager, nbdErrno: NBD_ERRNO.EIO, httpStatus: 503 }, options);
  }
}

/** Key-manager: the object is malformed, tampered with, or of the wrong type. */
export class InvalidObjectError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_OBJECT', message, { exitCode: EXIT_CODES.keyManager, nbdErrno: NBD_ERRNO.EINVAL, httpStatus: 422 }, options);
  }
}

/** Key-manager: the object is still used by consumers and `force` was not given. */
export class InUseError extends BrickcryptError {
  constructor(message: string) {
    super('IN_USE', message, BUSY);
  }
}

/** The operation was cancelled (SIGINT/SIGTERM or an AbortSignal). */
export class CancelledError extends BrickcryptError {
  constructor(message = 'Operation cancelled.') {
    super('CANCELLED', message, { exitCode: 130, nbdErrno: NBD_ERRNO.ESHUTDOWN, httpStatus: 499 });
  }
}

/** A qcow2 image has a backing file and the caller did not pass the backing image explicitly. */
export class BackingFileRequiredError extends BrickcryptError {
  /** The backing file name recorded in the image (never opened implicitly). */
  readonly backingFile: string;
  constructor(backingFile: string, message?: string) {
    super(
      'BACKING_FILE_REQUIRED',
      message ?? `The image has a backing file (${JSON.stringify(backingFile)}); pass the backing image explicitly to read it.`,
      { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.ENOTSUP, httpStatus: 422 },
    );
    this.backingFile = backingFile;
  }
}

/** Why a signing certificate was refused (see `CertificateError.reason`). */
export type CertificateProblem = 'malformed' | 'expired' | 'not-yet-valid' | 'key-usage' | 'key-type' | 'untrusted' | 'not-a-ca' | 'path-length';

/**
 * A signing certificate cannot be relied on: malformed, outside its validity period,
 * without the needed key usage, of the wrong key type, or not chained to a trusted root.
 */
export class CertificateError extends BrickcryptError {
  readonly reason: CertificateProblem;
  constructor(reason: CertificateProblem, message: string, options?: { cause?: unknown }) {
    super('INVALID_CERTIFICATE', message, { exitCode: EXIT_CODES.integrity, nbdErrno: NBD_ERRNO.EINVAL, httpStatus: 422 }, options);
    this.reason = reason;
  }
}

/**
 * A KMIP message is malformed: bad TTLV framing (length, padding, type, nesting, size) or
 * a response that does not have the structure KMIP 1.x requires.
 */
export class KmipProtocolError extends BrickcryptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KMIP_PROTOCOL', message, { exitCode: EXIT_CODES.keyManager, nbdErrno: NBD_ERRNO.EIO, httpStatus: 502 }, options);
  }
}

// --- plain volumes and passphrase prompts ---
/** A new passphrase typed twice at a terminal did not match (cryptsetup: -EPERM, exit 2). */
export class PassphraseMismatchError extends BrickcryptError {
  constructor(message = 'Passphrases do not match.') {
    super('PASSPHRASE_MISMATCH', message, PERMISSION);
  }
}

// --- backup ---
/** The backup key does not open this repository: it is another key than the one `backup init` created. */
export class WrongBackupKeyError extends BrickcryptError {
  constructor(message: string) {
    super('WRONG_BACKUP_KEY', message, PERMISSION);
  }
}

/** An object store (file:, Swift, S3) refused a request or stayed unreachable after retries. */
export class ObjectStoreError extends BrickcryptError {
  /** HTTP status of the last response, when there was one. */
  readonly status?: number;
  constructor(message: string, options?: { cause?: unknown; status?: number }) {
    super('OBJECT_STORE', message, { exitCode: EXIT_CODES.io, nbdErrno: NBD_ERRNO.EIO, httpStatus: 502 }, options);
    if (options?.status !== undefined) this.status = options.status;
  }
}

// --- service ---

/** The request carries no valid credentials (no or unknown Bearer token, no trusted identity headers). */
export class UnauthenticatedError extends BrickcryptError {
  constructor(message = 'Authentication required: send Authorization: Bearer TOKEN.') {
    super('UNAUTHENTICATED', message, { exitCode: EXIT_CODES.permission, nbdErrno: NBD_ERRNO.EPERM, httpStatus: 401 });
  }
}

/** The job queue holds as many jobs as it may; try again later. */
export class QueueFullError extends BrickcryptError {
  constructor(message: string) {
    super('QUEUE_FULL', message, { exitCode: EXIT_CODES.busy, nbdErrno: NBD_ERRNO.EIO, httpStatus: 429 });
  }
}

/** A valid request for an operation this build does not provide yet (e.g. a job type whose engine is missing). */
export class NotImplementedError extends BrickcryptError {
  constructor(message: string) {
    super('NOT_IMPLEMENTED', message, { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.ENOTSUP, httpStatus: 501 });
  }
}

// --- reencryption ---

/**
 * A LUKS2 header lists a mandatory requirement (config.requirements.mandatory) brickcrypt does
 * not implement: the payload must not be read or written (cryptsetup refuses to activate it too).
 * Header-level commands (dump, test-key, header-backup) still work.
 */
export class UnsupportedRequirementError extends BrickcryptError {
  /** The requirement strings that fence the volume. */
  readonly requirements: string[];
  constructor(requirements: string[], message?: string) {
    super(
      'UNSUPPORTED_REQUIREMENT',
      message ?? `The LUKS2 volume lists mandatory requirements brickcrypt does not implement (${requirements.join(', ')}); its data cannot be read or written.`,
      { exitCode: EXIT_CODES.device, nbdErrno: NBD_ERRNO.ENOTSUP, httpStatus: 422 },
    );
    this.requirements = requirements;
  }
}

/**
 * An in-place reencryption (cryptsetup's online-reencrypt requirement) was started and not
 * finished: part of the data is under the new key, part under the old. Only reencrypt may
 * touch the payload until it completes (`brickcrypt reencrypt --resume-only VOLUME`).
 */
export class ReencryptionInProgressError extends BrickcryptError {
  constructor(message = 'A reencryption of this volume is in progress; finish it first with `brickcrypt reencrypt --resume-only VOLUME`.') {
    super('REENCRYPTION_IN_PROGRESS', message, BUSY);
  }
}

// --- volume lifecycle (resize, convert-header) ---
/** A resize would cut off payload and `allowTruncate` was not given; nothing was modified. */
export class ShrinkRefusedError extends BrickcryptError {
  constructor(message: string) {
    super('SHRINK_REFUSED', message, USAGE);
  }
}

/** Why `convert-header` refuses a volume (stable, for scripts); cryptsetup refuses the same ones with -EINVAL. */
export type ConversionRefusal =
  | 'same-type'
  | 'keyslots-offset'
  | 'cipher'
  | 'luksmeta'
  | 'no-space'
  | 'sector-size'
  | 'digest'
  | 'wrapped-key'
  | 'segments'
  | 'tokens'
  | 'keyslot-number'
  | 'keyslot-incompatible'
  | 'no-keyslot-area'
  | 'requirements'
  | 'no-room-for-safe-move';

/** `convert-header` refuses this volume (`reason` says why); nothing was modified. cryptsetup exits 1 for these. */
export class ConversionRefusedError extends BrickcryptError {
  readonly reason: ConversionRefusal;
  constructor(reason: ConversionRefusal, message: string) {
    super('CONVERSION_REFUSED', message, USAGE);
    this.reason = reason;
  }
}

// --- tokens ---
/**
 * A LUKS2 token of type `brickcrypt-key-manager` does not have the documented shape
 * (docs/luks.md "Tokens"): no key id, a key-manager URI carrying credentials, a bad keyslot list.
 * Tokens of other types are never parsed, as cryptsetup ignores token types it does not know.
 */
export class MalformedTokenError extends BrickcryptError {
  constructor(message: string) {
    super('MALFORMED_TOKEN', message, DEVICE);
  }
}

// --- LUKS1 re-key ---
/** Why an in-place LUKS1 re-key is refused (stable, for scripts). */
export type Luks1ReencryptRefusal = 'no-space' | 'layout' | 'options' | 'detached-header';

/**
 * An in-place LUKS1 re-key is refused before anything is written: it runs through a temporary
 * LUKS2 header (docs/reencrypt.md "LUKS1 volumes"), and `reason` names what does not fit.
 */
export class Luks1ReencryptRefusedError extends BrickcryptError {
  readonly reason: Luks1ReencryptRefusal;
  constructor(reason: Luks1ReencryptRefusal, message: string, options?: { cause?: unknown }) {
    super('LUKS1_REENCRYPT_REFUSED', message, USAGE, options);
    this.reason = reason;
  }
}

// --- online reencryption ---
/**
 * An error another brickcrypt process reported over a control channel (e.g. the `attach` server
 * running an online reencryption): its code, message and exit code as the other process had them.
 */
export class RemoteCommandError extends BrickcryptError {
  constructor(code: string, message: string, exitCode: number) {
    super(code, message, { exitCode, nbdErrno: NBD_ERRNO.EIO, httpStatus: 502 });
  }
}

/** Maps any thrown value to its CLI exit code (unexpected errors are internal: 70). */
export function exitCodeOf(err: unknown): number {
  return err instanceof BrickcryptError ? err.exitCode : EXIT_CODES.internal;
}

/** Maps any thrown value to an NBD errno (unexpected errors are EIO). */
export function nbdErrnoOf(err: unknown): number {
  return err instanceof BrickcryptError ? err.nbdErrno : NBD_ERRNO.EIO;
}

/** Maps any thrown value to an HTTP status (unexpected errors are 500). */
export function httpStatusOf(err: unknown): number {
  return err instanceof BrickcryptError ? err.httpStatus : 500;
}
