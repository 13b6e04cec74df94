import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, tempDir } from '../helpers/tools.js';
import { convert, partialPath, type CacheMode, type ConvertReport } from '../../src/workflows/convert.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { verify } from '../../src/workflows/verify.js';
import { Passphrase } from '../../src/secret.js';
import type { ImageFormat } from '../../src/images/detect.js';

let dir = '';
let cleanup = () => {};
let src = '';
const pass = async () => Passphrase.fromString('cache-mode test passphrase');
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };

before(() => {
  ({ dir, cleanup } = tempDir('brickcrypt-cache-'));
  src = join(dir, 'src.raw');
  const data = randomBytes(3 << 20);
  data.fill(0, 1 << 20, 2 << 20); // a zero run: the raw target keeps it as a hole
  writeFileSync(src, data);
});
after(() => cleanup());

/** Counts fsync/fdatasync calls made through node:fs/promises file handles while `fn` runs. */
async function countSyncs(fn: () => Promise<void>): Promise<number> {
  const probe = await fsp.open(src, 'r');
  const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void>; datasync: () => Promise<void> };
  await probe.close();
  const { sync, datasync } = proto;
  let calls = 0;
  proto.sync = function (this: unknown) {
    calls++;
    return sync.call(this);
  };
  proto.datasync = function (this: unknown) {
    calls++;
    return datasync.call(this);
  };
  try {
    await fn();
  } finally {
    proto.sync = sync;
    proto.datasync = datasync;
  }
  return calls;
}

for (const format of ['raw', 'qcow2', 'luks1', 'luks2'] as const) {
  test(`convert to ${format}: each cache mode syncs as documented, finishes under the final name, and the data is right`, async () => {
    const target = (name: string) => join(dir, `${name}.${format}`);
    const isLuks = format === 'luks1' || format === 'luks2';
    const common = {
      source: src,
      targetFormat: format as ImageFormat,
      ...(isLuks ? { targetPassphrase: pass, luks: FAST } : {}),
      workers: 1,
    };
    const run = async (name: string, cache?: CacheMode) => {
      let report: ConvertReport | undefined;
      const syncs = await countSyncs(async () => void (report = await convert({ ...common, target: target(name), ...(cache ? { cache } : {}) })));
      assert.ok(existsSync(target(name)) && !existsSync(partialPath(target(name))), `${name}: under its final name only`);
      await verify({ a: src, b: target(name), ...(isLuks ? { bPassphrase: pass } : {}), workers: 1 });
      return { syncs, report: report! };
    };
    // The default for a file is 'writeback': fsynced, nothing past the page cache.
    const auto = await run('auto');
    assert.equal(auto.report.cache.mode, 'writeback');
    assert.ok(auto.syncs > 0, `the default conversion fsynced ${auto.syncs} times`);
    assert.equal(auto.report.cache.bytes, 0);
    // 'none': fsynced, and (except qcow2) the data went past the page cache.
    const none = await run('none', 'none');
    assert.equal(none.report.cache.mode, 'none');
    assert.ok(none.syncs > 0, `cache mode none fsynced ${none.syncs} times`);
    assert.equal(none.report.cache.unavailable, undefined, 'O_DIRECT works on this file system');
    if (format === 'qcow2') {
      assert.equal(none.report.cache.bytes, 0, 'qcow2 clusters go through the page cache');
      assert.ok(none.report.notes.some((n) => n.includes('qcow2 clusters are written through the page cache')), none.report.notes.join('; '));
    }
    else {
      // The random data (2 MiB of the 3) is written with O_DIRECT; the raw target skips the zero run.
      assert.ok(none.report.cache.bytes >= 2 << 20, `O_DIRECT bytes ${none.report.cache.bytes}`);
    }
    // 'writeback', asked for: the same as the default here.
    const writeback = await run('writeback', 'writeback');
    assert.ok(writeback.syncs > 0, `writeback fsynced ${writeback.syncs} times`);
    assert.equal(writeback.report.cache.mode, 'writeback');
    assert.equal(writeback.report.cache.bytes, 0);
    assert.ok(writeback.report.cache.cachedBytes >= 2 << 20);
    // 'unsafe': no fsync at all, the temporary-name protocol kept.
    const unsafe = await run('unsafe', 'unsafe');
    assert.equal(unsafe.syncs, 0, 'no fsync or fdatasync in cache mode unsafe');
    assert.ok(unsafe.report.notes.some((n) => n.includes('not synced')), unsafe.report.notes.join('; '));
  });
}

test('auto into an existing regular file (--target-exists) is writeback', async () => {
  const dst = join(dir, 'existing.raw');
  writeFileSync(dst, new Uint8Array(4 << 20));
  const report = await convert({ source: src, target: dst, targetFormat: 'raw', targetExists: true, workers: 1 });
  assert.equal(report.cache.mode, 'writeback');
  assert.equal(report.cache.bytes, 0);
  await verify({ a: src, b: dst, workers: 1 });
});

test('an unknown cache mode is refused before anything is written', async () => {
  const dst = join(dir, 'bad-mode.raw');
  await assert.rejects(convert({ source: src, target: dst, targetFormat: 'raw', cache: 'direct' as CacheMode }), InvalidArgumentError);
  assert.ok(!existsSync(dst) && !existsSync(partialPath(dst)));
});

test('CLI: --cache and --no-sync reach the JSON summary; contradicting them is a usage error', () => {
  const done = (args: string[]) => {
    const r = runCli(['convert', src, ...args, '--dst-format', 'raw', '--json'], { env: { CI: process.env.CI } });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').find((l) => l.includes('"event":"done"'))!);
  };
  const unsafe = done([join(dir, 'cli-ns.raw'), '--no-sync']);
  assert.equal(unsafe.cache.mode, 'unsafe');
  assert.ok(unsafe.notes.some((n: string) => n.includes('not synced')));
  assert.equal(done([join(dir, 'cli-wb.raw')]).cache.mode, 'writeback', 'auto picks writeback for a file');
  const none = done([join(dir, 'cli-none.raw'), '--cache', 'none']);
  assert.equal(none.cache.mode, 'none');
  assert.ok(none.cache.bytes > 0);
  const r = runCli(['convert', src, join(dir, 'cli-bad.raw'), '--dst-format', 'raw', '--no-sync', '--cache', 'none'], { env: { CI: process.env.CI } });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--no-sync contradicts --cache none/);
  assert.ok(!existsSync(join(dir, 'cli-bad.raw')));
});
