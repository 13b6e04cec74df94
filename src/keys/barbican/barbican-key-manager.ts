/**
 * KeyManager backend for OpenStack Barbican (v1 REST API, microversion 1.1).
 *
 * Mapping (see docs/keys-barbican-kmip.md):
 * - object  -> Barbican secret; id = the secret UUID; ObjectType = Barbican `secret_type` (same names).
 * - createKey -> a `key` order (server-side generation), then one payload read to hand the bytes to the caller.
 * - createKeyPair -> an `asymmetric` order for rsa/dsa (Barbican returns PEM; `get` hands back DER);
 *   EC pairs are generated in this process (Barbican's crypto plugins do not generate EC) and stored.
 * - consumers -> Barbican secret consumers (API 1.1); ACL -> the secret's `read` ACL.
 * - identity -> X-Project-Id / X-User-Id / X-Roles (what Keystone's auth_token middleware sets), plus
 *   X-Auth-Token: the caller's own token (`CallerIdentity.token`) or else `authToken` when configured
 *   (production, behind Keystone).
 * - clone -> get + store: Barbican has no server-side copy, so the bytes pass through this process.
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ForbiddenError, InUseError, InvalidArgumentError, InvalidObjectError, KeyNotFoundError } from '../../errors.js';
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
import { forwardedToken } from '../forwarded-token.js';
import { BarbicanHttp, type BarbicanHttpOptions, type BarbicanTlsOptions } from './barbican-http.js';

export interface BarbicanKeyManagerOptions extends BarbicanHttpOptions {
  /** A Keystone token (or a function returning a fresh one), sent as X-Auth-Token. */
  authToken?: string | (() => string | Promise<string>);
  /**
   * When true, every new secret gets the ACL `{"read": {"project-access": false}}` right after
   * creation: only its creator, project admins and users granted by `grantRead` can read it.
   * Default false (Barbican's own default: every member of the project can read).
   */
  privateByDefault?: boolean;
  /**
   * brickcrypt role -> Barbican role. Default: creator -> member (Barbican's new default policy
   * lets `member` create; it has no create-only role), other roles unchanged.
   */
  roleMap?: Record<string, string>;
  /** Project sent for a caller without one (callers normally carry their own). */
  project?: string;
}

/** Barbican API microversion 1.1 adds secret consumers. */
const API_VERSION = 'key-manager 1.1';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/**
 * Barbican's unauthenticated-context middleware treats a request without roles as admin;
 * a caller without roles must have none, so it is sent this role that no policy names.
 */
const NO_ROLE = 'brickcrypt-no-role';
const DEFAULT_ROLE_MAP: Record<string, string> = { creator: 'member' };

interface SecretJson {
  secret_ref: string;
  name?: string | null;
  secret_type?: string;
  algorithm?: string | null;
  bit_length?: number | null;
  created?: string;
  creator_id?: string | null;
  status?: string;
  consumers?: Array<{ service: string; resource_type: string; resource_id: string }>;
}

interface AclJson {
  read?: { users?: string[]; 'project-access'?: boolean };
}

/**
 * Barbican-backed key manager.
 *
 * @example
 * const km = new BarbicanKeyManager({ url: 'http://127.0.0.1:9311' });
 * const alice = { user: 'alice', project: 'p1', roles: ['member'] };
 * const { id, key } = await km.createKey(alice, { bitLength: 256, name: 'vol-1' });
 * key.wipe();
 */
export class BarbicanKeyManager implements KeyManager {
  readonly backend = 'barbican';
  readonly #http: BarbicanHttp;
  readonly #opts: BarbicanKeyManagerOptions;

  constructor(options: BarbicanKeyManagerOptions | string) {
    const opts = typeof options === 'string' ? BarbicanKeyManager.optionsFromUri(options) : options;
    this.#opts = opts;
    this.#http = new BarbicanHttp(opts);
  }

  /**
   * Parses `barbican+http://host:port`, `barbican+https://host:port?ca=FILE&cert=FILE&key=FILE`
   * (also `barbican:` followed by an http(s) URL). `token-file=FILE` reads a Keystone token;
   * `private=1` sets `privateByDefault`; `timeout-ms=N` and `attempts=N` tune retries.
   *
   * @example
   * BarbicanKeyManager.optionsFromUri('barbican+https://kms:9311?ca=/etc/ssl/kms-ca.pem')
   */
  static optionsFromUri(uri: string): BarbicanKeyManagerOptions {
    let rest: string;
    if (uri.startsWith('barbican+')) rest = uri.slice('barbican+'.length);
    else if (uri.startsWith('barbican:')) rest = uri.slice('barbican:'.length).replace(/^\/\//, '');
    else rest = uri;
    let url: URL;
    try {
      url = new URL(rest);
    } catch {
      throw new InvalidArgumentError(`not a Barbican URI: ${uri}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError(`not a Barbican URI: ${uri}`);
    const q = url.searchParams;
    const tls: BarbicanTlsOptions = {};
    if (q.get('ca')) tls.ca = readFileSync(q.get('ca')!);
    if (q.get('cert')) tls.cert = readFileSync(q.get('cert')!);
    if (q.get('key')) tls.key = readFileSync(q.get('key')!);
    const tokenFile = q.get('token-file');
    const num = (name: string) => (q.get(name) ? Number(q.get(name)) : undefined);
    const endpoint = `${url.protocol}//${url.host}${url.pathname.replace(/\/$/, '')}`;
    return {
      url: endpoint,
      tls,
      authToken: tokenFile ? () => readFileSync(tokenFile, 'utf8').trim() : undefined,
      privateByDefault: q.get('private') === '1' || q.get('private') === 'true',
      timeoutMs: num('timeout-ms'),
      attempts: num('attempts'),
    };
  }

  // ------------------------------------------------------------------ requests

  async #headers(caller: CallerIdentity, extra: Record<string, string> = {}): Promise<Record<string, string>> {
    const project = caller?.project || this.#opts.project;
    if (!project) throw new InvalidArgumentError('caller identity needs a project');
    const map = { ...DEFAULT_ROLE_MAP, ...(this.#opts.roleMap ?? {}) };
    const mapped = caller.roles.map((r) => map[r] ?? r);
    // Keystone's default implied role (admin implies member): a Keystone token lists it, a bare
    // ["admin"] identity does not, and Barbican's policy lets only member create.
    if (mapped.includes('admin')) mapped.push('member');
    const roles = [...new Set(mapped)].filter((r) => /^[A-Za-z0-9_.-]+$/.test(r));
    const h: Record<string, string> = {
      'X-Project-Id': project,
      'X-User-Id': caller.user,
      'X-Roles': roles.length > 0 ? roles.join(',') : NO_ROLE,
      'OpenStack-API-Version': API_VERSION,
      Accept: 'application/json',
      ...extra,
    };
    // The caller's own Keystone token (forwarded by `serve`) wins over a configured service
    // token: Barbican then applies its policy to the caller, not to the service.
    const own = forwardedToken(caller);
    const t = this.#opts.authToken;
    if (own !== undefined) h['X-Auth-Token'] = own;
    else if (t !== undefined) h['X-Auth-Token'] = typeof t === 'string' ? t : await t();
    return h;
  }

  async #json<T>(caller: CallerIdentity, method: string, path: string, subject: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8');
    const headers = await this.#headers(caller, payload ? { 'Content-Type': 'application/json' } : {});
    try {
      const res = await this.#http.request(method, path, headers, payload, subject);
      if (res.body.length === 0) return undefined as T;
      try {
        return JSON.parse(res.body.toString('utf8')) as T;
      } catch (err) {
        throw new InvalidObjectError(`barbican: ${subject}: answer is not JSON`, { cause: err });
      } finally {
        res.body.fill(0);
      }
    } finally {
      payload?.fill(0);
    }
  }

  #secretPath(id: string): string {
    if (typeof id !== 'string' || !UUID_RE.test(id)) throw new KeyNotFoundError(String(id));
    return `v1/secrets/${id.toLowerCase()}`;
  }

  static #idOf(ref: string): string {
    const id = ref.replace(/\/+$/, '').split('/').pop() ?? '';
    if (!UUID_RE.test(id)) throw new InvalidObjectError(`barbican: unexpected reference ${ref}`);
    return id;
  }

  #toMetadata(j: SecretJson, caller: CallerIdentity, readers?: string[]): ManagedObjectMetadata {
    const type = j.secret_type as ObjectType;
    if (!OBJECT_TYPES.includes(type)) throw new InvalidObjectError(`barbican: unknown secret_type ${String(j.secret_type)}`);
    const meta: ManagedObjectMetadata = {
      id: BarbicanKeyManager.#idOf(j.secret_ref),
      type,
      created: j.created ? new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(j.created) ? j.created : `${j.created}Z`).toISOString() : new Date(0).toISOString(),
      // Barbican does not return the owning project: visible secrets are the caller's project's
      // (or shared by a user ACL), so the caller's project is reported.
      owner: { user: j.creator_id ?? '', project: caller.project },
      consumers: (j.consumers ?? []).map((c) => ({ service: c.service, resourceType: c.resource_type, resourceId: c.resource_id })),
    };
    if (j.algorithm) meta.algorithm = j.algorithm.toLowerCase();
    if (typeof j.bit_length === 'number') meta.bitLength = j.bit_length;
    if (j.name) meta.name = j.name;
    if (readers) meta.readers = readers;
    return meta;
  }

  async #payload(caller: CallerIdentity, id: string): Promise<Uint8Array> {
    const headers = await this.#headers(caller, { Accept: 'application/octet-stream' });
    const res = await this.#http.request('GET', `${this.#secretPath(id)}/payload`, headers, undefined, id);
    const out = new Uint8Array(res.body.length);
    out.set(res.body);
    res.body.fill(0);
    return out;
  }

  async #acl(caller: CallerIdentity, id: string): Promise<AclJson> {
    return (await this.#json<AclJson>(caller, 'GET', `${this.#secretPath(id)}/acl`, id)) ?? {};
  }

  async #putAcl(caller: CallerIdentity, id: string, users: string[], projectAccess: boolean): Promise<void> {
    await this.#json(caller, 'PUT', `${this.#secretPath(id)}/acl`, id, { read: { users, 'project-access': projectAccess } });
  }

  /** Makes a fresh secret private when configured; a secret that cannot be made private is deleted. */
  async #afterCreate(caller: CallerIdentity, id: string): Promise<void> {
    if (!this.#opts.privateByDefault) return;
    try {
      await this.#putAcl(caller, id, [], false);
    } catch (err) {
      await this.#json(caller, 'DELETE', this.#secretPath(id), id).catch(() => undefined);
      throw err;
    }
  }

  // ------------------------------------------------------------------ contract

  async createKey(caller: CallerIdentity, options: CreateKeyOptions = {}): Promise<{ id: string; key: SecretBytes }> {
    const algorithm = (options.algorithm ?? 'aes').toLowerCase();
    const bitLength = options.bitLength ?? 256;
    if (!Number.isInteger(bitLength) || bitLength <= 0 || bitLength % 8 !== 0) {
      throw new InvalidArgumentError(`key length must be a positive multiple of 8 bits, got ${bitLength}`);
    }
    const meta: Record<string, unknown> = { algorithm, bit_length: bitLength, payload_content_type: 'application/octet-stream' };
    // Barbican's simple_crypto plugin generates 512-bit AES only for mode xts (two 256-bit halves).
    if (algorithm === 'aes' && bitLength === 512) meta.mode = 'xts';
    if (options.name) meta.name = options.name;
    const order = await this.#json<{ order_ref: string }>(caller, 'POST', 'v1/orders', 'order', { type: 'key', meta });
    const done = await this.#waitOrder(caller, order.order_ref);
    if (!done.secret_ref) throw new InvalidObjectError('barbican: key order finished without a secret');
    const id = BarbicanKeyManager.#idOf(done.secret_ref);
    await this.#afterCreate(caller, id);
    const bytes = await this.#payload(caller, id);
    return { id, key: new SecretBytes(bytes) };
  }

  /** Orders complete inline when Barbican runs without a queue; with workers they are polled. */
  async #waitOrder(caller: CallerIdentity, orderRef: string): Promise<{ secret_ref?: string; container_ref?: string }> {
    const deadline = Date.now() + (this.#opts.timeoutMs ?? 10_000) * 3;
    for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
      const o = await this.#json<{ status: string; secret_ref?: string; container_ref?: string; error_reason?: string }>(caller, 'GET', orderRef, 'order');
      if (o.status === 'ACTIVE') return o;
      if (o.status === 'ERROR') throw new InvalidObjectError(`barbican: order failed: ${o.error_reason ?? 'unknown reason'}`);
      if (Date.now() > deadline) throw new InvalidObjectError(`barbican: order still ${o.status} after waiting`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async createKeyPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }> {
    const { algorithm, bitLength } = options;
    if (algorithm === 'ec') return this.#createEcPair(caller, options);
    if (algorithm !== 'rsa' && algorithm !== 'dsa') throw new InvalidArgumentError(`unsupported key pair algorithm ${String(algorithm)}`);
    const meta: Record<string, unknown> = { algorithm, bit_length: bitLength, payload_content_type: 'application/octet-stream' };
    if (options.name) meta.name = options.name;
    const order = await this.#json<{ order_ref: string }>(caller, 'POST', 'v1/orders', 'order', { type: 'asymmetric', meta });
    const done = await this.#waitOrder(caller, order.order_ref);
    if (!done.container_ref) throw new InvalidObjectError('barbican: asymmetric order finished without a container');
    const container = await this.#json<{ secret_refs: Array<{ name: string; secret_ref: string }> }>(caller, 'GET', done.container_ref, 'container');
    const ref = (n: string) => container.secret_refs.find((s) => s.name === n)?.secret_ref;
    const priv = ref('private_key');
    const pub = ref('public_key');
    if (!priv || !pub) throw new InvalidObjectError('barbican: asymmetric order container lacks a key');
    // The container only groups the two refs; the secrets outlive it.
    await this.#json(caller, 'DELETE', done.container_ref, 'container').catch(() => undefined);
    const privateKeyId = BarbicanKeyManager.#idOf(priv);
    const publicKeyId = BarbicanKeyManager.#idOf(pub);
    await this.#afterCreate(caller, privateKeyId);
    await this.#afterCreate(caller, publicKeyId);
    return { privateKeyId, publicKeyId };
  }

  async #createEcPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }> {
    const curves: Record<number, string> = { 256: 'prime256v1', 384: 'secp384r1', 521: 'secp521r1' };
    const namedCurve = curves[options.bitLength];
    if (!namedCurve) throw new InvalidArgumentError(`EC key size must be 256, 384 or 521, got ${options.bitLength}`);
    const pair = generateKeyPairSync('ec', { namedCurve });
    const der = pair.privateKey.export({ format: 'der', type: 'pkcs8' });
    const pubDer = pair.publicKey.export({ format: 'der', type: 'spki' });
    const privateKeyId = await this.store(caller, { type: 'private', secret: new SecretBytes(new Uint8Array(der)), algorithm: 'ec', bitLength: options.bitLength, name: options.name });
    der.fill(0);
    const publicKeyId = await this.store(caller, { type: 'public', secret: SecretBytes.copyOf(pubDer), algorithm: 'ec', bitLength: options.bitLength, name: options.name });
    return { privateKeyId, publicKeyId };
  }

  async store(caller: CallerIdentity, object: NewManagedObject): Promise<string> {
    if (!OBJECT_TYPES.includes(object.type)) throw new InvalidObjectError(`unknown object type ${String(object.type)}`);
    const bytes = object.secret.expose();
    if (bytes.length === 0) throw new InvalidObjectError('cannot store an empty secret');
    checkDer(object.type, bytes);
    const body: Record<string, unknown> = {
      secret_type: object.type,
      payload: Buffer.from(bytes).toString('base64'),
      payload_content_type: 'application/octet-stream',
      payload_content_encoding: 'base64',
    };
    if (object.name) body.name = object.name;
    if (object.algorithm) body.algorithm = object.algorithm.toLowerCase();
    if (object.bitLength !== undefined) body.bit_length = object.bitLength;
    const res = await this.#json<{ secret_ref: string }>(caller, 'POST', 'v1/secrets', 'secret', body);
    body.payload = '';
    const id = BarbicanKeyManager.#idOf(res.secret_ref);
    await this.#afterCreate(caller, id);
    return id;
  }

  async get(caller: CallerIdentity, id: string): Promise<ManagedObject> {
    const meta = await this.getMetadata(caller, id);
    let bytes = await this.#payload(caller, id);
    if (meta.type === 'private' || meta.type === 'public' || meta.type === 'certificate') bytes = pemToDer(bytes);
    return { ...meta, secret: new SecretBytes(bytes) };
  }

  async getMetadata(caller: CallerIdentity, id: string): Promise<ManagedObjectMetadata> {
    const j = await this.#json<SecretJson>(caller, 'GET', this.#secretPath(id), id);
    // Only the owner or a project admin may read the ACL of a private secret; others see no readers.
    const acl = await this.#acl(caller, id).catch((err) => {
      if (err instanceof ForbiddenError) return undefined;
      throw err;
    });
    return this.#toMetadata(j, caller, acl ? (acl.read?.users ?? []) : undefined);
  }

  async clone(caller: CallerIdentity, id: string, options: { name?: string } = {}): Promise<string> {
    const obj = await this.get(caller, id);
    try {
      return await this.store(caller, { type: obj.type, secret: obj.secret, algorithm: obj.algorithm, bitLength: obj.bitLength, name: options.name ?? obj.name });
    } finally {
      obj.secret.wipe();
    }
  }

  async delete(caller: CallerIdentity, id: string, options: { force?: boolean } = {}): Promise<void> {
    const path = this.#secretPath(id);
    // Barbican deletes a secret together with its consumers; the contract refuses instead.
    if (!options.force) {
      const j = await this.#json<SecretJson>(caller, 'GET', path, id);
      const n = j.consumers?.length ?? 0;
      if (n > 0) throw new InUseError(`Managed object ${id} has ${n} consumer(s); use force to delete it anyway.`);
    }
    await this.#json(caller, 'DELETE', path, id);
  }

  async list(caller: CallerIdentity, options: { type?: ObjectType } = {}): Promise<ManagedObjectMetadata[]> {
    const out: ManagedObjectMetadata[] = [];
    const limit = 100;
    for (let offset = 0; ; offset += limit) {
      const q = new URLSearchParams({ limit: String(limit), offset: String(offset) });
      if (options.type) q.set('secret_type', options.type);
      const page = await this.#json<{ secrets: SecretJson[]; total: number }>(caller, 'GET', `v1/secrets?${q}`, 'secrets');
      for (const s of page.secrets) {
        if (OBJECT_TYPES.includes(s.secret_type as ObjectType)) out.push(this.#toMetadata(s, caller));
      }
      if (page.secrets.length < limit || offset + limit >= page.total) break;
    }
    return out;
  }

  async addConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    await this.#json(caller, 'POST', `${this.#secretPath(id)}/consumers`, id, consumerJson(consumer));
  }

  async removeConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    // Barbican answers 404 both for an unknown secret and an unknown consumer; removing a
    // consumer that is not registered is not an error (idempotent), an unknown secret is.
    try {
      await this.#json(caller, 'DELETE', `${this.#secretPath(id)}/consumers`, id, consumerJson(consumer));
    } catch (err) {
      if (!(err instanceof KeyNotFoundError)) throw err;
      await this.#json(caller, 'GET', this.#secretPath(id), id);
    }
  }

  async grantRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    if (!user) throw new InvalidArgumentError('grantRead needs a user');
    const acl = await this.#acl(caller, id);
    const users = new Set(acl.read?.users ?? []);
    users.add(user);
    await this.#putAcl(caller, id, [...users], acl.read?.['project-access'] ?? true);
  }

  async revokeRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    const acl = await this.#acl(caller, id);
    const users = (acl.read?.users ?? []).filter((u) => u !== user);
    await this.#putAcl(caller, id, users, acl.read?.['project-access'] ?? true);
  }

  /**
   * Makes a secret private to its creator, project admins and ACL-listed users
   * (Barbican ACL `project-access: false`), keeping the listed users.
   */
  async makePrivate(caller: CallerIdentity, id: string): Promise<void> {
    const acl = await this.#acl(caller, id);
    await this.#putAcl(caller, id, acl.read?.users ?? [], false);
  }

  async close(): Promise<void> {
    this.#http.close();
  }
}

function consumerJson(c: Consumer): Record<string, string> {
  if (!c || !c.service || !c.resourceType || !c.resourceId) throw new InvalidArgumentError('a consumer needs service, resourceType and resourceId');
  return { service: c.service, resource_type: c.resourceType, resource_id: c.resourceId };
}

/** PEM (as Barbican's asymmetric orders store keys) to DER; DER input is returned unchanged. */
function pemToDer(bytes: Uint8Array): Uint8Array {
  const head = Buffer.from(bytes.subarray(0, 11)).toString('latin1');
  if (head !== '-----BEGIN ') return bytes;
  const text = Buffer.from(bytes).toString('latin1');
  const m = /-----BEGIN [A-Z0-9 ]+-----([\s\S]*?)-----END [A-Z0-9 ]+-----/.exec(text);
  if (!m) throw new InvalidObjectError('barbican: malformed PEM payload');
  const der = new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
  bytes.fill(0);
  return der;
}

/** Barbican stores any bytes; keys and certificates are checked here so `get` hands back usable DER. */
function checkDer(type: ObjectType, bytes: Uint8Array): void {
  try {
    if (type === 'private') createPrivateKey({ key: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), format: 'der', type: 'pkcs8' });
    else if (type === 'public') createPublicKey({ key: Buffer.from(bytes), format: 'der', type: 'spki' });
    else if (type === 'certificate') new X509Certificate(bytes);
  } catch (err) {
    throw new InvalidObjectError(`${type} is not DER (${type === 'private' ? 'PKCS#8' : type === 'public' ? 'SubjectPublicKeyInfo' : 'X.509'}): ${(err as Error).message}`);
  }
}
