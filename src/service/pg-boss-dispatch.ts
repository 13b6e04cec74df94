/**
 * Jobs across many service processes on PostgreSQL, with pg-boss as the job queue.
 *
 * - Submission: the job row and its pg-boss queue entry are written in one transaction
 *   (pg-boss `send` with the transaction's connection), so a job never exists without being
 *   queued, nor the other way round.
 * - Taking a job (a pg-boss worker, `--workers` of them per process): the worker takes the
 *   volume's advisory lock (`PostgresStateStore.tryLockVolume`; busy: the entry is retried a
 *   second later), then claims the row (an UPDATE that matches only a queued row), runs it with
 *   its checkpoint, and releases the lock. A duplicate entry for a job that is running or done
 *   is dropped.
 * - Liveness: every worker process renews its heartbeat row every third of the timeout. Any
 *   worker that sees a running job whose owner's heartbeat is older than the timeout puts it
 *   back to `queued` and sends it again; the next worker to take it continues from its
 *   checkpoint. The advisory lock makes this safe even when the timeout misjudges a worker that
 *   is alive but slow: its session still holds the volume, so the job waits for it.
 * - Cancellation requested through any API process reaches the worker running the job through
 *   the job's NOTIFY (the runner's watch), at the latest at its next heartbeat.
 *
 * Why pg-boss (10.x, the line for Node 20): it is a maintained PostgreSQL-only queue that takes
 * jobs with SKIP LOCKED, retries with a delay, archives finished entries, and — what the
 * atomic submission needs — sends inside a caller's transaction. graphile-worker would do the
 * queueing too, but its locks of crashed workers expire only after a fixed four hours, which a
 * heartbeat timeout could not shorten without rewriting its lock rows.
 */
import PgBoss from 'pg-boss';
import type { JobDispatch, JobRunner } from './job-runner.js';
import type { JobRow } from './state-db.js';
import type { PostgresStateStore, SqlConnection } from './postgres-store.js';

export const QUEUE = 'brickcrypt-jobs';
const BOSS_SCHEMA = 'brickcrypt_boss';

export interface PgBossDispatchOptions {
  heartbeatTimeoutSeconds: number;
  /** This process runs jobs (roles worker and all). */
  worker: boolean;
  log: (m: string) => void;
}

/** A queue entry that must come back later (its volume is busy, or this worker is stopping). */
class RetryLater extends Error {}

export class PgBossDispatch implements JobDispatch {
  readonly boss: PgBoss;
  #owner = '';
  #ready: Promise<void> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #workIds: string[] = [];
  #runner: JobRunner | undefined;
  #stopped = false;
  /** When the heartbeat last reached the database (this process's clock). */
  #lastBeat = Date.now();
  #ticking = false;

  constructor(
    readonly store: PostgresStateStore,
    readonly options: PgBossDispatchOptions,
  ) {
    this.boss = new PgBoss({
      connectionString: store.url,
      schema: BOSS_SCHEMA,
      max: 4,
      application_name: 'brickcrypt-serve-queue',
      schedule: false,
      supervise: options.worker,
    });
    this.boss.on('error', (err) => options.log(`job queue: ${err.message}`));
  }

  get owner(): string {
    return this.#owner;
  }

  /** Starts pg-boss (creating its schema and the queue once) and registers this process. */
  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await this.boss.start();
      if (!(await this.boss.getQueue(QUEUE))) {
        // A busy volume retries every second for as long as it takes; a live entry may stay
        // active for up to 23 hours (pg-boss's limit is 24), far beyond any heartbeat timeout.
        await this.boss.createQueue(QUEUE, { name: QUEUE, policy: 'standard', retryLimit: 1_000_000, retryDelay: 1, expireInHours: 23 }).catch(async (err: Error) => {
          if (!(await this.boss.getQueue(QUEUE))) throw err; // another process created it meanwhile otherwise
        });
      }
      if (this.options.worker) this.#owner = await this.store.registerWorker();
    })();
    return this.#ready;
  }

  async onInserted(job: JobRow, tx: unknown): Promise<void> {
    await this.#init();
    await this.boss.send(QUEUE, { job_id: job.id }, { db: tx as SqlConnection });
  }

  async watch(onChange: (jobId: string) => void): Promise<void> {
    // Every role starts the queue here, at service start, not on its first submission.
    await this.#init();
    await this.store.watch(onChange, this.options.log);
  }

  async start(runner: JobRunner): Promise<void> {
    this.#runner = runner;
    await this.#init();
    const every = Math.max(250, (this.options.heartbeatTimeoutSeconds * 1000) / 3);
    this.#heartbeat = setInterval(() => void this.#tick(), every);
    await this.#tick();
    for (let i = 0; i < runner.concurrency; i++) {
      this.#workIds.push(await this.boss.work<{ job_id: string }>(QUEUE, { batchSize: 1, pollingIntervalSeconds: 0.5 }, async ([entry]) => this.#take(entry!.data.job_id)));
    }
  }

  /** Heartbeat, takeover of abandoned jobs, cancellations from other processes. */
  async #tick(): Promise<void> {
    if (this.#stopped) return;
    // Fencing: before the others may declare this worker dead, it stops writing volumes.
    if (Date.now() - this.#lastBeat > (this.options.heartbeatTimeoutSeconds * 1000 * 2) / 3) {
      for (const id of this.#runner?.runningIds ?? []) this.#runner!.interruptLocal(id, 'no heartbeat reaches the database');
    }
    if (this.#ticking) return; // the previous one still waits for the database
    this.#ticking = true;
    try {
      await this.store.heartbeat(this.#owner);
      this.#lastBeat = Date.now();
      const abandoned = await this.store.requeueAbandoned(this.options.heartbeatTimeoutSeconds);
      for (const j of abandoned) {
        this.options.log(`job ${j.id} (${j.type}) lost its worker (no heartbeat for ${this.options.heartbeatTimeoutSeconds} s); queued again from its checkpoint`);
        await this.boss.send(QUEUE, { job_id: j.id });
      }
      for (const id of await this.store.cancelRequested(this.#owner)) this.#runner?.abortLocal(id);
    } catch (err) {
      this.options.log(`heartbeat: ${(err as Error).message}`);
    } finally {
      this.#ticking = false;
    }
  }

  /** Runs one queue entry: the volume's advisory lock, the claim, the job. */
  async #take(jobId: string): Promise<void> {
    const runner = this.#runner!;
    const job = await this.store.job(jobId);
    if (!job || job.state !== 'queued') return; // done, or running elsewhere: a duplicate entry
    if (runner.stopping) throw new RetryLater('stopping');
    // A job bound to another live worker (a detach of the attachment it serves) waits for it;
    // pg-boss hands the retried entry to any worker, so it reaches the owner within a few tries.
    const want = await runner.placement(job);
    if (want !== undefined && want !== this.#owner && (await this.ownerAlive(want))) throw new RetryLater(`job ${jobId} runs on worker ${want}`);
    const lock = await this.store.tryLockVolume(job.volume_id ?? job.id);
    if (!lock) throw new RetryLater(`volume ${job.volume_id} is busy in another session`);
    // Without its session the volume is no longer this worker's: stop writing at once.
    lock.onLost(() => runner.interruptLocal(jobId, 'the session holding the volume lock broke'));
    try {
      const claimed = await this.store.claimJob(jobId, this.#owner);
      if (!claimed) return;
      this.options.log(`job ${jobId} (${claimed.type}) taken by worker ${this.#owner}${claimed.checkpoint ? ', continuing from its checkpoint' : ''}`);
      const outcome = await runner.execute(claimed);
      if (outcome === 'interrupted') {
        // The job goes back to the queue for another worker (or the next start); if the
        // database is unreachable, the heartbeat timeout does it.
        await this.store.requeue(jobId, this.#owner).catch(() => false);
        throw new RetryLater('interrupted by shutdown');
      }
    } finally {
      await lock.release();
    }
  }

  async ownerAlive(owner: string): Promise<boolean> {
    return this.store.workerAlive(owner, this.options.heartbeatTimeoutSeconds);
  }

  kick(): void {
    for (const id of this.#workIds) this.boss.notifyWorker(id);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    if (!this.#ready) return;
    await this.#ready.catch(() => undefined);
    await this.boss.stop({ graceful: true, wait: true, timeout: 10_000 }).catch(() => undefined);
    if (this.#owner) await this.store.removeWorker(this.#owner).catch(() => undefined);
  }
}
