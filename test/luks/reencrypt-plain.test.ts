/**
 * In-place conversion of a plain dm-crypt volume into LUKS2 (`reencrypt --encrypt --src-format
 * plain`): the result holds the plain volume's plaintext, no plaintext block ever reaches the
 * device, cryptsetup opens the result and an independent AES-XTS decryption with the volume key
 * cryptsetup dumps gives the plaintext back; a power cut after every write is finished by a
 * resume with the same plain key; while it runs cryptsetup refuses the volume (the source
 * requirement), and a resume without the plain source or with another key writes nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { encryptLuks2, ENCRYPT_SOURCE_REQUIREMENT, type EncryptOptions } from '../../src/luks/reencrypt/encrypt.js';
import { encryptPlainVolume, plainSource, plainToLuksCipher } from '../../src/workflows/plain-to-luks2.js';
import { openPlainVolume, resolvePlainParams, type PlainParams } from '../../src/plain/plain-volume.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { InvalidArgumentError, WrongPassphraseError } from '../../src/errors.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cryptsetupVolumeKeyHex, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';
import type { BlockDevice } from '../../src/block-device.js';
import { equalPlain, luksPlaintext } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'luks passphrase';
const KIB = 1024;
const MIB = 1024 * KIB;
const skipCs = needTools('cryptsetup');

/** A plain dm-crypt volume of `plain.length` bytes (whole device, offset 0) holding `plain`. */
async function plainVolume(dev: BlockDevice, params: PlainParams, key: Uint8Array, plain: Uint8Array): Promise<void> {
  const view = openPlainVolume(dev, params, new VolumeKey(new Uint8Array(key)));
  await view.write(plain, 0);
  await view.flush();
  await view.close();
}

const plainOf = (dev: BlockDevice, pass = PASS): Promise<Uint8Array> => luksPlaintext(dev, pass);

/** True when any 4096-byte block of `plain` appears in `image` (plaintext written to the device). */
function leaksPlaintext(image: Uint8Array, plain: Uint8Array): boolean {
  const blocks = new Set<string>();
  for (let p = 0; p < plain.length; p += 4096) blocks.add(createHash('sha256').update(plain.subarray(p, p + 4096)).digest('hex'));
  for (let p = 0; p + 4096 <= image.length; p += 512) if (blocks.has(createHash('sha256').update(image.subarray(p, p + 4096)).digest('hex'))) return true;
  return false;
}

const same = equalPlain;

for (const [label, options] of [
  ['aes-xts-plain64, 512-bit key, skip 8, on the calling thread', { cipher: 'aes-xts-plain64', keyBits: 512, skip: 8, workers: 0 }],
  ['aes-cbc-essiv:sha256, 256-bit key, on the worker pool', { cipher: 'aes-cbc-essiv:sha256', keyBits: 256, skip: 0, workers: 2 }],
] as const) {
  test(`plain (${label}) -> LUKS2 in place: same plaintext and usable size, no plaintext on the device, cryptsetup opens it and its volume key decrypts it`, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const P = 3 * MIB;
      const plain = new Uint8Array(randomBytes(P));
      const params = resolvePlainParams({ cipher: options.cipher, keyBits: options.keyBits, skip: options.skip });
      const key = randomBytes(options.keyBits / 8);
      const path = join(dir, 'vol.img');
      writeFileSync(path, Buffer.alloc(P));
      const f = await FileDevice.open(path);
      await plainVolume(f, params, key, plain);
      await f.close();
      assert.ok(!leaksPlaintext(readFileSync(path), plain), 'the plain volume itself holds no plaintext');
      const report = await encryptPlainVolume(path, { plain: params, plainKey: new VolumeKey(new Uint8Array(key)), passphrases: [Passphrase.fromString(PASS)], ...FAST, headerSize: 1 * MIB, workers: options.workers });
      assert.equal(report.finished, true);
      assert.equal(report.volumeSize, P);
      const image = readFileSync(path);
      assert.equal(image.length, P + 1 * MIB, 'the file grew by the header only');
      assert.ok(!leaksPlaintext(image, plain), 'no plaintext block reached the device');
      const dev = await FileDevice.open(path, { readOnly: true });
      try {
        same(await plainOf(dev), plain, 'LUKS2 plaintext');
        const { state } = await readLuks2Headers(dev, dev.size);
        assert.equal(state.metadata.config.requirements?.mandatory, undefined, 'no requirement left');
        assert.deepEqual(Object.keys(state.metadata.tokens), [], 'no token left');
      } finally {
        await dev.close();
      }
      if (!skipCs) {
        const passFile = join(dir, 'pass');
        writeFileSync(passFile, PASS);
        run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', passFile, path]);
        const vk = Buffer.from(cryptsetupVolumeKeyHex(path, passFile), 'hex');
        assert.equal(vk.length, 64);
        // Independent decryption: aes-xts-plain64, 4096-byte sectors, IV = byte offset / 512.
        const out = Buffer.alloc(P);
        for (let pos = 0; pos < P; pos += 4096) {
          const iv = Buffer.alloc(16);
          iv.writeBigUInt64LE(BigInt(pos / 512));
          createDecipheriv('aes-256-xts', vk, iv).setAutoPadding(false).update(image.subarray(1 * MIB + pos, 1 * MIB + pos + 4096)).copy(out, pos);
        }
        same(out, plain, 'decrypted with the volume key cryptsetup dumps');
      }
    } finally {
      cleanup();
    }
  });
}

test('plain -> LUKS2 with --reduce-device-size (a device that cannot grow): the plaintext before the given-up end survives, the device keeps its size', async () => {
  const N = 4 * MIB;
  const R = 2 * MIB;
  const plain = new Uint8Array(randomBytes(N));
  const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 256 });
  const key = randomBytes(32);
  // A MemoryDevice cannot grow, as a block device.
  const dev = new MemoryDevice(new Uint8Array(N));
  await plainVolume(dev, params, key, plain);
  const report = await encryptLuks2(dev, sourceOpts(params, key, { headerSize: undefined, hotzoneSize: undefined, reduceDeviceSize: R }));
  assert.equal(report.finished, true);
  assert.equal(dev.size, N, 'the device keeps its size');
  assert.equal(report.lostBytes, R);
  const out = await plainOf(dev);
  same(out.subarray(0, N - R), plain.subarray(0, N - R), 'plaintext before the given-up end');
  assert.ok(!leaksPlaintext(dev.bytes, plain), 'no plaintext block reached the device');
});

function sourceOpts(params: PlainParams, key: Uint8Array, extra: Partial<EncryptOptions> = {}): EncryptOptions {
  const plainKey = new VolumeKey(new Uint8Array(key));
  return {
    passphrases: [Passphrase.fromString(PASS)],
    ...FAST,
    headerSize: 512 * KIB,
    hotzoneSize: 128 * KIB,
    source: plainSource(params, plainKey),
    cipherFactory: plainToLuksCipher(params, plainKey, undefined),
    ...extra,
  };
}

test('power cut after EVERY write of a plain -> LUKS2 conversion (torn at 512 bytes): the resume with the plain key gives the plaintext, no plaintext is ever on the device', async () => {
  const P = 1 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 256 });
  const key = randomBytes(32);
  const mem = new MemoryDevice(new Uint8Array(P));
  await plainVolume(mem, params, key, plain);
  const source = new Uint8Array(mem.bytes);
  let cut = 1;
  let resumed = 0;
  for (; ; cut++) {
    const dev = new FaultInjectingDevice(source, { cutAfterWrite: cut, seed: cut * 5 + 3, sectorSize: 512 });
    let done = false;
    try {
      await encryptLuks2(dev, sourceOpts(params, key));
      done = true;
    } catch (err) {
      if (!(err instanceof PowerCutError)) throw err;
    }
    const after = new MemoryDevice(done ? new Uint8Array(dev.bytes) : dev.crashImage());
    assert.ok(!leaksPlaintext(after.bytes, plain), `cut after write ${cut}: plaintext on the device`);
    if (!done) {
      const head = await readLuks2Headers(after, after.size).catch(() => undefined);
      if (!head || decodeReencryptState(head.state.metadata) !== undefined) {
        try {
          await encryptLuks2(after, sourceOpts(params, key, { resumeOnly: true }));
          resumed++;
        } catch (err) {
          // Cut before anything was recorded: the plain volume must be exactly as it was.
          if (!(err instanceof InvalidArgumentError && /nothing to resume/.test(err.message))) throw err;
          same(after.bytes.subarray(0, P), source, `cut after write ${cut}: nothing recorded but the plain volume changed`);
          continue;
        }
      }
    }
    same(await plainOf(after), plain, `power cut after write ${cut}`);
    if (done) break;
  }
  assert.ok(cut > 30 && resumed > 20, `${cut} write boundaries, ${resumed} resumed`);
});

test('while a conversion is recorded: cryptsetup refuses the volume; a resume without the plain source, or with another plain key or cipher, is refused and writes nothing', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const P = 2 * MIB;
    const plain = new Uint8Array(randomBytes(P));
    const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 256 });
    const key = randomBytes(32);
    const path = join(dir, 'vol.img');
    writeFileSync(path, Buffer.alloc(P));
    const f = await FileDevice.open(path);
    await plainVolume(f, params, key, plain);
    await encryptLuks2(f, sourceOpts(params, key, { initOnly: true }));
    await f.close();
    const before = createHash('sha256').update(readFileSync(path)).digest('hex');
    const ro = await FileDevice.open(path, { readOnly: true });
    const { state } = await readLuks2Headers(ro, ro.size);
    await ro.close();
    assert.ok(state.metadata.config.requirements?.mandatory?.includes(ENCRYPT_SOURCE_REQUIREMENT), 'the source requirement fences the data');
    const dev = await FileDevice.open(path);
    try {
      await assert.rejects(encryptLuks2(dev, { passphrases: [Passphrase.fromString(PASS)], ...FAST, resumeOnly: true }), (e: Error) => e instanceof InvalidArgumentError && /plain dm-crypt/.test(e.message));
      await assert.rejects(encryptLuks2(dev, sourceOpts(params, randomBytes(32), { resumeOnly: true })), WrongPassphraseError);
      const other = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 256, skip: 8 });
      await assert.rejects(encryptLuks2(dev, sourceOpts(other, key, { resumeOnly: true })), InvalidArgumentError);
    } finally {
      await dev.close();
    }
    assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), before, 'nothing written');
    if (!skipCs) {
      const passFile = join(dir, 'pass');
      writeFileSync(passFile, PASS);
      const r = runStatus('cryptsetup', ['reencrypt', '--resume-only', '--batch-mode', '--disable-locks', '--force-offline-reencrypt', '--key-file', passFile, path]);
      assert.notEqual(r.status, 0, 'cryptsetup must not resume a conversion of ciphertext');
      assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), before, 'cryptsetup wrote nothing');
    }
    const dev2 = await FileDevice.open(path);
    try {
      const report = await encryptLuks2(dev2, sourceOpts(params, key, { resumeOnly: true }));
      assert.equal(report.finished, true);
      same(await plainOf(dev2), plain, 'finished after the refusals');
    } finally {
      await dev2.close();
    }
  } finally {
    cleanup();
  }
});

test('CLI: reencrypt --encrypt --src-format plain converts a plain volume (key file), refusals exit with usage errors', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const P = 2 * MIB;
    const plain = new Uint8Array(randomBytes(P));
    const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 512 });
    const key = randomBytes(64);
    const path = join(dir, 'vol.img');
    writeFileSync(path, Buffer.alloc(P));
    const f = await FileDevice.open(path);
    await plainVolume(f, params, key, plain);
    await f.close();
    const keyFile = join(dir, 'plain.key');
    writeFileSync(keyFile, key);
    const passFile = join(dir, 'pass');
    writeFileSync(passFile, PASS);
    const fast = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
    const before = readFileSync(path);
    for (const args of [
      ['--src-cipher', 'aes-xts-plain64', '--src-key-size', '512', '--src-key-file', keyFile], // no --src-format
      ['--src-format', 'qcow2'],
      ['--src-format', 'plain', '--src-key-size', '512', '--src-key-file', keyFile, '--src-offset', '8'],
      ['--src-format', 'plain', '--src-key-size', '512', '--src-key-file', keyFile, '--header', join(dir, 'h')],
    ]) {
      const r = runCli(['reencrypt', '--encrypt', path, '--key-file', passFile, ...fast, ...args]);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    }
    assert.ok(readFileSync(path).equals(before), 'refusals wrote nothing');
    const r = runCli(['reencrypt', '--encrypt', '--type', 'luks2', path, '--key-file', passFile, ...fast, '--src-format', 'plain', '--src-cipher', 'aes-xts-plain64', '--src-key-size', '512', '--src-key-file', keyFile]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /encryption finished/);
    const dev = await FileDevice.open(path, { readOnly: true });
    try {
      same(await plainOf(dev), plain, 'CLI conversion');
    } finally {
      await dev.close();
    }
  } finally {
    cleanup();
  }
});
