/**
 * The key-manager logic shared by the local and memory backends: input validation,
 * key generation, the least-privilege policy (src/keys/policy.ts) and the audit log.
 * A backend supplies only a `RecordStore` (where records, wrapped bytes and audit rows
 * live). Every call is audited: allowed, denied (policy, or an id unknown to the
 * caller) or failed (e.g. in use, tampered).
 */
import { createPrivateKey, createPublicKey, generateKeyPair, X509Certificate, randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import {
  BrickcryptError,
  ForbiddenError,
  InvalidArgumentError,
  InvalidObjectError,
  KeyNotFoundError,
} from '../errors.js';
import { Passphrase, SecretBytes } from '../secret.js';
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
} from './key-manager.js';
import { decide, visibleInList, type Operation } from './policy.js';
import { verifyAuditChain, type AuditableKeyManager, type AuditEntry, type AuditEvent, type AuditOutcome, type AuditVerification } from './audit.js';

const generateKeyPairAsync = promisify(generateKeyPair);

/** A stored object's descriptive fields (no bytes); policy backends always keep the readers list. */
export type ObjectRecord = ManagedObjectMetadata & { readers: string[] };

/** Where a policy backend keeps its records. Mutations record their audit event atomically with the change. */
export interface RecordStore {
  find(id: string): Promise<ObjectRecord | undefined>;
  /** Stores new objects; the store copies or wraps the bytes (the caller wipes its copies). */
  insert(objects: Array<{ record: ObjectRecord; secret: SecretBytes }>, audit: AuditEvent): Promise<void>;
  /** The object's bytes, as a new SecretBytes owned by the caller. Throws InvalidObjectError if tampered. */
  readSecret(record: ObjectRecord): Promise<SecretBytes>;
  /** Copies bytes of `source` into a new object `target` without returning them. */
  copy(source: ObjectRecord, target: ObjectRecord, audit: AuditEvent): Promise<void>;
  /** Deletes; throws InUseError while consumers exist unless `force`, KeyNotFoundError if gone. */
  remove(id: string, force: boolean, audit: AuditEvent): Promise<void>;
  addConsumer(id: string, consumer: Consumer, audit: AuditEvent): Promise<void>;
  removeConsumer(id: string, consumer: Consumer, audit: AuditEvent): Promise<void>;
  addReader(id: string, user: string, audit: AuditEvent): Promise<void>;
  removeReader(id: string, user: string, audit: AuditEvent): Promise<void>;
  list(project: string, type?: ObjectType): Promise<ObjectRecord[]>;
  appendAudit(event: AuditEvent): Promise<void>;
  /** Entries in sequence order; only those of `project` when given. */
  readAudit(project?: string): Promise<AuditEntry[]>;
  close(): Promise<void>;
}

const EC_CURVES: Record<number, string> = { 256: 'prime256v1', 384: 'secp384r1', 521: 'secp521r1' };

function toMetadata(r: ObjectRecord): ManagedObjectMetadata {
  const m: ManagedObjectMetadata = {
    id: r.id,
    type: r.type,
    created: r.created,
    owner: { ...r.owner },
    consumers: r.consumers.map((c) => ({ ...c })),
    readers: [...r.readers],
  };
  if (r.algorithm !== undefined) m.algorithm = r.algorithm;
  if (r.bitLength !== undefined) m.bitLength = r.bitLength;
  if (r.name !== undefined) m.name = r.name;
  return m;
}

function checkCaller(caller: CallerIdentity): void {
  if (!caller || typeof caller.user !== 'string' || caller.user === '' || typeof caller.project !== 'string' || caller.project === '' || !Array.isArray(caller.roles)) {
    throw new ForbiddenError('The caller identity needs a user, a project and a list of roles.');
  }
}

function checkConsumer(c: Consumer): void {
  if (!c || !c.service || !c.resourceType || !c.resourceId) {
    throw new InvalidArgumentError('A consumer needs service, resourceType and resourceId.');
  }
}

/**
 * Checks that DER bytes parse as their declared type; returns algorithm and size read from them.
 * Private keys are PKCS#8, public keys SPKI, certificates X.509 (castellan's conventions).
 */
function inspectAsymmetric(type: ObjectType, der: Buffer): { algorithm?: string; bitLength?: number } {
  try {
    if (type === 'private') {
      const k = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
      return describeKey(k);
    }
    if (type === 'public') {
      const k = createPublicKey({ key: der, format: 'der', type: 'spki' });
      return describeKey(k);
    }
    if (type === 'certificate') {
      const c = new X509Certificate(der);
      return describeKey(c.publicKey);
    }
  } catch (err) {
    throw new InvalidObjectError(`The bytes are not a valid ${type === 'private' ? 'PKCS#8 private key' : type === 'public' ? 'SPKI public key' : 'DER X.509 certificate'}.`, { cause: err });
  }
  return {};
}

function describeKey(k: import('node:crypto').KeyObject): { algorithm?: string; bitLength?: number } {
  const d = k.asymmetricKeyDetails ?? {};
  const type = k.asymmetricKeyType;
  if (type === 'rsa' || type === 'rsa-pss') return { algorithm: 'rsa', bitLength: d.modulusLength };
  if (type === 'dsa') return { algorithm: 'dsa', bitLength: d.modulusLength };
  if (type === 'ec') {
    const bits = Object.entries(EC_CURVES).find(([, c]) => c === d.namedCurve)?.[0];
    return { algorithm: 'ec', bitLength: bits ? Number(bits) : undefined };
  }
  return type ? { algorithm: type } : {};
}

/**
 * Key manager with brickcrypt's least-privilege policy over a pluggable `RecordStore`.
 *
 * @example
 * const km = new MemoryKeyManager();
 * const { id, key } = await km.createKey({ user: 'cinder', project: 'p1', roles: ['creator'] });
 * key.wipe();
 */
export class PolicyKeyManager implements KeyManager, AuditableKeyManager {
  readonly backend: string;
  protected readonly records: RecordStore;
  #closed = false;

  constructor(backend: string, store: RecordStore) {
    this.backend = backend;
    this.records = store;
  }

  protected event(caller: CallerIdentity, operation: Operation, outcome: AuditOutcome, objectId?: string, extra: { code?: string; detail?: string } = {}): AuditEvent {
    const e: AuditEvent = {
      time: new Date().toISOString(),
      user: String(caller?.user ?? ''),
      project: String(caller?.project ?? ''),
      roles: Array.isArray(caller?.roles) ? caller.roles.map(String) : [],
      backend: this.backend,
      operation,
      outcome,
    };
    if (objectId !== undefined) e.objectId = objectId;
    if (extra.code !== undefined) e.code = extra.code;
    if (extra.detail !== undefined) e.detail = extra.detail;
    return e;
  }

  /** Records a refused or failed call, then rethrows its error. */
  protected async fail(caller: CallerIdentity, op: Operation, objectId: string | undefined, err: unknown, detail?: string): Promise<never> {
    const code = err instanceof BrickcryptError ? err.code : 'INTERNAL';
    const outcome: AuditOutcome = err instanceof ForbiddenError || err instanceof KeyNotFoundError ? 'denied' : 'failed';
    try {
      await this.records.appendAudit(this.event(caller, op, outcome, objectId, { code, ...(detail !== undefined ? { detail } : {}) }));
    } catch {
      // The call fails either way; report its own error, not the audit store's.
    }
    throw err;
  }

  /** Validates the caller, loads the object and applies the policy; audits and throws on refusal. */
  protected async authorize(caller: CallerIdentity, op: Operation, id?: string, detail?: string): Promise<ObjectRecord | undefined> {
    this.checkOpen();
    try {
      checkCaller(caller);
      let record: ObjectRecord | undefined;
      if (id !== undefined) {
        if (typeof id !== 'string' || id === '') throw new InvalidArgumentError('An object id is required.');
        record = await this.records.find(id);
        if (!record) throw new KeyNotFoundError(id);
      }
      const d = decide(caller, op, record);
      if (!d.allowed) {
        // Another project's object is reported exactly like a missing one: no existence oracle.
        if (d.hidden) throw new KeyNotFoundError(id ?? '');
        throw new ForbiddenError(`${caller.user} (${caller.roles.join(',') || 'no roles'}) may not ${op}${id ? ` ${id}` : ''}: ${d.reason}.`);
      }
      return record;
    } catch (err) {
      return this.fail(caller, op, id, err, detail);
    }
  }

  protected checkOpen(): void {
    if (this.#closed) throw new InvalidArgumentError(`The ${this.backend} key manager is closed.`);
  }

  protected newRecord(caller: CallerIdentity, fields: { type: ObjectType; algorithm?: string; bitLength?: number; name?: string }): ObjectRecord {
    const r: ObjectRecord = {
      id: randomUUID(),
      type: fields.type,
      created: new Date().toISOString(),
      owner: { user: caller.user, project: caller.project },
      consumers: [],
      readers: [],
    };
    if (fields.algorithm !== undefined) r.algorithm = fields.algorithm;
    if (fields.bitLength !== undefined) r.bitLength = fields.bitLength;
    if (fields.name !== undefined) r.name = fields.name;
    return r;
  }

  async createKey(caller: CallerIdentity, options: CreateKeyOptions = {}): Promise<{ id: string; key: SecretBytes }> {
    await this.authorize(caller, 'createKey');
    const algorithm = (options.algorithm ?? 'aes').toLowerCase();
    const bitLength = options.bitLength ?? 256;
    let key: SecretBytes | undefined;
    try {
      if (!Number.isInteger(bitLength) || bitLength < 8 || bitLength > 8192 || bitLength % 8 !== 0) {
        throw new InvalidArgumentError(`Key length ${bitLength} bits is not a positive multiple of 8 up to 8192.`);
      }
      if (options.name !== undefined && typeof options.name !== 'string') throw new InvalidArgumentError('Key name must be a string.');
      const record = this.newRecord(caller, { type: 'symmetric', algorithm, bitLength, ...(options.name !== undefined ? { name: options.name } : {}) });
      key = SecretBytes.random(bitLength / 8);
      await this.records.insert([{ record, secret: key }], this.event(caller, 'createKey', 'allowed', record.id, { detail: `${algorithm}-${bitLength}` }));
      return { id: record.id, key };
    } catch (err) {
      key?.wipe();
      return this.fail(caller, 'createKey', undefined, err);
    }
  }

  async createKeyPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }> {
    await this.authorize(caller, 'createKeyPair');
    let priv: SecretBytes | undefined;
    let pub: SecretBytes | undefined;
    try {
      const algorithm = options?.algorithm;
      const bits = options?.bitLength;
      let pair: { publicKey: Buffer; privateKey: Buffer };
      const enc = { publicKeyEncoding: { type: 'spki' as const, format: 'der' as const }, privateKeyEncoding: { type: 'pkcs8' as const, format: 'der' as const } };
      const gen = generateKeyPairAsync as unknown as (type: string, options: object) => Promise<{ publicKey: Buffer; privateKey: Buffer }>;
      if (algorithm === 'rsa') {
        if (!Number.isInteger(bits) || bits < 1024 || bits > 16384) throw new InvalidArgumentError(`RSA modulus ${bits} bits is outside 1024..16384.`);
        pair = await gen('rsa', { modulusLength: bits, ...enc });
      } else if (algorithm === 'ec') {
        const curve = EC_CURVES[bits];
        if (!curve) throw new InvalidArgumentError(`EC key size ${bits} is not one of 256, 384, 521.`);
        pair = await gen('ec', { namedCurve: curve, ...enc });
      } else if (algorithm === 'dsa') {
        if (![1024, 2048, 3072].includes(bits)) throw new InvalidArgumentError(`DSA modulus ${bits} bits is not one of 1024, 2048, 3072.`);
        pair = await gen('dsa', { modulusLength: bits, divisorLength: bits === 1024 ? 160 : 256, ...enc });
      } else {
        throw new InvalidArgumentError(`Key-pair algorithm '${String(algorithm)}' is not one of rsa, ec, dsa.`);
      }
      priv = new SecretBytes(new Uint8Array(pair.privateKey));
      pub = new SecretBytes(new Uint8Array(pair.publicKey));
      const name = options.name !== undefined ? { name: options.name } : {};
      const privRec = this.newRecord(caller, { type: 'private', algorithm, bitLength: bits, ...name });
      const pubRec = this.newRecord(caller, { type: 'public', algorithm, bitLength: bits, ...name });
      await this.records.insert(
        [
          { record: privRec, secret: priv },
          { record: pubRec, secret: pub },
        ],
        this.event(caller, 'createKeyPair', 'allowed', privRec.id, { detail: `public ${pubRec.id} ${algorithm}-${bits}` }),
      );
      return { privateKeyId: privRec.id, publicKeyId: pubRec.id };
    } catch (err) {
      return this.fail(caller, 'createKeyPair', undefined, err);
    } finally {
      priv?.wipe();
      pub?.wipe();
    }
  }

  async store(caller: CallerIdentity, object: NewManagedObject): Promise<string> {
    await this.authorize(caller, 'store');
    try {
      if (!object || !(OBJECT_TYPES as readonly string[]).includes(object.type)) {
        throw new InvalidObjectError(`Object type '${String(object?.type)}' is not one of ${OBJECT_TYPES.join(', ')}.`);
      }
      if (!(object.secret instanceof SecretBytes) || object.secret.wiped || object.secret.length === 0) {
        throw new InvalidObjectError('The object has no bytes (empty or wiped secret).');
      }
      let algorithm = object.algorithm?.toLowerCase();
      let bitLength = object.bitLength;
      if (object.type === 'symmetric') {
        const actual = object.secret.length * 8;
        if (bitLength !== undefined && bitLength !== actual) throw new InvalidObjectError(`bitLength ${bitLength} does not match the ${actual}-bit key.`);
        bitLength = actual;
        algorithm ??= 'aes';
      } else if (object.type === 'private' || object.type === 'public' || object.type === 'certificate') {
        const found = inspectAsymmetric(object.type, Buffer.from(object.secret.expose()));
        algorithm ??= found.algorithm;
        bitLength ??= found.bitLength;
      }
      const record = this.newRecord(caller, {
        type: object.type,
        ...(algorithm !== undefined ? { algorithm } : {}),
        ...(bitLength !== undefined ? { bitLength } : {}),
        ...(object.name !== undefined ? { name: object.name } : {}),
      });
      await this.records.insert([{ record, secret: object.secret }], this.event(caller, 'store', 'allowed', record.id, { detail: object.type }));
      return record.id;
    } catch (err) {
      return this.fail(caller, 'store', undefined, err);
    }
  }

  async get(caller: CallerIdentity, id: string): Promise<ManagedObject> {
    const record = (await this.authorize(caller, 'get', id))!;
    let secret: SecretBytes | undefined;
    try {
      secret = await this.records.readSecret(record);
      await this.records.appendAudit(this.event(caller, 'get', 'allowed', id));
    } catch (err) {
      secret?.wipe();
      return this.fail(caller, 'get', id, err);
    }
    if (record.type === 'passphrase') {
      const p = Passphrase.copyOf(secret.expose());
      secret.wipe();
      secret = p;
    }
    return { ...toMetadata(record), secret };
  }

  async getMetadata(caller: CallerIdentity, id: string): Promise<ManagedObjectMetadata> {
    const record = (await this.authorize(caller, 'getMetadata', id))!;
    await this.records.appendAudit(this.event(caller, 'getMetadata', 'allowed', id));
    return toMetadata(record);
  }

  async clone(caller: CallerIdentity, id: string, options: { name?: string } = {}): Promise<string> {
    const source = (await this.authorize(caller, 'clone', id))!;
    try {
      const name = options.name ?? source.name;
      const target = this.newRecord(caller, {
        type: source.type,
        ...(source.algorithm !== undefined ? { algorithm: source.algorithm } : {}),
        ...(source.bitLength !== undefined ? { bitLength: source.bitLength } : {}),
        ...(name !== undefined ? { name } : {}),
      });
      await this.records.copy(source, target, this.event(caller, 'clone', 'allowed', target.id, { detail: `from ${id}` }));
      return target.id;
    } catch (err) {
      return this.fail(caller, 'clone', id, err);
    }
  }

  async delete(caller: CallerIdentity, id: string, options: { force?: boolean } = {}): Promise<void> {
    await this.authorize(caller, 'delete', id);
    const force = options.force === true;
    try {
      await this.records.remove(id, force, this.event(caller, 'delete', 'allowed', id, force ? { detail: 'force' } : {}));
    } catch (err) {
      return this.fail(caller, 'delete', id, err, force ? 'force' : undefined);
    }
  }

  async list(caller: CallerIdentity, options: { type?: ObjectType } = {}): Promise<ManagedObjectMetadata[]> {
    const detail = options.type ? `type=${options.type}` : undefined;
    await this.authorize(caller, 'list', undefined, detail);
    try {
      if (options.type !== undefined && !(OBJECT_TYPES as readonly string[]).includes(options.type)) {
        throw new InvalidArgumentError(`Object type '${options.type}' is not one of ${OBJECT_TYPES.join(', ')}.`);
      }
      const records = await this.records.list(caller.project, options.type);
      const out = records.filter((r) => visibleInList(caller, r)).map(toMetadata);
      await this.records.appendAudit(this.event(caller, 'list', 'allowed', undefined, detail !== undefined ? { detail } : {}));
      return out;
    } catch (err) {
      return this.fail(caller, 'list', undefined, err, detail);
    }
  }

  async addConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    const detail = consumer ? `${consumer.service}/${consumer.resourceType}/${consumer.resourceId}` : undefined;
    await this.authorize(caller, 'addConsumer', id, detail);
    try {
      checkConsumer(consumer);
      await this.records.addConsumer(id, { service: consumer.service, resourceType: consumer.resourceType, resourceId: consumer.resourceId }, this.event(caller, 'addConsumer', 'allowed', id, { detail: detail! }));
    } catch (err) {
      return this.fail(caller, 'addConsumer', id, err, detail);
    }
  }

  async removeConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    const detail = consumer ? `${consumer.service}/${consumer.resourceType}/${consumer.resourceId}` : undefined;
    await this.authorize(caller, 'removeConsumer', id, detail);
    try {
      checkConsumer(consumer);
      await this.records.removeConsumer(id, consumer, this.event(caller, 'removeConsumer', 'allowed', id, { detail: detail! }));
    } catch (err) {
      return this.fail(caller, 'removeConsumer', id, err, detail);
    }
  }

  async grantRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    await this.authorize(caller, 'grantRead', id, `user ${user}`);
    try {
      if (typeof user !== 'string' || user === '') throw new InvalidArgumentError('grantRead needs a user name.');
      await this.records.addReader(id, user, this.event(caller, 'grantRead', 'allowed', id, { detail: `user ${user}` }));
    } catch (err) {
      return this.fail(caller, 'grantRead', id, err, `user ${user}`);
    }
  }

  async revokeRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    await this.authorize(caller, 'revokeRead', id, `user ${user}`);
    try {
      if (typeof user !== 'string' || user === '') throw new InvalidArgumentError('revokeRead needs a user name.');
      await this.records.removeReader(id, user, this.event(caller, 'revokeRead', 'allowed', id, { detail: `user ${user}` }));
    } catch (err) {
      return this.fail(caller, 'revokeRead', id, err, `user ${user}`);
    }
  }

  async readAudit(caller: CallerIdentity, options: { all?: boolean } = {}): Promise<AuditEntry[]> {
    await this.authorize(caller, 'audit');
    // Reading the log is not itself logged: it would grow the chain on every inspection.
    return this.records.readAudit(options.all ? undefined : caller.project);
  }

  async verifyAudit(caller: CallerIdentity): Promise<AuditVerification> {
    await this.authorize(caller, 'audit');
    return verifyAuditChain(await this.records.readAudit());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.records.close();
  }
}
