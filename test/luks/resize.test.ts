/**
 * resize: exact payload accounting, new space reading as zeros, LUKS2 segment sizes (fixed
 * stays fixed, dynamic stays dynamic), typed refusals with nothing modified, crash safety at
 * every write, and cryptsetup's view of the result.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume, type FormatOptions } from '../../src/luks/index.js';
import { planResize, resizeLuks } from '../../src/luks/resize.js';
import { readLuks2Headers, writeLuks2Headers } from '../../src/luks/luks2-io.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { InsufficientSpaceError, InvalidArgumentError, ShrinkRefusedError, WrongPassphraseError } from '../../src/errors.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const KIB = 1024;
const MIB = 1024 * KIB;
const PASS = 'resize me';
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };

type Kind = 'luks1' | 'dynamic' | 'fixed';

/** A small volume of `payload` bytes, its payload filled with a pattern; returns the image and key. */
async function makeVolume(kind: Kind, payload: number): Promise<{ image: Uint8Array; key: VolumeKey; dataOffset: number }> {
  const type = kind === 'luks1' ? 'luks1' : 'luks2';
  const opts = { type, passphrase: Passphrase.fromString(PASS), keySizeBits: 256, ...FAST, ...(type === 'luks2' ? { dataOffset: 512 * KIB, keyslotsSize: 256 * KIB } : {}) } as FormatOptions;
  const probe = new MemoryDevice(4 * MIB);
  const { volume } = await LuksVolume.format(probe, opts);
  const dataOffset = volume.dataOffset;
  const dev = new MemoryDevice(dataOffset + payload);
  const { volume: vol, key } = await LuksVolume.format(dev, opts);
  if (kind === 'fixed') {
    const { state } = await readLuks2Headers(dev);
    state.metadata.segments['0']!.size = String(payload);
    await writeLuks2Headers(dev, state);
  }
  const plain = EncryptedDevice.open(dev, vol, VolumeKey.copyOf(key.expose()));
  await plain.write(pattern(payload), 0);
  await plain.close();
  return { image: dev.bytes, key, dataOffset };
}

function pattern(n: number, seed = 7): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed + (i >> 9)) & 0xff;
  return out;
}

/** Opens `dev` with the passphrase: its payload size, segment size string and plaintext. */
async function inspect(dev: BlockDevice): Promise<{ payload: number; segment: string; plain: Uint8Array }> {
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const view = EncryptedDevice.open(dev, vol, key, { readOnly: true });
  const plain = new Uint8Array(view.size);
  await view.read(plain, 0);
  await view.close();
  const json = vol.dumpJson() as { metadata?: { segments: Record<string, { size: string }> } };
  return { payload: vol.payloadSize, segment: json.metadata ? json.metadata.segments['0']!.size : 'luks1', plain };
}

for (const kind of ['luks1', 'dynamic', 'fixed'] as const) {
  test(`grow ${kind}: the size asked for is the usable size, old data stays, new space reads as zeros`, async () => {
    const old = 256 * KIB;
    const { image, key, dataOffset } = await makeVolume(kind, old);
    const dev = new MemoryDevice(image);
    const plan = await resizeLuks(dev, { payloadSize: old + 192 * KIB, key });
    assert.equal(plan.oldPayloadSize, old);
    assert.equal(plan.newPayloadSize, old + 192 * KIB);
    assert.equal(dev.size, dataOffset + old + 192 * KIB, 'the device grows by exactly the payload difference');
    const after = await inspect(dev);
    assert.equal(after.payload, old + 192 * KIB);
    assert.equal(after.segment, kind === 'luks1' ? 'luks1' : kind === 'dynamic' ? 'dynamic' : String(old + 192 * KIB));
    assert.deepEqual(after.plain.subarray(0, old), pattern(old));
    assert.ok(after.plain.subarray(old).every((b) => b === 0), 'new space decrypts to zeros');
    // What lies on disk is ciphertext, not zeros (a sparse extension would decrypt to noise).
    assert.ok(dev.bytes.subarray(dataOffset + old).some((b) => b !== 0));
    key.wipe();
  });

  test(`shrink ${kind}: refused without allowTruncate (nothing modified), done with it`, async () => {
    const old = 256 * KIB;
    const { image, key, dataOffset } = await makeVolume(kind, old);
    const dev = new MemoryDevice(new Uint8Array(image));
    await assert.rejects(resizeLuks(dev, { payloadSize: 128 * KIB, key }), ShrinkRefusedError);
    assert.deepEqual(dev.bytes, image, 'a refusal writes nothing');
    await resizeLuks(dev, { payloadSize: 128 * KIB, allowTruncate: true });
    assert.equal(dev.size, dataOffset + 128 * KIB);
    const after = await inspect(dev);
    assert.equal(after.payload, 128 * KIB);
    assert.equal(after.segment, kind === 'luks1' ? 'luks1' : kind === 'dynamic' ? 'dynamic' : String(128 * KIB));
    assert.deepEqual(after.plain, pattern(old).subarray(0, 128 * KIB));
    key.wipe();
  });
}

test('resize refusals are typed and modify nothing', async () => {
  const { image, key } = await makeVolume('dynamic', 256 * KIB);
  const dev = new MemoryDevice(new Uint8Array(image));
  await assert.rejects(resizeLuks(dev, { payloadSize: 300 * KIB + 1, key }), InvalidArgumentError);
  await assert.rejects(resizeLuks(dev, { payloadSize: 512 * KIB }), /needs its key/);
  await assert.rejects(resizeLuks(dev, { payloadSize: 512 * KIB, key: VolumeKey.random(key.length) }), WrongPassphraseError);
  assert.deepEqual(dev.bytes, image);
  // A device that cannot grow (a block device) refuses a size it cannot hold.
  const fixedSize = new MemoryDevice(new Uint8Array(image));
  Object.defineProperty(fixedSize, 'capabilities', { value: { ...fixedSize.capabilities, resize: false } });
  const vol = await LuksVolume.open(fixedSize);
  assert.throws(() => planResize(vol, 4 * MIB), InsufficientSpaceError);
  assert.throws(() => planResize(vol, 128 * KIB, { allowTruncate: true }), /always spans the device/);
  key.wipe();
});

test('a fixed LUKS2 segment on a bigger device that cannot resize grows into it', async () => {
  const { image, key, dataOffset } = await makeVolume('fixed', 256 * KIB);
  const bigger = new Uint8Array(image.length + 256 * KIB);
  bigger.set(image);
  bigger.fill(0xaa, image.length); // a grown block device holds whatever was there
  const dev = new MemoryDevice(bigger);
  Object.defineProperty(dev, 'capabilities', { value: { ...dev.capabilities, resize: false } });
  assert.equal((await inspect(dev)).payload, 256 * KIB);
  await resizeLuks(dev, { payloadSize: 512 * KIB, key });
  assert.equal(dev.size, dataOffset + 512 * KIB);
  const after = await inspect(dev);
  assert.equal(after.segment, String(512 * KIB));
  assert.ok(after.plain.subarray(256 * KIB).every((b) => b === 0));
  key.wipe();
});

/**
 * Cuts the power after every write of a resize (two torn-write seeds each) and checks that the
 * volume opens with its passphrase at the old or the new size with its data intact; LUKS2 new
 * space is zeros whenever the new size is visible.
 */
for (const [kind, grow] of [
  ['luks1', true],
  ['dynamic', true],
  ['fixed', true],
  ['dynamic', false],
  ['fixed', false],
  ['luks1', false],
] as const) {
  test(`crash safety: ${grow ? 'grow' : 'shrink'} ${kind}, power cut at every write`, async () => {
    const old = 128 * KIB;
    const target = grow ? old + 64 * KIB : 64 * KIB;
    const { image, key } = await makeVolume(kind, old);
    const clean = new FaultInjectingDevice(image);
    await resizeLuks(clean, { payloadSize: target, key, allowTruncate: true });
    if (kind === 'luks1' && !grow) {
      // LUKS1 keeps no size: shrinking is one truncate of the device, nothing is written.
      assert.equal(clean.writes, 0);
      assert.equal((await inspect(new MemoryDevice(clean.crashImage()))).payload, target);
      return;
    }
    assert.ok(clean.writes > 0);
    let sawNew = 0;
    let sawOld = 0;
    for (let cut = 1; cut <= clean.writes; cut++) {
      for (const seed of [1, 2]) {
        const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed });
        await assert.rejects(resizeLuks(dev, { payloadSize: target, key, allowTruncate: true }), PowerCutError);
        const after = await inspect(new MemoryDevice(dev.crashImage()));
        assert.ok(after.payload === old || after.payload === target, `cut ${cut}/${seed}: payload ${after.payload}`);
        const kept = Math.min(old, after.payload);
        assert.deepEqual(after.plain.subarray(0, kept), pattern(old).subarray(0, kept), `cut ${cut}/${seed}: data intact`);
        if (after.payload === target) sawNew++;
        else sawOld++;
        if (grow && kind !== 'luks1' && after.payload === target) {
          assert.ok(after.plain.subarray(old).every((b) => b === 0), `cut ${cut}/${seed}: new LUKS2 space is zeros`);
        }
        if (kind === 'dynamic') assert.ok(after.segment === 'dynamic' || after.segment === String(after.payload), `cut ${cut}/${seed}: segment ${after.segment}`);
      }
    }
    assert.ok(sawOld > 0, 'some cuts leave the old size');
    if (kind !== 'luks1' || !grow) assert.ok(sawNew > 0 || clean.writes === 1, 'some cuts leave the new size');
    key.wipe();
  });
}

test('growing with the worker pool writes the same zeros', async () => {
  const { image, key } = await makeVolume('dynamic', 256 * KIB);
  const dev = new MemoryDevice(new Uint8Array(image));
  const pool = CryptoPool.create(2);
  try {
    const vol = await LuksVolume.open(dev);
    const offload = pool.sectorCrypto({ encryption: vol.encryption, keyBytes: vol.keyBytes, sectorSize: vol.sectorSize }, key.expose());
    await resizeLuks(dev, { payloadSize: 256 * KIB + 9 * MIB, key, cryptoOffload: offload });
    await offload.close();
  } finally {
    await pool.close();
  }
  const after = await inspect(dev);
  assert.equal(after.payload, 256 * KIB + 9 * MIB);
  assert.ok(after.plain.subarray(256 * KIB).every((b) => b === 0));
  assert.deepEqual(after.plain.subarray(0, 256 * KIB), pattern(256 * KIB));
  key.wipe();
});

const skip = needTools('cryptsetup');

test('CLI resize: --size is usable bytes, --device-size the whole file; cryptsetup agrees (luksDump, passphrase)', { skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'vol.img');
    const pass = join(t.dir, 'pass');
    writeFileSync(pass, PASS);
    for (const type of ['luks1', 'luks2'] as const) {
      let r = runCli(['format', img, '--type', type, '--size', '4M', '--key-file', pass, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--force']);
      assert.equal(r.status, 0, r.stderr);
      const offset = type === 'luks1' ? 2 * MIB : 16 * MIB;
      assert.equal(statSync(img).size, offset + 4 * MIB);
      r = runCli(['resize', img, '--size', '6M', '--key-file', pass]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /4194304 -> 6291456 usable bytes/);
      assert.equal(statSync(img).size, offset + 6 * MIB, 'the header is on top of the usable size');
      r = runCli(['resize', img, '--device-size', String(offset + 8 * MIB), '--key-file', pass]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(statSync(img).size, offset + 8 * MIB);
      const before = readFileSync(img);
      r = runCli(['resize', img, '--size', '1M']);
      assert.equal(r.status, 1, 'shrinking without --allow-truncate is refused with exit 1');
      assert.match(r.stderr, /allow-truncate/);
      assert.ok(before.equals(readFileSync(img)), 'nothing modified');
      const dump = run('cryptsetup', ['luksDump', img]);
      if (type === 'luks2') assert.match(dump, /length: \(whole device\)/, 'a dynamic segment stays dynamic');
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', pass, img]).status, 0);
      // The new space reads as zeros through our view; cryptsetup's volume key opens the same data.
      const dev = await FileDevice.open(img, { readOnly: true });
      try {
        const after = await inspect(dev);
        assert.equal(after.payload, 8 * MIB);
        assert.ok(after.plain.subarray(4 * MIB).every((b) => b === 0));
      } finally {
        await dev.close();
      }
      r = runCli(['resize', img, '--size', '2M', '--allow-truncate']);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(statSync(img).size, offset + 2 * MIB);
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', pass, img]).status, 0);
    }
  } finally {
    t.cleanup();
  }
});

test('cryptsetup luksDump shows the new length of a fixed LUKS2 segment', { skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'fixed.img');
    const { image, key } = await makeVolume('fixed', 256 * KIB);
    writeFileSync(img, image);
    const dev = await FileDevice.open(img);
    try {
      await resizeLuks(dev, { payloadSize: 768 * KIB, key });
    } finally {
      await dev.close();
    }
    const dump = run('cryptsetup', ['luksDump', img]);
    assert.match(dump, new RegExp(`length: ${768 * KIB} \\[bytes\\]`));
    const keyFile = join(t.dir, 'pass');
    writeFileSync(keyFile, PASS);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', keyFile, img]).status, 0);
    key.wipe();
  } finally {
    t.cleanup();
  }
});

test('CLI resize of a volume with a detached header: the data file is the payload', { skip }, async () => {
  const t = tempDir();
  try {
    const data = join(t.dir, 'data.img');
    const hdr = join(t.dir, 'vol.hdr');
    const pass = join(t.dir, 'pass');
    writeFileSync(pass, PASS);
    let r = runCli(['format', data, '--type', 'luks2', '--size', '2M', '--header', hdr, '--key-file', pass, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(data).size, 2 * MIB);
    r = runCli(['resize', data, '--header', hdr, '--size', '3M', '--key-file', pass]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(data).size, 3 * MIB);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--header', hdr, '--key-file', pass, data]).status, 0);
    const d = await FileDevice.open(data, { readOnly: true });
    const h = await FileDevice.open(hdr, { readOnly: true });
    try {
      const vol = await LuksVolume.open(d, { headerDevice: h, readOnly: true });
      const { key } = await vol.unlock(Passphrase.fromString(PASS));
      const view = EncryptedDevice.open(d, vol, key, { readOnly: true });
      const tail = new Uint8Array(MIB);
      await view.read(tail, 2 * MIB);
      await view.close();
      assert.equal(vol.payloadSize, 3 * MIB);
      assert.ok(tail.every((b) => b === 0));
    } finally {
      await h.close();
      await d.close();
    }
  } finally {
    t.cleanup();
  }
});

test('resize --help has examples', () => {
  const r = runCli(['resize', '--help']);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /Examples:\n\s+brickcrypt resize vol\.img --size 20G/);
});
