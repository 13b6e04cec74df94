/**
 * `brickcrypt key ...`: the key-manager command line (local keystore by default,
 * memory:, Barbican, KMIP). Identity per call comes from --user/--project/--roles or
 * a profile (--profile, $BRICKCRYPT_PROFILE). Key bytes are only ever written to a
 * file (mode 0600) or to a non-terminal stdout.
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { closeSync, existsSync, openSync, writeSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { KekProvider } from '../../keys/kek/kek-provider.js';
import {
  AlreadyExistsError,
  IntegrityError,
  InvalidArgumentError,
  InvalidObjectError,
  NotFoundError,
  UnsupportedError,
} from '../../errors.js';
import { Passphrase, SecretBytes } from '../../secret.js';
import { OBJECT_TYPES, type ManagedObjectMetadata, type ObjectType } from '../../keys/key-manager.js';
import { isAuditable, type AuditEntry } from '../../keys/audit.js';

// The keystore modules load native addons (SQLite, Argon2): import them only when a key command runs.
const keysModule = () => import('../../keys/open-key-manager.js');
const localModule = () => import('../../keys/local-key-manager.js');
import { readKeyFile } from '../key-input.js';
import { addKeyManagerOptions, managerOptions, pkcs11Settings, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger } from '../parse.js';

type CommonOptions = KeyManagerCliOptions;

const COMMON_HELP = `
Roles (local and memory backends): admin (everything in its project), member (create and
read its project's keys), creator (create/store/clone/delete, never read an existing key),
reader (read only keys whose read ACL names it).
Exit codes: 0 ok, 1 usage, 2 forbidden or wrong KEK, 4 not found (files), 5 in use / exists,
6 key-manager error (key not found, invalid object, backend unavailable), 7 integrity.`;

function addCommon(cmd: Command): Command {
  return addKeyManagerOptions(cmd).addHelpText('after', COMMON_HELP);
}

/**
 * Writes key bytes to FILE (new, mode 0600; existing only with --force) or to stdout
 * for `-`, which is refused when stdout is a terminal: key bytes never land on a screen.
 */
function writeSecretOut(out: string, bytes: Uint8Array, force: boolean): void {
  if (out === '-') {
    if (process.stdout.isTTY) throw new InvalidArgumentError('Refusing to write key bytes to a terminal: use --out FILE or redirect stdout.');
    writeSync(1, bytes);
    return;
  }
  let fd: number;
  try {
    fd = openSync(out, force ? 'w' : 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError(`${out} exists (use --force to overwrite).`);
    throw new InvalidArgumentError(`Cannot write ${out}: ${(err as Error).message}`);
  }
  try {
    writeSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

function hexOf(secret: SecretBytes): SecretBytes {
  return secret.toHexSecret();
}

function readObjectFile(file: string, type: ObjectType): SecretBytes {
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`${file} does not exist.`);
    throw new InvalidArgumentError(`Cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    if (raw.length === 0) throw new InvalidArgumentError(`${file} is empty.`);
    // PEM is accepted for asymmetric objects and stored as DER (castellan's convention).
    if ((type === 'private' || type === 'public' || type === 'certificate') && raw.subarray(0, 64).toString('latin1').includes('-----BEGIN')) {
      const text = raw.toString('latin1');
      try {
        if (type === 'certificate') return SecretBytes.copyOf(new X509Certificate(text).raw);
        if (type === 'private') return new SecretBytes(new Uint8Array(createPrivateKey(text).export({ format: 'der', type: 'pkcs8' })));
        return new SecretBytes(new Uint8Array(createPublicKey(text).export({ format: 'der', type: 'spki' })));
      } catch (err) {
        throw new InvalidObjectError(`${file} is not a valid PEM ${type === 'certificate' ? 'certificate' : `${type} key`}.`, { cause: err });
      }
    }
    return type === 'passphrase' ? Passphrase.copyOf(raw) : SecretBytes.copyOf(raw);
  } finally {
    raw.fill(0);
  }
}

function formatList(items: ManagedObjectMetadata[]): string {
  const rows = [['ID', 'TYPE', 'ALGORITHM', 'BITS', 'NAME', 'CREATED', 'CONSUMERS']];
  for (const m of items) rows.push([m.id, m.type, m.algorithm ?? '-', m.bitLength?.toString() ?? '-', m.name ?? '-', m.created, String(m.consumers.length)]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

function formatAudit(entries: AuditEntry[]): string {
  return (
    entries
      .map((e) => {
        const what = [e.operation, e.objectId ?? '-', e.outcome + (e.code ? `(${e.code})` : ''), e.detail ? `[${e.detail}]` : ''].filter(Boolean).join(' ');
        return `#${e.seq} ${e.time} ${e.user}@${e.project} (${e.roles.join(',') || '-'}) ${what}`;
      })
      .join('\n') + (entries.length ? '\n' : '')
  );
}

function parseConsumer(text: string): { service: string; resourceType: string; resourceId: string } {
  const parts = text.split('/');
  if (parts.length !== 3 || parts.some((p) => p === '')) throw new InvalidArgumentError(`Consumer '${text}' is not SERVICE/RESOURCE_TYPE/RESOURCE_ID.`);
  return { service: parts[0]!, resourceType: parts[1]!, resourceId: parts[2]! };
}

export function register(program: Command): void {
  const key = program
    .command('key')
    .description('Manage keys in a key manager (local keystore, Barbican, KMIP) with least-privilege roles.')
    .addHelpText('after', COMMON_HELP);

  addCommon(
    key
      .command('init')
      .description('Create the local keystore and its key-encryption key (a new 0600 key file unless --kek-passphrase-file).')
      .option('--argon2-memory <KiB>', 'with --kek-passphrase-file: Argon2id memory in KiB (default 65536)')
      .option('--argon2-time <n>', 'with --kek-passphrase-file: Argon2id iterations (default 3)')
      .option('--argon2-parallel <n>', 'with --kek-passphrase-file: Argon2id lanes (default 4)')
      .addHelpText('after', '\nExamples:\n  brickcrypt key init\n  brickcrypt key init --kek-file /etc/brickcrypt/kek\n  brickcrypt key init --key-manager local:/srv/ks.db --kek-passphrase-file pw.txt\n  brickcrypt key init --kek-pkcs11-key kek --pkcs11-token brickcrypt --pkcs11-pin-file pin'),
  ).action(async (o: CommonOptions & { argon2Memory?: string; argon2Time?: string; argon2Parallel?: string }) => {
    const { defaultKeyManagerUri, parseKeyManagerUri } = await keysModule();
    const { LocalKeyManager } = await localModule();
    const uri = o.keyManager ?? defaultKeyManagerUri();
    const parsed = parseKeyManagerUri(uri);
    if (parsed.kind !== 'local') throw new InvalidArgumentError(`key init applies to a local keystore, not ${uri}.`);
    if ([o.kekFile, o.kekPassphraseFile, o.kekPkcs11Key].filter(Boolean).length > 1) {
      throw new InvalidArgumentError('Give at most one of --kek-file, --kek-passphrase-file, --kek-pkcs11-key.');
    }
    const argon2: Record<string, number> = {};
    if (o.argon2Memory) argon2.memoryKiB = parseInteger(o.argon2Memory, 'argon2-memory', 8, 4 * 1024 * 1024);
    if (o.argon2Time) argon2.timeCost = parseInteger(o.argon2Time, 'argon2-time', 1, 1000);
    if (o.argon2Parallel) argon2.parallelism = parseInteger(o.argon2Parallel, 'argon2-parallel', 1, 64);
    const opts = await managerOptions(o);
    try {
      let kek: KekProvider | undefined;
      if (opts.pkcs11) {
        const { Pkcs11Kek } = await import('../../keys/kek/pkcs11-kek.js');
        kek = await Pkcs11Kek.open({ ...opts.pkcs11, create: true });
      }
      const km = await LocalKeyManager.init(parsed.path, {
        ...(kek ? { kek } : {}),
        ...(opts.kekFile ? { kekFile: opts.kekFile } : {}),
        ...(opts.kekPassphrase ? { kekPassphrase: opts.kekPassphrase } : {}),
        argon2,
      });
      const info = km.kekInfo();
      await km.close();
      process.stdout.write(`Keystore ${parsed.path} created; KEK: ${info.kind === 'external' ? info.id : info.kind}${info.file ? ` ${info.file}` : ''}.\n`);
    } finally {
      opts.kekPassphrase?.wipe();
    }
  });

  addCommon(
    key
      .command('create')
      .description('Create a symmetric key; prints only its id. The bytes are handed to this call once (--out) and never again to a creator.')
      .option('--bits <n>', 'key length in bits', '256')
      .option('--algorithm <name>', 'algorithm name recorded with the key', 'aes')
      .option('--name <name>', 'descriptive name')
      .option('--out <file>', 'also write the new key bytes to FILE (0600), or to - (stdout, never a terminal; the id then goes to stderr), e.g. to format a volume')
      .option('--hex', 'with --out: write the LUKS passphrase form (lowercase hex, as os-brick)')
      .option('--force', 'with --out: overwrite an existing file')
      .addHelpText('after', '\nExamples:\n  id=$(brickcrypt key create --name vol-1)\n  brickcrypt key create --profile cinder.json --out vol.key --hex'),
  ).action(async (o: CommonOptions & { bits: string; algorithm: string; name?: string; out?: string; hex?: boolean; force?: boolean }) => {
    const bits = parseInteger(o.bits, 'bits', 8, 8192);
    // Check the destination first: a key whose only copy of the bytes could not be written is useless.
    if (o.out === '-' && process.stdout.isTTY) throw new InvalidArgumentError('Refusing to write key bytes to a terminal: use --out FILE or redirect stdout.');
    if (o.out !== undefined && o.out !== '-' && !o.force && existsSync(o.out)) throw new AlreadyExistsError(`${o.out} exists (use --force to overwrite).`);
    if (o.hex && o.out === undefined) throw new InvalidArgumentError('--hex needs --out.');
    await withKeyManager(o, async (km, caller) => {
      const { id, key: secret } = await km.createKey(caller, { bitLength: bits, algorithm: o.algorithm, ...(o.name !== undefined ? { name: o.name } : {}) });
      try {
        if (o.out !== undefined) {
          const form = o.hex ? hexOf(secret) : secret;
          try {
            writeSecretOut(o.out, form.expose(), o.force === true);
          } finally {
            if (form !== secret) form.wipe();
          }
        }
      } finally {
        secret.wipe();
      }
      if (o.out !== '-') process.stdout.write(id + '\n');
      else process.stderr.write(id + '\n');
    });
  });

  addCommon(
    key
      .command('create-pair')
      .description('Create an asymmetric key pair (private key stored as PKCS#8 DER, public as SPKI DER); prints both ids.')
      .requiredOption('--algorithm <alg>', 'rsa, ec or dsa')
      .option('--bits <n>', 'RSA/DSA modulus bits or EC curve size (256, 384, 521)', '2048')
      .option('--name <name>', 'descriptive name')
      .addHelpText('after', '\nExample:\n  brickcrypt key create-pair --algorithm ec --bits 384'),
  ).action(async (o: CommonOptions & { algorithm: string; bits: string; name?: string }) => {
    const algorithm = parseChoice(o.algorithm, 'algorithm', ['rsa', 'ec', 'dsa'] as const);
    await withKeyManager(o, async (km, caller) => {
      const r = await km.createKeyPair(caller, { algorithm, bitLength: parseInteger(o.bits, 'bits', 1, 16384), ...(o.name !== undefined ? { name: o.name } : {}) });
      process.stdout.write(`private ${r.privateKeyId}\npublic ${r.publicKeyId}\n`);
    });
  });

  addCommon(
    key
      .command('store')
      .description('Store an existing object from a file; prints its id. PEM or DER for private/public/certificate.')
      .requiredOption('--file <file>', 'file holding the object (every byte counts)')
      .option('--type <type>', `one of ${OBJECT_TYPES.join(', ')}`, 'symmetric')
      .option('--name <name>', 'descriptive name')
      .option('--algorithm <name>', 'algorithm name (default aes for symmetric; read from the key for asymmetric)')
      .addHelpText('after', '\nExamples:\n  brickcrypt key store --file vol.key\n  brickcrypt key store --type certificate --file signer.pem --name signer'),
  ).action(async (o: CommonOptions & { file: string; type: string; name?: string; algorithm?: string }) => {
    const type = parseChoice(o.type, 'type', OBJECT_TYPES);
    await withKeyManager(o, async (km, caller) => {
      const secret = readObjectFile(o.file, type);
      try {
        const id = await km.store(caller, { type, secret, ...(o.name !== undefined ? { name: o.name } : {}), ...(o.algorithm !== undefined ? { algorithm: o.algorithm } : {}) });
        process.stdout.write(id + '\n');
      } finally {
        secret.wipe();
      }
    });
  });

  addCommon(
    key
      .command('get')
      .description('Write an object\'s bytes to a file (never to a terminal), or show its metadata.')
      .argument('<id>', 'object id')
      .option('--out <file>', 'write the bytes to FILE (new, mode 0600) or - for stdout when it is not a terminal')
      .option('--hex', 'write a symmetric key as its LUKS passphrase (lowercase hex, as os-brick)')
      .option('--force', 'overwrite an existing --out file')
      .option('--metadata-only', 'print the metadata as JSON instead of the bytes')
      .addHelpText('after', '\nExamples:\n  brickcrypt key get $id --out vol.key\n  brickcrypt key get $id --out - --hex | cryptsetup open --key-file=- ...\n  brickcrypt key get $id --metadata-only'),
  ).action(async (id: string, o: CommonOptions & { out?: string; hex?: boolean; force?: boolean; metadataOnly?: boolean }) => {
    if (o.metadataOnly) {
      if (o.out !== undefined) throw new InvalidArgumentError('--metadata-only and --out exclude each other.');
      await withKeyManager(o, async (km, caller) => process.stdout.write(JSON.stringify(await km.getMetadata(caller, id), null, 2) + '\n'));
      return;
    }
    if (o.out === undefined) throw new InvalidArgumentError('key get needs --out FILE (or --out - with stdout redirected), or --metadata-only.');
    if (o.out === '-' && process.stdout.isTTY) throw new InvalidArgumentError('Refusing to write key bytes to a terminal: use --out FILE or redirect stdout.');
    await withKeyManager(o, async (km, caller) => {
      const obj = await km.get(caller, id);
      try {
        if (o.hex && obj.type !== 'symmetric') throw new InvalidArgumentError('--hex applies to symmetric keys only.');
        const form = o.hex ? hexOf(obj.secret) : obj.secret;
        try {
          writeSecretOut(o.out!, form.expose(), o.force === true);
        } finally {
          if (form !== obj.secret) form.wipe();
        }
      } finally {
        obj.secret.wipe();
      }
    });
  });

  addCommon(
    key
      .command('clone')
      .description('Copy an object under a new id inside the key manager (the bytes are not shown); prints the new id.')
      .argument('<id>', 'object id')
      .option('--name <name>', 'name of the copy (default: the original\'s)')
      .addHelpText('after', '\nExample:\n  backup_key=$(brickcrypt key clone $id --name backup-1)'),
  ).action(async (id: string, o: CommonOptions & { name?: string }) => {
    await withKeyManager(o, async (km, caller) => process.stdout.write((await km.clone(caller, id, o.name !== undefined ? { name: o.name } : {})) + '\n'));
  });

  addCommon(
    key
      .command('delete')
      .description('Delete an object; refused while consumers are registered unless --force.')
      .argument('<id>', 'object id')
      .option('--force', 'delete even while consumers are registered')
      .addHelpText('after', '\nExample:\n  brickcrypt key delete $id'),
  ).action(async (id: string, o: CommonOptions & { force?: boolean }) => {
    await withKeyManager(o, (km, caller) => km.delete(caller, id, { force: o.force === true }));
  });

  addCommon(
    key
      .command('list')
      .description('List the objects the caller may see (metadata only).')
      .option('--json', 'print JSON')
      .option('--type <type>', `only objects of this type (${OBJECT_TYPES.join(', ')})`)
      .addHelpText('after', '\nExamples:\n  brickcrypt key list\n  brickcrypt key list --type symmetric --json'),
  ).action(async (o: CommonOptions & { json?: boolean; type?: string }) => {
    const type = o.type !== undefined ? parseChoice(o.type, 'type', OBJECT_TYPES) : undefined;
    await withKeyManager(o, async (km, caller) => {
      const items = await km.list(caller, type ? { type } : {});
      process.stdout.write(o.json ? JSON.stringify(items, null, 2) + '\n' : formatList(items));
    });
  });

  addCommon(
    key
      .command('acl')
      .description('Grant or revoke per-object read access for a user (role reader reads only what is granted).')
      .argument('<id>', 'object id')
      .option('--grant-read <user>', 'allow USER to read the object')
      .option('--revoke-read <user>', 'withdraw USER\'s read access')
      .addHelpText('after', '\nExamples:\n  brickcrypt key acl $id --grant-read nova-compute-1\n  brickcrypt key acl $id --revoke-read nova-compute-1'),
  ).action(async (id: string, o: CommonOptions & { grantRead?: string; revokeRead?: string }) => {
    if ((o.grantRead === undefined) === (o.revokeRead === undefined)) throw new InvalidArgumentError('Give exactly one of --grant-read USER or --revoke-read USER.');
    await withKeyManager(o, (km, caller) => (o.grantRead !== undefined ? km.grantRead(caller, id, o.grantRead) : km.revokeRead(caller, id, o.revokeRead!)));
  });

  addCommon(
    key
      .command('consumer')
      .description('Register or remove a consumer (a volume, image, backup using the object); consumed objects resist deletion.')
      .argument('<id>', 'object id')
      .option('--add <consumer>', 'SERVICE/RESOURCE_TYPE/RESOURCE_ID to register')
      .option('--remove <consumer>', 'SERVICE/RESOURCE_TYPE/RESOURCE_ID to remove')
      .addHelpText('after', '\nExample:\n  brickcrypt key consumer $id --add volume/volume/6f1c...'),
  ).action(async (id: string, o: CommonOptions & { add?: string; remove?: string }) => {
    if ((o.add === undefined) === (o.remove === undefined)) throw new InvalidArgumentError('Give exactly one of --add or --remove.');
    await withKeyManager(o, (km, caller) => (o.add !== undefined ? km.addConsumer(caller, id, parseConsumer(o.add)) : km.removeConsumer(caller, id, parseConsumer(o.remove!))));
  });

  addCommon(
    key
      .command('audit')
      .description('Show the audit log of key operations (role admin); --verify checks its SHA-256 hash chain.')
      .option('--json', 'print JSON')
      .option('--verify', 'verify the whole hash chain; exit 7 if it is broken')
      .option('--all', 'entries of every project, not only the caller\'s')
      .addHelpText('after', '\nExamples:\n  brickcrypt key audit\n  brickcrypt key audit --verify --json'),
  ).action(async (o: CommonOptions & { json?: boolean; verify?: boolean; all?: boolean }) => {
    await withKeyManager(o, async (km, caller) => {
      if (!isAuditable(km)) throw new UnsupportedError(`The ${km.backend} backend keeps no brickcrypt audit log (see the server's own logs).`);
      if (o.verify) {
        const v = await km.verifyAudit(caller);
        if (o.json) process.stdout.write(JSON.stringify(v, null, 2) + '\n');
        if (!v.ok) throw new IntegrityError(`Audit chain broken at entry ${v.firstBad}: ${v.reason}.`);
        if (!o.json) process.stdout.write(`Audit chain OK: ${v.entries} entries, head ${v.head}\n`);
        return;
      }
      const entries = await km.readAudit(caller, { all: o.all === true });
      process.stdout.write(o.json ? JSON.stringify(entries, null, 2) + '\n' : formatAudit(entries));
    });
  });

  addCommon(
    key
      .command('rotate-kek')
      .description('Re-wrap every secret of the local keystore under a new KEK, in one transaction (role admin).')
      .option('--new-kek-file <file>', 'new KEK file (created with mode 0600 if absent)')
      .option('--new-kek-passphrase-file <file>', 'derive the new KEK from this passphrase file (Argon2id)')
      .option('--new-kek-pkcs11-key <label>', 'move the KEK into a PKCS#11 token (key created if absent; see --pkcs11-token)')
      .option('--argon2-memory <KiB>', 'with --new-kek-passphrase-file: Argon2id memory in KiB')
      .option('--argon2-time <n>', 'with --new-kek-passphrase-file: Argon2id iterations')
      .addHelpText('after', '\nExample:\n  brickcrypt key rotate-kek --new-kek-file ~/.brickcrypt/keystore-2.kek'),
  ).action(async (o: CommonOptions & { newKekFile?: string; newKekPassphraseFile?: string; newKekPkcs11Key?: string; argon2Memory?: string; argon2Time?: string }) => {
    if ([o.newKekFile, o.newKekPassphraseFile, o.newKekPkcs11Key].filter((x) => x !== undefined).length !== 1) {
      throw new InvalidArgumentError('Give exactly one of --new-kek-file, --new-kek-passphrase-file, --new-kek-pkcs11-key.');
    }
    const { LocalKeyManager } = await localModule();
    await withKeyManager(o, async (km, caller) => {
      if (!(km instanceof LocalKeyManager)) throw new InvalidArgumentError('rotate-kek applies to a local keystore.');
      if (o.newKekFile !== undefined) {
        await km.rotateKek(caller, { kind: 'file', file: o.newKekFile });
      } else if (o.newKekPkcs11Key !== undefined) {
        const { Pkcs11Kek } = await import('../../keys/kek/pkcs11-kek.js');
        const provider = await Pkcs11Kek.open({ ...pkcs11Settings(o, o.newKekPkcs11Key), create: true });
        await km.rotateKek(caller, { kind: 'external', provider });
      } else {
        const passphrase = await readKeyFile({ keyFile: o.newKekPassphraseFile! });
        const argon2: Record<string, number> = {};
        if (o.argon2Memory) argon2.memoryKiB = parseInteger(o.argon2Memory, 'argon2-memory', 8, 4 * 1024 * 1024);
        if (o.argon2Time) argon2.timeCost = parseInteger(o.argon2Time, 'argon2-time', 1, 1000);
        try {
          await km.rotateKek(caller, { kind: 'passphrase', passphrase, argon2 });
        } finally {
          passphrase.wipe();
        }
      }
      const info = km.kekInfo();
      process.stdout.write(`KEK rotated; now ${info.kind === 'external' ? info.id : info.kind}${info.file ? ` ${info.file}` : ''}.\n`);
    });
  });
}
