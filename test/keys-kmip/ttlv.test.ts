import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KmipProtocolError } from '../../src/errors.js';
import { decodeTtlv, encodeTtlv, t, Tag, ttlvMessageLength, validateTtlv, type TtlvItem } from '../../src/keys/kmip/ttlv.js';
import { parseResponse } from '../../src/keys/kmip/kmip-client.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Known answers after the KMIP 1.2 specification, section 9.1.2 ("Examples"), tag 0x420020. */
const TAG = 0x420020;
const VECTORS: Array<{ name: string; item: TtlvItem; bytes: string }> = [
  { name: 'Integer 8', item: t.int(TAG, 8), bytes: '42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00' },
  { name: 'Integer -1', item: t.int(TAG, -1), bytes: '42 00 20 | 02 | 00 00 00 04 | ff ff ff ff 00 00 00 00' },
  { name: 'Long Integer 123456789000000000', item: t.long(TAG, 123456789000000000n), bytes: '42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00' },
  { name: 'Big Integer 1234567890000000000000000000', item: t.big(TAG, 1234567890000000000000000000n), bytes: '42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00' },
  { name: 'Big Integer -1', item: t.big(TAG, -1n), bytes: '42 00 20 | 04 | 00 00 00 08 | ff ff ff ff ff ff ff ff' },
  { name: 'Big Integer 2^63 needs 16 bytes (sign)', item: t.big(TAG, 1n << 63n), bytes: '42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 00 00 00 00 80 00 00 00 00 00 00 00' },
  { name: 'Enumeration 255', item: t.enum(TAG, 255), bytes: '42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00' },
  { name: 'Boolean true', item: t.bool(TAG, true), bytes: '42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01' },
  { name: 'Boolean false', item: t.bool(TAG, false), bytes: '42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 00' },
  { name: 'Text String "Hello World"', item: t.text(TAG, 'Hello World'), bytes: '42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00' },
  { name: 'Text String empty', item: t.text(TAG, ''), bytes: '42 00 20 | 07 | 00 00 00 00' },
  { name: 'Text String UTF-8 "é"', item: t.text(TAG, 'é'), bytes: '42 00 20 | 07 | 00 00 00 02 | c3 a9 00 00 00 00 00 00' },
  { name: 'Byte String 01 02 03', item: t.bytes(TAG, new Uint8Array([1, 2, 3])), bytes: '42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00' },
  { name: 'Byte String of 8 bytes has no padding', item: t.bytes(TAG, new Uint8Array(8).fill(0xaa)), bytes: '42 00 20 | 08 | 00 00 00 08 | aa aa aa aa aa aa aa aa' },
  { name: 'Date-Time 0x47DA67F8 (2008-03-14T11:56:40Z)', item: t.date(TAG, 0x47da67f8n), bytes: '42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8' },
  { name: 'Interval 10 days', item: t.interval(TAG, 864000), bytes: '42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00' },
  {
    name: 'Structure of Enumeration and Integer',
    item: t.struct(TAG, [t.enum(0x420004, 254), t.int(0x420005, 255)]),
    bytes: '42 00 20 | 01 | 00 00 00 20 | 42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE 00 00 00 00 | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00',
  },
  { name: 'empty Structure', item: t.struct(TAG, []), bytes: '42 00 20 | 01 | 00 00 00 00' },
  { name: 'extension tag 0x54xxxx', item: t.int(0x540001, 1), bytes: '54 00 01 | 02 | 00 00 00 04 | 00 00 00 01 00 00 00 00' },
];

for (const v of VECTORS) {
  test(`TTLV known answer: ${v.name}`, () => {
    const bytes = hex(v.bytes.replace(/\|/g, ''));
    assert.deepEqual(Buffer.from(encodeTtlv(v.item)), bytes, 'encode');
    const decoded = decodeTtlv(bytes);
    assert.deepEqual(decoded, v.item, 'decode');
    assert.deepEqual(Buffer.from(encodeTtlv(decoded)), bytes, 'encode(decode(b)) == b');
  });
}

test('TTLV round trip of a nested request message with every type', () => {
  const msg = t.struct(Tag.RequestMessage, [
    t.struct(Tag.RequestHeader, [t.struct(Tag.ProtocolVersion, [t.int(Tag.ProtocolVersionMajor, 1), t.int(Tag.ProtocolVersionMinor, 2)]), t.int(Tag.BatchCount, 1)]),
    t.struct(Tag.BatchItem, [
      t.enum(Tag.Operation, 0x0a),
      t.struct(Tag.RequestPayload, [
        t.text(Tag.UniqueIdentifier, 'abc-123'),
        t.bytes(Tag.KeyMaterial, new Uint8Array(33).fill(7)),
        t.long(Tag.CryptographicLength, -5n),
        t.big(Tag.CryptographicLength, -(1n << 200n)),
        t.bool(Tag.CryptographicLength, true),
        t.date(Tag.InitialDate, 1_700_000_000n),
        t.interval(Tag.CryptographicLength, 0xffffffff),
      ]),
    ]),
  ]);
  const bytes = encodeTtlv(msg);
  assert.equal(bytes.length % 8, 0);
  assert.equal(ttlvMessageLength(bytes.subarray(0, 8)), bytes.length);
  const back = decodeTtlv(bytes);
  assert.deepEqual(back, msg);
  assert.deepEqual(encodeTtlv(back), bytes);
});

/** Malformed inputs, each a valid encoding with one thing broken. */
const MALFORMED: Array<{ name: string; bytes: string }> = [
  { name: 'truncated header', bytes: '42 00 20 02 00 00' },
  { name: 'empty input', bytes: '' },
  { name: 'Integer with length 8', bytes: '42 00 20 02 00 00 00 08 00 00 00 08 00 00 00 00' },
  { name: 'Integer with length 2', bytes: '42 00 20 02 00 00 00 02 00 08 00 00 00 00 00 00' },
  { name: 'Long Integer with length 4', bytes: '42 00 20 03 00 00 00 04 00 00 00 01 00 00 00 00' },
  { name: 'Enumeration with length 8', bytes: '42 00 20 05 00 00 00 08 00 00 00 FF 00 00 00 00' },
  { name: 'Boolean with length 4', bytes: '42 00 20 06 00 00 00 04 00 00 00 01 00 00 00 00' },
  { name: 'Boolean value 2', bytes: '42 00 20 06 00 00 00 08 00 00 00 00 00 00 00 02' },
  { name: 'Date-Time with length 4', bytes: '42 00 20 09 00 00 00 04 47 DA 67 F8 00 00 00 00' },
  { name: 'Interval with length 8', bytes: '42 00 20 0A 00 00 00 08 00 0D 2F 00 00 00 00 00' },
  { name: 'Big Integer with length 4', bytes: '42 00 20 04 00 00 00 04 00 00 00 01 00 00 00 00' },
  { name: 'Big Integer with length 0', bytes: '42 00 20 04 00 00 00 00' },
  { name: 'Integer missing its padding', bytes: '42 00 20 02 00 00 00 04 00 00 00 08' },
  { name: 'non-zero padding after Integer', bytes: '42 00 20 02 00 00 00 04 00 00 00 08 00 00 00 01' },
  { name: 'non-zero padding after Text String', bytes: '42 00 20 07 00 00 00 03 41 42 43 00 00 00 00 20' },
  { name: 'Byte String longer than the input', bytes: '42 00 20 08 00 00 00 10 01 02 03 00 00 00 00 00' },
  { name: 'Text String not UTF-8', bytes: '42 00 20 07 00 00 00 02 c3 28 00 00 00 00 00 00' },
  { name: 'unknown type 0x0B', bytes: '42 00 20 0B 00 00 00 04 00 00 00 08 00 00 00 00' },
  { name: 'type 0x00', bytes: '42 00 20 00 00 00 00 00' },
  { name: 'tag outside 0x42/0x54 ranges', bytes: '43 00 20 02 00 00 00 04 00 00 00 08 00 00 00 00' },
  { name: 'Structure length not a multiple of 8', bytes: '42 00 20 01 00 00 00 0C 42 00 04 02 00 00 00 04 00 00 00 FE 00 00 00 00' },
  { name: 'Structure longer than the input', bytes: '42 00 20 01 00 00 00 20 42 00 04 05 00 00 00 04 00 00 00 FE 00 00 00 00' },
  {
    name: 'child overruns its Structure',
    bytes: '42 00 20 01 00 00 00 10 42 00 04 08 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00',
  },
  { name: 'trailing bytes after the item', bytes: '42 00 20 02 00 00 00 04 00 00 00 08 00 00 00 00 00 00 00 00 00 00 00 00' },
  { name: 'Structure holding a truncated child header', bytes: '42 00 20 01 00 00 00 08 42 00 04 02 00 00 00 00' },
];

for (const m of MALFORMED) {
  test(`TTLV rejects malformed input: ${m.name}`, () => {
    assert.throws(() => decodeTtlv(hex(m.bytes)), KmipProtocolError);
  });
}

test('TTLV rejects nesting deeper than the limit and messages larger than the limit', () => {
  let item: TtlvItem = t.int(Tag.BatchCount, 1);
  for (let i = 0; i < 20; i++) item = t.struct(Tag.BatchItem, [item]);
  assert.throws(() => encodeTtlv(item), KmipProtocolError, 'encode refuses depth 21');
  const bytes = encodeTtlv(item, { maxDepth: 32 });
  assert.throws(() => decodeTtlv(bytes), KmipProtocolError, 'decode refuses depth 21 by default');
  assert.deepEqual(decodeTtlv(bytes, { maxDepth: 21 }), item);
  const big = encodeTtlv(t.bytes(Tag.KeyMaterial, new Uint8Array(1024)));
  assert.throws(() => decodeTtlv(big, { maxSize: 512 }), KmipProtocolError);
  assert.throws(() => encodeTtlv(t.bytes(Tag.KeyMaterial, new Uint8Array(1024)), { maxSize: 512 }), KmipProtocolError);
});

test('TTLV validate rejects out-of-range values built in code', () => {
  const bad: TtlvItem[] = [
    t.int(Tag.BatchCount, 2 ** 31),
    t.int(Tag.BatchCount, 1.5),
    t.enum(Tag.Operation, -1),
    t.enum(Tag.Operation, 2 ** 32),
    t.interval(Tag.Operation, 2 ** 32),
    t.long(Tag.CryptographicLength, 1n << 63n),
    t.date(Tag.InitialDate, -(1n << 63n) - 1n),
    t.int(0x420, 1),
    t.int(0x1000000 + 0x420001, 1),
  ];
  for (const item of bad) assert.throws(() => validateTtlv(item), KmipProtocolError, JSON.stringify(item, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
});

test('ttlvMessageLength frames a stream and refuses a non-Structure first item', () => {
  assert.equal(ttlvMessageLength(hex('42 00 7B 01 00 00 01 00')), 8 + 256);
  assert.throws(() => ttlvMessageLength(hex('42 00 7B 02 00 00 00 04')), KmipProtocolError);
  assert.throws(() => ttlvMessageLength(hex('42 00 7B 01 00 00 00 05')), KmipProtocolError);
  assert.throws(() => ttlvMessageLength(hex('42 00 7B 01')), KmipProtocolError);
});

test('parseResponse maps KMIP result reasons to typed errors and checks the frame', async () => {
  const { ForbiddenError, KeyNotFoundError, UnsupportedError, InvalidObjectError } = await import('../../src/errors.js');
  const response = (status: number, reason?: number, op = 0x0a, count = 1) =>
    encodeTtlv(
      t.struct(Tag.ResponseMessage, [
        t.struct(Tag.ResponseHeader, [t.struct(Tag.ProtocolVersion, [t.int(Tag.ProtocolVersionMajor, 1), t.int(Tag.ProtocolVersionMinor, 2)]), t.date(Tag.TimeStamp, 1n), t.int(Tag.BatchCount, count)]),
        t.struct(Tag.BatchItem, [
          t.enum(Tag.Operation, op),
          t.enum(Tag.ResultStatus, status),
          ...(reason !== undefined ? [t.enum(Tag.ResultReason, reason), t.text(Tag.ResultMessage, 'why')] : []),
          ...(status === 0 ? [t.struct(Tag.ResponsePayload, [t.text(Tag.UniqueIdentifier, '7')])] : []),
        ]),
      ]),
    );
  const ok = parseResponse(response(0), 0x0a, '7');
  assert.equal(ok.tag, Tag.ResponsePayload);
  const cases: Array<[number, new (...a: never[]) => Error]> = [
    [0x01, KeyNotFoundError],
    [0x0c, ForbiddenError],
    [0x03, ForbiddenError],
    [0x05, UnsupportedError],
    [0x07, InvalidObjectError],
  ];
  for (const [reason, cls] of cases) assert.throws(() => parseResponse(response(1, reason), 0x0a, '7'), cls, `reason ${reason}`);
  assert.throws(() => parseResponse(response(0, undefined, 0x0b), 0x0a, '7'), KmipProtocolError, 'response for another operation');
  assert.throws(() => parseResponse(response(0, undefined, 0x0a, 2), 0x0a, '7'), KmipProtocolError, 'batch count mismatch');
  assert.throws(() => parseResponse(encodeTtlv(t.struct(Tag.RequestMessage, [])), 0x0a, '7'), KmipProtocolError, 'not a response');
});
