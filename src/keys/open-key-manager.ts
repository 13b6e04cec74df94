/**
 * Opening a key manager from a URI:
 *
 * | URI                               | backend                                             |
 * |-----------------------------------|-----------------------------------------------------|
 * | `local:` / `local:PATH`           | local keystore (default `$BRICKCRYPT_HOME/keystore.db`, home default `~/.brickcrypt`) |
 * | `memory:`                         | in-process memory (tests, demos)                    |
 * | `barbican+http://HOST:PORT`       | OpenStack Barbican (also `barbican+https://`)       |
 * | `kmip://HOST:PORT`                | KMIP server over mutual TLS                         |
 *
 * Network backends are loaded on demand, so the local keystore works without them.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import type { Passphrase } from '../secret.js';
import type { KeyManager } from './key-manager.js';
import type { KekProvider } from './kek/kek-provider.js';
import type { Argon2idParams } from './kek/aes-gcm-kek.js';
import { LocalKeyManager } from './local-key-manager.js';
import { MemoryKeyManager } from './memory-key-manager.js';

/** PKCS#11 KEK settings for a local keystore (module, token, key label, PIN source). */
export interface Pkcs11KekSettings {
  modulePath?: string;
  tokenLabel?: string;
  slot?: number;
  pinFile?: string;
  pinEnv?: string;
  keyLabel: string;
}

export interface OpenKeyManagerOptions {
  env?: NodeJS.ProcessEnv;
  /** local: create the keystore (and its KEK) when it does not exist. */
  init?: boolean;
  /** local: KEK file. */
  kekFile?: string;
  /** local: KEK passphrase (Argon2id). */
  kekPassphrase?: Passphrase;
  /** local, on init: Argon2id cost. */
  argon2?: Partial<Omit<Argon2idParams, 'salt'>>;
  /** local: an already open KEK provider. */
  kek?: KekProvider;
  /** local: KEK inside a PKCS#11 token. */
  pkcs11?: Pkcs11KekSettings;
  /** barbican: project sent when the caller has none of its own (callers always carry one). */
  project?: string;
  /** barbican/kmip: TLS trust anchor, client certificate and key (PEM files). */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** network backends: per-attempt timeout and attempts. */
  timeoutMs?: number;
  attempts?: number;
}

/** `$BRICKCRYPT_HOME`, default `~/.brickcrypt`. */
export function brickcryptHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.BRICKCRYPT_HOME || join(homedir(), '.brickcrypt'));
}

/** The default keystore path, `$BRICKCRYPT_HOME/keystore.db`. */
export function defaultKeystorePath(env: NodeJS.ProcessEnv = process.env): string {
  return join(brickcryptHome(env), 'keystore.db');
}

/** `$BRICKCRYPT_KEY_MANAGER`, else the default local keystore. */
export function defaultKeyManagerUri(env: NodeJS.ProcessEnv = process.env): string {
  return env.BRICKCRYPT_KEY_MANAGER || `local:${defaultKeystorePath(env)}`;
}

export type ParsedKeyManagerUri =
  | { kind: 'local'; path: string }
  | { kind: 'memory' }
  | { kind: 'barbican'; url: string }
  | { kind: 'kmip'; host: string; port: number };

/**
 * Parses a key-manager URI (no I/O).
 *
 * @example
 * parseKeyManagerUri('barbican+https://kms.example:9311') // { kind: 'barbican', url: 'https://kms.example:9311' }
 */
export function parseKeyManagerUri(uri: string, env: NodeJS.ProcessEnv = process.env): ParsedKeyManagerUri {
  if (uri === 'memory:' || uri === 'memory') return { kind: 'memory' };
  if (uri === 'local' || uri.startsWith('local:')) {
    let path = uri.slice('local:'.length);
    if (path.startsWith('//')) path = path.slice(2);
    return { kind: 'local', path: path === '' ? defaultKeystorePath(env) : resolve(path) };
  }
  if (uri.startsWith('barbican+http://') || uri.startsWith('barbican+https://')) {
    const url = uri.slice('barbican+'.length);
    try {
      new URL(url);
    } catch {
      throw new InvalidArgumentError(`--key-manager: '${uri}' is not a valid Barbican URL.`);
    }
    return { kind: 'barbican', url };
  }
  if (uri.startsWith('kmip://')) {
    let u: URL;
    try {
      u = new URL(uri);
    } catch {
      throw new InvalidArgumentError(`--key-manager: '${uri}' is not a valid KMIP URI.`);
    }
    if (!u.hostname) throw new InvalidArgumentError(`--key-manager: '${uri}' names no host.`);
    return { kind: 'kmip', host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 5696 };
  }
  throw new InvalidArgumentError(`--key-manager: '${uri}' is not one of local:PATH, memory:, barbican+http(s)://HOST:PORT, kmip://HOST:PORT.`);
}

type Ctor = { new (options: unknown): KeyManager; optionsFromUri?: (uri: string) => Record<string, unknown> };

async function loadBackend(path: string, exportName: string, what: string): Promise<Ctor> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(path)) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidArgumentError(`The ${what} backend is not available: ${(err as Error).message}`);
  }
  const ctor = mod[exportName];
  if (typeof ctor !== 'function') throw new InvalidArgumentError(`The ${what} backend module does not export ${exportName}.`);
  return ctor as Ctor;
}

const readOpt = (file?: string) => (file ? readFileSync(file) : undefined);

/**
 * Opens the key manager a URI names.
 *
 * @example
 * const km = await openKeyManager('local:/var/lib/brickcrypt/keystore.db', { kekFile: '/etc/brickcrypt/kek' });
 * const mem = await openKeyManager('memory:');
 */
export async function openKeyManager(uri: string = defaultKeyManagerUri(), options: OpenKeyManagerOptions = {}): Promise<KeyManager> {
  const env = options.env ?? process.env;
  const parsed = parseKeyManagerUri(uri, env);
  switch (parsed.kind) {
    case 'memory':
      return new MemoryKeyManager();
    case 'local': {
      let kek = options.kek;
      if (!kek && options.pkcs11) {
        const mod = (await import('./kek/pkcs11-kek.js')) as unknown as {
          Pkcs11Kek: { open(o: Pkcs11KekSettings & { create?: boolean }): Promise<KekProvider> };
        };
        kek = await mod.Pkcs11Kek.open({ ...options.pkcs11, create: options.init === true });
      }
      const local = {
        ...(options.kekFile !== undefined ? { kekFile: options.kekFile } : {}),
        ...(options.kekPassphrase !== undefined ? { kekPassphrase: options.kekPassphrase } : {}),
        ...(options.argon2 !== undefined ? { argon2: options.argon2 } : {}),
        ...(kek !== undefined ? { kek } : {}),
      };
      try {
        return await (options.init ? LocalKeyManager.openOrInit(parsed.path, local) : LocalKeyManager.open(parsed.path, local));
      } catch (err) {
        // A provider opened here belongs to the keystore; on failure nobody else will close it.
        if (kek && kek !== options.kek) await kek.close();
        throw err;
      }
    }
    case 'barbican': {
      const Barbican = await loadBackend('./barbican/barbican-key-manager.js', 'BarbicanKeyManager', 'Barbican');
      const base = Barbican.optionsFromUri ? Barbican.optionsFromUri(uri) : { url: parsed.url };
      const tls = { ...((base.tls as object | undefined) ?? {}) } as Record<string, unknown>;
      if (options.caFile) tls.ca = readOpt(options.caFile);
      if (options.certFile) tls.cert = readOpt(options.certFile);
      if (options.keyFile) tls.key = readOpt(options.keyFile);
      return new Barbican({
        ...base,
        ...(Object.keys(tls).length > 0 ? { tls } : {}),
        ...(options.project !== undefined ? { project: options.project } : {}),
        ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.attempts !== undefined ? { attempts: options.attempts } : {}),
      });
    }
    case 'kmip': {
      const Kmip = await loadBackend('./kmip/kmip-key-manager.js', 'KmipKeyManager', 'KMIP');
      const base = Kmip.optionsFromUri ? Kmip.optionsFromUri(uri) : { host: parsed.host, port: parsed.port };
      return new Kmip({
        ...base,
        ...(options.caFile !== undefined ? { caFile: options.caFile } : {}),
        ...(options.certFile !== undefined ? { certFile: options.certFile } : {}),
        ...(options.keyFile !== undefined ? { keyFile: options.keyFile } : {}),
        ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.attempts !== undefined ? { attempts: options.attempts } : {}),
      });
    }
  }
}
