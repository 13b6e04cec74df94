/**
 * Runs the service's jobs from the state store: a bounded queue, a fixed number of jobs at
 * once, one job per volume at a time, and resumption after a crash.
 *
 * How jobs reach this process is a `JobDispatch`:
 * - `SqliteDispatch` (the embedded default, below): a job is taken by an atomic UPDATE that only
 *   matches a queued row and records the runner's pid; at start-up every running job whose pid
 *   is not alive goes back to the queue with its checkpoint. One process owns the state.
 * - `PgBossDispatch` (src/service/pg-boss-dispatch.ts, `serve --database`): jobs come from the
 *   pg-boss queue, per-volume exclusion is a PostgreSQL advisory lock, and workers whose
 *   heartbeat stops lose their jobs to the others.
 *
 * Either way a handler continues from its checkpoint, which it persists through
 * `ctx.checkpoint()` only after the work it describes is durable.
 */
import { EventEmitter } from 'node:events';
import { BrickcryptError, CancelledError, QueueFullError } from '../errors.js';
import { processAlive } from '../devices/volume-lock.js';
import { withoutToken, type ForwardedToken } from '../keys/forwarded-token.js';
import type { JobProgress, JobRow } from './state-db.js';
import type { NewJob, NewVolume, SqliteStateStore, StateStore } from './state-store.js';

export interface JobContext {
  readonly job: JobRow;
  readonly signal: AbortSignal;
  /** Persists a checkpoint (with the current progress) in the same row; call it after the work is durable. */
  checkpoint(checkpoint: Record<string, unknown>): Promise<void>;
  /** Reports bytes done out of a total (rate and ETA are derived here). */
  progress(done: number, total: number): void;
}

export interface JobHandler {
  run(ctx: JobContext): Promise<Record<string, unknown> | null>;
  /** Puts things right after a failure or cancellation (e.g. the volume's status). */
  cleanup?(job: JobRow, outcome: 'failed' | 'cancelled', error: BrickcryptError): Promise<void>;
  /**
   * The owner (`JobDispatch.owner`) that must run this job, e.g. the worker whose process serves
   * the attachment a `detach` closes; undefined: any worker. Asked before each take.
   */
  placement?(job: JobRow): Promise<string | undefined>;
}

export interface JobRunnerOptions {
  /** Jobs running at once (default 2). */
  concurrency?: number;
  /** Queued plus running jobs at most; a submission beyond is a QueueFullError (429). Default 64. */
  maxJobs?: number;
  /** How often the queue is looked at when nothing wakes the runner (ms, default 500). */
  pollMs?: number;
  /** Run jobs in this process (false: the API role, which only submits and watches). Default true. */
  work?: boolean;
  log?: (message: string) => void;
}

export interface JobEvent {
  job: JobRow;
}

/** How a run ended, for the dispatch: `interrupted` means the service is stopping and the job stays resumable. */
export type RunOutcome = 'succeeded' | 'failed' | 'cancelled' | 'interrupted';

/** Where jobs come from; see the module comment. */
export interface JobDispatch {
  /** Who owns the jobs this process runs (the pid on SQLite, a worker id on PostgreSQL). */
  readonly owner: string;
  /** Starts taking jobs (only when the runner works). */
  start(runner: JobRunner): Promise<void>;
  /** A job was submitted or finished here: look for work now. */
  kick(): void;
  /** Inside the submission's transaction, after the job row is inserted. */
  onInserted?(job: JobRow, tx: unknown): Promise<void>;
  /** Sends a cancellation to the process running `id`, if that is not this one. */
  stop(): Promise<void>;
  /** Job rows changed elsewhere (other processes): the runner re-reads and emits them. */
  watch?(onChange: (jobId: string) => void): Promise<void>;
  /** Whether the process that owns `owner`'s jobs is alive (its heartbeat is fresh). */
  ownerAlive?(owner: string): Promise<boolean>;
}

/** Why a running job's signal was aborted: the caller cancelled, or the service is stopping. */
class Shutdown extends Error {}

export class JobRunner extends EventEmitter {
  readonly store: StateStore;
  readonly #handlers: Record<string, JobHandler>;
  readonly #concurrency: number;
  readonly #maxJobs: number;
  readonly #work: boolean;
  readonly #log: (m: string) => void;
  readonly dispatch: JobDispatch;
  readonly #running = new Map<string, { job: JobRow; controller: AbortController; done: Promise<RunOutcome>; progress: JobProgress }>();
  /**
   * Callers' forwarded Keystone tokens of jobs submitted here, by job id: memory only, never in
   * the job row. A run of the job in this process gets its token back; a run after a restart or
   * in another process has none and calls with the identity headers alone (docs/service.md).
   */
  readonly #tokens = new Map<string, ForwardedToken>();
  #stopping = false;

  constructor(store: StateStore, handlers: Record<string, JobHandler>, options: JobRunnerOptions = {}, dispatch?: JobDispatch) {
    super();
    this.setMaxListeners(0);
    this.store = store;
    this.#handlers = handlers;
    this.#concurrency = options.concurrency ?? 2;
    this.#maxJobs = options.maxJobs ?? 64;
    this.#work = options.work ?? true;
    this.#log = options.log ?? (() => {});
    this.dispatch = dispatch ?? new SqliteDispatch(store as SqliteStateStore, options.pollMs ?? 500, this.#log);
  }

  get log(): (m: string) => void {
    return this.#log;
  }

  /** Starts taking jobs (requeueing those of dead runners) and, across processes, watching job changes. */
  async start(): Promise<void> {
    if (this.dispatch.watch) {
      await this.dispatch.watch((id) => {
        void this.store.job(id).then((job) => {
          if (!job) return;
          // A cancellation sent to another process (an API process) stops the job here at once.
          if (job.cancel_requested && job.state === 'running') this.abortLocal(job.id);
          // Finished elsewhere (another worker took it): its token is of no use here any more.
          if (job.state !== 'queued' && job.state !== 'running') this.#tokens.delete(job.id);
          this.emit('job', { job: this.view(job) } satisfies JobEvent);
          // A job queued by another process (the API role): take it now rather than at the next poll.
          if (job.state === 'queued') this.kick();
        });
      });
    }
    if (this.#work) await this.dispatch.start(this);
  }

  /**
   * Inserts a job (with its volume row or the volume's new status, in one transaction);
   * refuses when the queue is full.
   */
  async submit(job: NewJob, extra: { insertVolume?: NewVolume; volumeStatus?: NewVolume['status'] } = {}): Promise<{ job: JobRow; volume: import('./state-db.js').VolumeRow | undefined }> {
    // The token stays here: the stored caller never has one (toJSON drops it as well).
    const token = job.caller.token;
    const r = await this.store.submitJob({ ...job, caller: withoutToken(job.caller) }, {
      maxActive: this.#maxJobs,
      ...extra,
      ...(this.dispatch.onInserted ? { onInserted: (j: JobRow, tx: unknown) => this.dispatch.onInserted!(j, tx) } : {}),
    });
    if (r.full) throw new QueueFullError(`The job queue is full (${r.active} of ${this.#maxJobs} jobs queued or running); try again later.`);
    // An API-only process never runs the job, so it keeps no token (the worker calls with the headers).
    if (token && this.#work && (r.job.state === 'queued' || r.job.state === 'running')) this.#tokens.set(r.job.id, token);
    this.#emitLocal(r.job);
    return { job: r.job, volume: r.volume };
  }

  /** The live view of a job: the stored row with in-memory progress of a job running here. */
  view(job: JobRow): JobRow {
    const live = this.#running.get(job.id);
    return live ? { ...job, progress: { ...live.progress } } : job;
  }

  /**
   * A job running in this process as it stands now (state, live progress), without reading the
   * database: this process is the only one changing the row while it runs here, so the copy it
   * holds is the current one. Undefined for any other job. Status polls are answered from it.
   */
  snapshot(id: string): JobRow | undefined {
    const live = this.#running.get(id);
    return live ? { ...live.job, progress: { ...live.progress } } : undefined;
  }

  /** Cancels a queued job at once, or asks a running one to stop (it ends `cancelled`). */
  async cancel(id: string): Promise<void> {
    await this.store.requestCancel(id);
    const job = await this.store.job(id);
    if (!job) return;
    if (job.state === 'queued') {
      await this.#finish(job, 'cancelled', null, new CancelledError('Cancelled before it started.'));
      return;
    }
    this.abortLocal(id);
  }

  /** Aborts a job running in this process because it was cancelled (possibly by another process). */
  abortLocal(id: string): void {
    this.#running.get(id)?.controller.abort(new CancelledError('Cancelled by request.'));
  }

  /**
   * Stops a job running here without finishing it (it stays resumable): this process may no
   * longer own it (e.g. it lost its database session, so another worker may take it over).
   */
  interruptLocal(id: string, why: string): void {
    this.#running.get(id)?.controller.abort(new Shutdown(why));
  }

  /** Looks for work now. */
  kick(): void {
    if (!this.#stopping && this.#work) this.dispatch.kick();
  }

  /** Stops taking jobs; running jobs are interrupted and stay resumable. */
  async stop(): Promise<void> {
    this.#stopping = true;
    for (const r of this.#running.values()) r.controller.abort(new Shutdown('service stopping'));
    await Promise.allSettled([...this.#running.values()].map((r) => r.done));
    await this.dispatch.stop();
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  /** The owner that must run `job` (its handler's `placement`), or undefined for any. */
  async placement(job: JobRow): Promise<string | undefined> {
    return this.#handlers[job.type]?.placement?.(job);
  }

  get concurrency(): number {
    return this.#concurrency;
  }

  get runningCount(): number {
    return this.#running.size;
  }

  get hasCapacity(): boolean {
    return !this.#stopping && this.#running.size < this.#concurrency;
  }

  /** Ids of the jobs running in this process. */
  get runningIds(): string[] {
    return [...this.#running.keys()];
  }

  #emitLocal(job: JobRow): void {
    // Across processes every change comes back through the dispatch's watch instead.
    if (!this.dispatch.watch) this.emit('job', { job: this.view(job) } satisfies JobEvent);
  }

  /** Runs a job this process has claimed (state running, owned here); resolves when it ends or is interrupted. */
  execute(job: JobRow): Promise<RunOutcome> {
    const token = this.#tokens.get(job.id);
    if (token) job = { ...job, caller: { ...job.caller, token } };
    const controller = new AbortController();
    const progress: JobProgress = { ...job.progress, rate: 0, eta_seconds: null };
    const entry = { job, controller, progress, done: Promise.resolve<RunOutcome>('interrupted') };
    this.#running.set(job.id, entry);
    this.#emitLocal(job);
    const handler = this.#handlers[job.type];
    let firstDone: number | undefined;
    let t0 = performance.now();
    let lastSaved = 0;
    const ctx: JobContext = {
      job,
      signal: controller.signal,
      checkpoint: async (cp) => {
        await this.store.saveCheckpoint(job.id, cp, progress);
        job.checkpoint = cp;
      },
      progress: (done, total) => {
        if (firstDone === undefined) {
          firstDone = done;
          t0 = performance.now();
        }
        const seconds = (performance.now() - t0) / 1000;
        progress.bytes_done = done;
        progress.bytes_total = total;
        progress.rate = seconds > 0 ? Math.round((done - firstDone) / seconds) : 0;
        progress.eta_seconds = progress.rate > 0 ? Math.round(((total - done) / progress.rate) * 10) / 10 : null;
        const t = performance.now();
        if (t - lastSaved > 500) {
          lastSaved = t;
          void this.store.saveProgress(job.id, { ...progress }).then(
            () => this.#emitLocal({ ...job, progress: { ...progress } }),
            (err: Error) => this.#log(`job ${job.id}: progress not saved: ${err.message}`),
          );
        }
      },
    };
    entry.done = (async (): Promise<RunOutcome> => {
      try {
        if (!handler) throw new BrickcryptError('INTERNAL', `No handler for job type ${job.type}.`, { exitCode: 70, nbdErrno: 5, httpStatus: 500 });
        if ((await this.store.job(job.id))?.cancel_requested) throw new CancelledError('Cancelled by request.');
        const result = await handler.run(ctx);
        if (progress.bytes_total > 0) await this.store.saveProgress(job.id, progress);
        await this.#finish(job, 'succeeded', result, null);
        return 'succeeded';
      } catch (err) {
        const reason = controller.signal.reason as unknown;
        if (reason instanceof Shutdown) {
          this.#log(`job ${job.id} interrupted (${reason.message}); it stays resumable`);
          return 'interrupted';
        }
        const cancelled = reason instanceof CancelledError || err instanceof CancelledError;
        const error =
          err instanceof BrickcryptError
            ? err
            : new BrickcryptError('INTERNAL', (err as Error)?.message ?? String(err), { exitCode: 70, nbdErrno: 5, httpStatus: 500 });
        const outcome = cancelled ? 'cancelled' : 'failed';
        try {
          await handler?.cleanup?.(job, outcome, error);
        } catch (cleanupErr) {
          this.#log(`job ${job.id} cleanup failed: ${(cleanupErr as Error).message}`);
        }
        await this.#finish(job, outcome, null, cancelled && !(err instanceof CancelledError) ? new CancelledError() : error);
        return outcome;
      } finally {
        this.#running.delete(job.id);
        setImmediate(() => this.kick());
      }
    })();
    return entry.done;
  }

  async #finish(job: JobRow, state: 'succeeded' | 'failed' | 'cancelled', result: Record<string, unknown> | null, error: BrickcryptError | null): Promise<void> {
    this.#tokens.delete(job.id);
    await this.store.finishJob(job.id, state, { result, error: error ? { code: error.code, message: error.message } : null });
    // From here the stored row is the job's state: no snapshot says `running` any more.
    this.#running.delete(job.id);
    const row = await this.store.job(job.id);
    if (row) this.#emitLocal(row);
  }
}

/**
 * The embedded default: one process owns the SQLite state directory; jobs are claimed by an
 * atomic UPDATE (`StateDb.claimNext`) and orphans are found by their runner's pid.
 */
export class SqliteDispatch implements JobDispatch {
  readonly owner = String(process.pid);
  #timer: NodeJS.Timeout | undefined;
  #runner: JobRunner | undefined;

  constructor(
    readonly store: SqliteStateStore,
    readonly pollMs: number,
    readonly log: (m: string) => void,
  ) {}

  async start(runner: JobRunner): Promise<void> {
    this.#runner = runner;
    const orphans = this.store.db.requeueOrphans((pid) => pid !== process.pid && processAlive(pid));
    for (const j of orphans) this.log(`job ${j.id} (${j.type}) was running in a process that died; resuming from its checkpoint`);
    this.#timer = setInterval(() => this.kick(), this.pollMs);
    this.#timer.unref();
    this.kick();
  }

  kick(): void {
    const runner = this.#runner;
    if (!runner) return;
    while (runner.hasCapacity) {
      const job = this.store.db.claimNext(process.pid);
      if (!job) return;
      void runner.execute(job);
    }
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
  }
}
