/**
 * Corrupted-header corpus: each mutation of a valid LUKS1/LUKS2 volume must be rejected with a
 * typed error, and opening it (writable!) must leave the file unchanged. A damaged primary
 * LUKS2 copy alone is recovered from the secondary and rewritten (checked with cryptsetup).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../../src/devices/file-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';
import { BrickcryptError, CorruptHeaderError, UnknownFormatError } from '../../src/errors.js';
import { LUKS2_OFFSETS, computeLuks2Checksum, verifyLuks2Checksum } from '../../src/formats/luks2/binary-header.js';
import { parseLuks2Json, serializeLuks2Json, type Luks2Metadata } from '../../src/formats/luks2/metadata.js';
import { needTools, runStatus, tempDir } from '../helpers/tools.js';

const PASS = 'pass';
const MIB = 1024 * 1024;

async function freshImage(type: 'luks1' | 'luks2'): Promise<Uint8Array> {
  const dev = new MemoryDevice(type === 'luks1' ? 3 * MIB : 2 * MIB);
  const { key } = await LuksVolume.format(dev, {
    type,
    passphrase: Passphrase.fromString(PASS),
    pbkdf: 'pbkdf2',
    iterations: 1000,
    ...(type === 'luks2' ? { dataOffset: MIB } : {}),
  });
  key.wipe();
  return dev.bytes;
}

const be32 = (b: Uint8Array, off: number, v: number) => new DataView(b.buffer, b.byteOffset).setUint32(off, v);

/** Rewrites the JSON of both LUKS2 copies (with valid checksums) so only the metadata rules can reject it. */
function editJson(b: Uint8Array, edit: (m: Luks2Metadata & Record<string, any>) => void, raw?: (text: string) => string): void {
  for (const off of [0, 16384]) {
    const area = b.subarray(off, off + 16384);
    const parsed = parseLuks2Json(area.subarray(4096));
    edit(parsed.metadata as Luks2Metadata & Record<string, any>);
    let json = serializeLuks2Json(parsed.metadata, 12288);
    if (raw) {
      const text = raw(Buffer.from(json.subarray(0, json.indexOf(0))).toString('utf8'));
      json = new Uint8Array(12288);
      json.set(Buffer.from(text, 'utf8').subarray(0, 12288));
    }
    area.set(json, 4096);
    area.set(computeLuks2Checksum(area), LUKS2_OFFSETS.checksum);
  }
}

function binEdit(b: Uint8Array, edit: (copy: Uint8Array) => void, fixChecksum = true): void {
  for (const off of [0, 16384]) {
    const area = b.subarray(off, off + 16384);
    edit(area);
    if (fixChecksum) area.set(computeLuks2Checksum(area), LUKS2_OFFSETS.checksum);
  }
}

type Case = { name: string; type: 'luks1' | 'luks2'; mutate: (b: Uint8Array) => Uint8Array | void; error: new (...a: any[]) => BrickcryptError };

const CASES: Case[] = [
  { name: 'LUKS1 bad magic', type: 'luks1', mutate: (b) => void (b[0] = 0x4d), error: UnknownFormatError },
  { name: 'LUKS1 version 3', type: 'luks1', mutate: (b) => void (b[7] = 3), error: UnknownFormatError },
  { name: 'LUKS1 key-bytes 0', type: 'luks1', mutate: (b) => be32(b, 108, 0), error: CorruptHeaderError },
  { name: 'LUKS1 key-bytes huge', type: 'luks1', mutate: (b) => be32(b, 108, 0x7fffffff), error: CorruptHeaderError },
  { name: 'LUKS1 stripes 3999', type: 'luks1', mutate: (b) => be32(b, 208 + 44, 3999), error: CorruptHeaderError },
  { name: 'LUKS1 overlapping keyslots', type: 'luks1', mutate: (b) => be32(b, 208 + 48 + 40, 8), error: CorruptHeaderError },
  { name: 'LUKS1 keyslot inside the header', type: 'luks1', mutate: (b) => be32(b, 208 + 40, 0), error: CorruptHeaderError },
  { name: 'LUKS1 keyslot past the payload', type: 'luks1', mutate: (b) => be32(b, 208 + 7 * 48 + 40, 0x00ffffff), error: CorruptHeaderError },
  { name: 'LUKS1 payload offset past device end', type: 'luks1', mutate: (b) => be32(b, 104, 0x7fffffff), error: CorruptHeaderError },
  { name: 'LUKS1 invalid keyslot state', type: 'luks1', mutate: (b) => be32(b, 208, 0x12345678), error: CorruptHeaderError },
  { name: 'LUKS1 empty cipher name', type: 'luks1', mutate: (b) => b.fill(0, 8, 40), error: CorruptHeaderError },
  { name: 'LUKS1 truncated file', type: 'luks1', mutate: (b) => b.slice(0, 300), error: CorruptHeaderError },
  { name: 'LUKS2 bad magic in both copies', type: 'luks2', mutate: (b) => binEdit(b, (c) => void (c[0] ^= 0xff)), error: UnknownFormatError },
  { name: 'LUKS2 checksum mismatch in both copies', type: 'luks2', mutate: (b) => binEdit(b, (c) => void (c[5000] ^= 1), false), error: CorruptHeaderError },
  { name: 'LUKS2 hdr_size absurd', type: 'luks2', mutate: (b) => binEdit(b, (c) => new DataView(c.buffer, c.byteOffset).setBigUint64(8, 1n << 40n)), error: CorruptHeaderError },
  { name: 'LUKS2 hdr_offset wrong', type: 'luks2', mutate: (b) => binEdit(b, (c) => new DataView(c.buffer, c.byteOffset).setBigUint64(256, 12345n)), error: CorruptHeaderError },
  { name: 'LUKS2 invalid JSON', type: 'luks2', mutate: (b) => editJson(b, () => {}, (t) => t.slice(0, -3)), error: CorruptHeaderError },
  { name: 'LUKS2 JSON not an object', type: 'luks2', mutate: (b) => editJson(b, () => {}, () => '[1,2,3]'), error: CorruptHeaderError },
  { name: 'LUKS2 oversized JSON (no NUL)', type: 'luks2', mutate: (b) => editJson(b, () => {}, (t) => t + ' '.repeat(20000)), error: CorruptHeaderError },
  { name: 'LUKS2 json_size mismatch', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.config.json_size = '4096')), error: CorruptHeaderError },
  { name: 'LUKS2 stripes 3999', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.af!.stripes = 3999)), error: CorruptHeaderError },
  { name: 'LUKS2 keyslot area out of range', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.area.offset = '99999999999')), error: CorruptHeaderError },
  { name: 'LUKS2 keyslot area inside the header', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.area.offset = '4096')), error: CorruptHeaderError },
  {
    name: 'LUKS2 overlapping keyslot areas',
    type: 'luks2',
    mutate: (b) =>
      editJson(b, (m) => {
        m.keyslots['1'] = structuredClone(m.keyslots['0']!);
        m.digests['0']!.keyslots.push('1');
      }),
    error: CorruptHeaderError,
  },
  { name: 'LUKS2 offset as a number', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.area.offset = 32768 as any)), error: CorruptHeaderError },
  { name: 'LUKS2 negative size string', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.area.size = '-1')), error: CorruptHeaderError },
  { name: 'LUKS2 absurd keyslots_size', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.config.keyslots_size = '18446744073709551615')), error: CorruptHeaderError },
  { name: 'LUKS2 bad base64 salt', type: 'luks2', mutate: (b) => editJson(b, (m) => ((m.keyslots['0']!.kdf as any).salt = 'not*base64')), error: CorruptHeaderError },
  { name: 'LUKS2 bad base64 digest', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.digests['0']!.digest = 'abc')), error: CorruptHeaderError },
  { name: 'LUKS2 digest with missing keyslot', type: 'luks2', mutate: (b) => editJson(b, (m) => m.digests['0']!.keyslots.push('7')), error: CorruptHeaderError },
  { name: 'LUKS2 digest with missing segment', type: 'luks2', mutate: (b) => editJson(b, (m) => m.digests['0']!.segments.push('3')), error: CorruptHeaderError },
  { name: 'LUKS2 token with missing keyslot', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.tokens['0'] = { type: 'x', keyslots: ['9'] })), error: CorruptHeaderError },
  { name: 'LUKS2 key_size 0', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.key_size = 0)), error: CorruptHeaderError },
  { name: 'LUKS2 key_size huge', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.keyslots['0']!.key_size = 1 << 20)), error: CorruptHeaderError },
  { name: 'LUKS2 keyslot id out of range', type: 'luks2', mutate: (b) => editJson(b, (m) => ((m.keyslots as any)['40'] = m.keyslots['0'])), error: CorruptHeaderError },
  { name: 'LUKS2 segment past device end', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.segments['0']!.offset = String(1 << 30))), error: CorruptHeaderError },
  { name: 'LUKS2 segment overlaps keyslots', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.segments['0']!.offset = '65536')), error: CorruptHeaderError },
  { name: 'LUKS2 sector size 1000', type: 'luks2', mutate: (b) => editJson(b, (m) => (m.segments['0']!.sector_size = 1000)), error: CorruptHeaderError },
  { name: 'LUKS2 missing config section', type: 'luks2', mutate: (b) => editJson(b, (m) => delete (m as any).config), error: CorruptHeaderError },
  { name: 'LUKS2 truncated file', type: 'luks2', mutate: (b) => b.slice(0, 20000), error: CorruptHeaderError },
];

test('corrupted header corpus: typed errors, file unchanged', async (t) => {
  const { dir, cleanup } = tempDir();
  try {
    const base = { luks1: await freshImage('luks1'), luks2: await freshImage('luks2') };
    for (const c of CASES) {
      await t.test(c.name, async () => {
        let bytes: Uint8Array = new Uint8Array(base[c.type]);
        bytes = c.mutate(bytes) ?? bytes;
        const path = join(dir, 'case.img');
        writeFileSync(path, bytes);
        const before = createHash('sha256').update(readFileSync(path)).digest('hex');
        const dev = await FileDevice.open(path);
        try {
          await assert.rejects(LuksVolume.open(dev), (err: unknown) => {
            assert.ok(err instanceof c.error, `${c.name}: got ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
            return true;
          });
        } finally {
          await dev.close();
        }
        assert.equal(createHash('sha256').update(readFileSync(path)).digest('hex'), before);
      });
    }
    // The unmutated images open and unlock.
    for (const type of ['luks1', 'luks2'] as const) {
      const vol = await LuksVolume.open(new MemoryDevice(new Uint8Array(base[type])));
      (await vol.unlock(Passphrase.fromString(PASS))).key.wipe();
    }
  } finally {
    cleanup();
  }
});

test('a damaged primary LUKS2 copy is recovered from the secondary; rewritten only when writable', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const good = await freshImage('luks2');
    const damaged = new Uint8Array(good);
    damaged[4096 + 10] ^= 0x20; // inside the primary JSON: checksum mismatch
    const path = join(dir, 'v.img');
    writeFileSync(path, damaged);
    const hash = () => createHash('sha256').update(readFileSync(path)).digest('hex');
    const before = hash();
    const ro = await FileDevice.open(path, { readOnly: true });
    try {
      const vol = await LuksVolume.open(ro, { readOnly: true });
      (await vol.unlock(Passphrase.fromString(PASS))).key.wipe();
    } finally {
      await ro.close();
    }
    assert.equal(hash(), before, 'read-only open never writes');
    const rw = await FileDevice.open(path);
    try {
      await LuksVolume.open(rw);
    } finally {
      await rw.close();
    }
    const after = readFileSync(path);
    const same = (a: number, b: number) => Buffer.compare(after.subarray(a, b), Buffer.from(good.subarray(a, b))) === 0;
    assert.ok(same(4096, 16384), 'primary JSON area rewritten from the secondary');
    assert.ok(same(16384, 32768), 'secondary untouched');
    assert.ok(same(0, 104), 'primary magic, version, sizes, seqid, label and checksum algorithm restored');
    assert.ok(verifyLuks2Checksum(new Uint8Array(after.subarray(0, 16384))), 'primary checksum valid again');
    writeFileSync(join(dir, 'k'), PASS);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'k'), path]).status, 0);
    const dump = runStatus('cryptsetup', ['luksDump', '--debug', path]);
    assert.equal(dump.status, 0);
    assert.doesNotMatch(dump.stdout + dump.stderr, /checksum error|Repairing|not valid/i);
  } finally {
    cleanup();
  }
});

test('a damaged secondary is rewritten from the primary; an older primary loses to a newer secondary', async () => {
  const good = await freshImage('luks2');
  const damaged = new Uint8Array(good);
  damaged[16384 + 4096 + 3] ^= 0x01;
  const dev = new MemoryDevice(damaged);
  await LuksVolume.open(dev);
  assert.ok(Buffer.compare(Buffer.from(dev.bytes.subarray(16384 + 4096, 32768)), Buffer.from(good.subarray(16384 + 4096, 32768))) === 0);
  assert.ok(verifyLuks2Checksum(dev.bytes.subarray(16384, 32768)), 'secondary checksum valid again');
  // Make the secondary newer (a keyslot added) while the primary keeps the old state.
  const older = new Uint8Array(good);
  const newer = new MemoryDevice(new Uint8Array(good));
  const vol = await LuksVolume.open(newer);
  await vol.addKey(Passphrase.fromString(PASS), Passphrase.fromString('second'), { pbkdf: 'pbkdf2', iterations: 1000 });
  const mixed = new Uint8Array(newer.bytes);
  mixed.set(older.subarray(0, 16384), 0);
  const ro = await LuksVolume.open(new MemoryDevice(mixed, true), { readOnly: true });
  assert.deepEqual(ro.keyslots().map((k) => k.id), [0, 1], 'the secondary (higher seqid) wins');
  const rw = new MemoryDevice(new Uint8Array(mixed));
  await LuksVolume.open(rw);
  assert.ok(Buffer.compare(Buffer.from(rw.bytes.subarray(4096, 16384)), Buffer.from(newer.bytes.subarray(4096, 16384))) === 0, 'primary brought up to date');
});

test('fuzz: open/dump/unlock of randomly damaged volumes throw only BrickcryptError', async () => {
  let seed = 0xc0ffee;
  const rnd = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  const bases = { luks1: await freshImage('luks1'), luks2: await freshImage('luks2') };
  const started = Date.now();
  let opened = 0;
  for (let i = 0; i < 400 && Date.now() - started < 30_000; i++) {
    const type = i % 2 === 0 ? 'luks1' : 'luks2';
    const bytes = new Uint8Array(bases[type]);
    const n = 1 + Math.floor(rnd() * 4);
    for (let j = 0; j < n; j++) {
      // LUKS1: the 592-byte header; LUKS2: JSON text of the primary with its checksum fixed so the metadata is exercised.
      const pos = type === 'luks1' ? Math.floor(rnd() * 592) : 4096 + Math.floor(rnd() * (bytes.indexOf(0, 4096) - 4096));
      bytes[pos] = type === 'luks1' ? Math.floor(rnd() * 256) : '0123456789"{}[],:-'.charCodeAt(Math.floor(rnd() * 18));
    }
    if (type === 'luks2') {
      bytes.fill(0, 16384, 32768); // no secondary to fall back on
      bytes.set(computeLuks2Checksum(bytes.subarray(0, 16384)), LUKS2_OFFSETS.checksum);
    }
    try {
      const vol = await LuksVolume.open(new MemoryDevice(bytes, true), { readOnly: true });
      opened++;
      vol.dump();
      JSON.stringify(vol.dumpJson());
      void [vol.encryption, vol.sectorSize, vol.dataOffset, vol.payloadSize, vol.ivTweak, vol.keyBytes];
      (await vol.unlock(Passphrase.fromString(PASS))).key.wipe();
    } catch (err) {
      if (!(err instanceof BrickcryptError)) assert.fail(`iteration ${i}: untyped ${(err as Error)?.constructor?.name}: ${(err as Error)?.stack}`);
    }
  }
  assert.ok(opened > 0);
});
