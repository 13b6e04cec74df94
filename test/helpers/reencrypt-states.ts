/**
 * Volumes in the in-progress reencryption states cryptsetup 2.6 itself writes, for tests:
 * `--init-only` (recorded, nothing rewritten) and a `cryptsetup reencrypt` killed with SIGKILL
 * part-way (some zones done, possibly one inside a hot zone). The plaintext is written first
 * through brickcrypt's own encrypted view, so tests can compare it byte for byte afterwards.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';
import { run } from './tools.js';

export const CS_FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
/** Offline reencryption of an image file (no device-mapper, no locking). */
export const CS_OFFLINE = ['--batch-mode', '--disable-locks', '--force-offline-reencrypt'];

/** Formats `path` (created with `size` bytes) with cryptsetup and fills the payload with random plaintext, returned. */
export async function cryptsetupVolumeWithData(path: string, size: number, keyFile: string, formatArgs: string[] = []): Promise<Uint8Array> {
  writeFileSync(path, '');
  run('truncate', ['-s', String(size), path]);
  run('cryptsetup', ['luksFormat', '--type', 'luks2', '--batch-mode', ...CS_FAST, '--key-file', keyFile, ...formatArgs, path]);
  return writePlaintext(path, keyFile);
}

/** Writes random plaintext over the whole payload of a LUKS volume; returns it. */
export async function writePlaintext(path: string, keyFile: string, passphrase?: string): Promise<Uint8Array> {
  const file = await FileDevice.open(path);
  try {
    const vol = await LuksVolume.open(file);
    const { key } = await vol.unlock(Passphrase.fromString(passphrase ?? (await import('node:fs')).readFileSync(keyFile, 'utf8')));
    const dev = EncryptedDevice.open(file, vol, key);
    const data = new Uint8Array(randomBytes(dev.size));
    await dev.write(data, 0);
    await dev.flush();
    await dev.close();
    return data;
  } finally {
    await file.close();
  }
}

/** Reads the whole plaintext through a fresh open of the volume (it must not be fenced). */
export async function readPlaintext(path: string, passphrase: string): Promise<Uint8Array> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const vol = await LuksVolume.open(file, { readOnly: true });
    const { key } = await vol.unlock(Passphrase.fromString(passphrase));
    const dev = EncryptedDevice.open(file, vol, key, { readOnly: true });
    const data = new Uint8Array(dev.size);
    await dev.read(data, 0);
    await dev.close();
    return data;
  } finally {
    await file.close();
  }
}

/** `cryptsetup reencrypt --init-only`: the reencryption is recorded, no data rewritten. */
export function cryptsetupInitOnly(path: string, keyFile: string, args: string[] = []): void {
  run('cryptsetup', ['reencrypt', '--init-only', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, ...args, path]);
}

/** The JSON metadata as cryptsetup reads it. */
export function cryptsetupMetadata(path: string): Record<string, any> {
  return JSON.parse(run('cryptsetup', ['luksDump', '--dump-json-metadata', path]));
}

/**
 * Starts `cryptsetup reencrypt` (small hot zones, so it takes a while) and kills it with SIGKILL
 * after `afterMs`. Returns true when it was killed before it finished.
 */
export async function cryptsetupKilled(path: string, keyFile: string, afterMs: number, args: string[] = []): Promise<boolean> {
  const child = spawn('cryptsetup', ['reencrypt', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, ...args, path], { stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
  const code = await exited;
  clearTimeout(timer);
  return code !== 0;
}
