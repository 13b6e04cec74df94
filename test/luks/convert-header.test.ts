/**
 * convert-header: LUKS1 <-> LUKS2 in place. Checked against cryptsetup 2.6 both ways (its result
 * and ours are compared byte for byte where cryptsetup's is deterministic), every refusal is
 * typed with nothing modified, and a power cut after any write leaves a volume that opens, as the
 * old or the new format, with every passphrase.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume, type FormatOptions } from '../../src/luks/index.js';
import { convertLuksHeader, planKeyslotMoves, validLayout } from '../../src/luks/convert-header.js';
import { readLuks2Headers, writeLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeLuks1Header, encodeLuks1Header, LUKS1_HEADER_SIZE } from '../../src/formats/luks1/header.js';
import { Passphrase } from '../../src/secret.js';
import { ConversionRefusedError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cryptsetupVolumeKeyHex, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASSES = ['first passphrase', 'second one', 'third'];

/** Volume key (hex) that each passphrase opens, in order; throws if one does not open. */
async function keysOf(dev: BlockDevice, passes = PASSES.slice(0, 2)): Promise<{ version: 1 | 2; keys: string[] }> {
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const keys: string[] = [];
  for (const p of passes) {
    const { key } = await vol.unlock(Passphrase.fromString(p));
    keys.push(Buffer.from(key.expose()).toString('hex'));
    key.wipe();
  }
  return { version: vol.version, keys };
}

/** A volume with keyslots for the first `slots.length` passphrases, in those slots. */
async function makeVolume(type: 'luks1' | 'luks2', slots: number[], extra: Partial<FormatOptions> = {}, size = 2 * MIB + 64 * 1024): Promise<Uint8Array> {
  const dev = new MemoryDevice(size);
  const { volume, key } = await LuksVolume.format(dev, { type, passphrase: Passphrase.fromString(PASSES[0]!), ...FAST, ...(type === 'luks2' ? { sectorSize: 512 } : {}), ...extra } as FormatOptions);
  if (slots[0] !== 0) {
    await volume.addKey(key, Passphrase.fromString(PASSES[0]!), { ...FAST, keyslot: slots[0]! });
    await volume.killSlot(0);
  }
  for (let i = 1; i < slots.length; i++) await volume.addKey(key, Passphrase.fromString(PASSES[i]!), { ...FAST, keyslot: slots[i]! });
  key.wipe();
  return dev.bytes;
}

async function refusal(image: Uint8Array, type: 'luks1' | 'luks2', reason: string): Promise<void> {
  const dev = new MemoryDevice(new Uint8Array(image));
  await assert.rejects(convertLuksHeader(dev, { type }), (err: unknown) => err instanceof ConversionRefusedError && err.reason === reason && err.exitCode === 1);
  assert.ok(Buffer.from(dev.bytes).equals(Buffer.from(image)), `refusal ${reason} modified nothing`);
}

test('round trip in memory: LUKS1 -> LUKS2 -> LUKS1 keeps every passphrase, the key and cryptsetup layout', async () => {
  const image = await makeVolume('luks1', [0, 2]);
  const before = await keysOf(new MemoryDevice(new Uint8Array(image)));
  const dev = new MemoryDevice(new Uint8Array(image));
  const r = await convertLuksHeader(dev, { type: 'luks2' });
  assert.deepEqual(r.keyslots, [0, 2]);
  const mid = await keysOf(dev);
  assert.equal(mid.version, 2);
  assert.deepEqual(mid.keys, before.keys);
  const json = (await LuksVolume.open(dev)).dumpJson() as { metadata: { keyslots: Record<string, { area: { offset: string } }>; config: { keyslots_size: string } } };
  assert.equal(json.metadata.keyslots['0']!.area.offset, '32768');
  assert.equal(json.metadata.keyslots['2']!.area.offset, String(32768 + 2 * 258048));
  assert.equal(json.metadata.config.keyslots_size, String(2 * MIB - 32768));
  await convertLuksHeader(dev, { type: 'luks1' });
  const back = await keysOf(dev);
  assert.equal(back.version, 1);
  assert.deepEqual(back.keys, before.keys);
  // The LUKS1 header comes back byte for byte, and so does the active key material.
  assert.ok(Buffer.from(dev.bytes.subarray(0, 4096)).equals(Buffer.from(image.subarray(0, 4096))));
  const h = decodeLuks1Header(image);
  for (const s of [0, 2]) {
    const o = h.keyslots[s]!.keyMaterialOffset * 512;
    assert.ok(Buffer.from(dev.bytes.subarray(o, o + 256000)).equals(Buffer.from(image.subarray(o, o + 256000))));
  }
});

test('the move planner: valid headers only, one sector per header write, parking when a target overlaps', () => {
  const length = 500;
  const start = [8, 512, 1016, 1520, 2024, 2528, 3032, 3536];
  const active = new Set([0, 1, 6]);
  const steps = planKeyslotMoves({ length, limit: 4096, active, start, target: new Map([...active].map((s) => [s, start[s]! + 56])) });
  assert.ok(steps);
  let header = start;
  for (const step of steps) {
    if (step.kind !== 'header') continue;
    assert.ok(validLayout(step.offsets, length, 4096));
    const changed = [step.offsets.slice(0, 6).some((o, i) => o !== header[i]), step.offsets.slice(6).some((o, i) => o !== header[6 + i])];
    assert.ok(!(changed[0] && changed[1]), 'a header step changes one sector');
    header = step.offsets;
  }
  for (const s of active) assert.equal(header[s], start[s]! + 56);
  // Eight keyslots in a packed area leave no place to park one: refused.
  assert.equal(planKeyslotMoves({ length, limit: 4096, active: new Set([0, 1, 2, 3, 4, 5, 6, 7]), start, target: new Map(start.map((o, s) => [s, o + 56])) }), undefined);
});

test('refusals are typed (stable reason, exit 1) and modify nothing', async () => {
  await refusal(await makeVolume('luks2', [0], {}, 17 * MIB), 'luks2', 'same-type');
  await refusal(await makeVolume('luks1', [0]), 'luks1', 'same-type');
  await refusal(await makeVolume('luks2', [0], { pbkdf: 'argon2id', iterations: 4, memoryKiB: 64, parallel: 1 } as Partial<FormatOptions>, 17 * MIB), 'luks1', 'keyslot-incompatible');
  await refusal(await makeVolume('luks2', [0], { sectorSize: 4096 }, 17 * MIB), 'luks1', 'sector-size');
  await refusal(await makeVolume('luks2', [0, 9], {}, 17 * MIB), 'luks1', 'keyslot-number');
  // A token (cryptsetup would refuse it the same way).
  const withToken = await makeVolume('luks2', [0], {}, 17 * MIB);
  const tdev = new MemoryDevice(withToken);
  const { state } = await readLuks2Headers(tdev);
  state.metadata.tokens['0'] = { type: 'some-token', keyslots: ['0'] };
  await writeLuks2Headers(tdev, state);
  await refusal(tdev.bytes, 'luks1', 'tokens');
  // A second digest (an unbound key or a volume key change).
  const twoDigests = await makeVolume('luks2', [0], {}, 17 * MIB);
  const ddev = new MemoryDevice(twoDigests);
  const d = await readLuks2Headers(ddev);
  d.state.metadata.digests['1'] = { ...d.state.metadata.digests['0']!, keyslots: [], segments: [] };
  await writeLuks2Headers(ddev, d.state);
  await refusal(ddev.bytes, 'luks1', 'digest');
  // QEMU's packed LUKS1 layout (payload at 4040 sectors) leaves no room for the LUKS2 headers.
  await refusal(await makeVolume('luks1', [0], { dataOffset: 4040 * 512 }), 'luks2', 'no-space');
  // A LUKS 1.0 layout whose keyslots do not start at 4 KiB.
  const old = await makeVolume('luks1', [0], { dataOffset: 4 * MIB }, 4 * MIB + 4096);
  const h = decodeLuks1Header(old);
  h.keyslots = h.keyslots.map((k) => ({ ...k, keyMaterialOffset: k.keyMaterialOffset + 8 }));
  const moved = new Uint8Array(old);
  moved.set(encodeLuks1Header(h));
  moved.copyWithin(16 * 512, 8 * 512, 8 * 512 + 8 * 504 * 512);
  assert.equal((await keysOf(new MemoryDevice(new Uint8Array(moved)), PASSES.slice(0, 1))).version, 1);
  await refusal(moved, 'luks2', 'keyslots-offset');
  // LUKSMETA metadata after the keyslots.
  const lm = await makeVolume('luks1', [0]);
  lm.set(Buffer.from('LUKSMETA'), 4040 * 512);
  await refusal(lm, 'luks2', 'luksmeta');
  // All eight LUKS1 keyslots in use: no free place to move them through safely.
  const full = await makeVolume('luks1', [0, 1, 2].concat([3, 4, 5, 6, 7]).slice(0, 3));
  const fdev = new MemoryDevice(full);
  const vol = await LuksVolume.open(fdev);
  const { key } = await vol.unlock(Passphrase.fromString(PASSES[0]!));
  for (let s = 3; s < 8; s++) await vol.addKey(key, Passphrase.fromString(`p${s}`), { ...FAST, keyslot: s });
  key.wipe();
  await refusal(fdev.bytes, 'luks2', 'no-room-for-safe-move');
});

/**
 * Power cut after every write (two torn-write seeds each): the volume opens as LUKS1 or LUKS2 and
 * both passphrases give the original volume key.
 */
for (const [from, slots, size] of [
  ['luks1', [0, 2], 2 * MIB + 64 * 1024],
  ['luks1', [1, 6], 2 * MIB + 64 * 1024],
  ['luks2', [0, 3], 17 * MIB],
] as const) {
  test(`crash safety: ${from} keyslots ${slots.join(',')} converted, power cut at every write`, async () => {
    let image = await makeVolume(from, [...slots], from === 'luks2' ? { keySizeBits: 256 } : {}, size);
    const to = from === 'luks1' ? 'luks2' : 'luks1';
    const expected = (await keysOf(new MemoryDevice(new Uint8Array(image)))).keys;
    for (const direction of [to, from] as const) {
      const clean = new FaultInjectingDevice(image);
      await convertLuksHeader(clean, { type: direction });
      const versions = new Set<number>();
      for (let cut = 1; cut <= clean.writes; cut++) {
        for (const seed of [1, 2]) {
          const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed });
          await assert.rejects(convertLuksHeader(dev, { type: direction }), PowerCutError);
          const after = await keysOf(new MemoryDevice(dev.crashImage()));
          assert.deepEqual(after.keys, expected, `cut ${cut}/${seed}`);
          versions.add(after.version);
        }
      }
      assert.deepEqual([...versions].sort(), [1, 2], 'cuts leave both the old and the new format');
      image = new Uint8Array(clean.bytes); // then back again: the round trip's tight layout
      assert.deepEqual((await keysOf(new MemoryDevice(new Uint8Array(image)))).keys, expected);
    }
  });
}

const skip = needTools('cryptsetup');

function cs(args: string[]): string {
  return run('cryptsetup', [...args, '--disable-locks']);
}

const csKey = (img: string, keyFile: string): string => cryptsetupVolumeKeyHex(img, keyFile);

for (const [cipher, bits] of [
  ['aes-xts-plain64', 512],
  ['aes-xts-plain64', 256],
  ['aes-cbc-essiv:sha256', 256],
] as const) {
  test(`interop ${cipher} ${bits}: brickcrypt's and cryptsetup's conversions agree, each opens the other's`, { skip }, async () => {
    const t = tempDir();
    try {
      const pass = PASSES.slice(0, 2).map((p, i) => {
        const f = join(t.dir, `pass${i}`);
        writeFileSync(f, p);
        return f;
      });
      const ours = join(t.dir, 'ours.img');
      const theirs = join(t.dir, 'theirs.img');
      writeFileSync(ours, '');
      truncateSync(ours, 8 * MIB);
      const fast = ['--pbkdf-force-iterations', '1000'];
      cs(['luksFormat', '-q', '--type', 'luks1', '--cipher', cipher, '--key-size', String(bits), ...fast, '--key-file', pass[0]!, ours]);
      cs(['luksAddKey', '-q', ...fast, '--key-slot', '3', '--key-file', pass[0]!, ours, pass[1]!]);
      const key = csKey(ours, pass[0]!);
      copyFileSync(ours, theirs);
      // LUKS1 -> LUKS2.
      let r = runCli(['convert-header', ours, '--type', 'luks2']);
      assert.equal(r.status, 0, r.stderr);
      cs(['convert', '-q', '--type', 'luks2', theirs]);
      const a = readFileSync(ours);
      const b = readFileSync(theirs);
      assert.ok(a.subarray(4096, 16384).equals(b.subarray(4096, 16384)), 'the LUKS2 JSON is byte-identical to cryptsetup\'s');
      const dump = cs(['luksDump', ours]);
      assert.match(dump, /Version:\s+2/);
      const meta = JSON.parse(a.subarray(4096, 16384).toString('latin1').replace(/\0+$/, '')) as { keyslots: Record<string, { area: { offset: string; size: string } }> };
      for (const id of ['0', '3']) {
        const o = Number(meta.keyslots[id]!.area.offset);
        assert.ok(a.subarray(o, o + Number(meta.keyslots[id]!.area.size)).equals(b.subarray(o, o + Number(meta.keyslots[id]!.area.size))), `keyslot ${id} material as cryptsetup moved it`);
      }
      for (const p of pass) {
        assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', p, ours]).status, 0);
      }
      assert.equal(csKey(ours, pass[1]!), key);
      const dev = await FileDevice.open(theirs, { readOnly: true });
      try {
        assert.deepEqual((await keysOf(dev)).keys, [key, key], 'brickcrypt opens cryptsetup\'s conversion');
      } finally {
        await dev.close();
      }
      // LUKS2 -> LUKS1, each on its own conversion.
      r = runCli(['convert-header', ours, '--type', 'luks1']);
      assert.equal(r.status, 0, r.stderr);
      cs(['convert', '-q', '--type', 'luks1', theirs]);
      const c = readFileSync(ours);
      const d = readFileSync(theirs);
      assert.ok(c.subarray(0, 4096).equals(d.subarray(0, 4096)), 'the LUKS1 header is byte-identical to cryptsetup\'s');
      const h = decodeLuks1Header(c.subarray(0, LUKS1_HEADER_SIZE));
      for (const s of [0, 3]) {
        const o = h.keyslots[s]!.keyMaterialOffset * 512;
        assert.ok(c.subarray(o, o + (bits / 8) * 4000).equals(d.subarray(o, o + (bits / 8) * 4000)));
      }
      for (const p of pass) assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', p, ours]).status, 0);
      assert.equal(csKey(ours, pass[1]!), key);
      // cryptsetup converts ours back to LUKS2 again (its rules accept our LUKS1 layout).
      cs(['convert', '-q', '--type', 'luks2', ours]);
      const dev2 = await FileDevice.open(ours, { readOnly: true });
      try {
        assert.deepEqual((await keysOf(dev2)).keys, [key, key]);
      } finally {
        await dev2.close();
      }
    } finally {
      t.cleanup();
    }
  });
}

test('interop: a brickcrypt LUKS2 volume (default layout) converts to LUKS1 that cryptsetup opens; refusals exit 1', { skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'v.img');
    const pass = join(t.dir, 'pass');
    writeFileSync(pass, PASSES[0]!);
    let r = runCli(['format', img, '--type', 'luks2', '--size', '1M', '--key-file', pass, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '512']);
    assert.equal(r.status, 0, r.stderr);
    r = runCli(['convert-header', img, '--type', 'luks1']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(cs(['luksDump', img]), /Version:\s+1/);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', pass, img]).status, 0);
    const before = readFileSync(img);
    r = runCli(['convert-header', img, '--type', 'luks1']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /already luks1/);
    assert.ok(before.equals(readFileSync(img)));
    const argon = join(t.dir, 'a.img');
    r = runCli(['format', argon, '--type', 'luks2', '--size', '1M', '--key-file', pass, '--pbkdf', 'argon2id', '--pbkdf-force-iterations', '4', '--pbkdf-memory', '64', '--sector-size', '512']);
    assert.equal(r.status, 0, r.stderr);
    const argonBefore = readFileSync(argon);
    r = runCli(['convert-header', argon, '--type', 'luks1']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /keyslot 0 is not LUKS1 compatible/);
    assert.ok(argonBefore.equals(readFileSync(argon)));
    // cryptsetup refuses it too.
    assert.notEqual(runStatus('cryptsetup', ['convert', '-q', '--disable-locks', '--type', 'luks1', argon]).status, 0);
  } finally {
    t.cleanup();
  }
});

test('interop: a detached LUKS1 header converts both ways like cryptsetup\'s', { skip }, async () => {
  const t = tempDir();
  try {
    const pass = join(t.dir, 'pass');
    writeFileSync(pass, PASSES[0]!);
    const data = join(t.dir, 'data.img');
    const ours = join(t.dir, 'ours.hdr');
    const theirs = join(t.dir, 'theirs.hdr');
    for (const f of [data, ours]) {
      writeFileSync(f, '');
      truncateSync(f, 4 * MIB);
    }
    cs(['luksFormat', '-q', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', pass, '--header', ours, data]);
    const key = csKey(ours, pass);
    copyFileSync(ours, theirs);
    const dataBefore = readFileSync(data);
    for (const type of ['luks2', 'luks1'] as const) {
      const r = runCli(['convert-header', data, '--header', ours, '--type', type]);
      assert.equal(r.status, 0, r.stderr);
      cs(['convert', '-q', '--type', type, '--header', theirs, data]);
      const a = readFileSync(ours);
      const b = readFileSync(theirs);
      if (type === 'luks2') assert.ok(a.subarray(4096, 16384).equals(b.subarray(4096, 16384)), 'same LUKS2 JSON');
      else assert.ok(a.subarray(0, 4096).equals(b.subarray(0, 4096)), 'same LUKS1 header');
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--header', ours, '--key-file', pass, data]).status, 0);
      assert.equal(csKey(ours, pass), key);
    }
    assert.ok(dataBefore.equals(readFileSync(data)), 'the data device is not touched');
  } finally {
    t.cleanup();
  }
});

test('interop: cryptsetup refuses the same volumes brickcrypt refuses', { skip }, async () => {
  const t = tempDir();
  try {
    const cases: Array<[string, Uint8Array, 'luks1' | 'luks2']> = [];
    cases.push(['sector-size', await makeVolume('luks2', [0], { sectorSize: 4096 }, 17 * MIB), 'luks1']);
    cases.push(['keyslot-number', await makeVolume('luks2', [0, 9], {}, 17 * MIB), 'luks1']);
    cases.push(['no-space', await makeVolume('luks1', [0], { dataOffset: 4040 * 512 }), 'luks2']);
    const withToken = new MemoryDevice(await makeVolume('luks2', [0], {}, 17 * MIB));
    const { state } = await readLuks2Headers(withToken);
    state.metadata.tokens['0'] = { type: 'some-token', keyslots: ['0'] };
    await writeLuks2Headers(withToken, state);
    cases.push(['tokens', withToken.bytes, 'luks1']);
    for (const [reason, image, type] of cases) {
      await refusal(image, type, reason);
      const img = join(t.dir, `${reason}.img`);
      writeFileSync(img, image);
      const r = runStatus('cryptsetup', ['convert', '-q', '--disable-locks', '--type', type, img]);
      assert.notEqual(r.status, 0, `cryptsetup refuses ${reason} too`);
      assert.ok(readFileSync(img).equals(Buffer.from(image)), `cryptsetup left ${reason} unmodified`);
    }
  } finally {
    t.cleanup();
  }
});

test('a volume in use (writer lock held) is refused with exit 5 and not modified', async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'v.img');
    writeFileSync(img, await makeVolume('luks1', [0]));
    const before = readFileSync(img);
    writeFileSync(`${img}.lock`, `${process.pid}\n`);
    const r = runCli(['convert-header', img, '--type', 'luks2']);
    assert.equal(r.status, 5, r.stderr);
    assert.match(r.stderr, /in use by process/);
    assert.ok(before.equals(readFileSync(img)));
  } finally {
    t.cleanup();
  }
});

test('convert-header --help has examples', () => {
  const r = runCli(['convert-header', '--help']);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /Examples:\n\s+brickcrypt convert-header vol\.img --type luks2/);
});
