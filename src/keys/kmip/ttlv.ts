/**
 * KMIP TTLV (Tag-Type-Length-Value) codec, KMIP 1.x (OASIS KMIP Specification v1.2, section 9.1).
 *
 * Pure: bytes in, items out (`decodeTtlv`), items out to bytes (`encodeTtlv`), plus a
 * `validateTtlv` pass for items built in code. Strict: every length must match its type,
 * padding must be zero, structures must be exactly filled, and nesting depth and total size
 * are bounded, so a hostile server cannot make the client allocate or recurse without limit.
 *
 * Item layout (all big-endian; 9.1.1):
 *
 * | offset | size | field                                                    |
 * |--------|------|----------------------------------------------------------|
 * | 0      | 3    | tag (0x42xxxx standard, 0x54xxxx extension)              |
 * | 3      | 1    | type (ItemType)                                          |
 * | 4      | 4    | length of the value in bytes, without padding            |
 * | 8      | n    | value, then zero padding to a multiple of 8 bytes        |
 *
 * Value encodings (9.1.1.4):
 *
 * | type        | code | length        | value                                       |
 * |-------------|------|---------------|---------------------------------------------|
 * | Structure   | 0x01 | sum of items  | concatenated items (each already padded)    |
 * | Integer     | 0x02 | 4             | int32, then 4 bytes padding                 |
 * | LongInteger | 0x03 | 8             | int64                                       |
 * | BigInteger  | 0x04 | 8k, k >= 1    | two's complement, sign-extended to 8k bytes |
 * | Enumeration | 0x05 | 4             | uint32, then 4 bytes padding                |
 * | Boolean     | 0x06 | 8             | uint64, 0 or 1 only                         |
 * | TextString  | 0x07 | n             | UTF-8, padded                               |
 * | ByteString  | 0x08 | n             | bytes, padded                               |
 * | DateTime    | 0x09 | 8             | int64 seconds since the POSIX epoch         |
 * | Interval    | 0x0A | 4             | uint32 seconds, then 4 bytes padding        |
 */
import { KmipProtocolError } from '../../errors.js';

export const HEADER_SIZE = 8;
const TAG_OFFSET = 0;
const TYPE_OFFSET = 3;
const LENGTH_OFFSET = 4;

export const ItemType = {
  Structure: 0x01,
  Integer: 0x02,
  LongInteger: 0x03,
  BigInteger: 0x04,
  Enumeration: 0x05,
  Boolean: 0x06,
  TextString: 0x07,
  ByteString: 0x08,
  DateTime: 0x09,
  Interval: 0x0a,
} as const;
export type ItemTypeName = keyof typeof ItemType;
const TYPE_NAMES = new Map<number, ItemTypeName>(Object.entries(ItemType).map(([k, v]) => [v, k as ItemTypeName]));

/** Fixed value lengths; types not listed have variable length. */
const FIXED_LENGTH: Partial<Record<ItemTypeName, number>> = {
  Integer: 4,
  LongInteger: 8,
  Enumeration: 4,
  Boolean: 8,
  DateTime: 8,
  Interval: 4,
};

/** The tags this client uses (KMIP 1.2 section 9.1.3.1; values checked against PyKMIP 0.10's table). */
export const Tag = {
  ApplicationData: 0x420002,
  ApplicationNamespace: 0x420003,
  ApplicationSpecificInformation: 0x420004,
  Attribute: 0x420008,
  AttributeIndex: 0x420009,
  AttributeName: 0x42000a,
  AttributeValue: 0x42000b,
  BatchCount: 0x42000d,
  BatchItem: 0x42000f,
  Certificate: 0x420013,
  CertificateType: 0x42001d,
  CertificateValue: 0x42001e,
  CompromiseOccurrenceDate: 0x420021,
  CryptographicAlgorithm: 0x420028,
  CryptographicLength: 0x42002a,
  CryptographicUsageMask: 0x42002c,
  InitialDate: 0x420039,
  KeyBlock: 0x420040,
  KeyCompressionType: 0x420041,
  KeyFormatType: 0x420042,
  KeyMaterial: 0x420043,
  KeyValue: 0x420045,
  MaximumItems: 0x42004f,
  MaximumResponseSize: 0x420050,
  Name: 0x420053,
  NameType: 0x420054,
  NameValue: 0x420055,
  ObjectGroup: 0x420056,
  ObjectType: 0x420057,
  OpaqueDataType: 0x420059,
  OpaqueDataValue: 0x42005a,
  OpaqueObject: 0x42005b,
  Operation: 0x42005c,
  PrivateKey: 0x420064,
  ProtocolVersion: 0x420069,
  ProtocolVersionMajor: 0x42006a,
  ProtocolVersionMinor: 0x42006b,
  PublicKey: 0x42006d,
  RequestHeader: 0x420077,
  RequestMessage: 0x420078,
  RequestPayload: 0x420079,
  ResponseHeader: 0x42007a,
  ResponseMessage: 0x42007b,
  ResponsePayload: 0x42007c,
  ResultMessage: 0x42007d,
  ResultReason: 0x42007e,
  ResultStatus: 0x42007f,
  RevocationMessage: 0x420080,
  RevocationReason: 0x420081,
  RevocationReasonCode: 0x420082,
  SecretData: 0x420085,
  SecretDataType: 0x420086,
  State: 0x42008d,
  SymmetricKey: 0x42008f,
  TemplateAttribute: 0x420091,
  TimeStamp: 0x420092,
  UniqueBatchItemId: 0x420093,
  UniqueIdentifier: 0x420094,
} as const;

/** Enumerations this client uses (KMIP 1.2 section 9.1.3.2). */
export const Operation = { Create: 0x01, Register: 0x03, Locate: 0x08, Get: 0x0a, GetAttributes: 0x0b, Activate: 0x12, Revoke: 0x13, Destroy: 0x14 } as const;
export const ObjectTypeCode = { Certificate: 0x01, SymmetricKey: 0x02, PublicKey: 0x03, PrivateKey: 0x04, SecretData: 0x07, OpaqueObject: 0x08 } as const;
export const KeyFormatType = { Raw: 0x01, Opaque: 0x02, Pkcs1: 0x03, Pkcs8: 0x04, X509: 0x05 } as const;
export const CryptographicAlgorithm = { TripleDes: 0x02, Aes: 0x03, Rsa: 0x04, Dsa: 0x05, Ecdsa: 0x06, HmacSha256: 0x09, Ec: 0x1a } as const;
export const CryptographicUsageMask = { Sign: 0x01, Verify: 0x02, Encrypt: 0x04, Decrypt: 0x08, WrapKey: 0x10, UnwrapKey: 0x20, Export: 0x40 } as const;
export const ResultStatus = { Success: 0x00, OperationFailed: 0x01, OperationPending: 0x02, OperationUndone: 0x03 } as const;
export const ResultReason = {
  ItemNotFound: 0x01,
  ResponseTooLarge: 0x02,
  AuthenticationNotSuccessful: 0x03,
  InvalidMessage: 0x04,
  OperationNotSupported: 0x05,
  MissingData: 0x06,
  InvalidField: 0x07,
  FeatureNotSupported: 0x08,
  CryptographicFailure: 0x0a,
  IllegalOperation: 0x0b,
  PermissionDenied: 0x0c,
  ObjectArchived: 0x0d,
  GeneralFailure: 0x100,
} as const;
export const SecretDataType = { Password: 0x01, Seed: 0x02 } as const;
export const CertificateType = { X509: 0x01, Pgp: 0x02 } as const;
/** PyKMIP registers opaque objects with its extension value NONE (0x80000000). */
export const OpaqueDataType = { None: 0x80000000 } as const;
export const NameType = { UninterpretedTextString: 0x01, Uri: 0x02 } as const;
export const State = { PreActive: 0x01, Active: 0x02, Deactivated: 0x03, Compromised: 0x04, Destroyed: 0x05, DestroyedCompromised: 0x06 } as const;
export const RevocationReasonCode = { Unspecified: 0x01, KeyCompromise: 0x02, CessationOfOperation: 0x06 } as const;

export type TtlvItem =
  | { tag: number; type: 'Structure'; value: TtlvItem[] }
  | { tag: number; type: 'Integer'; value: number }
  | { tag: number; type: 'LongInteger'; value: bigint }
  | { tag: number; type: 'BigInteger'; value: bigint }
  | { tag: number; type: 'Enumeration'; value: number }
  | { tag: number; type: 'Boolean'; value: boolean }
  | { tag: number; type: 'TextString'; value: string }
  | { tag: number; type: 'ByteString'; value: Uint8Array }
  | { tag: number; type: 'DateTime'; value: bigint }
  | { tag: number; type: 'Interval'; value: number };

export interface TtlvLimits {
  /** Deepest structure nesting accepted (default 16; KMIP 1.x messages need about 8). */
  maxDepth?: number;
  /** Largest encoded message accepted (default 4 MiB). */
  maxSize?: number;
}
const DEFAULT_MAX_DEPTH = 16;
const DEFAULT_MAX_SIZE = 4 * 1024 * 1024;

const padded = (n: number) => (n + 7) & ~7;

// ------------------------------------------------------------------ builders

/** Item builders, e.g. `t.struct(Tag.RequestMessage, [...])`. */
export const t = {
  struct: (tag: number, value: TtlvItem[]): TtlvItem => ({ tag, type: 'Structure', value }),
  int: (tag: number, value: number): TtlvItem => ({ tag, type: 'Integer', value }),
  long: (tag: number, value: bigint): TtlvItem => ({ tag, type: 'LongInteger', value }),
  big: (tag: number, value: bigint): TtlvItem => ({ tag, type: 'BigInteger', value }),
  enum: (tag: number, value: number): TtlvItem => ({ tag, type: 'Enumeration', value }),
  bool: (tag: number, value: boolean): TtlvItem => ({ tag, type: 'Boolean', value }),
  text: (tag: number, value: string): TtlvItem => ({ tag, type: 'TextString', value }),
  bytes: (tag: number, value: Uint8Array): TtlvItem => ({ tag, type: 'ByteString', value }),
  date: (tag: number, value: bigint): TtlvItem => ({ tag, type: 'DateTime', value }),
  interval: (tag: number, value: number): TtlvItem => ({ tag, type: 'Interval', value }),
};

// ------------------------------------------------------------------ validate

/**
 * Checks an item tree built in code: tags in range, integer ranges, depth and size.
 * `encodeTtlv` calls it; decoding validates as it parses.
 */
export function validateTtlv(item: TtlvItem, limits: TtlvLimits = {}): void {
  const maxDepth = limits.maxDepth ?? DEFAULT_MAX_DEPTH;
  const walk = (it: TtlvItem, depth: number): number => {
    if (depth > maxDepth) throw new KmipProtocolError(`TTLV nesting deeper than ${maxDepth}`);
    checkTag(it.tag);
    switch (it.type) {
      case 'Structure': {
        if (!Array.isArray(it.value)) throw new KmipProtocolError('TTLV structure value must be an array');
        let n = 0;
        for (const c of it.value) n += walk(c, depth + 1);
        return HEADER_SIZE + n;
      }
      case 'Integer':
        if (!Number.isInteger(it.value) || it.value < -0x80000000 || it.value > 0x7fffffff) throw new KmipProtocolError(`TTLV Integer out of range: ${it.value}`);
        return 16;
      case 'Enumeration':
      case 'Interval':
        if (!Number.isInteger(it.value) || it.value < 0 || it.value > 0xffffffff) throw new KmipProtocolError(`TTLV ${it.type} out of range: ${it.value}`);
        return 16;
      case 'LongInteger':
      case 'DateTime':
        if (typeof it.value !== 'bigint' || it.value < -(1n << 63n) || it.value >= 1n << 63n) throw new KmipProtocolError(`TTLV ${it.type} out of range`);
        return 16;
      case 'BigInteger':
        if (typeof it.value !== 'bigint') throw new KmipProtocolError('TTLV BigInteger must be a bigint');
        return HEADER_SIZE + bigIntBytes(it.value).length;
      case 'Boolean':
        if (typeof it.value !== 'boolean') throw new KmipProtocolError('TTLV Boolean must be a boolean');
        return 16;
      case 'TextString':
        if (typeof it.value !== 'string') throw new KmipProtocolError('TTLV TextString must be a string');
        return HEADER_SIZE + padded(Buffer.byteLength(it.value, 'utf8'));
      case 'ByteString':
        if (!(it.value instanceof Uint8Array)) throw new KmipProtocolError('TTLV ByteString must be bytes');
        return HEADER_SIZE + padded(it.value.length);
      default:
        throw new KmipProtocolError(`unknown TTLV item type ${(it as { type: string }).type}`);
    }
  };
  const size = walk(item, 1);
  const maxSize = limits.maxSize ?? DEFAULT_MAX_SIZE;
  if (size > maxSize) throw new KmipProtocolError(`TTLV message of ${size} bytes exceeds ${maxSize}`);
}

function checkTag(tag: number): void {
  const prefix = tag >>> 16;
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffff || (prefix !== 0x42 && prefix !== 0x54)) {
    throw new KmipProtocolError(`invalid TTLV tag 0x${Number(tag).toString(16)}`);
  }
}

/** Minimal two's-complement big-endian bytes, sign-extended to a multiple of 8. */
function bigIntBytes(v: bigint): Uint8Array {
  let len = 8;
  while (v < -(1n << BigInt(len * 8 - 1)) || v >= 1n << BigInt(len * 8 - 1)) len += 8;
  const out = new Uint8Array(len);
  let x = BigInt.asUintN(len * 8, v);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}

// ------------------------------------------------------------------ encode

/**
 * Encodes one item (usually a Request Message structure) to bytes.
 *
 * @example
 * encodeTtlv(t.int(Tag.BatchCount, 1)) // 42 00 0d 02 00 00 00 04 00 00 00 01 00 00 00 00
 */
export function encodeTtlv(item: TtlvItem, limits: TtlvLimits = {}): Uint8Array {
  validateTtlv(item, limits);
  const parts: Uint8Array[] = [];
  encodeInto(item, parts);
  return new Uint8Array(Buffer.concat(parts));
}

function header(tag: number, type: ItemTypeName, length: number): Uint8Array {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUIntBE(tag, TAG_OFFSET, 3);
  h.writeUInt8(ItemType[type], TYPE_OFFSET);
  h.writeUInt32BE(length, LENGTH_OFFSET);
  return h;
}

function encodeInto(it: TtlvItem, parts: Uint8Array[]): number {
  const v = Buffer.alloc(8);
  switch (it.type) {
    case 'Structure': {
      const hdr = header(it.tag, 'Structure', 0);
      parts.push(hdr);
      let n = 0;
      for (const c of it.value) n += encodeInto(c, parts);
      Buffer.from(hdr.buffer, hdr.byteOffset, HEADER_SIZE).writeUInt32BE(n, LENGTH_OFFSET);
      return HEADER_SIZE + n;
    }
    case 'Integer':
      v.writeInt32BE(it.value, 0);
      parts.push(header(it.tag, it.type, 4), v);
      return 16;
    case 'Enumeration':
    case 'Interval':
      v.writeUInt32BE(it.value, 0);
      parts.push(header(it.tag, it.type, 4), v);
      return 16;
    case 'LongInteger':
    case 'DateTime':
      v.writeBigInt64BE(it.value, 0);
      parts.push(header(it.tag, it.type, 8), v);
      return 16;
    case 'Boolean':
      v.writeBigUInt64BE(it.value ? 1n : 0n, 0);
      parts.push(header(it.tag, it.type, 8), v);
      return 16;
    case 'BigInteger': {
      const b = bigIntBytes(it.value);
      parts.push(header(it.tag, it.type, b.length), b);
      return HEADER_SIZE + b.length;
    }
    case 'TextString':
    case 'ByteString': {
      const b = it.type === 'TextString' ? Buffer.from(it.value, 'utf8') : it.value;
      parts.push(header(it.tag, it.type, b.length), b, new Uint8Array(padded(b.length) - b.length));
      return HEADER_SIZE + padded(b.length);
    }
  }
}

// ------------------------------------------------------------------ decode

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Decodes exactly one item filling `bytes` (a whole KMIP message). Throws KmipProtocolError
 * on any framing violation; trailing bytes are an error.
 */
export function decodeTtlv(bytes: Uint8Array, limits: TtlvLimits = {}): TtlvItem {
  const maxSize = limits.maxSize ?? DEFAULT_MAX_SIZE;
  if (bytes.length > maxSize) throw new KmipProtocolError(`TTLV message of ${bytes.length} bytes exceeds ${maxSize}`);
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const { item, end } = decodeAt(view, 0, view.length, 1, limits.maxDepth ?? DEFAULT_MAX_DEPTH);
  if (end !== view.length) throw new KmipProtocolError(`${view.length - end} trailing byte(s) after the TTLV item`);
  return item;
}

/** Total size of the message whose first 8 bytes are `head` (for framing a stream). */
export function ttlvMessageLength(head: Uint8Array): number {
  if (head.length < HEADER_SIZE) throw new KmipProtocolError('TTLV header needs 8 bytes');
  const b = Buffer.from(head.buffer, head.byteOffset, HEADER_SIZE);
  checkTag(b.readUIntBE(TAG_OFFSET, 3));
  if (b.readUInt8(TYPE_OFFSET) !== ItemType.Structure) throw new KmipProtocolError('a KMIP message must be a Structure');
  const len = b.readUInt32BE(LENGTH_OFFSET);
  if (len % 8 !== 0) throw new KmipProtocolError(`structure length ${len} is not a multiple of 8`);
  return HEADER_SIZE + len;
}

function decodeAt(b: Buffer, off: number, limit: number, depth: number, maxDepth: number): { item: TtlvItem; end: number } {
  if (depth > maxDepth) throw new KmipProtocolError(`TTLV nesting deeper than ${maxDepth}`);
  if (limit - off < HEADER_SIZE) throw new KmipProtocolError(`truncated TTLV header at offset ${off}`);
  const tag = b.readUIntBE(off + TAG_OFFSET, 3);
  checkTag(tag);
  const typeCode = b.readUInt8(off + TYPE_OFFSET);
  const type = TYPE_NAMES.get(typeCode);
  if (!type) throw new KmipProtocolError(`unknown TTLV type 0x${typeCode.toString(16)} at offset ${off}`);
  const length = b.readUInt32BE(off + LENGTH_OFFSET);
  const fixed = FIXED_LENGTH[type];
  if (fixed !== undefined && length !== fixed) throw new KmipProtocolError(`TTLV ${type} at offset ${off} has length ${length}, must be ${fixed}`);
  if (type === 'BigInteger' && (length === 0 || length % 8 !== 0)) throw new KmipProtocolError(`TTLV BigInteger at offset ${off} has length ${length}, must be a non-zero multiple of 8`);
  if (type === 'Structure' && length % 8 !== 0) throw new KmipProtocolError(`TTLV Structure at offset ${off} has length ${length}, not a multiple of 8`);
  const start = off + HEADER_SIZE;
  const end = start + padded(length);
  if (end > limit) throw new KmipProtocolError(`TTLV ${type} at offset ${off} overruns its container (${length} bytes)`);
  for (let i = start + length; i < end; i++) {
    if (b[i] !== 0) throw new KmipProtocolError(`non-zero padding in TTLV ${type} at offset ${off}`);
  }
  switch (type) {
    case 'Structure': {
      const children: TtlvItem[] = [];
      let p = start;
      while (p < start + length) {
        const r = decodeAt(b, p, start + length, depth + 1, maxDepth);
        children.push(r.item);
        p = r.end;
      }
      return { item: { tag, type, value: children }, end };
    }
    case 'Integer':
      return { item: { tag, type, value: b.readInt32BE(start) }, end };
    case 'Enumeration':
    case 'Interval':
      return { item: { tag, type, value: b.readUInt32BE(start) }, end };
    case 'LongInteger':
    case 'DateTime':
      return { item: { tag, type, value: b.readBigInt64BE(start) }, end };
    case 'Boolean': {
      const v = b.readBigUInt64BE(start);
      if (v > 1n) throw new KmipProtocolError(`TTLV Boolean at offset ${off} is ${v}, must be 0 or 1`);
      return { item: { tag, type, value: v === 1n }, end };
    }
    case 'BigInteger': {
      let v = 0n;
      for (let i = 0; i < length; i++) v = (v << 8n) | BigInt(b[start + i]!);
      return { item: { tag, type, value: BigInt.asIntN(length * 8, v) }, end };
    }
    case 'TextString': {
      let s: string;
      try {
        s = utf8.decode(b.subarray(start, start + length));
      } catch (err) {
        throw new KmipProtocolError(`TTLV TextString at offset ${off} is not valid UTF-8`, { cause: err });
      }
      return { item: { tag, type, value: s }, end };
    }
    case 'ByteString':
      return { item: { tag, type, value: new Uint8Array(b.subarray(start, start + length)) }, end };
  }
}

// ------------------------------------------------------------------ navigation

/** First child of `s` with `tag`, or undefined. */
export function child(s: TtlvItem, tag: number): TtlvItem | undefined {
  if (s.type !== 'Structure') return undefined;
  return s.value.find((c) => c.tag === tag);
}

/** All children of `s` with `tag`. */
export function children(s: TtlvItem, tag: number): TtlvItem[] {
  return s.type === 'Structure' ? s.value.filter((c) => c.tag === tag) : [];
}

function need<T extends TtlvItem['type']>(s: TtlvItem, tag: number, type: T): Extract<TtlvItem, { type: T }> {
  const c = child(s, tag);
  if (!c) throw new KmipProtocolError(`missing tag 0x${tag.toString(16)} in 0x${s.tag.toString(16)}`);
  if (c.type !== type) throw new KmipProtocolError(`tag 0x${tag.toString(16)} is ${c.type}, expected ${type}`);
  return c as Extract<TtlvItem, { type: T }>;
}

/** Required child accessors that check the item type. */
export const get = {
  struct: (s: TtlvItem, tag: number) => need(s, tag, 'Structure'),
  int: (s: TtlvItem, tag: number) => need(s, tag, 'Integer').value,
  enum: (s: TtlvItem, tag: number) => need(s, tag, 'Enumeration').value,
  text: (s: TtlvItem, tag: number) => need(s, tag, 'TextString').value,
  bytes: (s: TtlvItem, tag: number) => need(s, tag, 'ByteString').value,
  date: (s: TtlvItem, tag: number) => need(s, tag, 'DateTime').value,
};
