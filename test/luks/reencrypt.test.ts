/**
 * In-place re-key of LUKS2 volumes (checksum, journal, none): the plaintext survives byte for
 * byte, the passphrases still open the volume, the old key is gone, and a reencryption stopped
 * at any point — a signal at a zone boundary, or a power cut after ANY write (checksum and
 * journal) — is finished by a resume that gives exactly the original plaintext. Refusals (wrong
 * passphrase, tampered state, nothing to resume) write nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { reencryptLuks2, type ReencryptOptions, type Resilience } from '../../src/luks/reencrypt/engine.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { CancelledError, CorruptHeaderError, InvalidArgumentError, ReencryptionInProgressError, WrongPassphraseError } from '../../src/errors.js';
import { readLuks2Headers, writeLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { openKeys } from '../../src/luks/reencrypt/keys.js';
import { stopAtEveryOtherZone } from '../helpers/zone-stops.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { contains, equalPlain, luksPlaintext } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'old and new';

/** A small LUKS2 volume (2 MiB header area) holding random plaintext. */
async function smallVolume(payload: number, options: { sectorSize?: 512 | 4096; cipher?: string; keySizeBits?: number; extraPass?: string } = {}): Promise<{ dev: MemoryDevice; plain: Uint8Array; oldKey: Uint8Array }> {
  const dataOffset = 2 * 1024 * 1024;
  const dev = new MemoryDevice(dataOffset + payload);
  const { volume, key } = await LuksVolume.format(dev, {
    type: 'luks2',
    passphrase: Passphrase.fromString(PASS),
    dataOffset,
    keyslotsSize: dataOffset - 2 * 16384,
    sectorSize: options.sectorSize ?? 4096,
    ...(options.cipher ? { cipher: options.cipher } : {}),
    ...(options.keySizeBits ? { keySizeBits: options.keySizeBits } : {}),
    ...FAST,
  });
  if (options.extraPass) await volume.addKey(key, Passphrase.fromString(options.extraPass), FAST);
  const plain = new Uint8Array(randomBytes(payload));
  const view = EncryptedDevice.open(dev, volume, VolumeKey.copyOf(key.expose()));
  await view.write(plain, 0);
  await view.close();
  const oldKey = new Uint8Array(key.expose());
  key.wipe();
  return { dev, plain, oldKey };
}

const plaintextOf = (dev: BlockDevice, pass = PASS): Promise<Uint8Array> => luksPlaintext(dev, pass);

function opts(extra: Partial<ReencryptOptions> = {}): ReencryptOptions {
  return { passphrases: [Passphrase.fromString(PASS)], ...FAST, hotzoneSize: 64 * 1024, ...extra };
}



for (const resilience of ['checksum', 'journal', 'none'] as Resilience[]) {
  test(`re-key (${resilience}): same plaintext, passphrase still opens it, new key, old key and state gone`, async () => {
    const { dev, plain, oldKey } = await smallVolume(512 * 1024);
    const before = await LuksVolume.open(dev);
    const report = await reencryptLuks2(dev, opts({ resilience }));
    assert.equal(report.finished, true);
    assert.equal(report.started, true);
    assert.equal(report.bytes, 512 * 1024);
    assert.deepEqual(report.keyslots, [1]);
    const vol = await LuksVolume.open(dev);
    assert.equal(vol.payloadFence, undefined);
    assert.equal(vol.readOnlyReason, undefined);
    assert.deepEqual(vol.keyslots().map((k) => k.id), [1]);
    assert.equal(await vol.verifyVolumeKey(VolumeKey.copyOf(oldKey)), false);
    const { key } = await vol.unlock(Passphrase.fromString(PASS));
    assert.notDeepEqual(key.expose(), oldKey);
    key.wipe();
    assert.equal(vol.encryption, before.encryption);
    equalPlain(await plaintextOf(dev), plain, resilience);
    // Nothing of the old key's keyslot or of the resilience data is left in the header area.
    const { state } = await readLuks2Headers(dev, dev.size);
    assert.equal(decodeReencryptState(state.metadata), undefined);
    assert.equal(Object.keys(state.metadata.digests).length, 1);
    assert.deepEqual(dev.bytes.subarray(32768, 32768 + 258048), new Uint8Array(258048));
  });
}

test('re-key with a new cipher, key size and sector size; two passphrases keep their keyslots', async () => {
  const { dev, plain } = await smallVolume(256 * 1024, { sectorSize: 512, extraPass: 'second' });
  const report = await reencryptLuks2(dev, opts({ passphrases: [Passphrase.fromString(PASS), Passphrase.fromString('second')], cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, sectorSize: 4096 }));
  assert.deepEqual(report.keyslots, [2, 3]);
  const vol = await LuksVolume.open(dev);
  assert.equal(vol.encryption, 'aes-cbc-essiv:sha256');
  assert.equal(vol.keyBytes, 32);
  assert.equal(vol.sectorSize, 4096);
  equalPlain(await plaintextOf(dev), plain, 'first passphrase');
  equalPlain(await plaintextOf(dev, 'second'), plain, 'second passphrase');
});

test('--key-slot keeps only that keyslot; a passphrase that does not open every keyslot is refused without it', async () => {
  const { dev, plain } = await smallVolume(128 * 1024, { extraPass: 'second' });
  const snapshot = new Uint8Array(dev.bytes);
  await assert.rejects(reencryptLuks2(dev, opts()), InvalidArgumentError);
  assert.deepEqual(dev.bytes, snapshot);
  const report = await reencryptLuks2(dev, opts({ keyslot: 0 }));
  assert.deepEqual(report.keyslots, [2]);
  equalPlain(await plaintextOf(dev), plain, 'kept');
  await assert.rejects(plaintextOf(dev, 'second'), WrongPassphraseError);
});

test('init-only, then resume; the fence holds in between; a wrong passphrase or a tampered state changes nothing', async () => {
  const { dev, plain } = await smallVolume(256 * 1024);
  const r1 = await reencryptLuks2(dev, opts({ initOnly: true }));
  assert.equal(r1.finished, false);
  assert.equal(r1.bytes, 0);
  const vol = await LuksVolume.open(dev);
  assert.ok(vol.payloadFence instanceof ReencryptionInProgressError);
  const snapshot = new Uint8Array(dev.bytes);
  await assert.rejects(reencryptLuks2(dev, opts({ passphrases: [Passphrase.fromString('wrong')] })), WrongPassphraseError);
  await assert.rejects(reencryptLuks2(dev, opts({ cipher: 'aes-xts-plain64' })), InvalidArgumentError);
  assert.deepEqual(dev.bytes, snapshot);
  // Tamper with the recorded layout (direction) and rewrite a valid header: the digest catches it.
  const copy = new MemoryDevice(new Uint8Array(snapshot));
  const { state } = await readLuks2Headers(copy, copy.size);
  const ks = Object.values(state.metadata.keyslots).find((k) => k.type === 'reencrypt')!;
  (ks.area as Record<string, unknown>).type = 'journal';
  delete (ks.area as Record<string, unknown>).hash;
  delete (ks.area as Record<string, unknown>).sector_size;
  await writeLuks2Headers(copy, state);
  const tampered = new Uint8Array(copy.bytes);
  await assert.rejects(reencryptLuks2(copy, opts()), CorruptHeaderError);
  assert.deepEqual(copy.bytes, tampered);
  const r2 = await reencryptLuks2(dev, opts({ resumeOnly: true }));
  assert.equal(r2.started, false);
  assert.equal(r2.finished, true);
  equalPlain(await plaintextOf(dev), plain, 'resumed');
  await assert.rejects(reencryptLuks2(dev, opts({ resumeOnly: true })), InvalidArgumentError);
});

for (const resilience of ['checksum', 'journal', 'none'] as Resilience[]) {
  test(`re-key (${resilience}) stopped by a signal at every zone boundary resumes to the same plaintext`, async () => {
    const { dev, plain } = await smallVolume(256 * 1024);
    const stops = await stopAtEveryOtherZone(
      (o) => reencryptLuks2(dev, opts({ resilience, ...o })),
      async () => assert.ok((await LuksVolume.open(dev)).payloadFence instanceof ReencryptionInProgressError),
    );
    assert.ok(stops >= 3, `stopped ${stops} times`);
    equalPlain(await plaintextOf(dev), plain, resilience);
  });
}

/**
 * Runs a re-key under a FaultInjectingDevice that cuts the power after write `cut`, then
 * resumes on the crash image (itself with power cuts when `nested`), and returns the plaintext.
 */
async function crashAndResume(image: Uint8Array, resilience: Resilience, cut: number, seed: number, sectorSize: number, extra: Partial<ReencryptOptions> = {}): Promise<{ plain: Uint8Array; cutHappened: boolean }> {
  const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed, sectorSize });
  let cutHappened = false;
  try {
    await reencryptLuks2(dev, opts({ resilience, ...extra }));
  } catch (err) {
    if (!(err instanceof PowerCutError)) throw err;
    cutHappened = true;
  }
  const after = new MemoryDevice(cutHappened ? dev.crashImage() : new Uint8Array(dev.bytes));
  const vol = await LuksVolume.open(after).catch((err) => assert.fail(`crash after write ${cut}: header does not open: ${err}`));
  if (vol.payloadFence !== undefined) await reencryptLuks2(after, opts({ resumeOnly: true }));
  return { plain: await plaintextOf(after), cutHappened };
}

for (const [resilience, sectorSize, pieces] of [['checksum', 4096, false], ['journal', 512, false], ['checksum', 4096, true], ['journal', 512, true]] as Array<[Resilience, number, boolean]>) {
  const how = pieces ? '128 KiB zones worked in 32 KiB pieces' : '64 KiB zones';
  test(`power cut after EVERY write of a re-key (${resilience}, ${how}, writes torn at ${sectorSize} bytes): resume gives the original plaintext`, async () => {
    const { dev, plain } = await smallVolume(192 * 1024);
    const image = new Uint8Array(dev.bytes);
    const extra = pieces ? { hotzoneSize: 128 * 1024, pieceBytes: 32 * 1024 } : {};
    let cut = 1;
    for (; ; cut++) {
      const { plain: got, cutHappened } = await crashAndResume(image, resilience, cut, cut * 7 + 1, sectorSize, extra);
      equalPlain(got, plain, `power cut after write ${cut}`);
      if (!cutHappened) break;
    }
    assert.ok(cut > 30, `only ${cut} write boundaries`);
  });
}

test('power cuts at random writes of a larger re-key (checksum and journal, several seeds), then a cut during the resume too', async () => {
  const { dev, plain } = await smallVolume(2 * 1024 * 1024);
  const image = new Uint8Array(dev.bytes);
  const probe = new FaultInjectingDevice(image);
  await reencryptLuks2(probe, opts({ resilience: 'checksum', hotzoneSize: 256 * 1024 }));
  const total = probe.writes;
  for (const resilience of ['checksum', 'journal'] as Resilience[]) {
    for (let seed = 1; seed <= 6; seed++) {
      const cut = 1 + ((seed * 2654435761) % total);
      const first = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed, sectorSize: 4096 });
      await reencryptLuks2(first, opts({ resilience, hotzoneSize: 256 * 1024, pieceBytes: 64 * 1024 })).catch((err) => assert.ok(err instanceof PowerCutError));
      const mid = first.powerCut ? first.crashImage() : new Uint8Array(first.bytes);
      // Crash the resume as well, a few writes in.
      const second = new FaultInjectingDevice(mid, { cutAfterWrite: 1 + (seed % 9), seed: seed + 100, sectorSize: 4096 });
      await reencryptLuks2(second, opts({ resilience, hotzoneSize: 256 * 1024 })).catch((err) => assert.ok(err instanceof PowerCutError || err instanceof InvalidArgumentError, String(err)));
      const last = new MemoryDevice(second.powerCut ? second.crashImage() : new Uint8Array(second.bytes));
      if ((await LuksVolume.open(last)).payloadFence !== undefined) await reencryptLuks2(last, opts({ resumeOnly: true }));
      equalPlain(await plaintextOf(last), plain, `${resilience} seed ${seed} cut ${cut}`);
    }
  }
});

test('bad input writes nothing: a corrupted reencrypt keyslot or digest, a device smaller than the metadata says', async () => {
  const { dev } = await smallVolume(256 * 1024);
  const ac = new AbortController();
  let zones = 0;
  await assert.rejects(reencryptLuks2(dev, opts({ signal: ac.signal, onProgress: () => (++zones === 3 ? ac.abort() : undefined) })), CancelledError);
  const stopped = new Uint8Array(dev.bytes);
  const tamper = async (change: (m: Record<string, any>) => void): Promise<MemoryDevice> => {
    const copy = new MemoryDevice(new Uint8Array(stopped));
    const { state } = await readLuks2Headers(copy, copy.size);
    change(state.metadata as unknown as Record<string, any>);
    await writeLuks2Headers(copy, state);
    return copy;
  };
  const reencKs = (m: Record<string, any>) => Object.values(m.keyslots).find((k: any) => k.type === 'reencrypt') as Record<string, any>;
  const cases: Array<[string, (m: Record<string, any>) => void]> = [
    ['unknown mode', (m) => (reencKs(m).mode = 'bogus')],
    ['checksum without hash', (m) => delete reencKs(m).area.hash],
    ['digest bytes changed', (m) => {
      const d = Object.values(m.digests).find((x: any) => x.keyslots.includes(Object.keys(m.keyslots).find((k) => m.keyslots[k].type === 'reencrypt'))) as Record<string, any>;
      const raw = Buffer.from(d.digest, 'base64');
      raw[0]! ^= 1;
      d.digest = raw.toString('base64');
    }],
    ['backup-final segment gone', (m) => {
      const id = Object.keys(m.segments).find((k) => m.segments[k].flags?.includes('backup-final'))!;
      delete m.segments[id];
      for (const d of Object.values(m.digests) as any[]) d.segments = d.segments.filter((x: string) => x !== id);
    }],
  ];
  for (const [what, change] of cases) {
    const copy = await tamper(change);
    const before = new Uint8Array(copy.bytes);
    await assert.rejects(reencryptLuks2(copy, opts()), CorruptHeaderError, what);
    assert.deepEqual(copy.bytes, before, what);
  }
  // The volume shrank below what the header says is done.
  const small = new MemoryDevice(new Uint8Array(stopped.subarray(0, 2 * 1024 * 1024 + 64 * 1024)));
  const before = new Uint8Array(small.bytes);
  await assert.rejects(reencryptLuks2(small, opts()), CorruptHeaderError);
  assert.deepEqual(small.bytes, before);
});

test('killed inside cryptsetup\'s teardown (all data under the new key, old keyslots destroyed, reencryption still recorded): finished with the new key alone, only the header written', async () => {
  const { dev, plain } = await smallVolume(256 * 1024);
  await reencryptLuks2(dev, opts({ initOnly: true }));
  const { state: st } = await readLuks2Headers(dev, dev.size);
  const meta = st.metadata;
  const s = decodeReencryptState(meta)!;
  // The data rewritten under the new key, as the last zone of a run leaves it.
  const { keys } = await openKeys(dev, meta, [Passphrase.fromString(PASS)]);
  const fin = meta.segments[s.finalId]!;
  const dataOffset = Number(fin.offset);
  const params = { encryption: fin.encryption!, keyBytes: keys.get(s.newDigestId!)!.length, sectorSize: fin.sector_size!, ivTweak: 0, dataOffset, payloadSize: dev.size - dataOffset };
  const view = EncryptedDevice.open(dev, params, keys.get(s.newDigestId!)!);
  await view.write(plain, 0);
  await view.close();
  // cryptsetup's last data commit (one segment under the new key, old key on backup-previous
  // only), then its teardown's first steps: the old keyslots destroyed, one header write each.
  const { flags: _f, ...segment } = fin;
  meta.segments['0'] = { ...segment };
  meta.digests[s.oldDigestId!]!.segments = [s.previousId];
  meta.digests[s.newDigestId!]!.segments = ['0', s.finalId];
  for (const k of meta.digests[s.oldDigestId!]!.keyslots) delete meta.keyslots[k];
  meta.digests[s.oldDigestId!]!.keyslots = [];
  await writeLuks2Headers(dev, st);
  keys.get(s.oldDigestId!)?.wipe();
  const dataBefore = Buffer.from(dev.bytes.subarray(dataOffset));
  await assert.rejects(reencryptLuks2(dev, opts({ resumeOnly: true, passphrases: [Passphrase.fromString('not it')] })), WrongPassphraseError);
  const report = await reencryptLuks2(dev, opts({ resumeOnly: true }));
  assert.equal(report.finished, true);
  assert.equal(report.bytes, 0, 'nothing rewritten');
  assert.ok(Buffer.from(dev.bytes.subarray(dataOffset)).equals(dataBefore), 'the data area is untouched');
  const after = (await readLuks2Headers(dev, dev.size)).state.metadata;
  assert.equal(decodeReencryptState(after), undefined);
  assert.equal(after.config.requirements, undefined);
  assert.deepEqual(Object.keys(after.segments), ['0']);
  equalPlain(await plaintextOf(dev), plain, 'after the keyless finish');
});

test('detached header: re-key with the header on its own device', async () => {
  const payload = 256 * 1024;
  const header = new MemoryDevice(2 * 1024 * 1024);
  const data = new MemoryDevice(payload);
  const { volume, key } = await LuksVolume.format(data, { type: 'luks2', passphrase: Passphrase.fromString(PASS), headerDevice: header, keyslotsSize: 2 * 1024 * 1024 - 2 * 16384, sectorSize: 4096, ...FAST });
  const plain = new Uint8Array(randomBytes(payload));
  const view = EncryptedDevice.open(data, volume, key);
  await view.write(plain, 0);
  await view.close();
  const r = await reencryptLuks2(data, opts({ headerDevice: header }));
  assert.equal(r.finished, true);
  const vol = await LuksVolume.open(data, { headerDevice: header });
  const k = await vol.unlock(Passphrase.fromString(PASS));
  const out = EncryptedDevice.open(data, vol, k.key, { readOnly: true });
  const got = new Uint8Array(out.size);
  await out.read(got, 0);
  await out.close();
  equalPlain(got, plain, 'detached');
});
