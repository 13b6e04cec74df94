/**
 * brickcrypt's "a creator never reads key bytes" rule (src/keys/policy.ts) in front of a key
 * manager whose own policy cannot say it. Barbican has no create-only role (`creator` maps to
 * its `member`, which reads its own secrets back) and KMIP sees only the TLS certificate, so a
 * service that promises the rule to its callers must keep it itself. Every other call, and
 * every decision the rule does not make, goes to the backend with the caller unchanged.
 */
import { ForbiddenError } from '../errors.js';
import type { SecretBytes } from '../secret.js';
import type {
  CallerIdentity,
  Consumer,
  CreateKeyOptions,
  CreateKeyPairOptions,
  KeyManager,
  ManagedObject,
  ManagedObjectMetadata,
  NewManagedObject,
  ObjectType,
} from './key-manager.js';
import { PolicyKeyManager } from './policy-key-manager.js';

/**
 * Whether `get` must be refused before the backend sees it: the caller's only roles that could
 * read are `creator`. admin/member read by role, and a `reader` may hold a per-object grant the
 * backend knows about (a Barbican ACL), so those are left to the backend.
 */
export function creatorMayNotRead(caller: CallerIdentity): boolean {
  const roles = new Set(caller.roles);
  return roles.has('creator') && !roles.has('admin') && !roles.has('member') && !roles.has('reader');
}

class CreatorReadGuard implements KeyManager {
  readonly #inner: KeyManager;
  readonly #onDeny: (caller: CallerIdentity, id: string) => void;

  constructor(inner: KeyManager, onDeny: (caller: CallerIdentity, id: string) => void) {
    this.#inner = inner;
    this.#onDeny = onDeny;
  }

  get backend(): string {
    return this.#inner.backend;
  }

  createKey(caller: CallerIdentity, options?: CreateKeyOptions): Promise<{ id: string; key: SecretBytes }> {
    return this.#inner.createKey(caller, options);
  }
  createKeyPair(caller: CallerIdentity, options: CreateKeyPairOptions): Promise<{ privateKeyId: string; publicKeyId: string }> {
    return this.#inner.createKeyPair(caller, options);
  }
  store(caller: CallerIdentity, object: NewManagedObject): Promise<string> {
    return this.#inner.store(caller, object);
  }
  async get(caller: CallerIdentity, id: string): Promise<ManagedObject> {
    if (creatorMayNotRead(caller)) {
      this.#onDeny(caller, id);
      throw new ForbiddenError(`role creator may never read existing key bytes (${this.#inner.backend} key ${id}).`);
    }
    return this.#inner.get(caller, id);
  }
  getMetadata(caller: CallerIdentity, id: string): Promise<ManagedObjectMetadata> {
    return this.#inner.getMetadata(caller, id);
  }
  // A clone's bytes pass through this process only (Barbican and KMIP have no server-side copy), never to the caller.
  clone(caller: CallerIdentity, id: string, options?: { name?: string }): Promise<string> {
    return this.#inner.clone(caller, id, options);
  }
  delete(caller: CallerIdentity, id: string, options?: { force?: boolean }): Promise<void> {
    return this.#inner.delete(caller, id, options);
  }
  list(caller: CallerIdentity, options?: { type?: ObjectType }): Promise<ManagedObjectMetadata[]> {
    return this.#inner.list(caller, options);
  }
  addConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    return this.#inner.addConsumer(caller, id, consumer);
  }
  removeConsumer(caller: CallerIdentity, id: string, consumer: Consumer): Promise<void> {
    return this.#inner.removeConsumer(caller, id, consumer);
  }
  grantRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    return this.#inner.grantRead(caller, id, user);
  }
  revokeRead(caller: CallerIdentity, id: string, user: string): Promise<void> {
    return this.#inner.revokeRead(caller, id, user);
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
}

/**
 * `km` with the creator rule kept in this process. The local and memory keystores
 * (PolicyKeyManager) already enforce and audit it, so they are returned as they are.
 *
 * @example
 * const km = guardCreatorReads(await openKeyManager('barbican+https://kms:9311'));
 * await km.get({ user: 'cinder', project: 'p1', roles: ['creator'] }, id); // ForbiddenError
 */
export function guardCreatorReads(km: KeyManager, onDeny: (caller: CallerIdentity, id: string) => void = () => {}): KeyManager {
  if (km instanceof PolicyKeyManager || km instanceof CreatorReadGuard) return km;
  return new CreatorReadGuard(km, onDeny);
}
