/**
 * In-place re-key of LUKS1 volumes (through a temporary LUKS2 header): the result is LUKS1 with
 * the same plaintext, a new volume key, the same keyslot numbers opening with the same
 * passphrases, and no marker or token left; a power cut after ANY write resumes (automatically
 * and with resumeOnly) and ends as LUKS1 with the plaintext intact; refusals write nothing;
 * cryptsetup 2.6 opens the result, sees LUKS1 and dumps the key brickcrypt reads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { isLuks1Reencryption, readLuks1Marker, reencryptLuks1, LUKS1_REENCRYPT_TOKEN } from '../../src/luks/reencrypt/luks1.js';
import type { ReencryptOptions, Resilience } from '../../src/luks/reencrypt/engine.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { detectFormat } from '../../src/images/detect.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { InvalidArgumentError, Luks1ReencryptRefusedError, WrongPassphraseError } from '../../src/errors.js';
import { reencryptVolume } from '../../src/workflows/reencrypt.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cryptsetupVolumeKeyHex, extractFixture, needFixtures, needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { equalPlain } from '../helpers/plaintext.js';
import { assertFinishedLuks1 } from '../helpers/luks1.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'luks1 pass';
const MIB = 1024 * 1024;

interface Vol {
  dev: MemoryDevice;
  plain: Uint8Array;
  oldKey: Uint8Array;
}

/** A LUKS1 volume (cryptsetup's default layout: payload at 2 MiB) with random plaintext and keyslots `slots`. */
async function luks1Volume(payload: number, options: { cipher?: string; keySizeBits?: number; slots?: number[]; dataOffset?: number } = {}): Promise<Vol> {
  const dataOffset = options.dataOffset ?? 2 * MIB;
  const dev = new MemoryDevice(dataOffset + payload);
  const slots = options.slots ?? [0];
  const { volume, key } = await LuksVolume.format(dev, {
    type: 'luks1',
    passphrase: Passphrase.fromString(passFor(slots[0]!)),
    keyslot: slots[0]!,
    dataOffset,
    ...(options.cipher ? { cipher: options.cipher } : {}),
    ...(options.keySizeBits ? { keySizeBits: options.keySizeBits } : {}),
    ...FAST,
  });
  for (const s of slots.slice(1)) await volume.addKey(key, Passphrase.fromString(passFor(s)), { ...FAST, keyslot: s });
  const plain = new Uint8Array(randomBytes(payload));
  const view = EncryptedDevice.open(dev, volume, VolumeKey.copyOf(key.expose()));
  await view.write(plain, 0);
  await view.close();
  const oldKey = new Uint8Array(key.expose());
  key.wipe();
  return { dev, plain, oldKey };
}

/** Keyslot 0 opens with PASS, keyslot n with `PASS n`. */
function passFor(slot: number): string {
  return slot === 0 ? PASS : `${PASS} ${slot}`;
}

function opts(extra: Partial<ReencryptOptions> = {}, slots = [0]): ReencryptOptions {
  return { passphrases: slots.map((s) => Passphrase.fromString(passFor(s))), ...FAST, hotzoneSize: 64 * 1024, ...extra };
}

async function open(dev: BlockDevice, pass = PASS): Promise<{ version: number; key: Uint8Array; plain: Uint8Array; keyslot: number }> {
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const { key, keyslot } = await vol.unlock(Passphrase.fromString(pass));
  const keyBytes = new Uint8Array(key.expose());
  const view = EncryptedDevice.open(dev, vol, key, { readOnly: true });
  const plain = new Uint8Array(view.size);
  await view.read(plain, 0);
  await view.close();
  return { version: vol.version, key: keyBytes, plain, keyslot: Number(keyslot) };
}


test('LUKS1 re-key: LUKS1 again, same plaintext and keyslot number, new key, old key gone', async () => {
  const { dev, plain, oldKey } = await luks1Volume(512 * 1024);
  const report = await reencryptLuks1(dev, opts());
  assert.equal(report.finished, true);
  assert.equal(report.started, true);
  assert.equal(report.bytes, 512 * 1024);
  assert.deepEqual(report.keyslots, [0]);
  assert.equal(report.sectorSize, 512);
  await assertFinishedLuks1(dev, 're-key');
  const after = await open(dev);
  assert.equal(after.version, 1);
  assert.equal(after.keyslot, 0);
  assert.notDeepEqual(after.key, oldKey);
  equalPlain(after.plain, plain, 're-key');
  assert.ok(Buffer.from(dev.bytes).indexOf(Buffer.from(oldKey)) < 0, 'the old key is not on the volume');
  // The old key no longer opens the volume's digest.
  const vol = await LuksVolume.open(dev, { readOnly: true });
  assert.equal(await vol.verifyVolumeKey(VolumeKey.copyOf(oldKey)), false);
});

for (const [from, fromBits, to, toBits] of [
  ['aes-xts-plain64', 256, 'aes-cbc-essiv:sha256', 256],
  ['aes-cbc-essiv:sha256', 256, 'aes-xts-plain64', 512],
] as const) {
  test(`LUKS1 re-key with a cipher change: ${from} ${fromBits} -> ${to} ${toBits}`, async () => {
    // A larger key needs larger keyslot areas: room for them past cryptsetup's 2 MiB default.
    const { dev, plain, oldKey } = await luks1Volume(256 * 1024, { cipher: from, keySizeBits: fromBits, ...(toBits > fromBits ? { dataOffset: 4 * MIB } : {}) });
    const report = await reencryptLuks1(dev, opts({ cipher: to, keySizeBits: toBits, resilience: 'journal' }));
    assert.equal(report.finished, true);
    assert.equal(report.encryption, to);
    await assertFinishedLuks1(dev, 'cipher change');
    const vol = await LuksVolume.open(dev, { readOnly: true });
    assert.equal(vol.version, 1);
    const after = await open(dev);
    assert.equal(after.key.length, toBits / 8);
    assert.notDeepEqual(after.key, oldKey);
    equalPlain(after.plain, plain, 'cipher change');
  });
}

test('LUKS1 re-key with three keyslots (512-bit key, 2 MiB layout: the most that fit): each keeps its number and its passphrase', async () => {
  const slots = [0, 3, 6];
  const { dev, plain, oldKey } = await luks1Volume(128 * 1024, { slots });
  const report = await reencryptLuks1(dev, opts({}, slots));
  assert.deepEqual(report.keyslots, slots);
  await assertFinishedLuks1(dev, 'three keyslots');
  let key: Uint8Array | undefined;
  for (const s of slots) {
    const after = await open(dev, passFor(s));
    assert.equal(after.keyslot, s);
    assert.notDeepEqual(after.key, oldKey);
    if (key) assert.deepEqual(after.key, key);
    key = after.key;
    equalPlain(after.plain, plain, `keyslot ${s}`);
  }
});

test('LUKS1 re-key with --key-slot keeps only that keyslot; without it a passphrase that opens only one is refused, nothing written', async () => {
  const { dev, plain } = await luks1Volume(64 * 1024, { keySizeBits: 256, slots: [0, 2] });
  const image = new Uint8Array(dev.bytes);
  await assert.rejects(reencryptLuks1(dev, opts()), InvalidArgumentError);
  assert.deepEqual(dev.bytes, image);
  const report = await reencryptLuks1(dev, opts({ keyslot: 2 }, [2]));
  assert.deepEqual(report.keyslots, [2]);
  await assertFinishedLuks1(dev, 'key-slot');
  equalPlain((await open(dev, passFor(2))).plain, plain, 'key-slot');
  await assert.rejects(open(dev, passFor(0)), WrongPassphraseError);
});

test('LUKS1 re-key refusals write nothing: wrong passphrase, no room for the LUKS2 header, too many keyslots, bad options, nothing to resume', async () => {
  const { dev } = await luks1Volume(64 * 1024);
  const image = new Uint8Array(dev.bytes);
  await assert.rejects(reencryptLuks1(dev, { ...opts(), passphrases: [Passphrase.fromString('wrong')] }), WrongPassphraseError);
  await assert.rejects(reencryptLuks1(dev, opts({ resumeOnly: true })), InvalidArgumentError);
  for (const bad of [{ sectorSize: 4096 }, { pbkdf: 'argon2id' as const }, { hash: 'sha512' }]) {
    await assert.rejects(reencryptLuks1(dev, opts(bad)), (err: unknown) => err instanceof Luks1ReencryptRefusedError && err.reason === 'options');
  }
  assert.deepEqual(dev.bytes, image);

  // Payload right after the 8 keyslot areas (QEMU's packed layout): no room for two 16 KiB LUKS2 headers.
  const packed = await luks1Volume(64 * 1024, { dataOffset: 4040 * 512 });
  const packedImage = new Uint8Array(packed.dev.bytes);
  await assert.rejects(reencryptLuks1(packed.dev, opts()), (err: unknown) => err instanceof Luks1ReencryptRefusedError && err.reason === 'no-space' && /LUKS2/.test(err.message));
  assert.deepEqual(packed.dev.bytes, packedImage);

  // 512-bit keys in the default 2 MiB layout: 4 old + 4 new keyslots fill the 8 areas, no resilience area.
  const full = await luks1Volume(64 * 1024, { slots: [0, 1, 2, 3] });
  const fullImage = new Uint8Array(full.dev.bytes);
  await assert.rejects(reencryptLuks1(full.dev, opts({}, [0, 1, 2, 3])), (err: unknown) => err instanceof Luks1ReencryptRefusedError && err.reason === 'no-space');
  assert.deepEqual(full.dev.bytes, fullImage);
  // A larger key (256 -> 512 bits) in the 2 MiB layout: the 8 larger LUKS1 areas would not fit the new keyslot's place.
  const small = await luks1Volume(64 * 1024, { keySizeBits: 256 });
  const smallImage = new Uint8Array(small.dev.bytes);
  await assert.rejects(reencryptLuks1(small.dev, opts({ keySizeBits: 512 })), (err: unknown) => err instanceof Luks1ReencryptRefusedError && err.reason === 'no-space');
  assert.deepEqual(small.dev.bytes, smallImage);
  // ... but keeping one of the four keyslots fits.
  const report = await reencryptLuks1(full.dev, opts({ keyslot: 1 }, [1]));
  assert.deepEqual(report.keyslots, [1]);
  await assertFinishedLuks1(full.dev, 'one of four');
});

test('LUKS1 re-key stopped in its LUKS2 phase (init-only) is finished by the next run and by resumeOnly; the token records it', async () => {
  const { dev, plain } = await luks1Volume(128 * 1024, { keySizeBits: 256 });
  const first = await reencryptLuks1(dev, opts({ initOnly: true, cipher: 'aes-cbc-essiv:sha256' }));
  assert.equal(first.finished, false);
  assert.equal(await detectFormat(dev), 'luks2');
  const { state } = await readLuks2Headers(dev, dev.size);
  const token = Object.values(state.metadata.tokens).find((t) => t.type === LUKS1_REENCRYPT_TOKEN);
  assert.ok(token, 'token recorded');
  assert.equal(await isLuks1Reencryption(dev), true);
  await assert.rejects(reencryptLuks1(dev, opts({ cipher: 'aes-xts-plain64' })), InvalidArgumentError);
  const report = await reencryptLuks1(dev, opts({ resumeOnly: true }));
  assert.equal(report.finished, true);
  assert.equal(report.encryption, 'aes-cbc-essiv:sha256');
  await assertFinishedLuks1(dev, 'init-only');
  equalPlain((await open(dev)).plain, plain, 'init-only');
});

/** Where a crash image stands: LUKS1 (with the `up` or `down` marker, or none) or LUKS2 (with or without the engine's state). */
async function phaseOf(dev: BlockDevice): Promise<string> {
  const format = await detectFormat(dev);
  if (format === 'luks1') return `luks1:${(await readLuks1Marker(dev))?.phase ?? 'none'}`;
  const vol = await LuksVolume.open(dev, { readOnly: true });
  return vol.payloadFence ? 'luks2:reencrypting' : 'luks2';
}

/**
 * Power cut after write `cut` of a LUKS1 re-key; then a resume (resumeOnly or a plain run) on
 * the crash image, itself cut after write `nested` when given (and then resumed again).
 */
async function crashAndResume(image: Uint8Array, cut: number, seed: number, sectorSize: number, extra: Partial<ReencryptOptions>, slots: number[], nested?: number): Promise<{ after: MemoryDevice; cutHappened: boolean; phase: string }> {
  const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed, sectorSize });
  let cutHappened = false;
  try {
    await reencryptLuks1(dev, opts(extra, slots));
  } catch (err) {
    if (!(err instanceof PowerCutError)) throw err;
    cutHappened = true;
  }
  let after = new MemoryDevice(cutHappened ? dev.crashImage() : new Uint8Array(dev.bytes));
  // Whatever the crash left opens with every passphrase (LUKS1 or LUKS2, the old or the new key).
  const vol = await LuksVolume.open(after, { readOnly: true }).catch((err) => assert.fail(`crash after write ${cut}: no valid header: ${err}`));
  for (const s of slots) await vol.testPassphrase(Passphrase.fromString(passFor(s))).catch((err) => assert.fail(`crash after write ${cut}: keyslot ${s}'s passphrase does not open it: ${err}`));
  const phase = await phaseOf(after);
  if (phase === 'luks1:up' || phase === 'luks1:down') {
    // A resume with a wrong passphrase writes nothing.
    const before = new Uint8Array(after.bytes);
    await assert.rejects(reencryptLuks1(after, { ...opts(), passphrases: [Passphrase.fromString('wrong')] }), WrongPassphraseError);
    assert.deepEqual(after.bytes, before, `cut ${cut}: a wrong passphrase changed the volume`);
  }
  const resume = cut % 2 === 0 ? { resumeOnly: true } : extra;
  if (nested !== undefined && (await isLuks1Reencryption(after))) {
    const second = new FaultInjectingDevice(after.bytes, { cutAfterWrite: nested, seed: seed + 1000, sectorSize });
    try {
      await reencryptLuks1(second, opts(resume, slots));
      after = new MemoryDevice(new Uint8Array(second.bytes));
    } catch (err) {
      if (!(err instanceof PowerCutError)) throw err;
      after = new MemoryDevice(second.crashImage());
    }
  }
  if (await isLuks1Reencryption(after)) await reencryptLuks1(after, opts(resume, slots));
  return { after, cutHappened, phase };
}

async function assertRekeyed(after: MemoryDevice, slots: number[], plain: Uint8Array, oldKey: Uint8Array, label: string): Promise<void> {
  await assertFinishedLuks1(after, label);
  for (const s of slots) {
    const got = await open(after, passFor(s));
    assert.equal(got.keyslot, s, `${label}: keyslot number`);
    assert.notDeepEqual(got.key, oldKey, `${label}: new key`);
    equalPlain(got.plain, plain, label);
  }
}

for (const [resilience, sectorSize, extra, slots] of [
  ['checksum', 4096, {}, [0, 5]],
  ['journal', 512, { cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, keyslot: 0 }, [0]],
] as Array<[Resilience, number, Partial<ReencryptOptions>, number[]]>) {
  test(`power cut after EVERY write of a LUKS1 re-key (${resilience}, keyslots ${slots.join(',')}, writes torn at ${sectorSize} bytes): resume ends as LUKS1 with the plaintext`, async () => {
    const { dev, plain, oldKey } = await luks1Volume(128 * 1024, { keySizeBits: 256, slots: [0, 5] });
    const image = new Uint8Array(dev.bytes);
    const e = { ...extra, resilience };
    const phases = new Set<string>();
    let cut = 1;
    for (; ; cut++) {
      const { after, cutHappened, phase } = await crashAndResume(image, cut, cut * 7 + 1, sectorSize, e, slots);
      await assertRekeyed(after, slots, plain, oldKey, `power cut after write ${cut}`);
      phases.add(phase);
      if (!cutHappened) break;
    }
    assert.ok(cut > 40, `only ${cut} write boundaries`);
    // The cuts left the volume in every phase of the re-key.
    for (const p of ['luks1:none', 'luks1:up', 'luks2', 'luks2:reencrypting', 'luks1:down']) assert.ok(phases.has(p), `no cut left phase ${p} (saw ${[...phases].join(', ')})`);
  });
}

test('power cuts at random writes of a LUKS1 re-key, then a second cut during the resume', async () => {
  const slots = [0, 5];
  const { dev, plain, oldKey } = await luks1Volume(256 * 1024, { keySizeBits: 256, slots });
  const image = new Uint8Array(dev.bytes);
  const probe = new FaultInjectingDevice(image);
  await reencryptLuks1(probe, opts({}, slots));
  for (let seed = 1; seed <= 8; seed++) {
    const cut = 1 + ((seed * 2654435761) % probe.writes);
    const { after } = await crashAndResume(image, cut, seed, 4096, {}, slots, 1 + ((seed * 40503) % 25));
    await assertRekeyed(after, slots, plain, oldKey, `seed ${seed} cut ${cut}`);
  }
});

test('reencryptVolume (the CLI path) re-keys a LUKS1 volume file', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { dev, plain, oldKey } = await luks1Volume(256 * 1024);
    const img = join(dir, 'v.img');
    writeFileSync(img, dev.bytes);
    const report = await reencryptVolume(img, { ...opts(), workers: 1 });
    assert.equal(report.finished, true);
    const mem = new MemoryDevice(new Uint8Array(readFileSync(img)));
    await assertFinishedLuks1(mem, 'file');
    const after = await open(mem);
    assert.notDeepEqual(after.key, oldKey);
    equalPlain(after.plain, plain, 'file');
  } finally {
    cleanup();
  }
});

// --- interop with cryptsetup 2.6 -------------------------------------------------------------

const skipCs = needTools('cryptsetup');

function cs(args: string[]): string {
  return run('cryptsetup', [...args, '--disable-locks']);
}

const csKey = (img: string, keyFile: string): string => cryptsetupVolumeKeyHex(img, keyFile);

async function onFile<T>(path: string, fn: (dev: FileDevice) => Promise<T>): Promise<T> {
  const dev = await FileDevice.open(path);
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

/** cryptsetup sees LUKS1, opens it with the passphrase and dumps the key brickcrypt reads. */
async function cryptsetupAgrees(img: string, keyFile: string, pass: string, slots: number[]): Promise<void> {
  const dump = cs(['luksDump', img]);
  assert.match(dump, /^Version:\s+1$/m);
  for (const s of slots) assert.match(dump, new RegExp(`^Key Slot ${s}: ENABLED$`, 'm'));
  cs(['open', '--test-passphrase', '--key-file', keyFile, img]);
  const mine = await onFile(img, async (dev) => Buffer.from((await open(dev, pass)).key).toString('hex'));
  assert.equal(csKey(img, keyFile), mine);
}

test('interop: a LUKS1 volume made by cryptsetup luksFormat --type luks1 is re-keyed; cryptsetup opens it as LUKS1 with the new key', { skip: skipCs }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'v.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    writeFileSync(img, '');
    run('truncate', ['-s', String(6 * MIB), img]);
    cs(['luksFormat', '--type', 'luks1', '--batch-mode', '--pbkdf-force-iterations', '1000', '--hash', 'sha1', '--key-file', keyFile, img]);
    const plain = new Uint8Array(randomBytes(4 * MIB));
    await onFile(img, async (dev) => {
      const vol = await LuksVolume.open(dev);
      const { key } = await vol.unlock(Passphrase.fromString(PASS));
      const view = EncryptedDevice.open(dev, vol, key);
      await view.write(plain, 0);
      await view.close();
    });
    const before = csKey(img, keyFile);
    const report = await onFile(img, (dev) => reencryptLuks1(dev, opts({ hotzoneSize: MIB })));
    assert.equal(report.finished, true);
    await cryptsetupAgrees(img, keyFile, PASS, [0]);
    assert.notEqual(csKey(img, keyFile), before);
    equalPlain(await onFile(img, async (dev) => (await open(dev)).plain), plain, 'cryptsetup volume');
  } finally {
    cleanup();
  }
});

test('interop: a brickcrypt LUKS1 re-key with a cipher change and two keyslots; cryptsetup agrees', { skip: skipCs }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { dev, plain } = await luks1Volume(MIB, { keySizeBits: 256, slots: [0, 4], dataOffset: 4 * MIB });
    const img = join(dir, 'v.img');
    writeFileSync(img, dev.bytes);
    await onFile(img, (d) => reencryptLuks1(d, opts({ cipher: 'aes-xts-plain64', keySizeBits: 512 }, [0, 4])));
    for (const s of [0, 4]) {
      const keyFile = join(dir, `key${s}`);
      writeFileSync(keyFile, passFor(s));
      await cryptsetupAgrees(img, keyFile, passFor(s), [0, 4]);
    }
    assert.match(cs(['luksDump', img]), /^Cipher mode:\s+xts-plain64$/m);
    equalPlain(await onFile(img, async (d) => (await open(d)).plain), plain, 'brickcrypt volume');
  } finally {
    cleanup();
  }
});

test('interop: cryptsetup opens every phase; `cryptsetup reencrypt --resume-only` finishes the LUKS2 phase as LUKS2 and brickcrypt then converts back', { skip: skipCs }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { dev, plain, oldKey } = await luks1Volume(MIB, { keySizeBits: 256 });
    const image = new Uint8Array(dev.bytes);
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    // A crash image of each phase (LUKS1 with the `up` or `down` marker, LUKS2 during the reencryption) opens with cryptsetup.
    const probe = new FaultInjectingDevice(image);
    await reencryptLuks1(probe, opts());
    const wanted = new Set(['luks1:up', 'luks2:reencrypting', 'luks1:down']);
    for (let cut = 1; cut <= probe.writes && wanted.size > 0; cut++) {
      const d = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut });
      await assert.rejects(reencryptLuks1(d, opts()), PowerCutError);
      const crash = new MemoryDevice(d.crashImage());
      const phase = await phaseOf(crash);
      if (!wanted.delete(phase)) continue;
      const img = join(dir, `${phase.replace(':', '-')}.img`);
      writeFileSync(img, crash.bytes);
      assert.match(cs(['luksDump', img]), phase.startsWith('luks1') ? /^Version:\s+1$/m : /^Version:\s+2$/m, phase);
      cs(['open', '--test-passphrase', '--key-file', keyFile, img]);
    }
    assert.equal(wanted.size, 0, `phases not reached: ${[...wanted].join(', ')}`);

    // Recorded by brickcrypt, finished by cryptsetup (stays LUKS2, the token kept), converted back by brickcrypt.
    const img = join(dir, 'v.img');
    writeFileSync(img, image);
    await onFile(img, (d) => reencryptLuks1(d, opts({ initOnly: true })));
    cs(['reencrypt', '--resume-only', '--batch-mode', '--force-offline-reencrypt', '--key-file', keyFile, img]);
    const mid = JSON.parse(cs(['luksDump', '--dump-json-metadata', img]));
    assert.ok(Object.values(mid.tokens as Record<string, { type: string }>).some((t) => t.type === LUKS1_REENCRYPT_TOKEN), 'cryptsetup kept the token');
    const report = await onFile(img, (d) => reencryptLuks1(d, opts()));
    assert.equal(report.finished, true);
    assert.equal(report.bytes, 0, 'the data was re-encrypted by cryptsetup already');
    await cryptsetupAgrees(img, keyFile, PASS, [0]);
    const mem = new MemoryDevice(new Uint8Array(readFileSync(img)));
    await assertFinishedLuks1(mem, 'after cryptsetup');
    const after = await open(mem);
    assert.notDeepEqual(after.key, oldKey);
    equalPlain(after.plain, plain, 'after cryptsetup');
  } finally {
    cleanup();
  }
});

test('CLI: `brickcrypt reencrypt` on a LUKS1 volume file re-keys it in place', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { dev, plain, oldKey } = await luks1Volume(256 * 1024);
    const img = join(dir, 'v.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    writeFileSync(img, dev.bytes);
    let r = runCli(['reencrypt', img, '--key-file', keyFile, '--sector-size', '4096', '--pbkdf-force-iterations', '1000']);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /512-byte sectors/);
    r = runCli(['reencrypt', img, '--key-file', keyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--workers', '1']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /reencryption finished/);
    const mem = new MemoryDevice(new Uint8Array(readFileSync(img)));
    await assertFinishedLuks1(mem, 'cli');
    const after = await open(mem);
    assert.notDeepEqual(after.key, oldKey);
    equalPlain(after.plain, plain, 'cli');
  } finally {
    cleanup();
  }
});

test('fixture: cryptsetup\'s compatimage (payload right after the keyslots) is refused with no-space, unchanged', { skip: needFixtures() }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = extractFixture('compatimage.img.xz', dir);
    const before = readFileSync(img);
    await assert.rejects(
      onFile(img, (dev) => reencryptLuks1(dev, { passphrases: [Passphrase.fromString('compatkey')], ...FAST })),
      (err: unknown) => err instanceof Luks1ReencryptRefusedError && err.reason === 'no-space',
    );
    assert.deepEqual(readFileSync(img), before);
  } finally {
    cleanup();
  }
});

test('fixture: cryptsetup\'s luks1-images (aes, sha1 and sha256) are re-keyed; same plaintext, cryptsetup agrees when present', { skip: needFixtures() }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    extractFixture('luks1-images.tar.xz', dir);
    const base = join(dir, 'luks1-images');
    const keyFile = join(base, 'keyfile1');
    const pass = new Uint8Array(readFileSync(keyFile));
    for (const f of ['luks1_aes-cbc-essiv-sha256-sha1.img', 'luks1_aes-xts-plain64-sha1.img', 'luks1_aes-xts-plain64-sha256.img']) {
      const img = join(base, f);
      const read = () =>
        onFile(img, async (dev) => {
          const vol = await LuksVolume.open(dev, { readOnly: true });
          const { key } = await vol.unlock(Passphrase.copyOf(pass));
          const k = Buffer.from(key.expose()).toString('hex');
          const view = EncryptedDevice.open(dev, vol, key, { readOnly: true });
          const plain = new Uint8Array(view.size);
          await view.read(plain, 0);
          await view.close();
          return { key: k, plain, version: vol.version };
        });
      const before = await read();
      const report = await onFile(img, (dev) => reencryptLuks1(dev, { passphrases: [Passphrase.copyOf(pass)], ...FAST, hotzoneSize: MIB }));
      assert.equal(report.finished, true, f);
      const after = await read();
      assert.equal(after.version, 1, f);
      assert.notEqual(after.key, before.key, f);
      equalPlain(after.plain, before.plain, f);
      await assertFinishedLuks1(new MemoryDevice(new Uint8Array(readFileSync(img))), f);
      if (!skipCs) {
        cs(['open', '--test-passphrase', '--key-file', keyFile, img]);
        assert.equal(csKey(img, keyFile), after.key, f);
      }
    }
  } finally {
    cleanup();
  }
});
