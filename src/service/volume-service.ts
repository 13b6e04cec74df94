/**
 * What the HTTP API does with volumes, independent of HTTP: validation that happens before
 * anything starts, the job handlers (create, change_key, migrate, attach, detach) and their
 * checkpoints, and synchronous deletion.
 *
 * Every key operation runs as the API caller (`job.caller`), unchanged: the key manager's
 * policy decides and audits, so a `creator` can create a volume (and its key) but any job that
 * must read a key back (attach, change_key, migrate) fails with FORBIDDEN for it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { isAbsolute, join, sep } from 'node:path';
import {
  type BrickcryptError,
  ForbiddenError,
  InUseError,
  InsufficientSpaceError,
  InvalidArgumentError,
  LockedError,
  NotFoundError,
  NotImplementedError,
  UnsupportedError,
} from '../errors.js';
import { VolumeLock } from '../devices/volume-lock.js';
import { openImage } from '../images/open-image.js';
import { detectFormat } from '../images/detect.js';
import { FileDevice } from '../devices/file-device.js';
import { LuksVolume } from '../luks/index.js';
import { NbdServer } from '../nbd/server.js';
import { nbdUri } from '../nbd/uri.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import { withoutToken } from '../keys/forwarded-token.js';
import type { Passphrase } from '../secret.js';
import { resumableCopy } from '../workflows/resumable-copy.js';
import { CryptoPool, serverWorkerCount } from '../workflows/worker-pool.js';
import { ACTIVE_JOB_STATES, type JobRow, type VolumeFormat, type VolumeRow } from './state-db.js';
import type { StateStore } from './state-store.js';
import type { JobContext, JobHandler, JobRunner } from './job-runner.js';
import { serviceJobs, type ServiceJobDeps } from './jobs/index.js';
import {
  createVolumeFile,
  formatOptionsOf,
  newKeyPassphrase,
  openVolumeFile,
  parseVolumeSize,
  passphraseOfKey,
  type LuksRequestOptions,
  type OpenVolume,
} from './volume-files.js';

export interface VolumeServiceOptions {
  stateDir: string;
  /** Where new volume files go (default STATE/volumes); rows keep each file's absolute path. */
  volumesDir?: string;
  db: StateStore;
  keys: KeyManager;
  /** Host the NBD servers of attachments listen on (default 127.0.0.1). */
  nbdHost?: string;
  /** Copy rate limit in bytes per second (Cinder's volume_copy_bps_limit); 0 = none. */
  copyBytesPerSecond?: number;
  /** Bytes between copy checkpoints (default 16 MiB). */
  checkpointBytes?: number;
  /**
   * Directories `source.image_file` may name files in (after resolving symbolic links); default
   * `STATE/images`. Callers must not make the service read arbitrary files of its host.
   */
  imageDirs?: readonly string[];
  /** Glance v2 endpoint for upload_to_image and source.image_id. */
  imageServiceUrl?: string;
  /** Backup repository URI for backup and source.backup_id. */
  backupRepo?: string;
  /** Environment the backup store adapters read credentials from (default process.env). */
  env?: NodeJS.ProcessEnv;
  log?: (m: string) => void;
}

export interface CreateVolumeRequest {
  name: string;
  format: VolumeFormat;
  size?: number | string;
  source?: { image_file?: string; image_id?: string; backup_id?: string; require_signature?: boolean };
  key?: string | { id: string };
  luks?: LuksRequestOptions;
}

export type VolumeAction = Record<string, Record<string, unknown>>;

/** Actions whose engines this build does not have (they answer 501 NOT_IMPLEMENTED). */
export const UNBUILT_ACTIONS: Record<string, string> = {};

const CONSUMER = (volumeId: string) => ({ service: 'brickcrypt', resourceType: 'volume', resourceId: volumeId });
/** KMIP 1.x has no consumers (UnsupportedError): the volume row is then the only record of the use. */
const noConsumers = (err: unknown): void => {
  if (!(err instanceof UnsupportedError)) throw err;
};

interface Attachment {
  server: NbdServer;
  opened: OpenVolume;
  lock: VolumeLock;
}

export class VolumeService {
  readonly #o: VolumeServiceOptions;
  readonly #db: StateStore;
  readonly #attachments = new Map<string, Attachment>();
  /** Crypto worker threads shared by every open volume (copies and attachments). */
  readonly #pool: CryptoPool;
  runner!: JobRunner;
  /** Jobs with a module of their own (src/service/jobs/). */
  readonly #jobs: ReturnType<typeof serviceJobs>;
  readonly #deps: ServiceJobDeps;

  constructor(options: VolumeServiceOptions) {
    this.#o = options;
    this.#db = options.db;
    this.#pool = CryptoPool.create(serverWorkerCount());
    this.#deps = {
      stateDir: options.stateDir,
      volumesDir: options.volumesDir ?? join(options.stateDir, 'volumes'),
      db: options.db,
      keys: options.keys,
      pool: this.#pool,
      ...(options.imageServiceUrl !== undefined ? { imageServiceUrl: options.imageServiceUrl } : {}),
      ...(options.backupRepo !== undefined ? { backupRepo: options.backupRepo } : {}),
      ...(options.env !== undefined ? { env: options.env } : {}),
      log: options.log ?? (() => {}),
    };
    this.#jobs = serviceJobs(this.#deps);
  }

  get volumesDir(): string {
    return this.#deps.volumesDir;
  }

  /** The caller's volume, or NotFoundError (another project's volume does not exist for it). */
  async volumeFor(caller: CallerIdentity, id: string): Promise<VolumeRow> {
    const v = await this.#db.volume(id);
    if (!v || v.project !== caller.project) throw new NotFoundError(`Volume ${id} not found.`);
    return v;
  }

  async jobFor(caller: CallerIdentity, id: string): Promise<JobRow> {
    const j = await this.#db.job(id);
    if (!j || j.project !== caller.project) throw new NotFoundError(`Job ${id} not found.`);
    return j;
  }

  async #assertIdle(v: VolumeRow): Promise<void> {
    const active = await this.#db.jobs({ volumeId: v.id, states: ACTIVE_JOB_STATES });
    if (active.length > 0) throw new LockedError(`Volume ${v.id} is busy with job ${active[0]!.id} (${active[0]!.type}).`);
  }

  /** Validates a create request, inserts the volume (`creating`) and its job in one transaction. */
  async create(caller: CallerIdentity, req: CreateVolumeRequest): Promise<{ volume: VolumeRow; job: JobRow }> {
    const src = req.source ?? {};
    const kinds = (['image_file', 'image_id', 'backup_id'] as const).filter((k) => src[k] !== undefined);
    if (req.source !== undefined && kinds.length !== 1) throw new InvalidArgumentError('source takes exactly one of image_file, image_id, backup_id.');
    if (src.require_signature !== undefined && src.image_id === undefined) throw new InvalidArgumentError('source.require_signature goes with source.image_id (image service images carry signatures).');
    if (req.format === 'raw' && (req.key !== undefined || req.luks !== undefined)) throw new InvalidArgumentError('A raw volume takes no key and no luks options.');
    if (req.luks) formatOptionsOf(req.format as 'luks1' | 'luks2', req.luks); // refuses bad combinations now
    let size = req.size !== undefined ? parseVolumeSize(req.size) : undefined;
    let imageFile: string | undefined;
    if (src.image_file !== undefined) {
      imageFile = await this.#allowedImage(src.image_file);
      const imageSize = await probeImage(imageFile);
      if (size === undefined) size = imageSize;
      if (size < imageSize) throw new InsufficientSpaceError(`size ${size} is smaller than the image's ${imageSize} bytes.`);
    }
    const keyId = typeof req.key === 'string' ? req.key : req.key?.id;
    if (keyId !== undefined) await this.#o.keys.getMetadata(caller, keyId); // unknown or foreign key: 404 now, not in the job
    const sourceKind = src.image_id !== undefined ? 'image_id' : src.backup_id !== undefined ? 'backup_id' : undefined;
    let sourceParams: Record<string, unknown> = {};
    if (sourceKind) {
      const prepared = await this.#jobs.sources[sourceKind]!.prepare(this.#deps, caller, src[sourceKind]!, {
        format: req.format,
        ...(size !== undefined ? { size } : {}),
        ...(keyId !== undefined ? { keyId } : {}),
        ...(req.luks ? { luks: req.luks } : {}),
        ...(src.require_signature ? { requireSignature: true } : {}),
      });
      size = prepared.size;
      sourceParams = { source_kind: sourceKind, ...prepared.params };
    }
    if (size === undefined) throw new InvalidArgumentError('Give size (a blank volume) or a source.');
    await fsp.mkdir(this.volumesDir, { recursive: true });
    const id = randomUUID();
    const path = join(this.volumesDir, `${id}.img`);
    const { job, volume } = await this.runner.submit(
      {
        type: 'create_volume',
        volume_id: id,
        caller,
        params: { size, format: req.format, ...sourceParams, ...(imageFile ? { image_file: imageFile } : {}), ...(keyId ? { key_id: keyId } : {}), ...(req.luks ? { luks: req.luks } : {}) },
      },
      {
        insertVolume: {
        id,
        name: req.name,
        project: caller.project,
        user: caller.user,
        status: 'creating',
        size: size!,
        format: req.format,
        path,
        encryption_key_id: keyId ?? null,
        key_owned: false,
        cipher: null,
        },
      },
    );
    return { volume: volume!, job };
  }

  /** The real path of an image file inside one of the image directories, or ForbiddenError/NotFoundError. */
  async #allowedImage(path: string): Promise<string> {
    if (!isAbsolute(path)) throw new InvalidArgumentError(`source.image_file must be an absolute path, not '${path}'.`);
    let real: string;
    try {
      real = await fsp.realpath(path);
    } catch {
      throw new NotFoundError(`Image file ${path} does not exist.`);
    }
    const dirs = this.#o.imageDirs ?? [join(this.#o.stateDir, 'images')];
    for (const d of dirs) {
      const root = await fsp.realpath(d).catch(() => undefined);
      if (root !== undefined && (real.startsWith(root.endsWith(sep) ? root : root + sep))) return real;
    }
    throw new ForbiddenError(`Image file ${path} is outside the service's image directories (${dirs.join(', ')}).`);
  }

  /** Starts an action job on a volume (409 while it is busy; 501 for unbuilt actions). */
  async action(caller: CallerIdentity, id: string, body: VolumeAction): Promise<{ volume: VolumeRow; job: JobRow }> {
    const v = await this.volumeFor(caller, id);
    const [name, params] = Object.entries(body)[0]!;
    if (UNBUILT_ACTIONS[name]) throw new NotImplementedError(`The ${name} action needs ${UNBUILT_ACTIONS[name]}, which this build does not include.`);
    await this.#assertIdle(v);
    const own = this.#jobs.actions[name];
    if (own) {
      own.validate(this.#deps, caller, v, params);
      const r = await this.runner.submit({ type: name, volume_id: v.id, caller, params }, { volumeStatus: own.busyStatus });
      return { volume: r.volume!, job: r.job };
    }
    const needs = (ok: boolean, what: string) => {
      if (!ok) throw new LockedError(`Volume ${v.id} is ${v.status}; ${name} needs it ${what}.`);
    };
    switch (name) {
      case 'change_key':
        if (v.format === 'raw') throw new InvalidArgumentError('change_key applies to LUKS volumes only.');
        needs(v.status === 'available' || v.status === 'in-use', 'available or in-use');
        break;
      case 'migrate': {
        needs(v.status === 'available', 'available');
        const target = params.format as VolumeFormat;
        if (target === v.format && target === 'raw') throw new InvalidArgumentError('The volume is raw already.');
        if (params.luks) formatOptionsOf(target as 'luks1' | 'luks2', params.luks as LuksRequestOptions);
        break;
      }
      case 'attach':
        needs(v.status === 'available', 'available');
        break;
      case 'detach':
        needs(v.status === 'in-use', 'in-use');
        break;
      default:
        throw new InvalidArgumentError(`Unknown action ${name}.`);
    }
    const r = await this.runner.submit({ type: name, volume_id: v.id, caller, params }, name !== 'detach' && name !== 'change_key' ? { volumeStatus: 'maintenance' } : {});
    return { volume: r.volume!, job: r.job };
  }

  /** Deletes an idle, detached volume, its file and (when the service made it) its key. */
  async delete(caller: CallerIdentity, id: string): Promise<void> {
    const v = await this.volumeFor(caller, id);
    if (v.status === 'in-use' || this.#attachments.has(v.id)) throw new InUseError(`Volume ${v.id} is attached; detach it first.`);
    await this.#assertIdle(v);
    const lock = await VolumeLock.acquire(v.path);
    try {
      await this.#db.updateVolume(v.id, { status: 'deleting' });
      if (v.key_owned && v.encryption_key_id) {
        await this.#o.keys.removeConsumer(caller, v.encryption_key_id, CONSUMER(v.id)).catch(() => {});
        await this.#o.keys.delete(caller, v.encryption_key_id, { force: true });
      } else if (v.encryption_key_id) {
        await this.#o.keys.removeConsumer(caller, v.encryption_key_id, CONSUMER(v.id)).catch(() => {});
      }
      await fsp.rm(v.path, { force: true });
      await this.#db.deleteVolume(v.id);
    } catch (err) {
      if ((await this.#db.volume(v.id))) (await this.#db.updateVolume(v.id, { status: v.status }));
      throw err;
    } finally {
      await lock.release();
    }
  }

  /** The job handlers, by job type. */
  handlers(): Record<string, JobHandler> {
    const toStatus = (status: VolumeRow['status']) => async (job: JobRow) => {
      if (job.volume_id && (await this.#db.volume(job.volume_id))) (await this.#db.updateVolume(job.volume_id, { status }));
    };
    return {
      create_volume: {
        run: (ctx) => {
          const kind = ctx.job.params.source_kind as string | undefined;
          return kind ? this.#jobs.sources[kind]!.handler.run(ctx) : this.#runCreate(ctx);
        },
        cleanup: async (job, outcome, err) => {
          const kind = job.params.source_kind as string | undefined;
          return kind ? this.#jobs.sources[kind]!.handler.cleanup?.(job, outcome, err) : this.#cleanupCreate(job);
        },
      },
      ...Object.fromEntries(Object.entries(this.#jobs.actions).map(([name, a]) => [name, a.handler])),
      change_key: { run: (ctx) => this.#runChangeKey(ctx) },
      migrate: { run: (ctx) => this.#runMigrate(ctx), cleanup: async (job, outcome, err) => this.#cleanupMigrate(job, outcome, err) },
      attach: { run: (ctx) => this.#runAttach(ctx), cleanup: toStatus('available') },
      // The NBD export lives in the process that ran the attach: its detach runs there too.
      detach: { run: (ctx) => this.#runDetach(ctx), placement: async (job) => this.#attachmentOf(await this.#db.volume(job.volume_id!))?.owner },
    };
  }

  // --- create ---

  /**
   * Phases: `start` (key) -> `format` (volume file and header) -> `copy` (offset) -> done.
   * Resumed after a crash, a LUKS volume's key is read back as the caller; a caller that may not
   * read keys (role creator) gets a fresh key and the volume is formatted again from the start.
   */
  async #runCreate(ctx: JobContext): Promise<Record<string, unknown>> {
    const job = ctx.job;
    const p = job.params as { size: number; format: VolumeFormat; image_file?: string; key_id?: string; luks?: LuksRequestOptions };
    const vol = (await this.#db.volume(job.volume_id!))!;
    const km = this.#o.keys;
    let cp = (job.checkpoint ?? { phase: 'start' }) as { phase: string; offset?: number };
    const lock = await VolumeLock.acquire(vol.path);
    let pass: Passphrase | undefined;
    try {
      if (p.format !== 'raw') {
        if (cp.phase === 'start') {
          pass = await this.#keyForNewVolume(job.caller, vol, p.key_id);
          cp = { phase: 'format' };
          await ctx.checkpoint(cp);
        } else {
          const current = (await this.#db.volume(vol.id))!;
          try {
            pass = await passphraseOfKey(km, job.caller, current.encryption_key_id!);
          } catch (err) {
            if (!(err instanceof ForbiddenError) || !current.key_owned) throw err;
            // The key's bytes were handed out once, to the run that died: start over with a new key.
            await km.delete(job.caller, current.encryption_key_id!, { force: true }).catch(() => {});
            pass = await this.#keyForNewVolume(job.caller, current, undefined);
            cp = { phase: 'format' };
            await ctx.checkpoint(cp);
          }
        }
      }
      if (cp.phase === 'start') cp = { phase: 'format' }; // raw: no key
      if (cp.phase === 'format') {
        await fsp.rm(vol.path, { force: true });
        const { cipher } = await createVolumeFile(vol.path, p.format, p.size, { ...(pass ? { passphrase: pass } : {}), ...(p.luks ? { luks: p.luks } : {}) });
        await this.#db.updateVolume(vol.id, { cipher });
        cp = { phase: 'copy', offset: 0 };
        await ctx.checkpoint(cp);
      }
      let copied = 0;
      const resumedFrom = cp.offset ?? 0;
      if (p.image_file) {
        copied = await this.#copyInto(ctx, p.image_file, vol.path, p.format, pass ? (pass.clone() as Passphrase) : undefined, resumedFrom);
      }
      ctx.progress(p.size, p.size);
      await this.#db.updateVolume(vol.id, { status: 'available' });
      // copied_bytes: copied by the run that finished; resumed_from: the checkpoint it started at.
      return { volume_id: vol.id, copied_bytes: copied, resumed_from: resumedFrom, attempts: job.attempts };
    } finally {
      pass?.wipe();
      await lock.release();
    }
  }

  async #keyForNewVolume(caller: CallerIdentity, vol: VolumeRow, existing: string | undefined): Promise<Passphrase> {
    const km = this.#o.keys;
    if (existing) {
      const pass = await passphraseOfKey(km, caller, existing);
      await km.addConsumer(caller, existing, CONSUMER(vol.id)).catch(noConsumers);
      return pass;
    }
    const { id, passphrase } = await newKeyPassphrase(km, caller, `volume-${vol.id}`);
    await this.#db.updateVolume(vol.id, { encryption_key_id: id, key_owned: true });
    await km.addConsumer(caller, id, CONSUMER(vol.id)).catch(noConsumers);
    return passphrase;
  }

  /** Copies an image's guest bytes into a volume file from `start`, checkpointing as it goes. */
  async #copyInto(ctx: JobContext, imageFile: string, volumePath: string, format: VolumeFormat, pass: Passphrase | undefined, start: number): Promise<number> {
    const image = await openImage(imageFile, { readOnly: true });
    try {
      const target = await openVolumeFile(volumePath, format, { pool: this.#pool, ...(pass ? { passphrase: pass } : {}) });
      try {
        const length = image.device.size;
        ctx.progress(start, length);
        return await resumableCopy({
          source: image.device,
          target: target.device,
          length,
          start,
          commitBytes: this.#o.checkpointBytes,
          bytesPerSecond: this.#o.copyBytesPerSecond,
          signal: ctx.signal,
          onProgress: (done) => ctx.progress(done, length),
          commit: (offset) => ctx.checkpoint({ phase: 'copy', offset }),
        });
      } finally {
        await target.close();
      }
    } finally {
      await image.close();
    }
  }

  async #cleanupCreate(job: JobRow): Promise<void> {
    const v = job.volume_id ? (await this.#db.volume(job.volume_id)) : undefined;
    if (!v) return;
    // Nothing half-written stays behind as a volume: the file goes, the row says error.
    await fsp.rm(v.path, { force: true });
    await this.#db.updateVolume(v.id, { status: 'error' });
  }

  // --- change_key ---

  /** Phases: `start` -> `add` (new key id; the keyslot is rewritten) -> `swap` (the volume row names the new key). */
  async #runChangeKey(ctx: JobContext): Promise<Record<string, unknown>> {
    const job = ctx.job;
    const km = this.#o.keys;
    const vol = (await this.#db.volume(job.volume_id!))!;
    let cp = (job.checkpoint ?? { phase: 'start' }) as { phase: string; new_key_id?: string };
    const oldKeyId = vol.encryption_key_id!;
    const attached = this.#attachments.has(vol.id);
    const lock = attached ? undefined : await VolumeLock.acquire(vol.path);
    let oldPass: Passphrase | undefined;
    let newPass: Passphrase | undefined;
    try {
      if (cp.phase === 'start') {
        oldPass = await passphraseOfKey(km, job.caller, oldKeyId);
        const created = await newKeyPassphrase(km, job.caller, `volume-${vol.id}`);
        newPass = created.passphrase;
        cp = { phase: 'add', new_key_id: created.id };
        await ctx.checkpoint(cp);
      }
      let keyslot: number | undefined;
      if (cp.phase === 'add') {
        newPass ??= await passphraseOfKey(km, job.caller, cp.new_key_id!);
        const file = await FileDevice.open(vol.path);
        try {
          const luks = await LuksVolume.open(file);
          const already = await luks.testPassphrase(newPass).then(
            (slot) => slot,
            () => undefined,
          );
          if (already === undefined) {
            oldPass ??= await passphraseOfKey(km, job.caller, oldKeyId);
            const kdf = job.params.luks ? formatOptionsOf(vol.format as 'luks1' | 'luks2', job.params.luks as LuksRequestOptions) : {};
            keyslot = await luks.changeKey(oldPass, newPass, kdf);
          } else keyslot = already;
          await file.sync();
        } finally {
          await file.close();
        }
        cp = { phase: 'swap', new_key_id: cp.new_key_id! };
        await ctx.checkpoint(cp);
      }
      await this.#db.updateVolume(vol.id, { encryption_key_id: cp.new_key_id!, key_owned: true });
      await km.addConsumer(job.caller, cp.new_key_id!, CONSUMER(vol.id)).catch(() => {});
      await km.removeConsumer(job.caller, oldKeyId, CONSUMER(vol.id)).catch(() => {});
      if (vol.key_owned) await km.delete(job.caller, oldKeyId, { force: true }).catch(() => {});
      return { old_key_id: oldKeyId, new_key_id: cp.new_key_id!, ...(keyslot !== undefined ? { keyslot } : {}) };
    } finally {
      oldPass?.wipe();
      newPass?.wipe();
      await lock?.release();
    }
  }

  // --- migrate ---

  /** Phases: `start` (target key) -> `format` -> `copy` (offset) -> `swap`; the source stays until the swap. */
  async #runMigrate(ctx: JobContext): Promise<Record<string, unknown>> {
    const job = ctx.job;
    const km = this.#o.keys;
    const vol = (await this.#db.volume(job.volume_id!))!;
    const p = job.params as { format: VolumeFormat; luks?: LuksRequestOptions };
    type Cp = { phase: string; target_path?: string; target_key_id?: string | null; new_key?: boolean; offset?: number; source_path?: string; cipher?: string | null };
    let cp = (job.checkpoint ?? { phase: 'start' }) as Cp;
    const lock = await VolumeLock.acquire(vol.path);
    let srcPass: Passphrase | undefined;
    let dstPass: Passphrase | undefined;
    try {
      const sourcePath = cp.source_path ?? vol.path;
      if (cp.phase === 'start') {
        const target_path = join(this.volumesDir, `${vol.id}.${job.id.slice(0, 8)}.img`);
        if (vol.format !== 'raw') srcPass = await passphraseOfKey(km, job.caller, vol.encryption_key_id!);
        let target_key_id: string | null = null;
        let new_key = false;
        if (p.format !== 'raw') {
          if (vol.encryption_key_id && srcPass) {
            target_key_id = vol.encryption_key_id;
            dstPass = srcPass.clone() as Passphrase;
          } else {
            const created = await newKeyPassphrase(km, job.caller, `volume-${vol.id}`);
            target_key_id = created.id;
            dstPass = created.passphrase;
            new_key = true;
          }
        }
        cp = { phase: 'format', target_path, target_key_id, new_key, source_path: vol.path };
        await ctx.checkpoint(cp);
      }
      if (cp.phase === 'format') {
        if (p.format !== 'raw') dstPass ??= await passphraseOfKey(km, job.caller, cp.target_key_id!);
        await fsp.rm(cp.target_path!, { force: true });
        const { cipher } = await createVolumeFile(cp.target_path!, p.format, vol.size, { ...(dstPass ? { passphrase: dstPass } : {}), ...(p.luks ? { luks: p.luks } : {}) });
        cp = { ...cp, phase: 'copy', offset: 0, cipher };
        await ctx.checkpoint(cp);
      }
      const resumedFrom = cp.phase === 'copy' ? (cp.offset ?? 0) : cp.phase === 'swap' ? vol.size : 0;
      if (cp.phase === 'copy') {
        if (vol.format !== 'raw') srcPass ??= await passphraseOfKey(km, job.caller, vol.encryption_key_id!);
        if (p.format !== 'raw') dstPass ??= await passphraseOfKey(km, job.caller, cp.target_key_id!);
        const source = await openVolumeFile(sourcePath, vol.format, { readOnly: true, pool: this.#pool, ...(srcPass ? { passphrase: srcPass.clone() as Passphrase } : {}) });
        try {
          const target = await openVolumeFile(cp.target_path!, p.format, { pool: this.#pool, ...(dstPass ? { passphrase: dstPass.clone() as Passphrase } : {}) });
          try {
            const length = vol.size;
            ctx.progress(cp.offset ?? 0, length);
            const base = cp;
            await resumableCopy({
              source: source.device,
              target: target.device,
              length,
              start: cp.offset ?? 0,
              commitBytes: this.#o.checkpointBytes,
              bytesPerSecond: this.#o.copyBytesPerSecond,
              signal: ctx.signal,
              onProgress: (done) => ctx.progress(done, length),
              commit: (offset) => ctx.checkpoint({ ...base, phase: 'copy', offset }),
            });
          } finally {
            await target.close();
          }
        } finally {
          await source.close();
        }
        cp = { ...cp, phase: 'swap' };
        await ctx.checkpoint(cp);
      }
      // swap: the row names the new file, then the old file and a key nobody uses go.
      const oldKey = vol.encryption_key_id;
      await this.#db.updateVolume(vol.id, {
        path: cp.target_path!,
        format: p.format,
        encryption_key_id: cp.target_key_id ?? null,
        key_owned: cp.new_key ? true : cp.target_key_id ? vol.key_owned : false,
        cipher: cp.cipher ?? null,
        status: 'available',
      });
      if (cp.source_path && cp.source_path !== cp.target_path) await fsp.rm(cp.source_path, { force: true });
      if (cp.new_key && cp.target_key_id) await km.addConsumer(job.caller, cp.target_key_id, CONSUMER(vol.id)).catch(() => {});
      if (oldKey && oldKey !== cp.target_key_id) {
        await km.removeConsumer(job.caller, oldKey, CONSUMER(vol.id)).catch(() => {});
        if (vol.key_owned) await km.delete(job.caller, oldKey, { force: true }).catch(() => {});
      }
      return { from: vol.format, to: p.format, path: cp.target_path!, resumed_from: resumedFrom, attempts: job.attempts };
    } finally {
      srcPass?.wipe();
      dstPass?.wipe();
      await lock.release();
    }
  }

  async #cleanupMigrate(job: JobRow, _outcome: string, _err: BrickcryptError): Promise<void> {
    const cp = job.checkpoint as { target_path?: string; target_key_id?: string; new_key?: boolean } | null;
    const v = job.volume_id ? (await this.#db.volume(job.volume_id)) : undefined;
    if (cp?.target_path && v && v.path !== cp.target_path) await fsp.rm(cp.target_path, { force: true });
    if (cp?.new_key && cp.target_key_id) await this.#o.keys.delete(job.caller, cp.target_key_id, { force: true }).catch(() => {});
    if (v) (await this.#db.updateVolume(v.id, { status: 'available' }));
  }

  // --- attach / detach ---

  async #serve(vol: VolumeRow, caller: CallerIdentity, psk: { identity: string; file: string }, port: number): Promise<{ uri: string; port: number }> {
    const lock = await VolumeLock.acquire(vol.path);
    let opened: OpenVolume | undefined;
    try {
      const pass = vol.format === 'raw' ? undefined : await passphraseOfKey(this.#o.keys, caller, vol.encryption_key_id!);
      opened = await openVolumeFile(vol.path, vol.format, { pool: this.#pool, ...(pass ? { passphrase: pass } : {}) });
      const server = new NbdServer({
        exports: { [vol.id]: { device: opened.device, description: `brickcrypt volume ${vol.name}` } },
        defaultExport: vol.id,
        tls: { pskFile: psk.file },
        listenAny: this.#o.nbdHost !== undefined && !/^(127\.|::1$|localhost$)/.test(this.#o.nbdHost),
        log: (m) => this.#o.log?.(`nbd ${vol.id}: ${m}`),
      });
      const host = this.#o.nbdHost ?? '127.0.0.1';
      await server.listen({ host, port });
      const actual = server.port ?? port;
      this.#attachments.set(vol.id, { server, opened, lock });
      return { uri: nbdUri({ host, port: actual, exportName: vol.id, tls: true }), port: actual };
    } catch (err) {
      await opened?.close();
      await lock.release();
      throw err;
    }
  }

  async #runAttach(ctx: JobContext): Promise<Record<string, unknown>> {
    const job = ctx.job;
    const vol = (await this.#db.volume(job.volume_id!))!;
    const dir = join(this.#o.stateDir, 'attachments');
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const identity = `brickcrypt-${vol.id.slice(0, 8)}`;
    const key = randomBytes(32).toString('hex');
    const file = join(dir, `${vol.id}.psk`);
    await fsp.writeFile(file, `${identity}:${key}\n`, { mode: 0o600 });
    const { uri, port } = await this.#serve(vol, job.caller, { identity, file }, 0);
    const attachment: AttachmentRecord = { uri, tls_psk_identity: identity, port, caller: withoutToken(job.caller), owner: this.runner.dispatch.owner, attached_at: new Date().toISOString() };
    await this.#db.updateVolume(vol.id, { status: 'in-use', attachment: { ...attachment } });
    return { uri, tls_psk_identity: identity, tls_psk_key: key };
  }

  async #runDetach(ctx: JobContext): Promise<Record<string, unknown>> {
    const vol = (await this.#db.volume(ctx.job.volume_id!))!;
    await this.#closeAttachment(vol.id);
    await fsp.rm(join(this.#o.stateDir, 'attachments', `${vol.id}.psk`), { force: true });
    await this.#db.updateVolume(vol.id, { status: 'available', attachment: null });
    return { volume_id: vol.id };
  }

  async #closeAttachment(id: string): Promise<void> {
    const a = this.#attachments.get(id);
    if (!a) return;
    this.#attachments.delete(id);
    await a.server.close().catch(() => {});
    await a.opened.close().catch(() => {});
    await a.lock.release();
  }

  #attachmentOf(v: VolumeRow | undefined): AttachmentRecord | undefined {
    return (v?.attachment ?? undefined) as AttachmentRecord | undefined;
  }

  /**
   * After a restart: serves every volume that was attached again, on its port, with its PSK.
   * With several workers (PostgreSQL), only attachments whose owner is gone (stopped, or no
   * heartbeat) are taken over, and the record then names this worker as their owner.
   */
  async restoreAttachments(): Promise<void> {
    const dispatch = this.runner.dispatch;
    for (const v of (await this.#db.volumes())) {
      const a = this.#attachmentOf(v);
      if (v.status !== 'in-use' || !a || this.#attachments.has(v.id)) continue;
      if (a.owner !== undefined && a.owner !== dispatch.owner && dispatch.ownerAlive && (await dispatch.ownerAlive(a.owner))) continue;
      try {
        const served = await this.#serve(v, a.caller, { identity: a.tls_psk_identity, file: join(this.#o.stateDir, 'attachments', `${v.id}.psk`) }, a.port);
        if (dispatch.owner !== a.owner) await this.#db.updateVolume(v.id, { attachment: { ...a, uri: served.uri, port: served.port, owner: dispatch.owner } });
        this.#o.log?.(`volume ${v.id} served again at port ${served.port}`);
      } catch (err) {
        this.#o.log?.(`volume ${v.id} could not be served again: ${(err as Error).message}`);
        await this.#db.updateVolume(v.id, { status: 'error' });
      }
    }
  }

  async close(): Promise<void> {
    for (const id of [...this.#attachments.keys()]) await this.#closeAttachment(id);
    await this.#pool.close();
  }
}

/** The `attachment` of an in-use volume's record. */
interface AttachmentRecord {
  uri: string;
  tls_psk_identity: string;
  port: number;
  caller: CallerIdentity;
  /** The `JobDispatch.owner` whose process serves the export (absent in records of older versions). */
  owner?: string;
  attached_at: string;
}

/** Size of an image file's guest bytes (raw or qcow2); LUKS images are refused (their key is not the service's). */
async function probeImage(path: string): Promise<number> {
  const file = await FileDevice.open(path, { readOnly: true }).catch((err: unknown) => {
    if ((err as BrickcryptError).code === 'NOT_FOUND' || (err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Image file ${path} does not exist.`);
    throw err;
  });
  let format: string;
  try {
    format = await detectFormat(file);
  } finally {
    await file.close();
  }
  if (format.startsWith('luks')) throw new UnsupportedError(`${path} is a LUKS image; source.image_file takes raw or qcow2 images.`);
  const image = await openImage(path, { readOnly: true });
  try {
    return image.device.size;
  } finally {
    await image.close();
  }
}
