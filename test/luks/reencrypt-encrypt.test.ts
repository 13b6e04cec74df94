/**
 * In-place encryption of plain data into LUKS2 (datashift, moved segment): the plaintext
 * survives byte for byte, a grown file ends with the usable size it had, and a power cut after
 * ANY write (start, zones, finish) is finished by a resume that gives exactly the original
 * plaintext — or, when the cut came before anything of the plaintext was changed, leaves it
 * untouched. Interop: cryptsetup 2.6 finishes brickcrypt's state and the other way round.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { encryptLuks2, type EncryptOptions } from '../../src/luks/reencrypt/encrypt.js';
import { reencryptVolume } from '../../src/workflows/reencrypt.js';
import { Passphrase } from '../../src/secret.js';
import { CancelledError, CorruptHeaderError, InsufficientSpaceError, InvalidArgumentError, ReencryptionInProgressError, WrongPassphraseError } from '../../src/errors.js';
import { readLuks2Headers, writeLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { stopAtEveryOtherZone } from '../helpers/zone-stops.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cliPath, cryptsetupVolumeKeyHex, needRoot, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';
import { spawn } from 'node:child_process';
import { EXIT_CODES } from '../../src/errors.js';
import { CS_FAST, CS_OFFLINE, cryptsetupMetadata, readPlaintext } from '../helpers/reencrypt-states.js';
import { brickcryptVolumeKeyHex, contains, equalPlain, luksPlaintext } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'encrypt me';
const KIB = 1024;
const MIB = 1024 * KIB;

function opts(extra: Partial<EncryptOptions> = {}): EncryptOptions {
  return { passphrases: [Passphrase.fromString(PASS)], ...FAST, headerSize: 512 * KIB, hotzoneSize: 128 * KIB, ...extra };
}

const plaintextOf = (dev: BlockDevice, pass = PASS): Promise<Uint8Array> => luksPlaintext(dev, pass);



test('encrypt a growable device: same plaintext, usable size unchanged, no state or plaintext left', async () => {
  const P = 1536 * KIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const zones: number[] = [];
  const r = await encryptLuks2(dev, opts({ onProgress: ({ done }) => zones.push(done) }));
  assert.equal(r.finished, true);
  assert.equal(r.started, true);
  assert.equal(r.bytes, P);
  assert.equal(r.total, P);
  assert.equal(r.grownBytes, 1024 * KIB);
  assert.equal(r.lostBytes, 0);
  assert.equal(r.volumeSize, P);
  assert.deepEqual(r.keyslots, [0]);
  assert.equal(dev.size, P + 512 * KIB);
  assert.ok(zones.length >= 9, `${zones.length} progress reports`);
  const vol = await LuksVolume.open(dev);
  assert.equal(vol.payloadFence, undefined);
  assert.equal(vol.sectorSize, 4096);
  equalPlain(await plaintextOf(dev), plain, 'grown');
  const { state } = await readLuks2Headers(dev, dev.size);
  assert.equal(decodeReencryptState(state.metadata), undefined);
  assert.deepEqual(Object.keys(state.metadata.segments), ['0']);
  assert.deepEqual(Object.keys(state.metadata.keyslots), ['0']);
  assert.deepEqual(Object.keys(state.metadata.tokens), []);
  // No 4 KiB run of the plaintext is left anywhere on the device.
  for (let off = 0; off < P; off += 256 * KIB) assert.ok(!contains(dev.bytes, plain.subarray(off, off + 4096)), `plaintext at ${off} still on disk`);
});

test('--reduce-device-size: the device keeps its size, the data before the given-up end survives, the moved copy is wiped', async () => {
  const N = 2 * MIB;
  const R = 1 * MIB;
  const plain = new Uint8Array(randomBytes(N));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const r = await encryptLuks2(dev, opts({ headerSize: undefined, reduceDeviceSize: R }));
  assert.equal(r.finished, true);
  assert.equal(r.lostBytes, R);
  assert.equal(r.total, N - R);
  assert.equal(r.volumeSize, N - R / 2);
  assert.equal(dev.size, N);
  const got = await plaintextOf(dev);
  assert.equal(got.length, N - R / 2);
  equalPlain(got.subarray(0, N - R), plain.subarray(0, N - R), 'kept part');
  assert.ok(!contains(dev.bytes, plain.subarray(0, 4096)), 'the moved copy of the first block is still on disk');
});

test('a device that cannot grow is refused without --reduce-device-size, and nothing is written', async () => {
  const backing = new MemoryDevice(new Uint8Array(randomBytes(1 * MIB)));
  const fixed = new SliceDevice(backing, 0, backing.size);
  const before = new Uint8Array(backing.bytes);
  await assert.rejects(encryptLuks2(fixed, opts()), (err: unknown) => err instanceof InsufficientSpaceError && /--reduce-device-size/.test(err.message));
  assert.deepEqual(backing.bytes, before);
  await assert.rejects(encryptLuks2(fixed, opts({ headerSize: undefined, reduceDeviceSize: 3 * MIB })), InsufficientSpaceError);
  await assert.rejects(encryptLuks2(fixed, opts({ headerSize: undefined, reduceDeviceSize: 1000 })), InvalidArgumentError);
  assert.deepEqual(backing.bytes, before);
});

test('init-only then resume; fenced in between; refusals (wrong passphrase, changed options, tampered state, LUKS2 already) write nothing', async () => {
  const P = 1 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const r1 = await encryptLuks2(dev, opts({ initOnly: true }));
  assert.equal(r1.finished, false);
  assert.equal(r1.bytes, 0);
  const vol = await LuksVolume.open(dev);
  assert.ok(vol.payloadFence instanceof ReencryptionInProgressError);
  const snapshot = new Uint8Array(dev.bytes);
  await assert.rejects(encryptLuks2(dev, opts({ passphrases: [Passphrase.fromString('wrong')] })), WrongPassphraseError);
  await assert.rejects(encryptLuks2(dev, opts({ cipher: 'aes-cbc-essiv:sha256' })), InvalidArgumentError);
  assert.deepEqual(dev.bytes, snapshot);
  // The recorded shift changed (and the header rewritten with a valid checksum): the digest catches it.
  const copy = new MemoryDevice(new Uint8Array(snapshot));
  const { state } = await readLuks2Headers(copy, copy.size);
  const moved = Object.values(state.metadata.segments).find((s) => s.flags?.includes('backup-moved-segment'))!;
  moved.offset = String(Number(moved.offset) - 4096);
  await writeLuks2Headers(copy, state);
  const tampered = new Uint8Array(copy.bytes);
  await assert.rejects(encryptLuks2(copy, opts()), CorruptHeaderError);
  assert.deepEqual(copy.bytes, tampered);
  const r2 = await encryptLuks2(dev, opts({ resumeOnly: true }));
  assert.equal(r2.started, false);
  assert.equal(r2.finished, true);
  equalPlain(await plaintextOf(dev), plain, 'resumed');
  const done = new Uint8Array(dev.bytes);
  await assert.rejects(encryptLuks2(dev, opts()), InvalidArgumentError);
  await assert.rejects(encryptLuks2(dev, opts({ resumeOnly: true })), InvalidArgumentError);
  assert.deepEqual(dev.bytes, done);
  // A plain device with nothing recorded: --resume-only refuses it.
  const raw = new MemoryDevice(new Uint8Array(plain));
  await assert.rejects(encryptLuks2(raw, opts({ resumeOnly: true })), InvalidArgumentError);
  equalPlain(raw.bytes, plain, 'untouched');
});

test('stopped by a signal at every zone boundary, then resumed, gives the same plaintext', async () => {
  const P = 1 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const dev = new MemoryDevice(new Uint8Array(plain));
  const stops = await stopAtEveryOtherZone(
    (o) => encryptLuks2(dev, opts(o)),
    async () => assert.ok((await LuksVolume.open(dev)).payloadFence instanceof ReencryptionInProgressError),
  );
  assert.ok(stops >= 4, `stopped ${stops} times`);
  equalPlain(await plaintextOf(dev), plain, 'signals');
});

/**
 * Encrypts `plain` under a FaultInjectingDevice that cuts the power after write `cut`, then
 * resumes on the crash image. Returns what happened: 'done' (no cut), 'resumed' (the resume
 * finished and the plaintext is compared by the caller), or 'untouched' (nothing recorded: the
 * cut came before the header copy was durable, and the plaintext must be intact).
 */
async function crashAndResume(plain: Uint8Array, cut: number, seed: number, extra: Partial<EncryptOptions> = {}, nestedCut?: number): Promise<{ outcome: 'done' | 'resumed' | 'untouched'; dev: MemoryDevice }> {
  const dev = new FaultInjectingDevice(plain, { cutAfterWrite: cut, seed, sectorSize: 512 });
  try {
    await encryptLuks2(dev, opts(extra));
    return { outcome: 'done', dev: new MemoryDevice(new Uint8Array(dev.bytes)) };
  } catch (err) {
    if (!(err instanceof PowerCutError)) throw err;
  }
  let image = dev.crashImage();
  if (nestedCut !== undefined) {
    const second = new FaultInjectingDevice(image, { cutAfterWrite: nestedCut, seed: seed + 1000, sectorSize: 512 });
    await encryptLuks2(second, opts({ ...extra, resumeOnly: true })).catch((err) => assert.ok(err instanceof PowerCutError || err instanceof InvalidArgumentError, String(err)));
    image = second.powerCut ? second.crashImage() : new Uint8Array(second.bytes);
  }
  const after = new MemoryDevice(image);
  const head = await readLuks2Headers(after, after.size).catch(() => undefined);
  if (head && decodeReencryptState(head.state.metadata) === undefined) return { outcome: 'resumed', dev: after };
  // A resume with a wrong passphrase is refused and writes nothing, in every phase: a wrong
  // passphrase, or nothing to resume when nothing was recorded (checked against the real resume).
  const before = new Uint8Array(after.bytes);
  const wrong = await encryptLuks2(after, opts({ ...extra, resumeOnly: true, passphrases: [Passphrase.fromString('not the passphrase')] })).then(
    () => assert.fail(`cut after write ${cut}: a resume with a wrong passphrase succeeded`),
    (err: unknown) => {
      if (err instanceof WrongPassphraseError) return 'wrong-passphrase';
      if (err instanceof InvalidArgumentError && /nothing to resume/.test(err.message)) return 'nothing';
      throw err;
    },
  );
  // Only a repair of a stale LUKS2 header copy from the valid one may have been written (as
  // when any LUKS2 volume is opened for writing); nothing outside the two header copies.
  const copies = head ? 2 * head.state.bin.hdrSize : 0;
  assert.ok(Buffer.from(after.bytes.subarray(copies)).equals(Buffer.from(before.subarray(copies))), `cut after write ${cut}: a refused resume changed the device`);
  try {
    await encryptLuks2(after, opts({ ...extra, resumeOnly: true }));
  } catch (err) {
    if (!(err instanceof InvalidArgumentError && /nothing to resume/.test(err.message))) throw err;
    equalPlain(after.bytes.subarray(0, plain.length), plain, `cut after write ${cut}: nothing recorded but the plaintext changed`);
    assert.equal(wrong, 'nothing', `cut after write ${cut}`);
    return { outcome: 'untouched', dev: after };
  }
  assert.equal(wrong, 'wrong-passphrase', `cut after write ${cut}: a recorded encryption was reported as nothing to resume under a wrong passphrase`);
  return { outcome: 'resumed', dev: after };
}

for (const [label, extra] of [
  ['zones of 128 KiB, one piece each', {}],
  ['zones of 256 KiB in 64 KiB pieces', { hotzoneSize: 256 * KIB, pieceBytes: 64 * KIB }],
] as Array<[string, Partial<EncryptOptions>]>) {
  test(`power cut after EVERY write of an encryption (${label}, writes torn at 512 bytes): resume gives the original plaintext`, async () => {
    const P = 1 * MIB;
    const plain = new Uint8Array(randomBytes(P));
    const seen = { untouched: 0, resumed: 0 };
    let cut = 1;
    for (; ; cut++) {
      const { outcome, dev } = await crashAndResume(plain, cut, cut * 7 + 1, extra);
      if (outcome === 'untouched') {
        seen.untouched++;
        continue;
      }
      equalPlain(await plaintextOf(dev), plain, `power cut after write ${cut}`);
      assert.equal(dev.size, P + 512 * KIB, `size after cut ${cut}`);
      if (outcome === 'done') break;
      seen.resumed++;
    }
    assert.ok(cut > 40, `only ${cut} write boundaries`);
    assert.ok(seen.resumed > 30, `only ${seen.resumed} cuts resumed`);
    // Only the cuts before the header copy in the gap is durable leave nothing recorded.
    assert.ok(seen.untouched <= 4, `${seen.untouched} cuts left nothing recorded`);
  });
}

test('power cuts at random writes of a larger encryption (several seeds), with a second cut during the resume', async () => {
  const P = 4 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  const extra = { headerSize: 1 * MIB, hotzoneSize: 256 * KIB, pieceBytes: 64 * KIB };
  const probe = new FaultInjectingDevice(plain);
  await encryptLuks2(probe, opts(extra));
  const total = probe.writes;
  assert.ok(total > 100, `${total} writes`);
  for (let seed = 1; seed <= 8; seed++) {
    const cut = 1 + ((seed * 2654435761) % total);
    const { outcome, dev } = await crashAndResume(plain, cut, seed, extra, 1 + (seed % 11));
    if (outcome === 'untouched') continue;
    equalPlain(await plaintextOf(dev), plain, `seed ${seed} cut ${cut}`);
  }
});

test('a start interrupted while the header is written to the head is finished from the copy in the gap', async () => {
  const P = 1 * MIB;
  const plain = new Uint8Array(randomBytes(P));
  // Count the writes of an init: the head's header image is written last.
  const probe = new FaultInjectingDevice(plain);
  await encryptLuks2(probe, opts({ initOnly: true }));
  const initWrites = probe.writes;
  for (let back = 0; back < 4; back++) {
    const dev = new FaultInjectingDevice(plain, { cutAfterWrite: initWrites - back, seed: back + 5, sectorSize: 512 });
    await assert.rejects(encryptLuks2(dev, opts()), PowerCutError);
    const after = new MemoryDevice(dev.crashImage());
    const r = await encryptLuks2(after, opts({ resumeOnly: true }));
    assert.equal(r.finished, true);
    equalPlain(await plaintextOf(after), plain, `cut ${back} writes before the end of the start`);
  }
});

test('less data than the header: the start\'s header copy lies clear of the head, so a cut while the head is written is finished from it', async () => {
  // 384 KiB of data, a 512 KiB header: the gap [N-2S, N-S) would begin inside [0, S).
  const P = 384 * KIB;
  const plain = new Uint8Array(randomBytes(P));
  const probe = new FaultInjectingDevice(plain);
  await encryptLuks2(probe, opts({ initOnly: true }));
  const initWrites = probe.writes;
  for (let back = 0; back < 4; back++) {
    const dev = new FaultInjectingDevice(plain, { cutAfterWrite: initWrites - back, seed: back + 11, sectorSize: 512 });
    await assert.rejects(encryptLuks2(dev, opts()), PowerCutError);
    const after = new MemoryDevice(dev.crashImage());
    const r = await encryptLuks2(after, opts({ resumeOnly: true }));
    assert.equal(r.finished, true);
    equalPlain(await plaintextOf(after), plain, `cut ${back} writes before the end of the start`);
  }
  // Too little data to hold the copy (the keyslot areas) next to the head: refused, nothing written.
  const tiny = new MemoryDevice(new Uint8Array(plain.subarray(0, 64 * KIB)));
  await assert.rejects(encryptLuks2(tiny, opts()), InsufficientSpaceError);
  equalPlain(tiny.bytes, plain.subarray(0, 64 * KIB), 'tiny');
});

/** Header [0, 1 MiB) and data after it, both slices of one fault-injecting device. */
function detachedPair(backing: BlockDevice, dataSize: number): { header: SliceDevice; data: SliceDevice } {
  return { header: new SliceDevice(backing, 0, 1 * MIB), data: new SliceDevice(backing, 1 * MIB, dataSize) };
}

async function detachedPlaintext(header: BlockDevice, data: BlockDevice): Promise<Uint8Array> {
  const vol = await LuksVolume.open(data, { headerDevice: header, readOnly: true });
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const view = EncryptedDevice.open(data, vol, key, { readOnly: true });
  const out = new Uint8Array(view.size);
  await view.read(out, 0);
  await view.close();
  return out;
}

for (const [resilience, torn] of [['checksum', 4096], ['journal', 512]] as Array<['checksum' | 'journal', number]>) {
  test(`detached header (${resilience}): power cut after EVERY write, writes torn at ${torn} bytes; resume gives the plaintext, the data does not move`, async () => {
    const P = 512 * KIB;
    const plain = new Uint8Array(randomBytes(P));
    const image = new Uint8Array(1 * MIB + P);
    image.set(plain, 1 * MIB);
    let cut = 1;
    let resumed = 0;
    for (; ; cut++) {
      const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut * 3 + 1, sectorSize: torn });
      const { header, data } = detachedPair(dev, P);
      let cutHappened = false;
      try {
        await encryptLuks2(data, opts({ headerSize: 1 * MIB, headerDevice: header, resilience, hotzoneSize: 64 * KIB }));
      } catch (err) {
        if (!(err instanceof PowerCutError)) throw err;
        cutHappened = true;
      }
      const after = new MemoryDevice(cutHappened ? dev.crashImage() : new Uint8Array(dev.bytes));
      const pair = detachedPair(after, P);
      const head = await readLuks2Headers(pair.header, P).catch(() => undefined);
      if (!head) {
        // The header was not recorded yet: the data must be untouched.
        equalPlain(after.bytes.subarray(1 * MIB), plain, `cut ${cut} before the header`);
        continue;
      }
      if (decodeReencryptState(head.state.metadata) !== undefined) {
        await encryptLuks2(pair.data, opts({ headerDevice: pair.header, resumeOnly: true }));
        resumed++;
      }
      equalPlain(await detachedPlaintext(pair.header, pair.data), plain, `cut after write ${cut}`);
      if (!cutHappened) break;
    }
    assert.ok(cut > 40 && resumed > 30, `${cut} write boundaries, ${resumed} resumed`);
  });
}

// --- interop with cryptsetup 2.6 on image files ---

const skip = needTools('cryptsetup');
const SIZE = 48 * MIB;

function plainFile(path: string, size: number): Uint8Array {
  const data = new Uint8Array(randomBytes(size));
  writeFileSync(path, data);
  return data;
}

async function onFile<T>(path: string, fn: (dev: FileDevice) => Promise<T>): Promise<T> {
  const dev = await FileDevice.open(path);
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

/** cryptsetup accepts the finished volume: no requirement, one segment, the passphrase opens it. */
function cryptsetupAccepts(img: string, keyFile: string): void {
  const m = cryptsetupMetadata(img);
  assert.equal(m.config.requirements, undefined);
  assert.deepEqual(Object.keys(m.segments), ['0']);
  run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', keyFile, img]);
}

function csOpts(extra: Partial<EncryptOptions> = {}): EncryptOptions {
  return { passphrases: [Passphrase.fromString(PASS)], ...FAST, ...extra };
}

test('brickcrypt --init-only, and brickcrypt stopped after some zones -> cryptsetup reencrypt --resume-only finishes', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'plain.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = plainFile(img, SIZE);
    await onFile(img, (dev) => encryptLuks2(dev, csOpts({ initOnly: true })));
    const copy = join(dir, 'copy.img');
    writeFileSync(copy, readFileSync(img));
    run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, copy]);
    cryptsetupAccepts(copy, keyFile);
    equalPlain((await readPlaintext(copy, PASS)).subarray(0, SIZE), plain, 'cryptsetup finished brickcrypt --init-only');
    // Stopped after a few 4 MiB zones (the init above is resumed).
    const ac = new AbortController();
    let zones = 0;
    await assert.rejects(onFile(img, (dev) => encryptLuks2(dev, csOpts({ hotzoneSize: 4 * MIB, signal: ac.signal, onProgress: () => (++zones === 4 ? ac.abort() : undefined) }))), CancelledError);
    assert.ok(Object.keys(cryptsetupMetadata(img).segments).length >= 5);
    run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
    cryptsetupAccepts(img, keyFile);
    equalPlain((await readPlaintext(img, PASS)).subarray(0, SIZE), plain, 'cryptsetup finished brickcrypt stopped');
  } finally {
    cleanup();
  }
});

test('brickcrypt loses power inside a hot zone -> cryptsetup (repair and) reencrypt --resume-only finish it', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'plain.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = plainFile(img, 8 * MIB);
    let found = false;
    for (let cut = 14; cut < 80 && !found; cut++) {
      const dev = new FaultInjectingDevice(plain, { cutAfterWrite: cut, seed: cut, sectorSize: 4096 });
      await assert.rejects(encryptLuks2(dev, csOpts({ headerSize: 2 * MIB, hotzoneSize: 1 * MIB })), PowerCutError);
      const crashed = dev.crashImage();
      const meta = (await readLuks2Headers(new MemoryDevice(crashed), crashed.length).catch(() => undefined))?.state.metadata;
      if (!meta || !Object.values(meta.segments).some((s) => s.flags?.includes('in-reencryption'))) continue;
      found = true;
      writeFileSync(img, crashed);
    }
    assert.ok(found, 'no crash inside a hot zone found');
    const r = runStatus('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
    if (r.status !== 0) run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', keyFile, img]);
    if (r.status !== 0) run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
    cryptsetupAccepts(img, keyFile);
    equalPlain((await readPlaintext(img, PASS)).subarray(0, plain.length), plain, 'cryptsetup recovered brickcrypt');
  } finally {
    cleanup();
  }
});

test('cryptsetup reencrypt --encrypt --init-only -> brickcrypt finishes; cryptsetup opens the result', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'plain.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = plainFile(img, SIZE);
    run('cryptsetup', ['reencrypt', '--encrypt', '--type', 'luks2', '--reduce-device-size', '16M', '--init-only', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, img]);
    const r = await reencryptVolume(img, { passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, workers: 1 });
    assert.equal(r.finished, true);
    assert.equal(statSync(img).size, SIZE);
    cryptsetupAccepts(img, keyFile);
    const got = await readPlaintext(img, PASS);
    assert.equal(got.length, SIZE - 8 * MIB);
    equalPlain(got.subarray(0, SIZE - 16 * MIB), plain.subarray(0, SIZE - 16 * MIB), 'brickcrypt finished cryptsetup --init-only');
  } finally {
    cleanup();
  }
});

test('cryptsetup reencrypt --encrypt killed with SIGKILL mid-run -> brickcrypt finishes', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const size = 128 * MIB;
    let done = 0;
    for (const ms of [500, 300, 200, 120, 80]) {
      if (done > 0) break;
      const img = join(dir, `plain-${ms}.img`);
      const plain = plainFile(img, size);
      const { spawn } = await import('node:child_process');
      // cwd: cryptsetup keeps its temporary header (LUKS2-temp-UUID.new) there while it starts.
      const child = spawn('cryptsetup', ['reencrypt', '--encrypt', '--type', 'luks2', '--reduce-device-size', '4M', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, img], { stdio: 'ignore', cwd: dir });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      const code = await exited;
      clearTimeout(timer);
      if (code === 0) continue;
      const fmt = runStatus('cryptsetup', ['isLuks', img]);
      if (fmt.status !== 0) {
        // Killed before cryptsetup wrote its header: the plaintext must be untouched.
        equalPlain(new Uint8Array(readFileSync(img)).subarray(0, size - 4 * MIB), plain.subarray(0, size - 4 * MIB), 'killed before the header');
        continue;
      }
      const r = await reencryptVolume(img, { passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, workers: 1 });
      assert.equal(r.finished, true);
      cryptsetupAccepts(img, keyFile);
      equalPlain((await readPlaintext(img, PASS)).subarray(0, size - 4 * MIB), plain.subarray(0, size - 4 * MIB), `killed after ${ms} ms`);
      done++;
    }
    assert.ok(done >= 1, 'cryptsetup was never killed mid-run');
  } finally {
    cleanup();
  }
});

test('a file brickcrypt encrypted opens in cryptsetup, with the volume key brickcrypt reads', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'plain.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const plain = plainFile(img, 20 * MIB);
    await onFile(img, (dev) => encryptLuks2(dev, csOpts({ sectorSize: 512, keySizeBits: 256 })));
    assert.equal(statSync(img).size, 36 * MIB);
    cryptsetupAccepts(img, keyFile);
    equalPlain(await readPlaintext(img, PASS), plain, 'brickcrypt');
    const csKey = cryptsetupVolumeKeyHex(img, keyFile);
    const ours = await brickcryptVolumeKeyHex(img, PASS);
    assert.equal(ours, csKey);
    assert.match(run('cryptsetup', ['luksDump', img]), /sector: 512 \[bytes\]/);
  } finally {
    cleanup();
  }
});

test('detached header: brickcrypt --init-only -> cryptsetup finishes; cryptsetup --init-only -> brickcrypt finishes', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    for (const who of ['brickcrypt', 'cryptsetup']) {
      const img = join(dir, `${who}.img`);
      const hdr = join(dir, `${who}.hdr`);
      const plain = plainFile(img, 24 * MIB);
      if (who === 'brickcrypt') {
        const header = await FileDevice.open(hdr, { create: true });
        try {
          await onFile(img, (dev) => encryptLuks2(dev, csOpts({ headerDevice: header, resilience: 'journal', initOnly: true })));
        } finally {
          await header.close();
        }
        run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--header', hdr, '--key-file', keyFile, img]);
      } else {
        run('cryptsetup', ['reencrypt', '--encrypt', '--type', 'luks2', '--header', hdr, '--init-only', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, img]);
        const r = await reencryptVolume(img, { header: hdr, passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, workers: 1 });
        assert.equal(r.finished, true);
      }
      assert.equal(statSync(img).size, 24 * MIB);
      run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--header', hdr, '--key-file', keyFile, img]);
      const got = await onFile(img, async (data) => {
        const header = await FileDevice.open(hdr, { readOnly: true });
        try {
          return await detachedPlaintext(header, data);
        } finally {
          await header.close();
        }
      });
      equalPlain(got, plain, `${who} started, the other finished`);
    }
  } finally {
    cleanup();
  }
});

// --- the CLI ---

const CLI_FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];

/**
 * Starts the CLI (with --json) and sends `signal` `ms` after its first progress line (the start
 * is recorded then, zones begin), or `ms` after the spawn when `fromSpawn`; resolves with the
 * exit code, signal and output. Timing from the first progress keeps the kills inside the run
 * however fast the machine is.
 */
function runAndSignal(args: string[], ms: number, signal: NodeJS.Signals, fromSpawn = false): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined = fromSpawn ? setTimeout(() => child.kill(signal), ms) : undefined;
    child.stdout.on('data', (d) => {
      stdout += d;
      if (timer === undefined && stdout.includes('"progress"')) timer = setTimeout(() => child.kill(signal), ms);
    });
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      resolve({ code, signal: sig, stdout, stderr });
    });
  });
}

test('CLI: --encrypt grows a file and says so; --reduce-device-size says what is given up; an unknown --type and datashift with --header are refused', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'a.img');
    const plain = plainFile(img, 8 * MIB);
    let r = runCli(['reencrypt', '--encrypt', '--type', 'luks3', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    r = runCli(['reencrypt', '--encrypt', img, '--header', join(dir, 'h'), '--resilience', 'datashift', '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    equalPlain(new Uint8Array(readFileSync(img)), plain, 'refusals wrote nothing');
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks2', img, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /encryption finished/);
    assert.match(r.stdout, /grew by 32\.0 MiB/);
    assert.equal(statSync(img).size, 8 * MIB + 16 * MIB);
    cryptsetupAccepts(img, keyFile);
    equalPlain(await readPlaintext(img, PASS), plain, 'CLI grown');
    const img2 = join(dir, 'b.img');
    const plain2 = plainFile(img2, 8 * MIB);
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks2', '--reduce-device-size', '4M', img2, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /last 4\.0 MiB of the device were given up/);
    assert.equal(statSync(img2).size, 8 * MIB);
    equalPlain((await readPlaintext(img2, PASS)).subarray(0, 4 * MIB), plain2.subarray(0, 4 * MIB), 'CLI reduced');
  } finally {
    cleanup();
  }
});

test('CLI: kill -9 of --encrypt at random instants: brickcrypt and cryptsetup each finish it with the original plaintext', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'vol.img');
    const size = 192 * MIB;
    const plain = plainFile(img, size);
    const copy = join(dir, 'copy.img');
    let kills = 0;
    let byCryptsetup = 0;
    // Kill windows shrink whenever a run ends before its kill (a fast machine), and the volume
    // then starts over from the plaintext, until at least three kills have landed.
    let window = 600;
    let fresh = true;
    const finished = () => runStatus('cryptsetup', ['isLuks', img]).status === 0 && cryptsetupMetadata(img).config.requirements === undefined;
    for (let i = 0; i < 16 && kills < 3; i++) {
      if (finished()) {
        // A run (or a resume) ended before its kill: check it, then start over from the plaintext.
        cryptsetupAccepts(img, keyFile);
        equalPlain((await readPlaintext(img, PASS)).subarray(0, size), plain, `finished before kill ${kills + 1}`);
        writeFileSync(img, plain);
        fresh = true;
      }
      // A fresh run's kill lands anywhere from the spawn on (possibly inside the start); a resumed one's within the zones.
      const ms = fresh ? Math.floor(Math.random() * (300 + 2.5 * window)) : Math.floor(Math.random() * window);
      const r = await runAndSignal(['reencrypt', '--encrypt', '--type', 'luks2', img, '--key-file', keyFile, ...CLI_FAST, '--hotzone-size', '2M', '--workers', '1'], ms, 'SIGKILL', fresh);
      fresh = false;
      if (r.signal !== 'SIGKILL') {
        assert.equal(r.code, 0, r.stderr);
        window = Math.max(20, Math.floor(window / 2));
        continue;
      }
      kills++;
      let recorded = runStatus('cryptsetup', ['isLuks', img]).status === 0;
      if (!recorded) {
        // Killed while the header was written to the head: brickcrypt finds its copy in the gap
        // and writes it again (then nothing is encrypted yet: --init-only); or nothing was recorded.
        recorded = await onFile(img, (dev) => encryptLuks2(dev, csOpts({ resumeOnly: true, initOnly: true }))).then(
          (rep) => (assert.equal(rep.recovered, true), true),
          (err) => (assert.ok(err instanceof InvalidArgumentError && /nothing to resume/.test(err.message), String(err)), false),
        );
      }
      if (recorded) {
        // cryptsetup finishes a copy (after `repair` when the kill hit a hot zone).
        writeFileSync(copy, readFileSync(img));
        const m = cryptsetupMetadata(copy);
        if (m.config.requirements !== undefined) {
          const resume = () => runStatus('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, copy]).status === 0;
          let ok = resume();
          if (!ok) {
            // A hot zone wants `repair` first.
            run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', keyFile, copy]);
            ok = cryptsetupMetadata(copy).config.requirements === undefined || resume();
          }
          if (ok) byCryptsetup++;
          else {
            // Killed after the last zone, before the final header: the state has one crypt
            // segment left, which cryptsetup 2.6 cannot finish ("Failed to set device segments");
            // brickcrypt does.
            const active = Object.values(cryptsetupMetadata(copy).segments).filter((seg: any) => !seg.flags?.some((f: string) => f.startsWith('backup-')));
            assert.deepEqual(active.map((seg: any) => seg.type), ['crypt'], 'cryptsetup could not finish a state with data left');
            assert.equal(runCli(['reencrypt', '--resume-only', copy, '--key-file', keyFile]).status, 0);
          }
        }
        equalPlain((await readPlaintext(copy, PASS)).subarray(0, size), plain, `cryptsetup after kill ${kills} at ${ms} ms`);
      } else {
        // Killed before the header reached the head: the plaintext is untouched (the file may have grown).
        equalPlain(new Uint8Array(readFileSync(img)).subarray(0, size), plain, `kill ${kills} before the header`);
        if (statSync(img).size !== size) writeFileSync(img, plain);
      }
      // The next round resumes the original automatically (or starts it afresh).
    }
    assert.ok(kills >= 2, `only ${kills} kills landed`);
    // Whatever state the last kill left is finished here (or the volume is still the plaintext).
    if (runStatus('cryptsetup', ['isLuks', img]).status === 0 && cryptsetupMetadata(img).config.requirements !== undefined) {
      const res = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
      assert.equal(res.status, 0, res.stderr);
    } else if (runStatus('cryptsetup', ['isLuks', img]).status !== 0) {
      assert.equal(runCli(['reencrypt', '--encrypt', img, '--key-file', keyFile, ...CLI_FAST]).status, 0);
    }
    assert.equal(statSync(img).size, size + 16 * MIB);
    cryptsetupAccepts(img, keyFile);
    equalPlain(await readPlaintext(img, PASS), plain, 'final');
    assert.ok(byCryptsetup >= 1, 'no killed state was finished by cryptsetup');
  } finally {
    cleanup();
  }
});

test('CLI: SIGINT stops --encrypt at a resumable point (exit 130); --resume-only finishes it', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'vol.img');
    const plain = plainFile(img, 64 * MIB);
    const r = await runAndSignal(['reencrypt', '--encrypt', img, '--key-file', keyFile, ...CLI_FAST, '--hotzone-size', '1M', '--workers', '1'], 0, 'SIGINT');
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /resume with `brickcrypt reencrypt --resume-only/);
    const m = cryptsetupMetadata(img);
    assert.deepEqual(m.config.requirements.mandatory, ['online-reencrypt-v2']);
    assert.ok(!Object.values(m.segments).some((seg: any) => seg.flags?.includes('in-reencryption')), 'stopped inside a hot zone');
    const res = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
    assert.equal(res.status, 0, res.stderr);
    assert.match(res.stdout, /encryption finished/);
    cryptsetupAccepts(img, keyFile);
    equalPlain(await readPlaintext(img, PASS), plain, 'resumed after SIGINT');
  } finally {
    cleanup();
  }
});

test('CLI on a loop block device: refused without --reduce-device-size (exit 4, nothing written); with it the data before the given-up end survives', { skip: skip || needTools('losetup') || needRoot('loop devices') }, async () => {
  const { dir, cleanup } = tempDir();
  const backing = join(dir, 'loop.img');
  const plain = plainFile(backing, 32 * MIB);
  const loop = run('losetup', ['-f', '--show', backing]).trim();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    let r = runCli(['reencrypt', '--encrypt', '--type', 'luks2', loop, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.device, r.stderr);
    assert.match(r.stderr, /--reduce-device-size/);
    equalPlain(new Uint8Array(readFileSync(loop)), plain, 'refused');
    r = runCli(['reencrypt', '--encrypt', '--type', 'luks2', '--reduce-device-size', '8M', loop, '--key-file', keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /last 8\.0 MiB of the device were given up/);
    run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', keyFile, loop]);
    const got = await readPlaintext(loop, PASS);
    assert.equal(got.length, 28 * MIB);
    equalPlain(got.subarray(0, 24 * MIB), plain.subarray(0, 24 * MIB), 'loop device');
  } finally {
    run('losetup', ['-d', loop]);
    cleanup();
  }
});
