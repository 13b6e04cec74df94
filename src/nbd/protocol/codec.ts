/**
 * Encoders and decoders for every NBD wire structure (doc/proto.md), big-endian,
 * with the byte offsets spelled out. Pure: bytes in, values out, and back.
 * A `decode*` function reads a structure of known size from the start of `bytes`;
 * it throws `CorruptHeaderError` only when the input is shorter than the structure.
 *
 * Example: `const req = decodeRequest(bytes); const reply = encodeSimpleReply({ error: 0, cookie: req.cookie });`
 */
import { CorruptHeaderError } from '../../errors.js';
import {
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_EXPORT_NAME_PADDING,
  NBD_REPLY_TYPE,
} from './constants.js';

const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: true });

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
function need(b: Uint8Array, n: number, what: string): void {
  if (b.length < n) throw new CorruptHeaderError(`NBD ${what}: need ${n} bytes, have ${b.length}`);
}
/** Decodes a protocol string (UTF-8, no NUL); throws `CorruptHeaderError` on invalid UTF-8. */
export function decodeString(b: Uint8Array): string {
  let s: string;
  try {
    s = utf8d.decode(b);
  } catch (err) {
    throw new CorruptHeaderError('NBD string is not valid UTF-8', { cause: err });
  }
  if (s.includes('\0')) throw new CorruptHeaderError('NBD string contains NUL');
  return s;
}
export function encodeString(s: string): Uint8Array {
  return utf8.encode(s);
}
function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------- handshake
/**
 * Server greeting, 18 bytes.
 * | 0 | 8 | NBDMAGIC | 8 | 8 | IHAVEOPT | 16 | 2 | handshake flags |
 */
export const GREETING_SIZE = 18;
export interface Greeting {
  initMagic: bigint;
  optsMagic: bigint;
  handshakeFlags: number;
}
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const b = new Uint8Array(GREETING_SIZE);
  const v = view(b);
  v.setBigUint64(0, NBD_INIT_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, handshakeFlags);
  return b;
}
export function decodeGreeting(b: Uint8Array): Greeting {
  need(b, GREETING_SIZE, 'greeting');
  const v = view(b);
  return { initMagic: v.getBigUint64(0), optsMagic: v.getBigUint64(8), handshakeFlags: v.getUint16(16) };
}

/** Client flags, 4 bytes. | 0 | 4 | client flags | */
export const CLIENT_FLAGS_SIZE = 4;
export function encodeClientFlags(flags: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, flags >>> 0);
  return b;
}
export function decodeClientFlags(b: Uint8Array): number {
  need(b, 4, 'client flags');
  return view(b).getUint32(0);
}

/**
 * Option header, 16 bytes (followed by `length` bytes of data).
 * | 0 | 8 | IHAVEOPT | 8 | 4 | option | 12 | 4 | data length |
 */
export const OPTION_HEADER_SIZE = 16;
export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_HEADER_SIZE + data.length);
  const v = view(b);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, data.length);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}
export function decodeOptionHeader(b: Uint8Array): OptionHeader {
  need(b, OPTION_HEADER_SIZE, 'option header');
  const v = view(b);
  return { magic: v.getBigUint64(0), option: v.getUint32(8), length: v.getUint32(12) };
}

/**
 * Option reply header, 20 bytes (followed by `length` bytes of data).
 * | 0 | 8 | reply magic | 8 | 4 | option | 12 | 4 | reply type | 16 | 4 | data length |
 */
export const OPTION_REPLY_HEADER_SIZE = 20;
export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  type: number;
  length: number;
}
export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_REPLY_HEADER_SIZE + data.length);
  const v = view(b);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type >>> 0);
  v.setUint32(16, data.length);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}
export function decodeOptionReplyHeader(b: Uint8Array): OptionReplyHeader {
  need(b, OPTION_REPLY_HEADER_SIZE, 'option reply header');
  const v = view(b);
  return { magic: v.getBigUint64(0), option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

/**
 * NBD_OPT_EXPORT_NAME reply: 10 bytes, plus 124 zero bytes unless NO_ZEROES was agreed.
 * | 0 | 8 | export size | 8 | 2 | transmission flags |
 */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(10 + (noZeroes ? 0 : NBD_EXPORT_NAME_PADDING));
  const v = view(b);
  v.setBigUint64(0, BigInt(size));
  v.setUint16(8, transmissionFlags);
  return b;
}
export function decodeExportNameReply(b: Uint8Array): { size: number; flags: number } {
  need(b, 10, 'export-name reply');
  const v = view(b);
  return { size: Number(v.getBigUint64(0)), flags: v.getUint16(8) };
}

/**
 * NBD_OPT_INFO / NBD_OPT_GO data.
 * | 0 | 4 | name length N | 4 | N | name | 4+N | 2 | request count R | 6+N | 2*R | info types |
 */
export interface InfoRequest {
  name: string;
  infos: number[];
}
export function encodeInfoRequest(r: InfoRequest): Uint8Array {
  const name = encodeString(r.name);
  const b = new Uint8Array(4 + name.length + 2 + 2 * r.infos.length);
  const v = view(b);
  v.setUint32(0, name.length);
  b.set(name, 4);
  v.setUint16(4 + name.length, r.infos.length);
  r.infos.forEach((t, i) => v.setUint16(6 + name.length + 2 * i, t));
  return b;
}
/** Decodes INFO/GO data; throws `CorruptHeaderError` if the lengths disagree with the data size. */
export function decodeInfoRequest(b: Uint8Array): InfoRequest {
  need(b, 6, 'info request');
  const v = view(b);
  const n = v.getUint32(0);
  if (n > b.length - 6) throw new CorruptHeaderError('NBD info request: name length exceeds option length');
  const name = decodeString(b.subarray(4, 4 + n));
  const count = v.getUint16(4 + n);
  if (6 + n + 2 * count !== b.length) throw new CorruptHeaderError('NBD info request: request count disagrees with option length');
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + n + 2 * i));
  return { name, infos };
}

/** NBD_REP_INFO payloads. */
export type InfoReply =
  | { type: 0; size: number; flags: number } // | 0 | 2 | type | 2 | 8 | size | 10 | 2 | transmission flags |
  | { type: 1; name: string } // | 0 | 2 | type | 2 | .. | name |
  | { type: 2; description: string } // | 0 | 2 | type | 2 | .. | description |
  | { type: 3; minimum: number; preferred: number; maximum: number }; // | 0 | 2 | type | 2 | 4 | min | 6 | 4 | pref | 10 | 4 | max |
export function encodeInfoReply(info: InfoReply): Uint8Array {
  switch (info.type) {
    case 0: {
      const b = new Uint8Array(12);
      const v = view(b);
      v.setUint16(0, 0);
      v.setBigUint64(2, BigInt(info.size));
      v.setUint16(10, info.flags);
      return b;
    }
    case 1:
    case 2: {
      const s = encodeString(info.type === 1 ? info.name : info.description);
      const b = new Uint8Array(2 + s.length);
      view(b).setUint16(0, info.type);
      b.set(s, 2);
      return b;
    }
    case 3: {
      const b = new Uint8Array(14);
      const v = view(b);
      v.setUint16(0, 3);
      v.setUint32(2, info.minimum);
      v.setUint32(6, info.preferred);
      v.setUint32(10, info.maximum);
      return b;
    }
  }
}
export function decodeInfoReply(b: Uint8Array): InfoReply {
  need(b, 2, 'info reply');
  const v = view(b);
  const type = v.getUint16(0);
  switch (type) {
    case 0:
      need(b, 12, 'NBD_INFO_EXPORT');
      return { type: 0, size: Number(v.getBigUint64(2)), flags: v.getUint16(10) };
    case 1:
      return { type: 1, name: decodeString(b.subarray(2)) };
    case 2:
      return { type: 2, description: decodeString(b.subarray(2)) };
    case 3:
      need(b, 14, 'NBD_INFO_BLOCK_SIZE');
      return { type: 3, minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
    default:
      throw new CorruptHeaderError(`NBD info reply: unknown type ${type}`);
  }
}

/**
 * NBD_REP_SERVER payload.
 * | 0 | 4 | name length N | 4 | N | name | 4+N | .. | description |
 */
export function encodeServerReply(name: string, description = ''): Uint8Array {
  const n = encodeString(name);
  const d = encodeString(description);
  const b = new Uint8Array(4 + n.length + d.length);
  view(b).setUint32(0, n.length);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}
export function decodeServerReply(b: Uint8Array): { name: string; description: string } {
  need(b, 4, 'server reply');
  const n = view(b).getUint32(0);
  if (n > b.length - 4) throw new CorruptHeaderError('NBD server reply: name length exceeds reply length');
  return { name: decodeString(b.subarray(4, 4 + n)), description: decodeString(b.subarray(4 + n)) };
}

/**
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data.
 * | 0 | 4 | export name length N | 4 | N | name | 4+N | 4 | query count Q | 8+N | .. | Q x (4-byte length, query) |
 */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}
export function encodeMetaContextRequest(r: MetaContextRequest): Uint8Array {
  const name = encodeString(r.exportName);
  const qs = r.queries.map(encodeString);
  const head = new Uint8Array(8 + name.length);
  const v = view(head);
  v.setUint32(0, name.length);
  head.set(name, 4);
  v.setUint32(4 + name.length, qs.length);
  const parts: Uint8Array[] = [head];
  for (const q of qs) {
    const l = new Uint8Array(4);
    view(l).setUint32(0, q.length);
    parts.push(l, q);
  }
  return concat(parts);
}
export function decodeMetaContextRequest(b: Uint8Array): MetaContextRequest {
  need(b, 8, 'meta context request');
  const v = view(b);
  const n = v.getUint32(0);
  if (n > b.length - 8) throw new CorruptHeaderError('NBD meta context request: name length exceeds option length');
  const exportName = decodeString(b.subarray(4, 4 + n));
  const count = v.getUint32(4 + n);
  let o = 8 + n;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (o + 4 > b.length) throw new CorruptHeaderError('NBD meta context request: truncated query list');
    const l = v.getUint32(o);
    if (l > b.length - o - 4) throw new CorruptHeaderError('NBD meta context request: query length exceeds option length');
    queries.push(decodeString(b.subarray(o + 4, o + 4 + l)));
    o += 4 + l;
  }
  if (o !== b.length) throw new CorruptHeaderError('NBD meta context request: trailing bytes');
  return { exportName, queries };
}

/** NBD_REP_META_CONTEXT payload. | 0 | 4 | context id | 4 | .. | context name | */
export function encodeMetaContextReply(id: number, name: string): Uint8Array {
  const s = encodeString(name);
  const b = new Uint8Array(4 + s.length);
  view(b).setUint32(0, id);
  b.set(s, 4);
  return b;
}
export function decodeMetaContextReply(b: Uint8Array): { id: number; name: string } {
  need(b, 4, 'meta context reply');
  return { id: view(b).getUint32(0), name: decodeString(b.subarray(4)) };
}

// ---------------------------------------------------------------- transmission
/**
 * Request header, 28 bytes (followed by `length` bytes of data for NBD_CMD_WRITE).
 * | 0 | 4 | request magic | 4 | 2 | command flags | 6 | 2 | type | 8 | 8 | cookie (handle) | 16 | 8 | offset | 24 | 4 | length |
 */
export const REQUEST_HEADER_SIZE = 28;
export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}
export function encodeRequest(r: Omit<RequestHeader, 'magic'> & { magic?: number }, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(REQUEST_HEADER_SIZE + (data?.length ?? 0));
  const v = view(b);
  v.setUint32(0, r.magic ?? NBD_REQUEST_MAGIC);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  v.setBigUint64(8, r.cookie);
  v.setBigUint64(16, r.offset);
  v.setUint32(24, r.length);
  if (data) b.set(data, REQUEST_HEADER_SIZE);
  return b;
}
export function decodeRequest(b: Uint8Array): RequestHeader {
  need(b, REQUEST_HEADER_SIZE, 'request');
  const v = view(b);
  return {
    magic: v.getUint32(0),
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: v.getBigUint64(8),
    offset: v.getBigUint64(16),
    length: v.getUint32(24),
  };
}

/**
 * Simple reply, 16 bytes (followed by the data of a successful NBD_CMD_READ).
 * | 0 | 4 | simple reply magic | 4 | 4 | error | 8 | 8 | cookie |
 */
export const SIMPLE_REPLY_SIZE = 16;
export interface SimpleReply {
  magic: number;
  error: number;
  cookie: bigint;
}
export function encodeSimpleReply(error: number, cookie: bigint): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_SIZE);
  const v = view(b);
  v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  v.setBigUint64(8, cookie);
  return b;
}
export function decodeSimpleReply(b: Uint8Array): SimpleReply {
  need(b, SIMPLE_REPLY_SIZE, 'simple reply');
  const v = view(b);
  return { magic: v.getUint32(0), error: v.getUint32(4), cookie: v.getBigUint64(8) };
}

/**
 * Structured reply chunk header, 20 bytes (followed by `length` bytes of payload).
 * | 0 | 4 | structured reply magic | 4 | 2 | flags | 6 | 2 | type | 8 | 8 | cookie | 16 | 4 | payload length |
 */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
export interface StructuredReplyHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}
export function encodeStructuredReplyHeader(flags: number, type: number, cookie: bigint, length: number): Uint8Array {
  const b = new Uint8Array(STRUCTURED_REPLY_HEADER_SIZE);
  const v = view(b);
  v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  v.setBigUint64(8, cookie);
  v.setUint32(16, length);
  return b;
}
export function encodeStructuredReply(flags: number, type: number, cookie: bigint, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat([encodeStructuredReplyHeader(flags, type, cookie, payload.length), payload]);
}
export function decodeStructuredReplyHeader(b: Uint8Array): StructuredReplyHeader {
  need(b, STRUCTURED_REPLY_HEADER_SIZE, 'structured reply header');
  const v = view(b);
  return { magic: v.getUint32(0), flags: v.getUint16(4), type: v.getUint16(6), cookie: v.getBigUint64(8), length: v.getUint32(16) };
}

/** NBD_REPLY_TYPE_OFFSET_DATA payload prefix. | 0 | 8 | offset | 8 | .. | data | */
/**
 * Structured reply header and OFFSET_DATA prefix in one 28-byte buffer (the data follows), so
 * a READ reply goes out as two socket writes, not three.
 */
export function encodeOffsetDataHeader(flags: number, cookie: bigint, offset: number, dataLength: number): Uint8Array {
  const b = new Uint8Array(STRUCTURED_REPLY_HEADER_SIZE + 8);
  const v = view(b);
  v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, NBD_REPLY_TYPE.OFFSET_DATA);
  v.setBigUint64(8, cookie);
  v.setUint32(16, 8 + dataLength);
  v.setBigUint64(STRUCTURED_REPLY_HEADER_SIZE, BigInt(offset));
  return b;
}
export function decodeOffsetData(b: Uint8Array): { offset: number; data: Uint8Array } {
  need(b, 9, 'OFFSET_DATA chunk');
  return { offset: Number(view(b).getBigUint64(0)), data: b.subarray(8) };
}

/** NBD_REPLY_TYPE_OFFSET_HOLE payload, 12 bytes. | 0 | 8 | offset | 8 | 4 | hole size | */
export function encodeOffsetHole(offset: number, size: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = view(b);
  v.setBigUint64(0, BigInt(offset));
  v.setUint32(8, size);
  return b;
}
export function decodeOffsetHole(b: Uint8Array): { offset: number; size: number } {
  need(b, 12, 'OFFSET_HOLE chunk');
  const v = view(b);
  return { offset: Number(v.getBigUint64(0)), size: v.getUint32(8) };
}

/** NBD_REPLY_TYPE_BLOCK_STATUS payload. | 0 | 4 | context id | 4 | 8*D | D x (4-byte length, 4-byte status flags) | */
export interface BlockDescriptor {
  length: number;
  flags: number;
}
export function encodeBlockStatus(contextId: number, descriptors: BlockDescriptor[]): Uint8Array {
  const b = new Uint8Array(4 + 8 * descriptors.length);
  const v = view(b);
  v.setUint32(0, contextId);
  descriptors.forEach((d, i) => {
    v.setUint32(4 + 8 * i, d.length);
    v.setUint32(8 + 8 * i, d.flags);
  });
  return b;
}
export function decodeBlockStatus(b: Uint8Array): { contextId: number; descriptors: BlockDescriptor[] } {
  need(b, 12, 'BLOCK_STATUS chunk');
  if ((b.length - 4) % 8 !== 0) throw new CorruptHeaderError('NBD BLOCK_STATUS chunk: length is not 4 + 8*n');
  const v = view(b);
  const descriptors: BlockDescriptor[] = [];
  for (let o = 4; o < b.length; o += 8) descriptors.push({ length: v.getUint32(o), flags: v.getUint32(o + 4) });
  return { contextId: v.getUint32(0), descriptors };
}

/**
 * NBD_REPLY_TYPE_ERROR payload (and ERROR_OFFSET, which appends an 8-byte offset).
 * | 0 | 4 | error | 4 | 2 | message length M | 6 | M | message | 6+M | 8 | offset (ERROR_OFFSET only) |
 */
export function encodeErrorChunk(error: number, message: string, offset?: number): Uint8Array {
  let m = encodeString(message);
  if (m.length > NBD_MAX_ERROR_MESSAGE) m = m.subarray(0, NBD_MAX_ERROR_MESSAGE);
  const b = new Uint8Array(6 + m.length + (offset === undefined ? 0 : 8));
  const v = view(b);
  v.setUint32(0, error);
  v.setUint16(4, m.length);
  b.set(m, 6);
  if (offset !== undefined) v.setBigUint64(6 + m.length, BigInt(offset));
  return b;
}
export function decodeErrorChunk(b: Uint8Array, withOffset: boolean): { error: number; message: string; offset?: number } {
  need(b, withOffset ? 14 : 6, 'error chunk');
  const v = view(b);
  const m = v.getUint16(4);
  if (6 + m + (withOffset ? 8 : 0) > b.length) throw new CorruptHeaderError('NBD error chunk: message length exceeds chunk');
  const message = new TextDecoder().decode(b.subarray(6, 6 + m));
  const out: { error: number; message: string; offset?: number } = { error: v.getUint32(0), message };
  if (withOffset) out.offset = Number(v.getBigUint64(6 + m));
  return out;
}
/** Error messages are truncated to this many bytes (the spec's string limit). */
export const NBD_MAX_ERROR_MESSAGE = 4096;
