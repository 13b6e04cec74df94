/**
 * Image signatures as OpenStack Glance, Nova and Cinder verify them (via cursive's
 * signature_utils.py): four image properties describe a signature over the whole image.
 *
 * | property                         | value                                                     |
 * |----------------------------------|-----------------------------------------------------------|
 * | `img_signature`                  | base64 of the signature bytes                             |
 * | `img_signature_hash_method`      | SHA-224, SHA-256, SHA-384 or SHA-512                      |
 * | `img_signature_key_type`         | RSA-PSS, DSA, ECC_SECP384R1, ECC_SECP521R1, ECC_SECT409K1, |
 * |                                  | ECC_SECT409R1, ECC_SECT571K1, ECC_SECT571R1                |
 * | `img_signature_certificate_uuid` | key-manager id of the signer's X.509 certificate (DER)    |
 *
 * cursive hashes the image with the hash method and verifies the digest as "prehashed"
 * data, which is the same as a standard signature over the image with that hash. Details:
 * RSA-PSS uses MGF1 with the same hash and the maximum salt length (cursive:
 * `PSS.MAX_LENGTH`, i.e. emLen - hLen - 2; OpenSSL `rsa_pss_saltlen:max`), which is
 * required exactly on verification, as cursive does; ECDSA and DSA signatures are DER
 * (r, s) sequences. The image is read once, in bounded chunks.
 */
import { createPrivateKey, createPublicKey, createSign, createVerify, constants, getCurves, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { BlockDevice } from '../block-device.js';
import {
  BrickcryptError,
  CertificateError,
  DeviceIoError,
  IntegrityError,
  InvalidArgumentError,
  InvalidObjectError,
  NotFoundError,
  UnsupportedError,
} from '../errors.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import { checkSigningCertificate, parseCertificate, verifyCertificateChain, type ParsedCertificate } from './certificate-validation.js';

/** The image property names, as Glance stores them. */
export const SIGNATURE_PROPERTY = {
  signature: 'img_signature',
  hashMethod: 'img_signature_hash_method',
  keyType: 'img_signature_key_type',
  certificateUuid: 'img_signature_certificate_uuid',
} as const;

/** Hash method names (cursive HASH_METHODS) and their OpenSSL digest names and sizes. */
export const HASH_METHODS = {
  'SHA-224': { digest: 'sha224', bytes: 28 },
  'SHA-256': { digest: 'sha256', bytes: 32 },
  'SHA-384': { digest: 'sha384', bytes: 48 },
  'SHA-512': { digest: 'sha512', bytes: 64 },
} as const;
export type HashMethod = keyof typeof HASH_METHODS;

interface KeyTypeSpec {
  /** Node `KeyObject.asymmetricKeyType` values accepted. */
  keyTypes: readonly string[];
  /** OpenSSL curve name for ECC_* types. */
  curve?: string;
}

/** Signature key types cursive registers (SECT* binary curves only where OpenSSL offers them). */
export const KEY_TYPES: Readonly<Record<string, KeyTypeSpec>> = {
  'RSA-PSS': { keyTypes: ['rsa', 'rsa-pss'] },
  DSA: { keyTypes: ['dsa'] },
  ECC_SECP384R1: { keyTypes: ['ec'], curve: 'secp384r1' },
  ECC_SECP521R1: { keyTypes: ['ec'], curve: 'secp521r1' },
  ECC_SECT409K1: { keyTypes: ['ec'], curve: 'sect409k1' },
  ECC_SECT409R1: { keyTypes: ['ec'], curve: 'sect409r1' },
  ECC_SECT571K1: { keyTypes: ['ec'], curve: 'sect571k1' },
  ECC_SECT571R1: { keyTypes: ['ec'], curve: 'sect571r1' },
};

/** The four signature properties of an image. */
export interface ImageSignatureProperties {
  img_signature: string;
  img_signature_hash_method: string;
  img_signature_key_type: string;
  img_signature_certificate_uuid: string;
}

/** An image to hash: a file path, a `BlockDevice`, or any stream of chunks. */
export type ImageSource = string | BlockDevice | AsyncIterable<Uint8Array>;

export interface VerifyImageSignatureOptions {
  image: ImageSource;
  /** The image's properties; other properties may be present and are ignored. */
  properties: { readonly [K in keyof ImageSignatureProperties]?: unknown };
  keyManager: KeyManager;
  caller: CallerIdentity;
  /** With these, the signing certificate must chain to one of them (see certificate-validation). */
  trustedCertificates?: readonly ParsedCertificate[];
  /** Time for validity checks (default: now). */
  now?: Date;
}

export interface VerifiedImageSignature {
  hashMethod: HashMethod;
  keyType: string;
  /** Bytes of image data hashed. */
  bytes: number;
  certificate: {
    id: string;
    subject: string;
    issuer: string;
    notBefore: string;
    notAfter: string;
    fingerprint256: string;
  };
  /** Subjects from the signing certificate to the trusted root, when trusted certificates were given. */
  chain?: string[];
}

const CHUNK = 1024 * 1024;

/** Reads an image source once, in chunks of at most 1 MiB. */
export async function* readImage(image: ImageSource): AsyncGenerator<Uint8Array> {
  if (typeof image === 'string') {
    const stream = createReadStream(image, { highWaterMark: CHUNK });
    try {
      for await (const chunk of stream) yield chunk as Buffer;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new NotFoundError(`Image ${image} does not exist.`);
      throw new DeviceIoError(`Cannot read image ${image}: ${(err as Error).message}`, { cause: err });
    }
    return;
  }
  if (isBlockDevice(image)) {
    const buf = new Uint8Array(Math.min(CHUNK, image.size));
    for (let offset = 0; offset < image.size; offset += buf.length) {
      const part = image.size - offset < buf.length ? buf.subarray(0, image.size - offset) : buf;
      await image.read(part, offset);
      yield part;
    }
    return;
  }
  yield* image;
}

function isBlockDevice(x: ImageSource): x is BlockDevice {
  return typeof x === 'object' && x !== null && typeof (x as BlockDevice).read === 'function' && typeof (x as BlockDevice).size === 'number';
}

function parseHashMethod(value: unknown): HashMethod {
  if (typeof value !== 'string' || !(value in HASH_METHODS)) {
    throw new InvalidArgumentError(`${SIGNATURE_PROPERTY.hashMethod} '${String(value)}' is not one of ${Object.keys(HASH_METHODS).join(', ')}.`);
  }
  return value as HashMethod;
}

function parseKeyType(value: unknown): KeyTypeSpec & { name: string } {
  const spec = typeof value === 'string' ? KEY_TYPES[value] : undefined;
  if (!spec) throw new InvalidArgumentError(`${SIGNATURE_PROPERTY.keyType} '${String(value)}' is not one of ${Object.keys(KEY_TYPES).join(', ')}.`);
  if (spec.curve && !getCurves().includes(spec.curve)) {
    throw new UnsupportedError(`Key type ${value}: curve ${spec.curve} is not offered by this Node.js OpenSSL build.`);
  }
  return { ...spec, name: value as string };
}

/** Standard base64 as Glance stores it; whitespace (line wrapping) is ignored. */
function decodeSignature(value: unknown): Buffer {
  if (typeof value !== 'string') throw new InvalidArgumentError(`${SIGNATURE_PROPERTY.signature} is missing.`);
  const text = value.replace(/\s+/g, '');
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) {
    throw new InvalidArgumentError(`${SIGNATURE_PROPERTY.signature} is not valid base64.`);
  }
  return Buffer.from(text, 'base64');
}

/** The key must be of the family the key type names, and on its curve for ECC_* (cursive checks the family only). */
function checkKeyMatchesType(key: KeyObject, keyType: KeyTypeSpec & { name: string }, what: string, certificate?: ParsedCertificate): void {
  const actual = key.asymmetricKeyType ?? 'unknown';
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (!keyType.keyTypes.includes(actual) || (keyType.curve && curve !== keyType.curve)) {
    const message = `${what} is ${actual}${curve ? ` on ${curve}` : ''}, not usable with key type ${keyType.name}.`;
    throw certificate ? new CertificateError('key-type', message) : new InvalidArgumentError(message);
  }
}

/** RSA-PSS salt length cursive requires: the maximum, emLen - hLen - 2 (RFC 8017 9.1.1). */
function maxPssSalt(key: KeyObject, hash: HashMethod): number {
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  return Math.ceil((bits - 1) / 8) - HASH_METHODS[hash].bytes - 2;
}

async function fetchCertificate(keyManager: KeyManager, caller: CallerIdentity, id: string): Promise<ParsedCertificate> {
  const object = await keyManager.get(caller, id);
  try {
    if (object.type !== 'certificate') {
      throw new InvalidObjectError(`Managed object ${id} is a ${object.type} object, not a certificate.`);
    }
    return parseCertificate(object.secret.expose(), id);
  } finally {
    object.secret.wipe();
  }
}

function describeCertificate(id: string, cert: ParsedCertificate): VerifiedImageSignature['certificate'] {
  return {
    id,
    subject: cert.x509.subject.replace(/\n/g, ', '),
    issuer: cert.x509.issuer.replace(/\n/g, ', '),
    notBefore: cert.decoded.notBefore.toISOString(),
    notAfter: cert.decoded.notAfter.toISOString(),
    fingerprint256: cert.x509.fingerprint256,
  };
}

/**
 * Verifies an image against its Glance signature properties.
 *
 * Throws `InvalidArgumentError` for missing or unknown property values,
 * `CertificateError` when the certificate cannot be relied on, `InvalidObjectError` when
 * the id names something other than a certificate, and `IntegrityError` when the
 * signature does not match the image.
 *
 * @example
 * const result = await verifyImageSignature({
 *   image: '/var/lib/images/cirros.qcow2',
 *   properties: image.properties, // img_signature, img_signature_hash_method, ...
 *   keyManager, caller, trustedCertificates: parsePemCertificates(pem, 'ca.pem'),
 * });
 */
export async function verifyImageSignature(options: VerifyImageSignatureOptions): Promise<VerifiedImageSignature> {
  const verification = await startSignatureVerification(options);
  for await (const chunk of readImage(options.image)) verification.update(chunk);
  return verification.finish();
}

/** A signature check fed the image bytes as they stream past (see `startSignatureVerification`). */
export interface StreamingSignatureVerification {
  /** The next bytes of the image, in order. */
  update(chunk: Uint8Array): void;
  /** Throws `IntegrityError` when the signature does not match the bytes given. */
  finish(): VerifiedImageSignature;
}

/**
 * Checks the properties and the certificate first (before any image byte is read), then
 * verifies bytes fed in order: for streams that are read once for another purpose (a
 * download that is also written into a volume). Same errors as `verifyImageSignature`.
 */
export async function startSignatureVerification(options: Omit<VerifyImageSignatureOptions, 'image'>): Promise<StreamingSignatureVerification> {
  const p = options.properties;
  for (const name of Object.values(SIGNATURE_PROPERTY)) {
    if (p[name] === undefined || p[name] === null || p[name] === '') {
      throw new InvalidArgumentError(`Image property ${name} is missing: cannot verify the signature.`);
    }
  }
  const signature = decodeSignature(p.img_signature);
  const hashMethod = parseHashMethod(p.img_signature_hash_method);
  const keyType = parseKeyType(p.img_signature_key_type);
  const certId = String(p.img_signature_certificate_uuid);
  const now = options.now ?? new Date();

  const cert = await fetchCertificate(options.keyManager, options.caller, certId);
  checkSigningCertificate(cert, now);
  const chain = options.trustedCertificates ? verifyCertificateChain(cert, options.trustedCertificates, now) : undefined;
  const publicKey = cert.x509.publicKey;
  checkKeyMatchesType(publicKey, keyType, `The public key of certificate ${certId}`, cert);

  const verifier = createVerify(HASH_METHODS[hashMethod].digest);
  let bytes = 0;
  return {
    update(chunk: Uint8Array) {
      verifier.update(chunk);
      bytes += chunk.length;
    },
    finish(): VerifiedImageSignature {
      let ok: boolean;
      try {
        ok = keyType.name === 'RSA-PSS'
          ? verifier.verify({ key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: maxPssSalt(publicKey, hashMethod) }, signature)
          : verifier.verify({ key: publicKey, dsaEncoding: 'der' }, signature);
      } catch (err) {
        // OpenSSL raises on some malformed signatures (e.g. a DER sequence that does not parse).
        if (err instanceof BrickcryptError) throw err;
        ok = false;
      }
      if (!ok) {
        throw new IntegrityError(`Image signature does not verify (${keyType.name}, ${hashMethod}, certificate ${certId}): the image or the signature was altered, or another key signed it.`);
      }
      return {
        hashMethod,
        keyType: keyType.name,
        bytes,
        certificate: describeCertificate(certId, cert),
        ...(chain ? { chain: chain.map((c) => c.x509.subject.replace(/\n/g, ', ')) } : {}),
      };
    },
  };
}

/** Where the signing key comes from: the key manager (a 'private' PKCS#8 object) or PEM text. */
export type SigningKeySource = { privateKeyId: string } | { privateKeyPem: string | Uint8Array; passphrase?: Uint8Array };

export interface SignImageOptions {
  image: ImageSource;
  hashMethod: string;
  keyType: string;
  key: SigningKeySource;
  /** Key-manager id of the signer's certificate; checked against the key and recorded in the properties. */
  certificateId?: string;
  keyManager?: KeyManager;
  caller?: CallerIdentity;
  now?: Date;
}

/** What `signImage` returns: the properties to set on the image. */
export type SignedImageProperties = Omit<ImageSignatureProperties, 'img_signature_certificate_uuid'> & { img_signature_certificate_uuid?: string };

async function loadSigningKey(options: Omit<SignImageOptions, 'image'>): Promise<KeyObject> {
  const source = options.key;
  if ('privateKeyId' in source) {
    if (!options.keyManager || !options.caller) throw new InvalidArgumentError('Signing with a managed private key needs a key manager and a caller.');
    const object = await options.keyManager.get(options.caller, source.privateKeyId);
    try {
      if (object.type !== 'private') {
        throw new InvalidObjectError(`Managed object ${source.privateKeyId} is a ${object.type} object, not a private key.`);
      }
      try {
        return createPrivateKey({ key: Buffer.from(object.secret.expose()), format: 'der', type: 'pkcs8' });
      } catch (err) {
        throw new InvalidObjectError(`Managed object ${source.privateKeyId} is not a PKCS#8 DER private key.`, { cause: err });
      }
    } finally {
      object.secret.wipe();
    }
  }
  try {
    return createPrivateKey({
      key: typeof source.privateKeyPem === 'string' ? source.privateKeyPem : Buffer.from(source.privateKeyPem),
      format: 'pem',
      ...(source.passphrase ? { passphrase: Buffer.from(source.passphrase) } : {}),
    });
  } catch (err) {
    throw new InvalidArgumentError(`The private key is not a usable PEM private key (an encrypted key needs its passphrase): ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Signs an image the way Glance expects, returning the signature properties.
 *
 * @example
 * const props = await signImage({
 *   image: 'cirros.qcow2', hashMethod: 'SHA-256', keyType: 'RSA-PSS',
 *   key: { privateKeyId }, certificateId, keyManager, caller,
 * });
 * // { img_signature: 'k3F...', img_signature_hash_method: 'SHA-256', img_signature_key_type: 'RSA-PSS', img_signature_certificate_uuid: '...' }
 */
export async function signImage(options: SignImageOptions): Promise<SignedImageProperties> {
  const signing = await startImageSigning(options);
  for await (const chunk of readImage(options.image)) signing.update(chunk);
  return signing.finish();
}

/** A signature computed over image bytes as they stream past (see `startImageSigning`). */
export interface StreamingImageSigning {
  update(chunk: Uint8Array): void;
  /** The signature properties over every byte given. */
  finish(): SignedImageProperties;
}

/**
 * Loads and checks the key (and certificate) first, then signs bytes fed in order: for an
 * image that is signed while it is uploaded. Same checks and errors as `signImage`.
 */
export async function startImageSigning(options: Omit<SignImageOptions, 'image'>): Promise<StreamingImageSigning> {
  const hashMethod = parseHashMethod(options.hashMethod);
  const keyType = parseKeyType(options.keyType);
  const privateKey = await loadSigningKey(options);
  checkKeyMatchesType(privateKey, keyType, 'The private key');
  if (options.certificateId !== undefined) {
    if (!options.keyManager || !options.caller) throw new InvalidArgumentError('Recording a certificate id needs a key manager and a caller.');
    const cert = await fetchCertificate(options.keyManager, options.caller, options.certificateId);
    checkSigningCertificate(cert, options.now ?? new Date());
    const spki = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });
    if (!spki(cert.x509.publicKey).equals(spki(createPublicKey(privateKey)))) {
      throw new CertificateError('key-type', `Certificate ${options.certificateId} does not belong to the private key (different public key).`);
    }
  }
  const signer = createSign(HASH_METHODS[hashMethod].digest);
  return {
    update: (chunk: Uint8Array) => void signer.update(chunk),
    finish(): SignedImageProperties {
      const signature = keyType.name === 'RSA-PSS'
        ? signer.sign({ key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_MAX_SIGN })
        : signer.sign({ key: privateKey, dsaEncoding: 'der' });
      return {
        img_signature: signature.toString('base64'),
        img_signature_hash_method: hashMethod,
        img_signature_key_type: keyType.name,
        ...(options.certificateId !== undefined ? { img_signature_certificate_uuid: options.certificateId } : {}),
      };
    },
  };
}
