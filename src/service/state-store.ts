/**
 * The service's state behind one asynchronous interface with two implementations: the
 * embedded SQLite database (`SqliteStateStore` over `StateDb`, the default) and PostgreSQL
 * (`PostgresStateStore`, src/service/postgres-store.ts, for `serve --database`). The volume
 * service, the job runner and the HTTP routes use only this interface, so the service logic is
 * the same on both.
 *
 * Multi-row changes that must be atomic are single methods here (`submitJob`, `claimJob`)
 * rather than a general transaction, so each implementation makes them one transaction of its
 * own kind (a synchronous better-sqlite3 transaction; BEGIN ... COMMIT on one PostgreSQL
 * connection).
 */
import type { CallerIdentity } from '../keys/key-manager.js';
import { StateDb, type JobProgress, type JobRow, type JobState, type VolumeRow } from './state-db.js';

export type NewVolume = Omit<VolumeRow, 'created_at' | 'updated_at' | 'attachment'> & { attachment?: null };
export type VolumeFields = Partial<Pick<VolumeRow, 'status' | 'size' | 'format' | 'path' | 'encryption_key_id' | 'key_owned' | 'cipher' | 'attachment'>>;
export interface NewJob {
  type: string;
  volume_id: string | null;
  caller: CallerIdentity;
  params: Record<string, unknown>;
}

export interface SubmitOptions {
  /** Refuse (return `full`) when this many jobs are queued or running already. */
  maxActive: number;
  /** A volume row inserted with the job (creation). */
  insertVolume?: NewVolume;
  /** The job's volume gets this status with the job (an action). */
  volumeStatus?: VolumeRow['status'];
  /**
   * Runs inside the same transaction after the job row is inserted (PostgreSQL: the job-queue
   * entry is sent through the transaction's connection, so a job row never exists without it).
   */
  onInserted?: (job: JobRow, tx: unknown) => Promise<void>;
}

export type SubmitResult = { full: true; active: number } | { full: false; job: JobRow; volume: VolumeRow | undefined };

export interface StateStore {
  readonly kind: 'sqlite' | 'postgresql';

  volume(id: string): Promise<VolumeRow | undefined>;
  volumes(project?: string): Promise<VolumeRow[]>;
  updateVolume(id: string, fields: VolumeFields): Promise<void>;
  deleteVolume(id: string): Promise<void>;

  /** Inserts a job (and its volume row or volume status) atomically, unless the queue is full. */
  submitJob(job: NewJob, options: SubmitOptions): Promise<SubmitResult>;
  job(id: string): Promise<JobRow | undefined>;
  jobs(options?: { project?: string; volumeId?: string; states?: readonly JobState[] }): Promise<JobRow[]>;
  countJobs(states: readonly JobState[]): Promise<number>;
  /** Marks a queued job running for `owner` (only if it is still queued); undefined when someone else took it. */
  claimJob(id: string, owner: string): Promise<JobRow | undefined>;
  /** Running jobs of `owner` back to queued (their checkpoints stay). */
  requeue(id: string, owner: string): Promise<boolean>;
  saveCheckpoint(id: string, checkpoint: Record<string, unknown>, progress: JobProgress): Promise<void>;
  saveProgress(id: string, progress: JobProgress): Promise<void>;
  finishJob(id: string, state: 'succeeded' | 'failed' | 'cancelled', fields: { result?: Record<string, unknown> | null; error?: { code: string; message: string } | null }): Promise<void>;
  requestCancel(id: string): Promise<void>;

  idempotent(project: string, key: string): Promise<{ request: string; status: number; body: string } | undefined>;
  rememberIdempotent(project: string, key: string, request: string, status: number, body: string): Promise<void>;

  close(): Promise<void>;
}

/** The embedded default: `StateDb` (better-sqlite3, synchronous) behind the asynchronous interface. */
export class SqliteStateStore implements StateStore {
  readonly kind = 'sqlite' as const;
  constructor(readonly db: StateDb) {}

  static open(path: string): SqliteStateStore {
    return new SqliteStateStore(new StateDb(path));
  }

  async volume(id: string) {
    return this.db.volume(id);
  }
  async volumes(project?: string) {
    return this.db.volumes(project);
  }
  async updateVolume(id: string, fields: VolumeFields) {
    this.db.updateVolume(id, fields);
  }
  async deleteVolume(id: string) {
    this.db.deleteVolume(id);
  }

  async submitJob(job: NewJob, options: SubmitOptions): Promise<SubmitResult> {
    return this.db.transaction((): SubmitResult => {
      const active = this.db.countJobs(['queued', 'running']);
      if (active >= options.maxActive) return { full: true, active };
      const row = this.db.insertJob(job);
      if (options.insertVolume) this.db.insertVolume(options.insertVolume);
      if (options.volumeStatus && job.volume_id) this.db.updateVolume(job.volume_id, { status: options.volumeStatus });
      return { full: false, job: row, volume: job.volume_id ? this.db.volume(job.volume_id) : undefined };
    });
  }
  async job(id: string) {
    return this.db.job(id);
  }
  async jobs(options: { project?: string; volumeId?: string; states?: readonly JobState[] } = {}) {
    return this.db.jobs(options);
  }
  async countJobs(states: readonly JobState[]) {
    return this.db.countJobs(states);
  }
  async claimJob(): Promise<JobRow | undefined> {
    throw new Error('SQLite jobs are claimed by claimNext (one process owns the state directory).');
  }
  async requeue(id: string): Promise<boolean> {
    return this.db.prepare(`UPDATE jobs SET state = 'queued', owner_pid = NULL WHERE id = ? AND state = 'running'`).run(id).changes === 1;
  }
  async saveCheckpoint(id: string, checkpoint: Record<string, unknown>, progress: JobProgress) {
    this.db.saveCheckpoint(id, checkpoint, progress);
  }
  async saveProgress(id: string, progress: JobProgress) {
    this.db.saveProgress(id, progress);
  }
  async finishJob(id: string, state: 'succeeded' | 'failed' | 'cancelled', fields: { result?: Record<string, unknown> | null; error?: { code: string; message: string } | null }) {
    this.db.finishJob(id, state, fields);
  }
  async requestCancel(id: string) {
    this.db.requestCancel(id);
  }
  async idempotent(project: string, key: string) {
    return this.db.idempotent(project, key);
  }
  async rememberIdempotent(project: string, key: string, request: string, status: number, body: string) {
    this.db.rememberIdempotent(project, key, request, status, body);
  }
  async close() {
    this.db.close();
  }
}
