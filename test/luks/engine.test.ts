/**
 * Engine behaviour on in-memory devices: typed refusals, keyslot bookkeeping, KDF choices,
 * and preservation of tokens and unknown JSON fields across rewrites (cryptsetup-checked).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume, chooseKdf, plannedDataOffset, type FormatOptions } from '../../src/luks/index.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import {
  InvalidArgumentError,
  KeyslotNotFoundError,
  KeyslotUnavailableError,
  ReadOnlyDeviceError,
  UnsupportedCipherError,
  WeakKeyError,
  WrongPassphraseError,
} from '../../src/errors.js';
import { LUKS2_OFFSETS, computeLuks2Checksum } from '../../src/formats/luks2/binary-header.js';
import { parseLuks2Json, serializeLuks2Json } from '../../src/formats/luks2/metadata.js';
import { needTools, run, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const P = (s: string) => Passphrase.fromString(s);
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };

async function fresh(type: 'luks1' | 'luks2', extra: Partial<FormatOptions> = {}, size = 3 * MIB) {
  const dev = new MemoryDevice(size);
  const r = await LuksVolume.format(dev, { type, passphrase: P('one'), ...FAST, ...(type === 'luks2' ? { dataOffset: MIB } : {}), ...extra } as FormatOptions);
  return { dev, ...r };
}

test('format refuses XTS keys with equal halves, unsupported ciphers (naming them) and bad key sizes', async () => {
  const half = new Uint8Array(32).fill(7);
  const weak = new VolumeKey(new Uint8Array([...half, ...half]));
  await assert.rejects(LuksVolume.format(new MemoryDevice(3 * MIB), { type: 'luks1', passphrase: P('x'), volumeKey: weak, ...FAST }), WeakKeyError);
  for (const cipher of ['serpent-xts-plain64', 'twofish-cbc-plain', 'aes-lrw-benbi']) {
    await assert.rejects(LuksVolume.format(new MemoryDevice(3 * MIB), { type: 'luks2', passphrase: P('x'), cipher, ...FAST }), (e: unknown) => {
      assert.ok(e instanceof UnsupportedCipherError);
      assert.ok(e.message.includes(cipher.split('-')[0]!));
      return true;
    });
  }
  await assert.rejects(LuksVolume.format(new MemoryDevice(3 * MIB), { type: 'luks1', passphrase: P('x'), keySizeBits: 384, ...FAST }), UnsupportedCipherError);
  await assert.rejects(LuksVolume.format(new MemoryDevice(3 * MIB), { type: 'luks1', passphrase: P('x'), sectorSize: 4096, ...FAST }), InvalidArgumentError);
  await assert.rejects(LuksVolume.format(new MemoryDevice(3 * MIB), { type: 'luks1', passphrase: P('x'), pbkdf: 'pbkdf2', iterations: 999 }), InvalidArgumentError);
  await assert.rejects(LuksVolume.format(new MemoryDevice(1 * MIB), { type: 'luks1', passphrase: P('x'), ...FAST }), /too small/);
});

test('a given volume key is used as is; layout helpers agree with format', async () => {
  const key = VolumeKey.random(32);
  for (const type of ['luks1', 'luks2'] as const) {
    const { volume, key: out, dev } = await fresh(type, { volumeKey: key, cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256 }, 18 * MIB);
    assert.ok(out.equals(key));
    assert.equal(volume.keyBytes, 32);
    assert.equal(volume.dataOffset, plannedDataOffset({ type, cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, ...(type === 'luks2' ? { dataOffset: MIB } : {}) }));
    const reopened = await LuksVolume.open(dev);
    const r = await reopened.unlock(P('one'));
    assert.ok(r.key.equals(key));
  }
  assert.equal(plannedDataOffset({ type: 'luks1' }), 4096 * 512);
  assert.equal(plannedDataOffset({ type: 'luks2' }), 16 * MIB);
});

test('keyslot bookkeeping: all slots full, busy slot, missing slot, wrong passphrase, read-only device', async () => {
  const { dev } = await fresh('luks1');
  const vol = await LuksVolume.open(dev);
  for (let i = 1; i < 8; i++) assert.equal(await vol.addKey(P('one'), P(`k${i}`), FAST), i);
  await assert.rejects(vol.addKey(P('one'), P('k9'), FAST), KeyslotUnavailableError);
  // With every slot used, changeKey overwrites the slot in place (as cryptsetup).
  assert.equal(await vol.changeKey(P('k3'), P('k3b'), FAST), 3);
  assert.equal(await vol.testPassphrase(P('k3b')), 3);
  await assert.rejects(vol.testPassphrase(P('k3')), WrongPassphraseError);
  await vol.killSlot(5);
  await assert.rejects(vol.killSlot(5), KeyslotNotFoundError);
  await assert.rejects(vol.addKey(P('one'), P('x'), { ...FAST, keyslot: 2 }), KeyslotUnavailableError);
  await assert.rejects(vol.addKey(P('nope'), P('x'), FAST), WrongPassphraseError);
  assert.equal(await vol.addKey(P('one'), P('x'), FAST), 5);
  const ro = await LuksVolume.open(new MemoryDevice(dev.bytes, true));
  await assert.rejects(ro.addKey(P('one'), P('y'), FAST), ReadOnlyDeviceError);
  assert.doesNotMatch(vol.dump() + JSON.stringify(vol.dumpJson()), new RegExp(Buffer.from((await vol.unlock(P('one'))).key.expose()).toString('hex').slice(0, 16)));
});

test('LUKS2: unbound keys are reported and never authorise; keyslot areas are reused after kill', async () => {
  const { dev } = await fresh('luks2');
  const vol = await LuksVolume.open(dev);
  const meta = (vol.dumpJson().metadata as any);
  assert.equal(meta.keyslots['0'].area.offset, '32768');
  assert.equal(await vol.addKey(P('one'), P('two'), FAST), 1);
  assert.equal((vol.dumpJson().metadata as any).keyslots['1'].area.offset, String(32768 + 258048));
  await vol.killSlot(0);
  assert.equal(await vol.addKey(P('two'), P('three'), FAST), 0);
  assert.equal((vol.dumpJson().metadata as any).keyslots['0'].area.offset, '32768', 'first free gap');
  assert.deepEqual(vol.unboundKeyslots(), []);
  await assert.rejects(vol.unlock(P('one')), WrongPassphraseError);
});

test('KDF choice: forced values, minimums, and benchmarking to a target time', async () => {
  assert.deepEqual(await chooseKdf({ pbkdf: 'pbkdf2', iterations: 5000, hash: 'sha512' }, 2, 64), { type: 'pbkdf2', hash: 'sha512', iterations: 5000 });
  assert.deepEqual(await chooseKdf({ pbkdf: 'argon2id', iterations: 5, memoryKiB: 1024, parallel: 2 }, 2, 64), { type: 'argon2id', time: 5, memoryKiB: 1024, parallel: 2 });
  await assert.rejects(chooseKdf({ pbkdf: 'argon2i', iterations: 3, memoryKiB: 1024 }, 2, 64), InvalidArgumentError);
  await assert.rejects(chooseKdf({ pbkdf: 'argon2id' }, 1, 64), InvalidArgumentError);
  const p = await chooseKdf({ pbkdf: 'pbkdf2', iterTimeMs: 60 }, 1, 32);
  assert.equal(p.type, 'pbkdf2');
  assert.ok(p.type === 'pbkdf2' && p.iterations >= 1000);
  const q = await chooseKdf({ pbkdf: 'pbkdf2', iterTimeMs: 240 }, 1, 32);
  assert.ok(q.type === 'pbkdf2' && q.iterations > p.iterations, 'a longer target gives more iterations');
});

test('tokens and unknown JSON fields survive keyslot changes (checked with cryptsetup)', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'v.img');
    writeFileSync(img, '');
    const fd = await FileDevice.open(img, { size: 2 * MIB });
    try {
      (await LuksVolume.format(fd, { type: 'luks2', passphrase: P('one'), ...FAST, dataOffset: MIB })).key.wipe();
      // Add a token and unknown fields in every section, as a newer tool might.
      for (const off of [0, 16384]) {
        const area = new Uint8Array(16384);
        await fd.read(area, off);
        const parsed = parseLuks2Json(area.subarray(4096));
        const m = parsed.metadata as any;
        m.tokens['0'] = { type: 'brickcrypt-test', keyslots: ['0'], opaque: { nested: [1, 'two'] } };
        m.config.x_future = 'keep me';
        m.segments['0'].x_hint = 7;
        m.digests['0'].x_note = 'n';
        area.set(serializeLuks2Json(m, 12288), 4096);
        area.fill(0, LUKS2_OFFSETS.checksum, LUKS2_OFFSETS.checksum + 64);
        area.set(computeLuks2Checksum(area), LUKS2_OFFSETS.checksum);
        await fd.write(area, off);
      }
      const vol = await LuksVolume.open(fd);
      await vol.addKey(P('one'), P('two'), FAST);
      await vol.changeKey(P('one'), P('uno'), FAST);
    } finally {
      await fd.close();
    }
    const json = JSON.parse(run('cryptsetup', ['luksDump', '--dump-json-metadata', img]));
    assert.deepEqual(json.tokens['0'], { type: 'brickcrypt-test', keyslots: ['0'], opaque: { nested: [1, 'two'] } });
    assert.equal(json.config.x_future, 'keep me');
    assert.equal(json.segments['0'].x_hint, 7);
    assert.equal(json.digests['0'].x_note, 'n');
    assert.deepEqual(json.digests['0'].keyslots.sort(), ['0', '1']);
    assert.match(run('cryptsetup', ['luksDump', img]), /Epoch:\s+3/);
  } finally {
    cleanup();
  }
});
