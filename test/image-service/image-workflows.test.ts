/**
 * Volume -> image -> volume round trips through a real Glance (scripts/servers/glance.sh):
 * as-is with cloned keys and decrypted, signatures made and checked while streaming, qcow2
 * images read with ranges, tampering and cancellation leaving nothing behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { glanceAs, glanceServer, uniqueProject } from '../helpers/glance.js';
import type { GlanceClient } from '../../src/image-service/glance-client.js';
import { needTools, run } from '../helpers/tools.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import { passphraseForLuks } from '../../src/keys/luks-passphrase.js';
import type { CallerIdentity, KeyManager } from '../../src/keys/key-manager.js';
import { convert } from '../../src/workflows/convert.js';
import { verify } from '../../src/workflows/verify.js';
import { deleteImage, uploadVolume } from '../../src/workflows/image-upload.js';
import { downloadImage } from '../../src/workflows/image-download.js';
import { Passphrase } from '../../src/secret.js';
import { CancelledError, IntegrityError, KeyNotFoundError } from '../../src/errors.js';

const server = await glanceServer();
const skip = 'skip' in server ? server.skip : false;
const url = 'skip' in server ? '' : server.url;
const store = 'skip' in server ? '' : server.store;
const skipSigned = skip || needTools('openssl');
const skipQemu = skip || needTools('qemu-img');

const dir = mkdtempSync(join(tmpdir(), 'brickcrypt-image-wf-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const f = (name: string) => join(dir, name);
const PBKDF = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const MIB = 1024 * 1024;

/** A raw file with data, a zero hole and data again (so zero handling is exercised). */
/** The image file exactly as Glance stores it, written to `path`. */
async function storedImage(glance: GlanceClient, imageId: string, path: string): Promise<string> {
  const stream = await glance.openData(imageId);
  const parts: Uint8Array[] = [];
  for (;;) {
    const r = await stream.reader.read();
    if (r.done) break;
    parts.push(r.value);
  }
  writeFileSync(path, Buffer.concat(parts));
  return path;
}

function rawImage(name: string, mib = 24): string {
  const path = f(name);
  const data = Buffer.alloc(mib * MIB);
  randomBytes(8 * MIB).copy(data, 0);
  randomBytes(4 * MIB).copy(data, (mib - 4) * MIB);
  writeFileSync(path, data);
  return path;
}

interface Setup {
  km: KeyManager;
  admin: CallerIdentity;
  creator: CallerIdentity;
  project: string;
}

function setup(label: string): Setup {
  const project = uniqueProject(label);
  return {
    km: new MemoryKeyManager(),
    admin: { user: 'admin', project, roles: ['admin'] },
    creator: { user: 'cinder', project, roles: ['creator'] },
    project,
  };
}

/** A LUKS2 volume of `raw`'s content whose passphrase is the managed key `id` (os-brick hex). */
async function managedVolume(s: Setup, raw: string, name: string): Promise<{ path: string; keyId: string }> {
  const { id, key } = await s.km.createKey(s.creator);
  const passphrase = passphraseForLuks({ id, type: 'symmetric', created: '', owner: s.creator, consumers: [], secret: key });
  const path = f(name);
  try {
    await convert({ source: raw, target: path, targetFormat: 'luks2', targetPassphrase: async () => new Passphrase(new Uint8Array(passphrase.expose())), luks: PBKDF, workers: 0 });
  } finally {
    passphrase.wipe();
    key.wipe();
  }
  return { path, keyId: id };
}

/** The LUKS passphrase of managed key `id`, read by an admin (a creator cannot). */
async function passphraseOf(s: Setup, id: string): Promise<Passphrase> {
  const object = await s.km.get(s.admin, id);
  try {
    return passphraseForLuks(object);
  } finally {
    object.secret.wipe();
  }
}

function sha512(path: string): string {
  return createHash('sha512').update(readFileSync(path)).digest('hex');
}

function leftovers(): string[] {
  return readdirSync(dir).filter((n) => n.includes('brickcrypt-partial'));
}

test('as-is: a LUKS2 volume uploads with a cloned key and the Cinder/Glance properties, and comes back with a fresh clone', { skip }, async () => {
  const s = setup('asis');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('asis.raw');
  const vol = await managedVolume(s, raw, 'asis.luks');
  // A creator can do it: the key is cloned inside the key manager, no key bytes are read.
  const up = await uploadVolume({ volume: vol.path, client: glance, name: 'asis', keyManager: s.km, caller: s.creator, volumeKeyId: vol.keyId, workers: 0 });
  const image = await glance.show(up.imageId);
  assert.equal(image.status, 'active');
  assert.equal(image.diskFormat, 'raw');
  assert.equal(image.containerFormat, 'bare');
  assert.equal(image.size, readFileSync(vol.path).length);
  assert.equal(image.hashValue, sha512(vol.path));
  const clone = up.clonedKeyId!;
  assert.notEqual(clone, vol.keyId);
  assert.deepEqual(
    Object.fromEntries(Object.entries(image.properties).filter(([k]) => k.startsWith('cinder_') || k.startsWith('os_encrypt') || k.startsWith('os_decrypt'))),
    {
      cinder_encryption_key_id: clone,
      cinder_encryption_key_deletion_policy: 'on_image_deletion',
      os_encrypt_format: 'LUKSv2',
      os_encrypt_cipher: 'aes-xts-plain64',
      os_encrypt_key_id: clone,
      os_encrypt_key_deletion_policy: 'on_image_deletion',
      os_decrypt_size: String(24 * MIB),
    },
  );

  const back = f('asis-back.luks');
  const down = await downloadImage({ client: glance, imageId: up.imageId, target: back, targetFormat: 'luks2', keyManager: s.km, caller: s.creator, workers: 0 });
  assert.equal(down.mode, 'as-is');
  assert.ok(readFileSync(back).equals(readFileSync(vol.path)), 'ciphertext copied unchanged');
  const volumeKey = down.clonedKeyId!;
  assert.ok(![vol.keyId, clone].includes(volumeKey), 'the new volume has its own clone');
  // The clone opens the new volume, and its plaintext is the original.
  await verify({ a: raw, b: back, bPassphrase: () => passphraseOf(s, volumeKey), workers: 0 });

  // Asked for a new key, the encrypted image is re-keyed: decrypted with its key, encrypted under the new one.
  const rekeyed = f('asis-rekeyed.luks');
  const re = await downloadImage({ client: glance, imageId: up.imageId, target: rekeyed, targetFormat: 'luks1', keyManager: s.km, caller: s.admin,
    targetPassphrase: async () => Passphrase.fromString('another key'), luks: PBKDF, workers: 0 });
  assert.equal(re.mode, 're-key');
  await verify({ a: raw, b: rekeyed, bPassphrase: async () => Passphrase.fromString('another key'), workers: 0 });
  const plain = f('asis-plain.raw');
  await downloadImage({ client: glance, imageId: up.imageId, target: plain, targetFormat: 'raw', keyManager: s.km, caller: s.admin, workers: 0 });
  assert.ok(readFileSync(plain).equals(readFileSync(raw)), 'decrypted with the image key');

  // Deleting the image deletes the key it owns, and only that one.
  assert.deepEqual(await deleteImage({ client: glance, imageId: up.imageId, keyManager: async () => ({ keyManager: s.km, caller: s.creator }) }), { deletedKeyId: clone });
  await assert.rejects(s.km.getMetadata(s.admin, clone), KeyNotFoundError);
  await s.km.getMetadata(s.admin, vol.keyId);
  await s.km.getMetadata(s.admin, volumeKey);
});

test('decrypted upload with stage + import, signed in the same pass; download verifies and converts to LUKS2 and qcow2', { skip: skipSigned || skipQemu }, async () => {
  const s = setup('plain');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('plain.raw');
  const vol = await managedVolume(s, raw, 'plain.luks');
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=signer', '-keyout', f('signer.key'), '-out', f('signer.pem')]);
  const der = Buffer.from(readFileSync(f('signer.pem'), 'latin1').replace(/-----[^-]+-----|\s+/g, ''), 'base64');
  const { SecretBytes } = await import('../../src/secret.js');
  const certId = await s.km.store(s.admin, { type: 'certificate', secret: SecretBytes.copyOf(der) });
  const up = await uploadVolume({
    volume: vol.path,
    client: glance,
    name: 'plain',
    mode: 'decrypt',
    diskFormat: 'raw',
    flow: 'glance-direct',
    passphrase: () => passphraseOf(s, vol.keyId),
    sign: { hashMethod: 'SHA-256', keyType: 'RSA-PSS', key: { privateKeyPem: readFileSync(f('signer.key')) }, certificateId: certId },
    keyManager: s.km,
    caller: s.admin,
    workers: 0,
  });
  const image = await glance.show(up.imageId);
  assert.equal(image.size, 24 * MIB);
  assert.equal(image.hashValue, sha512(raw), 'the plaintext was uploaded');
  assert.equal(image.properties.img_signature_certificate_uuid, certId);
  assert.equal(image.properties.img_signature_key_type, 'RSA-PSS');
  assert.equal(image.properties.cinder_encryption_key_id, undefined);
  // The signature is the one openssl computes over the same bytes.
  writeFileSync(f('sig.bin'), Buffer.from(image.properties.img_signature!, 'base64'));
  writeFileSync(f('signer.pub'), run('openssl', ['x509', '-pubkey', '-noout', '-in', f('signer.pem')]));
  assert.match(run('openssl', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:-2', '-verify', f('signer.pub'), '-signature', f('sig.bin'), raw]), /Verified OK/);

  const luks = f('plain-back.luks');
  const down = await downloadImage({
    client: glance, imageId: up.imageId, target: luks, targetFormat: 'luks2', keyManager: s.km, caller: s.admin, requireSignature: true,
    targetPassphrase: async () => Passphrase.fromString('new volume'), luks: PBKDF, workers: 0,
  });
  assert.equal(down.signature?.keyType, 'RSA-PSS');
  assert.equal(down.signature?.bytes, 24 * MIB);
  await verify({ a: raw, b: luks, bPassphrase: async () => Passphrase.fromString('new volume'), workers: 0 });

  const q = f('plain-back.qcow2');
  await downloadImage({ client: glance, imageId: up.imageId, target: q, targetFormat: 'qcow2', keyManager: s.km, caller: s.admin, workers: 0 });
  run('qemu-img', ['check', q]);
  run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
  await glance.delete(up.imageId);
});

test('a qcow2 image becomes a LUKS2 volume read with ranges, no temporary file; qcow2 round trip is clean', { skip: skipQemu }, async () => {
  const s = setup('qcow2');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('q.raw', 40);
  const q = f('q.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
  const up = await uploadVolume({ volume: q, client: glance, name: 'q', keyManager: s.km, caller: s.admin, workers: 0 });
  assert.equal(up.diskFormat, 'qcow2');
  assert.equal((await glance.show(up.imageId)).diskFormat, 'qcow2');
  const luks = f('q-back.luks');
  const down = await downloadImage({ client: glance, imageId: up.imageId, target: luks, targetFormat: 'luks2', keyManager: s.km, caller: s.admin,
    targetPassphrase: async () => Passphrase.fromString('pw'), luks: PBKDF, workers: 0 });
  assert.equal(down.convert?.source.format, 'qcow2');
  assert.equal(down.convert?.target.payloadSize, 40 * MIB, 'exact sizing: the virtual size');
  assert.equal(down.sha512, sha512(q), 'every byte of the image file was hashed once');
  await verify({ a: raw, b: luks, bPassphrase: async () => Passphrase.fromString('pw'), workers: 0 });
  assert.deepEqual(leftovers(), []);
  await glance.delete(up.imageId);
});

test('a tampered image file on the store fails the signature (exit 7) and leaves no target', { skip: skipSigned }, async () => {
  const s = setup('tamper');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('t.raw', 12);
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=signer', '-keyout', f('t.key'), '-out', f('t.pem')]);
  const der = Buffer.from(readFileSync(f('t.pem'), 'latin1').replace(/-----[^-]+-----|\s+/g, ''), 'base64');
  const { SecretBytes } = await import('../../src/secret.js');
  const certId = await s.km.store(s.admin, { type: 'certificate', secret: SecretBytes.copyOf(der) });
  const up = await uploadVolume({
    volume: raw, client: glance, name: 't', keyManager: s.km, caller: s.admin,
    sign: { hashMethod: 'SHA-512', keyType: 'RSA-PSS', key: { privateKeyPem: readFileSync(f('t.key')) }, certificateId: certId },
  });
  const stored = join(store, up.imageId);
  assert.ok(existsSync(stored), `the file store holds ${stored}`);
  const fd = openSync(stored, 'r+');
  writeSync(fd, Buffer.from('tampered'), 0, 8, 5 * MIB);
  closeSync(fd);
  for (const format of ['raw', 'luks2'] as const) {
    const target = f(`t-back.${format}`);
    await assert.rejects(
      downloadImage({ client: glance, imageId: up.imageId, target, targetFormat: format, keyManager: s.km, caller: s.admin, workers: 0,
        ...(format === 'luks2' ? { targetPassphrase: async () => Passphrase.fromString('pw'), luks: PBKDF } : {}) }),
      (err: Error) => err instanceof IntegrityError && (err as IntegrityError).exitCode === 7 && /signature does not verify/.test(err.message),
    );
    assert.equal(existsSync(target), false, `no ${format} target`);
  }
  assert.deepEqual(leftovers(), []);
  await glance.delete(up.imageId);
});

test('--require-signature refuses an unsigned image before anything is written', { skip }, async () => {
  const s = setup('unsigned');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('u.raw', 4);
  const up = await uploadVolume({ volume: raw, client: glance, name: 'u' });
  const target = f('u-back.raw');
  await assert.rejects(downloadImage({ client: glance, imageId: up.imageId, target, targetFormat: 'raw', requireSignature: true }), IntegrityError);
  assert.equal(existsSync(target), false);
  // Without the requirement the same image converts, and its sha512 is checked.
  const down = await downloadImage({ client: glance, imageId: up.imageId, target, targetFormat: 'raw' });
  assert.equal(down.sha512, sha512(raw));
  assert.ok(readFileSync(target).equals(readFileSync(raw)));
  await glance.delete(up.imageId);
});

test('cancelling an upload deletes the queued image and the key clone; cancelling a download leaves no target', { skip }, async () => {
  const s = setup('cancel');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('c.raw', 48);
  const vol = await managedVolume(s, raw, 'c.luks');
  const keysBefore = (await s.km.list(s.admin)).length;
  const stop = new AbortController();
  await assert.rejects(
    uploadVolume({
      volume: vol.path, client: glance, name: 'cancelled', keyManager: s.km, caller: s.creator, volumeKeyId: vol.keyId, workers: 0,
      signal: stop.signal, onProgress: (p) => p.bytes >= 8 * MIB && stop.abort(),
    }),
    CancelledError,
  );
  assert.deepEqual(await glance.list(), [], 'no queued or half image is left');
  assert.equal((await s.km.list(s.admin)).length, keysBefore, 'the key clone was removed');

  const up = await uploadVolume({ volume: raw, client: glance, name: 'plain' });
  const target = f('c-back.luks');
  const stop2 = new AbortController();
  await assert.rejects(
    downloadImage({ client: glance, imageId: up.imageId, target, targetFormat: 'luks2', targetPassphrase: async () => Passphrase.fromString('pw'), luks: PBKDF,
      workers: 0, signal: stop2.signal, onProgress: (p) => p.bytes >= 8 * MIB && stop2.abort() }),
    CancelledError,
  );
  assert.equal(existsSync(target), false);
  assert.deepEqual(leftovers(), []);
  await glance.delete(up.imageId);
});

test('decrypted qcow2 upload: tables first, zeros unallocated, clean under qemu-img check', { skip: skipQemu }, async () => {
  const s = setup('qcow2up');
  const glance = glanceAs(url, s.project);
  const raw = rawImage('qup.raw', 24);
  const vol = await managedVolume(s, raw, 'qup.luks');
  const up = await uploadVolume({
    volume: vol.path, client: glance, name: 'qup', mode: 'decrypt', diskFormat: 'qcow2',
    passphrase: () => passphraseOf(s, vol.keyId), keyManager: s.km, caller: s.admin, workers: 0,
  });
  const image = await glance.show(up.imageId);
  assert.equal(image.diskFormat, 'qcow2');
  assert.ok(image.size! < 24 * MIB, `the 12 MiB zero hole is not stored (${image.size} bytes)`);
  const q = await storedImage(glance, up.imageId, f('qup-stored.qcow2'));
  assert.equal(sha512(q), image.hashValue);
  run('qemu-img', ['check', q]);
  run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
  // And back into a volume, reading the qcow2 with ranges.
  const back = f('qup-back.raw');
  await downloadImage({ client: glance, imageId: up.imageId, target: back, targetFormat: 'raw' });
  assert.ok(readFileSync(back).equals(readFileSync(raw)));
  await glance.delete(up.imageId);
});

test('compressed decrypted qcow2 upload: smaller than uncompressed, clean, equal, and back into a volume', { skip: skipQemu }, async () => {
  const s = setup('qcow2z');
  const glance = glanceAs(url, s.project);
  const raw = f('qz.raw');
  const data = Buffer.alloc(16 * MIB);
  const line = Buffer.from('a compressible line of a guest file system, 0123456789\n');
  for (let at = 0; at < 8 * MIB; at += line.length) line.copy(data, at);
  randomBytes(2 * MIB).copy(data, 12 * MIB);
  writeFileSync(raw, data);
  const vol = await managedVolume(s, raw, 'qz.luks');
  const upload = (compress: boolean) => uploadVolume({
    volume: vol.path, client: glance, name: compress ? 'qz' : 'qz-plain', mode: 'decrypt', diskFormat: 'qcow2', compress,
    passphrase: () => passphraseOf(s, vol.keyId), keyManager: s.km, caller: s.admin, workers: 0,
  });
  const packed = await upload(true);
  const whole = await upload(false);
  const image = await glance.show(packed.imageId);
  const plainSize = (await glance.show(whole.imageId)).size!;
  assert.ok(image.size! < plainSize - 6 * MIB, `compressed ${image.size} bytes, uncompressed ${plainSize}`);
  const q = await storedImage(glance, packed.imageId, f('qz-stored.qcow2'));
  assert.equal(sha512(q), image.hashValue);
  run('qemu-img', ['check', q]);
  run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
  const back = f('qz-back.raw');
  await downloadImage({ client: glance, imageId: packed.imageId, target: back, targetFormat: 'raw' });
  assert.ok(readFileSync(back).equals(data));
  await glance.delete(packed.imageId);
  await glance.delete(whole.imageId);
});
