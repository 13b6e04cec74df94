/**
 * `reencrypt`: in-place re-encryption of a LUKS2 volume under a new volume key and a new managed
 * key, through `reencryptVolume` (src/workflows/reencrypt.ts; on-disk state is cryptsetup 2.6's
 * online-reencrypt-v2, so cryptsetup can finish what this job started and the other way round).
 * LUKS1 volumes are re-keyed through a temporary LUKS2 header (src/luks/reencrypt/luks1.ts).
 * Modes `encrypt` (raw -> LUKS2, or LUKS1 with `format: luks1`) and `decrypt` (LUKS -> raw) run
 * in place too (./in-place-modes.ts).
 *
 * The managed key: `key: {create: true}` (the default) creates one as the caller, named as the
 * volume's keys are; `key: {id}` uses an existing key (the caller must be able to read it). Its
 * LUKS passphrase is the os-brick form of its bytes (src/keys/luks-passphrase.ts), as for every
 * volume of the service.
 *
 * Phases (each checkpointed): `start` (the new key; the old key's id, ownership and the header's
 * digests are recorded) -> `reencrypt` (the engine rewrites the data; the keyslot it adds still
 * opens with the old key's passphrase) -> `rekey` (that keyslot gets the new key's passphrase,
 * as change_key does) -> `swap` (the volume's `encryption_key_id` names the new key; the old key
 * loses the volume as consumer and is deleted when the service had made it, as change_key does).
 *
 * Resumption after a crash or kill -9: in `reencrypt`, the volume's header says what is left — a
 * recorded reencryption is continued by the engine from its last committed zone (a hot zone
 * half rewritten is recovered from its checksums or journal); no recorded reencryption with the
 * digests of `start` means it had not begun (it starts); other digests mean the killed run had
 * finished it. `rekey` checks whether the new passphrase opens the volume before changing it.
 */
import { InvalidArgumentError, LockedError, ReencryptionInProgressError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { FileDevice } from '../../devices/file-device.js';
import { LuksVolume } from '../../luks/index.js';
import { isLuks1Reencryption } from '../../luks/reencrypt/luks1.js';
import { hotzoneOf, kdfOf, type ReencryptParams } from './reencrypt-params.js';
import { cleanupDecryptInPlace, cleanupEncryptInPlace, runDecryptInPlace, runEncryptInPlace } from './in-place-modes.js';
import { reencryptVolume, type ReencryptReport } from '../../workflows/reencrypt.js';
import type { Luks2Metadata } from '../../formats/luks2/metadata.js';
import type { Passphrase } from '../../secret.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow } from '../state-db.js';
import { formatOptionsOf, newKeyPassphrase, passphraseOfKey, type LuksRequestOptions } from '../volume-files.js';
import { needStatus, onlyKeys, volumeConsumer, type ActionJob, type ServiceJobDeps } from './service-job.js';


interface Checkpoint {
  phase: 'reencrypt' | 'rekey' | 'swap';
  new_key_id: string;
  new_key_owned: boolean;
  old_key_id: string;
  old_key_owned: boolean;
  /** The header's digest salts before the reencryption (public values): they change when it finishes. */
  old_digests: string;
  runs: number;
}

const PARAMS = ['mode', 'format', 'resume', 'hotzone_size', 'cipher', 'key_size', 'sector_size', 'resilience', 'key', 'luks'] as const;


export function reencryptJob(deps: ServiceJobDeps): ActionJob {
  return {
    busyStatus: 'maintenance',
    validate(_d, _caller, volume, params) {
      onlyKeys(params, PARAMS, 'reencrypt');
      const p = params as ReencryptParams;
      if (p.resume === true) {
        onlyKeys(params, ['resume'], 'reencrypt with resume');
        needStatus(volume, 'reencrypt resume', 'error');
        return;
      }
      const mode = p.mode ?? 'reencrypt';
      if (mode !== 'reencrypt' && mode !== 'encrypt' && mode !== 'decrypt') throw new InvalidArgumentError(`reencrypt: unknown mode ${String(mode)}.`);
      if (p.format !== undefined && mode !== 'encrypt') throw new InvalidArgumentError('reencrypt: format goes with mode encrypt (the format to make).');
      if (mode === 'encrypt') {
        if (volume.format !== 'raw') throw new InvalidArgumentError(`reencrypt mode encrypt applies to raw volumes; volume ${volume.id} is ${volume.format} already.`);
        if (p.format !== undefined && p.format !== 'luks1' && p.format !== 'luks2') throw new InvalidArgumentError(`reencrypt mode encrypt makes luks2 or luks1, not ${String(p.format)}.`);
        if (p.format === 'luks1' && p.sector_size !== undefined && p.sector_size !== 512) throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
      } else if (mode === 'decrypt') {
        if (volume.format === 'raw') throw new InvalidArgumentError(`reencrypt mode decrypt applies to LUKS volumes; volume ${volume.id} is raw.`);
        for (const k of ['cipher', 'key_size', 'sector_size', 'key', 'luks'] as const) if (p[k] !== undefined) throw new InvalidArgumentError(`reencrypt mode decrypt takes no ${k}.`);
      } else {
        if (volume.format === 'raw') throw new InvalidArgumentError('reencrypt (mode reencrypt) applies to LUKS volumes; encrypt a raw volume in place with mode encrypt.');
        if (volume.format === 'luks1' && p.sector_size !== undefined && p.sector_size !== 512) throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
      }
      if (p.key && 'id' in p.key && p.key.id === volume.encryption_key_id) throw new InvalidArgumentError('reencrypt: the new key must differ from the volume\'s key.');
      kdfOf(p, volume.format === 'luks1' || p.format === 'luks1' ? 'luks1' : 'luks2');
      hotzoneOf(p);
      if (volume.status === 'error') throw new LockedError(`Volume ${volume.id} is error; continue an interrupted reencryption with {"reencrypt": {"resume": true}}.`);
      needStatus(volume, 'reencrypt', 'available');
    },
    handler: {
      run: (ctx) => runReencrypt(deps, ctx),
      cleanup: (job: JobRow) => cleanupReencrypt(deps, job),
    } satisfies JobHandler,
  };
}

/**
 * The digest salts of a LUKS header (LUKS1: the volume-key digest salt), and whether it records
 * an unfinished reencryption (a LUKS2 reencryption state, or a LUKS1 re-key's marker or token).
 */
async function headerState(path: string): Promise<{ digests: string; inProgress: boolean }> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const luks1Rekey = await isLuks1Reencryption(file);
    const luks = await LuksVolume.open(file, { readOnly: true });
    const dump = luks.dumpJson() as { version: number; mkDigestSalt?: string; metadata?: Luks2Metadata };
    const digests =
      dump.version === 1
        ? String(dump.mkDigestSalt)
        : Object.values(dump.metadata!.digests)
            .map((d) => (d as { salt: string }).salt)
            .sort()
            .join(',');
    return { digests, inProgress: luks1Rekey || luks.payloadFence instanceof ReencryptionInProgressError };
  } finally {
    await file.close();
  }
}

/**
 * The job a `resume` request continues: the latest failed or cancelled reencrypt job of the
 * volume that got as far as a checkpoint (its new key and phase), with its parameters.
 */
async function interruptedRun(deps: ServiceJobDeps, volumeId: string): Promise<{ params: ReencryptParams; checkpoint: Checkpoint }> {
  const runs = (await deps.db.jobs({ volumeId, states: ['failed', 'cancelled'] }))
    .filter((j) => j.type === 'reencrypt' && j.checkpoint !== null)
    .sort((a, b) => (b.finished_at ?? b.created_at).localeCompare(a.finished_at ?? a.created_at));
  const last = runs[0];
  if (!last) throw new InvalidArgumentError(`Volume ${volumeId} has no interrupted reencryption to resume.`);
  const { resume: _r, ...params } = last.params as ReencryptParams;
  return { params, checkpoint: last.checkpoint as unknown as Checkpoint };
}

async function runReencrypt(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const km = deps.keys;
  const vol = (await deps.db.volume(job.volume_id!))!;
  let p = job.params as ReencryptParams;
  let cp = job.checkpoint as Checkpoint | null;
  if (p.resume === true) {
    // A resume job adopts the interrupted run's parameters (KDF of the rekey phase) and, on its
    // first run, its checkpoint; later runs of this job have their own checkpoint.
    const prev = await interruptedRun(deps, vol.id);
    p = prev.params;
    cp ??= prev.checkpoint;
  }
  if (p.mode === 'encrypt') return runEncryptInPlace(deps, ctx, p, cp as never);
  if (p.mode === 'decrypt') return runDecryptInPlace(deps, ctx, p, cp as never);
  const kdf = kdfOf(p, vol.format === 'luks1' ? 'luks1' : 'luks2');
  const lock = await VolumeLock.acquire(vol.path);
  let oldPass: Passphrase | undefined;
  let newPass: Passphrase | undefined;
  try {
    if (!cp) {
      const { digests } = await headerState(vol.path);
      let new_key_id: string;
      let new_key_owned: boolean;
      if (p.key && 'id' in p.key) {
        newPass = await passphraseOfKey(km, job.caller, p.key.id);
        new_key_id = p.key.id;
        new_key_owned = false;
      } else {
        const created = await newKeyPassphrase(km, job.caller, `volume-${vol.id}`);
        newPass = created.passphrase;
        new_key_id = created.id;
        new_key_owned = true;
      }
      cp = { phase: 'reencrypt', new_key_id, new_key_owned, old_key_id: vol.encryption_key_id!, old_key_owned: vol.key_owned, old_digests: digests, runs: 0 };
    }
    cp = { ...cp, runs: cp.runs + 1 };
    await ctx.checkpoint({ ...cp });
    let report: ReencryptReport | undefined;
    let skipped = false;
    if (cp.phase === 'reencrypt') {
      const state = await headerState(vol.path);
      if (!state.inProgress && state.digests !== cp.old_digests) skipped = true; // the killed run had finished it
      else {
        oldPass = await passphraseOfKey(km, job.caller, cp.old_key_id);
        const { type: _t, sectorSize: _s, ...kdfOptions } = kdf;
        report = await reencryptVolume(vol.path, {
          passphrases: [oldPass],
          ...kdfOptions,
          ...(p.cipher !== undefined ? { cipher: p.cipher } : {}),
          ...(p.key_size !== undefined ? { keySizeBits: p.key_size } : {}),
          ...(p.sector_size !== undefined ? { sectorSize: p.sector_size } : {}),
          ...(p.resilience !== undefined ? { resilience: p.resilience } : {}),
          ...hotzoneOf(p),
          signal: ctx.signal,
          onProgress: ({ done, total }) => ctx.progress(done, total),
        });
        if (!report.finished) throw new ReencryptionInProgressError('The reencryption stopped before the end; the job resumes it.');
      }
      cp = { ...cp, phase: 'rekey' };
      await ctx.checkpoint({ ...cp });
    }
    let keyslot: number | undefined;
    let cipher: string | null;
    if (cp.phase === 'rekey') {
      newPass ??= await passphraseOfKey(km, job.caller, cp.new_key_id);
      const file = await FileDevice.open(vol.path);
      try {
        const luks = await LuksVolume.open(file);
        keyslot = await luks.testPassphrase(newPass).catch(() => undefined);
        if (keyslot === undefined) {
          oldPass ??= await passphraseOfKey(km, job.caller, cp.old_key_id);
          const { type: _t, sectorSize: _s, ...kdfOptions } = kdf;
          keyslot = await luks.changeKey(oldPass, newPass, kdfOptions);
        }
        cipher = luks.encryption;
        await file.sync();
      } finally {
        await file.close();
      }
      cp = { ...cp, phase: 'swap' };
      await ctx.checkpoint({ ...cp });
    }
    {
      const file = await FileDevice.open(vol.path, { readOnly: true });
      try {
        cipher = (await LuksVolume.open(file, { readOnly: true })).encryption;
      } finally {
        await file.close();
      }
    }
    await deps.db.updateVolume(vol.id, { encryption_key_id: cp.new_key_id, key_owned: cp.new_key_owned, cipher, status: 'available' });
    await km.addConsumer(job.caller, cp.new_key_id, volumeConsumer(vol.id)).catch(() => {});
    await km.removeConsumer(job.caller, cp.old_key_id, volumeConsumer(vol.id)).catch(() => {});
    if (cp.old_key_owned) await km.delete(job.caller, cp.old_key_id, { force: true }).catch(() => {});
    ctx.progress(report?.total ?? vol.size, report?.total ?? vol.size);
    return {
      volume_id: vol.id,
      old_key_id: cp.old_key_id,
      new_key_id: cp.new_key_id,
      cipher,
      ...(report ? { sector_size: report.sectorSize, resilience: report.resilience, rewritten_bytes: report.bytes, recovered: report.recovered, resumed: !report.started } : {}),
      ...(skipped ? { resumed: true, rewritten_bytes: 0 } : {}),
      ...(keyslot !== undefined ? { keyslot } : {}),
      runs: cp.runs,
      attempts: job.attempts,
    };
  } finally {
    oldPass?.wipe();
    newPass?.wipe();
    await lock.release();
  }
}

/**
 * A failed or cancelled job. Before the engine recorded anything, or once the reencryption is
 * finished but the keyslot still has the old key's passphrase, the volume opens with its recorded
 * key: it is `available` again and a key the job made is deleted. With a recorded, unfinished
 * reencryption (data part under the old volume key, part under the new) or after the keyslot got
 * the new passphrase, the volume is marked `error`; the header's state is cryptsetup's, so
 * `brickcrypt reencrypt --resume-only` (or cryptsetup) finishes it with the old key's passphrase.
 */
async function cleanupReencrypt(deps: ServiceJobDeps, job: JobRow): Promise<void> {
  const v = job.volume_id ? await deps.db.volume(job.volume_id) : undefined;
  if (!v) return;
  const cp = job.checkpoint as Checkpoint | null;
  // A resume job that failed before adopting a run changed nothing: the volume stays in error.
  if (!cp && (job.params as ReencryptParams).resume === true) return void (await deps.db.updateVolume(v.id, { status: 'error' }));
  const mode = (job.checkpoint as { mode?: string } | null)?.mode ?? (job.params as ReencryptParams).mode;
  if (mode === 'encrypt') return cleanupEncryptInPlace(deps, job, v);
  if (mode === 'decrypt') return cleanupDecryptInPlace(deps, job, v);
  const state = await headerState(v.path).catch(() => undefined);
  let opensWithOldKey = !cp || (state !== undefined && !state.inProgress && (cp.phase === 'reencrypt' || cp.phase === 'rekey'));
  // In `rekey` the keyslot may have the new passphrase already (a stop between the write and the checkpoint).
  if (cp?.phase === 'rekey' && opensWithOldKey) opensWithOldKey = await opensWith(deps, job, v.path, cp.old_key_id);
  if (cp?.new_key_owned && opensWithOldKey) await deps.keys.delete(job.caller, cp.new_key_id, { force: true }).catch(() => undefined);
  await deps.db.updateVolume(v.id, { status: opensWithOldKey ? 'available' : 'error' });
}

async function opensWith(deps: ServiceJobDeps, job: JobRow, path: string, keyId: string): Promise<boolean> {
  const pass = await passphraseOfKey(deps.keys, job.caller, keyId).catch(() => undefined);
  if (!pass) return false;
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const luks = await LuksVolume.open(file, { readOnly: true });
    return await luks.testPassphrase(pass).then(
      () => true,
      () => false,
    );
  } finally {
    pass.wipe();
    await file.close();
  }
}
