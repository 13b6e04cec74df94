/**
 * The key-manager contract every backend implements (local keystore, memory, Barbican, KMIP).
 *
 * Modelled on OpenStack castellan's API, with two changes that serve least privilege:
 * `createKey` hands the new key's bytes to the creating call once (so a storage service can
 * format a volume without ever being able to `get` the key later), and `clone` copies an
 * object inside the backend where the backend can, so the caller never sees the bytes.
 */
import type { SecretBytes } from '../secret.js';
import type { ForwardedToken } from './forwarded-token.js';

export type ObjectType = 'symmetric' | 'passphrase' | 'opaque' | 'certificate' | 'private' | 'public';
export const OBJECT_TYPES: readonly ObjectType[] = ['symmetric', 'passphrase', 'opaque', 'certificate', 'private', 'public'];

/** Roles understood by brickcrypt's own access policy (local and memory backends). */
export type Role = 'admin' | 'creator' | 'reader' | 'member';

/** Who is calling: every operation carries one. */
export interface CallerIdentity {
  user: string;
  project: string;
  roles: readonly string[];
  /**
   * The caller's Keystone token, when an authenticating proxy passed it (`serve
   * --trust-proxy-identity`): Barbican gets it as X-Auth-Token instead of a configured service
   * token; backends without Keystone ignore it. Memory only: never stored with a job.
   */
  token?: ForwardedToken;
}

/** A service using an object (e.g. a volume or image), as Barbican consumers. */
export interface Consumer {
  service: string;
  resourceType: string;
  resourceId: string;
}

/** Everything about an object except its bytes. */
export interface ManagedObjectMetadata {
  id: string;
  type: ObjectType;
  /** e.g. "aes", "rsa", "ec", "dsa"; absent for passphrase/opaque. */
  algorithm?: string;
  bitLength?: number;
  name?: string;
  /** ISO 8601 creation time. */
  created: string;
  owner: { user: string; project: string };
  consumers: Consumer[];
  /** Users granted read by ACL (where the backend keeps ACLs). */
  readers?: string[];
}

/** An object with its bytes. PEM/DER objects keep DER bytes (PKCS#8, SPKI, X.509). */
export interface ManagedObject extends ManagedObjectMetadata {
  secret: SecretBytes;
}

/** What `store` takes: the bytes plus descriptive fields. */
export interface NewManagedObject {
  type: ObjectType;
  secret: SecretBytes;
  algorithm?: string;
  bitLength?: number;
  name?: string;
}

export interface CreateKeyOptions {
  algorithm?: string; // default "aes"
  bitLength?: number; // default 256
  name?: string;
}

export interface CreateKeyPairOptions {
  algorithm: 'rsa' | 'ec' | 'dsa';
  /** RSA/DSA modulus bits, or EC curve size (256, 384, 521). */
  bitLength: number;
  name?: string;
}

export interface KeyManager {
  /** Backend name for messages and audit ("local", "memory", "barbican", "kmip"). */
  readonly backend: string;

  /** Creates a symmetric key; its bytes are returned to this call only (the caller wipes them). */
  createKey(caller: CallerIdentity, options?: CreateKeyOptions): Promise<{ id: string; key: SecretBytes }>;
  createKeyPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }>;
  store(caller: CallerIdentity, object: NewManagedObject): Promise<string>;
  get(caller: CallerIdentity, id: string): Promise<ManagedObject>;
  getMetadata(caller: CallerIdentity, id: string): Promise<ManagedObjectMetadata>;
  /** Copies an object under a new id, owned by the caller's project. */
  clone(caller: CallerIdentity, id: string, options?: { name?: string }): Promise<string>;
  /** Refuses (InUseError) while consumers are registered, unless `force`. */
  delete(caller: CallerIdentity, id: string, options?: { force?: boolean }): Promise<void>;
  list(caller: CallerIdentity, options?: { type?: ObjectType }): Promise<ManagedObjectMetadata[]>;
  addConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void>;
  removeConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void>;
  /** Per-object read ACL. Backends without ACLs throw UnsupportedError. */
  grantRead(caller: CallerIdentity, id: string, user: string): Promise<void>;
  revokeRead(caller: CallerIdentity, id: string, user: string): Promise<void>;
  close(): Promise<void>;
}
