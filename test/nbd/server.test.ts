import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NbdServer } from '../../src/nbd/server.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import type { Extent } from '../../src/block-device.js';
import * as c from '../../src/nbd/protocol/codec.js';
import { NBD_CMD, NBD_OPT, NBD_REP, NBD_REPLY_TYPE } from '../../src/nbd/protocol/constants.js';
import { NBD_ERRNO } from '../../src/errors.js';
import { needTools, tempDir, whichTool } from '../helpers/tools.js';
import { RawClient } from './raw-client.js';

const execFileP = promisify(execFile);
/** Runs a tool asynchronously (the server runs in this process, so never block the event loop). */
async function tool(cmd: string, args: string[]): Promise<string> {
  const r = await execFileP(whichTool(cmd) ?? cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 120_000 });
  return r.stdout;
}
async function toolFails(cmd: string, args: string[]): Promise<string> {
  try {
    await tool(cmd, args);
  } catch (err) {
    return String((err as { stderr?: string }).stderr ?? err);
  }
  throw new Error(`${cmd} ${args.join(' ')} unexpectedly succeeded`);
}
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A memory device that reports all-zero 64 KiB blocks as holes, so base:allocation has something to say. */
class SparseMemoryDevice extends MemoryDevice {
  override readonly capabilities = { discard: true, writeZeroes: true, extents: true, resize: false };
  override async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const B = 65536;
    for (let pos = offset; pos < offset + length; ) {
      const blockEnd = Math.min((Math.floor(pos / B) + 1) * B, offset + length);
      const zero = this.bytes.subarray(Math.floor(pos / B) * B, Math.min(Math.floor(pos / B) * B + B, this.size)).every((x) => x === 0);
      const last = out[out.length - 1];
      if (last && last.hole === zero) last.length += blockEnd - pos;
      else out.push({ offset: pos, length: blockEnd - pos, hole: zero, zero });
      pos = blockEnd;
    }
    return out;
  }
}

const SIZE = 4 << 20;
const tmp = tempDir('brickcrypt-nbd-');
const sock = join(tmp.dir, 'nbd.sock');
const uri = (name = ''): string => `nbd+unix:///${name}?socket=${sock}`;
let server: NbdServer;
const mem = new SparseMemoryDevice(SIZE);
const roDev = new MemoryDevice(randomBytes(1 << 20));
let fileDev: FileDevice;
const rawPath = join(tmp.dir, 'raw.img');
const logs: string[] = [];

before(async () => {
  const init = randomBytes(SIZE);
  init.fill(0, SIZE / 2, SIZE / 2 + 3 * 65536); // a run of zero blocks
  mem.bytes.set(init);
  writeFileSync(rawPath, randomBytes(2 << 20));
  fileDev = await FileDevice.open(rawPath);
  server = new NbdServer({
    exports: {
      mem: { device: mem, description: 'memory disk', allowDiscards: true },
      ro: { device: roDev, readOnly: true },
      raw: { device: fileDev },
    },
    defaultExport: 'mem',
    maxPayload: 1 << 20,
    log: (m) => logs.push(m),
  });
  await server.listen({ socket: sock });
});
after(async () => {
  await server.close();
  await fileDev.close();
  tmp.cleanup();
});

test('nbdinfo --json reports size, flags, block sizes and base:allocation', { skip: needTools('nbdinfo') }, async () => {
  const j = JSON.parse(await tool('nbdinfo', ['--json', uri('mem')]));
  assert.equal(j.protocol, 'newstyle-fixed');
  assert.equal(j.structured, true);
  const e = j.exports[0];
  assert.equal(e['export-size'], SIZE);
  assert.equal(e.description, 'memory disk');
  assert.deepEqual(e.contexts, ['base:allocation']);
  assert.equal(e.is_read_only, false);
  for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn', 'can_cache', 'can_df']) assert.equal(e[k], true, k);
  assert.equal(e.block_size_minimum, 1);
  assert.equal(e.block_size_preferred, 4096);
  assert.equal(e.block_size_maximum, 1 << 20);
  const r = JSON.parse(await tool('nbdinfo', ['--json', uri('ro')])).exports[0];
  assert.equal(r.is_read_only, true);
  assert.equal(r.can_trim, false);
  assert.equal(r.can_zero, false);
  const list = await tool('nbdinfo', ['--list', '--json', uri()]);
  assert.deepEqual(JSON.parse(list).exports.map((x: { 'export-name': string }) => x['export-name']).sort(), ['mem', 'raw', 'ro']);
});

test('nbdinfo --map shows holes from BlockDevice.extents()', { skip: needTools('nbdinfo') }, async () => {
  const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', uri('mem')])) as Array<{ offset: number; length: number; type: number }>;
  const holes = map.filter((m) => m.type === 3);
  assert.deepEqual(holes.map((h) => [h.offset, h.length]), [[SIZE / 2, 3 * 65536]]);
  assert.equal(map.reduce((n, m) => n + m.length, 0), SIZE);
});

test('nbdcopy reads the export (sha256 matches) and writes it back', { skip: needTools('nbdcopy') }, async () => {
  const out = join(tmp.dir, 'copy.bin');
  await tool('nbdcopy', [uri('raw'), out]);
  assert.equal(sha(readFileSync(out)), sha(readFileSync(rawPath)));
  const src = join(tmp.dir, 'src.bin');
  const data = randomBytes(2 << 20);
  writeFileSync(src, data);
  await tool('nbdcopy', ['--flush', src, uri('raw')]);
  assert.equal(sha(readFileSync(rawPath)), sha(data));
});

test('qemu-img convert and compare over nbd+unix', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'conv.raw');
  await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('mem'), out]);
  assert.equal(sha(readFileSync(out)), sha(mem.bytes));
  await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('mem'), out]);
  const img = join(tmp.dir, 'q.raw');
  writeFileSync(img, randomBytes(1 << 20));
  await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, uri('mem')]);
  assert.equal(sha(mem.bytes.subarray(0, 1 << 20)), sha(readFileSync(img)));
});

test('qemu-io random unaligned reads and writes match a shadow buffer', { skip: needTools('qemu-io') }, async () => {
  const shadow = new Uint8Array(mem.bytes);
  const cmds: string[] = [];
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 60; i++) {
    const len = 1 + rnd(70000);
    const off = rnd(SIZE - len);
    const pat = rnd(256);
    if (rnd(3) === 0) {
      cmds.push('-c', `write -z ${off} ${len}`);
      shadow.fill(0, off, off + len);
    } else {
      cmds.push('-c', `write -P ${pat} ${off} ${len}`);
      shadow.fill(pat, off, off + len);
    }
  }
  await tool('qemu-io', ['-f', 'raw', ...cmds, uri('mem')]);
  assert.equal(sha(mem.bytes), sha(shadow));
  // Unaligned reads with pattern checks through the server.
  const reads: string[] = [];
  for (let i = 0; i < 30; i++) {
    const off = rnd(SIZE - 1000);
    const len = 1 + rnd(999);
    const v = shadow[off]!;
    if (shadow.subarray(off, off + len).every((x) => x === v)) reads.push('-c', `read -P ${v} ${off} ${len}`);
  }
  const out = await tool('qemu-io', ['-f', 'raw', ...reads, uri('mem')]);
  assert.doesNotMatch(out, /Pattern verification failed/);
});

test('several concurrent clients write disjoint ranges; data and multi-conn flush are consistent', { skip: needTools('qemu-io') }, async () => {
  const jobs = [0, 1, 2, 3, 4, 5].map((i) => tool('qemu-io', ['-f', 'raw', '-c', `write -P ${0x40 + i} ${i * 300_001} 300001`, '-c', 'flush', uri('raw')]));
  await Promise.all(jobs);
  const file = readFileSync(rawPath);
  for (let i = 0; i < 6; i++) assert.ok(file.subarray(i * 300_001, (i + 1) * 300_001).every((x) => x === 0x40 + i), `client ${i}`);
});

test('read-only export refuses writes (qemu-io, and EPERM on the wire)', { skip: needTools('qemu-io') }, async () => {
  const before = sha(roDev.bytes);
  const err = await toolFails('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 512', uri('ro')]);
  assert.match(err, /read.only|Permission|Operation not permitted/i);
  const cl = await RawClient.connect(sock);
  await cl.go('ro', false);
  cl.write(c.encodeRequest({ type: NBD_CMD.WRITE, flags: 0, cookie: 1n, offset: 0n, length: 4 }, new Uint8Array(4)));
  assert.deepEqual(await cl.simpleReply(), { error: NBD_ERRNO.EPERM, cookie: 1n });
  cl.write(c.encodeRequest({ type: NBD_CMD.TRIM, flags: 0, cookie: 2n, offset: 0n, length: 4 }));
  assert.deepEqual(await cl.simpleReply(), { error: NBD_ERRNO.EPERM, cookie: 2n });
  cl.close();
  assert.equal(sha(roDev.bytes), before);
});

test('raw socket: pipelined requests all get replies matching their cookies', async () => {
  const cl = await RawClient.connect(sock);
  await cl.go('mem', true);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 20; i++) parts.push(c.encodeRequest({ type: NBD_CMD.READ, flags: 0, cookie: BigInt(1000 + i), offset: BigInt(i * 4096), length: 4096 }));
  parts.push(c.encodeRequest({ type: NBD_CMD.WRITE, flags: 1, cookie: 2000n, offset: BigInt(20 * 4096 + 7), length: 3 }, new Uint8Array([1, 2, 3])));
  parts.push(c.encodeRequest({ type: NBD_CMD.FLUSH, flags: 0, cookie: 2001n, offset: 0n, length: 0 }));
  cl.write(Buffer.concat(parts));
  const seen = new Map<bigint, Uint8Array | undefined>();
  for (let i = 0; i < 22; i++) {
    const r = await cl.anyReply();
    assert.equal(r.error, 0);
    seen.set(r.cookie, r.payload);
  }
  for (let i = 0; i < 20; i++) {
    const p = seen.get(BigInt(1000 + i))!;
    const d = c.decodeOffsetData(p);
    assert.equal(d.offset, i * 4096);
    assert.equal(sha(d.data), sha(mem.bytes.subarray(i * 4096, (i + 1) * 4096)));
  }
  assert.ok(seen.has(2000n) && seen.has(2001n));
  assert.deepEqual([...mem.bytes.subarray(20 * 4096 + 7, 20 * 4096 + 10)], [1, 2, 3]);
  cl.close();
});

test('raw socket: READ buffers are reused once sent, and a reused buffer never carries stale bytes', async () => {
  const cl = await RawClient.connect(sock);
  await cl.go('raw', true);
  const file = readFileSync(rawPath);
  // 3 rounds of 40 pipelined 16 KiB reads at different offsets: later rounds run on returned buffers.
  for (let round = 0; round < 3; round++) {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 40; i++) {
      const offset = ((i * 7 + round * 13) % 120) * 16384;
      parts.push(c.encodeRequest({ type: NBD_CMD.READ, flags: 0, cookie: BigInt(offset), offset: BigInt(offset), length: 16384 }));
    }
    cl.write(Buffer.concat(parts));
    for (let i = 0; i < 40; i++) {
      const r = await cl.anyReply();
      assert.equal(r.error, 0);
      const d = c.decodeOffsetData(r.payload!);
      assert.equal(BigInt(d.offset), r.cookie);
      assert.equal(sha(d.data), sha(file.subarray(d.offset, d.offset + 16384)), `round ${round} offset ${d.offset}`);
    }
    // Every reply has been written to the socket by now; their buffers went back to the pool.
    await new Promise((r) => setImmediate(r));
    assert.ok(server.ioBuffers.pooledBytes >= 16384, `pooled ${server.ioBuffers.pooledBytes}`);
  }
  cl.close();
});

test('raw socket: malformed requests get protocol errors and the connection keeps working', async () => {
  const cl = await RawClient.connect(sock);
  await cl.go('mem', true);
  const ask = async (h: Parameters<typeof c.encodeRequest>[0], data?: Uint8Array): Promise<number> => {
    cl.write(c.encodeRequest(h, data));
    const r = await cl.anyReply();
    assert.equal(r.cookie, h.cookie);
    return r.error;
  };
  assert.equal(await ask({ type: NBD_CMD.READ, flags: 0, cookie: 1n, offset: BigInt(SIZE), length: 1 }), NBD_ERRNO.EINVAL);
  assert.equal(await ask({ type: NBD_CMD.READ, flags: 0, cookie: 2n, offset: 0n, length: (1 << 20) + 1 }), NBD_ERRNO.EOVERFLOW);
  assert.equal(await ask({ type: 99, flags: 0, cookie: 3n, offset: 0n, length: 0 }), NBD_ERRNO.EINVAL);
  assert.equal(await ask({ type: NBD_CMD.WRITE, flags: 0x4000, cookie: 4n, offset: 0n, length: 2 }, new Uint8Array(2)), NBD_ERRNO.EINVAL);
  assert.equal(await ask({ type: NBD_CMD.WRITE_ZEROES, flags: 0, cookie: 5n, offset: BigInt(SIZE - 1), length: 2 }), NBD_ERRNO.ENOSPC);
  // A write larger than the limit: the payload is read and dropped, EOVERFLOW returned, framing kept.
  assert.equal(await ask({ type: NBD_CMD.WRITE, flags: 0, cookie: 6n, offset: 0n, length: (1 << 20) + 10 }, new Uint8Array((1 << 20) + 10)), NBD_ERRNO.EOVERFLOW);
  // BLOCK_STATUS without a negotiated context.
  assert.equal(await ask({ type: NBD_CMD.BLOCK_STATUS, flags: 0, cookie: 7n, offset: 0n, length: 512 }), NBD_ERRNO.EINVAL);
  assert.equal(await ask({ type: NBD_CMD.READ, flags: 0, cookie: 8n, offset: 0n, length: 16 }), 0);
  // Bad magic: hard disconnect.
  cl.write(c.encodeRequest({ magic: 0x12345678, type: NBD_CMD.READ, flags: 0, cookie: 9n, offset: 0n, length: 1 }));
  assert.equal(await cl.waitClosed(), true);
});

test('raw socket: option haggling errors, then GO works on the same connection', async () => {
  const cl = await RawClient.connect(sock);
  await cl.handshake();
  assert.equal((await cl.option(12345, new Uint8Array(10)))[0]!.type, NBD_REP.ERR_UNSUP);
  assert.equal((await cl.option(NBD_OPT.GO, c.encodeInfoRequest({ name: 'nope', infos: [] })))[0]!.type, NBD_REP.ERR_UNKNOWN);
  assert.equal((await cl.option(NBD_OPT.STARTTLS))[0]!.type, NBD_REP.ERR_POLICY);
  assert.equal((await cl.option(NBD_OPT.INFO, new Uint8Array(200_000)))[0]!.type, NBD_REP.ERR_TOO_BIG);
  const list = await cl.option(NBD_OPT.LIST);
  assert.deepEqual(list.filter((r) => r.type === NBD_REP.SERVER).map((r) => c.decodeServerReply(r.data).name).sort(), ['mem', 'raw', 'ro']);
  await cl.option(NBD_OPT.STRUCTURED_REPLY);
  await cl.option(NBD_OPT.SET_META_CONTEXT, c.encodeMetaContextRequest({ exportName: 'mem', queries: ['base:allocation'] }));
  const go = await cl.option(NBD_OPT.GO, c.encodeInfoRequest({ name: 'mem', infos: [] }));
  assert.equal(go[go.length - 1]!.type, NBD_REP.ACK);
  cl.write(c.encodeRequest({ type: NBD_CMD.BLOCK_STATUS, flags: 0, cookie: 1n, offset: BigInt(SIZE / 2 - 4096), length: 8192 }));
  const r = await cl.anyReply();
  assert.equal(r.type, NBD_REPLY_TYPE.BLOCK_STATUS);
  const bs = c.decodeBlockStatus(r.payload!);
  assert.deepEqual(bs.descriptors, [{ length: 4096, flags: 0 }, { length: 4096, flags: 3 }]);
  cl.write(c.encodeRequest({ type: NBD_CMD.DISC, flags: 0, cookie: 2n, offset: 0n, length: 0 }));
  assert.equal(await cl.waitClosed(), true);
});

test('raw socket: garbage and vanishing clients never take the server down', async () => {
  const before = server.connectionCount;
  const a = await RawClient.connect(sock);
  await a.read(18);
  a.write(c.encodeClientFlags(0xffff)); // unknown client flags
  assert.equal(await a.waitClosed(), true);
  const b = await RawClient.connect(sock);
  await b.go('mem', false);
  // Half a write payload, then vanish.
  b.write(c.encodeRequest({ type: NBD_CMD.WRITE, flags: 0, cookie: 1n, offset: 0n, length: 100_000 }, new Uint8Array(50_000)).subarray(0, 28 + 50_000));
  b.close();
  const d = await RawClient.connect(sock);
  await d.handshake();
  d.write(c.encodeOption(NBD_OPT.GO).subarray(0, 10)); // truncated option, then vanish
  d.close();
  const e = await RawClient.connect(sock);
  e.write(randomBytes(5000));
  await e.waitClosed();
  e.close();
  // The server still serves.
  const f = await RawClient.connect(sock);
  await f.go('', false);
  f.write(c.encodeRequest({ type: NBD_CMD.READ, flags: 0, cookie: 5n, offset: 0n, length: 8 }));
  assert.deepEqual(await f.simpleReply(), { error: 0, cookie: 5n });
  assert.deepEqual(await f.read(8), mem.bytes.subarray(0, 8));
  f.close();
  for (let i = 0; i < 50 && server.connectionCount > before; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(server.connectionCount, before);
});

test('NBD_OPT_EXPORT_NAME (old clients) and NBD_OPT_ABORT', async () => {
  const cl = await RawClient.connect(sock);
  await cl.handshake(1);
  cl.write(c.encodeOption(NBD_OPT.EXPORT_NAME, c.encodeString('raw')));
  const r = c.decodeExportNameReply(await cl.read(134));
  assert.equal(r.size, 2 << 20);
  cl.close();
  const ab = await RawClient.connect(sock);
  await ab.handshake();
  const rep = await ab.option(NBD_OPT.ABORT);
  assert.equal(rep[0]!.type, NBD_REP.ACK);
  assert.equal(await ab.waitClosed(), true);
});

test('listening on a non-loopback address is refused unless listenAny', async () => {
  const s = new NbdServer({ exports: { x: { device: new MemoryDevice(512) } } });
  await assert.rejects(s.listen({ host: '0.0.0.0', port: 0 }), /Refusing/);
  await s.listen({ host: '127.0.0.1', port: 0 });
  assert.ok(s.port! > 0);
  if (whichTool('nbdinfo')) {
    const j = JSON.parse(await tool('nbdinfo', ['--json', `nbd://127.0.0.1:${s.port}/x`]));
    assert.equal(j.exports[0]['export-size'], 512);
  }
  await s.close();
});

test('back-pressure: the server stops reading while too many write bytes are in flight', async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  let started = 0;
  class GatedDevice extends MemoryDevice {
    override async write(buf: Uint8Array, offset: number): Promise<void> {
      started++;
      await gate;
      await super.write(buf, offset);
    }
  }
  const dev = new GatedDevice(8 << 20);
  const s = new NbdServer({ exports: { g: { device: dev } }, maxBufferedBytes: 1 << 20 });
  const p = join(tmp.dir, 'gated.sock');
  await s.listen({ socket: p });
  const cl = await RawClient.connect(p);
  await cl.go('g', false);
  const chunk = 512 * 1024;
  for (let i = 0; i < 10; i++) cl.write(c.encodeRequest({ type: NBD_CMD.WRITE, flags: 0, cookie: BigInt(i), offset: BigInt(i * chunk), length: chunk }, new Uint8Array(chunk).fill(i + 1)));
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(started >= 1 && started <= 3, `writes started while gated: ${started}`);
  open();
  const cookies = new Set<bigint>();
  for (let i = 0; i < 10; i++) {
    const r = await cl.simpleReply();
    assert.equal(r.error, 0);
    cookies.add(r.cookie);
  }
  assert.equal(cookies.size, 10);
  for (let i = 0; i < 10; i++) assert.equal(dev.bytes[i * chunk + 100], i + 1);
  cl.close();
  await s.close();
});

test('discards: TRIM/WRITE_ZEROES write zeros unless allowDiscards; NO_HOLE never deallocates', async () => {
  const calls: string[] = [];
  class SpyDevice extends MemoryDevice {
    override async writeZeroes(offset: number, length: number, options?: { mayTrim?: boolean }): Promise<void> {
      calls.push(`zero ${offset}+${length} mayTrim=${options?.mayTrim === true}`);
      await super.writeZeroes(offset, length);
    }
    override async discard(offset: number, length: number): Promise<void> {
      calls.push(`discard ${offset}+${length}`);
      await super.writeZeroes(offset, length);
    }
  }
  const closed = new SpyDevice(65536);
  const open = new SpyDevice(65536);
  closed.bytes.fill(9);
  const s = new NbdServer({ exports: { closed: { device: closed }, open: { device: open, allowDiscards: true } } });
  const p = join(tmp.dir, 'discard.sock');
  await s.listen({ socket: p });
  const NO_HOLE = 2;
  for (const name of ['closed', 'open']) {
    const cl = await RawClient.connect(p);
    await cl.go(name, false);
    cl.write(c.encodeRequest({ type: NBD_CMD.TRIM, flags: 0, cookie: 1n, offset: 0n, length: 4096 }));
    assert.equal((await cl.simpleReply()).error, 0);
    cl.write(c.encodeRequest({ type: NBD_CMD.WRITE_ZEROES, flags: 0, cookie: 2n, offset: 4096n, length: 4096 }));
    assert.equal((await cl.simpleReply()).error, 0);
    cl.write(c.encodeRequest({ type: NBD_CMD.WRITE_ZEROES, flags: NO_HOLE, cookie: 3n, offset: 8192n, length: 4096 }));
    assert.equal((await cl.simpleReply()).error, 0);
    cl.close();
  }
  assert.deepEqual(calls, [
    'zero 0+4096 mayTrim=false',
    'zero 4096+4096 mayTrim=false',
    'zero 8192+4096 mayTrim=false',
    'discard 0+4096',
    'zero 4096+4096 mayTrim=true',
    'zero 8192+4096 mayTrim=false',
  ]);
  assert.ok(closed.bytes.subarray(0, 12288).every((b) => b === 0));
  assert.ok(closed.bytes.subarray(12288).every((b) => b === 9));
  await s.close();
});

test('structured reads send OFFSET_HOLE for known-zero runs (not with DF); clients reassemble them', async () => {
  const dev = new SparseMemoryDevice(1 << 20);
  dev.bytes.set(randomBytes(65536), 0);
  dev.bytes.set(randomBytes(65536), 3 * 65536);
  const s = new NbdServer({ exports: { sp: { device: dev } } });
  const p = join(tmp.dir, 'sparse.sock');
  await s.listen({ socket: p });
  try {
    const cl = await RawClient.connect(p);
    await cl.go('sp', true);
    const readChunks = async (flags: number, cookie: bigint): Promise<Array<{ type: number; offset: number; length: number; data?: Uint8Array }>> => {
      cl.write(c.encodeRequest({ type: NBD_CMD.READ, flags, cookie, offset: 1000n, length: 4 * 65536 }));
      const out = [];
      for (;;) {
        const r = await cl.anyReply();
        assert.equal(r.cookie, cookie);
        if (r.type === NBD_REPLY_TYPE.OFFSET_HOLE) {
          const h = c.decodeOffsetHole(r.payload!);
          out.push({ type: r.type, offset: h.offset, length: h.size });
        } else if (r.type === NBD_REPLY_TYPE.OFFSET_DATA) {
          const d = c.decodeOffsetData(r.payload!);
          out.push({ type: r.type, offset: d.offset, length: d.data.length, data: d.data });
        } else assert.fail(`unexpected chunk type ${r.type}`);
        if (r.flags! & 1) return out;
      }
    };
    const chunks = await readChunks(0, 1n);
    assert.deepEqual(chunks.map((x) => [x.type, x.offset, x.length]), [
      [NBD_REPLY_TYPE.OFFSET_DATA, 1000, 65536 - 1000],
      [NBD_REPLY_TYPE.OFFSET_HOLE, 65536, 2 * 65536],
      [NBD_REPLY_TYPE.OFFSET_DATA, 3 * 65536, 1000 + 65536],
    ]);
    assert.deepEqual(chunks[0]!.data, dev.bytes.subarray(1000, 65536));
    const df = await readChunks(4 /* DF */, 2n);
    assert.equal(df.length, 1);
    assert.deepEqual(df[0]!.data, dev.bytes.subarray(1000, 1000 + 4 * 65536));
    cl.close();
    if (whichTool('nbdcopy')) {
      const out = join(tmp.dir, 'sparse.out');
      await tool('nbdcopy', [`nbd+unix:///sp?socket=${p}`, out]);
      assert.equal(sha(readFileSync(out)), sha(dev.bytes));
    }
  } finally {
    await s.close();
  }
});

test('receive paths: a tiny receive buffer, the default one (Unix and TCP) and Node stream reads serve the same pipelined writes and reads', { timeout: 60_000 }, async () => {
  const DISK = 1 << 20;
  const init = randomBytes(DISK);
  for (const [receiveBufferBytes, tcp] of [[7, false], [undefined, false], [0, false], [undefined, true]] as const) {
    const dev = new MemoryDevice(new Uint8Array(init));
    const shadow = new Uint8Array(init);
    const s = new NbdServer({ exports: { d: { device: dev } }, receiveBufferBytes });
    const p = join(tmp.dir, `recv-${receiveBufferBytes}.sock`);
    if (tcp) await s.listen({ host: '127.0.0.1', port: 0 });
    else await s.listen({ socket: p });
    const cl = await RawClient.connect(tcp ? s.port! : p);
    await cl.go('d', true);
    // Writes of odd sizes at odd offsets, reads of what they wrote, all pipelined in one burst.
    const parts: Uint8Array[] = [];
    const reads = new Map<bigint, { offset: number; length: number }>();
    let cookie = 1n;
    for (let i = 0; i < 60; i++) {
      const length = 1 + ((i * 7919) % 70000);
      const offset = (i * 104729) % (DISK - length);
      const data = randomBytes(length);
      parts.push(c.encodeRequest({ type: NBD_CMD.WRITE, flags: 0, cookie: cookie++, offset: BigInt(offset), length }, data));
      shadow.set(data, offset);
      if (i % 3 === 0) {
        reads.set(cookie, { offset, length });
        parts.push(c.encodeRequest({ type: NBD_CMD.READ, flags: 0, cookie: cookie++, offset: BigInt(offset), length }));
      }
    }
    cl.write(Buffer.concat(parts));
    const done = new Set<bigint>();
    let readBytes = 0;
    while (done.size < Number(cookie - 1n)) {
      const r = await cl.anyReply();
      assert.equal(r.error, 0, `receiveBufferBytes=${receiveBufferBytes} cookie ${r.cookie}`);
      if (r.structured && r.type === NBD_REPLY_TYPE.OFFSET_DATA) readBytes += c.decodeOffsetData(r.payload!).data.length;
      if (!r.structured || (r.flags! & 1) !== 0) done.add(r.cookie);
    }
    assert.equal(readBytes, [...reads.values()].reduce((a, r) => a + r.length, 0), 'every read was answered in full');
    // Reads run concurrently with later writes, so check the final state (and one read after it all).
    assert.equal(sha(dev.bytes), sha(shadow), `receiveBufferBytes=${receiveBufferBytes}: device equals the shadow`);
    assert.equal(s.ownBufferConnections, receiveBufferBytes === 0 ? 0 : 1, 'the receive path asked for is the one used');
    cl.close();
    await s.close();
  }
});
