/**
 * The few X.509 fields that Node's `X509Certificate` does not expose, decoded from DER:
 * validity as exact instants, the issuer/subject names as DER bytes, and the KeyUsage
 * and BasicConstraints extensions (RFC 5280 sections 4.1, 4.2.1.3 and 4.2.1.9).
 *
 * Structure walked (RFC 5280 section 4.1; every element is a DER TLV):
 *
 * | path                                  | type                         | kept as                  |
 * |---------------------------------------|------------------------------|--------------------------|
 * | Certificate                           | SEQUENCE                     |                          |
 * |  .tbsCertificate                      | SEQUENCE                     |                          |
 * |    .version                           | [0] EXPLICIT INTEGER, opt.   | `version` (1..3)         |
 * |    .serialNumber                      | INTEGER                      | `serialHex`              |
 * |    .signature                         | AlgorithmIdentifier          | skipped                  |
 * |    .issuer                            | Name (SEQUENCE)              | `issuerDer`              |
 * |    .validity.notBefore / .notAfter    | UTCTime or GeneralizedTime   | `notBefore`, `notAfter`  |
 * |    .subject                           | Name (SEQUENCE)              | `subjectDer`             |
 * |    .subjectPublicKeyInfo              | SEQUENCE                     | skipped                  |
 * |    .issuerUniqueID / .subjectUniqueID | [1] / [2] IMPLICIT, optional | skipped                  |
 * |    .extensions                        | [3] EXPLICIT SEQUENCE OF Ext | `extensions` by OID      |
 * |  .signatureAlgorithm, .signatureValue | (checked by OpenSSL)         | skipped                  |
 *
 * Pure: bytes in, structure out; throws `InvalidObjectError` on malformed input.
 */
import { InvalidObjectError } from '../errors.js';

const TAG_BOOLEAN = 0x01;
const TAG_INTEGER = 0x02;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_UTC_TIME = 0x17;
const TAG_GENERALIZED_TIME = 0x18;
const TAG_SEQUENCE = 0x30;
const TAG_CTX0_CONSTRUCTED = 0xa0;
const TAG_CTX3_CONSTRUCTED = 0xa3;

export const OID_KEY_USAGE = '2.5.29.15';
export const OID_BASIC_CONSTRAINTS = '2.5.29.19';

/** KeyUsage bit numbers (RFC 5280 section 4.2.1.3). */
export const KEY_USAGE_BITS = {
  digitalSignature: 0,
  nonRepudiation: 1,
  keyEncipherment: 2,
  dataEncipherment: 3,
  keyAgreement: 4,
  keyCertSign: 5,
  cRLSign: 6,
  encipherOnly: 7,
  decipherOnly: 8,
} as const;
export type KeyUsageName = keyof typeof KEY_USAGE_BITS;

export interface DerElement {
  tag: number;
  /** Offset of the tag byte in the input. */
  start: number;
  /** Offset of the first content byte. */
  contentStart: number;
  /** Offset just past the content. */
  end: number;
}

export interface CertificateExtension {
  critical: boolean;
  value: Uint8Array;
}

export interface DecodedCertificate {
  version: number;
  serialHex: string;
  issuerDer: Uint8Array;
  subjectDer: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  extensions: Map<string, CertificateExtension>;
}

export interface BasicConstraints {
  ca: boolean;
  pathLength?: number;
}

function fail(what: string): never {
  throw new InvalidObjectError(`Malformed X.509 certificate: ${what}.`);
}

/** Reads the TLV starting at `offset`; definite lengths only, as DER requires (X.690 10.1). */
export function readElement(der: Uint8Array, offset: number, limit = der.length): DerElement {
  if (offset + 2 > limit) fail('truncated element');
  const tag = der[offset]!;
  if ((tag & 0x1f) === 0x1f) fail('multi-byte tags are not used in certificates');
  let pos = offset + 1;
  const first = der[pos++]!;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else {
    const count = first & 0x7f;
    if (count === 0 || count > 4) fail('unsupported length encoding');
    if (pos + count > limit) fail('truncated length');
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + der[pos++]!;
    if (length < 0x80 || (count > 1 && der[pos - count] === 0)) fail('non-minimal length');
  }
  const end = pos + length;
  if (end > limit) fail('element runs past its container');
  return { tag, start: offset, contentStart: pos, end };
}

function expect(der: Uint8Array, offset: number, tag: number, limit: number, what: string): DerElement {
  const el = readElement(der, offset, limit);
  if (el.tag !== tag) fail(`${what}: expected tag 0x${tag.toString(16)}, found 0x${el.tag.toString(16)}`);
  return el;
}

function children(der: Uint8Array, parent: DerElement): DerElement[] {
  const out: DerElement[] = [];
  let pos = parent.contentStart;
  while (pos < parent.end) {
    const el = readElement(der, pos, parent.end);
    out.push(el);
    pos = el.end;
  }
  return out;
}

export function decodeOid(bytes: Uint8Array): string {
  if (bytes.length === 0) fail('empty OID');
  const parts: number[] = [];
  let value = 0;
  for (let i = 0; i < bytes.length; i++) {
    value = value * 128 + (bytes[i]! & 0x7f);
    if ((bytes[i]! & 0x80) === 0) {
      if (parts.length === 0) parts.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else parts.push(value);
      value = 0;
    } else if (i === bytes.length - 1) {
      fail('truncated OID');
    }
  }
  return parts.join('.');
}

/** UTCTime YYMMDDHHMMSSZ (years 50..99 are 19xx) or GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 4.1.2.5). */
export function decodeTime(tag: number, bytes: Uint8Array): Date {
  const text = Buffer.from(bytes).toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (tag === TAG_UTC_TIME) {
    m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!m) fail(`bad UTCTime '${text}'`);
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (tag === TAG_GENERALIZED_TIME) {
    m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
    if (!m) fail(`bad GeneralizedTime '${text}'`);
    year = Number(m[1]);
  } else {
    fail('validity time is neither UTCTime nor GeneralizedTime');
  }
  const [mo, d, h, mi, s] = [m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number];
  const date = new Date(Date.UTC(year, mo - 1, d, h, mi, s));
  if (date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d || h > 23 || mi > 59 || s > 59) fail(`invalid date '${text}'`);
  return date;
}

/** Decodes the fields listed in the table at the top of this file. */
export function decodeCertificate(der: Uint8Array): DecodedCertificate {
  const cert = expect(der, 0, TAG_SEQUENCE, der.length, 'Certificate');
  if (cert.end !== der.length) fail('trailing bytes after the certificate');
  const tbs = expect(der, cert.contentStart, TAG_SEQUENCE, cert.end, 'tbsCertificate');
  const fields = children(der, tbs);
  let i = 0;
  let version = 1;
  if (fields[i]?.tag === TAG_CTX0_CONSTRUCTED) {
    const v = expect(der, fields[i]!.contentStart, TAG_INTEGER, fields[i]!.end, 'version');
    version = der[v.contentStart]! + 1;
    i++;
  }
  const serial = fields[i++];
  if (serial?.tag !== TAG_INTEGER) fail('serialNumber');
  const sigAlg = fields[i++];
  if (sigAlg?.tag !== TAG_SEQUENCE) fail('signature algorithm');
  const issuer = fields[i++];
  if (issuer?.tag !== TAG_SEQUENCE) fail('issuer');
  const validity = fields[i++];
  if (validity?.tag !== TAG_SEQUENCE) fail('validity');
  const subject = fields[i++];
  if (subject?.tag !== TAG_SEQUENCE) fail('subject');
  const spki = fields[i++];
  if (spki?.tag !== TAG_SEQUENCE) fail('subjectPublicKeyInfo');
  const times = children(der, validity);
  if (times.length !== 2) fail('validity must hold notBefore and notAfter');
  const notBefore = decodeTime(times[0]!.tag, der.subarray(times[0]!.contentStart, times[0]!.end));
  const notAfter = decodeTime(times[1]!.tag, der.subarray(times[1]!.contentStart, times[1]!.end));

  const extensions = new Map<string, CertificateExtension>();
  for (; i < fields.length; i++) {
    const f = fields[i]!;
    if (f.tag !== TAG_CTX3_CONSTRUCTED) continue; // issuer/subject unique ids
    const list = expect(der, f.contentStart, TAG_SEQUENCE, f.end, 'extensions');
    for (const ext of children(der, list)) {
      if (ext.tag !== TAG_SEQUENCE) fail('extension');
      const parts = children(der, ext);
      const oidEl = parts[0];
      if (oidEl?.tag !== TAG_OID) fail('extension id');
      let critical = false;
      let valueEl = parts[1];
      if (valueEl?.tag === TAG_BOOLEAN) {
        critical = der[valueEl.contentStart] !== 0;
        valueEl = parts[2];
      }
      if (valueEl?.tag !== TAG_OCTET_STRING) fail('extension value');
      const oid = decodeOid(der.subarray(oidEl.contentStart, oidEl.end));
      // RFC 5280 4.2: a certificate MUST NOT include more than one instance of an extension.
      if (extensions.has(oid)) fail(`extension ${oid} appears twice`);
      extensions.set(oid, { critical, value: der.subarray(valueEl.contentStart, valueEl.end) });
    }
  }
  return {
    version,
    serialHex: Buffer.from(der.subarray(serial.contentStart, serial.end)).toString('hex'),
    issuerDer: der.subarray(issuer.start, issuer.end),
    subjectDer: der.subarray(subject.start, subject.end),
    notBefore,
    notAfter,
    extensions,
  };
}

/** The KeyUsage bits that are set, or `undefined` when the extension is absent (RFC 5280 4.2.1.3). */
export function decodeKeyUsage(cert: DecodedCertificate): Set<KeyUsageName> | undefined {
  const ext = cert.extensions.get(OID_KEY_USAGE);
  if (!ext) return undefined;
  const bits = expect(ext.value, 0, TAG_BIT_STRING, ext.value.length, 'KeyUsage');
  const unused = ext.value[bits.contentStart];
  if (unused === undefined || unused > 7) fail('KeyUsage bit string');
  const bytes = ext.value.subarray(bits.contentStart + 1, bits.end);
  const out = new Set<KeyUsageName>();
  for (const [name, bit] of Object.entries(KEY_USAGE_BITS) as Array<[KeyUsageName, number]>) {
    const byte = bytes[bit >> 3];
    // Bit 0 is the most significant bit of the first byte (X.690 8.6.2.1).
    if (byte !== undefined && (byte & (0x80 >> (bit & 7))) !== 0) out.add(name);
  }
  return out;
}

/** BasicConstraints, or `undefined` when the extension is absent (RFC 5280 4.2.1.9). */
export function decodeBasicConstraints(cert: DecodedCertificate): BasicConstraints | undefined {
  const ext = cert.extensions.get(OID_BASIC_CONSTRAINTS);
  if (!ext) return undefined;
  const seq = expect(ext.value, 0, TAG_SEQUENCE, ext.value.length, 'BasicConstraints');
  const parts = children(ext.value, seq);
  const out: BasicConstraints = { ca: false };
  let i = 0;
  if (parts[i]?.tag === TAG_BOOLEAN) {
    out.ca = ext.value[parts[i]!.contentStart] !== 0;
    i++;
  }
  const p = parts[i];
  if (p?.tag === TAG_INTEGER) {
    let n = 0;
    for (let k = p.contentStart; k < p.end; k++) n = n * 256 + ext.value[k]!;
    out.pathLength = n;
  }
  return out;
}
