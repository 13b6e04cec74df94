/**
 * What a job module of the service gets and gives: the shared dependencies (state, keys, the
 * crypto pool, the configured image service and backup repository) and the two shapes of job
 * it can add — an action on a volume (`POST /v1/volumes/{id}/actions`) or a source a volume
 * is created from (`POST /v1/volumes` with `source.{kind}`).
 *
 * Each job module keeps its own checkpoints in `job.checkpoint` and says in its header comment
 * what a resumed run does (continue, or restart from scratch safely).
 */
import { InvalidArgumentError, LockedError, NotImplementedError } from '../../errors.js';
import type { CallerIdentity, KeyManager } from '../../keys/key-manager.js';
import { GlanceClient } from '../../image-service/glance-client.js';
import { forwardedToken } from '../../keys/forwarded-token.js';
import type { CryptoPool } from '../../workflows/worker-pool.js';
import type { JobHandler } from '../job-runner.js';
import type { VolumeFormat, VolumeRow, VolumeStatus } from '../state-db.js';
import type { StateStore } from '../state-store.js';
import type { LuksRequestOptions } from '../volume-files.js';

export interface ServiceJobDeps {
  stateDir: string;
  volumesDir: string;
  db: StateStore;
  keys: KeyManager;
  pool: CryptoPool;
  /** Glance v2 endpoint (`serve --image-service URL`); undefined: image jobs answer 501. */
  imageServiceUrl?: string;
  /** Backup repository URI (`serve --backup-repo URI`); undefined: backup jobs answer 501. */
  backupRepo?: string;
  /** Environment the object-store adapters read their credentials from (default process.env). */
  env?: NodeJS.ProcessEnv;
  log: (m: string) => void;
}

/** An action on an existing volume. */
export interface ActionJob {
  /** Refusals before anything is queued (bad parameters, wrong volume state, missing configuration). */
  validate(deps: ServiceJobDeps, caller: CallerIdentity, volume: VolumeRow, params: Record<string, unknown>): void;
  /** Volume status while the job is queued or running (restored by the job or its cleanup). */
  busyStatus: VolumeStatus;
  handler: JobHandler;
}

/** What `POST /v1/volumes` asked for, as a source module sees it. */
export interface SourceRequest {
  format: VolumeFormat;
  size?: number;
  keyId?: string;
  luks?: LuksRequestOptions;
  /** `source.require_signature`: an image without img_signature properties is refused. */
  requireSignature?: boolean;
}

/** A source a new volume is made from (`source.image_id`, `source.backup_id`). */
export interface VolumeSource {
  /**
   * Checks the request against the source (as the caller) before the volume row exists;
   * returns the volume's size and the job parameters to store.
   */
  prepare(deps: ServiceJobDeps, caller: CallerIdentity, id: string, request: SourceRequest): Promise<{ size: number; params: Record<string, unknown> }>;
  handler: JobHandler;
}

/**
 * The image-service client acting as the API caller: the identity headers Keystone's middleware
 * sets, plus the caller's own Keystone token when the proxy passed one and this process still
 * holds it (a job resumed after a restart has none: the headers alone, see docs/service.md).
 */
export function imageServiceFor(deps: ServiceJobDeps, caller: CallerIdentity): GlanceClient {
  if (!deps.imageServiceUrl) throw new NotImplementedError('This service runs without an image service: start it with --image-service URL.');
  const token = forwardedToken(caller);
  return new GlanceClient({ url: deps.imageServiceUrl, identity: { user: caller.user, project: caller.project, roles: caller.roles, ...(token ? { token } : {}) } });
}

export function requireBackupRepo(deps: ServiceJobDeps): string {
  if (!deps.backupRepo) throw new NotImplementedError('This service runs without a backup repository: start it with --backup-repo URI.');
  return deps.backupRepo;
}

export function needStatus(volume: VolumeRow, action: string, ...allowed: VolumeStatus[]): void {
  if (!allowed.includes(volume.status)) throw new LockedError(`Volume ${volume.id} is ${volume.status}; ${action} needs it ${allowed.join(' or ')}.`);
}

/** Refuses parameters a schema would not know (the HTTP layer checks too; this guards library callers). */
export function onlyKeys(params: Record<string, unknown>, allowed: readonly string[], what: string): void {
  for (const k of Object.keys(params)) if (!allowed.includes(k)) throw new InvalidArgumentError(`${what}: unknown field ${k}.`);
}

/** The key-manager consumer record of a volume (as volume-service registers it). */
export const volumeConsumer = (volumeId: string) => ({ service: 'brickcrypt', resourceType: 'volume', resourceId: volumeId });
