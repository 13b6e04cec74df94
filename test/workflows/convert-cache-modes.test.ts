import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, tempDir } from '../helpers/tools.js';
import { convert, partialPath } from '../../src/workflows/convert.js';
import { verify } from '../../src/workflows/verify.js';
import { Passphrase } from '../../src/secret.js';
import type { ImageFormat } from '../../src/images/detect.js';

let dir = '';
let cleanup = () => {};
let src = '';
const pass = async () => Passphrase.fromString('no-sync test passphrase');
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };

before(() => {
  ({ dir, cleanup } = tempDir('brickcrypt-nosync-'));
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
  test(`convert to ${format}: sync: false issues no fsync, still finishes under the final name, and the data is right`, async () => {
    const target = (name: string) => join(dir, `${name}.${format}`);
    const isLuks = format === 'luks1' || format === 'luks2';
    const common = {
      source: src,
      targetFormat: format as ImageFormat,
      ...(isLuks ? { targetPassphrase: pass, luks: FAST } : {}),
      workers: 1,
    };
    // The default syncs (so the probe sees fsyncs when there are any) ...
    const synced = await countSyncs(async () => void (await convert({ ...common, target: target('synced') })));
    assert.ok(synced > 0, `the default conversion fsynced ${synced} times`);
    // ... and sync: false does not, while keeping the temporary-name protocol.
    let report: Awaited<ReturnType<typeof convert>> | undefined;
    const unsynced = await countSyncs(async () => void (report = await convert({ ...common, target: target('unsynced'), sync: false })));
    assert.equal(unsynced, 0, 'no fsync or fdatasync with sync: false');
    assert.ok(existsSync(target('unsynced')) && !existsSync(partialPath(target('unsynced'))));
    assert.ok(report!.notes.some((n) => n.includes('not synced')), report!.notes.join('; '));
    await verify({ a: src, b: target('unsynced'), ...(isLuks ? { bPassphrase: pass } : {}), workers: 1 });
  });
}

test('CLI: --no-sync is reported in the JSON summary', () => {
  const dst = join(dir, 'cli.raw');
  const r = runCli(['convert', src, dst, '--dst-format', 'raw', '--no-sync', '--json'], { env: { CI: process.env.CI } });
  assert.equal(r.status, 0, r.stderr);
  const done = JSON.parse(r.stdout.trim().split('\n').find((l) => l.includes('"event":"done"'))!);
  assert.ok(done.notes.some((n: string) => n.includes('not synced')));
});
