/**
 * The key-manager options every command shares (`key`, `image`, and the volume commands
 * that take `--key-manager URI --key-id ID` instead of a key file), and the one place that
 * opens a manager for a CLI call and turns a managed key into a LUKS passphrase.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../errors.js';
import type { Passphrase } from '../secret.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import type { OpenKeyManagerOptions, Pkcs11KekSettings } from '../keys/open-key-manager.js';
import { loadCallerIdentity } from '../keys/identity.js';
import { readKeyFile } from './key-input.js';
import { parseInteger } from './parse.js';

// The keystore modules load native addons (SQLite, Argon2): import them only when a key is needed.
const keysModule = () => import('../keys/open-key-manager.js');
const passphraseModule = () => import('../keys/luks-passphrase.js');

export interface KeyManagerCliOptions {
  keyManager?: string;
  user?: string;
  project?: string;
  roles?: string;
  profile?: string;
  kekFile?: string;
  kekPassphraseFile?: string;
  kekPkcs11Key?: string;
  pkcs11Token?: string;
  pkcs11PinFile?: string;
  pkcs11Module?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  timeout?: string;
}

export const KEY_MANAGER_HELP = `
Key-manager options select the key manager and the caller:
  --key-manager URI   local:PATH (default $BRICKCRYPT_HOME/keystore.db, home ~/.brickcrypt),
                      memory:, barbican+http(s)://HOST:PORT, kmip://HOST:PORT
                      (default $BRICKCRYPT_KEY_MANAGER, else the local keystore)
  --user, --project, --roles a,b   the caller identity; or --profile FILE with
                      {"user": ..., "project": ..., "roles": [...]} (default $BRICKCRYPT_PROFILE).
                      Without a profile, roles default to admin in project "default".`;

/**
 * Adds the options that select and reach a key manager (URI, local KEK, PKCS#11, TLS, timeout),
 * without the caller identity: `serve` takes its callers' identities from each request.
 */
export function addKeyManagerConnectionOptions(cmd: Command, options: { keyManagerDescription?: string } = {}): Command {
  return cmd
    .option('--key-manager <uri>', options.keyManagerDescription ?? 'key manager URI (see below)')
    .option('--kek-file <file>', 'local keystore: key-encryption-key file (32 bytes, mode 0600)')
    .option('--kek-passphrase-file <file>', 'local keystore: file whose every byte is the KEK passphrase (Argon2id)')
    .option('--kek-pkcs11-key <label>', 'local keystore: the KEK is this AES key inside a PKCS#11 token (never leaves it)')
    .option('--pkcs11-token <label>', 'PKCS#11 token label for --kek-pkcs11-key / --new-kek-pkcs11-key')
    .option('--pkcs11-pin-file <file>', 'file holding the PKCS#11 user PIN')
    .option('--pkcs11-module <path>', "PKCS#11 module (default SoftHSM2's /usr/lib/softhsm/libsofthsm2.so)")
    .option('--tls-ca <file>', 'barbican/kmip: CA certificate (PEM)')
    .option('--tls-cert <file>', 'barbican/kmip: client certificate (PEM)')
    .option('--tls-key <file>', 'barbican/kmip: client private key (PEM)')
    .option('--timeout <ms>', 'barbican/kmip: per-attempt timeout in milliseconds');
}

/** Adds the key-manager and caller-identity options to a command. */
export function addKeyManagerOptions(cmd: Command, options: { help?: boolean } = {}): Command {
  addKeyManagerConnectionOptions(cmd)
    .option('--user <name>', 'caller user name')
    .option('--project <name>', 'caller project')
    .option('--roles <list>', 'caller roles, comma-separated (admin, member, creator, reader)')
    .option('--profile <file>', 'JSON identity profile {user, project, roles}');
  if (options.help !== false) cmd.addHelpText('after', KEY_MANAGER_HELP);
  return cmd;
}

export function callerIdentity(o: KeyManagerCliOptions): CallerIdentity {
  return loadCallerIdentity({
    ...(o.user !== undefined ? { user: o.user } : {}),
    ...(o.project !== undefined ? { project: o.project } : {}),
    ...(o.roles !== undefined ? { roles: o.roles } : {}),
    ...(o.profile !== undefined ? { profile: o.profile } : {}),
  });
}

export function pkcs11Settings(o: KeyManagerCliOptions, keyLabel: string): Pkcs11KekSettings {
  if (!o.pkcs11Token) throw new InvalidArgumentError('A PKCS#11 KEK needs --pkcs11-token LABEL.');
  if (!o.pkcs11PinFile) throw new InvalidArgumentError('A PKCS#11 KEK needs --pkcs11-pin-file FILE.');
  return { keyLabel, tokenLabel: o.pkcs11Token, pinFile: o.pkcs11PinFile, ...(o.pkcs11Module ? { modulePath: o.pkcs11Module } : {}) };
}

export async function managerOptions(o: KeyManagerCliOptions, extra: Partial<OpenKeyManagerOptions> = {}): Promise<OpenKeyManagerOptions> {
  const opts: OpenKeyManagerOptions = { ...extra };
  if (o.kekFile) opts.kekFile = o.kekFile;
  if (o.kekPassphraseFile) opts.kekPassphrase = await readKeyFile({ keyFile: o.kekPassphraseFile });
  if (o.kekPkcs11Key) opts.pkcs11 = pkcs11Settings(o, o.kekPkcs11Key);
  if (o.tlsCa) opts.caFile = o.tlsCa;
  if (o.tlsCert) opts.certFile = o.tlsCert;
  if (o.tlsKey) opts.keyFile = o.tlsKey;
  if (o.timeout) opts.timeoutMs = parseInteger(o.timeout, 'timeout', 1);
  if (o.project) opts.project = o.project;
  return opts;
}

/** Opens the manager named by the options, runs `fn`, always closes it (and wipes a KEK passphrase). */
export async function withKeyManager<T>(
  o: KeyManagerCliOptions,
  fn: (km: KeyManager, caller: CallerIdentity) => Promise<T>,
  extra: Partial<OpenKeyManagerOptions> = {},
): Promise<T> {
  const caller = callerIdentity(o);
  const opts = await managerOptions(o, extra);
  try {
    const { openKeyManager, defaultKeyManagerUri } = await keysModule();
    const km = await openKeyManager(o.keyManager ?? defaultKeyManagerUri(), opts);
    try {
      return await fn(km, caller);
    } finally {
      await km.close();
    }
  } finally {
    opts.kekPassphrase?.wipe();
  }
}

/**
 * The LUKS passphrase of managed object `keyId`: lowercase hex of a symmetric key's bytes
 * (the os-brick convention), or a passphrase object's bytes. The object's bytes are wiped.
 */
export async function passphraseFromKeyManager(o: KeyManagerCliOptions, keyId: string): Promise<Passphrase> {
  const { passphraseForLuks } = await passphraseModule();
  return withKeyManager(o, async (km, caller) => {
    const object = await km.get(caller, keyId);
    try {
      return passphraseForLuks(object);
    } finally {
      object.secret.wipe();
    }
  });
}

/**
 * Creates a new symmetric key for a new volume and returns its id and LUKS passphrase.
 * This is the least-privilege path: a `creator` gets the bytes once, here, and can never
 * read them again.
 */
export async function newVolumeKeyFromKeyManager(
  o: KeyManagerCliOptions,
  options: { bits?: number; name?: string } = {},
): Promise<{ id: string; passphrase: Passphrase }> {
  const { passphraseForLuks } = await passphraseModule();
  return withKeyManager(o, async (km, caller) => {
    const { id, key } = await km.createKey(caller, { algorithm: 'aes', bitLength: options.bits ?? 256, ...(options.name ? { name: options.name } : {}) });
    try {
      const object = { id, type: 'symmetric' as const, created: new Date().toISOString(), owner: caller, consumers: [], secret: key };
      return { id, passphrase: passphraseForLuks(object) };
    } finally {
      key.wipe();
    }
  });
}
