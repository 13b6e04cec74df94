/**
 * In-place encryption of plain data into LUKS1 (through a LUKS2 encryption whose layout converts
 * to LUKS1 without moving data): the result is LUKS1 (payload at LUKS1's default offset,
 * 512-byte sectors, pbkdf2) holding exactly the plaintext, a grown file keeps its usable size,
 * a power cut after ANY write (start, zones, finish, conversion, keyslot moves) is finished by a
 * resume — with the LUKS1 target or without saying it — that ends as LUKS1 with the plaintext;
 * refusals write nothing; cryptsetup 2.6 opens the result as LUKS1 and its dumped volume key
 * decrypts the data to the plaintext.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { encryptLuks1, encryptLuks, luks1EncryptionRecorded, ENCRYPT_LUKS1_TOKEN } from '../../src/luks/reencrypt/encrypt-luks1.js';
import type { EncryptOptions } from '../../src/luks/reencrypt/encrypt.js';
import { readLuks1Marker } from '../../src/luks/reencrypt/luks1.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { LUKS1_HEADER_SIZE, decodeLuks1Header } from '../../src/formats/luks1/header.js';
import { detectFormat } from '../../src/images/detect.js';
import { Passphrase } from '../../src/secret.js';
import { EXIT_CODES, InsufficientSpaceError, InvalidArgumentError, NotImplementedError, WrongPassphraseError } from '../../src/errors.js';
import { encryptVolume } from '../../src/workflows/encrypt.js';
import { reencryptVolume } from '../../src/workflows/reencrypt.js';
import { stopAtEveryOtherZone } from '../helpers/zone-stops.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cliPath, cryptsetupVolumeKeyHex, needRoot, needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { CS_OFFLINE } from '../helpers/reencrypt-states.js';
import { brickcryptVolumeKeyHex, contains, equalPlain, luksPlaintext } from '../helpers/plaintext.js';
import { assertFinishedLuks1 } from '../helpers/luks1.js';
import { spawn } from 'node:child_process';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'luks1 encrypt';
const KIB = 1024;
const MIB = 1024 * KIB;

function opts(extra: Partial<EncryptOptions> = {}): EncryptOptions {
  return { passphrases: [Passphrase.fromString(PASS)], ...FAST, hotzoneSize: 256 * KIB, ...extra };
}

/** LUKS1 as expected: payload at `offset`, 512-byte sectors, keyslot(s), no marker. */
async function assertLuks1(dev: MemoryDevice, offset: number, label: string): Promise<void> {
  await assertFinishedLuks1(dev, label);
  const hdr = decodeLuks1Header(dev.bytes.subarray(0, LUKS1_HEADER_SIZE));
  assert.equal(hdr.payloadOffset * 512, offset, `${label}: payload offset`);
  assert.equal(hdr.hashSpec, 'sha256');
  const vol = await LuksVolume.open(dev, { readOnly: true });
  assert.equal(vol.version, 1);
  assert.equal(vol.sectorSize, 512);
}

/** Where a crash left the volume. */
async function phaseOf(header: BlockDevice, dataSize?: number): Promise<string> {
  const format = await detectFormat(header);
  if (format === 'luks1') {
    const m = await readLuks1Marker(header);
    return m ? `luks1:${m.phase}` : 'luks1';
  }
  if (format !== 'luks2') return 'plain';
  const { state } = await readLuks2Headers(header, dataSize);
  return decodeReencryptState(state.metadata) ? 'luks2:encrypting' : 'luks2:converting';
}

test('encrypt a growable device to LUKS1: same plaintext, usable size unchanged, LUKS1 layout, nothing of LUKS2 or the plaintext left', async () => {
  const P = 1536 * KIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const r = await encryptLuks1(dev, opts());
  assert.equal(r.type, 'luks1');
  assert.equal(r.finished, true);
  assert.equal(r.started, true);
  assert.equal(r.bytes, P);
  assert.equal(r.total, P);
  assert.equal(r.dataOffset, 2 * MIB);
  assert.equal(r.grownBytes, 4 * MIB);
  assert.equal(r.volumeSize, P);
  assert.equal(r.sectorSize, 512);
  assert.deepEqual(r.keyslots, [0]);
  assert.equal(r.encryption, 'aes-xts-plain64');
  assert.equal(dev.size, P + 2 * MIB);
  await assertLuks1(dev, 2 * MIB, 'grown');
  equalPlain(await luksPlaintext(dev, PASS), plain, 'grown');
  for (let off = 0; off < P; off += 256 * KIB) assert.ok(!contains(dev.bytes, plain.subarray(off, off + 4096)), `plaintext at ${off} still on disk`);
});

test('LUKS1 with a 256-bit aes-cbc-essiv key in keyslot 3, and --reduce-device-size: the device keeps its size, the kept data survives', async () => {
  const N = 6 * MIB;
  const plain = new Uint8Array(randomBytes(N));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const r = await encryptLuks1(dev, opts({ reduceDeviceSize: 4 * MIB, cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, keyslot: 3 }));
  assert.equal(r.finished, true);
  assert.equal(r.lostBytes, 4 * MIB);
  assert.deepEqual(r.keyslots, [3]);
  assert.equal(dev.size, N);
  await assertLuks1(dev, 2 * MIB, 'reduced');
  const vol = await LuksVolume.open(dev, { readOnly: true });
  assert.equal(vol.encryption, 'aes-cbc-essiv:sha256');
  assert.equal(await vol.testPassphrase(Passphrase.fromString(PASS)), 3);
  const got = await luksPlaintext(dev, PASS);
  assert.equal(got.length, N - 2 * MIB);
  equalPlain(got.subarray(0, N - 4 * MIB), plain.subarray(0, N - 4 * MIB), 'kept part');
});

test('a 128-bit key gets LUKS1\'s 1 MiB payload offset; a start cut while the head is written is found by a resume that names neither type nor size', async () => {
  const P = 2 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const extra = { cipher: 'aes-cbc-essiv:sha256', keySizeBits: 128 };
  const probe = new FaultInjectingDevice(plain);
  await encryptLuks1(probe, opts({ ...extra, initOnly: true }));
  const initWrites = probe.writes;
  for (let back = 0; back < 3; back++) {
    const dev = new FaultInjectingDevice(plain, { cutAfterWrite: initWrites - back, seed: back + 3, sectorSize: 512 });
    await assert.rejects(encryptLuks1(dev, opts(extra)), PowerCutError);
    const after = new MemoryDevice(dev.crashImage());
    const r = await encryptLuks(after, { ...opts(), resumeOnly: true });
    assert.equal(r.finished, true);
    assert.equal(r.type, 'luks1');
    await assertLuks1(after, 1 * MIB, `cut ${back} writes before the end of the start`);
    assert.equal(after.size, P + 1 * MIB);
    equalPlain(await luksPlaintext(after, PASS), plain, `cut ${back} writes before the end of the start`);
  }
});

test('refusals write nothing: LUKS1-impossible options, too small a --reduce-device-size, a device that cannot grow, LUKS volumes already, nothing to resume', async () => {
  const plain = new Uint8Array(randomBytes(4 * MIB));
  const dev = new MemoryDevice(new Uint8Array(plain));
  await assert.rejects(encryptLuks1(dev, opts({ pbkdf: 'argon2id' })), InvalidArgumentError);
  await assert.rejects(encryptLuks1(dev, opts({ sectorSize: 4096 })), InvalidArgumentError);
  await assert.rejects(encryptLuks1(dev, opts({ hash: 'sha1' })), InvalidArgumentError);
  await assert.rejects(encryptLuks1(dev, opts({ keyslot: 8 })), InvalidArgumentError);
  // 8 keyslot areas of a 512-bit key need a 2 MiB header: 2 MiB given up holds only 1 MiB of it.
  await assert.rejects(encryptLuks1(dev, opts({ reduceDeviceSize: 2 * MIB })), (err: unknown) => err instanceof InsufficientSpaceError && /reduce-device-size of at least 4194304/.test(err.message));
  await assert.rejects(encryptLuks1(dev, opts({ resumeOnly: true })), (err: unknown) => err instanceof InvalidArgumentError && /nothing to resume/.test(err.message));
  await assert.rejects(encryptLuks1(dev, opts({ source: { token: { type: 'x', keyslots: [] }, check: () => undefined } })), NotImplementedError);
  const fixed = new SliceDevice(dev, 0, dev.size);
  await assert.rejects(encryptLuks1(fixed, opts()), (err: unknown) => err instanceof InsufficientSpaceError && /--reduce-device-size/.test(err.message));
  equalPlain(dev.bytes, plain, 'refusals');
  // Finished LUKS1 and LUKS2 volumes: nothing to encrypt; the LUKS2 engine's own state is not taken over.
  const done = new MemoryDevice(new Uint8Array(plain.subarray(0, MIB)));
  await encryptLuks1(done, opts());
  const snapshot = new Uint8Array(done.bytes);
  await assert.rejects(encryptLuks1(done, opts()), (err: unknown) => err instanceof InvalidArgumentError && /already holds a LUKS1/.test(err.message));
  await assert.rejects(encryptLuks(done, { ...opts(), resumeOnly: true }), InvalidArgumentError);
  assert.deepEqual(done.bytes, snapshot);
  const luks2 = new MemoryDevice(new Uint8Array(plain.subarray(0, MIB)));
  await encryptLuks(luks2, { ...opts({ headerSize: 512 * KIB, initOnly: true }), type: 'luks2' });
  const l2 = new Uint8Array(luks2.bytes);
  await assert.rejects(encryptLuks1(luks2, opts()), (err: unknown) => err instanceof InvalidArgumentError && /to LUKS2/.test(err.message));
  assert.deepEqual(luks2.bytes, l2);
});

test('init-only records the LUKS1 target in a token; a wrong passphrase writes nothing; a run without --type (and reencryptVolume) finishes it as LUKS1', async () => {
  const P = 1 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const r1 = await encryptLuks1(dev, opts({ initOnly: true }));
  assert.equal(r1.finished, false);
  assert.equal(r1.type, 'luks1');
  assert.equal(await luks1EncryptionRecorded(dev, dev.size), true);
  const { state } = await readLuks2Headers(dev, dev.size);
  assert.ok(Object.values(state.metadata.tokens).some((t) => t.type === ENCRYPT_LUKS1_TOKEN));
  assert.equal(state.metadata.segments[Object.keys(state.metadata.segments).find((id) => state.metadata.segments[id]!.flags?.includes('backup-final'))!]!.sector_size, 512);
  const snapshot = new Uint8Array(dev.bytes);
  await assert.rejects(encryptLuks(dev, { ...opts({ passphrases: [Passphrase.fromString('wrong')] }) }), WrongPassphraseError);
  await assert.rejects(encryptLuks(dev, { ...opts(), type: 'luks2' }), (err: unknown) => err instanceof InvalidArgumentError && /to LUKS1/.test(err.message));
  assert.deepEqual(dev.bytes, snapshot);
  const r2 = await encryptLuks(dev, { ...opts(), resumeOnly: true });
  assert.equal(r2.type, 'luks1');
  assert.equal(r2.finished, true);
  assert.equal(r2.started, false);
  await assertLuks1(dev, 2 * MIB, 'resumed');
  equalPlain(await luksPlaintext(dev, PASS), plain, 'resumed');
});

test('stopped by a signal at zone boundaries, then resumed, ends as LUKS1 with the plaintext', async () => {
  const P = 4 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const stops = await stopAtEveryOtherZone((o) => encryptLuks1(dev, opts(o)));
  assert.ok(stops >= 2, `stopped ${stops} times`);
  await assertLuks1(dev, 2 * MIB, 'signals');
  equalPlain(await luksPlaintext(dev, PASS), plain, 'signals');
});

/**
 * Encrypts `image` to LUKS1 under a FaultInjectingDevice cut after write `cut`, then resumes on
 * the crash image with resumeOnly (odd cuts: encryptLuks1; even cuts: encryptLuks with no
 * type, as `reencrypt --resume-only` does), itself cut after write `nested`
 * when given and resumed again. 'untouched': nothing was recorded and the plaintext is intact.
 */
async function crashAndResume(image: Uint8Array, cut: number, seed: number, extra: Partial<EncryptOptions>, nested?: number): Promise<{ outcome: 'done' | 'resumed' | 'untouched'; after: MemoryDevice; phase: string }> {
  const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed, sectorSize: 512 });
  try {
    await encryptLuks1(dev, opts(extra));
    return { outcome: 'done', after: new MemoryDevice(new Uint8Array(dev.bytes)), phase: 'done' };
  } catch (err) {
    if (!(err instanceof PowerCutError)) throw err;
  }
  let after = new MemoryDevice(dev.crashImage());
  const phase = await phaseOf(after, after.size).catch(() => 'plain');
  if (phase === 'luks2:converting' || phase === 'luks1:down') {
    // A resume with a passphrase that opens nothing changes nothing.
    const before = new Uint8Array(after.bytes);
    await assert.rejects(encryptLuks(after, { ...opts({ passphrases: [Passphrase.fromString('wrong')] }), resumeOnly: true }), WrongPassphraseError);
    assert.deepEqual(after.bytes, before, `cut ${cut}: a wrong passphrase changed the volume`);
  }
  // A resume repeats no layout option (a recorded encryption refuses them), except
  // --reduce-device-size while the head is not LUKS yet (it says where the header copy is).
  const resume = async (d: BlockDevice) => {
    const run = { ...(extra.hotzoneSize !== undefined ? { hotzoneSize: extra.hotzoneSize } : {}), ...(extra.pieceBytes !== undefined ? { pieceBytes: extra.pieceBytes } : {}) };
    const layout = extra.reduceDeviceSize !== undefined && (await detectFormat(d)) === 'raw' ? { reduceDeviceSize: extra.reduceDeviceSize } : {};
    return cut % 2 === 1 ? encryptLuks1(d, opts({ ...run, ...layout, resumeOnly: true })) : encryptLuks(d, { ...opts({ ...run, ...layout }), resumeOnly: true });
  };
  const nothingRecorded = (err: unknown) => err instanceof InvalidArgumentError && /nothing to resume/.test(err.message);
  if (nested !== undefined) {
    const second = new FaultInjectingDevice(after.bytes, { cutAfterWrite: nested, seed: seed + 1000, sectorSize: 512 });
    await resume(second).catch((err) => assert.ok(err instanceof PowerCutError || nothingRecorded(err), String(err)));
    after = new MemoryDevice(second.powerCut ? second.crashImage() : new Uint8Array(second.bytes));
  }
  if ((await detectFormat(after)) === 'luks1' && (await readLuks1Marker(after)) === undefined) return { outcome: 'resumed', after, phase };
  try {
    await resume(after);
  } catch (err) {
    if (!nothingRecorded(err)) throw err;
    // The plaintext kept (with --reduce-device-size the end is given up and holds the moved copy).
    const kept = image.length - (extra.reduceDeviceSize ?? 0);
    equalPlain(after.bytes.subarray(0, kept), image.subarray(0, kept), `cut after write ${cut}: nothing recorded but the plaintext changed`);
    return { outcome: 'untouched', after, phase };
  }
  return { outcome: 'resumed', after, phase };
}

for (const [label, extra, size] of [
  ['grown file, zones of 256 KiB, the moved 2 MiB in 256 KiB pieces', { pieceBytes: 256 * KIB }, 3 * MIB],
  ['--reduce-device-size 4M, 256-bit key, zones of 512 KiB in 128 KiB pieces', { reduceDeviceSize: 4 * MIB, keySizeBits: 256, hotzoneSize: 512 * KIB, pieceBytes: 128 * KIB }, 5 * MIB],
] as Array<[string, Partial<EncryptOptions>, number]>) {
  test(`power cut after EVERY write of an encryption to LUKS1 (${label}, writes torn at 512 bytes): the resume ends as LUKS1 with the plaintext`, async () => {
    const plain = new Uint8Array(randomBytes(size));
    const kept = extra.reduceDeviceSize !== undefined ? size - extra.reduceDeviceSize : size;
    const phases = new Set<string>();
    const seen = { untouched: 0, resumed: 0 };
    let cut = 1;
    for (; ; cut++) {
      const { outcome, after, phase } = await crashAndResume(plain, cut, cut * 7 + 1, extra);
      if (outcome === 'untouched') {
        seen.untouched++;
        continue;
      }
      phases.add(phase);
      await assertLuks1(after, 2 * MIB, `power cut after write ${cut}`);
      equalPlain((await luksPlaintext(after, PASS)).subarray(0, kept), plain.subarray(0, kept), `power cut after write ${cut}`);
      assert.equal(after.size, extra.reduceDeviceSize !== undefined ? size : size + 2 * MIB, `size after cut ${cut}`);
      if (outcome === 'done') break;
      seen.resumed++;
    }
    assert.ok(cut > 40, `only ${cut} write boundaries`);
    // Only cuts before the header copy is durable (the moved copy, the copy's four writes) leave nothing recorded.
    assert.ok(seen.untouched <= 5, `${seen.untouched} cuts left nothing recorded`);
    for (const p of ['plain', 'luks2:encrypting', 'luks2:converting', 'luks1:down']) assert.ok(phases.has(p), `no cut left phase ${p} (saw ${[...phases].join(', ')})`);
  });
}

test('power cuts at random writes of an encryption to LUKS1 (several seeds), with a second cut during the resume', async () => {
  const P = 4 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const extra = { hotzoneSize: 512 * KIB, pieceBytes: 128 * KIB };
  const probe = new FaultInjectingDevice(plain);
  await encryptLuks1(probe, opts(extra));
  assert.ok(probe.writes > 40, `${probe.writes} writes`);
  for (let seed = 1; seed <= 8; seed++) {
    const cut = 1 + ((seed * 2654435761) % probe.writes);
    const { outcome, after } = await crashAndResume(plain, cut, seed, extra, 1 + ((seed * 40503) % 25));
    if (outcome === 'untouched') continue;
    await assertLuks1(after, 2 * MIB, `seed ${seed} cut ${cut}`);
    equalPlain(await luksPlaintext(after, PASS), plain, `seed ${seed} cut ${cut}`);
  }
});

/** Header [0, 2 MiB) and data after it, both slices of one device. */
function detachedPair(backing: BlockDevice, dataSize: number): { header: SliceDevice; data: SliceDevice } {
  return { header: new SliceDevice(backing, 0, 2 * MIB), data: new SliceDevice(backing, 2 * MIB, dataSize) };
}

async function detachedPlaintext(header: BlockDevice, data: BlockDevice): Promise<Uint8Array> {
  const vol = await LuksVolume.open(data, { headerDevice: header, readOnly: true });
  assert.equal(vol.version, 1);
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const view = EncryptedDevice.open(data, vol, key, { readOnly: true });
  const out = new Uint8Array(view.size);
  await view.read(out, 0);
  await view.close();
  return out;
}

// Checksum resilience needs writes that tear at most at its 4 KiB blocks (as cryptsetup's).
for (const [resilience, torn] of [['checksum', 4096], ['journal', 512]] as const) {
  test(`detached header (${resilience}, writes torn at ${torn} bytes): power cut after EVERY write; the resume ends with a LUKS1 header (payload offset 0), the data does not move`, async () => {
    const P = 512 * KIB;
    const plain = new Uint8Array(randomBytes(P));
    const image = new Uint8Array(2 * MIB + P);
    image.set(plain, 2 * MIB);
    const phases = new Set<string>();
    let cut = 1;
    for (; ; cut++) {
      const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut * 3 + 1, sectorSize: torn });
      const { header, data } = detachedPair(dev, P);
      let cutHappened = false;
      try {
        await encryptLuks1(data, opts({ headerDevice: header, resilience, hotzoneSize: 64 * KIB }));
      } catch (err) {
        if (!(err instanceof PowerCutError)) throw err;
        cutHappened = true;
      }
      const after = new MemoryDevice(cutHappened ? dev.crashImage() : new Uint8Array(dev.bytes));
      const pair = detachedPair(after, P);
      const phase = await phaseOf(pair.header).catch(() => 'plain');
      phases.add(phase);
      if (phase === 'plain') {
        equalPlain(after.bytes.subarray(2 * MIB), plain, `cut ${cut} before the header`);
        continue;
      }
      if (cutHappened) {
        if (cut % 2 === 0) await encryptLuks(pair.data, { ...opts(), headerDevice: pair.header, resumeOnly: true });
        else await encryptLuks1(pair.data, opts({ headerDevice: pair.header }));
      }
      const headerOnly = new MemoryDevice(new Uint8Array(after.bytes.subarray(0, 2 * MIB)));
      await assertFinishedLuks1(headerOnly, `cut after write ${cut}`);
      assert.equal(decodeLuks1Header(headerOnly.bytes.subarray(0, LUKS1_HEADER_SIZE)).payloadOffset, 0);
      equalPlain(await detachedPlaintext(pair.header, pair.data), plain, `cut after write ${cut}`);
      if (!cutHappened) break;
    }
    assert.ok(cut > 40, `${cut} write boundaries`);
    for (const p of ['luks2:encrypting', 'luks2:converting', 'luks1:down']) assert.ok(phases.has(p), `no cut left phase ${p} (saw ${[...phases].join(', ')})`);
  });
}

// --- interop with cryptsetup 2.6 on image files ---

const skip = needTools('cryptsetup');

function cs(args: string[]): string {
  return run('cryptsetup', [...args, '--disable-locks']);
}

/**
 * cryptsetup sees LUKS1 and opens it; the volume key it dumps is brickcrypt's and decrypts the
 * payload (aes-xts-plain64, 512-byte sectors, IV = sector number) to `plain` by itself.
 */
async function cryptsetupAgrees(img: string, keyFile: string, plain: Uint8Array, header?: string): Promise<void> {
  const h = header ? ['--header', header] : [];
  assert.match(cs(['luksDump', ...h, img]), /^Version:\s+1$/m);
  cs(['open', '--test-passphrase', '--key-file', keyFile, ...h, img]);
  const key = cryptsetupVolumeKeyHex(header ?? img, keyFile);
  assert.equal(key, await brickcryptVolumeKeyHex(header ?? img, PASS));
  const offset = header ? 0 : decodeLuks1Header(new Uint8Array(readFileSync(header ?? img).subarray(0, LUKS1_HEADER_SIZE))).payloadOffset * 512;
  const data = readFileSync(img);
  const vk = Buffer.from(key, 'hex');
  const out = Buffer.alloc(plain.length);
  for (let pos = 0; pos < plain.length; pos += 512) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(pos / 512));
    createDecipheriv(vk.length === 64 ? 'aes-256-xts' : 'aes-128-xts', vk, iv).setAutoPadding(false).update(data.subarray(offset + pos, offset + pos + 512)).copy(out, pos);
  }
  equalPlain(out, plain, `${img} decrypted with cryptsetup's volume key`);
}

test('interop: a file encrypted to LUKS1 (and a detached LUKS1 header) opens in cryptsetup, whose volume key decrypts the plaintext', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'a.img');
    const plain = new Uint8Array(randomBytes(12 * MIB));
    writeFileSync(img, plain);
    const r = await encryptVolume(img, { ...opts({ hotzoneSize: 1 * MIB }), type: 'luks1', workers: 1 });
    assert.equal(r.type, 'luks1');
    assert.equal(statSync(img).size, 14 * MIB);
    await cryptsetupAgrees(img, keyFile, plain);
    // Detached: the data stays at offset 0, the header file is LUKS1 with payload offset 0.
    const data = join(dir, 'b.img');
    const hdr = join(dir, 'b.hdr');
    const plain2 = new Uint8Array(randomBytes(8 * MIB));
    writeFileSync(data, plain2);
    await encryptVolume(data, { ...opts(), type: 'luks1', header: hdr, workers: 1 });
    assert.equal(statSync(data).size, 8 * MIB);
    await cryptsetupAgrees(data, keyFile, plain2, hdr);
  } finally {
    cleanup();
  }
});

test('interop: brickcrypt records the LUKS1 encryption, cryptsetup finishes the LUKS2 phase (token kept), brickcrypt converts it to LUKS1', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'a.img');
    const plain = new Uint8Array(randomBytes(8 * MIB));
    writeFileSync(img, plain);
    await encryptVolume(img, { ...opts(), type: 'luks1', initOnly: true, workers: 1 });
    cs(['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
    const mid = JSON.parse(cs(['luksDump', '--dump-json-metadata', img]));
    assert.ok(Object.values(mid.tokens as Record<string, { type: string }>).some((t) => t.type === ENCRYPT_LUKS1_TOKEN), 'cryptsetup kept the token');
    // `brickcrypt reencrypt VOLUME` (the re-key path) sees the recorded target and converts.
    const r = await reencryptVolume(img, { passphrases: [Passphrase.fromString(PASS)], ...FAST, workers: 1 });
    assert.equal(r.finished, true);
    assert.equal(r.bytes, 0, 'cryptsetup encrypted the data already');
    await cryptsetupAgrees(img, keyFile, plain);
  } finally {
    cleanup();
  }
});

test('interop: cryptsetup opens the volume in every phase a crash can leave (LUKS2 encrypting, LUKS2 converting, LUKS1 with the marker)', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = new Uint8Array(randomBytes(3 * MIB));
    const probe = new FaultInjectingDevice(plain);
    await encryptLuks1(probe, opts());
    const wanted = new Set(['luks2:encrypting', 'luks2:converting', 'luks1:down']);
    for (let cut = 1; cut <= probe.writes && wanted.size > 0; cut++) {
      const d = new FaultInjectingDevice(plain, { cutAfterWrite: cut, seed: cut });
      await assert.rejects(encryptLuks1(d, opts()), PowerCutError);
      const crash = new MemoryDevice(d.crashImage());
      const phase = await phaseOf(crash, crash.size).catch(() => 'plain');
      if (!wanted.delete(phase)) continue;
      const img = join(dir, `${phase.replace(':', '-')}.img`);
      writeFileSync(img, crash.bytes);
      assert.match(cs(['luksDump', img]), phase.startsWith('luks1') ? /^Version:\s+1$/m : /^Version:\s+2$/m, phase);
      cs(['open', '--test-passphrase', '--key-file', keyFile, img]);
    }
    assert.equal(wanted.size, 0, `phases not reached: ${[...wanted].join(', ')}`);
  } finally {
    cleanup();
  }
});

const CLI_FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--workers', '1'];

test('CLI: --encrypt --type luks1 says LUKS1 and what grew; refusals exit with their codes and write nothing; --header makes a LUKS1 header file', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'a.img');
    const plain = new Uint8Array(randomBytes(8 * MIB));
    writeFileSync(img, plain);
    let r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', '--pbkdf', 'argon2id', img, '--key-file', keyFile]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', '--sector-size', '4096', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', '--reduce-device-size', '2M', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.device, r.stderr);
    assert.match(r.stderr, /reduce-device-size of at least/);
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks3', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    equalPlain(new Uint8Array(readFileSync(img)), plain, 'refusals wrote nothing');
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /encryption finished: LUKS1 aes-xts-plain64, 512-byte sectors, data offset 2\.0 MiB/);
    assert.match(r.stdout, /grew by 4\.0 MiB/);
    assert.equal(statSync(img).size, 10 * MIB);
    await cryptsetupAgrees(img, keyFile, plain);
    const data = join(dir, 'b.img');
    const hdr = join(dir, 'b.hdr');
    const plain2 = new Uint8Array(randomBytes(4 * MIB));
    writeFileSync(data, plain2);
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', data, '--header', hdr, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /LUKS1/);
    await cryptsetupAgrees(data, keyFile, plain2, hdr);
    r = runCli(['reencrypt', '--help']);
    assert.match(r.stdout, /--type <type>\s+with --encrypt: luks2 \(default\) or luks1/);
  } finally {
    cleanup();
  }
});

test('CLI: kill -9 of --encrypt --type luks1 at random instants: `reencrypt --resume-only` finishes it as LUKS1 with the original plaintext', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = new Uint8Array(randomBytes(24 * MIB));
    let killed = 0;
    for (const [i, afterMs] of [150, 300, 450, 600, 800, 1000].entries()) {
      const img = join(dir, `k${i}.img`);
      writeFileSync(img, plain);
      const child = spawn(process.execPath, [cliPath, 'reencrypt', '--encrypt', '--type', 'luks1', img, '--key-file', keyFile, '--hotzone-size', '1M', ...CLI_FAST], { stdio: 'ignore' });
      const timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
      const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
      clearTimeout(timer);
      if (code === null) killed++;
      const head = new MemoryDevice(new Uint8Array(readFileSync(img).subarray(0, 2 * MIB)));
      if ((await detectFormat(head)) === 'luks1' && (await readLuks1Marker(head)) === undefined) {
        // Finished (or killed after its last write).
        await cryptsetupAgrees(img, keyFile, plain);
        continue;
      }
      const r = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile, ...CLI_FAST]);
      if (r.status !== 0) {
        // Killed before anything was recorded: the plaintext is untouched.
        assert.match(r.stderr, /nothing to resume/, r.stderr);
        equalPlain(new Uint8Array(readFileSync(img)).subarray(0, plain.length), plain, `killed after ${afterMs} ms before the start`);
        continue;
      }
      await cryptsetupAgrees(img, keyFile, plain);
    }
    assert.ok(killed >= 2, `only ${killed} runs were killed before they finished`);
  } finally {
    cleanup();
  }
});

test('CLI on a loop block device: --type luks1 is refused without --reduce-device-size (exit 4, nothing written); with it the device becomes LUKS1 and the kept data survives', { skip: skip || needTools('losetup') || needRoot('loop devices') }, async () => {
  const { dir, cleanup } = tempDir();
  const backing = join(dir, 'loop.img');
  const plain = new Uint8Array(randomBytes(16 * MIB));
  writeFileSync(backing, plain);
  const loop = run('losetup', ['-f', '--show', backing]).trim();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    let r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', loop, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.device, r.stderr);
    assert.match(r.stderr, /--reduce-device-size/);
    equalPlain(new Uint8Array(readFileSync(loop)), plain, 'refused');
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks1', '--reduce-device-size', '4M', loop, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /LUKS1/);
    assert.match(r.stdout, /last 4\.0 MiB of the device were given up/);
    await cryptsetupAgrees(loop, keyFile, plain.subarray(0, 12 * MIB));
  } finally {
    run('losetup', ['-d', loop]);
    cleanup();
  }
});
