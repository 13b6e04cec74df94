/**
 * `brickcrypt backup ...`: incremental, deduplicated, compressed and encrypted backups of volumes
 * into a repository (file:, Swift, S3) under the repository's own backup key from the key manager.
 * Encrypted volumes are backed up as their container bytes: no volume key is ever read.
 * Progress is a bar on a TTY (stderr) or JSON lines on stdout with `--json`.
 */
import { withCancellation } from '../cancellation.js';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { AlreadyExistsError, InvalidArgumentError, WrongBackupKeyError } from '../../errors.js';
import type { SecretBytes } from '../../secret.js';
import { addKeyManagerOptions, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import type { Repository } from '../../backup/repository.js';
import type { ObjectStore } from '../../backup/object-store.js';
import type { BackupManifest } from '../../backup/manifest.js';

interface BackupCliOptions extends KeyManagerCliOptions {
  repo?: string;
  keyId?: string;
  json?: boolean;
}

const MIB = 1024 * 1024;
const repoModule = () => import('../../backup/repository.js');
const storeModule = () => import('../../backup/object-store.js');

const REPO_HELP = `
--repo URI (default $BRICKCRYPT_BACKUP_REPO):
  file:DIR                                a directory
  swift+http(s)://HOST:PORT/CONTAINER     OpenStack Swift; credentials from ST_AUTH/ST_USER/ST_KEY
                                          (tempauth) or OS_AUTH_URL/OS_USERNAME/OS_PASSWORD/OS_PROJECT_NAME
  s3://HOST:PORT/BUCKET (s3+https://...)  the S3 API; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_REGION]
The backup key is the repository's own key in the key manager (created by 'backup init');
a caller needs read access to it only (e.g. roles creator,reader with a read grant).`;

function repoUri(o: BackupCliOptions): string {
  const uri = o.repo ?? process.env.BRICKCRYPT_BACKUP_REPO;
  if (!uri) throw new InvalidArgumentError('Give --repo URI (or set BRICKCRYPT_BACKUP_REPO).');
  return uri;
}

function addCommon(cmd: Command): Command {
  cmd.option('--repo <uri>', 'backup repository (see below)').option('--json', 'JSON output (and JSON progress lines)');
  addKeyManagerOptions(cmd, { help: false });
  return cmd.addHelpText('after', REPO_HELP);
}

/** Progress on a TTY bar, as JSON lines, or not at all. */
function progressReporter(json: boolean, label: string) {
  const started = performance.now();
  let last = -Infinity;
  let bar: cliProgress.SingleBar | undefined;
  return {
    update(bytes: number, total: number, extra: Record<string, unknown> = {}) {
      const now = performance.now();
      if (now - last < (json ? 1000 : 200) && bytes < total) return;
      last = now;
      const rate = bytes / Math.max(1e-3, (now - started) / 1000);
      if (json) {
        process.stdout.write(JSON.stringify({ event: 'progress', ...extra, bytes, total, rate: Math.round(rate) }) + '\n');
        return;
      }
      if (!process.stderr.isTTY) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          { stream: process.stderr, format: `${label} {bar} {percentage}% | {done}/{all} MiB | {rate} MiB/s`, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { done: '0', all: (total / MIB).toFixed(0), rate: '0' });
      }
      bar.update(bytes, { done: (bytes / MIB).toFixed(0), all: (total / MIB).toFixed(0), rate: (rate / MIB).toFixed(0) });
    },
    stop() {
      bar?.stop();
    },
  };
}


async function withStore<T>(o: BackupCliOptions, fn: (store: ObjectStore) => Promise<T>): Promise<T> {
  const { openObjectStore } = await storeModule();
  const store = await openObjectStore(repoUri(o));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Opens the repository with its backup key from the key manager (the key's bytes are wiped after). */
async function withRepository<T>(o: BackupCliOptions, fn: (repo: Repository) => Promise<T>): Promise<T> {
  const { Repository, readRepositoryConfig } = await repoModule();
  return withStore(o, async (store) => {
    const config = await readRepositoryConfig(store);
    const keyId = o.keyId ?? config.keyId;
    const secret: SecretBytes = await withKeyManager(o, async (km, caller) => {
      const object = await km.get(caller, keyId);
      if (object.type !== 'symmetric' || object.secret.length !== 32) {
        object.secret.wipe();
        throw new WrongBackupKeyError(`Key ${keyId} is not a 256-bit symmetric key, so it is not this repository's backup key.`);
      }
      return object.secret;
    });
    let repo: Repository;
    try {
      repo = Repository.open(store, config, secret);
    } finally {
      secret.wipe();
    }
    try {
      return await fn(repo);
    } finally {
      repo.close();
    }
  });
}

function out(o: BackupCliOptions, value: unknown, text: string): void {
  process.stdout.write(o.json ? JSON.stringify(value) + '\n' : text);
}

function summary(m: BackupManifest) {
  return {
    id: m.id,
    ...(m.name !== undefined ? { name: m.name } : {}),
    created: m.created,
    source: m.source,
    ...(m.luks ? { luks: m.luks } : {}),
    ...(m.parent ? { parent: m.parent } : {}),
    ...(m.dirtyBitmap ? { dirtyBitmap: m.dirtyBitmap } : {}),
    chunkSize: m.chunkSize,
    chunks: m.chunks.length,
    holes: m.holes.length,
    holeBytes: m.holes.reduce((a, [, n]) => a + n, 0),
    stats: m.stats,
  };
}

interface RekeyCliOptions {
  rekeyOnRestore?: boolean;
  checkIds?: boolean;
  srcKeyFile?: string;
  srcKeyId?: string;
  dstKeyFile?: string;
  dstKeyId?: string;
  pbkdf?: string;
  iterTime?: string;
  pbkdfForceIterations?: string;
  pbkdfMemory?: string;
}

/** `backup restore --rekey-on-restore`: a LUKS backup into a volume under a new volume key. */
async function restoreRekeyedCommand(id: string, target: string, o: BackupCliOptions & RekeyCliOptions): Promise<void> {
  const { restoreRekeyed } = await import('../../backup/restore-rekeyed.js');
  const { readKeyFile } = await import('../key-input.js');
  const { passphraseFromKeyManager, newVolumeKeyFromKeyManager } = await import('../key-manager-options.js');
  const json = o.json === true;
  if (o.srcKeyFile !== undefined && o.srcKeyId !== undefined) throw new InvalidArgumentError('Give one of --src-key-file or --src-key-id.');
  if (o.srcKeyFile === undefined && o.srcKeyId === undefined) throw new InvalidArgumentError("--rekey-on-restore needs the backed-up volume's key: --src-key-file or --src-key-id.");
  if (o.dstKeyFile !== undefined && o.dstKeyId !== undefined) throw new InvalidArgumentError('Give one of --dst-key-file or --dst-key-id.');
  if (o.srcKeyFile === '-' && o.dstKeyFile === '-') throw new InvalidArgumentError('Only one key file can be read from standard input.');
  const luks: Record<string, unknown> = {};
  if (o.pbkdf !== undefined) luks.pbkdf = parseChoice(o.pbkdf, 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const);
  if (o.iterTime !== undefined) luks.iterTimeMs = parseInteger(o.iterTime, 'iter-time', 1);
  if (o.pbkdfForceIterations !== undefined) luks.iterations = parseInteger(o.pbkdfForceIterations, 'pbkdf-force-iterations', 1);
  if (o.pbkdfMemory !== undefined) luks.memoryKiB = parseInteger(o.pbkdfMemory, 'pbkdf-memory', 8);
  const srcKeyFile = o.srcKeyFile;
  const srcKeyId = o.srcKeyId;
  const sourcePassphrase = srcKeyFile !== undefined ? () => readKeyFile({ keyFile: srcKeyFile }) : () => passphraseFromKeyManager(o, srcKeyId!);
  let createdKeyId: string | undefined;
  const dstKeyFile = o.dstKeyFile;
  const dstKeyId = o.dstKeyId;
  const targetPassphrase =
    dstKeyFile !== undefined
      ? () => readKeyFile({ keyFile: dstKeyFile })
      : dstKeyId !== undefined
        ? () => passphraseFromKeyManager(o, dstKeyId)
        : async () => {
            const made = await newVolumeKeyFromKeyManager(o, { name: `brickcrypt restore of backup ${id}` });
            createdKeyId = made.id;
            return made.passphrase;
          };
  await withRepository(o, async (repo) => {
    const progress = progressReporter(json, 'restore');
    const started = performance.now();
    try {
      const r = await withCancellation((signal) =>
        restoreRekeyed(repo, id, target, { sourcePassphrase, targetPassphrase, luks, signal, onProgress: (p) => progress.update(p.bytes, p.total, { phase: 'rekey' }) }),
      );
      progress.stop();
      const seconds = (performance.now() - started) / 1000;
      const { convert: _convert, ...report } = r;
      if (json) out(o, { event: 'done', ...report, ...(createdKeyId ? { createdKeyId } : {}), seconds, peakRssBytes: process.resourceUsage().maxRSS * 1024 }, '');
      else {
        if (createdKeyId !== undefined) process.stdout.write(`${createdKeyId}\n`);
        const text = `Restored ${r.id} to ${r.target} under a new volume key (${r.format}, ${r.encryption}, UUID ${r.uuid ?? '?'}, was ${r.oldUuid}) in ${seconds.toFixed(2)} s.\n`;
        (createdKeyId !== undefined ? process.stderr : process.stdout).write(text);
      }
    } catch (err) {
      // A key made for a volume that was never finished would be an orphan: remove it.
      if (createdKeyId !== undefined) {
        const made = createdKeyId;
        await withKeyManager(o, (km, caller) => km.delete(caller, made, { force: true })).catch(() => undefined);
      }
      throw err;
    } finally {
      progress.stop();
    }
  });
}

export function register(program: Command): void {
  const backup = program
    .command('backup')
    .description('Incremental, deduplicated, compressed, encrypted volume backups under a separate backup key.')
    .addHelpText(
      'after',
      `
Examples:
  brickcrypt backup init --repo file:/srv/backups
  brickcrypt backup create /var/lib/volumes/vol1.luks --repo file:/srv/backups --name nightly
  brickcrypt backup list --repo file:/srv/backups
  brickcrypt backup restore 20260101T020000Z-1a2b3c4d /var/lib/volumes/vol1-restored --repo file:/srv/backups
  brickcrypt backup verify --repo swift+http://127.0.0.1:8080/backups
  brickcrypt backup prune --keep-last 7 --repo s3://127.0.0.1:8080/backups`,
    );

  addCommon(
    backup
      .command('init')
      .description("Create a repository and its backup key (a new key in the key manager, never a volume key); prints the key id.")
      .option('--chunk-size <size>', 'chunk size, a multiple of 4 KiB between 64K and 64M (default 1M)')
      .option('--grant-read <users>', 'comma-separated users given read access to the new backup key (e.g. the backup service)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup init --repo file:/srv/backups\n  brickcrypt backup init --repo swift+http://127.0.0.1:8080/backups --roles creator --user backup-svc'),
  ).action(async (o: BackupCliOptions & { chunkSize?: string; grantRead?: string }) => {
    const { Repository, DEFAULT_CHUNK_SIZE } = await repoModule();
    const chunkSize = o.chunkSize !== undefined ? parseSize(o.chunkSize, 'chunk-size') : DEFAULT_CHUNK_SIZE;
    const uri = repoUri(o);
    await withStore(o, async (store) => {
      if (await store.exists('config')) throw new AlreadyExistsError(`${uri} already holds a backup repository.`);
      await withKeyManager(o, async (km, caller) => {
        const { id, key } = await km.createKey(caller, { algorithm: 'aes', bitLength: 256, name: `brickcrypt backup ${uri}` });
        try {
          // A caller without admin/member could never read its own new key: grant it read, as the owner may.
          const readers = new Set((o.grantRead ?? '').split(',').map((s) => s.trim()).filter(Boolean));
          if (!caller.roles.some((r) => r === 'admin' || r === 'member')) readers.add(caller.user);
          for (const user of readers) await km.grantRead(caller, id, user);
          const repo = await Repository.init(store, key, id, chunkSize);
          await km.addConsumer(caller, id, { service: 'brickcrypt-backup', resourceType: 'repository', resourceId: repo.id }).catch(() => undefined);
          repo.close();
          out(o, { event: 'done', repository: repo.id, keyId: id, chunkSize }, `${id}\n`);
        } catch (err) {
          await km.delete(caller, id, { force: true }).catch(() => undefined);
          throw err;
        } finally {
          key.wipe();
        }
      });
    });
  });

  addCommon(
    backup
      .command('create')
      .description('Back up a volume (raw, qcow2 or LUKS container bytes, never decrypted); prints the backup id.')
      .argument('<volume>', 'volume file or block device')
      .option('--name <name>', 'a label for the backup')
      .option('--key-id <id>', "the backup key (default: the one the repository names)")
      .option('--no-dirty-bitmap', "neither use the volume's dirty-chunk bitmap (<volume>.dirty-bitmap, kept by attach) nor start a new one: hash every chunk")
      .addHelpText(
        'after',
        `
Examples:
  brickcrypt backup create vol.luks --repo file:/srv/backups
  brickcrypt backup create /dev/vg0/vol1 --repo swift+http://127.0.0.1:8080/backups --name before-upgrade --json

A volume file gets a dirty-chunk bitmap beside it (<volume>.dirty-bitmap) after each backup; while
'brickcrypt attach' serves the volume it records the chunks written, and the next backup reads
only those. A bitmap that is in use, left by a crashed attach, or older than the file's last change
is not trusted: every chunk is read and hashed instead.`,
      ),
  ).action(async (volume: string, o: BackupCliOptions & { name?: string; dirtyBitmap?: boolean }) => {
    const { createBackupWithReport } = await import('../../backup/create-backup.js');
    const { FileDevice, statPath } = await import('../../devices/file-device.js');
    const { resolve } = await import('node:path');
    const json = o.json === true;
    const path = resolve(volume);
    const useBitmap = o.dirtyBitmap !== false && (await statPath(path)).isFile;
    await withRepository(o, async (repo) => {
      const device = await FileDevice.open(volume, { readOnly: true, seekHoles: true });
      const progress = progressReporter(json, 'backup');
      try {
        const started = performance.now();
        const { manifest: m, bitmap } = await withCancellation((signal) =>
          createBackupWithReport(repo, device, {
            sourcePath: path,
            ...(o.name !== undefined ? { name: o.name } : {}),
            ...(useBitmap ? { dirtyBitmap: { volumePath: path } } : {}),
            signal,
            onProgress: (p) => progress.update(p.bytes, p.total),
          }),
        );
        progress.stop();
        const seconds = (performance.now() - started) / 1000;
        out(o, { event: 'done', ...summary(m), ...(bitmap ? { bitmap } : {}), seconds, peakRssBytes: process.resourceUsage().maxRSS * 1024 }, `${m.id}\n`);
      } finally {
        progress.stop();
        await device.close();
      }
    });
  });

  addCommon(
    backup
      .command('list')
      .description('List the backups, oldest first.')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup list --repo file:/srv/backups\n  brickcrypt backup list --repo file:/srv/backups --json'),
  ).action(async (o: BackupCliOptions) => {
    await withRepository(o, async (repo) => {
      const manifests = await Promise.all((await repo.listBackupIds()).map((id) => repo.getManifest(id)));
      const rows = manifests.map(summary);
      const text = rows.map((r) => `${r.id}  ${r.created}  ${String(r.source.size).padStart(14)}  ${r.source.format.padEnd(5)}  ${r.source.path}${r.name ? `  (${r.name})` : ''}`).join('\n');
      out(o, rows, rows.length ? `${text}\n` : 'No backups.\n');
    });
  });

  addCommon(
    backup
      .command('show')
      .description('Show one backup: source, LUKS header facts, chunks, holes, what it stored.')
      .argument('<id>', 'backup id')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup show 20260101T020000Z-1a2b3c4d --repo file:/srv/backups'),
  ).action(async (id: string, o: BackupCliOptions) => {
    await withRepository(o, async (repo) => {
      const s = summary(await repo.getManifest(id));
      const lines = [
        `Backup ${s.id}${s.name ? ` (${s.name})` : ''}, created ${s.created}`,
        `  source:   ${s.source.path} (${s.source.format}, ${s.source.size} bytes)`,
        ...(s.luks ? [`  LUKS${s.luks.version}:   uuid ${s.luks.uuid}, header ${s.luks.dataOffset} bytes, sha256 ${s.luks.headerSha256}`] : []),
        `  chunks:   ${s.chunks} of ${s.chunkSize} bytes; ${s.stats.zeroChunks} zero, ${s.stats.reusedChunks} reused, ${s.stats.newChunks} new`,
        `  holes:    ${s.holes} ranges, ${s.holeBytes} bytes`,
        `  stored:   ${s.stats.storedBytes} bytes for ${s.stats.newBytes} new bytes (read ${s.stats.dataBytes})`,
        ...(s.parent ? [`  parent:   ${s.parent}`] : []),
        ...(s.dirtyBitmap ? [`  bitmap:   ${s.dirtyBitmap.dirtyChunks} dirty chunks read; the others taken from ${s.dirtyBitmap.base}`] : []),
      ];
      out(o, s, lines.join('\n') + '\n');
    });
  });

  addCommon(
    backup
      .command('restore')
      .description('Restore a backup, byte for byte, to a new file (holes stay holes) or an existing block device at least as large; or, with --rekey-on-restore, a LUKS volume under a new volume key.')
      .argument('<id>', 'backup id')
      .argument('<target>', 'new file, or existing block device')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .option('--check-ids', "also recompute every chunk's id from its plaintext (as verify does); AES-GCM authenticates every chunk either way")
      .option('--rekey-on-restore', 'restore a LUKS volume under a new volume key (re-encrypted in the same pass); the new key is created in the key manager and its id printed, unless --dst-key-file/--dst-key-id is given')
      .option('--src-key-file <file>', "with --rekey-on-restore: the backed-up volume's LUKS passphrase file ('-' = stdin)")
      .option('--src-key-id <id>', "with --rekey-on-restore: the managed key that opens the backed-up volume")
      .option('--dst-key-file <file>', 'with --rekey-on-restore: passphrase file for the new volume instead of a new managed key')
      .option('--dst-key-id <id>', 'with --rekey-on-restore: an existing managed key for the new volume instead of a new one')
      .option('--pbkdf <type>', 'with --rekey-on-restore: pbkdf2, argon2i or argon2id for the new keyslot')
      .option('--iter-time <ms>', 'with --rekey-on-restore: keyslot unlock time target in milliseconds')
      .option('--pbkdf-force-iterations <n>', 'with --rekey-on-restore: fixed PBKDF iterations / Argon2 time cost')
      .option('--pbkdf-memory <kib>', 'with --rekey-on-restore: Argon2 memory cost in KiB')
      .addHelpText(
        'after',
        `
Examples:
  brickcrypt backup restore 20260101T020000Z-1a2b3c4d vol1.restored --repo file:/srv/backups
  brickcrypt backup restore 20260101T020000Z-1a2b3c4d /dev/loop3 --repo file:/srv/backups
  brickcrypt backup restore 20260101T020000Z-1a2b3c4d vol1.rekeyed --rekey-on-restore --src-key-id OLD-KEY-ID --repo file:/srv/backups
  brickcrypt backup restore 20260101T020000Z-1a2b3c4d vol1.rekeyed --rekey-on-restore --src-key-file old.pass --dst-key-file new.pass --repo file:/srv/backups

--key-id names the backup key; the volume's own keys are --src-key-* (the backed-up volume) and
--dst-key-* (the restored one). With --rekey-on-restore the restored volume has the backed-up
volume's LUKS version, cipher, key size and sector size, a new volume key and UUID, and one
keyslot: the old passphrase does not open it.`,
      ),
  ).action(async (id: string, target: string, o: BackupCliOptions & RekeyCliOptions) => {
    const json = o.json === true;
    if (o.rekeyOnRestore) return restoreRekeyedCommand(id, target, o);
    const given = (['srcKeyFile', 'srcKeyId', 'dstKeyFile', 'dstKeyId', 'pbkdf', 'iterTime', 'pbkdfForceIterations', 'pbkdfMemory'] as const).filter((k) => o[k] !== undefined);
    if (given.length > 0) throw new InvalidArgumentError('--src-key-*, --dst-key-* and the --pbkdf options need --rekey-on-restore.');
    const { restoreBackup } = await import('../../backup/restore-backup.js');
    await withRepository(o, async (repo) => {
      const progress = progressReporter(json, 'restore');
      try {
        const started = performance.now();
        const r = await withCancellation((signal) => restoreBackup(repo, id, target, { signal, ...(o.checkIds ? { checkIds: true } : {}), onProgress: (p) => progress.update(p.bytes, p.total, { phase: p.phase }) }));
        progress.stop();
        const seconds = (performance.now() - started) / 1000;
        out(o, { event: 'done', ...r, seconds, peakRssBytes: process.resourceUsage().maxRSS * 1024 }, `Restored ${r.id} to ${r.target} (${r.size} bytes, ${r.writtenBytes} written) in ${seconds.toFixed(2)} s.\n`);
      } finally {
        progress.stop();
      }
    });
  });

  addCommon(
    backup
      .command('verify')
      .description('Authenticate every chunk and check every manifest is complete (or one backup\'s); exit 7 on any damage.')
      .argument('[id]', 'backup id (default: the whole repository)')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup verify --repo file:/srv/backups\n  brickcrypt backup verify 20260101T020000Z-1a2b3c4d --repo file:/srv/backups'),
  ).action(async (id: string | undefined, o: BackupCliOptions) => {
    const { verifyRepository } = await import('../../backup/verify-repository.js');
    const json = o.json === true;
    await withRepository(o, async (repo) => {
      const progress = progressReporter(json, 'verify');
      try {
        const r = await verifyRepository(repo, { ...(id !== undefined ? { id } : {}), onProgress: (p) => progress.update(p.objects, p.total) });
        progress.stop();
        out(o, { event: 'done', ...r }, `Verified ${r.backups} backup(s) and ${r.chunks} chunk(s): no problems.\n`);
      } finally {
        progress.stop();
      }
    });
  });

  addCommon(
    backup
      .command('delete')
      .description('Delete a backup (its manifest); its chunks go at the next prune.')
      .argument('<id>', 'backup id')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup delete 20260101T020000Z-1a2b3c4d --repo file:/srv/backups'),
  ).action(async (id: string, o: BackupCliOptions) => {
    const { deleteBackup } = await import('../../backup/prune-repository.js');
    await withRepository(o, async (repo) => {
      await deleteBackup(repo, id);
      out(o, { event: 'done', deleted: id }, `Deleted backup ${id}.\n`);
    });
  });

  addCommon(
    backup
      .command('prune')
      .description('Keep the newest N backups of each volume, delete the rest and every chunk nothing references (safe against a running backup: exclusive lock).')
      .requiredOption('--keep-last <n>', 'backups to keep per volume')
      .option('--dry-run', 'report only')
      .option('--key-id <id>', 'the backup key (default: the one the repository names)')
      .addHelpText('after', '\nExamples:\n  brickcrypt backup prune --keep-last 7 --repo file:/srv/backups\n  brickcrypt backup prune --keep-last 1 --dry-run --repo file:/srv/backups --json'),
  ).action(async (o: BackupCliOptions & { keepLast: string; dryRun?: boolean }) => {
    const { pruneRepository } = await import('../../backup/prune-repository.js');
    const keepLast = parseInteger(o.keepLast, 'keep-last', 0);
    await withRepository(o, async (repo) => {
      const r = await pruneRepository(repo, { keepLast, ...(o.dryRun ? { dryRun: true } : {}) });
      out(o, { event: 'done', ...r }, `${o.dryRun ? 'Would delete' : 'Deleted'} ${r.deletedBackups.length} backup(s) and ${r.deletedChunks} chunk(s); kept ${r.keptBackups} backup(s), ${r.keptChunks} chunk(s).\n`);
    });
  });
}
