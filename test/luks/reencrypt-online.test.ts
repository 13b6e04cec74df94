/**
 * Online re-key, in process: a `ReencryptingDevice` served while the engine rewrites the volume
 * under it (through `OnlineReencryptor`, as `attach` runs it). Clients read and write at random
 * unaligned offsets throughout; every read must return what the model says, and the volume must
 * end up holding the model's bytes under the new key. A power cut in the middle (with clients
 * writing and flushing) is finished offline and still gives every acknowledged write.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../../src/block-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { ReencryptingDevice, SharedRangeLock } from '../../src/devices/reencrypting-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { reencryptLuks2, type Resilience } from '../../src/luks/reencrypt/engine.js';
import { OnlineReencryptor, openReencryptingView, parseOnlineOptions } from '../../src/workflows/reencrypt-online.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { DeviceIoError, InvalidArgumentError, LockedError, WrongPassphraseError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NbdTestClient, killServerMidRun, acknowledgedOrInFlight, clientLoad, firstDiff, nbdCheckedReads, nbdLoad, runReencrypt, serveAndResumeOnline, startAttach, yielding } from '../helpers/online.js';
import { needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { cryptsetupMetadata, cryptsetupVolumeWithData, readPlaintext } from '../helpers/reencrypt-states.js';
import { equalPlain, luksPlaintext } from '../helpers/plaintext.js';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'online pass';

async function smallVolume(dev: MemoryDevice, payload: number, sectorSize: 512 | 4096): Promise<Uint8Array> {
  const dataOffset = 2 * 1024 * 1024;
  const { volume, key } = await LuksVolume.format(dev, { type: 'luks2', passphrase: Passphrase.fromString(PASS), dataOffset, keyslotsSize: dataOffset - 2 * 16384, sectorSize, ...FAST });
  const plain = new Uint8Array(randomBytes(payload));
  const view = EncryptedDevice.open(dev, volume, key);
  await view.write(plain, 0);
  await view.close();
  return plain;
}

/** The served stack as attach builds it: old-key view, reencrypting view, reencryptor on a pool. */
async function served(dev: BlockDevice): Promise<{ view: ReencryptingDevice; reencryptor: OnlineReencryptor; pool: CryptoPool }> {
  const vol = await LuksVolume.open(dev);
  const { key } = await vol.unlock(Passphrase.fromString(PASS), { forWrite: true });
  const view = new ReencryptingDevice(EncryptedDevice.open(dev, vol, key));
  const pool = CryptoPool.create(0);
  const reencryptor = new OnlineReencryptor({
    data: dev,
    view,
    pool,
    old: { encryption: vol.encryption, sectorSize: vol.sectorSize, ivTweak: vol.ivTweak, dataOffset: vol.dataOffset },
  });
  return { view, reencryptor, pool };
}

const plaintextOf = (dev: BlockDevice): Promise<Uint8Array> => luksPlaintext(dev, PASS);


for (const { resilience, from, to, cipher } of [
  { resilience: 'checksum' as Resilience, from: 4096 as const, to: 4096, cipher: undefined },
  { resilience: 'journal' as Resilience, from: 512 as const, to: 4096, cipher: 'aes-xts-plain64' },
  { resilience: 'none' as Resilience, from: 4096 as const, to: 512, cipher: undefined },
]) {
  test(`online re-key (${resilience}, sectors ${from} -> ${to}): concurrent random reads and writes see the model throughout; the result is the model under the new key`, async () => {
    const payload = 2 * 1024 * 1024;
    const mem = new MemoryDevice(2 * 1024 * 1024 + payload);
    const model = await smallVolume(mem, payload, from);
    const dev = yielding(mem);
    const { view, reencryptor, pool } = await served(dev);
    let done = false;
    const zones: number[] = [];
    const run = reencryptor
      .run(Passphrase.fromString(PASS), { resilience, sectorSize: to, ...(cipher ? { cipher, keySizeBits: 256 } : {}), hotzoneSize: 64 * 1024, ...FAST, onProgress: ({ done: d }) => zones.push(d) })
      .finally(() => (done = true));
    const stats = await clientLoad(view, model, resilience.length * 7 + to, () => done);
    const report = await run;
    process.stderr.write(`# ${resilience}: ${JSON.stringify(stats)}\n`);
    assert.equal(report.finished, true);
    assert.equal(view.boundary, 0, 'one key again: the new view is now the only one');
    assert.equal(view.hasNewView, false);
    assert.ok(zones.length >= payload / (64 * 1024), `progress reported per zone (${zones.length})`);
    // The load really ran against a half re-keyed volume, across the boundary.
    assert.ok(stats.midRun > 20, `requests while the boundary moved: ${stats.midRun}`);
    assert.ok(stats.crossing > 0, 'some requests straddle the boundary or the hot zone');
    // Served after the finish (old view retired) and read back cold under the new key.
    const after = new Uint8Array(payload);
    await view.read(after, 0);
    assert.equal(firstDiff(after, model), -1, 'served view after the finish');
    await view.close();
    await pool.close();
    const vol = await LuksVolume.open(mem);
    assert.equal(vol.payloadFence, undefined);
    assert.equal(vol.sectorSize, to);
    assert.equal(firstDiff(await plaintextOf(mem), model), -1, 'volume opened afresh');
  });
}

test('online: power cut mid-run with clients writing and flushing; offline resume keeps every acknowledged write', async () => {
  const payload = 1024 * 1024;
  const base = new MemoryDevice(2 * 1024 * 1024 + payload);
  const original = await smallVolume(base, payload, 4096);
  const image = new Uint8Array(base.bytes);
  for (let seed = 1; seed <= 12; seed++) {
    const resilience: Resilience = seed % 2 === 0 ? 'checksum' : 'journal';
    // The cut: inside zone k, after its h-th header write (checksums or journal, commit A, commit
    // B) and j more writes of anyone's — so it falls in every phase of a zone, clients writing.
    const k = 1 + (seed % 13);
    const h = 1 + (seed % 9);
    const j = seed % 4;
    const fault: { cutAfterWrite?: number; seed: number; sectorSize: number } = { seed, sectorSize: 4096 };
    const dev = new FaultInjectingDevice(image, fault);
    let armed = false;
    let headerWrites = 0;
    const watched = new Proxy(dev, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (prop === 'write') {
          return async (buf: Uint8Array, offset: number) => {
            if (armed && offset < 2 * 1024 * 1024 && ++headerWrites === h && fault.cutAfterWrite === undefined) fault.cutAfterWrite = dev.writes + 1 + j;
            return target.write(buf, offset);
          };
        }
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const { view, reencryptor, pool } = await served(yielding(watched));
    const onProgress = ({ done }: { done: number }) => {
      if (done >= k * 64 * 1024) armed = true;
    };
    const acked = new Uint8Array(original);
    const inflight: Array<{ off: number; data: Uint8Array } | undefined> = [];
    let stop = false;
    const run = reencryptor.run(Passphrase.fromString(PASS), { resilience, hotzoneSize: 64 * 1024, ...FAST, onProgress }).catch((err) => {
      if (!(err instanceof PowerCutError)) throw err;
    });
    // After the cut, requests fail: with the power cut, or as fenced (the zone in flight).
    const load = clientLoad(view, acked, seed, () => stop || dev.powerCut, { clients: 3, flush: true, inflight }).catch((err) => {
      if (!(err instanceof PowerCutError) && !(err instanceof DeviceIoError && dev.powerCut)) throw err;
    });
    await run;
    stop = true;
    await load;
    assert.ok(dev.powerCut, `seed ${seed}: the power was cut`);
    await pool.close();
    const after = new MemoryDevice(dev.crashImage());
    if ((await LuksVolume.open(after)).payloadFence !== undefined) await reencryptLuks2(after, { passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, ...FAST });
    const got = await plaintextOf(after);
    for (let i = 0; i < got.length; i++) {
      if (got[i] === acked[i]) continue;
      const w = inflight.find((x) => x && i >= x.off && i < x.off + x.data.length);
      if (w && w.data[i - w.off] === got[i]) continue;
      assert.fail(`${resilience} seed ${seed}: byte ${i} is neither the acknowledged nor the in-flight write`);
    }
  }
});

test('ReencryptingDevice: requests into the hot zone wait; the boundary moves; a failed zone is fenced until recovered', async () => {
  const dev = new MemoryDevice(2 * 1024 * 1024 + 256 * 1024);
  const model = await smallVolume(dev, 256 * 1024, 4096);
  const vol = await LuksVolume.open(dev);
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const oldView = EncryptedDevice.open(dev, vol, VolumeKey.copyOf(key.expose()));
  const view = new ReencryptingDevice(oldView);
  await assert.rejects(view.enterZone(0, 4096), DeviceIoError, 'no new view yet');
  // A stand-in "new" view: the same key, so the bytes stay readable either way; what is
  // checked here is the routing and the waiting.
  view.installNew(EncryptedDevice.open(dev, vol, key));
  assert.throws(() => view.installNew(oldView), InvalidArgumentError);
  await assert.rejects(view.enterZone(4096, 4096), DeviceIoError, 'a zone must start at the boundary');
  await view.enterZone(0, 65536);
  let wrote = false;
  const w = view.write(new Uint8Array([1, 2, 3]), 65534).then(() => (wrote = true)); // straddles the zone end
  let readOutside = false;
  const r = view.read(new Uint8Array(10), 70000).then(() => (readOutside = true));
  for (let i = 0; i < 20; i++) await new Promise((res) => setImmediate(res));
  assert.equal(wrote, false, 'the write into the hot zone waits');
  assert.equal(readOutside, true, 'a read outside the zone goes on');
  view.leaveZone(0, 65536, 'new');
  await w;
  await r;
  assert.equal(view.boundary, 65536);
  model.set([1, 2, 3], 65534);
  const got = new Uint8Array(model.length);
  await view.read(got, 0);
  assert.equal(firstDiff(got, model), -1);
  // A zone left half rewritten: requests into it fail, others go on; recovering it unfences.
  await view.enterZone(65536, 65536);
  view.leaveZone(65536, 65536, 'unknown');
  await assert.rejects(view.read(new Uint8Array(8), 65536 + 100), DeviceIoError);
  await assert.rejects(view.write(new Uint8Array(8), 65530), DeviceIoError, 'a request touching the fenced zone fails whole');
  await view.read(new Uint8Array(8), 0);
  await view.read(new Uint8Array(8), 200 * 1024);
  await view.enterZone(65536, 65536);
  view.leaveZone(65536, 65536, 'new');
  await view.read(new Uint8Array(8), 65536 + 100);
  assert.throws(() => view.leaveZone(0, 4096, 'new'), DeviceIoError, 'no zone held');
  await view.close();
});

test('SharedRangeLock: shared holders overlap, an exclusive waiter is not starved by later readers', async () => {
  const lock = new SharedRangeLock();
  const order: string[] = [];
  const a = await lock.acquire(0, 100, false);
  const b = await lock.acquire(50, 150, false); // shared with a: granted at once
  const x = lock.acquire(60, 70, true).then((rel) => (order.push('x'), rel));
  const c = lock.acquire(65, 66, false).then((rel) => (order.push('c'), rel)); // after x: waits for it
  const d = await lock.acquire(200, 300, false); // no conflict
  order.push('d');
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(order, ['d']);
  a();
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(order, ['d'], 'x still waits for b');
  b();
  const rx = await x;
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(order, ['d', 'x']);
  rx();
  (await c)();
  d();
  assert.deepEqual(order, ['d', 'x', 'c']);
  assert.equal(lock.size, 0);
});

test('OnlineReencryptor: one run at a time; control options are checked', async () => {
  const dev = new MemoryDevice(2 * 1024 * 1024 + 512 * 1024);
  await smallVolume(dev, 512 * 1024, 4096);
  const { view, reencryptor, pool } = await served(dev);
  const first = reencryptor.run(Passphrase.fromString(PASS), { hotzoneSize: 64 * 1024, ...FAST });
  await assert.rejects(reencryptor.run(Passphrase.fromString(PASS), FAST), LockedError);
  await reencryptor.stop();
  await assert.rejects(first, (err: Error) => err.name === 'CancelledError');
  assert.ok(view.boundary < view.size, 'stopped before the end');
  assert.equal((await LuksVolume.open(dev)).payloadFence?.name, 'ReencryptionInProgressError');
  // Resumed in the same process, the served view picks up where it stopped.
  const report = await reencryptor.run(Passphrase.fromString(PASS), { resumeOnly: true, ...FAST });
  assert.equal(report.finished, true);
  assert.equal(view.hasNewView, false);
  // A second re-key of the same served volume (new sector size), with a client write between.
  const mark = new Uint8Array(randomBytes(5000));
  await view.write(mark, 12345);
  const second = await reencryptor.run(Passphrase.fromString(PASS), { sectorSize: 512, hotzoneSize: 128 * 1024, ...FAST });
  assert.equal(second.finished, true);
  assert.equal(second.sectorSize, 512);
  const got = new Uint8Array(5000);
  await view.read(got, 12345);
  assert.equal(firstDiff(got, mark), -1);
  assert.equal(firstDiff((await plaintextOf(dev)).subarray(12345, 17345), mark), -1);
  await view.close();
  await pool.close();
  assert.deepEqual(parseOnlineOptions({ resumeOnly: true, hotzoneSize: 65536, cipher: 'aes-xts-plain64' }), { resumeOnly: true, hotzoneSize: 65536, cipher: 'aes-xts-plain64' });
  assert.throws(() => parseOnlineOptions({ headerDevice: 1 }), InvalidArgumentError);
  assert.throws(() => parseOnlineOptions({ hotzoneSize: 'big' }), InvalidArgumentError);
  assert.throws(() => parseOnlineOptions({ resilience: 'datashift' }), InvalidArgumentError);
});

// ---- CLI: `attach` serving over NBD while `brickcrypt reencrypt` (another process) re-keys it ----

const same = equalPlain;

const CLI_FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];


const cliSkip = needTools('cryptsetup');

test('CLI: reencrypt of an attached volume is done by the attach process while an NBD client reads and writes; cryptsetup opens the result', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-');
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const model = await cryptsetupVolumeWithData(img, 48 << 20, keyFile);
    const sock = join(dir, 'vol.sock');
    const att = await startAttach(img, keyFile, sock);
    const ctl = `${img}.ctl`;
    try {
      assert.ok(existsSync(ctl), 'control socket next to the volume');
      assert.equal(statSync(ctl).mode & 0o777, 0o600);
      const client = await NbdTestClient.connect(sock);
      const reader = await NbdTestClient.connect(sock);
      let finished = false;
      const progress: number[] = [];
      const re = runReencrypt([img, '--key-file', keyFile, '--hotzone-size', '1M', ...CLI_FAST], (e) => {
        if (e.event === 'progress') progress.push(e.bytes as number);
      });
      void re.done.then(() => (finished = true));
      const half = model.length / 2;
      const [ops, reads] = await Promise.all([
        // The writer works in the first half, a second connection reads the second half.
        nbdLoad(client, model, () => finished, {}, 7, half),
        nbdCheckedReads(reader, model, () => finished, half, model.length),
      ]);
      const r = await re.done;
      assert.equal(r.code, 0, r.stderr);
      const done = r.events.find((e) => e.event === 'done')!;
      assert.equal(done.finished, true);
      assert.equal(done.total, model.length);
      assert.ok(progress.length >= 1, 'progress lines streamed back');
      assert.ok(ops > 10 && reads > 10, `clients kept going (${ops} writes/reads, ${reads} reads)`);
      assert.match(att.stderr(), /online reencryption finished/);
      // Served on after the finish, now under the new key only.
      await nbdLoad(client, model, (() => { let k = 0; return () => k++ >= 20; })(), {}, 8);
      client.close();
      reader.close();
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    assert.equal(existsSync(ctl), false, 'control socket removed at exit');
    same(await readPlaintext(img, PASS), model, 'plaintext after detach');
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]);
    const meta = cryptsetupMetadata(img);
    assert.equal(meta.config.requirements, undefined);
    assert.equal(Object.keys(meta.segments).length, 1);
  } finally {
    cleanup();
  }
});

for (const after of ['offline', 'online'] as const) {
test(`CLI: kill -9 of the serving process mid-way; ${after === 'offline' ? 'offline --resume-only finishes' : 'attach --serve-reencrypting serves it (hot zone fenced) and an online --resume-only finishes'} with every acknowledged write`, { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-');
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const model = await cryptsetupVolumeWithData(img, 128 << 20, keyFile);
    const sock = join(dir, 'vol.sock');
    const att = await startAttach(img, keyFile, sock);
    const { result: r, inflight } = await killServerMidRun(att, sock, [img, '--key-file', keyFile, '--hotzone-size', '1M', ...CLI_FAST], model, 11);
    assert.match(r.stderr, /resume-only/);
    const mid = cryptsetupMetadata(img);
    assert.ok(mid.config.requirements?.mandatory?.some((x: string) => x.startsWith('online-reencrypt')), 'stopped mid-way');
    if (after === 'offline') {
      const resumed = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
      assert.equal(resumed.status, 0, resumed.stderr);
    } else {
      const refused = runCli(['attach', img, '--key-file', keyFile, '--socket', sock]);
      assert.equal(refused.status, 5, refused.stderr);
      assert.match(refused.stderr, /--serve-reencrypting/);
      await serveAndResumeOnline(img, undefined, keyFile, sock, model, inflight.w, /reencryption recorded, \d+ of \d+ bytes under the new key/, []);
    }
    acknowledgedOrInFlight(await readPlaintext(img, PASS), model, inflight, 'after the resume');
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]);
  } finally {
    cleanup();
  }
});
}

test('CLI online: wrong passphrase exits 2; Ctrl-C of the CLI stops the server at a zone boundary (130), an online --resume-only finishes; detach mid-run stops cleanly, attach then refuses, offline resume finishes', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-');
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    const wrong = join(dir, 'wrong');
    writeFileSync(keyFile, PASS);
    writeFileSync(wrong, 'not it');
    const model = await cryptsetupVolumeWithData(img, 128 << 20, keyFile);
    const sock = join(dir, 'vol.sock');
    let att = await startAttach(img, keyFile, sock);
    let client = await NbdTestClient.connect(sock);
    try {
      let r = await runReencrypt([img, '--key-file', wrong, ...CLI_FAST]).done;
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /WRONG_PASSPHRASE/);
      r = await runReencrypt([img, '--key-file', keyFile, '--header', join(dir, 'hdr')]).done;
      assert.equal(r.code, 1, r.stderr);
      // SIGINT to the CLI: the server stops at the next zone boundary and says so.
      let sent = false;
      const first = runReencrypt([img, '--key-file', keyFile, '--hotzone-size', '1M', ...CLI_FAST], (e) => {
        if (e.event === 'progress' && !sent) {
          sent = true;
          first.child.kill('SIGINT');
        }
      });
      r = await first.done;
      assert.ok(sent, 'interrupted during the run');
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stderr, /consistent point/);
      assert.ok(cryptsetupMetadata(img).config.requirements?.mandatory?.length > 0, 'recorded, not finished');
      await nbdLoad(client, model, (() => { let k = 0; return () => k++ >= 30; })(), {}, 3);
      r = await runReencrypt(['--resume-only', img, '--key-file', keyFile]).done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.events.find((e) => e.event === 'done')!.finished, true);
      // A second re-key, stopped by detaching the server mid-run.
      let stopped = false;
      const second = runReencrypt([img, '--key-file', keyFile, '--hotzone-size', '1M', '--resilience', 'journal', ...CLI_FAST], (e) => {
        if (e.event === 'progress' && !stopped) {
          stopped = true;
          att.child.kill('SIGTERM');
        }
      });
      r = await second.done;
      assert.ok(stopped);
      assert.equal(r.code, 130, r.stderr);
      assert.equal(await att.exited, 0, att.stderr());
    } finally {
      client.close();
      att.child.kill('SIGTERM');
      await att.exited;
    }
    const again = runCli(['attach', img, '--key-file', keyFile, '--socket', sock]);
    assert.equal(again.status, 5, again.stderr);
    assert.match(again.stderr, /REENCRYPTION_IN_PROGRESS/);
    const resumed = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
    assert.equal(resumed.status, 0, resumed.stderr);
    same(await readPlaintext(img, PASS), model, 'plaintext after both runs');
    // Serve it again once more: the client's data is there.
    att = await startAttach(img, keyFile, sock);
    client = await NbdTestClient.connect(sock);
    same(await client.read(0, 1 << 20), model.subarray(0, 1 << 20), 'served after the offline finish');
    client.close();
    att.child.kill('SIGTERM');
    assert.equal(await att.exited, 0);
  } finally {
    cleanup();
  }
});

test('online: an I/O error inside a zone fences it (clients get errors there only); an online --resume-only recovers it', async () => {
  const payload = 1024 * 1024;
  const mem = new MemoryDevice(2 * 1024 * 1024 + payload);
  const model = await smallVolume(mem, payload, 4096);
  // The engine's first full-zone data write fails once (a transient device error).
  let failNext = true;
  const flaky = new Proxy(mem, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (prop === 'write') {
        return async (buf: Uint8Array, offset: number) => {
          if (failNext && offset >= 2 * 1024 * 1024 + 3 * 65536 && buf.length === 65536) {
            failNext = false;
            await target.write(buf.subarray(0, 8192), offset); // torn: part of the zone is rewritten
            throw new DeviceIoError('injected write error');
          }
          return target.write(buf, offset);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const { view, reencryptor, pool } = await served(yielding(flaky));
  await assert.rejects(reencryptor.run(Passphrase.fromString(PASS), { hotzoneSize: 64 * 1024, ...FAST }), /injected write error/);
  const zoneStart = view.boundary;
  assert.ok(zoneStart >= 3 * 65536 && zoneStart < payload);
  await assert.rejects(view.read(new Uint8Array(100), zoneStart + 10), DeviceIoError);
  // Outside the fenced zone the volume is served on, both sides of it.
  const before = new Uint8Array(1000);
  await view.read(before, zoneStart - 1000);
  assert.equal(firstDiff(before, model.subarray(zoneStart - 1000, zoneStart)), -1);
  const w = new Uint8Array(randomBytes(3000));
  await view.write(w, zoneStart + 65536 + 5);
  model.set(w, zoneStart + 65536 + 5);
  // The header names the hot zone; the resume recovers it in the serving process.
  const report = await reencryptor.run(Passphrase.fromString(PASS), { resumeOnly: true, ...FAST });
  assert.equal(report.recovered, true);
  assert.equal(report.finished, true);
  const all = new Uint8Array(payload);
  await view.read(all, 0);
  assert.equal(firstDiff(all, model), -1, 'served view after recovery');
  await view.close();
  await pool.close();
  assert.equal(firstDiff(await plaintextOf(mem), model), -1, 'volume opened afresh');
});

test('openReencryptingView: a re-key stopped offline at a zone boundary is served through both keys and finished online', async () => {
  const payload = 1024 * 1024;
  const mem = new MemoryDevice(2 * 1024 * 1024 + payload);
  const model = await smallVolume(mem, payload, 4096);
  const ac = new AbortController();
  await assert.rejects(
    reencryptLuks2(mem, { passphrases: [Passphrase.fromString(PASS)], hotzoneSize: 64 * 1024, sectorSize: 512, ...FAST, signal: ac.signal, onProgress: ({ done }) => done >= 5 * 65536 && ac.abort() }),
    (err: Error) => err.name === 'CancelledError',
  );
  const pool = CryptoPool.create(0);
  await assert.rejects(openReencryptingView(mem, undefined, Passphrase.fromString('wrong'), pool), WrongPassphraseError);
  const r = await openReencryptingView(mem, undefined, Passphrase.fromString(PASS), pool);
  assert.equal(r.boundary, 5 * 65536);
  assert.equal(r.hot, undefined);
  assert.equal(r.old.sectorSize, 4096);
  const all = new Uint8Array(payload);
  await r.view.read(all, 0);
  assert.equal(firstDiff(all, model), -1, 'both halves decrypt');
  const w = new Uint8Array(randomBytes(70_000));
  await r.view.write(w, 5 * 65536 - 30_000); // across the boundary
  model.set(w, 5 * 65536 - 30_000);
  const reencryptor = new OnlineReencryptor({ data: mem, view: r.view, pool, old: r.old });
  const report = await reencryptor.run(Passphrase.fromString(PASS), { resumeOnly: true, hotzoneSize: 64 * 1024, ...FAST });
  assert.equal(report.finished, true);
  assert.equal(report.sectorSize, 512);
  await r.view.read(all, 0);
  assert.equal(firstDiff(all, model), -1);
  await r.view.close();
  await pool.close();
  assert.equal(firstDiff(await plaintextOf(mem), model), -1);
});

test('CLI online with a detached header (attach --header): re-keyed while a client writes; cryptsetup opens it with the header', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-');
  try {
    const img = join(dir, 'data.img');
    const hdr = join(dir, 'hdr.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    writeFileSync(img, '');
    run('truncate', ['-s', String(32 << 20), img]);
    run('cryptsetup', ['luksFormat', '--type', 'luks2', '--batch-mode', ...CLI_FAST, '--key-file', keyFile, '--header', hdr, img]);
    const sock = join(dir, 'vol.sock');
    const att = await startAttach(img, keyFile, sock, ['--header', hdr]);
    const client = await NbdTestClient.connect(sock);
    const model = new Uint8Array(32 << 20);
    for (let p = 0; p < model.length; p += 4 << 20) await client.write(p, model.subarray(p, p + (4 << 20))); // a known start: zeros
    await client.flush();
    let finished = false;
    const re = runReencrypt([img, '--key-file', keyFile, '--hotzone-size', '1M', '--resilience', 'journal', ...CLI_FAST]);
    void re.done.then(() => (finished = true));
    const ops = await nbdLoad(client, model, () => finished, {}, 21);
    const r = await re.done;
    assert.equal(r.code, 0, r.stderr);
    assert.ok(ops > 0);
    same(await client.readAll(0, model.length), model, 'served after the re-key');
    client.close();
    att.child.kill('SIGTERM');
    assert.equal(await att.exited, 0, att.stderr());
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, '--header', hdr, img]);
    assert.equal(cryptsetupMetadata(hdr).config.requirements, undefined);
    const again = await startAttach(img, keyFile, sock, ['--header', hdr, '--read-only']);
    const c2 = await NbdTestClient.connect(sock);
    same(await c2.readAll(0, model.length), model, 're-attached read-only');
    c2.close();
    again.child.kill('SIGTERM');
    assert.equal(await again.exited, 0);
  } finally {
    cleanup();
  }
});
