/**
 * The service's embedded state: volumes, jobs (with their checkpoints) and Idempotency-Key
 * replies in one SQLite database under the state directory (better-sqlite3, WAL journal).
 *
 * Every state change is one statement or one transaction, so a process killed at any point
 * leaves rows that say exactly what was committed: a job's `checkpoint` is written only after
 * the bytes it describes were flushed to the volume file.
 */
import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import type { CallerIdentity } from '../keys/key-manager.js';

export type VolumeStatus = 'creating' | 'available' | 'in-use' | 'maintenance' | 'error' | 'deleting';
export type VolumeFormat = 'luks1' | 'luks2' | 'raw';
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export const ACTIVE_JOB_STATES: readonly JobState[] = ['queued', 'running'];

export interface VolumeRow {
  id: string;
  name: string;
  project: string;
  user: string;
  status: VolumeStatus;
  /** Usable (plaintext) bytes. */
  size: number;
  format: VolumeFormat;
  path: string;
  encryption_key_id: string | null;
  /** The service created the key for this volume (and deletes it with the volume). */
  key_owned: boolean;
  cipher: string | null;
  /** Attachment details while `in-use` (NBD URI, TLS-PSK identity). */
  attachment: Record<string, unknown> | null;
  created_at: string;
  updated_at: string;
}

export interface JobProgress {
  bytes_done: number;
  bytes_total: number;
  /** Bytes per second since the job (re)started. */
  rate: number;
  /** Seconds left at `rate`, null when unknown. */
  eta_seconds: number | null;
}

export interface JobRow {
  id: string;
  type: string;
  state: JobState;
  volume_id: string | null;
  project: string;
  caller: CallerIdentity;
  params: Record<string, unknown>;
  checkpoint: Record<string, unknown> | null;
  progress: JobProgress;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  /** Process id of the runner that owns a running job (SQLite). */
  owner_pid: number | null;
  /** The worker that owns a running job (PostgreSQL: host:pid:id). */
  owner?: string | null;
  attempts: number;
  cancel_requested: boolean;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT NOT NULL, user TEXT NOT NULL,
  status TEXT NOT NULL, size INTEGER NOT NULL, format TEXT NOT NULL, path TEXT NOT NULL,
  encryption_key_id TEXT, key_owned INTEGER NOT NULL DEFAULT 0, cipher TEXT, attachment TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS volumes_project ON volumes(project);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL, volume_id TEXT, project TEXT NOT NULL,
  caller TEXT NOT NULL, params TEXT NOT NULL, checkpoint TEXT, progress TEXT NOT NULL,
  result TEXT, error TEXT, owner_pid INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_volume ON jobs(volume_id, state);
CREATE TABLE IF NOT EXISTS idempotency (
  project TEXT NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
  created_at TEXT NOT NULL, PRIMARY KEY (project, key)
);
`;

const now = () => new Date().toISOString();
const json = (v: unknown) => (v === null || v === undefined ? null : JSON.stringify(v));
const parse = <T>(v: unknown): T => (v === null || v === undefined ? (null as T) : (JSON.parse(String(v)) as T));

function volumeFrom(r: Record<string, unknown>): VolumeRow {
  return {
    id: String(r.id),
    name: String(r.name),
    project: String(r.project),
    user: String(r.user),
    status: r.status as VolumeStatus,
    size: Number(r.size),
    format: r.format as VolumeFormat,
    path: String(r.path),
    encryption_key_id: (r.encryption_key_id as string | null) ?? null,
    key_owned: Number(r.key_owned) === 1,
    cipher: (r.cipher as string | null) ?? null,
    attachment: parse(r.attachment),
    created_at: String(r.created_at),
    updated_at: String(r.updated_at),
  };
}

function jobFrom(r: Record<string, unknown>): JobRow {
  return {
    id: String(r.id),
    type: String(r.type),
    state: r.state as JobState,
    volume_id: (r.volume_id as string | null) ?? null,
    project: String(r.project),
    caller: parse(r.caller),
    params: parse(r.params),
    checkpoint: parse(r.checkpoint),
    progress: parse(r.progress),
    result: parse(r.result),
    error: parse(r.error),
    owner_pid: r.owner_pid === null ? null : Number(r.owner_pid),
    attempts: Number(r.attempts),
    cancel_requested: Number(r.cancel_requested) === 1,
    created_at: String(r.created_at),
    started_at: (r.started_at as string | null) ?? null,
    finished_at: (r.finished_at as string | null) ?? null,
  };
}

const EMPTY_PROGRESS: JobProgress = { bytes_done: 0, bytes_total: 0, rate: 0, eta_seconds: null };

export class StateDb {
  readonly db: Database.Database;
  /** Prepared once per SQL text: preparing costs more than running these small statements. */
  readonly #statements = new Map<string, Database.Statement>();

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    // Checkpoints must survive a killed process (WAL + NORMAL is durable against that; FULL also against power loss).
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 15000');
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.#statements.clear();
    this.db.close();
  }

  /** The prepared statement of `sql`, from the cache. */
  prepare(sql: string): Database.Statement {
    let st = this.#statements.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.#statements.set(sql, st);
    }
    return st;
  }

  /**
   * Runs `fn` (one write) with \`synchronous = NORMAL\`: committed at once for other connections
   * and against a killed process (the WAL is written before the statement returns), but not
   * fsynced here, so the event loop does not wait for the disk. A power cut may lose such a write
   * (never reorder it: the WAL is sequential, and the next FULL commit, e.g. a job's end, makes
   * it durable too). Used for progress and copy checkpoints: a lost one makes a resumed copy start
   * from an earlier committed offset, which is safe.
   */
  #relaxed<T>(fn: () => T): T {
    if (this.db.inTransaction) return fn(); // the enclosing transaction commits as it is set up
    this.db.pragma('synchronous = NORMAL');
    try {
      return fn();
    } finally {
      this.db.pragma('synchronous = FULL');
    }
  }

  // --- volumes ---

  insertVolume(v: Omit<VolumeRow, 'created_at' | 'updated_at' | 'attachment'> & { attachment?: null }): VolumeRow {
    const t = now();
    this
      .prepare(
        `INSERT INTO volumes (id,name,project,user,status,size,format,path,encryption_key_id,key_owned,cipher,attachment,created_at,updated_at)
         VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,?,?)`,
      )
      .run(v.id, v.name, v.project, v.user, v.status, v.size, v.format, v.path, v.encryption_key_id, v.key_owned ? 1 : 0, v.cipher, t, t);
    return this.volume(v.id)!;
  }

  volume(id: string): VolumeRow | undefined {
    const r = this.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    return r ? volumeFrom(r) : undefined;
  }

  volumes(project?: string): VolumeRow[] {
    const rows = (project === undefined
      ? this.prepare('SELECT * FROM volumes ORDER BY created_at, id').all()
      : this.prepare('SELECT * FROM volumes WHERE project = ? ORDER BY created_at, id').all(project)) as Record<string, unknown>[];
    return rows.map(volumeFrom);
  }

  updateVolume(id: string, fields: Partial<Pick<VolumeRow, 'status' | 'size' | 'format' | 'path' | 'encryption_key_id' | 'key_owned' | 'cipher' | 'attachment'>>): void {
    const sets: string[] = [];
    const values: unknown[] = [];
    for (const [k, v] of Object.entries(fields)) {
      sets.push(`${k} = ?`);
      values.push(k === 'attachment' ? json(v) : k === 'key_owned' ? (v ? 1 : 0) : v);
    }
    sets.push('updated_at = ?');
    values.push(now(), id);
    this.prepare(`UPDATE volumes SET ${sets.join(', ')} WHERE id = ?`).run(...values);
  }

  deleteVolume(id: string): void {
    this.prepare('DELETE FROM volumes WHERE id = ?').run(id);
  }

  // --- jobs ---

  insertJob(j: { type: string; volume_id: string | null; caller: CallerIdentity; params: Record<string, unknown> }): JobRow {
    const id = randomUUID();
    const seq = (this.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM jobs').get() as { n: number }).n;
    this
      .prepare(
        `INSERT INTO jobs (id,type,state,volume_id,project,caller,params,checkpoint,progress,created_at,seq)
         VALUES (?,?,'queued',?,?,?,?,NULL,?,?,?)`,
      )
      .run(id, j.type, j.volume_id, j.caller.project, JSON.stringify(j.caller), JSON.stringify(j.params), JSON.stringify(EMPTY_PROGRESS), now(), seq);
    return this.job(id)!;
  }

  job(id: string): JobRow | undefined {
    const r = this.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    return r ? jobFrom(r) : undefined;
  }

  jobs(options: { project?: string; volumeId?: string; states?: readonly JobState[] } = {}): JobRow[] {
    const where: string[] = [];
    const values: unknown[] = [];
    if (options.project !== undefined) {
      where.push('project = ?');
      values.push(options.project);
    }
    if (options.volumeId !== undefined) {
      where.push('volume_id = ?');
      values.push(options.volumeId);
    }
    if (options.states) {
      where.push(`state IN (${options.states.map(() => '?').join(',')})`);
      values.push(...options.states);
    }
    const sql = `SELECT * FROM jobs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq`;
    return (this.prepare(sql).all(...values) as Record<string, unknown>[]).map(jobFrom);
  }

  countJobs(states: readonly JobState[]): number {
    return (this.prepare(`SELECT COUNT(*) AS n FROM jobs WHERE state IN (${states.map(() => '?').join(',')})`).get(...states) as { n: number }).n;
  }

  /**
   * Takes the oldest queued job for process `pid`, atomically (the UPDATE only matches a job
   * still queued, so two runners never take the same one). `exclude` lists volumes already busy here.
   */
  claimNext(pid: number): JobRow | undefined {
    return this.db.transaction(() => {
      const r = this
        .prepare(
          `SELECT id FROM jobs j WHERE state = 'queued' AND NOT EXISTS (
             SELECT 1 FROM jobs o WHERE o.state = 'running' AND o.volume_id IS NOT NULL AND o.volume_id = j.volume_id)
           ORDER BY seq LIMIT 1`,
        )
        .get() as { id: string } | undefined;
      if (!r) return undefined;
      const changed = this
        .prepare(`UPDATE jobs SET state = 'running', owner_pid = ?, attempts = attempts + 1, started_at = COALESCE(started_at, ?) WHERE id = ? AND state = 'queued'`)
        .run(pid, now(), r.id).changes;
      return changed === 1 ? this.job(r.id) : undefined;
    })();
  }

  /** Running jobs whose owner is not alive any more go back to the queue with their checkpoint. */
  requeueOrphans(isAlive: (pid: number) => boolean): JobRow[] {
    const orphans = this.jobs({ states: ['running'] }).filter((j) => j.owner_pid === null || !isAlive(j.owner_pid));
    const stmt = this.prepare(`UPDATE jobs SET state = 'queued', owner_pid = NULL WHERE id = ? AND state = 'running'`);
    for (const j of orphans) stmt.run(j.id);
    return orphans;
  }

  saveCheckpoint(id: string, checkpoint: Record<string, unknown>, progress: JobProgress): void {
    const cp = JSON.stringify(checkpoint);
    const pr = JSON.stringify(progress);
    this.#relaxed(() => this.prepare('UPDATE jobs SET checkpoint = ?, progress = ? WHERE id = ?').run(cp, pr, id));
  }

  saveProgress(id: string, progress: JobProgress): void {
    const pr = JSON.stringify(progress);
    this.#relaxed(() => this.prepare('UPDATE jobs SET progress = ? WHERE id = ?').run(pr, id));
  }

  finishJob(id: string, state: 'succeeded' | 'failed' | 'cancelled', fields: { result?: Record<string, unknown> | null; error?: { code: string; message: string } | null }): void {
    this
      .prepare('UPDATE jobs SET state = ?, result = ?, error = ?, owner_pid = NULL, finished_at = ? WHERE id = ?')
      .run(state, json(fields.result ?? null), json(fields.error ?? null), now(), id);
  }

  requestCancel(id: string): void {
    this.prepare('UPDATE jobs SET cancel_requested = 1 WHERE id = ?').run(id);
  }

  // --- idempotency ---

  idempotent(project: string, key: string): { request: string; status: number; body: string } | undefined {
    return this.prepare('SELECT request, status, body FROM idempotency WHERE project = ? AND key = ?').get(project, key) as
      | { request: string; status: number; body: string }
      | undefined;
  }

  rememberIdempotent(project: string, key: string, request: string, status: number, body: string): void {
    this.prepare('INSERT OR IGNORE INTO idempotency (project,key,request,status,body,created_at) VALUES (?,?,?,?,?,?)').run(project, key, request, status, body, now());
  }

  /** Runs `fn` in one transaction (all of its statements commit, or none). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
}
