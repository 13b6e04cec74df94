import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NbdSession, extentsToDescriptors, type ExportCatalog, type ExportInfo, type SessionAction, type IoRequest } from '../../src/nbd/protocol/session.js';
import * as c from '../../src/nbd/protocol/codec.js';
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, NBD_INFO, NBD_OPT, NBD_REP, NBD_REPLY_TYPE, NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../src/nbd/protocol/constants.js';
import { NBD_ERRNO } from '../../src/errors.js';

const disk: ExportInfo = {
  name: 'disk',
  description: 'the disk',
  size: 1 << 20,
  readOnly: false,
  trim: true,
  fastZero: false,
  minimumBlockSize: 1,
  preferredBlockSize: 4096,
  maximumBlockSize: 1 << 25,
};
const ro: ExportInfo = { ...disk, name: 'ro', readOnly: true, description: '' };
const catalog: ExportCatalog = {
  lookup: (n) => (n === '' || n === 'disk' ? disk : n === 'ro' ? ro : undefined),
  list: () => [disk, ro],
};

function sent(actions: SessionAction[]): Uint8Array {
  return Buffer.concat(actions.flatMap((a) => (a.type === 'send' ? a.data : [])));
}
function optionReplies(bytes: Uint8Array): Array<{ option: number; type: number; data: Uint8Array }> {
  const out = [];
  let o = 0;
  while (o < bytes.length) {
    const h = c.decodeOptionReplyHeader(bytes.subarray(o));
    out.push({ option: h.option, type: h.type, data: bytes.subarray(o + 20, o + 20 + h.length) });
    o += 20 + h.length;
  }
  return out;
}
function negotiated(opts: { structured?: boolean; meta?: boolean; name?: string } = {}): NbdSession {
  const s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  s.receive(c.encodeClientFlags(3));
  if (opts.structured !== false) s.receive(c.encodeOption(NBD_OPT.STRUCTURED_REPLY));
  if (opts.meta) s.receive(c.encodeOption(NBD_OPT.SET_META_CONTEXT, c.encodeMetaContextRequest({ exportName: opts.name ?? 'disk', queries: ['base:allocation'] })));
  const a = s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: opts.name ?? 'disk', infos: [] })));
  assert.ok(a.some((x) => x.type === 'export'));
  return s;
}
function req(type: number, offset: number, length: number, flags = 0, cookie = 1n, data?: Uint8Array): Uint8Array {
  return c.encodeRequest({ type, flags, cookie, offset: BigInt(offset), length }, data);
}
function errnoOf(s: NbdSession, actions: SessionAction[]): number {
  const b = sent(actions);
  if (s.structuredReplies) {
    const h = c.decodeStructuredReplyHeader(b);
    assert.ok(h.type & 0x8000, 'an error chunk');
    return c.decodeErrorChunk(b.subarray(20), false).error;
  }
  return c.decodeSimpleReply(b).error;
}

test('session: greeting, then GO with info requests replies INFO_EXPORT, NAME, DESCRIPTION, BLOCK_SIZE, ACK', () => {
  const s = new NbdSession(catalog, { tls: 'off' });
  const g = c.decodeGreeting(sent(s.start()));
  assert.equal(g.handshakeFlags, 3);
  assert.deepEqual(s.receive(c.encodeClientFlags(3)), []);
  const a = s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: 'disk', infos: [NBD_INFO.NAME, NBD_INFO.DESCRIPTION, NBD_INFO.BLOCK_SIZE] })));
  const r = optionReplies(sent(a));
  assert.deepEqual(r.map((x) => x.type), [NBD_REP.INFO, NBD_REP.INFO, NBD_REP.INFO, NBD_REP.INFO, NBD_REP.ACK]);
  const infos = r.slice(0, 4).map((x) => c.decodeInfoReply(x.data));
  assert.deepEqual(infos[0], { type: 0, size: 1 << 20, flags: s.transmissionFlags });
  assert.deepEqual(infos[1], { type: 1, name: 'disk' });
  assert.deepEqual(infos[2], { type: 2, description: 'the disk' });
  assert.deepEqual(infos[3], { type: 3, minimum: 1, preferred: 4096, maximum: 1 << 25 });
  assert.equal(s.phase, 'transmission');
  // No structured replies: DF must not be advertised.
  assert.equal(s.transmissionFlags & NBD_FLAG.SEND_DF, 0);
  assert.ok(s.transmissionFlags & NBD_FLAG.CAN_MULTI_CONN);
});

test('session: bytes split at every position give the same result', () => {
  const input = Buffer.concat([
    c.encodeClientFlags(3),
    c.encodeOption(NBD_OPT.STRUCTURED_REPLY),
    c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: '', infos: [] })),
    req(NBD_CMD.WRITE, 10, 5, 0, 9n, new Uint8Array([1, 2, 3, 4, 5])),
  ]);
  const whole = new NbdSession(catalog, { tls: 'off' });
  whole.start();
  const ref = whole.receive(input);
  for (let cut = 1; cut < input.length; cut += 3) {
    const s = new NbdSession(catalog, { tls: 'off' });
    s.start();
    const got = [...s.receive(input.subarray(0, cut)), ...s.receive(input.subarray(cut))];
    assert.deepEqual(
      got.map((a) => a.type),
      ref.map((a) => a.type),
    );
    const io = got.find((a) => a.type === 'io');
    assert.ok(io && io.type === 'io');
    assert.deepEqual([...io.request.data!], [1, 2, 3, 4, 5]);
  }
});

test('session: unknown client flags, bad option magic and bad request magic close the connection', () => {
  let s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  assert.equal(s.receive(c.encodeClientFlags(0x80))[0]!.type, 'close');
  s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  s.receive(c.encodeClientFlags(1));
  const bad = c.encodeOption(NBD_OPT.LIST);
  bad[0] ^= 1;
  assert.equal(s.receive(bad)[0]!.type, 'close');
  s = negotiated();
  const r = req(NBD_CMD.READ, 0, 1);
  r[0] = 0;
  assert.equal(s.receive(r)[0]!.type, 'close');
  assert.equal(s.phase, 'closed');
});

test('session: option errors (unknown option, bad lengths, unknown export, meta before structured, oversized option)', () => {
  const s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  s.receive(c.encodeClientFlags(1));
  const one = (b: Uint8Array): number[] => optionReplies(sent(s.receive(b))).map((x) => x.type);
  assert.deepEqual(one(c.encodeOption(4242, new Uint8Array(7))), [NBD_REP.ERR_UNSUP]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.LIST, new Uint8Array(1))), [NBD_REP.ERR_INVALID]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.STRUCTURED_REPLY, new Uint8Array(1))), [NBD_REP.ERR_INVALID]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.STARTTLS)), [NBD_REP.ERR_POLICY]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.GO, new Uint8Array(3))), [NBD_REP.ERR_INVALID]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.INFO, c.encodeInfoRequest({ name: 'nope', infos: [] }))), [NBD_REP.ERR_UNKNOWN]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.SET_META_CONTEXT, c.encodeMetaContextRequest({ exportName: '', queries: [] }))), [NBD_REP.ERR_INVALID]);
  // An option too large to buffer is skipped (byte by byte as it arrives) and refused.
  const big = c.encodeOption(NBD_OPT.INFO, new Uint8Array(100_000));
  const a1 = s.receive(big.subarray(0, 50_000));
  assert.deepEqual(a1, []);
  assert.deepEqual(optionReplies(sent(s.receive(big.subarray(50_000)))).map((x) => x.type), [NBD_REP.ERR_TOO_BIG]);
  assert.deepEqual(one(c.encodeOption(NBD_OPT.LIST)), [NBD_REP.SERVER, NBD_REP.SERVER, NBD_REP.ACK]);
  // EXPORT_NAME of an unknown export cannot be answered: the session must end.
  assert.equal(s.receive(c.encodeOption(NBD_OPT.EXPORT_NAME, c.encodeString('nope')))[0]!.type, 'close');
});

test('session: NBD_OPT_EXPORT_NAME replies size+flags, padding only without NO_ZEROES', () => {
  for (const flags of [1, 3]) {
    const s = new NbdSession(catalog, { tls: 'off' });
    s.start();
    s.receive(c.encodeClientFlags(flags));
    const a = s.receive(c.encodeOption(NBD_OPT.EXPORT_NAME, c.encodeString('ro')));
    const b = sent(a);
    assert.equal(b.length, flags === 3 ? 10 : 134);
    const r = c.decodeExportNameReply(b);
    assert.equal(r.size, ro.size);
    assert.ok(r.flags & NBD_FLAG.READ_ONLY);
    assert.equal(r.flags & NBD_FLAG.SEND_TRIM, 0);
    assert.equal(s.phase, 'transmission');
  }
});

test('session: meta contexts: LIST, SET, and applying only to the same export', () => {
  const s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  s.receive(c.encodeClientFlags(3));
  s.receive(c.encodeOption(NBD_OPT.STRUCTURED_REPLY));
  let r = optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.LIST_META_CONTEXT, c.encodeMetaContextRequest({ exportName: 'disk', queries: [] })))));
  assert.deepEqual(r.map((x) => x.type), [NBD_REP.META_CONTEXT, NBD_REP.ACK]);
  assert.equal(c.decodeMetaContextReply(r[0]!.data).name, 'base:allocation');
  r = optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.SET_META_CONTEXT, c.encodeMetaContextRequest({ exportName: 'disk', queries: ['x-foo:bar'] })))));
  assert.deepEqual(r.map((x) => x.type), [NBD_REP.ACK]);
  r = optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.SET_META_CONTEXT, c.encodeMetaContextRequest({ exportName: 'disk', queries: ['base:allocation'] })))));
  assert.deepEqual(r.map((x) => x.type), [NBD_REP.META_CONTEXT, NBD_REP.ACK]);
  const id = c.decodeMetaContextReply(r[0]!.data).id;
  // GO on a different export: the selection does not carry over.
  s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: 'ro', infos: [] })));
  assert.equal(errnoOf(s, s.receive(req(NBD_CMD.BLOCK_STATUS, 0, 512))), NBD_ERRNO.EINVAL);
  const s2 = negotiated({ meta: true });
  const a = s2.receive(req(NBD_CMD.BLOCK_STATUS, 0, 512, NBD_CMD_FLAG.REQ_ONE));
  assert.equal(a[0]!.type, 'io');
  assert.ok(a[0]!.type === 'io' && a[0]!.request.reqOne);
  assert.notEqual(id, 0);
});

test('session: request validation: range, flags, read-only, unknown command, flush fields, fast zero', () => {
  const s = negotiated();
  const E = (b: Uint8Array): number => errnoOf(s, s.receive(b));
  assert.equal(E(req(NBD_CMD.READ, (1 << 20) - 1, 2)), NBD_ERRNO.EINVAL);
  assert.equal(E(c.encodeRequest({ type: NBD_CMD.READ, flags: 0, cookie: 1n, offset: 0xffffffffffffffffn, length: 2 })), NBD_ERRNO.EINVAL);
  assert.equal(E(req(NBD_CMD.WRITE, 1 << 20, 1, 0, 1n, new Uint8Array(1))), NBD_ERRNO.ENOSPC);
  assert.equal(E(req(NBD_CMD.READ, 0, 1, NBD_CMD_FLAG.NO_HOLE)), NBD_ERRNO.EINVAL);
  assert.equal(E(req(NBD_CMD.WRITE, 0, 1, 0x8000, 1n, new Uint8Array(1))), NBD_ERRNO.EINVAL);
  assert.equal(E(req(77, 0, 0)), NBD_ERRNO.EINVAL);
  assert.equal(E(req(NBD_CMD.FLUSH, 1, 0)), NBD_ERRNO.EINVAL);
  assert.equal(E(req(NBD_CMD.WRITE_ZEROES, 0, 512, NBD_CMD_FLAG.FAST_ZERO)), NBD_ERRNO.ENOTSUP);
  assert.equal(E(req(NBD_CMD.READ, 0, (1 << 25) + 1)), NBD_ERRNO.EOVERFLOW);
  assert.equal(E(req(NBD_CMD.BLOCK_STATUS, 0, 512)), NBD_ERRNO.EINVAL);
  // Still in business after all those errors.
  const ok = s.receive(req(NBD_CMD.READ, 0, 512, NBD_CMD_FLAG.DF | NBD_CMD_FLAG.FUA, 77n));
  assert.equal(ok[0]!.type, 'io');
  const rs = negotiated({ name: 'ro', structured: false });
  assert.equal(errnoOf(rs, rs.receive(req(NBD_CMD.WRITE, 0, 3, 0, 1n, new Uint8Array(3)))), NBD_ERRNO.EPERM);
  assert.equal(errnoOf(rs, rs.receive(req(NBD_CMD.TRIM, 0, 3))), NBD_ERRNO.EPERM);
  assert.equal(errnoOf(rs, rs.receive(req(NBD_CMD.WRITE_ZEROES, 0, 3))), NBD_ERRNO.EPERM);
  // DF is only valid with structured replies.
  assert.equal(errnoOf(rs, rs.receive(req(NBD_CMD.READ, 0, 3, NBD_CMD_FLAG.DF))), NBD_ERRNO.EINVAL);
});

test('session: oversized write payload is consumed and failed with EOVERFLOW, next request still parsed', () => {
  const s = new NbdSession(catalog, { tls: 'off', maxPayload: 1024 });
  s.start();
  s.receive(c.encodeClientFlags(3));
  s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: '', infos: [] })));
  const big = req(NBD_CMD.WRITE, 0, 5000, 0, 5n, new Uint8Array(5000).fill(0x25));
  const a = [...s.receive(big.subarray(0, 3000)), ...s.receive(big.subarray(3000))];
  const r = c.decodeSimpleReply(sent(a));
  assert.deepEqual([r.error, r.cookie], [NBD_ERRNO.EOVERFLOW, 5n]);
  const next = s.receive(req(NBD_CMD.READ, 0, 16, 0, 6n));
  assert.equal(next[0]!.type, 'io');
});

test('session: replies: simple read carries data; structured read is one OFFSET_DATA chunk with DONE', () => {
  const simple = negotiated({ structured: false });
  const d = new Uint8Array([9, 8, 7]);
  const sb = Buffer.concat(simple.replyRead({ cookie: 3n, offset: 10 }, d));
  assert.equal(sb.length, 16 + 3);
  assert.deepEqual([...sb.subarray(16)], [9, 8, 7]);
  const st = negotiated();
  const b = Buffer.concat(st.replyRead({ cookie: 3n, offset: 10 }, d));
  const h = c.decodeStructuredReplyHeader(b);
  assert.deepEqual([h.type, h.flags, h.cookie, h.length], [NBD_REPLY_TYPE.OFFSET_DATA, 1, 3n, 11]);
  const od = c.decodeOffsetData(b.subarray(20));
  assert.equal(od.offset, 10);
  assert.deepEqual([...od.data], [9, 8, 7]);
  const e = Buffer.concat(st.replyError({ cookie: 4n, command: 'read' }, NBD_ERRNO.EIO, 'boom'));
  const eh = c.decodeStructuredReplyHeader(e);
  assert.equal(eh.type, NBD_REPLY_TYPE.ERROR);
  assert.deepEqual(c.decodeErrorChunk(e.subarray(20), false), { error: 5, message: 'boom' });
});

test('session: TLS required: options refused with ERR_TLS_REQD, EXPORT_NAME closes, STARTTLS upgrades and drops injected bytes', () => {
  const s = new NbdSession(catalog, { tls: 'require' });
  s.start();
  s.receive(c.encodeClientFlags(3));
  assert.deepEqual(optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.LIST)))).map((x) => x.type), [NBD_REP.ERR_TLS_REQD]);
  assert.deepEqual(optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: '', infos: [] }))))).map((x) => x.type), [NBD_REP.ERR_TLS_REQD]);
  const a = s.receive(Buffer.concat([c.encodeOption(NBD_OPT.STARTTLS), c.encodeOption(NBD_OPT.LIST)]));
  assert.deepEqual(a.map((x) => x.type), ['send', 'start-tls']);
  assert.deepEqual(optionReplies(sent(a)).map((x) => x.type), [NBD_REP.ACK]);
  s.tlsEstablished();
  assert.deepEqual(optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.STARTTLS)))).map((x) => x.type), [NBD_REP.ERR_INVALID]);
  assert.deepEqual(optionReplies(sent(s.receive(c.encodeOption(NBD_OPT.LIST)))).map((x) => x.type), [NBD_REP.SERVER, NBD_REP.SERVER, NBD_REP.ACK]);
  const t = new NbdSession(catalog, { tls: 'require' });
  t.start();
  t.receive(c.encodeClientFlags(3));
  assert.equal(t.receive(c.encodeOption(NBD_OPT.EXPORT_NAME))[0]!.type, 'close');
});

test('session: ABORT is acknowledged then closed; DISC ends transmission; shutdown errors new work', () => {
  const s = new NbdSession(catalog, { tls: 'off' });
  s.start();
  s.receive(c.encodeClientFlags(3));
  const a = s.receive(c.encodeOption(NBD_OPT.ABORT));
  assert.deepEqual(a.map((x) => x.type), ['send', 'close']);
  const t = negotiated();
  assert.deepEqual(t.receive(req(NBD_CMD.DISC, 0, 0)).map((x) => x.type), ['disconnect']);
  const u = negotiated();
  u.shutdown();
  assert.equal(errnoOf(u, u.receive(req(NBD_CMD.READ, 0, 1))), NBD_ERRNO.ESHUTDOWN);
});

test('extentsToDescriptors: clips, merges, fills gaps, honours REQ_ONE', () => {
  const ex = [
    { offset: 0, length: 4096, hole: false, zero: false },
    { offset: 4096, length: 4096, hole: true, zero: true },
    { offset: 8192, length: 4096, hole: true, zero: true },
    { offset: 16384, length: 4096, hole: false, zero: true },
  ];
  assert.deepEqual(extentsToDescriptors(1000, 19000, ex), [
    { length: 3096, flags: 0 },
    { length: 8192, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    { length: 4096, flags: 0 },
    { length: 3616, flags: NBD_STATE_ZERO },
  ]);
  assert.deepEqual(extentsToDescriptors(5000, 100, ex, true), [{ length: 100, flags: 3 }]);
  assert.deepEqual(extentsToDescriptors(0, 8192, ex, true), [{ length: 4096, flags: 0 }]);
});

test('session: WRITE payloads land in the buffers allocatePayload hands out, however the bytes arrive', () => {
  const given: Uint8Array[] = [];
  const s = new NbdSession(catalog, { tls: 'off', allocatePayload: (n) => (given.push(new Uint8Array(n)), given[given.length - 1]!) });
  s.start();
  s.receive(c.encodeClientFlags(3));
  s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: 'disk', infos: [] })));
  const payload = new Uint8Array(3000).map((_, i) => i * 7);
  const wire = req(NBD_CMD.WRITE, 4096, payload.length, 0, 5n, payload);
  // In one piece, and split inside the payload: both times the request carries an allocated buffer.
  const ios = [...s.receive(wire), ...s.receive(wire.subarray(0, 100)), ...s.receive(wire.subarray(100))].flatMap((a) => (a.type === 'io' ? [a.request] : []));
  assert.equal(ios.length, 2);
  assert.equal(given.length, 2);
  ios.forEach((r, i) => {
    assert.equal(r.data, given[i], 'the payload is the allocated buffer itself');
    assert.deepEqual([...r.data!], [...payload]);
  });
});

test('session: WRITE payload bytes are copied with the copyBytes it is given', () => {
  let copied = 0;
  const s = new NbdSession(catalog, {
    tls: 'off',
    allocatePayload: (n) => new Uint8Array(new SharedArrayBuffer(n)),
    copyBytes: (dst, dstOffset, src) => {
      copied += src.length;
      dst.set(src, dstOffset);
    },
  });
  s.start();
  s.receive(c.encodeClientFlags(3));
  s.receive(c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: 'disk', infos: [] })));
  const payload = new Uint8Array(1000).map((_, i) => i * 3);
  const wire = req(NBD_CMD.WRITE, 0, payload.length, 0, 9n, payload);
  const ios = [...s.receive(wire.subarray(0, 50)), ...s.receive(wire.subarray(50))].flatMap((a) => (a.type === 'io' ? [a.request] : []));
  assert.equal(ios.length, 1);
  assert.deepEqual([...ios[0]!.data!], [...payload]);
  assert.equal(copied, payload.length, 'every payload byte went through copyBytes');
});

test('session: transient input (one receive buffer, reused and scribbled over after every call) loses no byte', () => {
  const given: Uint8Array[] = [];
  const payloads = [new Uint8Array(3000).map((_, i) => i * 7), new Uint8Array(5).fill(9), new Uint8Array(700).map((_, i) => 255 - i)];
  const wire = Buffer.concat([
    c.encodeClientFlags(3),
    c.encodeOption(NBD_OPT.GO, c.encodeInfoRequest({ name: 'disk', infos: [] })),
    ...payloads.map((p, i) => req(NBD_CMD.WRITE, 512 * i, p.length, 0, BigInt(i + 1), p)),
    req(NBD_CMD.READ, 0, 512, 0, 99n),
  ]);
  for (const step of [1, 5, 29, 4096]) {
    given.length = 0;
    const t = new NbdSession(catalog, { tls: 'off', allocatePayload: (n) => (given.push(new Uint8Array(n)), given[given.length - 1]!) });
    t.start();
    const recv = new Uint8Array(step);
    const ios: IoRequest[] = [];
    for (let at = 0; at < wire.length; at += step) {
      const k = Math.min(step, wire.length - at);
      recv.set(wire.subarray(at, at + k));
      for (const a of t.receive(recv.subarray(0, k), true)) if (a.type === 'io') ios.push(a.request);
      recv.fill(0xff); // the owner reuses its buffer
    }
    assert.deepEqual(ios.map((r) => r.command), ['write', 'write', 'write', 'read'], `step ${step}`);
    payloads.forEach((p, i) => {
      assert.equal(ios[i]!.data, given[i], 'each payload is a buffer of its own');
      assert.deepEqual([...ios[i]!.data!], [...p], `step ${step} payload ${i}`);
    });
    assert.equal(ios[3]!.cookie, 99n);
  }
});
