/**
 * The HTTP API (version 1) over the volume service and the job runner, built with fastify.
 * Requests are validated with the JSON schemas of `schemas.ts` (unknown fields refused: 400),
 * errors are `{error: {code, message}}` with the status of `httpStatusOf`, and every POST honours
 * an `Idempotency-Key` (the first reply is stored and replayed for the same key and request).
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as prom from 'prom-client';
import { BrickcryptError, ForbiddenError, InvalidArgumentError, LockedError, httpStatusOf } from '../errors.js';
import { VolumeLock } from '../devices/volume-lock.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import { guardCreatorReads } from '../keys/creator-read-guard.js';
import { openKeyManager, parseKeyManagerUri, type OpenKeyManagerOptions } from '../keys/open-key-manager.js';
import { identify, mayWrite, type IdentitySource } from './caller-identity.js';
import { JobRunner, type JobEvent } from './job-runner.js';
import { actionBody, createVolumeBody, errorSchema, idParams, jobSchema, volumeSchema } from './schemas.js';
import type { StateDb, JobRow, VolumeRow } from './state-db.js';
import { SqliteStateStore, type StateStore } from './state-store.js';
import type { JobDispatch } from './job-runner.js';
import { VolumeService, type CreateVolumeRequest, type VolumeAction } from './volume-service.js';
import { STATUS_PAGE_HTML } from './status-page.js';

export interface ServiceOptions {
  stateDir: string;
  identity: IdentitySource;
  /** Jobs at once (default 2) and queued+running jobs at most (default 64). */
  concurrency?: number;
  maxJobs?: number;
  nbdHost?: string;
  copyBytesPerSecond?: number;
  checkpointBytes?: number;
  /** Directories image files may come from (default STATE/images). */
  imageDirs?: readonly string[];
  /** Glance v2 endpoint (upload_to_image, source.image_id). */
  imageServiceUrl?: string;
  /** Backup repository URI (backup, source.backup_id). */
  backupRepo?: string;
  /**
   * `postgresql://...`: jobs and state in PostgreSQL, shared by any number of service
   * processes (src/service/postgres-store.ts, src/service/pg-boss-dispatch.ts). Default: SQLite
   * under the state directory, owned by this one process.
   */
  database?: string;
  /** api: only the HTTP API; worker: only runs jobs; all (default): both. Not `all` needs `database`. */
  role?: 'api' | 'worker' | 'all';
  /** PostgreSQL: seconds without a heartbeat after which a worker's jobs go to the others (default 30). */
  heartbeatTimeoutSeconds?: number;
  /**
   * Key manager URI (src/keys/open-key-manager.ts): `barbican+https://HOST:PORT`,
   * `kmip://HOST:PORT`, `local:PATH`, `memory:`. Default: the local keystore
   * `STATE/keystore.db`, created when missing. Workers on several hosts need a network one.
   */
  keyManager?: string;
  /** Options of `keyManager` (TLS files, timeout, attempts, local KEK). */
  keyManagerOptions?: OpenKeyManagerOptions;
  /** An open key manager to use instead (the caller closes it); wins over `keyManager`. */
  keys?: KeyManager;
  /** Where new volume files go (default STATE/volumes). Workers on several hosts share it at one path. */
  volumesDir?: string;
  log?: (m: string) => void;
}

export interface Service {
  app: FastifyInstance;
  /** The state, whichever database holds it. */
  store: StateStore;
  /** The SQLite state (the embedded default only; throws on PostgreSQL). */
  readonly db: StateDb;
  runner: JobRunner;
  volumes: VolumeService;
  keys: KeyManager;
  /** Starts the runner (resuming interrupted jobs) and the attachments that were live. */
  start(): Promise<void>;
  close(): Promise<void>;
}

const API_VERSION = '1';

function volumeView(v: VolumeRow): Record<string, unknown> {
  const attachment = v.attachment ? { uri: v.attachment.uri, tls_psk_identity: v.attachment.tls_psk_identity, attached_at: v.attachment.attached_at } : null;
  return {
    id: v.id,
    name: v.name,
    status: v.status,
    size: v.size,
    format: v.format,
    path: v.path,
    encryption_key_id: v.encryption_key_id,
    cipher: v.cipher,
    project: v.project,
    user: v.user,
    attachment,
    created_at: v.created_at,
    updated_at: v.updated_at,
  };
}

function jobView(j: JobRow): Record<string, unknown> {
  return {
    id: j.id,
    type: j.type,
    state: j.state,
    volume_id: j.volume_id,
    progress: j.progress,
    result: j.result,
    error: j.error,
    created_at: j.created_at,
    started_at: j.started_at,
    finished_at: j.finished_at,
  };
}

function errorBody(err: unknown): { status: number; body: { error: { code: string; message: string } } } {
  if (err instanceof BrickcryptError) return { status: err.httpStatus, body: { error: { code: err.code, message: err.message } } };
  return { status: httpStatusOf(err), body: { error: { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) } } };
}

/** Builds the service on a state directory: its state (SQLite or PostgreSQL), its key manager (default the local keystore), the runner, the routes. */
export async function createService(o: ServiceOptions): Promise<Service> {
  const role = o.role ?? 'all';
  if (role !== 'all' && !o.database) throw new InvalidArgumentError(`role ${role} needs a PostgreSQL database (one process on SQLite is always "all").`);
  // The same keystore `BRICKCRYPT_HOME=STATE brickcrypt key ...` opens, unless another is named.
  const keyManagerUri = o.keyManager ?? `local:${join(o.stateDir, 'keystore.db')}`;
  if (!o.keys) parseKeyManagerUri(keyManagerUri); // a bad URI fails before any state is made
  mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  let stateLock: VolumeLock | undefined;
  let db: StateStore;
  let dispatch: JobDispatch | undefined;
  if (o.database) {
    // Many processes share the state: PostgreSQL and the pg-boss queue instead of the state lock.
    const { PostgresStateStore } = await import('./postgres-store.js');
    const { PgBossDispatch } = await import('./pg-boss-dispatch.js');
    const pg = await PostgresStateStore.connect(o.database);
    db = pg;
    dispatch = new PgBossDispatch(pg, { heartbeatTimeoutSeconds: o.heartbeatTimeoutSeconds ?? 30, log: o.log ?? (() => {}), worker: role !== 'api' });
  } else {
    // One service process per state directory: the runner's resumption relies on it.
    stateLock = await VolumeLock.acquire(join(o.stateDir, 'service'));
    db = SqliteStateStore.open(join(o.stateDir, 'state.db'));
  }
  const log = o.log ?? (() => {});
  let keys: KeyManager;
  try {
    const opened = o.keys ?? (await openKeyManager(keyManagerUri, { init: true, ...(o.keyManagerOptions ?? {}) }));
    // Barbican and KMIP cannot refuse a creator its own key's bytes: the service does (docs/service.md).
    keys = guardCreatorReads(opened, (c, id) => log(`denied key read of ${id} to ${c.user}@${c.project} (role creator)`));
  } catch (err) {
    await db.close();
    await stateLock?.release();
    throw err;
  }
  const volumes = new VolumeService({
    stateDir: o.stateDir,
    ...(o.volumesDir !== undefined ? { volumesDir: o.volumesDir } : {}),
    db,
    keys,
    ...(o.nbdHost !== undefined ? { nbdHost: o.nbdHost } : {}),
    ...(o.copyBytesPerSecond !== undefined ? { copyBytesPerSecond: o.copyBytesPerSecond } : {}),
    ...(o.checkpointBytes !== undefined ? { checkpointBytes: o.checkpointBytes } : {}),
    ...(o.imageDirs !== undefined ? { imageDirs: o.imageDirs } : {}),
    ...(o.imageServiceUrl !== undefined ? { imageServiceUrl: o.imageServiceUrl } : {}),
    ...(o.backupRepo !== undefined ? { backupRepo: o.backupRepo } : {}),
    log,
  });
  const runner = new JobRunner(db, volumes.handlers(), { concurrency: o.concurrency ?? 2, maxJobs: o.maxJobs ?? 64, log, work: role !== 'api' }, dispatch);
  volumes.runner = runner;

  const registry = new prom.Registry();
  const httpRequests = new prom.Counter({ name: 'brickcrypt_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['method', 'route', 'status'], registers: [registry] });
  const httpSeconds = new prom.Histogram({ name: 'brickcrypt_http_request_duration_seconds', help: 'HTTP request latency', labelNames: ['method', 'route'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [registry] });
  new prom.Gauge({
    name: 'brickcrypt_jobs',
    help: 'Jobs by state',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      for (const s of ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const) this.set({ state: s }, await db.countJobs([s]));
    },
  });
  const jobsFinished = new prom.Counter({ name: 'brickcrypt_jobs_finished_total', help: 'Jobs finished in this process by type and state', labelNames: ['type', 'state'], registers: [registry] });
  const copiedBytes = new prom.Gauge({ name: 'brickcrypt_job_bytes_done', help: 'Bytes done of running jobs', labelNames: ['job'], registers: [registry] });
  runner.on('job', ({ job }: JobEvent) => {
    if (job.state === 'running') copiedBytes.set({ job: job.id }, job.progress.bytes_done);
    else {
      copiedBytes.remove({ job: job.id });
      if (job.state !== 'queued') jobsFinished.inc({ type: job.type, state: job.state });
    }
  });
  prom.collectDefaultMetrics({ register: registry });

  const app = Fastify({
    logger: false,
    // Unknown fields are errors (never silently dropped) and types are never coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
    bodyLimit: 1 << 20,
  });
  const routes: Array<{ method: string; url: string; summary: string; schema: Record<string, unknown>; auth: boolean }> = [];
  const callerOf = new WeakMap<FastifyRequest, CallerIdentity>();
  const inFlightKeys = new Set<string>();

  app.setErrorHandler((err, req, reply) => {
    let e: unknown = err;
    const fe = err as { validation?: unknown; statusCode?: number; message: string; code?: string };
    if (fe.validation) e = new InvalidArgumentError(`Invalid request: ${fe.message}`);
    else if (!(err instanceof BrickcryptError) && fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) e = new InvalidArgumentError(fe.message);
    const { status, body } = errorBody(e);
    if (status >= 500 && !(e instanceof BrickcryptError)) log(`${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
    void reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: { code: 'NOT_FOUND', message: `No route ${req.method} ${req.url}.` } });
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    httpRequests.inc({ method: req.method, route, status: String(reply.statusCode) });
    httpSeconds.observe({ method: req.method, route }, reply.elapsedTime / 1000);
  });

  const caller = (req: FastifyRequest): CallerIdentity => {
    let c = callerOf.get(req);
    if (!c) {
      c = identify(o.identity, req.headers);
      callerOf.set(req, c);
    }
    return c;
  };
  const writer = (req: FastifyRequest): CallerIdentity => {
    const c = caller(req);
    if (!mayWrite(c)) {
      log(`denied ${req.method} ${req.url} to ${c.user}@${c.project} (roles ${c.roles.join(',') || 'none'})`);
      throw new ForbiddenError('Changing volumes needs role admin, member or creator.');
    }
    return c;
  };

  /** Runs a POST once per Idempotency-Key (per project): a repeat with the same request gets the stored reply. */
  async function idempotent(req: FastifyRequest, reply: FastifyReply, c: CallerIdentity, fn: () => Promise<{ status: number; body: unknown }>): Promise<unknown> {
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') {
      const r = await fn();
      return reply.code(r.status).send(r.body);
    }
    if (key.length > 255) throw new InvalidArgumentError('Idempotency-Key is longer than 255 characters.');
    const fingerprint = JSON.stringify([req.method, req.url, req.body ?? null]);
    const seen = await db.idempotent(c.project, key);
    if (seen) {
      if (seen.request !== fingerprint) throw new InvalidArgumentError(`Idempotency-Key ${key} was used for a different request.`);
      return reply.code(seen.status).header('idempotent-replayed', 'true').type('application/json').send(seen.body);
    }
    const slot = `${c.project}\0${key}`;
    if (inFlightKeys.has(slot)) throw new LockedError(`A request with Idempotency-Key ${key} is still being processed.`);
    inFlightKeys.add(slot);
    try {
      let r: { status: number; body: unknown };
      try {
        r = await fn();
      } catch (err) {
        const { status, body } = errorBody(err);
        // Refusals that depend on the moment (busy, queue full) are not remembered: a retry may succeed.
        if (status === 409 || status === 429 || status >= 500) throw err;
        r = { status, body };
      }
      const text = JSON.stringify(r.body);
      await db.rememberIdempotent(c.project, key, fingerprint, r.status, text);
      return reply.code(r.status).type('application/json').send(text);
    } finally {
      inFlightKeys.delete(slot);
    }
  }

  const route = (method: 'GET' | 'POST' | 'DELETE', url: string, summary: string, schema: Record<string, unknown>, auth: boolean, handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>) => {
    routes.push({ method, url, summary, schema, auth });
    app.route({ method, url, schema, handler });
  };
  const jsonOut = (s: object) => ({ 200: s, '4xx': errorSchema, '5xx': errorSchema });

  route('GET', '/v1/health', 'Liveness (no token)', {}, false, async () => ({ status: 'ok', version: API_VERSION, running_jobs: runner.runningCount, role, state: db.kind, key_manager: keys.backend }));

  route('POST', '/v1/volumes', 'Create a volume (blank, from a local image file, an image service image or a backup)', { body: createVolumeBody, response: { 202: { type: 'object', properties: { volume: volumeSchema, job: jobSchema } }, '4xx': errorSchema } }, true, async (req, reply) => {
    const c = writer(req);
    return idempotent(req, reply, c, async () => {
      const r = await volumes.create(c, req.body as CreateVolumeRequest);
      runner.kick();
      return { status: 202, body: { volume: volumeView(r.volume), job: jobView(runner.view(r.job)) } };
    });
  });
  route('GET', '/v1/volumes', "The caller's project's volumes", { response: jsonOut({ type: 'object', properties: { volumes: { type: 'array', items: volumeSchema } } }) }, true, async (req) => {
    const c = caller(req);
    return { volumes: (await db.volumes(c.project)).map(volumeView) };
  });
  route('GET', '/v1/volumes/:id', 'One volume', { params: idParams, response: jsonOut({ type: 'object', properties: { volume: volumeSchema } }) }, true, async (req) => {
    const c = caller(req);
    return { volume: volumeView(await volumes.volumeFor(c, (req.params as { id: string }).id)) };
  });
  route('DELETE', '/v1/volumes/:id', 'Delete a volume (refused while attached or busy)', { params: idParams }, true, async (req, reply) => {
    const c = writer(req);
    await volumes.delete(c, (req.params as { id: string }).id);
    return reply.code(204).send();
  });
  route('POST', '/v1/volumes/:id/actions', 'Start an action job: change_key, migrate, attach, detach, upload_to_image, backup, resize, reencrypt', { params: idParams, body: actionBody, response: { 202: { type: 'object', properties: { volume: volumeSchema, job: jobSchema } }, '4xx': errorSchema, '5xx': errorSchema } }, true, async (req, reply) => {
    const c = writer(req);
    return idempotent(req, reply, c, async () => {
      const r = await volumes.action(c, (req.params as { id: string }).id, req.body as VolumeAction);
      runner.kick();
      return { status: 202, body: { volume: volumeView(r.volume), job: jobView(runner.view(r.job)) } };
    });
  });
  route('GET', '/v1/jobs', "The caller's project's jobs", { response: jsonOut({ type: 'object', properties: { jobs: { type: 'array', items: jobSchema } } }) }, true, async (req) => {
    const c = caller(req);
    return { jobs: (await db.jobs({ project: c.project })).map((j) => jobView(runner.view(j))) };
  });
  route('GET', '/v1/jobs/:id', 'One job', { params: idParams, response: jsonOut({ type: 'object', properties: { job: jobSchema } }) }, true, async (req) => {
    const c = caller(req);
    const id = (req.params as { id: string }).id;
    // A job running here is answered from memory (no database read per poll); others from the state.
    const live = runner.snapshot(id);
    if (live && live.project === c.project) return { job: jobView(live) };
    return { job: jobView(runner.view(await volumes.jobFor(c, id))) };
  });
  route('POST', '/v1/jobs/:id/cancel', 'Cancel a job', { params: idParams }, true, async (req, reply) => {
    const c = writer(req);
    return idempotent(req, reply, c, async () => {
      const j = await volumes.jobFor(c, (req.params as { id: string }).id);
      if (j.state === 'queued' || j.state === 'running') await runner.cancel(j.id);
      return { status: 202, body: { job: jobView(runner.view((await db.job(j.id))!)) } };
    });
  });
  route('GET', '/v1/jobs/:id/events', 'Job progress as Server-Sent Events (event: job; ends after the final state)', { params: idParams }, true, async (req, reply) => {
    const c = caller(req);
    const j = await volumes.jobFor(c, (req.params as { id: string }).id);
    streamJobs(req, reply, runner, (job) => job.id === j.id, async () => [runner.view((await db.job(j.id))!)], true);
  });
  route('GET', '/v1/events', "Every job of the caller's project as Server-Sent Events", {}, true, async (req, reply) => {
    const c = caller(req);
    streamJobs(req, reply, runner, (job) => job.project === c.project, async () => (await db.jobs({ project: c.project, states: ['queued', 'running'] })).map((x) => runner.view(x)), false);
  });
  route('GET', '/metrics', 'Prometheus metrics (no token)', {}, false, async (_req, reply) => {
    return reply.type(registry.contentType).send(await registry.metrics());
  });
  route('GET', '/openapi.json', 'This document (no token)', {}, false, async () => openApiDocument(routes));
  route('GET', '/', 'Read-only status page (no token; it asks for one)', {}, false, async (_req, reply) => reply.type('text/html; charset=utf-8').send(STATUS_PAGE_HTML));

  let started = false;
  return {
    app,
    store: db,
    get db(): StateDb {
      if (!(db instanceof SqliteStateStore)) throw new InvalidArgumentError('The service keeps its state in PostgreSQL, not in SQLite.');
      return db.db;
    },
    runner,
    volumes,
    keys,
    async start() {
      started = true;
      if (db.kind === 'sqlite') await volumes.restoreAttachments();
      await runner.start();
      // On PostgreSQL a worker's owner id exists once its dispatch has started.
      if (db.kind !== 'sqlite' && role !== 'api') await volumes.restoreAttachments();
    },
    async close() {
      if (started) await runner.stop();
      await app.close();
      await volumes.close();
      if (!o.keys) await keys.close();
      await db.close();
      await stateLock?.release();
    },
  };
}

/** Writes `event: job` frames for matching jobs; with `untilDone`, ends after the job's final state. */
function streamJobs(req: FastifyRequest, reply: FastifyReply, runner: JobRunner, match: (j: JobRow) => boolean, initial: () => Promise<JobRow[]>, untilDone: boolean): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  const send = (j: JobRow) => res.write(`event: job\ndata: ${JSON.stringify(jobView(j))}\n\n`);
  const done = (j: JobRow) => j.state !== 'queued' && j.state !== 'running';
  let closed = false;
  const finish = () => {
    if (closed) return;
    closed = true;
    runner.off('job', onJob);
    clearInterval(ping);
    res.end();
  };
  const onJob = ({ job }: JobEvent) => {
    if (!match(job)) return;
    send(job);
    if (untilDone && done(job)) finish();
  };
  runner.on('job', onJob);
  const ping = setInterval(() => res.write(': ping\n\n'), 15000);
  req.raw.on('close', finish);
  void initial().then((jobs) => {
    for (const j of jobs) {
      if (closed) return;
      send(j);
      if (untilDone && done(j)) finish();
    }
  });
}

/** OpenAPI 3.1 from the routes' own schemas. */
function openApiDocument(routes: Array<{ method: string; url: string; summary: string; schema: Record<string, unknown>; auth: boolean }>): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const path = r.url.replace(/:(\w+)/g, '{$1}');
    const op: Record<string, unknown> = { summary: r.summary, responses: {} };
    const s = r.schema as { params?: { properties: Record<string, unknown> }; body?: unknown; response?: Record<string, unknown> };
    if (s.params) op.parameters = Object.entries(s.params.properties).map(([name, schema]) => ({ name, in: 'path', required: true, schema }));
    if (r.method === 'POST') {
      (op.parameters as unknown[] | undefined) ?? (op.parameters = []);
      (op.parameters as unknown[]).push({ name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', maxLength: 255 } });
    }
    if (s.body) op.requestBody = { required: true, content: { 'application/json': { schema: s.body } } };
    const responses: Record<string, unknown> = {};
    for (const [code, schema] of Object.entries(s.response ?? {})) responses[code.toUpperCase()] = { description: code, content: { 'application/json': { schema } } };
    if (Object.keys(responses).length === 0) responses['200'] = { description: 'OK' };
    op.responses = responses;
    if (!r.auth) op.security = [];
    (paths[path] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'brickcrypt service', version: API_VERSION, description: 'Encrypted block volumes; every long operation is a resumable job.' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } }, schemas: { Volume: volumeSchema, Job: jobSchema, Error: errorSchema } },
    security: [{ bearer: [] }],
    paths,
  };
}
