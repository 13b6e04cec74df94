/**
 * Cipher specifications as LUKS stores them.
 *
 * LUKS1 keeps a cipher name and a mode string ("aes" + "xts-plain64",
 * "aes" + "cbc-essiv:sha256"); LUKS2 keeps one dm-crypt style string
 * ("aes-xts-plain64"). Both parse to the same `CipherSpec`.
 *
 * Supported: AES with xts, cbc or ecb and the IV generators plain, plain64,
 * essiv:<hash> (hash output 16/24/32 bytes, i.e. a valid AES key) and null.
 * Everything else (serpent, twofish, cast5, lrw, benbi, lmk, tcw, capi:...)
 * raises `UnsupportedCipherError` naming the cipher.
 */
import { InvalidArgumentError, UnsupportedCipherError } from '../errors.js';
import { hashInfo, isHashSupported } from './hash.js';

export type CipherMode = 'xts' | 'cbc' | 'ecb';
export type IvGenerator = 'plain64' | 'plain' | 'essiv' | 'null';

/** A parsed cipher specification. */
export interface CipherSpec {
  /** Block cipher name, lower case ("aes"). */
  cipher: string;
  mode: CipherMode;
  /** IV generator; 'null' for ecb (no IV) or an all-zero IV. */
  ivGen: IvGenerator;
  /** Hash of the essiv generator ("sha256"). */
  ivHash?: string;
  /** Volume key length in bytes, when known (from the header's key size). */
  keyBytes?: number;
}

/** The textual forms of a cipher spec. */
export interface CipherSpecStrings {
  /** LUKS1 cipher-name field, e.g. "aes". */
  cipherName: string;
  /** LUKS1 cipher-mode field, e.g. "xts-plain64". */
  cipherMode: string;
  /** LUKS2 encryption string, e.g. "aes-xts-plain64". */
  encryption: string;
}

const IV_GENERATORS = new Set(['plain64', 'plain', 'essiv', 'null']);

function unsupported(text: string, reason?: string): never {
  throw new UnsupportedCipherError(text, reason);
}

/**
 * Parses a LUKS1 cipher-name / cipher-mode pair.
 *
 * @example
 * parseCipherSpec('aes', 'cbc-essiv:sha256') // { cipher: 'aes', mode: 'cbc', ivGen: 'essiv', ivHash: 'sha256' }
 * @throws UnsupportedCipherError for ciphers, modes or IV generators brickcrypt cannot run.
 */
export function parseCipherSpec(cipherName: string, cipherMode: string, keyBytes?: number): CipherSpec {
  const full = `${cipherName}-${cipherMode}`;
  const cipher = cipherName.trim().toLowerCase();
  if (cipher === '' || cipherMode.trim() === '') throw new InvalidArgumentError(`Malformed cipher specification "${full}".`);
  if (cipher !== 'aes') unsupported(full);

  const modeText = cipherMode.trim().toLowerCase();
  const dash = modeText.indexOf('-');
  const mode = dash < 0 ? modeText : modeText.slice(0, dash);
  const ivText = dash < 0 ? '' : modeText.slice(dash + 1);
  if (mode !== 'xts' && mode !== 'cbc' && mode !== 'ecb') unsupported(full);

  let ivGen: IvGenerator;
  let ivHash: string | undefined;
  if (mode === 'ecb') {
    // ECB has no IV; dm-crypt accepts "ecb" and "ecb-null".
    if (ivText !== '' && ivText !== 'null') unsupported(full, 'has an IV generator ECB cannot use');
    ivGen = 'null';
  } else {
    if (ivText === '') unsupported(full, 'has no IV generator');
    const colon = ivText.indexOf(':');
    const gen = colon < 0 ? ivText : ivText.slice(0, colon);
    const opt = colon < 0 ? undefined : ivText.slice(colon + 1);
    if (!IV_GENERATORS.has(gen)) unsupported(full);
    ivGen = gen as IvGenerator;
    if (ivGen === 'essiv') {
      if (!opt || !isHashSupported(opt)) unsupported(full, `has an unsupported ESSIV hash ${opt ?? '(none)'}`);
      const info = hashInfo(opt);
      // The ESSIV salt is the hash of the key and serves as an AES key itself.
      if (![16, 24, 32].includes(info.digestSize)) unsupported(full, `cannot use ${info.name} for ESSIV (digest is not an AES key size)`);
      ivHash = info.name;
    } else if (opt !== undefined) {
      unsupported(full, 'has an IV option its generator does not take');
    }
  }
  const spec: CipherSpec = { cipher, mode, ivGen };
  if (ivHash !== undefined) spec.ivHash = ivHash;
  if (keyBytes !== undefined) {
    validateKeyBytes(spec, keyBytes);
    spec.keyBytes = keyBytes;
  }
  return spec;
}

/**
 * Parses a LUKS2 (dm-crypt) encryption string.
 *
 * @example
 * parseEncryption('aes-xts-plain64') // { cipher: 'aes', mode: 'xts', ivGen: 'plain64' }
 */
export function parseEncryption(encryption: string, keyBytes?: number): CipherSpec {
  const text = encryption.trim();
  const dash = text.indexOf('-');
  // "capi:..." kernel-API syntax and "cipher:keycount-..." are not handled.
  if (dash <= 0 || text.slice(0, dash).includes(':')) unsupported(text);
  return parseCipherSpec(text.slice(0, dash), text.slice(dash + 1), keyBytes);
}

/** Valid key lengths in bytes for a spec. */
export function validKeyLengths(spec: CipherSpec): number[] {
  return spec.mode === 'xts' ? [32, 64] : [16, 24, 32];
}

/**
 * Throws `UnsupportedCipherError` when `keyBytes` does not fit the spec
 * (AES-XTS needs 32 or 64 bytes, AES-CBC/ECB 16, 24 or 32).
 */
export function validateKeyBytes(spec: CipherSpec, keyBytes: number): void {
  if (!validKeyLengths(spec).includes(keyBytes)) {
    unsupported(cipherSpecStrings(spec).encryption, `cannot use a ${keyBytes * 8}-bit key`);
  }
}

/**
 * The LUKS1 and LUKS2 string forms of a spec.
 *
 * @example
 * cipherSpecStrings(parseEncryption('aes-cbc-essiv:sha256'))
 * // { cipherName: 'aes', cipherMode: 'cbc-essiv:sha256', encryption: 'aes-cbc-essiv:sha256' }
 */
export function cipherSpecStrings(spec: CipherSpec): CipherSpecStrings {
  let cipherMode: string = spec.mode;
  if (spec.mode !== 'ecb') cipherMode += `-${spec.ivGen}${spec.ivGen === 'essiv' ? `:${spec.ivHash}` : ''}`;
  return { cipherName: spec.cipher, cipherMode, encryption: `${spec.cipher}-${cipherMode}` };
}
