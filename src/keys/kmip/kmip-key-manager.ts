/**
 * KeyManager backend for KMIP 1.2 servers (tested against PyKMIP 0.10), over mutual TLS.
 *
 * Mapping (see docs/keys-barbican-kmip.md):
 * - identity: the TLS client certificate. The server owns each object by the certificate
 *   (PyKMIP: its CN); `CallerIdentity` is not sent (KMIP 1.x has no user/project/role fields).
 *   `owner` reports the certificate CN and the caller's project.
 * - symmetric -> Symmetric Key (Raw), passphrase -> Secret Data (Password, Opaque format),
 *   opaque -> Opaque Object, certificate -> Certificate (X.509), private -> Private Key (PKCS#8),
 *   public -> Public Key (X.509 SubjectPublicKeyInfo).
 * - createKey -> Create (AES) + Activate + Get (the bytes are handed to the caller once).
 * - createKeyPair -> generated in this process, then Register of both halves.
 * - delete -> Revoke (if Active) + Destroy. list -> Locate + Get Attributes.
 * - consumers and per-object ACLs: KMIP 1.x has neither, and PyKMIP 0.10 cannot add attributes
 *   after creation under KMIP 1.x, so addConsumer/removeConsumer/grantRead/revokeRead throw
 *   UnsupportedError; metadata always has no consumers.
 * - clone -> Get + Register: the bytes pass through this process.
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyPairKeyObjectResult } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ForbiddenError, InvalidArgumentError, InvalidObjectError, KeyNotFoundError, KmipProtocolError, UnsupportedError } from '../../errors.js';
import { SecretBytes } from '../../secret.js';
import {
  OBJECT_TYPES,
  type CallerIdentity,
  type Consumer,
  type CreateKeyOptions,
  type CreateKeyPairOptions,
  type KeyManager,
  type ManagedObject,
  type ManagedObjectMetadata,
  type NewManagedObject,
  type ObjectType,
} from '../key-manager.js';
import { KmipClient, type KmipClientOptions } from './kmip-client.js';
import {
  CertificateType,
  CryptographicAlgorithm,
  CryptographicUsageMask,
  KeyFormatType,
  NameType,
  ObjectTypeCode,
  OpaqueDataType,
  Operation,
  RevocationReasonCode,
  SecretDataType,
  State,
  Tag,
  child,
  children,
  get,
  t,
  type TtlvItem,
} from './ttlv.js';

/** A TLS client identity: PEM certificate and key, given inline or as files. */
export interface KmipIdentity {
  cert?: string | Buffer;
  key?: string | Buffer;
  certFile?: string;
  keyFile?: string;
}

export interface KmipKeyManagerOptions extends Omit<KmipClientOptions, 'ca' | 'cert' | 'key'>, KmipIdentity {
  /** PEM CA bundle (or `caFile`) the server certificate must chain to. */
  ca?: string | Buffer;
  caFile?: string;
  /**
   * One client certificate per project: a caller's project selects the TLS identity, so the
   * KMIP server keeps projects apart by certificate. A caller of a project not listed is refused.
   * Without it, `cert`/`key` serve every caller.
   */
  projects?: Record<string, KmipIdentity>;
}

function pem(inline: string | Buffer | undefined, file: string | undefined, what: string): string | Buffer {
  if (inline !== undefined) return inline;
  if (file !== undefined) return readFileSync(file);
  throw new InvalidArgumentError(`kmip: ${what} is required (mutual TLS)`);
}

function commonName(cert: string | Buffer): string {
  try {
    const subject = new X509Certificate(cert).subject;
    return /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? subject;
  } catch (err) {
    throw new InvalidArgumentError(`kmip: client certificate is not a PEM X.509 certificate: ${(err as Error).message}`);
  }
}

interface Session {
  client: KmipClient;
  /** Whom the server sees: the client certificate's subject CN. */
  identity: string;
}

const TYPE_TO_CODE: Record<ObjectType, number> = {
  symmetric: ObjectTypeCode.SymmetricKey,
  passphrase: ObjectTypeCode.SecretData,
  opaque: ObjectTypeCode.OpaqueObject,
  certificate: ObjectTypeCode.Certificate,
  private: ObjectTypeCode.PrivateKey,
  public: ObjectTypeCode.PublicKey,
};
const CODE_TO_TYPE = new Map<number, ObjectType>(Object.entries(TYPE_TO_CODE).map(([k, v]) => [v, k as ObjectType]));

const ALG_TO_CODE: Record<string, number> = {
  aes: CryptographicAlgorithm.Aes,
  rsa: CryptographicAlgorithm.Rsa,
  dsa: CryptographicAlgorithm.Dsa,
  ec: CryptographicAlgorithm.Ecdsa,
  '3des': CryptographicAlgorithm.TripleDes,
  'hmac-sha256': CryptographicAlgorithm.HmacSha256,
};
const CODE_TO_ALG = new Map<number, string>([...Object.entries(ALG_TO_CODE).map(([k, v]) => [v, k] as [number, string]), [CryptographicAlgorithm.Ec, 'ec']]);

const METADATA_ATTRIBUTES = ['Object Type', 'Cryptographic Algorithm', 'Cryptographic Length', 'Name', 'Initial Date', 'State'];

/** KMIP-backed key manager.
 *
 * @example
 * const km = new KmipKeyManager({ host: '127.0.0.1', port: 5696, ca, cert, key });
 * const { id, key } = await km.createKey(caller, { bitLength: 256 });
 * key.wipe();
 */
export class KmipKeyManager implements KeyManager {
  readonly backend = 'kmip';
  readonly #default: Session | undefined;
  readonly #projects = new Map<string, Session>();
  /** The CN of the default client certificate (or of the only per-project one). */
  readonly identity: string;

  constructor(options: KmipKeyManagerOptions | string) {
    const opts = typeof options === 'string' ? KmipKeyManager.optionsFromUri(options) : options;
    const ca = pem(opts.ca, opts.caFile, 'a CA certificate (ca)');
    const { projects, cert, key, certFile, keyFile, caFile: _caFile, ...rest } = opts;
    const open = (id: KmipIdentity): Session => {
      const c = pem(id.cert, id.certFile, 'a client certificate (cert)');
      const k = pem(id.key, id.keyFile, 'a client key (key)');
      return { client: new KmipClient({ ...rest, ca, cert: c, key: k }), identity: commonName(c) };
    };
    if (cert !== undefined || certFile !== undefined) this.#default = open({ cert, key, certFile, keyFile });
    for (const [project, id] of Object.entries(projects ?? {})) this.#projects.set(project, open(id));
    const first = this.#default ?? [...this.#projects.values()][0];
    if (!first) throw new InvalidArgumentError('kmip: a client certificate (cert) is required (mutual TLS)');
    this.identity = first.identity;
  }

  /** The TLS session that acts for this caller. */
  #session(caller: CallerIdentity): Session {
    if (this.#projects.size > 0) {
      const s = this.#projects.get(caller?.project);
      if (s) return s;
      if (!this.#default) throw new ForbiddenError(`kmip: no client certificate configured for project ${String(caller?.project)}`);
    }
    return this.#default!;
  }

  /**
   * Parses `kmip://host:port?ca=FILE&cert=FILE&key=FILE[&timeout-ms=N&attempts=N]`.
   *
   * @example
   * KmipKeyManager.optionsFromUri('kmip://127.0.0.1:5696?ca=ca.pem&cert=c.pem&key=c.key')
   */
  static optionsFromUri(uri: string): KmipKeyManagerOptions {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      throw new InvalidArgumentError(`not a KMIP URI: ${uri}`);
    }
    if (url.protocol !== 'kmip:' && url.protocol !== 'kmips:') throw new InvalidArgumentError(`not a KMIP URI: ${uri}`);
    const q = url.searchParams;
    const num = (name: string) => (q.get(name) ? Number(q.get(name)) : undefined);
    return {
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port ? Number(url.port) : 5696,
      caFile: q.get('ca') ?? undefined,
      certFile: q.get('cert') ?? undefined,
      keyFile: q.get('key') ?? undefined,
      servername: q.get('servername') ?? undefined,
      timeoutMs: num('timeout-ms'),
      attempts: num('attempts'),
    };
  }

  // ------------------------------------------------------------------ helpers

  static #checkId(id: string): string {
    // PyKMIP ids are decimal; other servers use UUIDs. Anything else cannot name an object.
    if (typeof id !== 'string' || !/^[A-Za-z0-9-]{1,128}$/.test(id)) throw new KeyNotFoundError(String(id));
    return id;
  }

  static #attr(name: string, value: TtlvItem): TtlvItem {
    return t.struct(Tag.Attribute, [t.text(Tag.AttributeName, name), { ...value, tag: Tag.AttributeValue } as TtlvItem]);
  }

  static #nameAttr(name: string): TtlvItem {
    return KmipKeyManager.#attr('Name', t.struct(0, [t.text(Tag.NameValue, name), t.enum(Tag.NameType, NameType.UninterpretedTextString)]));
  }

  async #activate(s: Session, id: string): Promise<void> {
    await s.client.call(Operation.Activate, [t.text(Tag.UniqueIdentifier, id)], id);
  }

  async #destroyQuietly(s: Session, id: string): Promise<void> {
    await s.client.call(Operation.Destroy, [t.text(Tag.UniqueIdentifier, id)], id).catch(() => undefined);
  }

  // ------------------------------------------------------------------ contract

  async createKey(caller: CallerIdentity, options: CreateKeyOptions = {}): Promise<{ id: string; key: SecretBytes }> {
    const s = this.#session(caller);
    const algorithm = (options.algorithm ?? 'aes').toLowerCase();
    const bitLength = options.bitLength ?? 256;
    if (algorithm !== 'aes') throw new UnsupportedError(`kmip backend creates AES keys only, not ${algorithm}`);
    if (![128, 192, 256].includes(bitLength)) throw new InvalidArgumentError(`AES key length must be 128, 192 or 256 bits, got ${bitLength}`);
    const attrs = [
      KmipKeyManager.#attr('Cryptographic Algorithm', t.enum(0, CryptographicAlgorithm.Aes)),
      KmipKeyManager.#attr('Cryptographic Length', t.int(0, bitLength)),
      KmipKeyManager.#attr('Cryptographic Usage Mask', t.int(0, CryptographicUsageMask.Encrypt | CryptographicUsageMask.Decrypt)),
    ];
    if (options.name) attrs.push(KmipKeyManager.#nameAttr(options.name));
    const res = await s.client.call(Operation.Create, [t.enum(Tag.ObjectType, ObjectTypeCode.SymmetricKey), t.struct(Tag.TemplateAttribute, attrs)], 'create');
    const id = get.text(res, Tag.UniqueIdentifier);
    try {
      await this.#activate(s, id);
      const obj = await this.#getObject(s, id);
      return { id, key: obj.bytes };
    } catch (err) {
      await this.#destroyQuietly(s, id);
      throw err;
    }
  }

  async createKeyPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }> {
    const { algorithm, bitLength } = options;
    let pair: KeyPairKeyObjectResult;
    if (algorithm === 'rsa') pair = generateKeyPairSync('rsa', { modulusLength: bitLength });
    else if (algorithm === 'dsa') pair = generateKeyPairSync('dsa', { modulusLength: bitLength, divisorLength: bitLength >= 2048 ? 256 : 160 });
    else if (algorithm === 'ec') {
      const curve = ({ 256: 'prime256v1', 384: 'secp384r1', 521: 'secp521r1' } as Record<number, string>)[bitLength];
      if (!curve) throw new InvalidArgumentError(`EC key size must be 256, 384 or 521, got ${bitLength}`);
      pair = generateKeyPairSync('ec', { namedCurve: curve });
    } else throw new InvalidArgumentError(`unsupported key pair algorithm ${String(algorithm)}`);
    const der = new Uint8Array(pair.privateKey.export({ format: 'der', type: 'pkcs8' }));
    const pub = new Uint8Array(pair.publicKey.export({ format: 'der', type: 'spki' }));
    const privateKeyId = await this.store(caller, { type: 'private', secret: new SecretBytes(der), algorithm, bitLength, name: options.name });
    try {
      const publicKeyId = await this.store(caller, { type: 'public', secret: new SecretBytes(pub), algorithm, bitLength, name: options.name });
      return { privateKeyId, publicKeyId };
    } catch (err) {
      await this.delete(caller, privateKeyId, { force: true }).catch(() => undefined);
      throw err;
    } finally {
      der.fill(0);
    }
  }

  async store(caller: CallerIdentity, object: NewManagedObject): Promise<string> {
    const s = this.#session(caller);
    if (!OBJECT_TYPES.includes(object.type)) throw new InvalidObjectError(`unknown object type ${String(object.type)}`);
    const bytes = object.secret.expose();
    if (bytes.length === 0) throw new InvalidObjectError('cannot store an empty secret');
    const { item } = objectStructure(object.type, bytes, object.algorithm, object.bitLength);
    const attrs: TtlvItem[] = [];
    if (object.type === 'symmetric' || object.type === 'private' || object.type === 'public') {
      const mask =
        object.type === 'symmetric'
          ? CryptographicUsageMask.Encrypt | CryptographicUsageMask.Decrypt
          : object.type === 'private'
            ? CryptographicUsageMask.Sign | CryptographicUsageMask.Decrypt
            : CryptographicUsageMask.Verify | CryptographicUsageMask.Encrypt;
      attrs.push(KmipKeyManager.#attr('Cryptographic Usage Mask', t.int(0, mask)));
    }
    if (object.name) attrs.push(KmipKeyManager.#nameAttr(object.name));
    const res = await s.client.call(
      Operation.Register,
      [t.enum(Tag.ObjectType, TYPE_TO_CODE[object.type]), t.struct(Tag.TemplateAttribute, attrs), item],
      'register',
    );
    const id = get.text(res, Tag.UniqueIdentifier);
    // Keys and secret data start Pre-Active; Opaque Objects and Certificates have no state in PyKMIP.
    if (object.type !== 'opaque' && object.type !== 'certificate') {
      try {
        await this.#activate(s, id);
      } catch (err) {
        await this.#destroyQuietly(s, id);
        throw err;
      }
    }
    return id;
  }

  async #getObject(s: Session, id: string): Promise<{ type: ObjectType; bytes: SecretBytes }> {
    const res = await s.client.call(Operation.Get, [t.text(Tag.UniqueIdentifier, KmipKeyManager.#checkId(id))], id);
    const code = get.enum(res, Tag.ObjectType);
    const type = CODE_TO_TYPE.get(code);
    if (!type) throw new InvalidObjectError(`kmip: object ${id} has unsupported object type 0x${code.toString(16)}`);
    return { type, bytes: new SecretBytes(extractBytes(type, res)) };
  }

  async get(caller: CallerIdentity, id: string): Promise<ManagedObject> {
    const s = this.#session(caller);
    const meta = await this.getMetadata(caller, id);
    const obj = await this.#getObject(s, id);
    if (obj.type !== meta.type) {
      obj.bytes.wipe();
      throw new InvalidObjectError(`kmip: object ${id} changed type during get`);
    }
    return { ...meta, secret: obj.bytes };
  }

  async getMetadata(caller: CallerIdentity, id: string): Promise<ManagedObjectMetadata> {
    const s = this.#session(caller);
    KmipKeyManager.#checkId(id);
    const res = await s.client.call(Operation.GetAttributes, [t.text(Tag.UniqueIdentifier, id), ...METADATA_ATTRIBUTES.map((n) => t.text(Tag.AttributeName, n))], id);
    return this.#toMetadata(s, id, res, caller);
  }

  #toMetadata(s: Session, id: string, payload: TtlvItem, caller: CallerIdentity): ManagedObjectMetadata {
    const attrs = new Map<string, TtlvItem[]>();
    for (const a of children(payload, Tag.Attribute)) {
      const name = get.text(a, Tag.AttributeName);
      const v = child(a, Tag.AttributeValue);
      if (v) attrs.set(name, [...(attrs.get(name) ?? []), v]);
    }
    const one = (n: string) => attrs.get(n)?.[0];
    const ot = one('Object Type');
    if (!ot || ot.type !== 'Enumeration') throw new KmipProtocolError(`kmip: object ${id} has no Object Type attribute`);
    const type = CODE_TO_TYPE.get(ot.value);
    if (!type) throw new InvalidObjectError(`kmip: object ${id} has unsupported object type 0x${ot.value.toString(16)}`);
    const initial = one('Initial Date');
    const meta: ManagedObjectMetadata = {
      id,
      type,
      created: new Date(initial?.type === 'DateTime' ? Number(initial.value) * 1000 : 0).toISOString(),
      owner: { user: s.identity, project: caller.project },
      consumers: [],
    };
    const alg = one('Cryptographic Algorithm');
    if (alg?.type === 'Enumeration' && CODE_TO_ALG.has(alg.value)) meta.algorithm = CODE_TO_ALG.get(alg.value);
    const len = one('Cryptographic Length');
    if (len?.type === 'Integer') meta.bitLength = len.value;
    const name = one('Name');
    if (name?.type === 'Structure') {
      const nv = child(name, Tag.NameValue);
      if (nv?.type === 'TextString' && nv.value) meta.name = nv.value;
    }
    return meta;
  }

  async clone(caller: CallerIdentity, id: string, options: { name?: string } = {}): Promise<string> {
    const obj = await this.get(caller, id);
    try {
      return await this.store(caller, { type: obj.type, secret: obj.secret, algorithm: obj.algorithm, bitLength: obj.bitLength, name: options.name ?? obj.name });
    } finally {
      obj.secret.wipe();
    }
  }

  async delete(caller: CallerIdentity, id: string, _options: { force?: boolean } = {}): Promise<void> {
    const s = this.#session(caller);
    // No consumers can exist on this backend (see addConsumer), so `force` changes nothing.
    KmipKeyManager.#checkId(id);
    const res = await s.client.call(Operation.GetAttributes, [t.text(Tag.UniqueIdentifier, id), t.text(Tag.AttributeName, 'State')], id);
    const state = children(res, Tag.Attribute).find((a) => child(a, Tag.AttributeName)?.type === 'TextString' && get.text(a, Tag.AttributeName) === 'State');
    const value = state ? child(state, Tag.AttributeValue) : undefined;
    // KMIP 1.2 section 4.21: an Active object must be revoked before it may be destroyed.
    if (value?.type === 'Enumeration' && value.value === State.Active) {
      await s.client.call(
        Operation.Revoke,
        [t.text(Tag.UniqueIdentifier, id), t.struct(Tag.RevocationReason, [t.enum(Tag.RevocationReasonCode, RevocationReasonCode.CessationOfOperation)])],
        id,
      );
    }
    await s.client.call(Operation.Destroy, [t.text(Tag.UniqueIdentifier, id)], id);
  }

  async list(caller: CallerIdentity, options: { type?: ObjectType } = {}): Promise<ManagedObjectMetadata[]> {
    const s = this.#session(caller);
    const filter: TtlvItem[] = [];
    if (options.type) {
      if (!OBJECT_TYPES.includes(options.type)) throw new InvalidArgumentError(`unknown object type ${String(options.type)}`);
      filter.push(KmipKeyManager.#attr('Object Type', t.enum(0, TYPE_TO_CODE[options.type])));
    }
    const res = await s.client.call(Operation.Locate, filter, 'locate');
    const ids = children(res, Tag.UniqueIdentifier).map((i) => (i.type === 'TextString' ? i.value : ''));
    const out: ManagedObjectMetadata[] = [];
    for (const id of ids) {
      try {
        const m = await this.getMetadata(caller, id);
        if (!options.type || m.type === options.type) out.push(m);
      } catch (err) {
        if (!(err instanceof KeyNotFoundError)) throw err; // destroyed meanwhile
      }
    }
    return out;
  }

  addConsumer(_caller: CallerIdentity, _id: string, _consumer: Consumer): Promise<void> {
    return Promise.reject(new UnsupportedError('kmip backend: KMIP 1.x has no consumers (track them in the consuming service)'));
  }

  removeConsumer(_caller: CallerIdentity, _id: string, _consumer: Consumer): Promise<void> {
    return Promise.reject(new UnsupportedError('kmip backend: KMIP 1.x has no consumers (track them in the consuming service)'));
  }

  grantRead(_caller: CallerIdentity, _id: string, _user: string): Promise<void> {
    return Promise.reject(new UnsupportedError('kmip backend: no per-object ACLs; the client certificate that created an object owns it'));
  }

  revokeRead(_caller: CallerIdentity, _id: string, _user: string): Promise<void> {
    return Promise.reject(new UnsupportedError('kmip backend: no per-object ACLs; the client certificate that created an object owns it'));
  }

  async close(): Promise<void> {
    const sessions = [...(this.#default ? [this.#default] : []), ...this.#projects.values()];
    await Promise.all(sessions.map((x) => x.client.close()));
  }
}

/** The KMIP managed-object structure for Register (KMIP 1.2 section 2.2). */
function objectStructure(type: ObjectType, bytes: Uint8Array, algorithm?: string, bitLength?: number): { item: TtlvItem; algorithm?: string; bitLength?: number } {
  const keyBlock = (format: number, alg?: number, len?: number) =>
    t.struct(Tag.KeyBlock, [
      t.enum(Tag.KeyFormatType, format),
      t.struct(Tag.KeyValue, [t.bytes(Tag.KeyMaterial, bytes)]),
      ...(alg !== undefined ? [t.enum(Tag.CryptographicAlgorithm, alg)] : []),
      ...(len !== undefined ? [t.int(Tag.CryptographicLength, len)] : []),
    ]);
  switch (type) {
    case 'symmetric': {
      const alg = (algorithm ?? 'aes').toLowerCase();
      const code = ALG_TO_CODE[alg];
      if (code === undefined) throw new UnsupportedError(`kmip backend: symmetric algorithm ${alg} is not supported`);
      const len = bitLength ?? bytes.length * 8;
      if (len !== bytes.length * 8) throw new InvalidObjectError(`key has ${bytes.length * 8} bits but bitLength says ${len}`);
      return { item: t.struct(Tag.SymmetricKey, [keyBlock(KeyFormatType.Raw, code, len)]), algorithm: alg, bitLength: len };
    }
    case 'passphrase':
      return { item: t.struct(Tag.SecretData, [t.enum(Tag.SecretDataType, SecretDataType.Password), keyBlock(KeyFormatType.Opaque)]) };
    case 'opaque':
      return { item: t.struct(Tag.OpaqueObject, [t.enum(Tag.OpaqueDataType, OpaqueDataType.None), t.bytes(Tag.OpaqueDataValue, bytes)]) };
    case 'certificate':
      try {
        new X509Certificate(bytes);
      } catch (err) {
        throw new InvalidObjectError(`certificate is not DER X.509: ${(err as Error).message}`);
      }
      return { item: t.struct(Tag.Certificate, [t.enum(Tag.CertificateType, CertificateType.X509), t.bytes(Tag.CertificateValue, bytes)]) };
    case 'private':
    case 'public': {
      const info = asymmetricInfo(type, bytes);
      const alg = (algorithm ?? info.algorithm).toLowerCase();
      const code = ALG_TO_CODE[alg];
      if (code === undefined) throw new UnsupportedError(`kmip backend: key algorithm ${alg} is not supported`);
      const len = bitLength ?? info.bitLength;
      const tag = type === 'private' ? Tag.PrivateKey : Tag.PublicKey;
      return { item: t.struct(tag, [keyBlock(type === 'private' ? KeyFormatType.Pkcs8 : KeyFormatType.X509, code, len)]), algorithm: alg, bitLength: len };
    }
  }
}

/** Algorithm and size of a DER PKCS#8 private key or SPKI public key (KMIP needs both for Register). */
function asymmetricInfo(type: 'private' | 'public', der: Uint8Array): { algorithm: string; bitLength: number } {
  let key;
  try {
    key = type === 'private' ? createPrivateKey({ key: Buffer.from(der.buffer, der.byteOffset, der.length), format: 'der', type: 'pkcs8' }) : createPublicKey({ key: Buffer.from(der), format: 'der', type: 'spki' });
  } catch (err) {
    throw new InvalidObjectError(`${type} key is not DER ${type === 'private' ? 'PKCS#8' : 'SubjectPublicKeyInfo'}: ${(err as Error).message}`);
  }
  const kt = key.asymmetricKeyType ?? '';
  const d = key.asymmetricKeyDetails ?? {};
  if (kt === 'rsa' || kt === 'rsa-pss') return { algorithm: 'rsa', bitLength: d.modulusLength ?? 0 };
  if (kt === 'dsa') return { algorithm: 'dsa', bitLength: d.modulusLength ?? 0 };
  if (kt === 'ec') {
    const sizes: Record<string, number> = { prime256v1: 256, secp384r1: 384, secp521r1: 521 };
    return { algorithm: 'ec', bitLength: sizes[d.namedCurve ?? ''] ?? 0 };
  }
  throw new UnsupportedError(`kmip backend: ${kt || 'unknown'} keys are not supported`);
}

/** The secret bytes inside a Get response payload. */
function extractBytes(type: ObjectType, payload: TtlvItem): Uint8Array {
  const tag = {
    symmetric: Tag.SymmetricKey,
    passphrase: Tag.SecretData,
    opaque: Tag.OpaqueObject,
    certificate: Tag.Certificate,
    private: Tag.PrivateKey,
    public: Tag.PublicKey,
  }[type];
  const obj = get.struct(payload, tag);
  if (type === 'opaque') return get.bytes(obj, Tag.OpaqueDataValue);
  if (type === 'certificate') return get.bytes(obj, Tag.CertificateValue);
  const block = get.struct(obj, Tag.KeyBlock);
  const value = child(block, Tag.KeyValue);
  if (!value) throw new KmipProtocolError('kmip: key block has no Key Value');
  // Key Value is a structure holding Key Material (unwrapped keys; KMIP 1.2 section 2.1.4).
  if (value.type === 'ByteString') throw new UnsupportedError('kmip: wrapped keys are not supported');
  return get.bytes(value, Tag.KeyMaterial);
}
