/**
 * The service's state in PostgreSQL (`serve --database postgresql://...`): the same volumes,
 * jobs (with checkpoints) and Idempotency-Key replies as the SQLite state, in schema
 * `brickcrypt`, shared by every service process of a deployment; plus the worker registry
 * (heartbeats) and per-volume advisory locks.
 *
 * Exclusion: a worker runs a job only while it holds the session-level advisory lock of the
 * job's volume (`pg_try_advisory_lock(BRICKCRYPT_LOCK_CLASS, hashtext(volume id))`) on a
 * connection of its own. PostgreSQL releases it when that session ends — a killed worker's
 * connection closes with it — so a job taken over after a heartbeat timeout cannot run while
 * its old worker still holds the volume.
 *
 * Every change of a job row is announced with `NOTIFY brickcrypt_jobs, '<job id>'`, so the
 * API processes stream progress (SSE) of jobs that run in other processes.
 */
import pg from 'pg';
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { BackendUnavailableError, InvalidArgumentError } from '../errors.js';
import type { JobProgress, JobRow, JobState, VolumeRow } from './state-db.js';
import type { NewJob, StateStore, SubmitOptions, SubmitResult, VolumeFields } from './state-store.js';

/** The first key of the service's advisory locks ('brkc'); the second is hashtext(volume id). */
export const BRICKCRYPT_LOCK_CLASS = 0x62726b63;
export const JOBS_CHANNEL = 'brickcrypt_jobs';
const SCHEMA_LOCK = 0x62726b00;

const SCHEMA = `
CREATE SCHEMA IF NOT EXISTS brickcrypt;
CREATE TABLE IF NOT EXISTS brickcrypt.volumes (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT NOT NULL, "user" TEXT NOT NULL,
  status TEXT NOT NULL, size BIGINT NOT NULL, format TEXT NOT NULL, path TEXT NOT NULL,
  encryption_key_id TEXT, key_owned BOOLEAN NOT NULL DEFAULT false, cipher TEXT, attachment JSONB,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS volumes_project ON brickcrypt.volumes(project);
CREATE TABLE IF NOT EXISTS brickcrypt.jobs (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL, volume_id TEXT, project TEXT NOT NULL,
  caller JSONB NOT NULL, params JSONB NOT NULL, checkpoint JSONB, progress JSONB NOT NULL,
  result JSONB, error JSONB, owner TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, seq BIGSERIAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON brickcrypt.jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_volume ON brickcrypt.jobs(volume_id, state);
CREATE TABLE IF NOT EXISTS brickcrypt.idempotency (
  project TEXT NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
  created_at TEXT NOT NULL, PRIMARY KEY (project, key)
);
CREATE TABLE IF NOT EXISTS brickcrypt.workers (
  id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(), heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
`;

const now = () => new Date().toISOString();
const EMPTY_PROGRESS: JobProgress = { bytes_done: 0, bytes_total: 0, rate: 0, eta_seconds: null };

function volumeFrom(r: Record<string, unknown>): VolumeRow {
  return {
    id: String(r.id),
    name: String(r.name),
    project: String(r.project),
    user: String(r.user),
    status: r.status as VolumeRow['status'],
    size: Number(r.size),
    format: r.format as VolumeRow['format'],
    path: String(r.path),
    encryption_key_id: (r.encryption_key_id as string | null) ?? null,
    key_owned: r.key_owned === true,
    cipher: (r.cipher as string | null) ?? null,
    attachment: (r.attachment as Record<string, unknown> | null) ?? null,
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
    caller: r.caller as JobRow['caller'],
    params: r.params as Record<string, unknown>,
    checkpoint: (r.checkpoint as Record<string, unknown> | null) ?? null,
    progress: r.progress as JobProgress,
    result: (r.result as Record<string, unknown> | null) ?? null,
    error: (r.error as JobRow['error']) ?? null,
    owner_pid: null,
    owner: (r.owner as string | null) ?? null,
    attempts: Number(r.attempts),
    cancel_requested: r.cancel_requested === true,
    created_at: String(r.created_at),
    started_at: (r.started_at as string | null) ?? null,
    finished_at: (r.finished_at as string | null) ?? null,
  };
}

/** A query runner bound to one connection (pg-boss's `Db` shape: jobs sent inside our transaction). */
export interface SqlConnection {
  executeSql(text: string, values: unknown[]): Promise<{ rows: any[] }>;
}

export interface VolumeAdvisoryLock {
  release(): Promise<void>;
  /** Calls `onLost` if the lock's session breaks (PostgreSQL has released the lock then). */
  onLost(onLost: () => void): void;
}

export class PostgresStateStore implements StateStore {
  readonly kind = 'postgresql' as const;
  #listener: pg.Client | undefined;
  #closing = false;

  private constructor(
    readonly url: string,
    readonly pool: pg.Pool,
  ) {}

  /** Connects and creates the schema if needed (serialized by an advisory lock, so concurrent starts are safe). */
  static async connect(url: string, options: { maxConnections?: number } = {}): Promise<PostgresStateStore> {
    if (!/^postgres(ql)?:\/\//.test(url)) throw new InvalidArgumentError(`--database ${url}: use postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE.`);
    // Bounded waits: a worker that cannot reach the database must notice (and fence itself).
    const pool = new pg.Pool({ connectionString: url, max: options.maxConnections ?? 20, application_name: 'brickcrypt-serve', connectionTimeoutMillis: 5000, keepAlive: true });
    // An idle client's connection that drops must not crash the process.
    pool.on('error', () => undefined);
    const store = new PostgresStateStore(url, pool);
    try {
      await store.#transaction(async (c) => {
        await c.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
        await c.query(SCHEMA);
      });
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw new BackendUnavailableError(`PostgreSQL at ${redact(url)}: ${(err as Error).message}`, { cause: err });
    }
    return store;
  }

  async #query(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
    return (await this.pool.query(text, values)).rows as Record<string, unknown>[];
  }

  async #transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const r = await fn(c);
      await c.query('COMMIT');
      return r;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
  }

  async #notify(id: string): Promise<void> {
    await this.pool.query('SELECT pg_notify($1, $2)', [JOBS_CHANNEL, id]);
  }

  // --- volumes ---

  async volume(id: string) {
    const r = await this.#query('SELECT * FROM brickcrypt.volumes WHERE id = $1', [id]);
    return r[0] ? volumeFrom(r[0]) : undefined;
  }

  async volumes(project?: string) {
    const rows = project === undefined
      ? await this.#query('SELECT * FROM brickcrypt.volumes ORDER BY created_at, id')
      : await this.#query('SELECT * FROM brickcrypt.volumes WHERE project = $1 ORDER BY created_at, id', [project]);
    return rows.map(volumeFrom);
  }

  async updateVolume(id: string, fields: VolumeFields, c: { query: pg.Pool['query'] } = this.pool) {
    const sets: string[] = [];
    const values: unknown[] = [];
    for (const [k, v] of Object.entries(fields)) {
      values.push(k === 'attachment' ? (v === null ? null : JSON.stringify(v)) : v);
      sets.push(`${k} = $${values.length}`);
    }
    values.push(now());
    sets.push(`updated_at = $${values.length}`);
    values.push(id);
    await c.query(`UPDATE brickcrypt.volumes SET ${sets.join(', ')} WHERE id = $${values.length}`, values);
  }

  async deleteVolume(id: string) {
    await this.#query('DELETE FROM brickcrypt.volumes WHERE id = $1', [id]);
  }

  // --- jobs ---

  async submitJob(job: NewJob, options: SubmitOptions): Promise<SubmitResult> {
    const r = await this.#transaction(async (c): Promise<SubmitResult> => {
      const active = Number((await c.query(`SELECT COUNT(*) AS n FROM brickcrypt.jobs WHERE state IN ('queued', 'running')`)).rows[0].n);
      if (active >= options.maxActive) return { full: true, active };
      const id = randomUUID();
      const inserted = await c.query(
        `INSERT INTO brickcrypt.jobs (id, type, state, volume_id, project, caller, params, progress, created_at)
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8) RETURNING *`,
        [id, job.type, job.volume_id, job.caller.project, JSON.stringify(job.caller), JSON.stringify(job.params), JSON.stringify(EMPTY_PROGRESS), now()],
      );
      const v = options.insertVolume;
      if (v) {
        const t = now();
        await c.query(
          `INSERT INTO brickcrypt.volumes (id, name, project, "user", status, size, format, path, encryption_key_id, key_owned, cipher, attachment, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $12)`,
          [v.id, v.name, v.project, v.user, v.status, v.size, v.format, v.path, v.encryption_key_id, v.key_owned, v.cipher, t],
        );
      }
      if (options.volumeStatus && job.volume_id) await this.updateVolume(job.volume_id, { status: options.volumeStatus }, c);
      const row = jobFrom(inserted.rows[0]);
      await options.onInserted?.(row, { executeSql: (text: string, values: unknown[]) => c.query(text, values) } satisfies SqlConnection);
      const vol = job.volume_id ? (await c.query('SELECT * FROM brickcrypt.volumes WHERE id = $1', [job.volume_id])).rows[0] : undefined;
      return { full: false, job: row, volume: vol ? volumeFrom(vol) : undefined };
    });
    if (!r.full) await this.#notify(r.job.id);
    return r;
  }

  async job(id: string) {
    const r = await this.#query('SELECT * FROM brickcrypt.jobs WHERE id = $1', [id]);
    return r[0] ? jobFrom(r[0]) : undefined;
  }

  async jobs(options: { project?: string; volumeId?: string; states?: readonly JobState[] } = {}) {
    const where: string[] = [];
    const values: unknown[] = [];
    if (options.project !== undefined) {
      values.push(options.project);
      where.push(`project = $${values.length}`);
    }
    if (options.volumeId !== undefined) {
      values.push(options.volumeId);
      where.push(`volume_id = $${values.length}`);
    }
    if (options.states) {
      values.push([...options.states]);
      where.push(`state = ANY($${values.length})`);
    }
    return (await this.#query(`SELECT * FROM brickcrypt.jobs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq`, values)).map(jobFrom);
  }

  async countJobs(states: readonly JobState[]) {
    return Number((await this.#query('SELECT COUNT(*) AS n FROM brickcrypt.jobs WHERE state = ANY($1)', [[...states]]))[0]!.n);
  }

  async claimJob(id: string, owner: string) {
    const r = await this.#query(
      `UPDATE brickcrypt.jobs SET state = 'running', owner = $2, attempts = attempts + 1, started_at = COALESCE(started_at, $3)
       WHERE id = $1 AND state = 'queued' RETURNING *`,
      [id, owner, now()],
    );
    if (!r[0]) return undefined;
    await this.#notify(id);
    return jobFrom(r[0]);
  }

  async requeue(id: string, owner: string) {
    const r = await this.#query(`UPDATE brickcrypt.jobs SET state = 'queued', owner = NULL WHERE id = $1 AND state = 'running' AND owner = $2 RETURNING id`, [id, owner]);
    if (r.length) await this.#notify(id);
    return r.length === 1;
  }

  async saveCheckpoint(id: string, checkpoint: Record<string, unknown>, progress: JobProgress) {
    await this.#query('UPDATE brickcrypt.jobs SET checkpoint = $2, progress = $3 WHERE id = $1', [id, JSON.stringify(checkpoint), JSON.stringify(progress)]);
    await this.#notify(id);
  }

  async saveProgress(id: string, progress: JobProgress) {
    await this.#query('UPDATE brickcrypt.jobs SET progress = $2 WHERE id = $1', [id, JSON.stringify(progress)]);
    await this.#notify(id);
  }

  async finishJob(id: string, state: 'succeeded' | 'failed' | 'cancelled', fields: { result?: Record<string, unknown> | null; error?: { code: string; message: string } | null }) {
    await this.#query('UPDATE brickcrypt.jobs SET state = $2, result = $3, error = $4, owner = NULL, finished_at = $5 WHERE id = $1', [
      id,
      state,
      fields.result ? JSON.stringify(fields.result) : null,
      fields.error ? JSON.stringify(fields.error) : null,
      now(),
    ]);
    await this.#notify(id);
  }

  async requestCancel(id: string) {
    await this.#query('UPDATE brickcrypt.jobs SET cancel_requested = true WHERE id = $1', [id]);
    await this.#notify(id);
  }

  // --- idempotency ---

  async idempotent(project: string, key: string) {
    const r = await this.#query('SELECT request, status, body FROM brickcrypt.idempotency WHERE project = $1 AND key = $2', [project, key]);
    return r[0] ? { request: String(r[0].request), status: Number(r[0].status), body: String(r[0].body) } : undefined;
  }

  async rememberIdempotent(project: string, key: string, request: string, status: number, body: string) {
    await this.#query('INSERT INTO brickcrypt.idempotency (project, key, request, status, body, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING', [
      project,
      key,
      request,
      status,
      body,
      now(),
    ]);
  }

  // --- workers, heartbeats, advisory locks, change notifications ---

  /** A new worker id (host:pid:random) registered with a fresh heartbeat. */
  async registerWorker(): Promise<string> {
    const id = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    await this.#query('INSERT INTO brickcrypt.workers (id, host, pid) VALUES ($1, $2, $3)', [id, hostname(), process.pid]);
    return id;
  }

  async heartbeat(worker: string): Promise<void> {
    // A worker that was declared dead and comes back registers again (its old jobs are gone to others).
    await this.#query(
      'INSERT INTO brickcrypt.workers (id, host, pid) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()',
      [worker, hostname(), process.pid],
    );
  }

  /** Whether `worker` is registered with a heartbeat newer than `timeoutSeconds`. */
  async workerAlive(worker: string, timeoutSeconds: number): Promise<boolean> {
    const rows = await this.#query('SELECT 1 FROM brickcrypt.workers WHERE id = $1 AND heartbeat_at >= now() - make_interval(secs => $2)', [worker, timeoutSeconds]);
    return rows.length > 0;
  }

  async removeWorker(worker: string): Promise<void> {
    await this.#query('DELETE FROM brickcrypt.workers WHERE id = $1', [worker]);
  }

  /**
   * Running jobs whose worker has not sent a heartbeat for `timeoutSeconds` (or is not
   * registered) go back to the queue; returns them. Dead workers' rows are removed.
   */
  async requeueAbandoned(timeoutSeconds: number): Promise<JobRow[]> {
    const rows = await this.#transaction(async (c) => {
      const r = await c.query(
        `UPDATE brickcrypt.jobs j SET state = 'queued', owner = NULL
         WHERE j.state = 'running' AND NOT EXISTS (
           SELECT 1 FROM brickcrypt.workers w WHERE w.id = j.owner AND w.heartbeat_at >= now() - make_interval(secs => $1))
         RETURNING j.*`,
        [timeoutSeconds],
      );
      await c.query('DELETE FROM brickcrypt.workers WHERE heartbeat_at < now() - make_interval(secs => $1)', [timeoutSeconds]);
      return r.rows as Record<string, unknown>[];
    });
    for (const r of rows) await this.#notify(String(r.id));
    return rows.map(jobFrom);
  }

  /** Ids of `worker`'s running jobs whose cancellation was requested (by any process). */
  async cancelRequested(worker: string): Promise<string[]> {
    return (await this.#query(`SELECT id FROM brickcrypt.jobs WHERE owner = $1 AND state = 'running' AND cancel_requested`, [worker])).map((r) => String(r.id));
  }

  /** The volume's advisory lock on a connection of its own, or undefined when another session holds it. */
  async tryLockVolume(key: string): Promise<VolumeAdvisoryLock | undefined> {
    const c = await this.pool.connect();
    try {
      const got = (await c.query('SELECT pg_try_advisory_lock($1, hashtext($2)) AS ok', [BRICKCRYPT_LOCK_CLASS, key])).rows[0].ok === true;
      if (!got) {
        c.release();
        return undefined;
      }
    } catch (err) {
      c.release(true);
      throw err;
    }
    let released = false;
    let lost: (() => void) | undefined;
    const broken = () => {
      if (!released) lost?.();
    };
    c.on('error', broken);
    c.on('end', broken);
    return {
      onLost: (fn) => {
        lost = fn;
      },
      release: async () => {
        if (released) return;
        released = true;
        c.off('error', broken);
        c.off('end', broken);
        try {
          await c.query('SELECT pg_advisory_unlock($1, hashtext($2))', [BRICKCRYPT_LOCK_CLASS, key]);
          c.release();
        } catch {
          c.release(true); // a broken session: closing it releases the lock
        }
      },
    };
  }

  /**
   * Calls `onChange(jobId)` for every job change any process announces. A dropped listening
   * connection is made again (changes meanwhile are missed; clients poll `GET /v1/jobs/{id}`).
   */
  async watch(onChange: (jobId: string) => void, log: (m: string) => void = () => {}): Promise<void> {
    const listen = async (): Promise<void> => {
      const client = new pg.Client({ connectionString: this.url, application_name: 'brickcrypt-serve-listen', keepAlive: true });
      let again = false;
      const reconnect = () => {
        if (again || this.#closing) return;
        again = true;
        log('the job-change listener lost its connection; connecting again');
        client.end().catch(() => undefined);
        retry();
      };
      client.on('error', reconnect);
      client.on('end', reconnect);
      client.on('notification', (n) => {
        if (n.channel === JOBS_CHANNEL && n.payload) onChange(n.payload);
      });
      await client.connect();
      await client.query(`LISTEN ${JOBS_CHANNEL}`);
      this.#listener = client;
    };
    const retry = (): void => {
      setTimeout(() => {
        if (this.#closing) return;
        listen().catch((err: Error) => {
          log(`job-change listener: ${err.message}`);
          retry();
        });
      }, 1000).unref();
    };
    await listen();
  }

  async close() {
    this.#closing = true;
    await this.#listener?.end().catch(() => undefined);
    await this.pool.end();
  }
}

/** The URL without its password, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'the given URL';
  }
}
