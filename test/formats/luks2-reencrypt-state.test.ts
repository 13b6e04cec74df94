/**
 * cryptsetup's in-progress reencryption state: keyslot decode/encode round trips and validation,
 * the verification-digest bytes, and the states cryptsetup 2.6 itself writes (--init-only and a
 * run killed part-way) decoded, validated, their digest verified with the keys, and their
 * segments reproduced by the layout builders.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CorruptHeaderError } from '../../src/errors.js';
import type { Luks2Keyslot, Luks2Metadata } from '../../src/formats/luks2/metadata.js';
import {
  decodeReencryptKeyslot,
  decodeReencryptState,
  encodeReencryptKeyslot,
  forwardOffset,
  hotSegmentsForward,
  postSegmentsForward,
  reencryptRequirementString,
  reencryptVerificationData,
  validateReencryptState,
  cryptSegment,
  type ReencryptKeyslot,
} from '../../src/formats/luks2/reencrypt-state.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { luks2DigestMatches, openLuks2Keyslot } from '../../src/luks/keyslot-store.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { Passphrase } from '../../src/secret.js';
import { needTools, tempDir } from '../helpers/tools.js';
import { cryptsetupInitOnly, cryptsetupKilled, cryptsetupMetadata, cryptsetupVolumeWithData } from '../helpers/reencrypt-states.js';

const KEYSLOTS: Record<string, ReencryptKeyslot> = {
  checksum: { mode: 'reencrypt', direction: 'forward', resilience: 'checksum', areaOffset: 548864, areaSize: 16228352, hash: 'sha256', checksumBlock: 4096 },
  journal: { mode: 'reencrypt', direction: 'backward', resilience: 'journal', areaOffset: 548864, areaSize: 4096 },
  none: { mode: 'decrypt', direction: 'forward', resilience: 'none', areaOffset: 548864, areaSize: 4096 },
  datashift: { mode: 'encrypt', direction: 'backward', resilience: 'datashift', areaOffset: 32768, areaSize: 4096, shiftSize: 33554432 },
  'datashift-checksum': { mode: 'decrypt', direction: 'forward', resilience: 'datashift-checksum', areaOffset: 32768, areaSize: 8192, hash: 'sha1', checksumBlock: 512, shiftSize: 1 << 20 },
  'datashift-journal': { mode: 'decrypt', direction: 'forward', resilience: 'datashift-journal', areaOffset: 32768, areaSize: 8192, shiftSize: 1 << 20 },
};

test('reencrypt keyslot: decode(encode(k)) is k for every resilience type; cryptsetup member order', () => {
  for (const [name, k] of Object.entries(KEYSLOTS)) {
    const json = encodeReencryptKeyslot(k);
    assert.deepEqual(decodeReencryptKeyslot(JSON.parse(JSON.stringify(json))), k, name);
  }
  assert.equal(
    JSON.stringify(encodeReencryptKeyslot(KEYSLOTS.checksum!)),
    '{"area":{"offset":"548864","size":"16228352","type":"checksum","hash":"sha256","sector_size":4096},"type":"reencrypt","key_size":1,"mode":"reencrypt","direction":"forward","priority":0}',
  );
});

test('reencrypt keyslot validation rejects what cryptsetup rejects', () => {
  const good = encodeReencryptKeyslot(KEYSLOTS.checksum!);
  const variants: Array<[string, (k: any) => void]> = [
    ['key_size 2', (k) => (k.key_size = 2)],
    ['mode', (k) => (k.mode = 'rekey')],
    ['direction', (k) => (k.direction = 'sideways')],
    ['area type', (k) => (k.area.type = 'mirror')],
    ['no hash', (k) => delete k.area.hash],
    ['sector_size 1000', (k) => (k.area.sector_size = 1000)],
    ['sector_size 256', (k) => (k.area.sector_size = 256)],
    ['offset number', (k) => (k.area.offset = 548864)],
  ];
  for (const [what, change] of variants) {
    const k = JSON.parse(JSON.stringify(good));
    change(k);
    assert.throws(() => decodeReencryptKeyslot(k), CorruptHeaderError, what);
  }
  const ds = JSON.parse(JSON.stringify(encodeReencryptKeyslot(KEYSLOTS.datashift!)));
  for (const shift of ['0', '1000', 'x']) {
    ds.area.shift_size = shift;
    assert.throws(() => decodeReencryptKeyslot(ds), CorruptHeaderError, shift);
  }
});

function sampleMetadata(): Luks2Metadata {
  const old = cryptSegment(16777216, 0, 'dynamic', 'aes-xts-plain64', 4096);
  return {
    keyslots: { '2': encodeReencryptKeyslot(KEYSLOTS.checksum!) },
    tokens: {},
    segments: {
      '0': old,
      '1': { ...old, flags: ['backup-previous'] },
      '2': cryptSegment(16777216, 0, 'dynamic', 'aes-cbc-essiv:sha256', 512, ['backup-final']),
    },
    digests: {
      '0': { type: 'pbkdf2', keyslots: [], segments: ['0', '1'] },
      '1': { type: 'pbkdf2', keyslots: [], segments: ['2'] },
      '2': { type: 'pbkdf2', keyslots: ['2'], segments: [] },
    },
    config: { json_size: '12288', keyslots_size: '16744448', requirements: { mandatory: [reencryptRequirementString(2)] } },
  };
}

test('verification data: v2, old key, new key, keyslot fields, backup segments (big-endian integers, raw strings)', () => {
  const m = sampleMetadata();
  const s = decodeReencryptState(m)!;
  validateReencryptState(m, s);
  assert.deepEqual([s.oldDigestId, s.newDigestId, s.verificationDigestId, s.hotId], ['0', '1', '2', undefined]);
  const data = reencryptVerificationData(m, s, { old: Uint8Array.of(1, 2), new: Uint8Array.of(3) });
  const u64 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(n));
    return b;
  };
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const expected = Buffer.concat([
    Buffer.from('v2'), Buffer.from([1, 2, 3]),
    Buffer.from('reencryptforwardchecksum'), u64(548864), u64(16228352), Buffer.from('sha256'), u32(4096),
    Buffer.from('crypt'), u64(16777216), Buffer.from('dynamic'), u64(0), Buffer.from('aes-xts-plain64'), u32(4096),
    Buffer.from('crypt'), u64(16777216), Buffer.from('dynamic'), u64(0), Buffer.from('aes-cbc-essiv:sha256'), u32(512),
  ]);
  assert.deepEqual(Buffer.from(data), expected);
  assert.throws(() => reencryptVerificationData(m, s, { old: Uint8Array.of(1) }), CorruptHeaderError);
});

test('state validation: missing backup segment, foreign segment, two reencrypt keyslots, missing digest', () => {
  const cases: Array<[string, (m: any) => void]> = [
    ['no backup-final', (m) => delete m.segments['2']],
    ['foreign active segment', (m) => (m.segments['0'].encryption = 'serpent-xts-plain64')],
    ['two reencrypt keyslots', (m) => (m.keyslots['3'] = m.keyslots['2'])],
    ['no verification digest', (m) => (m.digests['2'].keyslots = [])],
    ['previous without digest', (m) => (m.digests['0'].segments = ['0'])],
    ['two hot segments', (m) => {
      m.segments['3'] = { ...m.segments['2'], flags: ['in-reencryption'] };
      m.segments['4'] = { ...m.segments['2'], flags: ['in-reencryption'] };
    }],
  ];
  for (const [what, change] of cases) {
    const m = sampleMetadata();
    change(m);
    assert.throws(() => {
      const s = decodeReencryptState(m);
      assert.ok(s);
      validateReencryptState(m, s);
    }, CorruptHeaderError, what);
  }
  const plain = sampleMetadata();
  delete plain.config.requirements;
  assert.equal(decodeReencryptState(plain), undefined);
});

async function keysOf(img: string, pass: string, m: Luks2Metadata): Promise<{ old: Uint8Array; new: Uint8Array }> {
  const dev = await FileDevice.open(img, { readOnly: true });
  try {
    const out: Uint8Array[] = [];
    for (const id of ['0', '1']) {
      const k = await openLuks2Keyslot(dev, m, id, Passphrase.fromString(pass));
      assert.ok(k, `keyslot ${id}`);
      out.push(new Uint8Array(k.expose()));
      k.wipe();
    }
    return { old: out[0]!, new: out[1]! };
  } finally {
    await dev.close();
  }
}

async function metadataOf(img: string): Promise<Luks2Metadata> {
  const dev = await FileDevice.open(img, { readOnly: true });
  try {
    return (await readLuks2Headers(dev, dev.size)).state.metadata;
  } finally {
    await dev.close();
  }
}

const skipCs = needTools('cryptsetup');

for (const resilience of ['checksum', 'journal', 'none']) {
  test(`cryptsetup --init-only --resilience ${resilience}: decodes, validates, its digest verifies with both keys and fails with another`, { skip: skipCs }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const img = join(dir, 'vol.img');
      const keyFile = join(dir, 'key');
      writeFileSync(keyFile, 'pw');
      await cryptsetupVolumeWithData(img, 20 << 20, keyFile);
      cryptsetupInitOnly(img, keyFile, ['--resilience', resilience, '--cipher', 'aes-xts-plain64', '--key-size', '256', '--sector-size', '512']);
      const m = await metadataOf(img);
      const cs = cryptsetupMetadata(img);
      assert.deepEqual(m, cs as Luks2Metadata);
      const s = decodeReencryptState(m)!;
      assert.ok(s);
      validateReencryptState(m, s);
      assert.equal(s.requirement, 'online-reencrypt-v2');
      assert.equal(s.keyslot.resilience, resilience);
      assert.equal(s.keyslot.mode, 'reencrypt');
      assert.equal(forwardOffset(m, s), 0);
      // Round trip of cryptsetup's own keyslot JSON, member order included.
      assert.equal(JSON.stringify(encodeReencryptKeyslot(s.keyslot)), JSON.stringify(m.keyslots[s.keyslotId]));
      const keys = await keysOf(img, 'pw', m);
      assert.equal(keys.new.length, 32);
      const digest = m.digests[s.verificationDigestId!]!;
      assert.equal(await luks2DigestMatches(digest, reencryptVerificationData(m, s, keys)), true);
      const wrong = new Uint8Array(keys.new);
      wrong[0]! ^= 1;
      assert.equal(await luks2DigestMatches(digest, reencryptVerificationData(m, s, { old: keys.old, new: wrong })), false);
      // A changed layout no longer matches the digest (the CVE-2021-4122 protection).
      const tampered = structuredClone(m);
      tampered.keyslots[s.keyslotId]!.direction = 'backward';
      assert.equal(await luks2DigestMatches(digest, reencryptVerificationData(tampered, decodeReencryptState(tampered)!, keys)), false);
    } finally {
      cleanup();
    }
  });
}

test('cryptsetup killed part-way: the state decodes and validates, the layout builders reproduce its segments', { skip: skipCs }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, 'pw');
    await cryptsetupVolumeWithData(img, 80 << 20, keyFile);
    // A kill inside the run (both keys' keyslots still there). A run that ends before its kill,
    // or a kill among cryptsetup's final writes (the old keyslot already gone), is tried again
    // sooner, on a fresh volume when the last one was left in its final state.
    let m: Luks2Metadata | undefined;
    let s: ReturnType<typeof decodeReencryptState>;
    for (let i = 0, ms = 500; i < 12 && !s; i++, ms = Math.max(20, Math.floor(ms * 0.6))) {
      if (!(await cryptsetupKilled(img, keyFile, ms, ['--hotzone-size', '256K']))) continue;
      const meta = await metadataOf(img);
      const st = decodeReencryptState(meta);
      if (st && st.oldDigestId !== undefined && meta.digests[st.oldDigestId]!.keyslots.length > 0) {
        m = meta;
        s = st;
      } else await cryptsetupVolumeWithData(img, 80 << 20, keyFile);
    }
    assert.ok(m && s, 'no kill landed inside a run');
    validateReencryptState(m, s);
    const keys = await keysOf(img, 'pw', m);
    assert.equal(await luks2DigestMatches(m.digests[s.verificationDigestId!]!, reencryptVerificationData(m, s, keys)), true);
    const layouts = { previous: m.segments[s.previousId]!, final: m.segments[s.finalId]! };
    const strip = ({ flags, ...rest }: any) => (flags?.includes('in-reencryption') ? { ...rest, flags } : rest);
    const dataSize = (80 << 20) - (16 << 20);
    const offset = forwardOffset(m, s);
    const expected = s.hotId !== undefined
      ? hotSegmentsForward(layouts, offset, Number(m.segments[s.hotId]!.size), dataSize)
      : postSegmentsForward(layouts, offset, dataSize);
    assert.deepEqual(s.active.map((id) => strip(m.segments[id])), expected);
  } finally {
    cleanup();
  }
});
