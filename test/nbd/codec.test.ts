import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as c from '../../src/nbd/protocol/codec.js';
import { NBD_CMD, NBD_INFO, NBD_OPT, NBD_REP, NBD_REPLY_TYPE } from '../../src/nbd/protocol/constants.js';
import { CorruptHeaderError } from '../../src/errors.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

// Known-answer vectors, written out byte by byte from doc/proto.md's layouts.
const VECTORS: Array<{ name: string; bytes: Uint8Array; want: string }> = [
  { name: 'greeting (fixed newstyle + no zeroes)', bytes: c.encodeGreeting(3), want: '4e42444d41474943' + '49484156454f5054' + '0003' },
  { name: 'option NBD_OPT_LIST', bytes: c.encodeOption(NBD_OPT.LIST), want: '49484156454f5054' + '00000003' + '00000000' },
  { name: 'option reply ACK to GO', bytes: c.encodeOptionReply(NBD_OPT.GO, NBD_REP.ACK), want: '0003e889045565a9' + '00000007' + '00000001' + '00000000' },
  { name: 'option reply ERR_UNSUP', bytes: c.encodeOptionReply(99, NBD_REP.ERR_UNSUP), want: '0003e889045565a9' + '00000063' + '80000001' + '00000000' },
  {
    name: 'request READ',
    bytes: c.encodeRequest({ flags: 1, type: NBD_CMD.READ, cookie: 0x0102030405060708n, offset: 0x1000n, length: 512 }),
    want: '25609513' + '0001' + '0000' + '0102030405060708' + '0000000000001000' + '00000200',
  },
  { name: 'simple reply EIO', bytes: c.encodeSimpleReply(5, 42n), want: '67446698' + '00000005' + '000000000000002a' },
  {
    name: 'structured NONE+DONE',
    bytes: c.encodeStructuredReply(1, NBD_REPLY_TYPE.NONE, 7n),
    want: '668e33ef' + '0001' + '0000' + '0000000000000007' + '00000000',
  },
  { name: 'INFO_EXPORT', bytes: c.encodeInfoReply({ type: 0, size: 1 << 20, flags: 0x0d }), want: '0000' + '0000000000100000' + '000d' },
  { name: 'INFO_BLOCK_SIZE', bytes: c.encodeInfoReply({ type: 3, minimum: 1, preferred: 4096, maximum: 1 << 25 }), want: '0003' + '00000001' + '00001000' + '02000000' },
  { name: 'export-name reply, no zeroes', bytes: c.encodeExportNameReply(512, 1, true), want: '0000000000000200' + '0001' },
  { name: 'block status', bytes: c.encodeBlockStatus(1, [{ length: 4096, flags: 3 }]), want: '00000001' + '00001000' + '00000003' },
  { name: 'error chunk', bytes: c.encodeErrorChunk(22, 'x'), want: '00000016' + '0001' + '78' },
  { name: 'error offset chunk', bytes: c.encodeErrorChunk(5, '', 9), want: '00000005' + '0000' + '0000000000000009' },
  { name: 'offset hole', bytes: c.encodeOffsetHole(512, 1024), want: '0000000000000200' + '00000400' },
  {
    // Structured header (length = 8 + data) followed by the chunk's 8-byte offset.
    name: 'OFFSET_DATA header for 4096 data bytes at 0x200, DONE',
    bytes: c.encodeOffsetDataHeader(1, 9n, 512, 4096),
    want: '668e33ef' + '0001' + '0001' + '0000000000000009' + '00001008' + '0000000000000200',
  },
  { name: 'server reply', bytes: c.encodeServerReply('ab', 'd'), want: '00000002' + '6162' + '64' },
  { name: 'meta context reply', bytes: c.encodeMetaContextReply(1, 'base:allocation'), want: '00000001' + Buffer.from('base:allocation').toString('hex') },
];

for (const v of VECTORS) {
  test(`codec known answer: ${v.name}`, () => {
    assert.equal(hex(v.bytes), v.want);
  });
}

test('codec: export-name reply pads 124 zero bytes unless NO_ZEROES', () => {
  assert.equal(c.encodeExportNameReply(1, 1, false).length, 134);
  assert.equal(c.encodeExportNameReply(1, 1, true).length, 10);
});

test('codec: round trips decode(encode(x)) == x and encode(decode(b)) == b', () => {
  const g = c.encodeGreeting(3);
  assert.deepEqual(c.encodeGreeting(c.decodeGreeting(g).handshakeFlags), g);

  const req = { flags: 0x13, type: NBD_CMD.WRITE_ZEROES, cookie: 0xffffffffffffffffn, offset: 0x123456789abn, length: 0xffffffff };
  const rb = c.encodeRequest(req);
  const rd = c.decodeRequest(rb);
  assert.deepEqual({ ...rd, magic: undefined }, { ...req, magic: undefined });
  assert.deepEqual(c.encodeRequest(rd), rb);

  const info = { name: 'disk ü', infos: [NBD_INFO.NAME, NBD_INFO.BLOCK_SIZE, NBD_INFO.DESCRIPTION] };
  assert.deepEqual(c.decodeInfoRequest(c.encodeInfoRequest(info)), info);

  const meta = { exportName: 'x', queries: ['base:allocation', 'qemu:dirty-bitmap:a'] };
  assert.deepEqual(c.decodeMetaContextRequest(c.encodeMetaContextRequest(meta)), meta);

  for (const i of [
    { type: 0, size: 2 ** 40, flags: 0x1fd },
    { type: 1, name: 'n' },
    { type: 2, description: 'a description' },
    { type: 3, minimum: 512, preferred: 4096, maximum: 65536 },
  ] as const) {
    const b = c.encodeInfoReply(i);
    assert.deepEqual(c.decodeInfoReply(b), i);
    assert.deepEqual(c.encodeInfoReply(c.decodeInfoReply(b)), b);
  }
  const oh = c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest(info));
  const ohd = c.decodeOptionHeader(oh);
  assert.equal(ohd.option, NBD_OPT.GO);
  assert.equal(ohd.length, oh.length - 16);

  const orh = c.decodeOptionReplyHeader(c.encodeOptionReply(NBD_OPT.INFO, NBD_REP.ERR_TLS_REQD, new Uint8Array(3)));
  assert.deepEqual({ option: orh.option, type: orh.type, length: orh.length }, { option: NBD_OPT.INFO, type: NBD_REP.ERR_TLS_REQD, length: 3 });

  const sh = c.decodeStructuredReplyHeader(c.encodeStructuredReplyHeader(1, NBD_REPLY_TYPE.ERROR_OFFSET, 99n, 14));
  assert.deepEqual({ f: sh.flags, t: sh.type, c: sh.cookie, l: sh.length }, { f: 1, t: NBD_REPLY_TYPE.ERROR_OFFSET, c: 99n, l: 14 });

  assert.deepEqual(c.decodeBlockStatus(c.encodeBlockStatus(7, [{ length: 1, flags: 0 }, { length: 2, flags: 3 }])), {
    contextId: 7,
    descriptors: [{ length: 1, flags: 0 }, { length: 2, flags: 3 }],
  });
  assert.deepEqual(c.decodeErrorChunk(c.encodeErrorChunk(75, 'too big', 4096), true), { error: 75, message: 'too big', offset: 4096 });
  assert.deepEqual(c.decodeServerReply(c.encodeServerReply('name', 'desc')), { name: 'name', description: 'desc' });
  assert.deepEqual(c.decodeOffsetHole(c.encodeOffsetHole(1, 2)), { offset: 1, size: 2 });
  const sr = c.decodeSimpleReply(c.encodeSimpleReply(22, 5n));
  assert.deepEqual({ e: sr.error, c: sr.cookie }, { e: 22, c: 5n });
});

test('codec: truncated or inconsistent structures are rejected with CorruptHeaderError', () => {
  assert.throws(() => c.decodeRequest(new Uint8Array(27)), CorruptHeaderError);
  assert.throws(() => c.decodeGreeting(new Uint8Array(17)), CorruptHeaderError);
  const info = c.encodeInfoRequest({ name: 'abc', infos: [1] });
  assert.throws(() => c.decodeInfoRequest(info.subarray(0, info.length - 1)), CorruptHeaderError);
  const badLen = new Uint8Array(info);
  new DataView(badLen.buffer).setUint32(0, 1000);
  assert.throws(() => c.decodeInfoRequest(badLen), CorruptHeaderError);
  const meta = c.encodeMetaContextRequest({ exportName: '', queries: ['base:allocation'] });
  assert.throws(() => c.decodeMetaContextRequest(meta.subarray(0, meta.length - 2)), CorruptHeaderError);
  assert.throws(() => c.decodeMetaContextRequest(new Uint8Array([...meta, 0])), CorruptHeaderError);
  assert.throws(() => c.decodeString(new Uint8Array([0xff, 0xfe])), CorruptHeaderError);
  assert.throws(() => c.decodeString(new Uint8Array([0x61, 0])), CorruptHeaderError);
  assert.throws(() => c.decodeBlockStatus(new Uint8Array(13)), CorruptHeaderError);
  assert.throws(() => c.decodeInfoReply(new Uint8Array([0, 9])), CorruptHeaderError);
});
