/**
 * LUKS1/LUKS2 header codecs against cryptsetup's own test images: byte-exact round trips,
 * validation of every fixture, and a seeded fuzz pass where only BrickcryptError may escape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BrickcryptError } from '../../src/errors.js';
import { decodeLuks1Header, encodeLuks1Header, validateLuks1Header, LUKS1_HEADER_SIZE } from '../../src/formats/luks1/header.js';
import {
  decodeLuks2BinaryHeader,
  encodeLuks2BinaryHeader,
  validateLuks2BinaryHeader,
  verifyLuks2Checksum,
  computeLuks2Checksum,
  LUKS2_OFFSETS,
} from '../../src/formats/luks2/binary-header.js';
import { parseLuks2Json, serializeLuks2Json, validateLuks2Metadata } from '../../src/formats/luks2/metadata.js';
import { extractFixture, needFixtures, tempDir } from '../helpers/tools.js';

const skip = needFixtures();

/** Asserts byte equality, reporting the first differing offset instead of every byte. */
function sameBytes(actual: Uint8Array, expected: Uint8Array, label: string): void {
  if (Buffer.compare(actual, expected) === 0) return;
  let i = 0;
  while (i < actual.length && actual[i] === expected[i]) i++;
  assert.fail(`${label}: lengths ${actual.length}/${expected.length}, first difference at byte ${i}: ${Buffer.from(actual.subarray(i, i + 40)).toString('latin1')} | ${Buffer.from(expected.subarray(i, i + 40)).toString('latin1')}`);
}

function readHead(path: string, bytes: number): Uint8Array {
  const buf = readFileSync(path);
  return new Uint8Array(buf.buffer, buf.byteOffset, Math.min(bytes, buf.length));
}

function luks1Fixtures(dir: string): string[] {
  const files = [extractFixture('compatimage.img.xz', dir), extractFixture('compatv10image.img.xz', dir), extractFixture('valid_header_file.xz', dir)];
  extractFixture('luks1-images.tar.xz', dir);
  for (const f of readdirSync(join(dir, 'luks1-images'))) if (f.endsWith('.img')) files.push(join(dir, 'luks1-images', f));
  return files;
}

function luks2Fixtures(dir: string): string[] {
  const files = ['compatimage2.img.xz', 'luks2_keyslot_unassigned.img.xz', 'luks2_valid_hdr.img.xz'].map((f) => extractFixture(f, dir));
  extractFixture('luks2_mda_images.tar.xz', dir);
  extractFixture('luks2_header_requirements.tar.xz', dir);
  for (const f of readdirSync(dir)) if (f.startsWith('test_image_') || f.startsWith('luks2_header_requirements')) files.push(join(dir, f));
  return files;
}

test('LUKS1 fixtures: decode/encode is byte-exact and validate accepts them', { skip }, () => {
  const { dir, cleanup } = tempDir();
  try {
    const files = luks1Fixtures(dir);
    assert.equal(files.length, 15);
    for (const f of files) {
      const bytes = readHead(f, LUKS1_HEADER_SIZE);
      const h = decodeLuks1Header(bytes);
      sameBytes(encodeLuks1Header(h), bytes, f);
      validateLuks1Header(h, { headerDeviceSize: readFileSync(f).length });
    }
    const v10 = decodeLuks1Header(readHead(join(dir, 'compatv10image.img'), LUKS1_HEADER_SIZE));
    assert.equal(v10.keyslots[0]!.keyMaterialOffset, 2); // LUKS 1.0: unaligned keyslots
    assert.equal(v10.payloadOffset, 1010);
    assert.equal(v10.cipherMode, 'cbc-plain');
  } finally {
    cleanup();
  }
});

test('LUKS2 fixtures: both copies round-trip byte-exact, checksums verify, metadata validates', { skip }, () => {
  const { dir, cleanup } = tempDir();
  try {
    const files = luks2Fixtures(dir);
    assert.equal(files.length, 14);
    const hdrSizes = new Set<number>();
    for (const f of files) {
      const all = readFileSync(f);
      const bytes = new Uint8Array(all.buffer, all.byteOffset, all.length);
      const primary = decodeLuks2BinaryHeader(bytes.subarray(0, 4096));
      validateLuks2BinaryHeader(primary, { copy: 'primary', offset: 0 });
      hdrSizes.add(primary.hdrSize);
      for (const [copy, offset] of [['primary', 0], ['secondary', primary.hdrSize]] as const) {
        const area = bytes.subarray(offset, offset + primary.hdrSize);
        const bin = decodeLuks2BinaryHeader(area);
        validateLuks2BinaryHeader(bin, { copy, offset });
        assert.ok(verifyLuks2Checksum(area), `${f} ${copy} checksum`);
        const parsed = parseLuks2Json(area.subarray(4096));
        validateLuks2Metadata(parsed.metadata, { hdrSize: bin.hdrSize, dataDeviceSize: bytes.length });
        const rebuilt = new Uint8Array(bin.hdrSize);
        rebuilt.set(encodeLuks2BinaryHeader(bin));
        rebuilt.set(serializeLuks2Json(parsed.metadata, bin.hdrSize - 4096, { escapeSlashes: parsed.escapeSlashes, keyOrder: parsed.keyOrder }), 4096);
        sameBytes(rebuilt, area, `${f} ${copy} round trip`);
        const zeroed = new Uint8Array(rebuilt);
        zeroed.fill(0, LUKS2_OFFSETS.checksum, LUKS2_OFFSETS.checksum + 64);
        assert.deepEqual(computeLuks2Checksum(zeroed), bin.checksum);
      }
    }
    assert.deepEqual([...hdrSizes].sort((a, b) => a - b), [16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304]);
  } finally {
    cleanup();
  }
});

/** Small deterministic PRNG (mulberry32) so a fuzz failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function onlyTyped(fn: () => void, label: string): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof BrickcryptError)) assert.fail(`${label}: untyped ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
  }
}

test('fuzz: random byte mutations of LUKS1 and LUKS2 headers raise only BrickcryptError', { skip }, () => {
  const { dir, cleanup } = tempDir();
  try {
    const l1 = new Uint8Array(readHead(extractFixture('compatimage.img.xz', dir), LUKS1_HEADER_SIZE));
    const l2file = readFileSync(extractFixture('luks2_keyslot_unassigned.img.xz', dir));
    const l2 = new Uint8Array(l2file.subarray(0, 16384));
    const rnd = prng(0x5eed1234);
    const started = Date.now();
    let rejected = 0;
    for (let i = 0; i < 3000 && Date.now() - started < 20_000; i++) {
      const m1 = new Uint8Array(l1);
      const n = 1 + Math.floor(rnd() * 8);
      for (let j = 0; j < n; j++) m1[Math.floor(rnd() * m1.length)] = Math.floor(rnd() * 256);
      onlyTyped(() => {
        const h = decodeLuks1Header(m1);
        validateLuks1Header(h, { headerDeviceSize: 14434816, dataDeviceSize: 14434816 });
        encodeLuks1Header(h);
      }, `luks1 #${i}`);
      const m2 = new Uint8Array(l2);
      // Mutate the binary header or the JSON text (the checksum is recomputed half the time so the JSON checks run).
      const jsonEnd = m2.indexOf(0, 4096);
      for (let j = 0; j < n; j++) {
        const pos = rnd() < 0.3 ? Math.floor(rnd() * 512) : 4096 + Math.floor(rnd() * (jsonEnd - 4096));
        m2[pos] = rnd() < 0.5 ? Math.floor(rnd() * 256) : '0123456789{}[]",:ab-'.charCodeAt(Math.floor(rnd() * 20));
      }
      if (rnd() < 0.5) m2.set(computeLuks2Checksum(m2), LUKS2_OFFSETS.checksum);
      onlyTyped(() => {
        const bin = decodeLuks2BinaryHeader(m2);
        validateLuks2BinaryHeader(bin, { copy: 'primary', offset: 0 });
        if (!verifyLuks2Checksum(m2.subarray(0, bin.hdrSize))) return;
        const p = parseLuks2Json(m2.subarray(4096, bin.hdrSize));
        validateLuks2Metadata(p.metadata, { hdrSize: bin.hdrSize, dataDeviceSize: l2file.length });
        serializeLuks2Json(p.metadata, bin.hdrSize - 4096);
        rejected--;
      }, `luks2 #${i}`);
      rejected++;
    }
    assert.ok(rejected > 100, 'most mutations must be rejected');
  } finally {
    cleanup();
  }
});
