/**
 * In-place decryption of LUKS2 volumes: a detached header (data offset 0, backward, checksum /
 * journal / none) and an exported header (data shift, datashift-checksum / datashift-journal).
 * The data device ends up holding exactly the original plaintext (cut to its size after a
 * data shift), the header records no reencryption and holds no key, and a decryption stopped
 * at any point — a signal at a zone boundary, or a power cut after ANY write — is finished by
 * a resume that gives the same plaintext.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { decryptLuks2, luks2HeaderArea, type DecryptOptions } from '../../src/luks/reencrypt/decrypt.js';
import type { Resilience } from '../../src/luks/reencrypt/engine.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { CancelledError, CorruptHeaderError, EXIT_CODES, InvalidArgumentError, WrongPassphraseError } from '../../src/errors.js';
import { readLuks2Headers, writeLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { stopAtEveryOtherZone } from '../helpers/zone-stops.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cliPath, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';
import { VolumeLock } from '../../src/devices/volume-lock.js';
import { CS_FAST, CS_OFFLINE, cryptsetupMetadata } from '../helpers/reencrypt-states.js';
import { equalPlain } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'decrypt me';
const HDR = 2 * 1024 * 1024;

function opts(headerDevice: BlockDevice, extra: Partial<DecryptOptions> = {}): DecryptOptions {
  return { headerDevice, passphrases: [Passphrase.fromString(PASS)], ...FAST, hotzoneSize: 64 * 1024, ...extra };
}


async function fill(data: BlockDevice, volume: LuksVolume, key: VolumeKey): Promise<Uint8Array> {
  const view = EncryptedDevice.open(data, volume, key);
  const plain = new Uint8Array(randomBytes(view.size));
  await view.write(plain, 0);
  await view.close();
  return plain;
}

/** A detached header (its own 2 MiB image) and a data image of `payload` bytes at offset 0. */
async function detachedVolume(payload: number, sectorSize: 512 | 4096 = 4096): Promise<{ header: Uint8Array; data: Uint8Array; plain: Uint8Array }> {
  const header = new MemoryDevice(HDR);
  const data = new MemoryDevice(payload);
  const { volume, key } = await LuksVolume.format(data, { type: 'luks2', passphrase: Passphrase.fromString(PASS), headerDevice: header, keyslotsSize: HDR - 2 * 16384, sectorSize, ...FAST });
  const plain = await fill(data, volume, key);
  return { header: header.bytes, data: data.bytes, plain };
}

/** An attached volume (data offset `offset`) and the export of its header area. */
async function attachedVolume(payload: number, offset = 512 * 1024, sectorSize: 512 | 4096 = 4096): Promise<{ exported: Uint8Array; data: Uint8Array; plain: Uint8Array }> {
  const dev = new MemoryDevice(offset + payload);
  const { volume, key } = await LuksVolume.format(dev, { type: 'luks2', passphrase: Passphrase.fromString(PASS), dataOffset: offset, keyslotsSize: offset - 2 * 16384, sectorSize, ...FAST });
  const plain = await fill(dev, volume, key);
  const { bytes } = await luks2HeaderArea(dev);
  return { exported: bytes, data: dev.bytes, plain };
}

/** One image holding the header then the data, so a single power cut hits both. */
function joined(header: Uint8Array, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(header.length + data.length);
  out.set(header, 0);
  out.set(data, header.length);
  return out;
}

function split(dev: BlockDevice, headerSize: number): { header: SliceDevice; data: SliceDevice } {
  return { header: new SliceDevice(dev, 0, headerSize), data: new SliceDevice(dev, headerSize, dev.size - headerSize) };
}

async function assertFinished(header: BlockDevice): Promise<void> {
  const { state } = await readLuks2Headers(header);
  const m = state.metadata;
  assert.equal(decodeReencryptState(m), undefined);
  assert.deepEqual(Object.keys(m.keyslots), []);
  assert.deepEqual(Object.keys(m.digests), []);
  assert.deepEqual(Object.values(m.segments).map((s) => s.type), ['linear']);
  assert.equal(m.config.requirements, undefined);
}

for (const resilience of ['checksum', 'journal', 'none'] as Resilience[]) {
  test(`detached header (${resilience}): the data device becomes the plaintext; the header holds no key and no state`, async () => {
    const { header, data, plain } = await detachedVolume(512 * 1024);
    const h = new MemoryDevice(header);
    const d = new MemoryDevice(data);
    const r = await decryptLuks2(d, opts(h, { resilience }));
    assert.equal(r.finished, true);
    assert.equal(r.started, true);
    assert.equal(r.bytes, 512 * 1024);
    assert.equal(r.shift, 0);
    equalPlain(d.bytes, plain, resilience);
    await assertFinished(h);
    // The old keyslot area is wiped.
    assert.deepEqual(h.bytes.subarray(32768, 32768 + 258048), new Uint8Array(258048));
    await assert.rejects(LuksVolume.open(d));
    await assert.rejects((async () => (await LuksVolume.open(d, { headerDevice: h })).unlock(Passphrase.fromString(PASS)))());
  });
}

for (const resilience of ['checksum', 'journal'] as Resilience[]) {
  test(`exported header, data shift (${resilience}): plaintext at offset 0, the device cut by the data offset`, async () => {
    const { exported, data, plain } = await attachedVolume(768 * 1024);
    const h = new MemoryDevice(exported);
    const d = new MemoryDevice(data);
    const r = await decryptLuks2(d, opts(h, { resilience, hotzoneSize: 128 * 1024 }));
    assert.equal(r.finished, true);
    assert.equal(r.shift, 512 * 1024);
    assert.equal(r.truncated, true);
    assert.equal(r.total, 768 * 1024);
    assert.equal(d.size, 768 * 1024);
    equalPlain(d.bytes, plain, resilience);
    await assertFinished(h);
    await assert.rejects(LuksVolume.open(d));
    // A run on the finished header changes nothing.
    const again = await decryptLuks2(d, opts(h));
    assert.equal(again.finished, true);
    assert.equal(again.bytes, 0);
    equalPlain(d.bytes, plain, 'again');
  });
}

test('data shift with the whole payload in the moved segment, and 512-byte sectors', async () => {
  const { exported, data, plain } = await attachedVolume(128 * 1024, 512 * 1024, 512);
  const h = new MemoryDevice(exported);
  const d = new MemoryDevice(data);
  await decryptLuks2(d, opts(h, { hotzoneSize: 128 * 1024 }));
  equalPlain(d.bytes, plain, 'moved only');
});

test('init-only, refusals that write nothing, then resume', async () => {
  const { exported, data, plain } = await attachedVolume(512 * 1024);
  const h = new MemoryDevice(exported);
  const d = new MemoryDevice(data);
  const snap = [new Uint8Array(h.bytes), new Uint8Array(d.bytes)];
  await assert.rejects(decryptLuks2(d, opts(h, { passphrases: [Passphrase.fromString('wrong')] })), WrongPassphraseError);
  await assert.rejects(decryptLuks2(d, opts(h, { resilience: 'none' })), InvalidArgumentError);
  await assert.rejects(decryptLuks2(d, opts(h, { hotzoneSize: 1024 * 1024 })), InvalidArgumentError);
  await assert.rejects(decryptLuks2(d, opts(h, { resumeOnly: true })), InvalidArgumentError);
  assert.deepEqual([h.bytes, d.bytes], snap);
  const r1 = await decryptLuks2(d, opts(h, { initOnly: true }));
  assert.equal(r1.finished, false);
  const { state } = await readLuks2Headers(h);
  const s = decodeReencryptState(state.metadata)!;
  assert.equal(s.requirement, 'online-reencrypt-v3');
  assert.equal(s.keyslot.resilience, 'datashift-checksum');
  assert.equal(s.keyslot.direction, 'forward');
  assert.equal(s.keyslot.shiftSize, 512 * 1024);
  // Tampering with the recorded shift is caught by the verification digest.
  const copy = new MemoryDevice(new Uint8Array(h.bytes));
  const t = await readLuks2Headers(copy);
  const ks = Object.values(t.state.metadata.keyslots).find((k) => k.type === 'reencrypt')!;
  (ks.area as Record<string, unknown>).shift_size = String(256 * 1024);
  await writeLuks2Headers(copy, t.state);
  const dcopy = new MemoryDevice(new Uint8Array(d.bytes));
  await assert.rejects(decryptLuks2(dcopy, opts(copy)), CorruptHeaderError);
  const r2 = await decryptLuks2(d, opts(h, { resumeOnly: true }));
  assert.equal(r2.started, false);
  assert.equal(r2.finished, true);
  equalPlain(d.bytes, plain, 'resumed');
});

test('a state whose keyslots are gone and whose data is all plaintext (cryptsetup stopped between its two final writes) is finished without a key', async () => {
  const { header, data, plain } = await detachedVolume(256 * 1024);
  const h = new MemoryDevice(header);
  const d = new MemoryDevice(data);
  await decryptLuks2(d, opts(h, { initOnly: true }));
  // The layout cryptsetup leaves there: one linear segment, the old keyslot destroyed, the state still recorded.
  const { state } = await readLuks2Headers(h);
  const m = state.metadata;
  const s = decodeReencryptState(m)!;
  const prev = m.segments[s.previousId]!;
  const fin = m.segments[s.finalId]!;
  m.segments = { '0': { type: 'linear', offset: '0', size: 'dynamic' }, '1': prev, '2': fin };
  m.digests[s.oldDigestId!]!.segments = ['1'];
  for (const id of m.digests[s.oldDigestId!]!.keyslots) delete m.keyslots[id];
  m.digests[s.oldDigestId!]!.keyslots = [];
  await writeLuks2Headers(h, state);
  d.bytes.set(plain, 0);
  const r = await decryptLuks2(d, opts(h, { passphrases: [Passphrase.fromString('any')] }));
  assert.equal(r.finished, true);
  assert.equal(r.bytes, 0);
  equalPlain(d.bytes, plain, 'untouched');
  await assertFinished(h);
});

for (const shifted of [false, true]) {
  test(`decryption (${shifted ? 'data shift' : 'detached'}) stopped by a signal at every zone boundary resumes to the same plaintext`, async () => {
    const v = shifted ? await attachedVolume(2560 * 1024) : await detachedVolume(512 * 1024);
    const h = new MemoryDevice(shifted ? (v as { exported: Uint8Array }).exported : (v as { header: Uint8Array }).header);
    const d = new MemoryDevice(v.data);
    const stops = await stopAtEveryOtherZone((o) => decryptLuks2(d, opts(h, o)));
    assert.ok(stops >= 3, `stopped ${stops} times`);
    equalPlain(d.bytes.subarray(0, v.plain.length), v.plain, 'stopped');
  });
}

/**
 * Runs a decryption on one image holding header and data, with the power cut after write
 * `cut`; resumes on the crash image (itself cut when `second` is given) and returns the
 * plaintext region of the data device.
 */
async function crashAndResume(image: Uint8Array, headerSize: number, cut: number, seed: number, sectorSize: number, extra: Partial<DecryptOptions>, second?: number): Promise<{ data: Uint8Array; cutHappened: boolean }> {
  const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed, sectorSize });
  let cutHappened = false;
  try {
    const { header, data } = split(dev, headerSize);
    await decryptLuks2(data, opts(header, extra));
  } catch (err) {
    if (!(err instanceof PowerCutError)) throw err;
    cutHappened = true;
  }
  let after: BlockDevice = new MemoryDevice(cutHappened ? dev.crashImage() : new Uint8Array(dev.bytes));
  if (second !== undefined && cutHappened) {
    const again = new FaultInjectingDevice((after as MemoryDevice).bytes, { cutAfterWrite: second, seed: seed + 1000, sectorSize });
    const parts = split(again, headerSize);
    await decryptLuks2(parts.data, opts(parts.header, extra)).catch((err) => assert.ok(err instanceof PowerCutError, String(err)));
    after = new MemoryDevice(again.powerCut ? again.crashImage() : new Uint8Array(again.bytes));
  }
  const { header, data } = split(after, headerSize);
  const st = await readLuks2Headers(header).catch((err) => assert.fail(`crash after write ${cut}: header does not open: ${err}`));
  const recorded = decodeReencryptState(st.state.metadata) !== undefined;
  // A cut before the init write leaves the volume as it was: start again; else resume (or
  // only drop the tail, after the final header).
  await decryptLuks2(data, opts(header, { ...extra, ...(recorded ? { resumeOnly: true } : {}) }));
  const out = new Uint8Array(data.size);
  await data.read(out, 0);
  return { data: out, cutHappened };
}

const cases: Array<[string, boolean, Resilience, number, Partial<DecryptOptions>]> = [
  ['detached, checksum, 64 KiB zones', false, 'checksum', 4096, {}],
  ['detached, journal, 128 KiB zones in 32 KiB pieces', false, 'journal', 512, { hotzoneSize: 128 * 1024, pieceBytes: 32 * 1024 }],
  ['detached, none (signal-safe only: checks the header survives)', false, 'none', 4096, {}],
  ['data shift, datashift-checksum, 64 KiB moved segment, 32 KiB pieces', true, 'checksum', 4096, { pieceBytes: 32 * 1024 }],
  ['data shift, datashift-journal, 128 KiB moved segment', true, 'journal', 512, { hotzoneSize: 128 * 1024 }],
];
for (const [label, shifted, resilience, torn, extra] of cases) {
  test(`power cut after EVERY write of a decryption (${label}, writes torn at ${torn} bytes): resume gives the original plaintext`, async () => {
    const v = shifted ? await attachedVolume(384 * 1024) : await detachedVolume(256 * 1024);
    const header = shifted ? (v as { exported: Uint8Array }).exported : (v as { header: Uint8Array }).header;
    const image = joined(header, v.data);
    let cut = 1;
    for (; ; cut++) {
      const { data, cutHappened } = await crashAndResume(image, header.length, cut, cut * 7 + 1, torn, { resilience, ...extra });
      if (resilience !== 'none' || !cutHappened) equalPlain(data.subarray(0, v.plain.length), v.plain, `power cut after write ${cut}`);
      if (shifted) assert.deepEqual(data.subarray(v.plain.length), new Uint8Array(data.length - v.plain.length), `tail after cut ${cut}`);
      if (!cutHappened) break;
    }
    assert.ok(cut > 20, `only ${cut} write boundaries`);
  });
}

test('power cuts at random writes of a larger decryption (both layouts, several seeds), with a second cut during the resume', async () => {
  for (const shifted of [false, true]) {
    const v = shifted ? await attachedVolume(3 * 1024 * 1024, 1024 * 1024) : await detachedVolume(3 * 1024 * 1024);
    const header = shifted ? (v as { exported: Uint8Array }).exported : (v as { header: Uint8Array }).header;
    const image = joined(header, v.data);
    const extra: Partial<DecryptOptions> = { hotzoneSize: shifted ? 256 * 1024 : 512 * 1024, pieceBytes: 128 * 1024 };
    const probe = new FaultInjectingDevice(image);
    const parts = split(probe, header.length);
    await decryptLuks2(parts.data, opts(parts.header, extra));
    const total = probe.writes;
    for (const resilience of ['checksum', 'journal'] as Resilience[]) {
      for (let seed = 1; seed <= 5; seed++) {
        const cut = 1 + ((seed * 2654435761) % total);
        const { data } = await crashAndResume(image, header.length, cut, seed, 4096, { ...extra, resilience }, 1 + (seed % 7));
        equalPlain(data.subarray(0, v.plain.length), v.plain, `${shifted ? 'shift' : 'detached'} ${resilience} seed ${seed} cut ${cut}`);
      }
    }
  }
});

// --- interop with cryptsetup 2.6 on image files ---

const skip = needTools('cryptsetup');
const CS_SIZE = 24 << 20;

async function onFiles<T>(vol: string, hdr: string, fn: (data: FileDevice, header: FileDevice) => Promise<T>): Promise<T> {
  const data = await FileDevice.open(vol);
  try {
    const header = await FileDevice.open(hdr);
    try {
      return await fn(data, header);
    } finally {
      await header.close();
    }
  } finally {
    await data.close();
  }
}

/** A cryptsetup volume with random plaintext: detached header (data offset 0) or attached (data offset 4 MiB). */
async function csVolume(dir: string, detached: boolean, size = CS_SIZE): Promise<{ vol: string; hdr: string; keyFile: string; plain: Uint8Array }> {
  const vol = join(dir, 'vol.img');
  const hdr = join(dir, detached ? 'hdr.img' : 'exported.hdr');
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, PASS);
  for (const f of [vol, hdr]) rmSync(f, { force: true });
  writeFileSync(vol, '');
  run('truncate', ['-s', String(size), vol]);
  const layout = detached ? ['--header', hdr] : ['--offset', '8192', '--luks2-keyslots-size', '2M'];
  run('cryptsetup', ['luksFormat', '--type', 'luks2', '--batch-mode', ...CS_FAST, '--key-file', keyFile, ...layout, vol]);
  const file = await FileDevice.open(vol);
  const header = detached ? await FileDevice.open(hdr) : undefined;
  try {
    const volume = await LuksVolume.open(file, header ? { headerDevice: header } : {});
    const { key } = await volume.unlock(Passphrase.fromString(PASS));
    const plain = await fill(file, volume, key);
    await file.flush();
    return { vol, hdr, keyFile, plain };
  } finally {
    await header?.close();
    await file.close();
  }
}

/** brickcrypt's export of an attached header (what `cryptsetup reencrypt --decrypt --header FILE` does first). */
async function exportHeader(vol: string, hdr: string): Promise<void> {
  const dev = await FileDevice.open(vol, { readOnly: true });
  try {
    writeFileSync(hdr, (await luks2HeaderArea(dev)).bytes);
  } finally {
    await dev.close();
  }
}

function plainOf(vol: string, plain: Uint8Array, label: string): void {
  const got = readFileSync(vol);
  equalPlain(got.subarray(0, plain.length), plain, label);
}

function csDecrypt(vol: string, hdr: string, keyFile: string, args: string[]): void {
  run('cryptsetup', ['reencrypt', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, '--header', hdr, ...args, vol]);
}

/** cryptsetup's view of a finished decryption: one linear segment, no keyslot, no requirement. */
function cryptsetupSeesPlain(hdr: string): void {
  const m = cryptsetupMetadata(hdr);
  assert.equal(m.config.requirements, undefined);
  assert.deepEqual(Object.values(m.segments).map((s: any) => s.type), ['linear']);
  assert.deepEqual(Object.keys(m.keyslots), []);
}

for (const detached of [true, false]) {
  const what = detached ? 'detached header' : 'exported header, data shift';
  for (const resilience of ['checksum', 'journal'] as Resilience[]) {
    const hz = detached ? 256 * 1024 : 1024 * 1024;
    test(`interop (${what}, ${resilience}): brickcrypt --init-only and brickcrypt stopped part-way -> cryptsetup reencrypt --resume-only finishes`, { skip }, async () => {
      const { dir, cleanup } = tempDir();
      try {
        let v = await csVolume(dir, detached);
        if (!detached) await exportHeader(v.vol, v.hdr);
        await onFiles(v.vol, v.hdr, (d, h) => decryptLuks2(d, opts(h, { resilience, hotzoneSize: hz, initOnly: true })));
        csDecrypt(v.vol, v.hdr, v.keyFile, ['--resume-only']);
        plainOf(v.vol, v.plain, 'cryptsetup resumed brickcrypt --init-only');
        cryptsetupSeesPlain(v.hdr);
        v = await csVolume(dir, detached);
        if (!detached) await exportHeader(v.vol, v.hdr);
        const ac = new AbortController();
        let zones = 0;
        await assert.rejects(onFiles(v.vol, v.hdr, (d, h) => decryptLuks2(d, opts(h, { resilience, hotzoneSize: hz, signal: ac.signal, onProgress: () => (++zones === 3 ? ac.abort() : undefined) }))), CancelledError);
        assert.ok(Object.keys(cryptsetupMetadata(v.hdr).segments).length >= 4);
        csDecrypt(v.vol, v.hdr, v.keyFile, ['--resume-only']);
        plainOf(v.vol, v.plain, 'cryptsetup resumed brickcrypt stopped');
        cryptsetupSeesPlain(v.hdr);
      } finally {
        cleanup();
      }
    });
  }

  test(`interop (${what}): cryptsetup reencrypt --decrypt --init-only, and cryptsetup killed mid-run -> brickcrypt finishes`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      let v = await csVolume(dir, detached);
      csDecrypt(v.vol, v.hdr, v.keyFile, ['--decrypt', '--init-only']);
      let r = await onFiles(v.vol, v.hdr, (d, h) => decryptLuks2(d, opts(h, { resumeOnly: true })));
      assert.equal(r.finished, true);
      assert.equal(r.resilience, detached ? 'checksum' : 'datashift-checksum');
      plainOf(v.vol, v.plain, 'brickcrypt finished cryptsetup --init-only');
      if (!detached) assert.equal(statSync(v.vol).size, v.plain.length);
      cryptsetupSeesPlain(v.hdr);
      let killed = false;
      for (const delay of [150, 80, 300, 40, 600]) {
        v = await csVolume(dir, detached, 96 << 20);
        const extra = detached ? ['--hotzone-size', '1M'] : [];
        const child = spawn('cryptsetup', ['reencrypt', '--decrypt', ...CS_OFFLINE, ...CS_FAST, '--key-file', v.keyFile, '--header', v.hdr, ...extra, v.vol], { stdio: 'ignore' });
        const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
        let running = true;
        void exited.then(() => (running = false));
        // Kill it once the state is recorded (the header names the requirement), a little later.
        while (running && !(existsSync(v.hdr) && readFileSync(v.hdr).subarray(0, 32768).includes('online-reencrypt'))) await sleep(2);
        await sleep(delay);
        child.kill('SIGKILL');
        const code = await exited;
        if (code === 0) continue;
        const m = cryptsetupMetadata(v.hdr);
        // Still recorded, and some data already plaintext (an active linear segment).
        if (m.config.requirements === undefined || !Object.values(m.segments).some((x: any) => x.type === 'linear' && !x.flags?.some((f: string) => f.startsWith('backup-')))) continue;
        killed = true;
        break;
      }
      assert.ok(killed, 'cryptsetup was never caught mid-run');
      r = await onFiles(v.vol, v.hdr, (d, h) => decryptLuks2(d, opts(h, { resumeOnly: true })));
      assert.equal(r.finished, true);
      // cryptsetup got part of the way: brickcrypt did less than all of it.
      assert.ok(r.bytes < r.total, `brickcrypt decrypted ${r.bytes} of ${r.total} bytes`);
      plainOf(v.vol, v.plain, 'brickcrypt finished a killed cryptsetup');
      cryptsetupSeesPlain(v.hdr);
    } finally {
      cleanup();
    }
  });
}

// --- the CLI: `brickcrypt reencrypt --decrypt` ---

const CLI_FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];

test('CLI: reencrypt --decrypt of an attached volume: plain file of the payload size, temporary header gone, LUKS commands refuse', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const v = await csVolume(dir, false);
    const wrong = join(dir, 'wrong');
    writeFileSync(wrong, 'nope');
    const before = readFileSync(v.vol);
    let r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', wrong, ...CLI_FAST]);
    assert.equal(r.status, EXIT_CODES.permission, r.stderr);
    assert.equal(existsSync(`${v.vol}.decrypt-header`), false, 'the export of a refused run is removed');
    r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, '--resume-only']);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, '--resilience', 'none']);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, '--header', v.vol]);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    const lock = await VolumeLock.acquire(v.vol);
    try {
      r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, ...CLI_FAST]);
      assert.equal(r.status, EXIT_CODES.busy, r.stderr);
    } finally {
      await lock.release();
    }
    assert.deepEqual(readFileSync(v.vol), before);
    r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, ...CLI_FAST, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const done = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(done.finished, true);
    assert.equal(done.headerRemoved, true);
    assert.equal(done.truncated, true);
    equalPlain(readFileSync(v.vol), v.plain, 'CLI decrypt');
    assert.equal(existsSync(`${v.vol}.decrypt-header`), false);
    assert.notEqual(runCli(['dump', v.vol]).status, 0);
    assert.notEqual(runCli(['reencrypt', v.vol, '--key-file', v.keyFile]).status, 0);
    assert.notEqual(runStatus('cryptsetup', ['isLuks', v.vol]).status, 0);
  } finally {
    cleanup();
  }
});

test('CLI: reencrypt --decrypt --header FILE (attached: exported there; detached: used in place); the header is kept in cryptsetup\'s finished state', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    for (const detached of [false, true]) {
      const v = await csVolume(dir, detached);
      const r = runCli(['reencrypt', '--decrypt', v.vol, '--header', v.hdr, '--key-file', v.keyFile, ...CLI_FAST, '--hotzone-size', '1M']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /decryption finished/);
      equalPlain(readFileSync(v.vol), v.plain, detached ? 'detached' : 'exported');
      cryptsetupSeesPlain(v.hdr);
    }
  } finally {
    cleanup();
  }
});

/** Starts the CLI and sends `signal` `delay` ms after `ready()` first holds (polled every 2 ms). */
async function signalWhen(args: string[], signal: NodeJS.Signals, ready: () => boolean, delay: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  let running = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('exit', (code, sig) => {
      running = false;
      resolve({ code, signal: sig, stderr });
    }),
  );
  while (running && !ready()) await sleep(2);
  await sleep(delay);
  if (running) child.kill(signal);
  return exited;
}

const headOf = (path: string): Buffer => (existsSync(path) ? readFileSync(path).subarray(0, 32768) : Buffer.alloc(0));

test('CLI: SIGINT stops --decrypt at a resumable point (exit 130); kill -9 at random instants, finished by brickcrypt and by cryptsetup', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const v = await csVolume(dir, false, 320 << 20);
    const hdr = `${v.vol}.decrypt-header`;
    const args = ['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, ...CLI_FAST, '--workers', '1'];
    // SIGINT once the state is recorded (the header file names the requirement).
    const r = await signalWhen(args, 'SIGINT', () => headOf(hdr).includes('online-reencrypt'), 100);
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /resume with `brickcrypt reencrypt --resume-only/);
    assert.ok(cryptsetupMetadata(hdr).config.requirements !== undefined);
    let kills = 0;
    const vcopy = join(dir, 'copy.img');
    const hcopy = join(dir, 'copy.hdr');
    for (let i = 0; i < 4 && existsSync(hdr); i++) {
      // kill -9 a resume at a random instant after its first header write.
      const before = headOf(hdr);
      const k = await signalWhen(['reencrypt', '--resume-only', v.vol, '--key-file', v.keyFile, '--workers', '1'], 'SIGKILL', () => !headOf(hdr).equals(before), Math.floor(Math.random() * 120));
      if (k.signal !== 'SIGKILL') break;
      kills++;
      // Every killed state is also finished by cryptsetup, on a copy.
      writeFileSync(vcopy, readFileSync(v.vol));
      writeFileSync(hcopy, readFileSync(hdr));
      const m = cryptsetupMetadata(hcopy);
      if (m.config.requirements !== undefined) {
        if (Object.values(m.segments).some((s: any) => s.flags?.includes('in-reencryption'))) run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', v.keyFile, '--header', hcopy, vcopy]);
        csDecrypt(vcopy, hcopy, v.keyFile, ['--resume-only']);
        plainOf(vcopy, v.plain, `cryptsetup after kill ${kills}`);
      }
    }
    assert.ok(kills >= 2, `only ${kills} kills landed`);
    // A plain `reencrypt` (no --decrypt) finds the recorded decryption by its header file.
    if (existsSync(hdr)) {
      const res = runCli(['reencrypt', v.vol, '--key-file', v.keyFile]);
      assert.equal(res.status, 0, res.stderr);
    }
    assert.equal(existsSync(hdr), false);
    equalPlain(readFileSync(v.vol), v.plain, 'final');
  } finally {
    cleanup();
  }
});

for (const detached of [true, false]) {
  test(`interop (${detached ? 'detached header' : 'exported header, data shift'}): brickcrypt loses power inside a hot zone -> cryptsetup repair + reencrypt --resume-only finish it`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const v = await csVolume(dir, detached);
      if (!detached) await exportHeader(v.vol, v.hdr);
      const hdrBytes = new Uint8Array(readFileSync(v.hdr));
      const image = joined(hdrBytes, new Uint8Array(readFileSync(v.vol)));
      const extra: Partial<DecryptOptions> = { hotzoneSize: 1 << 20 };
      // Find a cut that leaves an in-reencryption segment (the data write of a zone under way).
      let found = false;
      for (let cut = 6; cut < 120 && !found; cut += 2) {
        const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut, sectorSize: 4096 });
        const parts = split(dev, hdrBytes.length);
        try {
          await decryptLuks2(parts.data, opts(parts.header, extra));
          break;
        } catch (err) {
          assert.ok(err instanceof PowerCutError, String(err));
        }
        const crashed = dev.crashImage();
        const { state } = await readLuks2Headers(new MemoryDevice(crashed.subarray(0, hdrBytes.length)));
        if (!Object.values(state.metadata.segments).some((s) => s.flags?.includes('in-reencryption'))) continue;
        found = true;
        writeFileSync(v.hdr, crashed.subarray(0, hdrBytes.length));
        writeFileSync(v.vol, crashed.subarray(hdrBytes.length));
      }
      assert.ok(found, 'no crash inside a hot zone found');
      run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', v.keyFile, '--header', v.hdr, v.vol]);
      csDecrypt(v.vol, v.hdr, v.keyFile, ['--resume-only']);
      plainOf(v.vol, v.plain, 'cryptsetup recovered brickcrypt');
      cryptsetupSeesPlain(v.hdr);
    } finally {
      cleanup();
    }
  });
}

test('LUKS1: the header is exported as its LUKS2 conversion and decrypted with the data shift; cryptsetup resumes brickcrypt --init-only of it', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    for (const cs of [false, true]) {
      const vol = join(dir, 'v1.img');
      const keyFile = join(dir, 'key');
      writeFileSync(keyFile, PASS);
      rmSync(vol, { force: true });
      rmSync(`${vol}.decrypt-header`, { force: true });
      writeFileSync(vol, '');
      run('truncate', ['-s', String(12 << 20), vol]);
      run('cryptsetup', ['luksFormat', '--type', 'luks1', '--batch-mode', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, vol]);
      const file = await FileDevice.open(vol);
      let plain: Uint8Array;
      try {
        const volume = await LuksVolume.open(file);
        plain = await fill(file, volume, (await volume.unlock(Passphrase.fromString(PASS))).key);
      } finally {
        await file.close();
      }
      const before = readFileSync(vol);
      const r = runCli(['reencrypt', '--decrypt', vol, '--key-file', keyFile, ...CLI_FAST, ...(cs ? ['--init-only'] : [])]);
      assert.equal(r.status, 0, r.stderr);
      if (cs) {
        // Only the old header area (where the moved segment went) changed.
        const shift = Number(cryptsetupMetadata(`${vol}.decrypt-header`).keyslots['1']?.area?.shift_size ?? 0);
        assert.ok(shift > 0);
        assert.deepEqual(readFileSync(vol).subarray(shift), before.subarray(shift));
        csDecrypt(vol, `${vol}.decrypt-header`, keyFile, ['--resume-only']);
      }
      equalPlain(readFileSync(vol).subarray(0, plain.length), plain, cs ? 'cryptsetup finished' : 'brickcrypt');
      if (!cs) {
        assert.equal(statSync(vol).size, plain.length);
        assert.equal(existsSync(`${vol}.decrypt-header`), false);
      }
    }
  } finally {
    cleanup();
  }
});

test('CLI: a run that stopped after the export (plain header file, volume untouched, a stale .partial) is started again from the header file', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const v = await csVolume(dir, false);
    const hdr = `${v.vol}.decrypt-header`;
    await exportHeader(v.vol, hdr);
    writeFileSync(`${hdr}.partial`, 'torn');
    const r = runCli(['reencrypt', '--decrypt', v.vol, '--key-file', v.keyFile, ...CLI_FAST]);
    assert.equal(r.status, 0, r.stderr);
    equalPlain(readFileSync(v.vol), v.plain, 'restarted from the export');
    assert.equal(existsSync(hdr), false);
    assert.equal(existsSync(`${hdr}.partial`), false);
  } finally {
    cleanup();
  }
});
