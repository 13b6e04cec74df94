/**
 * The pure backup format modules: sealed objects, subkey derivation, config and manifest
 * validation, hole arithmetic. Known answers are computed independently (RFC 5869 by hand).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { IntegrityError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';
import { openObject, sealObject, SEALED_OVERHEAD } from '../../src/backup/sealed-object.js';
import { chunkIdOf, deriveRepositoryKeys, keyCheckMatches, keyCheckOf } from '../../src/backup/repository-keys.js';
import { decodeRepositoryConfig, encodeRepositoryConfig, type RepositoryConfig } from '../../src/backup/repository-config.js';
import { decodeManifest, encodeManifest, newBackupId, validateManifest, type BackupManifest } from '../../src/backup/manifest.js';
import { alignedHoles, dataRanges } from '../../src/backup/create-backup.js';

const key = () => SecretBytes.copyOf(new Uint8Array(32).fill(7));

test('sealed object: round trip, zstd only when it helps, exact overhead', () => {
  const compressible = new Uint8Array(1 << 20).fill(0x41);
  const s1 = sealObject('chunk', 'n1', compressible, key());
  assert.equal(s1.compressed, true);
  assert.ok(s1.bytes.length < 4096);
  assert.deepEqual(Buffer.from(openObject('chunk', 'n1', s1.bytes, key())), Buffer.from(compressible));

  const random = randomBytes(1 << 20);
  const s2 = sealObject('chunk', 'n2', random, key());
  assert.equal(s2.compressed, false);
  assert.equal(s2.bytes.length, random.length + SEALED_OVERHEAD);
  assert.deepEqual(Buffer.from(openObject('chunk', 'n2', s2.bytes, key())), random);
});

test('sealed object: any flipped byte, another name, kind or key is an IntegrityError', () => {
  const plain = Buffer.from('x'.repeat(5000) + randomBytes(3000).toString('hex'));
  const { bytes } = sealObject('manifest', 'm', plain, key());
  for (const at of [0, 4, 5, 8, 12, 23, 24, 100, bytes.length - 17, bytes.length - 1]) {
    const bad = new Uint8Array(bytes);
    bad[at]! ^= 0x01;
    assert.throws(() => openObject('manifest', 'm', bad, key()), IntegrityError, `flip at ${at}`);
  }
  assert.throws(() => openObject('manifest', 'other', bytes, key()), IntegrityError);
  assert.throws(() => openObject('chunk', 'm', bytes, key()), IntegrityError);
  assert.throws(() => openObject('manifest', 'm', bytes, SecretBytes.copyOf(new Uint8Array(32).fill(8))), IntegrityError);
  assert.throws(() => openObject('manifest', 'm', bytes.subarray(0, 30), key()), IntegrityError);
});

/** RFC 5869 by hand, independent of node's hkdfSync. */
function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  const prk = createHmac('sha256', salt).update(ikm).digest();
  let t: Buffer = Buffer.alloc(0);
  const out: Buffer[] = [];
  for (let i = 1; Buffer.concat(out).length < length; i++) {
    t = createHmac('sha256', prk).update(Buffer.concat([t, Buffer.from(info), Buffer.from([i])])).digest();
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, length);
}

test('subkeys are HKDF-SHA256(backup key, salt = repository id, info) as documented', () => {
  const master = randomBytes(32);
  const repoId = '0f8fad5b-d9cb-469f-a165-70867728950e';
  const keys = deriveRepositoryKeys(SecretBytes.copyOf(master), repoId);
  const table: Array<[SecretBytes, string]> = [
    [keys.chunkId, 'brickcrypt-backup chunk-id'],
    [keys.seal, 'brickcrypt-backup seal'],
    [keys.keyCheck, 'brickcrypt-backup key-check'],
  ];
  for (const [k, info] of table) assert.deepEqual(Buffer.from(k.expose()), hkdf(master, Buffer.from(repoId), info, 32), info);
  const data = randomBytes(1000);
  assert.equal(chunkIdOf(keys, data), createHmac('sha256', hkdf(master, Buffer.from(repoId), 'brickcrypt-backup chunk-id', 32)).update(data).digest('hex'));
  const check = keyCheckOf(keys, repoId);
  assert.equal(keyCheckMatches(keys, repoId, check), true);
  const other = deriveRepositoryKeys(SecretBytes.copyOf(randomBytes(32)), repoId);
  assert.equal(keyCheckMatches(other, repoId, check), false);
  // Another repository under the same key has unrelated chunk ids.
  assert.notEqual(chunkIdOf(deriveRepositoryKeys(SecretBytes.copyOf(master), '1f8fad5b-d9cb-469f-a165-70867728950e'), data), chunkIdOf(keys, data));
});

const config: RepositoryConfig = {
  format: 'brickcrypt-backup-repository',
  version: 1,
  id: '0f8fad5b-d9cb-469f-a165-70867728950e',
  created: '2026-01-01T00:00:00.000Z',
  keyId: 'k-1',
  chunkSize: 1 << 20,
  keyCheck: 'ab'.repeat(32),
};

test('config: round trip; every flipped byte is an IntegrityError', () => {
  const bytes = encodeRepositoryConfig(config);
  assert.deepEqual(decodeRepositoryConfig(bytes), config);
  for (let at = 0; at < bytes.length; at++) {
    const bad = new Uint8Array(bytes);
    bad[at]! ^= 0x01;
    // Whitespace flips that keep the JSON and every value equal are harmless; everything else must fail.
    try {
      const c = decodeRepositoryConfig(bad);
      assert.deepEqual(c, config, `flip at ${at} changed the config without an error`);
    } catch (err) {
      assert.ok(err instanceof IntegrityError, `flip at ${at}: ${String(err)}`);
    }
  }
});

function manifest(over: Partial<BackupManifest> = {}): BackupManifest {
  return {
    format: 'brickcrypt-backup-manifest',
    version: 1,
    id: newBackupId(new Date('2026-01-02T03:04:05Z'), new Uint8Array([1, 2, 3, 4])),
    created: '2026-01-02T03:04:05.000Z',
    repository: config.id,
    source: { path: '/v', format: 'raw', size: 3 * 65536 + 100 },
    chunkSize: 65536,
    chunks: ['a'.repeat(64), null, 'b'.repeat(64), 'c'.repeat(64)],
    holes: [[65536, 65536]],
    stats: { dataBytes: 1, newChunks: 1, newBytes: 1, storedBytes: 1, reusedChunks: 0, zeroChunks: 1 },
    ...over,
  };
}

test('manifest: id format, round trip, and a table of invalid manifests', () => {
  const m = manifest();
  assert.equal(m.id, '20260102T030405Z-01020304');
  assert.deepEqual(decodeManifest(encodeManifest(m), m.id), m);
  assert.throws(() => decodeManifest(encodeManifest(m), '20260102T030405Z-ffffffff'), IntegrityError);
  const bad: Array<[string, Partial<BackupManifest>]> = [
    ['too few chunks', { chunks: ['a'.repeat(64)] }],
    ['bad chunk id', { chunks: ['A'.repeat(64), null, null, null] }],
    ['unaligned hole', { holes: [[100, 4096]] }],
    ['overlapping holes', { holes: [[0, 8192], [4096, 4096]] }],
    ['hole past the end', { holes: [[196608, 8192]] }],
    ['zero-length hole', { holes: [[0, 0]] }],
    ['unknown format', { source: { path: '/v', format: 'vmdk' as 'raw', size: 10 } }],
    ['luks without luks source', { luks: { version: 2, uuid: 'u', dataOffset: 16 << 20, headerSha256: '0'.repeat(64) } }],
    ['bad chunk size', { chunkSize: 1000 }],
    ['bad parent', { parent: 'yesterday' }],
  ];
  for (const [why, over] of bad) assert.throws(() => validateManifest(manifest(over)), IntegrityError, why);
  // A hole may end at an unaligned volume end.
  validateManifest(manifest({ holes: [[196608, 100]] }));
});

test('hole arithmetic: alignedHoles shrinks to 4 KiB, dataRanges complements', () => {
  const size = 10 * 4096 + 10;
  const holes = alignedHoles(
    [
      { offset: 0, length: 100, hole: false, zero: false },
      { offset: 100, length: 3 * 4096, hole: true, zero: true },
      { offset: 100 + 3 * 4096, length: 4096, hole: false, zero: false },
      { offset: 100 + 4 * 4096, length: size - 100 - 4 * 4096, hole: true, zero: true },
    ],
    size,
  );
  assert.deepEqual(holes, [[4096, 2 * 4096], [5 * 4096, size - 5 * 4096]]);
  const table: Array<[number, number, Array<[number, number]>]> = [
    [0, 4096, [[0, 4096]]],
    [0, 5 * 4096, [[0, 4096], [3 * 4096, 2 * 4096]]],
    [4096, 3 * 4096, []],
    [4096, 4 * 4096, [[3 * 4096, 4096]]],
    [5 * 4096, size, []],
    [2 * 4096, 6 * 4096, [[3 * 4096, 2 * 4096]]],
  ];
  for (const [s, e, want] of table) assert.deepEqual(dataRanges(holes, s, e), want, `${s}..${e}`);
});
