/**
 * The embedded local keystore: one SQLite file (better-sqlite3, WAL, busy_timeout),
 * every secret wrapped with AES-256-GCM under a key-encryption key (KEK), with the
 * object's id, owner and type bound as associated data, so a wrapped blob copied into
 * another row (or a row whose owner was edited) fails to unwrap.
 *
 * Tables (schema version 1):
 *
 * | table     | columns                                                                        |
 * |-----------|--------------------------------------------------------------------------------|
 * | meta      | key TEXT PK, value TEXT: schema, kek_kind, kek_id, kek_file, argon2, kek_check |
 * | objects   | id PK, type, algorithm, bit_length, name, created, owner_user, owner_project, wrapped BLOB |
 * | acl       | object_id, user (PK both): per-object read grants                              |
 * | consumers | object_id, service, resource_type, resource_id (PK all)                         |
 * | audit     | seq PK, time, user, project, roles (JSON), backend, operation, object_id, outcome, code, detail, prev_hash, hash |
 *
 * Errors: a wrong KEK (wrong key file or passphrase) is `WrongPassphraseError` when the
 * keystore is opened (a wrapped check value fails); a tampered or moved wrapped
 * secret is `InvalidObjectError` when it is read.
 */
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import {
  AlreadyExistsError,
  BackendUnavailableError,
  InUseError,
  InvalidArgumentError,
  InvalidObjectError,
  KeyNotFoundError,
  NotFoundError,
  WrongPassphraseError,
} from '../errors.js';
import { Passphrase, SecretBytes } from '../secret.js';
import type { CallerIdentity, Consumer, ObjectType } from './key-manager.js';
import { chainHash, GENESIS_HASH, type AuditEntry, type AuditEvent } from './audit.js';
import { PolicyKeyManager, type ObjectRecord, type RecordStore } from './policy-key-manager.js';
import type { KekProvider } from './kek/kek-provider.js';
import { createKekFile, deriveKekFromPassphrase, loadKekFile, newArgon2idParams, type Argon2idParams } from './kek/aes-gcm-kek.js';

const SCHEMA_VERSION = '1';
const AAD_PREFIX = 'brickcrypt-keystore-v1';

/** Where the KEK of a keystore comes from (recorded in `meta`; nothing secret). */
export type KekSource =
  | { kind: 'file'; file: string }
  | { kind: 'passphrase'; passphrase: Passphrase; argon2?: Partial<Omit<Argon2idParams, 'salt'>> }
  | { kind: 'external'; provider: KekProvider };

export interface LocalKeystoreOptions {
  /** KEK file (created with mode 0600 by `init` if absent). Default on init: `<keystore>.kek` beside the db. */
  kekFile?: string;
  /** Passphrase for an Argon2id-derived KEK. */
  kekPassphrase?: Passphrase;
  /** Argon2id cost for `init` with a passphrase (default 64 MiB, t=3, p=4). */
  argon2?: Partial<Omit<Argon2idParams, 'salt'>>;
  /** A KEK that lives elsewhere (e.g. a PKCS#11 token). */
  kek?: KekProvider;
  /** SQLite busy timeout (default 15000 ms). */
  busyTimeoutMs?: number;
}

function objectAad(id: string, project: string, user: string, type: string): Uint8Array {
  return new Uint8Array(Buffer.from([AAD_PREFIX, 'object', id, project, user, type].join('\0'), 'utf8'));
}
const CHECK_AAD = new Uint8Array(Buffer.from(`${AAD_PREFIX}\0kek-check`, 'utf8'));

interface ObjectRow {
  id: string;
  type: ObjectType;
  algorithm: string | null;
  bit_length: number | null;
  name: string | null;
  created: string;
  owner_user: string;
  owner_project: string;
  wrapped: Buffer;
}

interface AuditRow {
  seq: number;
  time: string;
  user: string;
  project: string;
  roles: string;
  backend: string;
  operation: string;
  object_id: string | null;
  outcome: AuditEntry['outcome'];
  code: string | null;
  detail: string | null;
  prev_hash: string;
  hash: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, algorithm TEXT, bit_length INTEGER, name TEXT,
  created TEXT NOT NULL, owner_user TEXT NOT NULL, owner_project TEXT NOT NULL, wrapped BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS objects_project ON objects(owner_project, type);
CREATE TABLE IF NOT EXISTS acl (object_id TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (object_id, user));
CREATE TABLE IF NOT EXISTS consumers (object_id TEXT NOT NULL, service TEXT NOT NULL, resource_type TEXT NOT NULL,
  resource_id TEXT NOT NULL, PRIMARY KEY (object_id, service, resource_type, resource_id));
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, time TEXT NOT NULL, user TEXT NOT NULL, project TEXT NOT NULL, roles TEXT NOT NULL,
  backend TEXT NOT NULL, operation TEXT NOT NULL, object_id TEXT, outcome TEXT NOT NULL, code TEXT, detail TEXT,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
`;

function openDatabase(path: string, busyTimeoutMs: number): Database.Database {
  try {
    const db = new Database(path, { fileMustExist: true, timeout: busyTimeoutMs });
    db.pragma('journal_mode = WAL');
    // FULL: a committed key survives power loss (a lost key is a lost volume).
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    return db;
  } catch (err) {
    throw new BackendUnavailableError(`Cannot open keystore ${path}: ${(err as Error).message}`, { cause: err });
  }
}

class SqliteStore implements RecordStore {
  readonly db: Database.Database;
  kek: KekProvider;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(db: Database.Database, kek: KekProvider) {
    this.db = db;
    this.kek = kek;
  }

  /** Serialises this connection's operations (KEK calls are async; a rotation holds a transaction across them). */
  lock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Runs `fn` in a write transaction taken at BEGIN, so concurrent processes serialise cleanly. */
  tx<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn).immediate();
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_BUSY') throw new BackendUnavailableError('Keystore is busy (locked by another process).', { cause: err });
      throw err;
    }
  }

  appendAuditSync(event: AuditEvent): void {
    const last = this.db.prepare('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: string } | undefined;
    const seq = (last?.seq ?? 0) + 1;
    const prevHash = last?.hash ?? GENESIS_HASH;
    this.db
      .prepare('INSERT INTO audit (seq, time, user, project, roles, backend, operation, object_id, outcome, code, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)')
      .run(seq, event.time, event.user, event.project, JSON.stringify(event.roles), event.backend, event.operation, event.objectId ?? null, event.outcome, event.code ?? null, event.detail ?? null, prevHash, chainHash(prevHash, seq, event));
  }

  #row(id: string): ObjectRow | undefined {
    return this.db.prepare('SELECT * FROM objects WHERE id = ?').get(id) as ObjectRow | undefined;
  }

  #record(row: ObjectRow): ObjectRecord {
    const r: ObjectRecord = {
      id: row.id,
      type: row.type,
      created: row.created,
      owner: { user: row.owner_user, project: row.owner_project },
      readers: (this.db.prepare('SELECT user FROM acl WHERE object_id = ? ORDER BY user').all(row.id) as { user: string }[]).map((a) => a.user),
      consumers: (
        this.db.prepare('SELECT service, resource_type, resource_id FROM consumers WHERE object_id = ? ORDER BY service, resource_type, resource_id').all(row.id) as {
          service: string;
          resource_type: string;
          resource_id: string;
        }[]
      ).map((c) => ({ service: c.service, resourceType: c.resource_type, resourceId: c.resource_id })),
    };
    if (row.algorithm !== null) r.algorithm = row.algorithm;
    if (row.bit_length !== null) r.bitLength = row.bit_length;
    if (row.name !== null) r.name = row.name;
    return r;
  }

  #exists(id: string): void {
    if (!this.db.prepare('SELECT 1 FROM objects WHERE id = ?').get(id)) throw new KeyNotFoundError(id);
  }

  async #unwrapRow(row: ObjectRow): Promise<SecretBytes> {
    const plain = await this.kek.unwrap(new Uint8Array(row.wrapped), objectAad(row.id, row.owner_project, row.owner_user, row.type));
    return new SecretBytes(plain);
  }

  find(id: string) {
    return this.lock(async () => {
      const row = this.#row(id);
      return row ? this.#record(row) : undefined;
    });
  }

  insert(objects: Array<{ record: ObjectRecord; secret: SecretBytes }>, audit: AuditEvent) {
    return this.lock(async () => {
      const wrapped: Uint8Array[] = [];
      for (const { record: r, secret } of objects) wrapped.push(await this.kek.wrap(secret.expose(), objectAad(r.id, r.owner.project, r.owner.user, r.type)));
      const ins = this.db.prepare('INSERT INTO objects (id, type, algorithm, bit_length, name, created, owner_user, owner_project, wrapped) VALUES (?,?,?,?,?,?,?,?,?)');
      this.tx(() => {
        objects.forEach(({ record: r }, i) => {
          ins.run(r.id, r.type, r.algorithm ?? null, r.bitLength ?? null, r.name ?? null, r.created, r.owner.user, r.owner.project, Buffer.from(wrapped[i]!));
        });
        this.appendAuditSync(audit);
      });
    });
  }

  readSecret(record: ObjectRecord) {
    return this.lock(async () => {
      const row = this.#row(record.id);
      if (!row) throw new KeyNotFoundError(record.id);
      return this.#unwrapRow(row);
    });
  }

  copy(source: ObjectRecord, target: ObjectRecord, audit: AuditEvent) {
    return this.lock(async () => {
      const row = this.#row(source.id);
      if (!row) throw new KeyNotFoundError(source.id);
      const secret = await this.#unwrapRow(row);
      let wrapped: Uint8Array;
      try {
        wrapped = await this.kek.wrap(secret.expose(), objectAad(target.id, target.owner.project, target.owner.user, target.type));
      } finally {
        secret.wipe();
      }
      this.tx(() => {
        this.#exists(source.id);
        this.db
          .prepare('INSERT INTO objects (id, type, algorithm, bit_length, name, created, owner_user, owner_project, wrapped) VALUES (?,?,?,?,?,?,?,?,?)')
          .run(target.id, target.type, target.algorithm ?? null, target.bitLength ?? null, target.name ?? null, target.created, target.owner.user, target.owner.project, Buffer.from(wrapped));
        this.appendAuditSync(audit);
      });
    });
  }

  remove(id: string, force: boolean, audit: AuditEvent) {
    return this.lock(async () => {
      this.tx(() => {
        this.#exists(id);
        const n = (this.db.prepare('SELECT COUNT(*) AS n FROM consumers WHERE object_id = ?').get(id) as { n: number }).n;
        if (n > 0 && !force) throw new InUseError(`Managed object ${id} has ${n} consumer(s); remove them or force.`);
        this.db.prepare('DELETE FROM consumers WHERE object_id = ?').run(id);
        this.db.prepare('DELETE FROM acl WHERE object_id = ?').run(id);
        this.db.prepare('DELETE FROM objects WHERE id = ?').run(id);
        this.appendAuditSync(audit);
      });
    });
  }

  #mutate(id: string, sql: string, params: unknown[], audit: AuditEvent) {
    return this.lock(async () => {
      this.tx(() => {
        this.#exists(id);
        this.db.prepare(sql).run(...params);
        this.appendAuditSync(audit);
      });
    });
  }

  addConsumer(id: string, c: Consumer, audit: AuditEvent) {
    return this.#mutate(id, 'INSERT OR IGNORE INTO consumers (object_id, service, resource_type, resource_id) VALUES (?,?,?,?)', [id, c.service, c.resourceType, c.resourceId], audit);
  }
  removeConsumer(id: string, c: Consumer, audit: AuditEvent) {
    return this.#mutate(id, 'DELETE FROM consumers WHERE object_id = ? AND service = ? AND resource_type = ? AND resource_id = ?', [id, c.service, c.resourceType, c.resourceId], audit);
  }
  addReader(id: string, user: string, audit: AuditEvent) {
    return this.#mutate(id, 'INSERT OR IGNORE INTO acl (object_id, user) VALUES (?,?)', [id, user], audit);
  }
  removeReader(id: string, user: string, audit: AuditEvent) {
    return this.#mutate(id, 'DELETE FROM acl WHERE object_id = ? AND user = ?', [id, user], audit);
  }

  list(project: string, type?: ObjectType) {
    return this.lock(async () => {
      const rows = (
        type === undefined
          ? this.db.prepare('SELECT * FROM objects WHERE owner_project = ? ORDER BY created, id').all(project)
          : this.db.prepare('SELECT * FROM objects WHERE owner_project = ? AND type = ? ORDER BY created, id').all(project, type)
      ) as ObjectRow[];
      return rows.map((r) => this.#record(r));
    });
  }

  appendAudit(event: AuditEvent) {
    return this.lock(async () => {
      this.tx(() => this.appendAuditSync(event));
    });
  }

  readAudit(project?: string) {
    return this.lock(async () => {
      const rows = (
        project === undefined
          ? this.db.prepare('SELECT * FROM audit ORDER BY seq').all()
          : this.db.prepare('SELECT * FROM audit WHERE project = ? ORDER BY seq').all(project)
      ) as AuditRow[];
      return rows.map((r) => {
        const e: AuditEntry = {
          seq: r.seq,
          time: r.time,
          user: r.user,
          project: r.project,
          roles: JSON.parse(r.roles) as string[],
          backend: r.backend,
          operation: r.operation,
          outcome: r.outcome,
          prevHash: r.prev_hash,
          hash: r.hash,
        };
        if (r.object_id !== null) e.objectId = r.object_id;
        if (r.code !== null) e.code = r.code;
        if (r.detail !== null) e.detail = r.detail;
        return e;
      });
    });
  }

  async close() {
    await this.lock(async () => {
      try {
        this.db.close();
      } finally {
        await this.kek.close();
      }
    });
  }
}

function readMeta(db: Database.Database): Map<string, string> {
  try {
    return new Map((db.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]));
  } catch (err) {
    throw new InvalidObjectError(`Not a brickcrypt keystore: ${(err as Error).message}`, { cause: err });
  }
}

async function kekFromOptions(meta: Map<string, string>, options: LocalKeystoreOptions, path: string): Promise<KekProvider> {
  const kind = meta.get('kek_kind');
  if (options.kek) {
    if (kind !== 'external') throw new InvalidArgumentError(`Keystore ${path} uses a ${kind} KEK, not an external provider.`);
    return options.kek;
  }
  if (options.kekPassphrase) {
    if (kind !== 'passphrase') throw new InvalidArgumentError(`Keystore ${path} uses a ${kind} KEK, not a passphrase.`);
    return deriveKekFromPassphrase(options.kekPassphrase, JSON.parse(meta.get('argon2')!) as Argon2idParams);
  }
  if (kind === 'file') return loadKekFile(options.kekFile ?? meta.get('kek_file')!);
  if (options.kekFile) throw new InvalidArgumentError(`Keystore ${path} uses a ${kind} KEK, not a key file.`);
  if (kind === 'passphrase') throw new InvalidArgumentError(`Keystore ${path} is protected by a passphrase: give --kek-passphrase-file.`);
  throw new InvalidArgumentError(`Keystore ${path} uses an external KEK (${meta.get('kek_id')}): open it with that provider.`);
}

async function verifyKek(kek: KekProvider, meta: Map<string, string>): Promise<void> {
  const check = meta.get('kek_check');
  if (!check) throw new InvalidObjectError('Keystore has no KEK check value.');
  try {
    const plain = await kek.unwrap(new Uint8Array(Buffer.from(check, 'base64')), CHECK_AAD);
    plain.fill(0);
  } catch (err) {
    if (err instanceof InvalidObjectError) throw new WrongPassphraseError('The key-encryption key does not open this keystore (wrong KEK file or passphrase).');
    throw err;
  }
}

async function makeCheck(kek: KekProvider): Promise<string> {
  const probe = randomBytes(32);
  try {
    return Buffer.from(await kek.wrap(probe, CHECK_AAD)).toString('base64');
  } finally {
    probe.fill(0);
  }
}

/**
 * The local keystore backend.
 *
 * @example
 * const km = await LocalKeyManager.init('/tmp/ks.db', { kekFile: '/tmp/ks.kek' });
 * const admin = { user: 'alice', project: 'demo', roles: ['admin'] };
 * const { id, key } = await km.createKey(admin);
 * key.wipe();
 * await km.close();
 */
export class LocalKeyManager extends PolicyKeyManager {
  readonly path: string;

  private constructor(path: string, store: SqliteStore) {
    super('local', store);
    this.path = path;
  }

  get #sqlite(): SqliteStore {
    return this.records as SqliteStore;
  }

  /** Creates a new keystore and its KEK (a 0600 key file unless a passphrase or provider is given). */
  static async init(path: string, options: LocalKeystoreOptions = {}): Promise<LocalKeyManager> {
    path = resolve(path);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    try {
      closeSync(openSync(path, 'wx', 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError(`Keystore ${path} already exists.`);
      throw new InvalidArgumentError(`Cannot create keystore ${path}: ${(err as Error).message}`);
    }
    let kek: KekProvider | undefined;
    let db: Database.Database | undefined;
    try {
      const meta: Array<[string, string]> = [['schema', SCHEMA_VERSION]];
      if (options.kek) {
        kek = options.kek;
        meta.push(['kek_kind', 'external']);
      } else if (options.kekPassphrase) {
        const params = newArgon2idParams(options.argon2);
        kek = await deriveKekFromPassphrase(options.kekPassphrase, params);
        meta.push(['kek_kind', 'passphrase'], ['argon2', JSON.stringify(params)]);
      } else {
        const file = resolve(options.kekFile ?? path.replace(/\.db$/, '') + '.kek');
        if (!existsSync(file)) await createKekFile(file);
        kek = await loadKekFile(file);
        meta.push(['kek_kind', 'file'], ['kek_file', file]);
      }
      meta.push(['kek_id', kek.id], ['kek_check', await makeCheck(kek)]);
      db = openDatabase(path, options.busyTimeoutMs ?? 15_000);
      const d = db;
      d.exec(SCHEMA);
      d.transaction(() => {
        for (const [k, v] of meta) d.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(k, v);
      })();
      return new LocalKeyManager(path, new SqliteStore(d, kek));
    } catch (err) {
      db?.close();
      if (kek && kek !== options.kek) await kek.close();
      const { rmSync } = await import('node:fs');
      for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true });
      throw err;
    }
  }

  /** Opens an existing keystore; the KEK is checked at once (WrongPassphraseError if it is not this keystore's). */
  static async open(path: string, options: LocalKeystoreOptions = {}): Promise<LocalKeyManager> {
    path = resolve(path);
    if (!existsSync(path)) throw new NotFoundError(`No keystore at ${path}: create one with 'brickcrypt key init'.`);
    const db = openDatabase(path, options.busyTimeoutMs ?? 15_000);
    let kek: KekProvider | undefined;
    try {
      const meta = readMeta(db);
      if (meta.get('schema') !== SCHEMA_VERSION) throw new InvalidObjectError(`Keystore ${path} has schema ${meta.get('schema') ?? 'none'}, expected ${SCHEMA_VERSION}.`);
      kek = await kekFromOptions(meta, options, path);
      await verifyKek(kek, meta);
      return new LocalKeyManager(path, new SqliteStore(db, kek));
    } catch (err) {
      db.close();
      if (kek && kek !== options.kek) await kek.close();
      throw err;
    }
  }

  /** Opens the keystore, creating it first when absent. */
  static async openOrInit(path: string, options: LocalKeystoreOptions = {}): Promise<LocalKeyManager> {
    return existsSync(resolve(path)) ? this.open(path, options) : this.init(path, options);
  }

  /** How the KEK is held (for `key init`/`rotate-kek` messages). */
  kekInfo(): { kind: string; id: string; file?: string } {
    const meta = readMeta(this.#sqlite.db);
    const info: { kind: string; id: string; file?: string } = { kind: meta.get('kek_kind') ?? '?', id: meta.get('kek_id') ?? '?' };
    const file = meta.get('kek_file');
    if (file !== undefined && info.kind === 'file') info.file = file;
    return info;
  }

  /**
   * Re-wraps every secret under a new KEK in one transaction (role admin): either all
   * objects move to the new KEK, or (on any failure) none does and the old KEK stays valid.
   *
   * @example
   * await km.rotateKek(admin, { kind: 'file', file: '/tmp/new.kek' });
   */
  async rotateKek(caller: CallerIdentity, source: KekSource): Promise<void> {
    await this.authorize(caller, 'rotateKek', undefined, source.kind);
    const store = this.#sqlite;
    let newKek: KekProvider | undefined;
    try {
      const meta: Array<[string, string]> = [['kek_kind', source.kind]];
      if (source.kind === 'file') {
        const file = resolve(source.file);
        if (!existsSync(file)) await createKekFile(file);
        newKek = await loadKekFile(file);
        meta.push(['kek_file', file]);
      } else if (source.kind === 'passphrase') {
        const params = newArgon2idParams(source.argon2);
        newKek = await deriveKekFromPassphrase(source.passphrase, params);
        meta.push(['argon2', JSON.stringify(params)]);
      } else {
        newKek = source.provider;
      }
      meta.push(['kek_id', newKek.id], ['kek_check', await makeCheck(newKek)]);
      const kek = newKek;
      await store.lock(async () => {
        const db = store.db;
        db.exec('BEGIN IMMEDIATE');
        try {
          const rows = db.prepare('SELECT id, type, owner_user, owner_project, wrapped FROM objects').all() as ObjectRow[];
          const update = db.prepare('UPDATE objects SET wrapped = ? WHERE id = ?');
          for (const row of rows) {
            const aad = objectAad(row.id, row.owner_project, row.owner_user, row.type);
            const plain = await store.kek.unwrap(new Uint8Array(row.wrapped), aad);
            try {
              update.run(Buffer.from(await kek.wrap(plain, aad)), row.id);
            } finally {
              plain.fill(0);
            }
          }
          db.prepare("DELETE FROM meta WHERE key IN ('kek_file', 'argon2')").run();
          const put = db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)');
          for (const [k, v] of meta) put.run(k, v);
          store.appendAuditSync(this.event(caller, 'rotateKek', 'allowed', undefined, { detail: `${rows.length} object(s) to ${kek.id}` }));
          db.exec('COMMIT');
        } catch (err) {
          if (db.inTransaction) db.exec('ROLLBACK');
          throw err;
        }
        const old = store.kek;
        store.kek = kek;
        if (old !== kek) await old.close();
      });
    } catch (err) {
      if (newKek && source.kind !== 'external') await newKek.close();
      return this.fail(caller, 'rotateKek', undefined, err, source.kind);
    }
  }
}
