/**
 * Online decryption (detached header): the serving process decrypts the volume backward, zone
 * by zone, while clients read and write through a `ReencryptingDevice` whose new view is the
 * plaintext pass-through. In process: concurrent clients checked against a model, the data
 * device ending up as the model byte for byte, power cuts mid-run finished offline, and the
 * refusals (attached header, wrong header, a second run after the finish). Through the CLI:
 * `attach --header` + `reencrypt --decrypt --header` from another process with an NBD client,
 * `kill -9` of the server then offline and cryptsetup resumes, and the layouts refused online
 * (attached header, LUKS1, encrypt of a raw volume) with nothing written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { ReencryptingDevice } from '../../src/devices/reencrypting-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { decryptLuks2 } from '../../src/luks/reencrypt/decrypt.js';
import type { Resilience } from '../../src/luks/reencrypt/engine.js';
import { OnlineReencryptor, openReencryptingView } from '../../src/workflows/reencrypt-online.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { Passphrase } from '../../src/secret.js';
import { DeviceIoError, InvalidArgumentError, NotImplementedError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { NbdTestClient, killServerMidRun, clientLoad, cryptsetupFinishesKilledRun, firstDiff, nbdCheckedReads, nbdLoad, runReencrypt, serveAndResumeOnline, startAttach, yielding } from '../helpers/online.js';
import { needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { CS_FAST, CS_OFFLINE, cryptsetupMetadata, cryptsetupVolumeWithData } from '../helpers/reencrypt-states.js';
import { equalPlain } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'online decrypt pass';
const HDR = 2 * 1024 * 1024;
const ZONE = 64 * 1024;

/** A detached header (HDR bytes) and `payload` bytes of ciphertext at offset 0 on one image: header first, so one power cut hits both. */
async function detachedImage(payload: number, sectorSize: 512 | 4096): Promise<{ image: Uint8Array; plain: Uint8Array }> {
  const mem = new MemoryDevice(HDR + payload);
  const { header, data } = split(mem);
  const { volume, key } = await LuksVolume.format(data, { type: 'luks2', passphrase: Passphrase.fromString(PASS), headerDevice: header, keyslotsSize: HDR - 2 * 16384, sectorSize, ...FAST });
  const view = EncryptedDevice.open(data, volume, key);
  const plain = new Uint8Array(randomBytes(view.size));
  await view.write(plain, 0);
  await view.close();
  return { image: mem.bytes, plain };
}

function split(dev: BlockDevice): { header: SliceDevice; data: SliceDevice } {
  return { header: new SliceDevice(dev, 0, HDR), data: new SliceDevice(dev, HDR, dev.size - HDR) };
}

/** The served stack as `attach --header` builds it; `headerPath` stands for the header file the client must name. */
async function served(header: BlockDevice, data: BlockDevice, headerPath?: string): Promise<{ view: ReencryptingDevice; reencryptor: OnlineReencryptor; pool: CryptoPool }> {
  const vol = await LuksVolume.open(data, { headerDevice: header });
  const { key } = await vol.unlock(Passphrase.fromString(PASS), { forWrite: true });
  const view = new ReencryptingDevice(EncryptedDevice.open(data, vol, key));
  const pool = CryptoPool.create(0);
  const reencryptor = new OnlineReencryptor({
    data,
    header,
    ...(headerPath ? { headerPath } : {}),
    view,
    pool,
    old: { encryption: vol.encryption, sectorSize: vol.sectorSize, ivTweak: vol.ivTweak, dataOffset: vol.dataOffset },
  });
  return { view, reencryptor, pool };
}

async function assertPlainHeader(header: BlockDevice): Promise<void> {
  const { state } = await readLuks2Headers(header);
  const m = state.metadata;
  assert.equal(decodeReencryptState(m), undefined);
  assert.deepEqual(Object.keys(m.keyslots), []);
  assert.deepEqual(Object.values(m.segments).map((s) => s.type), ['linear']);
  assert.equal(m.config.requirements, undefined);
}

const dirs = tempDir('brickcrypt-online-decrypt-');
const HEADER_FILE = join(dirs.dir, 'served.hdr');
writeFileSync(HEADER_FILE, 'stands for the served header file');
process.on('exit', () => dirs.cleanup());

for (const { resilience, sectorSize } of [
  { resilience: 'checksum' as Resilience, sectorSize: 4096 as const },
  { resilience: 'journal' as Resilience, sectorSize: 512 as const },
  { resilience: 'none' as Resilience, sectorSize: 4096 as const },
]) {
  test(`online decrypt (${resilience}, ${sectorSize}-byte sectors): concurrent random reads and writes see the model throughout; the data device ends up as the model`, async () => {
    const payload = 2 * 1024 * 1024;
    const { image, plain: model } = await detachedImage(payload, sectorSize);
    const mem = new MemoryDevice(image);
    const dev = yielding(mem);
    const { header, data } = split(dev);
    const { view, reencryptor, pool } = await served(header, data, HEADER_FILE);
    let done = false;
    const zones: number[] = [];
    const run = reencryptor
      .decrypt(Passphrase.fromString(PASS), { resilience, hotzoneSize: ZONE, header: HEADER_FILE, ...FAST, onProgress: ({ done: d }) => zones.push(d) })
      .finally(() => (done = true));
    const stats = await clientLoad(view, model, resilience.length * 11 + sectorSize, () => done);
    const report = await run;
    process.stderr.write(`# decrypt ${resilience}: ${JSON.stringify(stats)}\n`);
    assert.equal(report.finished, true);
    assert.equal(report.header, HEADER_FILE);
    assert.equal(view.direction, 'backward');
    assert.equal(view.boundary, 0, 'everything plaintext: the pass-through serves it all');
    assert.ok(view.allNew);
    assert.ok(zones.length >= payload / ZONE, `progress reported per zone (${zones.length})`);
    assert.ok(stats.midRun > 20, `requests while the boundary moved: ${stats.midRun}`);
    assert.ok(stats.crossing > 0, 'some requests straddle the boundary or the hot zone');
    // Served on (now a pass-through), and what lies on the data device is the plaintext itself.
    const extra = new Uint8Array(randomBytes(10_000));
    await view.write(extra, 123_457);
    model.set(extra, 123_457);
    const after = new Uint8Array(payload);
    await view.read(after, 0);
    assert.equal(firstDiff(after, model), -1, 'served view after the finish');
    await view.flush();
    equalPlain(mem.bytes.subarray(HDR), model, 'data device');
    await assertPlainHeader(split(mem).header);
    await assert.rejects(reencryptor.decrypt(Passphrase.fromString(PASS), { header: HEADER_FILE }), InvalidArgumentError, 'nothing left to decrypt');
    await assert.rejects(reencryptor.run(Passphrase.fromString(PASS), {}), InvalidArgumentError, 'no re-key of a plain volume');
    await view.close();
    await pool.close();
  });
}

test('online decrypt: power cut mid-run with clients writing and flushing; an offline resume gives every acknowledged write as plaintext', async () => {
  const payload = 1024 * 1024;
  for (let seed = 1; seed <= 10; seed++) {
    const resilience: Resilience = seed % 2 === 0 ? 'checksum' : 'journal';
    const { image, plain: original } = await detachedImage(payload, 4096);
    // The cut: once zone k (counted from the end) has begun, after j more writes of anyone's.
    const k = 1 + (seed % 11);
    const j = 1 + ((seed * 7) % 23);
    const fault: { cutAfterWrite?: number; seed: number; sectorSize: number } = { seed, sectorSize: resilience === 'checksum' ? 4096 : 512 };
    const dev = new FaultInjectingDevice(image, fault);
    const { header, data } = split(yielding(dev));
    const { view, reencryptor, pool } = await served(header, data, HEADER_FILE);
    const onProgress = ({ done }: { done: number }) => {
      if (done >= k * ZONE && fault.cutAfterWrite === undefined) fault.cutAfterWrite = dev.writes + j;
    };
    const acked = new Uint8Array(original);
    const inflight: Array<{ off: number; data: Uint8Array } | undefined> = [];
    let stop = false;
    const run = reencryptor.decrypt(Passphrase.fromString(PASS), { resilience, hotzoneSize: ZONE, header: HEADER_FILE, ...FAST, onProgress }).catch((err) => {
      if (!(err instanceof PowerCutError)) throw err;
    });
    const load = clientLoad(view, acked, seed, () => stop || dev.powerCut, { clients: 3, flush: true, inflight }).catch((err) => {
      if (!(err instanceof PowerCutError) && !(err instanceof DeviceIoError && dev.powerCut)) throw err;
    });
    await run;
    stop = true;
    await load;
    assert.ok(dev.powerCut, `seed ${seed}: the power was cut`);
    await pool.close();
    const after = new MemoryDevice(dev.crashImage());
    const parts = split(after);
    const r = await decryptLuks2(parts.data, { headerDevice: parts.header, passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, ...FAST });
    assert.equal(r.finished, true);
    const got = after.bytes.subarray(HDR);
    for (let i = 0; i < got.length; i++) {
      if (got[i] === acked[i]) continue;
      const w = inflight.find((x) => x && i >= x.off && i < x.off + x.data.length);
      if (w && w.data[i - w.off] === got[i]) continue;
      assert.fail(`${resilience} seed ${seed}: byte ${i} is neither the acknowledged nor the in-flight write`);
    }
  }
});

test('online decrypt: an I/O error inside a zone fences it (clients get errors there only); a stop ends at a zone boundary; online --resume-only runs recover and finish', async () => {
  const payload = 1024 * 1024;
  const { image, plain: model } = await detachedImage(payload, 4096);
  const mem = new MemoryDevice(image);
  // The first full-zone data write of the fourth zone (from the end) fails once, torn.
  let failNext = true;
  const failAt = HDR + payload - 4 * ZONE;
  const flaky = new Proxy(mem, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (prop === 'write') {
        return async (buf: Uint8Array, offset: number) => {
          if (failNext && offset === failAt && buf.length === ZONE) {
            failNext = false;
            await target.write(buf.subarray(0, 8192), offset);
            throw new DeviceIoError('injected write error');
          }
          return target.write(buf, offset);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const { header, data } = split(yielding(flaky));
  const { view, reencryptor, pool } = await served(header, data, HEADER_FILE);
  const opts = { hotzoneSize: ZONE, header: HEADER_FILE, ...FAST };
  await assert.rejects(reencryptor.decrypt(Passphrase.fromString(PASS), opts), /injected write error/);
  const zoneEnd = view.boundary;
  assert.equal(zoneEnd, payload - 3 * ZONE, 'three zones done, the fourth fenced');
  await assert.rejects(view.read(new Uint8Array(100), zoneEnd - 10), DeviceIoError);
  // Served on both sides of the fenced zone: plaintext above it, ciphertext below.
  const above = new Uint8Array(1000);
  await view.read(above, zoneEnd);
  assert.equal(firstDiff(above, model.subarray(zoneEnd, zoneEnd + 1000)), -1);
  const w = new Uint8Array(randomBytes(3000));
  await view.write(w, zoneEnd - ZONE - 4000);
  model.set(w, zoneEnd - ZONE - 4000);
  // A stop: the resume recovers the fenced zone, then stops at the next zone boundary.
  const ac = new AbortController();
  let zones = 0;
  const stopped = reencryptor.decrypt(Passphrase.fromString(PASS), { ...opts, resumeOnly: true, signal: ac.signal, onProgress: () => (++zones === 3 ? ac.abort() : undefined) });
  await assert.rejects(stopped, /stopped/);
  assert.ok(view.boundary < zoneEnd - ZONE && view.boundary > 0, `stopped part-way (${view.boundary})`);
  const mid = new Uint8Array(payload);
  await view.read(mid, 0);
  assert.equal(firstDiff(mid, model), -1, 'served view after the stop');
  const report = await reencryptor.decrypt(Passphrase.fromString(PASS), { ...opts, resumeOnly: true });
  assert.equal(report.finished, true);
  const all = new Uint8Array(payload);
  await view.read(all, 0);
  assert.equal(firstDiff(all, model), -1, 'served view after the finish');
  await view.close();
  await pool.close();
  equalPlain(mem.bytes.subarray(HDR), model, 'data device');
});

test('openReencryptingView: a decryption cut inside a hot zone is served backward (zone fenced, both sides readable) and finished online', async () => {
  const payload = 1024 * 1024;
  const { image, plain } = await detachedImage(payload, 4096);
  // Find a cut that leaves a hot zone recorded (commit A durable, commit B not).
  let crash: MemoryDevice | undefined;
  for (let cut = 10; cut < 200 && !crash; cut += 3) {
    const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut, sectorSize: 4096 });
    const parts = split(dev);
    await decryptLuks2(parts.data, { headerDevice: parts.header, passphrases: [Passphrase.fromString(PASS)], hotzoneSize: ZONE, ...FAST }).catch((err) => {
      if (!(err instanceof PowerCutError)) throw err;
    });
    const after = new MemoryDevice(dev.crashImage());
    const st = decodeReencryptState((await readLuks2Headers(split(after).header)).state.metadata);
    if (st?.hotId !== undefined) crash = after;
  }
  assert.ok(crash, 'a cut inside a hot zone');
  const { header, data } = split(crash);
  const pool = CryptoPool.create(0);
  const r = await openReencryptingView(data, header, Passphrase.fromString(PASS), pool);
  assert.equal(r.view.direction, 'backward');
  assert.ok(r.hot, 'the interrupted zone is reported');
  assert.equal(r.boundary, r.hot!.offset + r.hot!.length, 'the hot zone ends at the boundary');
  await assert.rejects(r.view.read(new Uint8Array(512), r.hot!.offset), DeviceIoError);
  const below = new Uint8Array(r.hot!.offset);
  await r.view.read(below, 0);
  equalPlain(below, plain.subarray(0, r.hot!.offset), 'ciphertext side, decrypted');
  const above = new Uint8Array(payload - r.boundary);
  await r.view.read(above, r.boundary);
  equalPlain(above, plain.subarray(r.boundary), 'plaintext side');
  const reencryptor = new OnlineReencryptor({ data, header, headerPath: HEADER_FILE, view: r.view, pool, old: r.old });
  const report = await reencryptor.decrypt(Passphrase.fromString(PASS), { resumeOnly: true, header: HEADER_FILE, hotzoneSize: ZONE, ...FAST });
  assert.equal(report.recovered, true);
  assert.equal(report.finished, true);
  const all = new Uint8Array(payload);
  await r.view.read(all, 0);
  equalPlain(all, plain, 'served after the online resume');
  await r.view.close();
  await pool.close();
  equalPlain(crash.bytes.subarray(HDR), plain, 'data device');
});

test('online decrypt refusals: attached header (data shift), a header that is not the served one, none named; nothing is written', async () => {
  // Attached header: served without a header device.
  const dataOffset = 2 * 1024 * 1024;
  const mem = new MemoryDevice(dataOffset + 512 * 1024);
  const { volume, key } = await LuksVolume.format(mem, { type: 'luks2', passphrase: Passphrase.fromString(PASS), dataOffset, keyslotsSize: dataOffset - 2 * 16384, ...FAST });
  const before = new Uint8Array(mem.bytes);
  const view = new ReencryptingDevice(EncryptedDevice.open(mem, volume, key));
  const pool = CryptoPool.create(0);
  const attached = new OnlineReencryptor({ data: mem, view, pool, old: { encryption: volume.encryption, sectorSize: volume.sectorSize, ivTweak: volume.ivTweak, dataOffset: volume.dataOffset } });
  await assert.rejects(attached.decrypt(Passphrase.fromString(PASS), { header: HEADER_FILE }), NotImplementedError);
  await assert.rejects(attached.decrypt(Passphrase.fromString(PASS), {}), NotImplementedError);
  assert.equal(Buffer.compare(mem.bytes, before), 0, 'nothing written');
  await view.close();
  await pool.close();
  // Detached, but the client names another header file, or none.
  const { image } = await detachedImage(256 * 1024, 4096);
  const img = new MemoryDevice(image);
  const untouched = new Uint8Array(img.bytes);
  const { header, data } = split(img);
  const s = await served(header, data, HEADER_FILE);
  const other = join(dirs.dir, 'other.hdr');
  writeFileSync(other, 'x');
  await assert.rejects(s.reencryptor.decrypt(Passphrase.fromString(PASS), { header: other }), InvalidArgumentError);
  await assert.rejects(s.reencryptor.decrypt(Passphrase.fromString(PASS), {}), /give it with --header/);
  await assert.rejects(s.reencryptor.decrypt(Passphrase.fromString(PASS), { header: HEADER_FILE, cipher: 'aes-xts-plain64' }), InvalidArgumentError);
  assert.equal(Buffer.compare(img.bytes, untouched), 0, 'nothing written');
  assert.equal(s.view.hasNewView, false);
  await s.view.close();
  await s.pool.close();
});

test('ReencryptingDevice backward: the zone must end at the boundary, which moves down; reads route old below, new above', async () => {
  const size = 64 * 1024;
  const oldDev = new MemoryDevice(size);
  oldDev.bytes.fill(1);
  const newDev = new MemoryDevice(size);
  newDev.bytes.fill(2);
  const view = new ReencryptingDevice(oldDev);
  view.installNew(newDev, 'backward');
  assert.equal(view.boundary, size);
  await assert.rejects(view.enterZone(0, 16 * 1024), DeviceIoError, 'a forward zone is refused');
  await view.enterZone(48 * 1024, 16 * 1024);
  view.leaveZone(48 * 1024, 16 * 1024, 'new');
  assert.equal(view.boundary, 48 * 1024);
  const got = new Uint8Array(32 * 1024);
  await view.read(got, 32 * 1024);
  assert.ok(got.subarray(0, 16 * 1024).every((b) => b === 1) && got.subarray(16 * 1024).every((b) => b === 2), 'split at the boundary');
  assert.throws(() => view.installNew(new MemoryDevice(size)), InvalidArgumentError, 'one new view');
  const forward = new ReencryptingDevice(new MemoryDevice(size));
  forward.installNew(new MemoryDevice(size));
  await forward.enterZone(0, 4096);
  forward.leaveZone(0, 4096, 'new');
  await view.close();
  await forward.close();
});

// ---- CLI: `attach --header` serving over NBD while `brickcrypt reencrypt --decrypt --header` (another process) decrypts it ----

const cliSkip = needTools('cryptsetup');

/** A cryptsetup volume with a detached header and random plaintext (data offset 0). */
async function detachedFiles(dir: string, size: number): Promise<{ img: string; hdr: string; keyFile: string; model: Uint8Array }> {
  const img = join(dir, 'data.img');
  const hdr = join(dir, 'hdr.img');
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, PASS);
  writeFileSync(img, '');
  run('truncate', ['-s', String(size), img]);
  run('cryptsetup', ['luksFormat', '--type', 'luks2', '--batch-mode', ...CS_FAST, '--key-file', keyFile, '--header', hdr, img]);
  const { FileDevice } = await import('../../src/devices/file-device.js');
  const file = await FileDevice.open(img);
  const header = await FileDevice.open(hdr);
  try {
    const vol = await LuksVolume.open(file, { headerDevice: header });
    const { key } = await vol.unlock(Passphrase.fromString(PASS));
    const view = EncryptedDevice.open(file, vol, key);
    const model = new Uint8Array(randomBytes(view.size));
    await view.write(model, 0);
    await view.flush();
    await view.close();
    return { img, hdr, keyFile, model };
  } finally {
    await header.close();
    await file.close();
  }
}

function cryptsetupSeesPlain(hdr: string): void {
  const m = cryptsetupMetadata(hdr);
  assert.equal(m.config.requirements, undefined);
  assert.deepEqual(Object.values(m.segments).map((s: any) => s.type), ['linear']);
  assert.deepEqual(Object.keys(m.keyslots), []);
}

test('CLI: reencrypt --decrypt --header of a volume attach serves is done by the attach process while NBD clients read and write; the file ends up as the plaintext', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-decrypt-');
  try {
    const { img, hdr, keyFile, model } = await detachedFiles(dir, 48 << 20);
    const sock = join(dir, 'vol.sock');
    const att = await startAttach(img, keyFile, sock, ['--header', hdr]);
    try {
      const client = await NbdTestClient.connect(sock);
      const reader = await NbdTestClient.connect(sock);
      let finished = false;
      const progress: number[] = [];
      const re = runReencrypt([img, '--decrypt', '--header', hdr, '--key-file', keyFile, '--hotzone-size', '1M', ...CS_FAST], (e) => {
        if (e.event === 'progress') progress.push(e.bytes as number);
      });
      void re.done.then(() => (finished = true));
      const half = model.length / 2;
      // Backward: the writer works in the second half (decrypted first), the reader in the first.
      const [ops, reads] = await Promise.all([
        nbdLoad(client, model, () => finished, {}, 17, model.length, half),
        nbdCheckedReads(reader, model, () => finished, 0, half),
      ]);
      const r = await re.done;
      assert.equal(r.code, 0, r.stderr);
      const done = r.events.find((e) => e.event === 'done')!;
      assert.equal(done.finished, true);
      assert.equal(done.total, model.length);
      assert.ok(progress.length >= 1, 'progress lines streamed back');
      assert.ok(ops > 10 && reads > 10, `clients kept going (${ops} writes/reads, ${reads} reads)`);
      assert.match(att.stderr(), /online decryption finished/);
      // Served on after the finish: the same plaintext, now a pass-through.
      await nbdLoad(client, model, (() => { let k = 0; return () => k++ >= 20; })(), {}, 18);
      equalPlain(await client.readAll(0, model.length), model, 'served after the finish');
      // A second request: nothing left to do.
      const again = await runReencrypt([img, '--decrypt', '--header', hdr, '--key-file', keyFile]).done;
      assert.equal(again.code, 1, again.stderr);
      assert.match(again.stderr, /plain data now/);
      client.close();
      reader.close();
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    equalPlain(readFileSync(img), model, 'the data file is the plaintext');
    cryptsetupSeesPlain(hdr);
    // The volume is raw now: attach serves it as it is.
    const raw = await startAttach(img, keyFile, sock, []).catch((e: Error) => e);
    assert.ok(raw instanceof Error && /not a LUKS volume; a key is not needed/.test(raw.message), String(raw));
  } finally {
    cleanup();
  }
});

for (const after of ['offline', 'online'] as const) {
test(`CLI: kill -9 of the server mid-decryption; cryptsetup reencrypt --resume-only --header finishes a copy, and ${after === 'offline' ? 'offline reencrypt --decrypt --resume-only --header' : 'attach --header --serve-reencrypting (hot zone fenced) + an online --resume-only'} finishes with every acknowledged write`, { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-decrypt-');
  try {
    const { img, hdr, keyFile, model } = await detachedFiles(dir, 96 << 20);
    const sock = join(dir, 'vol.sock');
    const att = await startAttach(img, keyFile, sock, ['--header', hdr]);
    const { result: r, inflight } = await killServerMidRun(att, sock, [img, '--decrypt', '--header', hdr, '--key-file', keyFile, '--hotzone-size', '1M', ...CS_FAST], model, 23);
    assert.match(r.stderr, /resume-only/);
    // cryptsetup, on a copy (it wants `repair` first after a crash inside a hot zone).
    const { data: vcopy, header: hcopy, check } = cryptsetupFinishesKilledRun(img, hdr, keyFile, dir, model, inflight);
    check(readFileSync(vcopy), 'cryptsetup resume');
    cryptsetupSeesPlain(hcopy);
    if (after === 'offline') {
      // brickcrypt, offline (the dead server's lock is stale).
      const resumed = runCli(['reencrypt', '--decrypt', '--resume-only', '--header', hdr, img, '--key-file', keyFile]);
      assert.equal(resumed.status, 0, resumed.stderr);
    } else {
      await serveAndResumeOnline(img, hdr, keyFile, sock, model, inflight.w, /(\d+) of (\d+) bytes decrypted/, ['--decrypt']);
    }
    check(readFileSync(img), `${after} resume`);
    cryptsetupSeesPlain(hdr);
  } finally {
    cleanup();
  }
});
}

test('CLI online refusals, nothing written: attached header (data shift), the wrong or no --header, LUKS1, --encrypt of a served raw file', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-decrypt-');
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const sock = join(dir, 'vol.sock');
    // Attached LUKS2 header: decrypting it moves the data, not built online.
    const img = join(dir, 'attached.img');
    await cryptsetupVolumeWithData(img, 24 << 20, keyFile);
    let before = readFileSync(img);
    let att = await startAttach(img, keyFile, sock);
    try {
      for (const extra of [[], ['--header', join(dir, 'export.hdr')]]) {
        const r = await runReencrypt([img, '--decrypt', '--key-file', keyFile, ...extra]).done;
        assert.equal(r.code, 4, r.stderr);
        assert.match(r.stderr, /NOT_IMPLEMENTED.*data shift/);
      }
      assert.equal(existsSync(`${img}.decrypt-header`), false, 'no header export');
      assert.equal(existsSync(join(dir, 'export.hdr')), false, 'no header export');
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    assert.equal(Buffer.compare(readFileSync(img), before), 0, 'attached volume untouched');
    // Detached: --header must name the served header.
    const d = await detachedFiles(join(dir), 8 << 20);
    const other = join(dir, 'other.hdr');
    writeFileSync(other, readFileSync(d.hdr));
    before = readFileSync(d.img);
    att = await startAttach(d.img, keyFile, sock, ['--header', d.hdr]);
    try {
      const wrong = await runReencrypt([d.img, '--decrypt', '--header', other, '--key-file', keyFile]).done;
      assert.equal(wrong.code, 1, wrong.stderr);
      assert.match(wrong.stderr, /not the header the volume is served with/);
      const none = await runReencrypt([d.img, '--decrypt', '--key-file', keyFile]).done;
      assert.equal(none.code, 1, none.stderr);
      assert.match(none.stderr, /give it with --header/);
      assert.equal(existsSync(`${d.img}.decrypt-header`), false, 'no header export');
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    assert.equal(Buffer.compare(readFileSync(d.img), before), 0, 'detached volume untouched');
    assert.equal(Buffer.compare(readFileSync(other), readFileSync(d.hdr)), 0, 'header untouched');
    // LUKS1: attach serves it without the online hand-over; reencrypt finds the lock held.
    const l1 = join(dir, 'luks1.img');
    writeFileSync(l1, '');
    run('truncate', ['-s', String(8 << 20), l1]);
    run('cryptsetup', ['luksFormat', '--type', 'luks1', '--batch-mode', ...CS_FAST, '--key-file', keyFile, l1]);
    before = readFileSync(l1);
    att = await startAttach(l1, keyFile, sock);
    try {
      assert.equal(existsSync(`${l1}.ctl`), false, 'no control socket for LUKS1');
      const r = await runReencrypt([l1, '--decrypt', '--key-file', keyFile]).done;
      assert.equal(r.code, 5, r.stderr);
      assert.match(r.stderr, /LOCKED/);
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    assert.equal(Buffer.compare(readFileSync(l1), before), 0, 'LUKS1 volume untouched');
    assert.equal(existsSync(`${l1}.decrypt-header`), false);
    // A raw file served as it is: --encrypt finds the lock held; no header file is created.
    const raw = join(dir, 'raw.img');
    writeFileSync(raw, randomBytes(4 << 20));
    before = readFileSync(raw);
    const rawHdr = join(dir, 'raw.hdr');
    const rawAtt = await startAttach(raw, keyFile, sock).catch((e: Error) => e);
    assert.ok(rawAtt instanceof Error, 'a key is refused for a raw file');
    const { spawn } = await import('node:child_process');
    const { cliPath } = await import('../helpers/tools.js');
    const child = spawn(process.execPath, [cliPath, 'attach', raw, '--socket', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((res) => child.stdout!.once('data', () => res()));
    try {
      const r = await runReencrypt([raw, '--encrypt', '--type', 'luks2', '--header', rawHdr, '--key-file', keyFile, ...CS_FAST]).done;
      assert.equal(r.code, 5, r.stderr);
      assert.equal(existsSync(rawHdr), false, 'no header file created');
    } finally {
      child.kill('SIGTERM');
      await new Promise((res) => child.once('exit', res));
    }
    assert.equal(Buffer.compare(readFileSync(raw), before), 0, 'raw file untouched');
  } finally {
    cleanup();
  }
});
