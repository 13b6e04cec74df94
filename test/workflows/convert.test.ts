import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync, truncateSync, openSync, writeSync, closeSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume } from '../../src/luks/volume.js';
import { detectFormat } from '../../src/images/detect.js';
import { Passphrase } from '../../src/secret.js';
import { partialPath } from '../../src/workflows/convert.js';

const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
let dir = '';
let cleanup = () => {};
let key = '';
before(() => {
  ({ dir, cleanup } = tempDir('brickcrypt-convert-'));
  key = join(dir, 'key');
  writeFileSync(key, 'correct horse battery');
});
after(() => cleanup());

/** A source with random data, an aligned zero run and an odd size. */
function makeSource(name: string, size: number): string {
  const data = randomBytes(size);
  data.fill(0, 65536, Math.min(size, 65536 * 8));
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

function cli(args: string[]) {
  return runCli(args, { env: { CI: process.env.CI } });
}

function ok(args: string[]) {
  const r = cli(args);
  assert.equal(r.status, 0, `brickcrypt ${args.join(' ')}\n${r.stderr}`);
  return r;
}

function summary(stdout: string) {
  const line = stdout.trim().split('\n').find((l) => l.includes('"event":"done"'));
  assert.ok(line, `no summary in ${stdout}`);
  return JSON.parse(line!);
}

async function volumeKeyOf(path: string): Promise<Buffer> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const volume = await LuksVolume.open(file, { readOnly: true });
    const { key: vk } = await volume.unlock(Passphrase.copyOf(readFileSync(key)));
    const out = Buffer.from(vk.expose());
    vk.wipe();
    return out;
  } finally {
    await file.close();
  }
}

test('raw -> luks1: cryptsetup accepts the passphrase and qemu-img sees the same plaintext', { skip: needTools('cryptsetup', 'qemu-img') }, () => {
  const src = makeSource('a.raw', 3 * 1024 * 1024);
  const dst = join(dir, 'a.luks1');
  const r = summary(ok(['convert', src, dst, '--dst-format', 'luks1', '--dst-key-file', key, '--json', ...FAST]).stdout);
  assert.equal(r.target.payloadSize, 3 * 1024 * 1024);
  assert.equal(r.target.containerSize, statSync(dst).size);
  assert.equal(r.target.containerSize, r.target.dataOffset + r.target.payloadSize);
  run('cryptsetup', ['open', '--test-passphrase', '--key-file', key, dst]);
  const cmp = runStatus('qemu-img', ['compare', '--object', `secret,id=sec0,file=${key}`, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${dst}`, `driver=raw,file.filename=${src}`]);
  assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
  assert.equal(existsSync(partialPath(dst)), false);
});

test('raw -> luks2: cryptsetup dumps our volume key, and it decrypts the payload (4096-byte sectors)', { skip: needTools('cryptsetup') }, async () => {
  const size = 1024 * 1024 + 1000; // not a sector multiple: padded, never truncated
  const src = makeSource('b.raw', size);
  const dst = join(dir, 'b.luks2');
  const r = summary(ok(['convert', src, dst, '--dst-format', 'luks2', '--dst-key-file', key, '--json', ...FAST]).stdout);
  assert.equal(r.target.sectorSize, 4096);
  assert.equal(r.target.payloadSize, Math.ceil(size / 4096) * 4096);
  assert.equal(r.paddedBytes, r.target.payloadSize - size);
  assert.ok(r.notes.some((n: string) => n.startsWith('padded')));
  const dump = run('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', key, dst]);
  const hex = /MK dump:\s*((?:[0-9a-f]{2}\s*)+)/i.exec(dump)![1]!.replace(/\s+/g, '');
  const vk = Buffer.from(hex, 'hex');
  assert.deepEqual(vk, await volumeKeyOf(dst));
  // Decrypt with the key cryptsetup reported, one OpenSSL call per sector: IV = byte offset / 512.
  const img = readFileSync(dst);
  const plain = Buffer.alloc(r.target.payloadSize);
  for (let pos = 0; pos < plain.length; pos += 4096) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(pos / 512));
    const d = createDecipheriv('aes-256-xts', vk, iv).setAutoPadding(false);
    d.update(img.subarray(r.target.dataOffset + pos, r.target.dataOffset + pos + 4096)).copy(plain, pos);
  }
  const expected = Buffer.alloc(plain.length);
  readFileSync(src).copy(expected);
  assert.ok(plain.equals(expected));
});

test('round trip raw -> luks2 -> qcow2 -> raw keeps every byte; qcow2 is clean and sparse', { skip: needTools('qemu-img') }, () => {
  const size = 2 * 1024 * 1024;
  const src = makeSource('c.raw', size);
  const l2 = join(dir, 'c.luks2');
  const q = join(dir, 'c.qcow2');
  const back = join(dir, 'c.back.raw');
  ok(['convert', src, l2, '--dst-format', 'luks2', '--dst-key-file', key, '--sector-size', '512', ...FAST]);
  ok(['convert', l2, q, '--dst-format', 'qcow2', '--src-key-file', key]);
  run('qemu-img', ['check', q]);
  assert.equal(runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, q]).status, 0);
  // The zero run of the source is not allocated in the qcow2 image.
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', q])) as Array<{ start: number; length: number; data: boolean }>;
  assert.ok(map.some((e) => !e.data && e.start <= 131072 && e.start + e.length >= 131072 + 65536));
  const r = summary(ok(['convert', q, back, '--dst-format', 'raw', '--json']).stdout);
  assert.equal(r.source.format, 'qcow2');
  assert.ok(readFileSync(back).equals(readFileSync(src)));
  ok(['verify', src, l2, '--dst-key-file', key]);
});

test('luks1 -> luks2 re-encrypts with a new volume key and sector size; verify says equal', { skip: needTools('cryptsetup') }, async () => {
  const src = makeSource('d.raw', 1024 * 1024);
  const l1 = join(dir, 'd.luks1');
  const l2 = join(dir, 'd.luks2');
  ok(['convert', src, l1, '--dst-format', 'luks1', '--dst-key-file', key, ...FAST]);
  const key2 = join(dir, 'key2');
  writeFileSync(key2, 'another passphrase');
  const r = summary(ok(['convert', l1, l2, '--dst-format', 'luks2', '--src-key-file', key, '--dst-key-file', key2, '--sector-size', '4096', '--cipher', 'aes-xts-plain64', '--json', ...FAST]).stdout);
  assert.equal(r.source.format, 'luks1');
  assert.equal(r.target.sectorSize, 4096);
  run('cryptsetup', ['open', '--test-passphrase', '--key-file', key2, l2]);
  ok(['verify', l1, l2, '--src-key-file', key, '--dst-key-file', key2]);
  ok(['verify', src, l2, '--dst-key-file', key2]);
  const vk1 = await volumeKeyOf(l1);
  writeFileSync(key, readFileSync(key2)); // volumeKeyOf reads `key`
  const vk2 = await volumeKeyOf(l2);
  writeFileSync(key, 'correct horse battery');
  assert.notDeepEqual(vk1, vk2);
});

test('verify: different images exit 7 naming the first differing offset', () => {
  const a = makeSource('e.raw', 300000);
  const b = join(dir, 'e2.raw');
  const bytes = readFileSync(a);
  bytes[123457] ^= 0x40;
  writeFileSync(b, bytes);
  const r = cli(['verify', a, b]);
  assert.equal(r.status, 7, r.stderr);
  assert.match(r.stderr, /INTEGRITY: .*offset 123457/);
  assert.equal(cli(['verify', a, a]).status, 0);
});

test('sizing: smaller --size is refused with nothing written; --allow-truncate and larger sizes work', () => {
  const src = makeSource('f.raw', 1024 * 1024);
  const dst = join(dir, 'f.luks');
  const r = cli(['convert', src, dst, '--dst-format', 'luks1', '--dst-key-file', key, '--size', '512K', ...FAST]);
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /INSUFFICIENT_SPACE/);
  assert.equal(existsSync(dst), false);
  assert.equal(existsSync(partialPath(dst)), false);
  const t = summary(ok(['convert', src, dst, '--dst-format', 'raw', '--size', '512K', '--allow-truncate', '--json']).stdout);
  assert.equal(t.truncatedBytes, 512 * 1024);
  assert.ok(readFileSync(dst).equals(readFileSync(src).subarray(0, 512 * 1024)));
  // An existing target without --force is refused and left alone.
  const before = readFileSync(dst);
  assert.equal(cli(['convert', src, dst, '--dst-format', 'raw']).status, 5);
  assert.ok(readFileSync(dst).equals(before));
  const big = summary(ok(['convert', src, dst, '--dst-format', 'raw', '--size', '3M', '--force', '--json']).stdout);
  assert.equal(big.target.payloadSize, 3 * 1024 * 1024);
  ok(['verify', src, dst]);
});

test('existing targets: too small is refused before a byte is written; larger targets get the header last and a full payload', { skip: needTools('cryptsetup') }, () => {
  const src = makeSource('g.raw', 1024 * 1024);
  const small = join(dir, 'g-small.img');
  writeFileSync(small, randomBytes(2 * 1024 * 1024)); // LUKS1 header (2 MiB) leaves no room
  const before = readFileSync(small);
  const r = cli(['convert', src, small, '--dst-format', 'luks1', '--dst-key-file', key, '--target-exists', ...FAST]);
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /INSUFFICIENT_SPACE/);
  assert.ok(readFileSync(small).equals(before));
  const large = join(dir, 'g-large.img');
  writeFileSync(large, randomBytes(4 * 1024 * 1024));
  const s = summary(ok(['convert', src, large, '--dst-format', 'luks1', '--dst-key-file', key, '--target-exists', '--json', ...FAST]).stdout);
  assert.equal(s.target.payloadSize, 4 * 1024 * 1024 - s.target.dataOffset);
  assert.equal(statSync(large).size, 4 * 1024 * 1024);
  run('cryptsetup', ['open', '--test-passphrase', '--key-file', key, large]);
  ok(['verify', src, large, '--dst-key-file', key]); // the tail past the source decrypts to zeros
});

test('sparse raw output: zero runs stay holes', () => {
  const src = join(dir, 'h.raw');
  const fd = openSync(src, 'w');
  writeSync(fd, randomBytes(65536), 0, 65536, 0);
  writeSync(fd, randomBytes(65536), 0, 65536, 40 * 1024 * 1024);
  closeSync(fd);
  truncateSync(src, 48 * 1024 * 1024);
  const dst = join(dir, 'h.out.raw');
  ok(['convert', src, dst, '--dst-format', 'raw']);
  const st = statSync(dst);
  assert.equal(st.size, 48 * 1024 * 1024);
  assert.ok(st.blocks * 512 <= 1024 * 1024, `allocated ${st.blocks * 512}`);
  assert.ok(readFileSync(dst).equals(readFileSync(src)));
});

test('the source format comes from the content, not the name; a wrong --src-format is refused', async () => {
  const src = makeSource('looks.qcow2', 65536); // raw data with a misleading name
  const dst = join(dir, 'i.raw');
  const r = summary(ok(['convert', src, dst, '--dst-format', 'raw', '--json']).stdout);
  assert.equal(r.source.format, 'raw');
  const bad = cli(['convert', src, join(dir, 'i2.raw'), '--dst-format', 'raw', '--src-format', 'luks']);
  assert.equal(bad.status, 1, bad.stderr);
});

/** Starts a conversion, waits for its first progress line, sends `signal`, returns the exit. */
function interrupt(args: string[], signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args, '--json', '--workers', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let sent = false;
    child.stdout.on('data', (d) => {
      out += d;
      if (!sent && out.includes('"event":"progress"')) {
        sent = true;
        child.kill(signal);
      }
    });
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      assert.ok(sent, `conversion finished before it could be interrupted: ${out}`);
      assert.ok(!out.includes('"event":"done"'), 'conversion completed despite the signal');
      resolve({ code, signal: sig, stderr: err });
    });
  });
}

/** A 128 MiB sparse source: cheap on disk, but a LUKS target must encrypt every byte. */
function bigSparseSource(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, randomBytes(1024 * 1024));
  truncateSync(path, 128 * 1024 * 1024);
  return path;
}

async function notLuks(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const f = await FileDevice.open(path, { readOnly: true });
  try {
    assert.equal(await detectFormat(f), 'raw', `${path} carries a header`);
  } finally {
    await f.close();
  }
  if (needTools('cryptsetup') === false) assert.notEqual(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', key, path]).status, 0);
}

for (const signal of ['SIGINT', 'SIGKILL'] as const) {
  test(`${signal} mid-conversion leaves no target that looks complete, and a rerun succeeds`, { timeout: 120_000 }, async () => {
    const src = bigSparseSource(`k-${signal}.raw`);
    const dst = join(dir, `k-${signal}.luks`);
    const args = ['convert', src, dst, '--dst-format', 'luks1', '--dst-key-file', key, ...FAST];
    const r = await interrupt(args, signal);
    if (signal === 'SIGINT') {
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stderr, /CANCELLED/);
      assert.equal(existsSync(partialPath(dst)), false, 'the temporary file was not removed');
    } else {
      assert.equal(r.signal, 'SIGKILL');
      await notLuks(partialPath(dst)); // a killed run's leftover has no header
    }
    assert.equal(existsSync(dst), false);
    ok(args);
    assert.equal(existsSync(partialPath(dst)), false);
    assert.deepEqual(readdirSync(dir).filter((n) => n.includes(`k-${signal}`) && n.includes('partial')), []);
    ok(['verify', src, dst, '--dst-key-file', key]);
  });
}

test('SIGKILL while writing into an existing LUKS target leaves it without a valid header; a rerun succeeds', { timeout: 120_000 }, async () => {
  const src = bigSparseSource('m.raw');
  const dst = join(dir, 'm.img');
  const args = ['convert', src, dst, '--dst-format', 'luks1', '--dst-key-file', key, '--target-exists', ...FAST];
  // First a complete conversion: the target holds a valid LUKS volume.
  writeFileSync(dst, '');
  truncateSync(dst, 132 * 1024 * 1024);
  ok(args);
  run('cryptsetup', ['isLuks', dst]);
  const r = await interrupt(args, 'SIGKILL');
  assert.equal(r.signal, 'SIGKILL');
  await notLuks(dst);
  ok(args);
  run('cryptsetup', ['open', '--test-passphrase', '--key-file', key, dst]);
});

test('odd sizes: LUKS1 pads to 512 bytes, qcow2 and raw keep the exact size', { skip: needTools('qemu-img') }, () => {
  const size = 1_000_003;
  const src = makeSource('o.raw', size);
  const l1 = join(dir, 'o.luks1');
  const r = summary(ok(['convert', src, l1, '--dst-format', 'luks1', '--dst-key-file', key, '--json', ...FAST]).stdout);
  assert.equal(r.target.payloadSize, Math.ceil(size / 512) * 512);
  assert.equal(r.paddedBytes, r.target.payloadSize - size);
  const q = join(dir, 'o.qcow2');
  ok(['convert', l1, q, '--dst-format', 'qcow2', '--src-key-file', key, '--src-format', 'luks']);
  ok(['verify', src, q]);
  const raw = join(dir, 'o.back.raw');
  const b = summary(ok(['convert', src, raw, '--dst-format', 'raw', '--json']).stdout);
  assert.equal(b.target.payloadSize, size);
  assert.equal(statSync(raw).size, size);
  assert.ok(readFileSync(raw).equals(readFileSync(src)));
});
