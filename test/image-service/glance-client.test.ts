/**
 * The Glance v2 client and the remote image device against a real Glance (scripts/servers/glance.sh).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { glanceAs, glanceServer, uniqueProject } from '../helpers/glance.js';
import { RemoteImageDevice } from '../../src/image-service/remote-image-device.js';
import { UploadStreamDevice } from '../../src/image-service/upload-stream-device.js';
import { BackendUnavailableError, ForbiddenError, InUseError, NotFoundError, OutOfRangeError } from '../../src/errors.js';
import type { GlanceClient } from '../../src/image-service/glance-client.js';

const server = await glanceServer();
const skip = 'skip' in server ? server.skip : false;
const url = 'skip' in server ? '' : server.url;

async function* chunks(data: Uint8Array, size = 1 << 20): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < data.length; o += size) yield data.subarray(o, Math.min(o + size, data.length));
}

async function readAll(client: GlanceClient, id: string, start?: number, end?: number): Promise<Buffer> {
  const s = await client.openData(id, { ...(start !== undefined ? { start } : {}), ...(end !== undefined ? { end } : {}) });
  const parts: Uint8Array[] = [];
  for (;;) {
    const r = await s.reader.read();
    if (r.done) break;
    parts.push(r.value);
  }
  return Buffer.concat(parts);
}

test('create, PUT /file upload, show, patch, list, ranged download, delete', { skip }, async () => {
  const glance = glanceAs(url, uniqueProject('client'));
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const img = await glance.create({ name: 'c1', diskFormat: 'raw', properties: { brickcrypt_test: 'yes' } });
  assert.equal(img.status, 'queued');
  assert.equal(img.properties.brickcrypt_test, 'yes');
  await glance.upload(img.id, chunks(data));
  const shown = await glance.show(img.id);
  assert.equal(shown.status, 'active');
  assert.equal(shown.size, data.length);
  assert.equal(shown.hashAlgo, 'sha512');
  assert.equal(shown.hashValue, createHash('sha512').update(data).digest('hex'));
  assert.equal(shown.checksum, createHash('md5').update(data).digest('hex'));

  const patched = await glance.update(img.id, [{ op: 'add', name: 'img_x', value: '1' }, { op: 'remove', name: 'brickcrypt_test' }]);
  assert.equal(patched.properties.img_x, '1');
  assert.equal(patched.properties.brickcrypt_test, undefined);
  // Removing a property that is not there is a conflict in Glance; a read-only field is forbidden.
  await assert.rejects(glance.update(img.id, [{ op: 'remove', name: 'not_there' }]), InUseError);
  await assert.rejects(glance.update(img.id, [{ op: 'replace', name: 'status', value: 'queued' }]), ForbiddenError);

  assert.deepEqual((await glance.list()).map((i) => i.id), [img.id]);
  assert.ok((await readAll(glance, img.id)).equals(data));
  assert.ok((await readAll(glance, img.id, 1000, 5000)).equals(data.subarray(1000, 5000)));
  assert.ok((await readAll(glance, img.id, data.length - 10)).equals(data.subarray(data.length - 10)));
  // A second upload to an active image is refused.
  await assert.rejects(glance.upload(img.id, chunks(data)), InUseError);

  await glance.delete(img.id);
  await assert.rejects(glance.show(img.id), NotFoundError);
  await assert.rejects(glance.delete(img.id), NotFoundError);
});

test('stage + import (glance-direct) makes an active image with the same data', { skip }, async () => {
  const glance = glanceAs(url, uniqueProject('import'));
  const data = randomBytes(2 * 1024 * 1024 + 5);
  const img = await glance.create({ name: 'staged', diskFormat: 'raw' });
  await glance.stage(img.id, chunks(data));
  assert.equal((await glance.show(img.id)).status, 'uploading');
  await glance.importStaged(img.id);
  const done = await glance.waitForActive(img.id, { timeoutMs: 60_000 });
  assert.equal(done.size, data.length);
  assert.equal(done.hashValue, createHash('sha512').update(data).digest('hex'));
  assert.ok((await readAll(glance, img.id)).equals(data));
  await glance.delete(img.id);
});

test("project isolation: another project's image is not found, and not in its list", { skip }, async () => {
  const owner = glanceAs(url, uniqueProject('owner'));
  const other = glanceAs(url, uniqueProject('other'));
  const img = await owner.create({ name: 'private-one', diskFormat: 'raw', visibility: 'private' });
  await owner.upload(img.id, chunks(randomBytes(4096)));
  await assert.rejects(other.show(img.id), NotFoundError);
  await assert.rejects(other.openData(img.id), NotFoundError);
  await assert.rejects(other.delete(img.id), NotFoundError);
  assert.equal((await other.list()).filter((i) => i.id === img.id).length, 0);
  assert.equal((await owner.show(img.id)).status, 'active');
  await owner.delete(img.id);
});

test('an unreachable image service is a BackendUnavailableError after retries', async () => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const dead = glanceAs(`http://127.0.0.1:${port}`, 'p', 'u', ['member'], 3);
  const t0 = performance.now();
  await assert.rejects(dead.show('x'), (err: Error) => err instanceof BackendUnavailableError && /ECONNREFUSED/.test(err.message));
  assert.ok(performance.now() - t0 >= 50, 'retried with backoff');
});

/** A TCP proxy in front of Glance that cuts the first `cuts` connections after `after` answer bytes. */
async function cuttingProxy(target: URL, after: number, cuts: number): Promise<{ url: string; cut: () => number; close: () => Promise<void> }> {
  let done = 0;
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    let sent = 0;
    const cutThis = done < cuts;
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (cutThis && sent + d.length > after) {
        client.write(d.subarray(0, Math.max(0, after - sent)));
        done++;
        client.destroy();
        upstream.destroy();
        return;
      }
      sent += d.length;
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`,
    cut: () => done,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((r) => proxy.close(() => r()));
    },
  };
}

test('a download that loses its connection resumes with Range at the byte where it stopped', { skip }, async () => {
  const project = uniqueProject('resume');
  const glance = glanceAs(url, project);
  const data = randomBytes(6 * 1024 * 1024 + 333);
  const img = await glance.create({ name: 'resume', diskFormat: 'raw' });
  await glance.upload(img.id, chunks(data));
  const proxy = await cuttingProxy(new URL(url), 1_500_000, 2);
  try {
    const through = glanceAs(proxy.url, project);
    const hash = createHash('sha512');
    const dev = new RemoteImageDevice(through, img.id, data.length, { observe: (c) => void hash.update(c) });
    const out = Buffer.alloc(data.length);
    for (let o = 0; o < data.length; o += 1 << 20) await dev.read(out.subarray(o, Math.min(o + (1 << 20), data.length)), o);
    await dev.finish();
    await dev.close();
    assert.equal(proxy.cut(), 2, 'the proxy cut two connections');
    assert.ok(dev.stats.resumes >= 2, `resumed ${dev.stats.resumes} times`);
    assert.ok(out.equals(data));
    assert.equal(hash.digest('hex'), createHash('sha512').update(data).digest('hex'), 'every byte observed exactly once, in order');
  } finally {
    await proxy.close();
    await glance.delete(img.id);
  }
});

test('remote device: reads behind or far ahead are bounded range requests; the long download keeps its place', { skip }, async () => {
  const glance = glanceAs(url, uniqueProject('device'));
  const data = randomBytes(20 * 1024 * 1024);
  const img = await glance.create({ name: 'dev', diskFormat: 'raw' });
  await glance.upload(img.id, chunks(data));
  const hash = createHash('sha512');
  const dev = new RemoteImageDevice(glance, img.id, data.length, { observe: (c) => void hash.update(c), skipLimit: 1 << 20 });
  const a = Buffer.alloc(4096);
  await dev.read(a, 0);
  assert.ok(a.equals(data.subarray(0, 4096)));
  const far = Buffer.alloc(65536);
  await dev.read(far, 18 * 1024 * 1024); // an L1 table near the end, say
  assert.ok(far.equals(data.subarray(18 << 20, (18 << 20) + 65536)));
  assert.equal(dev.stats.sideRequests, 1);
  const next = Buffer.alloc(8192);
  await dev.read(next, 4096 + 100_000); // a small gap ahead: read through
  assert.ok(next.equals(data.subarray(104096, 112288)));
  await dev.read(a, 0); // behind: a side request again
  assert.equal(dev.stats.sideRequests, 2);
  await assert.rejects(dev.read(Buffer.alloc(2), data.length - 1), OutOfRangeError);
  await dev.finish();
  assert.equal(dev.observedBytes, data.length);
  assert.equal(hash.digest('hex'), createHash('sha512').update(data).digest('hex'));
  await dev.close();
  await glance.delete(img.id);
});

test('upload stream device: sequential writes only, ends only when complete', async () => {
  const dev = new UploadStreamDevice(10);
  await dev.write(new Uint8Array(4), 0);
  await assert.rejects(dev.write(new Uint8Array(2), 6), OutOfRangeError);
  await assert.rejects(dev.write(new Uint8Array(7), 4), OutOfRangeError);
  assert.throws(() => dev.end(), OutOfRangeError);
  const source = new Uint8Array([1, 2, 3, 4, 5, 6]);
  await dev.write(source, 4);
  source.fill(9); // the device copied what it was given
  dev.end();
  const got: number[] = [];
  for await (const c of dev.body()) got.push(...c);
  assert.deepEqual(got, [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
});
