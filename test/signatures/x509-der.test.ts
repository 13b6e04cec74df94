/**
 * x509-der: known-answer vectors for times and OIDs, decoded fields compared with what
 * `openssl x509` prints for the same certificates, and malformed input rejected.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { needTools, run, tempDir } from '../helpers/tools.js';
import { decodeBasicConstraints, decodeCertificate, decodeKeyUsage, decodeOid, decodeTime } from '../../src/signatures/x509-der.js';
import { parseCertificate, parsePemCertificates } from '../../src/signatures/certificate-validation.js';
import { CertificateError, InvalidObjectError } from '../../src/errors.js';

const TIME_VECTORS: Array<[number, string, string]> = [
  // [tag, DER content, ISO instant] — RFC 5280 4.1.2.5: UTCTime YY >= 50 is 19YY.
  [0x17, '491231235959Z', '2049-12-31T23:59:59.000Z'],
  [0x17, '500101000000Z', '1950-01-01T00:00:00.000Z'],
  [0x17, '991231235959Z', '1999-12-31T23:59:59.000Z'],
  [0x17, '240229120000Z', '2024-02-29T12:00:00.000Z'],
  [0x18, '20500101000000Z', '2050-01-01T00:00:00.000Z'],
  [0x18, '99991231235959Z', '9999-12-31T23:59:59.000Z'],
];

const BAD_TIMES: Array<[number, string]> = [
  [0x17, '230229120000Z'], // no 29 February in 2023
  [0x17, '2401011200Z'], // seconds are mandatory in DER
  [0x17, '240101120000+0100'], // must be Zulu
  [0x18, '20240101120000.5Z'], // fractions are not used by RFC 5280
  [0x04, '20240101120000Z'], // not a time type
];

const OID_VECTORS: Array<[string, string]> = [
  ['551d0f', '2.5.29.15'],
  ['551d13', '2.5.29.19'],
  ['2a864886f70d01010b', '1.2.840.113549.1.1.11'],
  ['2b81040022', '1.3.132.0.34'],
  ['8837', '2.999'],
];

for (const [tag, text, iso] of TIME_VECTORS) {
  test(`decodeTime ${text}`, () => {
    assert.equal(decodeTime(tag, Buffer.from(text, 'latin1')).toISOString(), iso);
  });
}

test('decodeTime rejects malformed times', () => {
  for (const [tag, text] of BAD_TIMES) assert.throws(() => decodeTime(tag, Buffer.from(text, 'latin1')), InvalidObjectError, text);
});

test('decodeOid vectors', () => {
  for (const [hex, oid] of OID_VECTORS) assert.equal(decodeOid(Buffer.from(hex, 'hex')), oid);
  assert.throws(() => decodeOid(Buffer.from('2a86', 'hex')), InvalidObjectError);
});

const skip = needTools('openssl');
let tmp: { dir: string; cleanup: () => void };

const CERTS: Array<{ name: string; ext: string; days: number; keyUsage?: string[]; ca?: boolean; pathLength?: number }> = [
  { name: 'ca', ext: 'basicConstraints=critical,CA:TRUE,pathlen:2\nkeyUsage=critical,keyCertSign,cRLSign', days: 3650, keyUsage: ['keyCertSign', 'cRLSign'], ca: true, pathLength: 2 },
  { name: 'leaf', ext: 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,nonRepudiation,keyEncipherment,decipherOnly', days: 1, keyUsage: ['digitalSignature', 'nonRepudiation', 'keyEncipherment', 'decipherOnly'], ca: false },
  // A validity end after 2049 is a GeneralizedTime (RFC 5280 4.1.2.5).
  { name: 'long', ext: 'subjectKeyIdentifier=hash', days: 40000 },
];

before(() => {
  if (skip) return;
  tmp = tempDir('brickcrypt-x509-');
  for (const c of CERTS) {
    const cnf = join(tmp.dir, `${c.name}.cnf`);
    writeFileSync(cnf, `[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=${c.name}\n[ext]\n${c.ext}\n`);
    run('openssl', ['req', '-x509', '-config', cnf, '-extensions', 'ext', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(tmp.dir, `${c.name}.key`), '-days', String(c.days), '-out', join(tmp.dir, `${c.name}.pem`)]);
  }
});

after(() => tmp?.cleanup());

for (const c of CERTS) {
  test(`decodeCertificate agrees with openssl x509 (${c.name})`, { skip }, () => {
    const pemPath = join(tmp.dir, `${c.name}.pem`);
    const der = new X509Certificate(readFileSync(pemPath)).raw;
    const d = decodeCertificate(der);
    const text = run('openssl', ['x509', '-in', pemPath, '-noout', '-startdate', '-enddate', '-serial']);
    const field = (name: string) => new RegExp(`^${name}=(.*)$`, 'm').exec(text)![1]!;
    assert.equal(d.notBefore.getTime(), Date.parse(field('notBefore')));
    assert.equal(d.notAfter.getTime(), Date.parse(field('notAfter')));
    assert.equal(BigInt('0x' + d.serialHex), BigInt('0x' + field('serial')));
    assert.equal(d.version, 3);
    assert.deepEqual(Buffer.from(d.subjectDer), Buffer.from(d.issuerDer), 'self-signed: issuer == subject');
    const usage = decodeKeyUsage(d);
    assert.deepEqual(usage ? [...usage].sort() : undefined, c.keyUsage ? [...c.keyUsage].sort() : undefined);
    const bc = decodeBasicConstraints(d);
    assert.equal(bc?.ca, c.ca);
    assert.equal(bc?.pathLength, c.pathLength);
  });
}

test('malformed certificates are rejected with typed errors', { skip }, () => {
  const der = new X509Certificate(readFileSync(join(tmp.dir, 'leaf.pem'))).raw;
  const cases: Array<[string, Uint8Array]> = [
    ['truncated', der.subarray(0, der.length - 10)],
    ['trailing byte', Buffer.concat([der, Buffer.of(0)])],
    ['not a sequence', Buffer.concat([Buffer.of(0x31), der.subarray(1)])],
    ['empty', new Uint8Array(0)],
  ];
  for (const [name, bytes] of cases) {
    assert.throws(() => decodeCertificate(bytes), InvalidObjectError, name);
    assert.throws(() => parseCertificate(bytes, name), (e: unknown) => e instanceof CertificateError && e.reason === 'malformed', name);
  }
  assert.throws(() => parsePemCertificates('no certificate here', 'x.pem'), InvalidObjectError);
  const bundle = ['ca', 'leaf'].map((n) => readFileSync(join(tmp.dir, `${n}.pem`), 'utf8')).join('\n');
  assert.deepEqual(parsePemCertificates(bundle, 'b.pem').map((c) => c.x509.subject), ['CN=ca', 'CN=leaf']);
});
