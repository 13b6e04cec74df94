/**
 * Runs the service's jobs from the state database: a bounded queue, a fixed number of jobs at
 * once, one job per volume at a time, and resumption after a crash.
 *
 * A job is taken by an atomic UPDATE that only matches a queued row (two runners never take the
 * same job) and records the runner's pid. At start-up every running job whose pid is not alive
 * goes back to the queue with its checkpoint, and its handler continues from there. A handler
 * persists its checkpoint through `ctx.checkpoint()` only after the work it describes is durable.
 */
import { EventEmitter } from 'node:events';
import { BrickcryptError, CancelledError, QueueFullError } from '../errors.js';
import { processAlive } from '../devices/volume-lock.js';
import type { CallerIdentity } from '../keys/key-manager.js';
import type { JobProgress, JobRow, StateDb } from './state-db.js';

export interface JobContext {
  readonly job: JobRow;
  readonly signal: AbortSignal;
  /** Persists a checkpoint (with the current progress) in the same row; call it after the work is durable. */
  checkpoint(checkpoint: Record<string, unknown>): void;
  /** Reports bytes done out of a total (rate and ETA are derived here). */
  progress(done: number, total: number): void;
}

export interface JobHandler {
  run(ctx: JobContext): Promise<Record<string, unknown> | null>;
  /** Puts things right after a failure or cancellation (e.g. the volume's status). */
  cleanup?(job: JobRow, outcome: 'failed' | 'cancelled', error: BrickcryptError): Promise<void>;
}

export interface JobRunnerOptions {
  /** Jobs running at once (default 2). */
  concurrency?: number;
  /** Queued plus running jobs at most; a submission beyond is a QueueFullError (429). Default 64. */
  maxJobs?: number;
  /** How often the queue is looked at when nothing wakes the runner (ms, default 500). */
  pollMs?: number;
  log?: (message: string) => void;
}

export interface JobEvent {
  job: JobRow;
}

/** Why a running job's signal was aborted: the caller cancelled, or the service is stopping. */
class Shutdown extends Error {}

export class JobRunner extends EventEmitter {
  readonly #db: StateDb;
  readonly #handlers: Record<string, JobHandler>;
  readonly #concurrency: number;
  readonly #maxJobs: number;
  readonly #pollMs: number;
  readonly #log: (m: string) => void;
  readonly #running = new Map<string, { controller: AbortController; done: Promise<void>; progress: JobProgress }>();
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;

  constructor(db: StateDb, handlers: Record<string, JobHandler>, options: JobRunnerOptions = {}) {
    super();
    this.setMaxListeners(0);
    this.#db = db;
    this.#handlers = handlers;
    this.#concurrency = options.concurrency ?? 2;
    this.#maxJobs = options.maxJobs ?? 64;
    this.#pollMs = options.pollMs ?? 500;
    this.#log = options.log ?? (() => {});
  }

  /** Requeues the jobs of dead runners and starts taking jobs. */
  start(): void {
    const orphans = this.#db.requeueOrphans((pid) => pid !== process.pid && processAlive(pid));
    for (const j of orphans) this.#log(`job ${j.id} (${j.type}) was running in a process that died; resuming from its checkpoint`);
    this.#timer = setInterval(() => this.kick(), this.#pollMs);
    this.#timer.unref();
    this.kick();
  }

  /** Inserts a job (inside the caller's transaction, if any); refuses when the queue is full. */
  submit(job: { type: string; volume_id: string | null; caller: CallerIdentity; params: Record<string, unknown> }): JobRow {
    const active = this.#db.countJobs(['queued', 'running']);
    if (active >= this.#maxJobs) throw new QueueFullError(`The job queue is full (${active} of ${this.#maxJobs} jobs queued or running); try again later.`);
    return this.#db.insertJob(job);
  }

  /** The live view of a job: the database row with in-memory progress of a running job. */
  view(job: JobRow): JobRow {
    const live = this.#running.get(job.id);
    return live ? { ...job, progress: { ...live.progress } } : job;
  }

  /** Cancels a queued job at once, or asks a running one to stop (it ends `cancelled`). */
  cancel(id: string): void {
    this.#db.requestCancel(id);
    const job = this.#db.job(id);
    if (!job) return;
    if (job.state === 'queued') {
      this.#finish(job, 'cancelled', null, new CancelledError('Cancelled before it started.'));
      return;
    }
    this.#running.get(id)?.controller.abort(new CancelledError('Cancelled by request.'));
  }

  /** Looks for work now. */
  kick(): void {
    if (this.#stopping) return;
    while (this.#running.size < this.#concurrency) {
      const job = this.#db.claimNext(process.pid);
      if (!job) return;
      this.#launch(job);
    }
  }

  /** Stops taking jobs; running jobs are interrupted and stay `running` in the database, to be resumed at the next start. */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#timer) clearInterval(this.#timer);
    for (const r of this.#running.values()) r.controller.abort(new Shutdown('service stopping'));
    await Promise.allSettled([...this.#running.values()].map((r) => r.done));
  }

  get runningCount(): number {
    return this.#running.size;
  }

  #launch(job: JobRow): void {
    const controller = new AbortController();
    const progress: JobProgress = { ...job.progress, rate: 0, eta_seconds: null };
    const entry = { controller, progress, done: Promise.resolve() };
    this.#running.set(job.id, entry);
    this.emit('job', { job: this.view(job) } satisfies JobEvent);
    const handler = this.#handlers[job.type];
    let firstDone: number | undefined;
    let t0 = performance.now();
    let lastSaved = 0;
    const ctx: JobContext = {
      job,
      signal: controller.signal,
      checkpoint: (cp) => {
        this.#db.saveCheckpoint(job.id, cp, progress);
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
          this.#db.saveProgress(job.id, progress);
          this.emit('job', { job: this.view(this.#db.job(job.id)!) } satisfies JobEvent);
        }
      },
    };
    entry.done = (async () => {
      try {
        if (!handler) throw new BrickcryptError('INTERNAL', `No handler for job type ${job.type}.`, { exitCode: 70, nbdErrno: 5, httpStatus: 500 });
        if (this.#db.job(job.id)?.cancel_requested) throw new CancelledError('Cancelled by request.');
        const result = await handler.run(ctx);
        if (progress.bytes_total > 0) this.#db.saveProgress(job.id, progress);
        this.#finish(job, 'succeeded', result, null);
      } catch (err) {
        const reason = controller.signal.reason as unknown;
        if (reason instanceof Shutdown) {
          this.#log(`job ${job.id} interrupted by shutdown; it resumes at the next start`);
          return;
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
        this.#finish(job, outcome, null, cancelled && !(err instanceof CancelledError) ? new CancelledError() : error);
      } finally {
        this.#running.delete(job.id);
        setImmediate(() => this.kick());
      }
    })();
  }

  #finish(job: JobRow, state: 'succeeded' | 'failed' | 'cancelled', result: Record<string, unknown> | null, error: BrickcryptError | null): void {
    this.#db.finishJob(job.id, state, { result, error: error ? { code: error.code, message: error.message } : null });
    this.emit('job', { job: this.#db.job(job.id)! } satisfies JobEvent);
  }
}
