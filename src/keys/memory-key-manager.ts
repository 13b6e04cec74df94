/**
 * In-memory key manager for tests and demos: the same policy and audit chain as the
 * local keystore, nothing persisted. Bytes are held as private copies and wiped on
 * delete and close.
 */
import { InUseError, KeyNotFoundError } from '../errors.js';
import { SecretBytes } from '../secret.js';
import type { Consumer, ObjectType } from './key-manager.js';
import { chainHash, GENESIS_HASH, type AuditEntry, type AuditEvent } from './audit.js';
import { PolicyKeyManager, type ObjectRecord, type RecordStore } from './policy-key-manager.js';

function cloneRecord(r: ObjectRecord): ObjectRecord {
  return { ...r, owner: { ...r.owner }, consumers: r.consumers.map((c) => ({ ...c })), readers: [...r.readers] };
}

const sameConsumer = (a: Consumer, b: Consumer) => a.service === b.service && a.resourceType === b.resourceType && a.resourceId === b.resourceId;

class MemoryStore implements RecordStore {
  readonly #objects = new Map<string, { record: ObjectRecord; secret: SecretBytes }>();
  readonly #audit: AuditEntry[] = [];

  #get(id: string) {
    const o = this.#objects.get(id);
    if (!o) throw new KeyNotFoundError(id);
    return o;
  }

  #append(event: AuditEvent): void {
    const prevHash = this.#audit.at(-1)?.hash ?? GENESIS_HASH;
    const seq = this.#audit.length + 1;
    this.#audit.push({ ...event, roles: [...event.roles], seq, prevHash, hash: chainHash(prevHash, seq, event) });
  }

  async find(id: string) {
    const o = this.#objects.get(id);
    return o ? cloneRecord(o.record) : undefined;
  }
  async insert(objects: Array<{ record: ObjectRecord; secret: SecretBytes }>, audit: AuditEvent) {
    for (const o of objects) this.#objects.set(o.record.id, { record: cloneRecord(o.record), secret: o.secret.clone() });
    this.#append(audit);
  }
  async readSecret(record: ObjectRecord) {
    return this.#get(record.id).secret.clone();
  }
  async copy(source: ObjectRecord, target: ObjectRecord, audit: AuditEvent) {
    const src = this.#get(source.id);
    this.#objects.set(target.id, { record: cloneRecord(target), secret: src.secret.clone() });
    this.#append(audit);
  }
  async remove(id: string, force: boolean, audit: AuditEvent) {
    const o = this.#get(id);
    if (o.record.consumers.length > 0 && !force) {
      throw new InUseError(`Managed object ${id} has ${o.record.consumers.length} consumer(s); remove them or force.`);
    }
    o.secret.wipe();
    this.#objects.delete(id);
    this.#append(audit);
  }
  async addConsumer(id: string, consumer: Consumer, audit: AuditEvent) {
    const o = this.#get(id);
    if (!o.record.consumers.some((c) => sameConsumer(c, consumer))) o.record.consumers.push({ ...consumer });
    this.#append(audit);
  }
  async removeConsumer(id: string, consumer: Consumer, audit: AuditEvent) {
    const o = this.#get(id);
    o.record.consumers = o.record.consumers.filter((c) => !sameConsumer(c, consumer));
    this.#append(audit);
  }
  async addReader(id: string, user: string, audit: AuditEvent) {
    const o = this.#get(id);
    if (!o.record.readers.includes(user)) o.record.readers.push(user);
    this.#append(audit);
  }
  async removeReader(id: string, user: string, audit: AuditEvent) {
    const o = this.#get(id);
    o.record.readers = o.record.readers.filter((u) => u !== user);
    this.#append(audit);
  }
  async list(project: string, type?: ObjectType) {
    return [...this.#objects.values()]
      .map((o) => o.record)
      .filter((r) => r.owner.project === project && (type === undefined || r.type === type))
      .sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id))
      .map(cloneRecord);
  }
  async appendAudit(event: AuditEvent) {
    this.#append(event);
  }
  async readAudit(project?: string) {
    return this.#audit.filter((e) => project === undefined || e.project === project).map((e) => ({ ...e, roles: [...e.roles] }));
  }
  /** Test hook: direct access to the log to simulate tampering. */
  rawAudit(): AuditEntry[] {
    return this.#audit;
  }
  async close() {
    for (const o of this.#objects.values()) o.secret.wipe();
    this.#objects.clear();
  }
}

/**
 * Key manager held in process memory.
 *
 * @example
 * const km = new MemoryKeyManager();
 * const admin = { user: 'alice', project: 'demo', roles: ['admin'] };
 * const { id, key } = await km.createKey(admin, { bitLength: 256 });
 * key.wipe();
 * const obj = await km.get(admin, id);
 */
export class MemoryKeyManager extends PolicyKeyManager {
  constructor() {
    super('memory', new MemoryStore());
  }

  /** The live audit array (tests use it to simulate tampering). */
  rawAuditForTesting(): AuditEntry[] {
    return (this.records as MemoryStore).rawAudit();
  }
}
