/**
 * `brickcrypt serve --listen HOST:PORT --state DIR`: the HTTP API and its job workers in one
 * process, on SQLite and the local keystore under DIR by default; `--database` shares the state
 * in PostgreSQL and `--key-manager` names a shared (network) key manager (docs/service.md).
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { InvalidArgumentError } from '../../errors.js';
import { addKeyManagerConnectionOptions, managerOptions, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';

interface ServeOptions extends Omit<KeyManagerCliOptions, 'user' | 'project' | 'roles' | 'profile'> {
  listen: string;
  state: string;
  tokens?: string;
  trustProxyIdentity?: boolean;
  workers?: string;
  maxJobs?: string;
  nbdHost?: string;
  copyBpsLimit?: string;
  checkpointEvery?: string;
  database?: string;
  role?: string;
  imageDir?: string[];
  imageService?: string;
  backupRepo?: string;
  heartbeatTimeout?: string;
  volumesDir?: string;
}

function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!m) throw new InvalidArgumentError(`--listen: '${text}' is not HOST:PORT (use [::1]:PORT for IPv6).`);
  return { host: m[1] ?? m[2]!, port: parseInteger(m[3]!, 'listen', 0, 65535) };
}

export function register(program: Command): void {
  const cmd = program
    .command('serve')
    .description('Run the HTTP API with its job workers (SQLite and the local keystore under --state, unless --database / --key-manager).')
    .requiredOption('--listen <host:port>', 'address of the HTTP API, e.g. 127.0.0.1:8776')
    .requiredOption('--state <dir>', 'state directory: state.db, keystore.db, volumes/ (BRICKCRYPT_HOME=DIR brickcrypt key ... reaches the same keys)')
    .option('--tokens <file>', 'JSON file {"TOKEN": {"user": ..., "project": ..., "roles": [...]}}')
    .option('--trust-proxy-identity', "trust Keystone's X-Identity-Status/X-User-Name/X-Project-Id/X-Roles headers (only behind an authenticating proxy); its X-Auth-Token goes on to Glance and Barbican, in memory only")
    .option('--workers <n>', 'jobs running at once (default 2)')
    .option('--max-jobs <n>', 'queued plus running jobs at most; more is 429 (default 64)')
    .option('--nbd-host <host>', 'address the NBD servers of attached volumes listen on (default 127.0.0.1)')
    .option('--copy-bps-limit <size>', 'copy rate limit per job in bytes per second, e.g. 100M (default none)')
    .option('--image-dir <dir>', 'a directory source.image_file may name files in (repeatable; default STATE/images)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--image-service <url>', 'Glance v2 endpoint for upload_to_image and source.image_id (default $BRICKCRYPT_IMAGE_SERVICE)')
    .option('--backup-repo <uri>', 'backup repository for backup and source.backup_id: file:DIR, swift+http://..., s3://... (default $BRICKCRYPT_BACKUP_REPO)')
    .option('--checkpoint-every <size>', 'bytes between copy checkpoints (default 16M)')
    .option('--database <url>', 'postgresql://USER@HOST:PORT/DB: jobs and state in PostgreSQL, shared by many serve processes (default: SQLite under --state)')
    .option('--role <role>', 'api (HTTP only), worker (jobs only) or all (default); api and worker need --database')
    .option('--heartbeat-timeout <seconds>', "--database: a worker silent this long loses its jobs to the others (default 30)")
    .option('--volumes-dir <dir>', 'where new volume files go (default STATE/volumes); workers on several hosts share one, mounted at the same path');
  addKeyManagerConnectionOptions(cmd, {
    keyManagerDescription: 'barbican+http(s)://HOST:PORT, kmip://HOST:PORT or local:PATH (default: local:STATE/keystore.db); callers reach it with their own identity',
  })
    .addHelpText(
      'after',
      `
Examples:
  brickcrypt serve --listen 127.0.0.1:8776 --state /var/lib/brickcrypt --tokens /etc/brickcrypt/tokens.json
  brickcrypt serve --listen 127.0.0.1:8776 --state ./state --trust-proxy-identity
  brickcrypt serve --listen 127.0.0.1:8776 --state ./state --tokens tokens.json \\
      --image-service http://127.0.0.1:9292 --backup-repo file:/srv/backups
  # scale-out: one API process and workers on any hosts, sharing PostgreSQL (and the volume directory)
  brickcrypt serve --listen 0.0.0.0:8776 --state /srv/brickcrypt --tokens tokens.json \\
      --database postgresql://brickcrypt@db:5432/brickcrypt --role api
  brickcrypt serve --listen 127.0.0.1:8777 --state /srv/brickcrypt --tokens tokens.json \\
      --database postgresql://brickcrypt@db:5432/brickcrypt --role worker --workers 2
  # workers on several hosts: one key manager for all (Barbican, or KMIP with a client certificate)
  brickcrypt serve --listen 127.0.0.1:8777 --state /var/lib/brickcrypt --volumes-dir /srv/volumes --tokens tokens.json \\
      --database postgresql://brickcrypt@db:5432/brickcrypt --role worker \\
      --key-manager barbican+https://barbican:9311 --tls-ca /etc/brickcrypt/ca.pem --timeout 5000
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8776/v1/volumes`,
    )
    .action(async (o: ServeOptions) => {
      const listen = parseListen(o.listen);
      const database = o.database ?? (process.env.BRICKCRYPT_DATABASE || undefined);
      const role = o.role === undefined ? 'all' : parseChoice(o.role, 'role', ['api', 'worker', 'all'] as const);
      if (role !== 'all' && database === undefined) throw new InvalidArgumentError(`--role ${role} needs --database (one process on SQLite is always "all").`);
      if (o.heartbeatTimeout !== undefined && database === undefined) throw new InvalidArgumentError('--heartbeat-timeout applies to --database only.');
      if (!o.tokens && !o.trustProxyIdentity) throw new InvalidArgumentError('Give --tokens FILE and/or --trust-proxy-identity: the API answers no request without an identity.');
      const keyManager = await serveKeyManager(o);
      const { loadTokensFile } = await import('../../service/caller-identity.js');
      const { createService } = await import('../../service/app.js');
      const tokens = o.tokens ? loadTokensFile(o.tokens) : new Map();
      const imageService = o.imageService ?? process.env.BRICKCRYPT_IMAGE_SERVICE;
      const backupRepo = o.backupRepo ?? process.env.BRICKCRYPT_BACKUP_REPO;
      if (backupRepo) (await import('../../backup/object-store.js')).parseStoreUri(backupRepo); // a bad URI fails now
      const log = (m: string) => process.stderr.write(`brickcrypt serve: ${m}\n`);
      if (database !== undefined && (keyManager.keyManager ?? 'local:').startsWith('local')) log('the local keystore under --state is the key manager: every process must share this --state (one host); workers on several hosts need --key-manager');
      const service = await createService({
        stateDir: resolve(o.state),
        identity: { tokens, trustProxyIdentity: o.trustProxyIdentity === true },
        ...(o.workers !== undefined ? { concurrency: parseInteger(o.workers, 'workers', 1, 64) } : {}),
        ...(o.maxJobs !== undefined ? { maxJobs: parseInteger(o.maxJobs, 'max-jobs', 1) } : {}),
        ...(o.nbdHost !== undefined ? { nbdHost: o.nbdHost } : {}),
        ...(o.copyBpsLimit !== undefined ? { copyBytesPerSecond: parseSize(o.copyBpsLimit, 'copy-bps-limit') } : {}),
        ...(o.checkpointEvery !== undefined ? { checkpointBytes: parseSize(o.checkpointEvery, 'checkpoint-every') } : {}),
        ...(o.imageDir !== undefined ? { imageDirs: o.imageDir.map((d) => resolve(d)) } : {}),
        ...(imageService ? { imageServiceUrl: imageService } : {}),
        ...(backupRepo ? { backupRepo } : {}),
        ...(database !== undefined ? { database, role } : {}),
        ...(o.heartbeatTimeout !== undefined ? { heartbeatTimeoutSeconds: parseInteger(o.heartbeatTimeout, 'heartbeat-timeout', 1, 3600) } : {}),
        ...(o.volumesDir !== undefined ? { volumesDir: resolve(o.volumesDir) } : {}),
        ...keyManager,
        log,
      }).finally(() => keyManager.keyManagerOptions.kekPassphrase?.wipe());
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        log('stopping: running jobs stay resumable');
        await service.close();
        process.exit(0);
      };
      process.on('SIGTERM', () => void stop());
      process.on('SIGINT', () => void stop());
      await service.start();
      // A worker answers /v1/health and /metrics too (for its supervisor); the API routes work on every role.
      const address = await service.app.listen({ host: listen.host, port: listen.port });
      process.stdout.write(`listening on ${address} (role ${role}${database !== undefined ? ', PostgreSQL' : ', SQLite'}, key manager ${service.keys.backend})\n`);
    });
}

/**
 * `--key-manager` and its options, checked before anything is opened (a bad URI or a TLS
 * option without a network key manager is a usage error). The default stays the local
 * keystore under --state (not $BRICKCRYPT_KEY_MANAGER: an operator's shell must not move
 * the service's keys).
 */
async function serveKeyManager(o: ServeOptions): Promise<{ keyManager?: string; keyManagerOptions: import('../../keys/open-key-manager.js').OpenKeyManagerOptions }> {
  const { parseKeyManagerUri } = await import('../../keys/open-key-manager.js');
  const kind = o.keyManager !== undefined ? parseKeyManagerUri(o.keyManager).kind : 'local';
  const network = kind === 'barbican' || kind === 'kmip';
  for (const [flag, given] of [['--tls-ca', o.tlsCa], ['--tls-cert', o.tlsCert], ['--tls-key', o.tlsKey], ['--timeout', o.timeout]] as const) {
    if (given !== undefined && !network) throw new InvalidArgumentError(`${flag} applies to a barbican or kmip --key-manager only.`);
  }
  const local = [['--kek-file', o.kekFile], ['--kek-passphrase-file', o.kekPassphraseFile], ['--kek-pkcs11-key', o.kekPkcs11Key]] as const;
  for (const [flag, given] of local) if (given !== undefined && kind !== 'local') throw new InvalidArgumentError(`${flag} applies to the local keystore only.`);
  if (kind === 'memory') throw new InvalidArgumentError('--key-manager memory: would lose every key when serve stops; use local:PATH, barbican+http(s):// or kmip://.');
  return { ...(o.keyManager !== undefined ? { keyManager: o.keyManager } : {}), keyManagerOptions: await managerOptions(o) };
}
