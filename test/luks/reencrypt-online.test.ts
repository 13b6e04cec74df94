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
import { OnlineReencryptor, parseOnlineOptions } from '../../src/workflows/reencrypt-online.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { DeviceIoError, InvalidArgumentError, LockedError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';

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

async function plaintextOf(dev: BlockDevice): Promise<Uint8Array> {
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const view = EncryptedDevice.open(dev, vol, key, { readOnly: true });
  const out = new Uint8Array(view.size);
  await view.read(out, 0);
  await view.close();
  return out;
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** xorshift32, seeded, so a failing run can be replayed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return Math.floor((x / 0x100000000) * n);
  };
}

/** `dev` with every read and write completing on a later turn of the event loop, as a file's do. */
function yielding<D extends BlockDevice>(dev: D): D {
  const later = () => new Promise((res) => setImmediate(res));
  return new Proxy(dev, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if ((prop === 'read' || prop === 'write') && typeof v === 'function') {
        return async (...args: unknown[]) => {
          await later();
          return (v as (...a: unknown[]) => Promise<void>).apply(target, args);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

const STRIPE = 40 * 1024; // not a multiple of the zone: requests cross the boundary

/**
 * `clients` loops, each owning the stripes i ≡ c (mod clients), doing random unaligned writes and
 * read-backs (checked against the model) until `until()` — plus a final round. Returns counts.
 */
async function clientLoad(view: BlockDevice, model: Uint8Array, seed: number, until: () => boolean, opts: { clients?: number; flush?: boolean; onAck?: (c: number) => void; inflight?: Array<{ off: number; data: Uint8Array } | undefined> } = {}): Promise<{ ops: number; crossing: number; midRun: number }> {
  const clients = opts.clients ?? 4;
  const stripes = Math.floor(model.length / STRIPE);
  const stats = { ops: 0, crossing: 0, midRun: 0 };
  const one = async (c: number): Promise<void> => {
    const r = rng(seed * 31 + c + 1);
    const own = Array.from({ length: stripes }, (_, i) => i).filter((i) => i % clients === c);
    for (let round = 0; !until() || round === 0; round++) {
      // Half of the requests go to the client's stripe nearest the hot zone, where the races are.
      const near = own.reduce((best, i) => (Math.abs(i * STRIPE - (view as ReencryptingDevice).boundary) < Math.abs(best * STRIPE - (view as ReencryptingDevice).boundary) ? i : best), own[0]!);
      const s = (r(2) === 0 ? near : own[r(own.length)]!) * STRIPE;
      const off = s + r(STRIPE - 1);
      const len = 1 + r(Math.min(STRIPE - (off - s), 3 * 4096 + 777));
      const b = (view as ReencryptingDevice).boundary;
      if (b > 0 && b < view.size) stats.midRun++;
      if (off < b + 64 * 1024 && off + len > b) stats.crossing++;
      if (r(3) > 0) {
        const data = new Uint8Array(randomBytes(len));
        if (opts.inflight) opts.inflight[c] = { off, data };
        await view.write(data, off);
        if (opts.flush) await view.flush();
        model.set(data, off);
        if (opts.inflight) opts.inflight[c] = undefined;
        opts.onAck?.(c);
      } else {
        const got = new Uint8Array(len);
        await view.read(got, off);
        const d = firstDiff(got, model.subarray(off, off + len));
        if (d >= 0) assert.fail(`client ${c}: read ${off}+${len} differs at byte ${off + d} (boundary ${(view as ReencryptingDevice).boundary})`);
      }
      stats.ops++;
      if (r(4) === 0) await new Promise((res) => setImmediate(res));
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => one(c)));
  return stats;
}

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
    assert.equal(view.boundary, payload);
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
  assert.equal(view.boundary, view.size);
  await view.close();
  await pool.close();
  assert.deepEqual(parseOnlineOptions({ resumeOnly: true, hotzoneSize: 65536, cipher: 'aes-xts-plain64' }), { resumeOnly: true, hotzoneSize: 65536, cipher: 'aes-xts-plain64' });
  assert.throws(() => parseOnlineOptions({ headerDevice: 1 }), InvalidArgumentError);
  assert.throws(() => parseOnlineOptions({ hotzoneSize: 'big' }), InvalidArgumentError);
  assert.throws(() => parseOnlineOptions({ resilience: 'datashift' }), InvalidArgumentError);
});
