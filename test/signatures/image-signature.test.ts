/**
 * Image signatures against the openssl CLI in both directions: signatures made with
 * `openssl dgst -sign` verify with verifyImageSignature, ours verify with
 * `openssl dgst -verify`; certificates and a CA chain come from `openssl req`/`x509 -req`.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, X509Certificate } from 'node:crypto';
import { needTools, run, runStatus, tempDir } from '../helpers/tools.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import type { CallerIdentity } from '../../src/keys/key-manager.js';
import { SecretBytes } from '../../src/secret.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { CertificateError, IntegrityError, InvalidArgumentError, InvalidObjectError, type CertificateProblem } from '../../src/errors.js';
import {
  verifyImageSignature,
  signImage,
  parsePemCertificates,
  type ImageSignatureProperties,
  type ParsedCertificate,
} from '../../src/signatures/index.js';

const skip = needTools('openssl');
const caller: CallerIdentity = { user: 'alice', project: 'images', roles: ['member'] };
const DAY = 86_400_000;

const CONFIG = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
[sub_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign
[leaf_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
[leaf_noku_ext]
basicConstraints = CA:FALSE
[leaf_enc_ext]
basicConstraints = CA:FALSE
keyUsage = critical,keyEncipherment,dataEncipherment
[noca_ext]
basicConstraints = critical,CA:FALSE
keyUsage = digitalSignature,keyCertSign
`;

let tmp: { dir: string; cleanup: () => void };
let km: MemoryKeyManager;
let imagePath: string;
let image: Buffer;
/** Certificate ids in the key manager, by name. */
const certIds: Record<string, string> = {};
/** Trusted sets, by name. */
const trust: Record<string, ParsedCertificate[]> = {};
let privateKeyId = '';

const f = (name: string) => join(tmp.dir, name);
const openssl = (...args: string[]) => run('openssl', args);

function makeKey(name: string, kind: string): void {
  if (kind === 'rsa') openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', f(`${name}.key`));
  else if (kind === 'dsa') {
    openssl('genpkey', '-genparam', '-algorithm', 'DSA', '-pkeyopt', 'dsa_paramgen_bits:2048', '-out', f(`${name}.param`));
    openssl('genpkey', '-paramfile', f(`${name}.param`), '-out', f(`${name}.key`));
  } else openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${kind}`, '-out', f(`${name}.key`));
  openssl('pkey', '-in', f(`${name}.key`), '-pubout', '-out', f(`${name}.pub`));
}

function selfSigned(name: string, key: string, ext: string, days = 30): void {
  openssl('req', '-x509', '-config', f('openssl.cnf'), '-extensions', ext, '-key', f(`${key}.key`), '-subj', `/CN=${name}`, '-days', String(days), '-out', f(`${name}.pem`));
}

let serial = 1;
function issue(name: string, key: string, ca: string, ext: string): void {
  openssl('req', '-new', '-config', f('openssl.cnf'), '-key', f(`${key}.key`), '-subj', `/CN=${name}`, '-out', f(`${name}.csr`));
  openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f(`${ca}.pem`), '-CAkey', f(`${ca}.key`), '-set_serial', String(serial++),
    '-extfile', f('openssl.cnf'), '-extensions', ext, '-days', '30', '-out', f(`${name}.pem`));
}

async function storeCert(name: string): Promise<void> {
  const der = new X509Certificate(readFileSync(f(`${name}.pem`))).raw;
  certIds[name] = await km.store(caller, { type: 'certificate', secret: SecretBytes.copyOf(der), name });
}

const signatureCache = new Map<string, string>();

/** `openssl dgst -sign` over the image (memoised: several cases share a signature). */
function opensslSign(key: string, hash: string, rsaPss: '' | 'max' | 'digest', file = imagePath): string {
  const cacheKey = [key, hash, rsaPss, file].join('|');
  const cached = signatureCache.get(cacheKey);
  if (cached) return cached;
  const pss = rsaPss ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', `rsa_pss_saltlen:${rsaPss === 'max' ? '-2' : '-1'}`] : [];
  const out = f(`sig-${key}-${hash}-${rsaPss}`);
  openssl('dgst', `-${hash}`, ...pss, '-sign', f(`${key}.key`), '-out', out, file);
  const b64 = readFileSync(out).toString('base64');
  signatureCache.set(cacheKey, b64);
  return b64;
}

before(async () => {
  if (skip) return;
  tmp = tempDir('brickcrypt-sig-');
  writeFileSync(f('openssl.cnf'), CONFIG);
  // Spans several 1 MiB read chunks and ends mid-chunk.
  image = randomBytes(1024 * 1024 + 12345);
  imagePath = f('image.raw');
  writeFileSync(imagePath, image);
  km = new MemoryKeyManager();

  makeKey('root', 'rsa');
  selfSigned('root', 'root', 'root_ext');
  makeKey('inter', 'secp384r1');
  issue('inter', 'inter', 'root', 'inter_ext');
  makeKey('other-root', 'rsa');
  selfSigned('other-root', 'other-root', 'root_ext');

  for (const [key, kind] of [['rsa', 'rsa'], ['p384', 'secp384r1'], ['p521', 'secp521r1'], ['dsa', 'dsa'], ['k571', 'sect571k1'], ['p256', 'prime256v1']] as const) {
    makeKey(key, kind);
    issue(`${key}-leaf`, key, 'root', 'leaf_ext');
    await storeCert(`${key}-leaf`);
  }
  issue('rsa-via-inter', 'rsa', 'inter', 'leaf_ext');
  issue('rsa-noku', 'rsa', 'root', 'leaf_noku_ext');
  issue('rsa-enc-only', 'rsa', 'root', 'leaf_enc_ext');
  issue('rsa-other-root', 'rsa', 'other-root', 'leaf_ext');
  selfSigned('rsa-self', 'rsa', 'leaf_ext');
  // A non-CA certificate used as an issuer, and an intermediate below a pathlen:0 CA.
  makeKey('noca', 'secp384r1');
  issue('noca', 'noca', 'root', 'noca_ext');
  issue('rsa-via-noca', 'rsa', 'noca', 'leaf_ext');
  makeKey('sub', 'secp384r1');
  issue('sub', 'sub', 'inter', 'sub_ext');
  issue('rsa-via-sub', 'rsa', 'sub', 'leaf_ext');
  for (const name of ['rsa-via-inter', 'rsa-noku', 'rsa-enc-only', 'rsa-other-root', 'rsa-self', 'rsa-via-noca', 'rsa-via-sub']) await storeCert(name);
  await storeCert('root');

  const pem = (...names: string[]) => names.map((n) => readFileSync(f(`${n}.pem`), 'utf8')).join('');
  trust.root = parsePemCertificates(pem('root'), 'root.pem');
  trust.rootAndInter = parsePemCertificates(pem('root', 'inter'), 'bundle.pem');
  trust.interOnly = parsePemCertificates(pem('inter'), 'inter.pem');
  trust.other = parsePemCertificates(pem('other-root'), 'other.pem');
  trust.withNoca = parsePemCertificates(pem('root', 'noca'), 'bundle.pem');
  trust.withSub = parsePemCertificates(pem('root', 'inter', 'sub'), 'bundle.pem');
  trust.self = parsePemCertificates(pem('rsa-self'), 'self.pem');

  openssl('pkcs8', '-topk8', '-nocrypt', '-in', f('rsa.key'), '-outform', 'DER', '-out', f('rsa.p8'));
  privateKeyId = await km.store(caller, { type: 'private', secret: SecretBytes.copyOf(readFileSync(f('rsa.p8'))) });
});

after(async () => {
  await km?.close();
  tmp?.cleanup();
});

type Expect = 'ok' | typeof IntegrityError | typeof InvalidArgumentError | typeof InvalidObjectError | CertificateProblem;

interface Case {
  name: string;
  key: string;
  /** openssl digest name, and the Glance hash method it corresponds to. */
  hash: 'sha224' | 'sha256' | 'sha384' | 'sha512';
  keyType: string;
  /** img_signature_hash_method when it differs from the hash openssl signed with. */
  hashProperty?: string;
  cert: string;
  pss?: 'max' | 'digest';
  trusted?: keyof typeof trust;
  nowOffsetDays?: number;
  tamper?: 'image' | 'signature';
  expect: Expect;
}

const GLANCE_HASH = { sha224: 'SHA-224', sha256: 'SHA-256', sha384: 'SHA-384', sha512: 'SHA-512' } as const;

const CASES: Case[] = [
  // Good signatures made by openssl, every key type and hash method.
  { name: 'RSA-PSS SHA-256, salt max (cursive)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', trusted: 'root', expect: 'ok' },
  { name: 'RSA-PSS SHA-224', key: 'rsa', hash: 'sha224', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', expect: 'ok' },
  { name: 'RSA-PSS SHA-384', key: 'rsa', hash: 'sha384', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', expect: 'ok' },
  { name: 'RSA-PSS SHA-512', key: 'rsa', hash: 'sha512', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', expect: 'ok' },
  { name: 'ECDSA P-384 SHA-384', key: 'p384', hash: 'sha384', keyType: 'ECC_SECP384R1', cert: 'p384-leaf', trusted: 'root', expect: 'ok' },
  { name: 'ECDSA P-384 SHA-256', key: 'p384', hash: 'sha256', keyType: 'ECC_SECP384R1', cert: 'p384-leaf', expect: 'ok' },
  { name: 'ECDSA P-521 SHA-512', key: 'p521', hash: 'sha512', keyType: 'ECC_SECP521R1', cert: 'p521-leaf', trusted: 'root', expect: 'ok' },
  { name: 'ECDSA sect571k1 SHA-512', key: 'k571', hash: 'sha512', keyType: 'ECC_SECT571K1', cert: 'k571-leaf', expect: 'ok' },
  { name: 'DSA SHA-256', key: 'dsa', hash: 'sha256', keyType: 'DSA', cert: 'dsa-leaf', trusted: 'root', expect: 'ok' },
  { name: 'DSA SHA-224', key: 'dsa', hash: 'sha224', keyType: 'DSA', cert: 'dsa-leaf', expect: 'ok' },
  { name: 'chain leaf -> intermediate -> root', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-via-inter', trusted: 'rootAndInter', expect: 'ok' },
  { name: 'no KeyUsage extension (RFC 5280: any usage)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-noku', trusted: 'root', expect: 'ok' },

  // Bad signatures.
  { name: 'tampered image (RSA-PSS)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', tamper: 'image', expect: IntegrityError },
  { name: 'tampered image (ECDSA)', key: 'p384', hash: 'sha384', keyType: 'ECC_SECP384R1', cert: 'p384-leaf', tamper: 'image', expect: IntegrityError },
  { name: 'tampered image (DSA)', key: 'dsa', hash: 'sha256', keyType: 'DSA', cert: 'dsa-leaf', tamper: 'image', expect: IntegrityError },
  { name: 'tampered signature (RSA-PSS)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', tamper: 'signature', expect: IntegrityError },
  { name: 'tampered signature (ECDSA P-521)', key: 'p521', hash: 'sha512', keyType: 'ECC_SECP521R1', cert: 'p521-leaf', tamper: 'signature', expect: IntegrityError },
  { name: 'tampered signature (DSA)', key: 'dsa', hash: 'sha256', keyType: 'DSA', cert: 'dsa-leaf', tamper: 'signature', expect: IntegrityError },
  { name: 'RSA-PSS with salt = digest length (cursive requires max)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'digest', cert: 'rsa-leaf', expect: IntegrityError },
  { name: 'signed with SHA-256, property says SHA-512', key: 'p384', hash: 'sha256', hashProperty: 'SHA-512', keyType: 'ECC_SECP384R1', cert: 'p384-leaf', expect: IntegrityError },
  { name: 'signed by another key than the certificate', key: 'p384', hash: 'sha384', keyType: 'ECC_SECP521R1', cert: 'p521-leaf', expect: IntegrityError },
  // Certificate problems.
  { name: 'expired certificate', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', nowOffsetDays: 60, expect: 'expired' },
  { name: 'not yet valid certificate', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', nowOffsetDays: -2, expect: 'not-yet-valid' },
  { name: 'CA certificate (keyCertSign, cRLSign) as signer', key: 'root', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'root', trusted: 'root', expect: 'key-usage' },
  { name: 'KeyUsage without digitalSignature', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-enc-only', expect: 'key-usage' },
  { name: 'chain to an untrusted root', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-other-root', trusted: 'root', expect: 'untrusted' },
  { name: 'valid chain but other trust anchor', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', trusted: 'other', expect: 'untrusted' },
  { name: 'intermediate trusted, its root not (cursive needs a self-signed root)', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-via-inter', trusted: 'interOnly', expect: 'untrusted' },
  { name: 'self-signed non-CA leaf as its own anchor', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-self', trusted: 'self', expect: 'not-a-ca' },
  { name: 'issuer without CA basicConstraints', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-via-noca', trusted: 'withNoca', expect: 'not-a-ca' },
  { name: 'pathlen:0 CA above another intermediate', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-via-sub', trusted: 'withSub', expect: 'path-length' },
  { name: 'key type names another curve than the certificate', key: 'p384', hash: 'sha384', keyType: 'ECC_SECP521R1', cert: 'p384-leaf', expect: 'key-type' },
  { name: 'RSA-PSS key type with an EC certificate', key: 'p384', hash: 'sha384', keyType: 'RSA-PSS', cert: 'p384-leaf', expect: 'key-type' },
  { name: 'P-256 certificate: no cursive key type', key: 'p256', hash: 'sha256', keyType: 'ECC_SECP384R1', cert: 'p256-leaf', expect: 'key-type' },
  // Property problems.
  { name: 'unknown hash method', key: 'rsa', hash: 'sha256', hashProperty: 'SHA-1', keyType: 'RSA-PSS', pss: 'max', cert: 'rsa-leaf', expect: InvalidArgumentError },
  { name: 'unknown key type', key: 'rsa', hash: 'sha256', keyType: 'RSA-PKCS1', cert: 'rsa-leaf', expect: InvalidArgumentError },
  { name: 'certificate id names a private key', key: 'rsa', hash: 'sha256', keyType: 'RSA-PSS', pss: 'max', cert: '#private', expect: InvalidObjectError },
];

for (const c of CASES) {
  test(`verify: ${c.name}`, { skip }, async () => {
    let signature = opensslSign(c.key, c.hash, c.pss ?? '');
    const hashMethod = c.hashProperty ?? GLANCE_HASH[c.hash];
    if (c.tamper === 'signature') {
      const sig = Buffer.from(signature, 'base64');
      sig[sig.length >> 1]! ^= 0x10;
      signature = sig.toString('base64');
    }
    let source: string | Buffer = imagePath;
    if (c.tamper === 'image') {
      const copy = Buffer.from(image);
      copy[copy.length - 1]! ^= 0x01;
      source = copy;
    }
    const properties: ImageSignatureProperties = {
      img_signature: signature,
      img_signature_hash_method: hashMethod,
      img_signature_key_type: c.keyType,
      img_signature_certificate_uuid: c.cert === '#private' ? privateKeyId : certIds[c.cert]!,
    };
    const run = verifyImageSignature({
      image: typeof source === 'string' ? source : chunks(source, 65536),
      properties,
      keyManager: km,
      caller,
      ...(c.trusted ? { trustedCertificates: trust[c.trusted] } : {}),
      ...(c.nowOffsetDays !== undefined ? { now: new Date(Date.now() + c.nowOffsetDays * DAY) } : {}),
    });
    if (c.expect === 'ok') {
      const result = await run;
      assert.equal(result.bytes, image.length);
      assert.equal(result.keyType, c.keyType);
      assert.equal(result.hashMethod, hashMethod);
      assert.match(result.certificate.subject, /CN=/);
      if (c.trusted) assert.match(result.chain!.at(-1)!, /CN=root/);
    } else if (typeof c.expect === 'string') {
      await assert.rejects(run, (err: unknown) => {
        assert.ok(err instanceof CertificateError, `expected CertificateError, got ${String(err)}`);
        assert.equal(err.reason, c.expect);
        assert.equal(err.code, 'INVALID_CERTIFICATE');
        return true;
      });
    } else {
      await assert.rejects(run, c.expect as new (...args: never[]) => Error);
    }
  });
}

async function* chunks(buf: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

test('verify reads a BlockDevice source', { skip }, async () => {
  const result = await verifyImageSignature({
    image: new MemoryDevice(new Uint8Array(image), true),
    properties: {
      img_signature: opensslSign('p384', 'sha384', ''),
      img_signature_hash_method: 'SHA-384',
      img_signature_key_type: 'ECC_SECP384R1',
      img_signature_certificate_uuid: certIds['p384-leaf']!,
    },
    keyManager: km,
    caller,
    trustedCertificates: trust.root!,
  });
  assert.equal(result.bytes, image.length);
});

test('missing properties and bad base64 are InvalidArgumentError', { skip }, async () => {
  const good: ImageSignatureProperties = {
    img_signature: opensslSign('p384', 'sha384', ''),
    img_signature_hash_method: 'SHA-384',
    img_signature_key_type: 'ECC_SECP384R1',
    img_signature_certificate_uuid: certIds['p384-leaf']!,
  };
  for (const name of Object.keys(good) as Array<keyof ImageSignatureProperties>) {
    const props: Partial<ImageSignatureProperties> = { ...good };
    delete props[name];
    await assert.rejects(verifyImageSignature({ image: imagePath, properties: props, keyManager: km, caller }), InvalidArgumentError, name);
  }
  for (const bad of ['not base64!', 'abc', '====']) {
    await assert.rejects(verifyImageSignature({ image: imagePath, properties: { ...good, img_signature: bad }, keyManager: km, caller }), InvalidArgumentError, bad);
  }
  // Line-wrapped base64 (openssl base64 output) is accepted.
  const wrapped = good.img_signature.replace(/(.{64})/g, '$1\n');
  await verifyImageSignature({ image: imagePath, properties: { ...good, img_signature: wrapped }, keyManager: km, caller });
});

const SIGN_CASES = [
  { key: 'rsa', keyType: 'RSA-PSS', hash: 'SHA-256', verifyArgs: ['-sha256', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:max'] },
  { key: 'rsa', keyType: 'RSA-PSS', hash: 'SHA-512', verifyArgs: ['-sha512', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:max'] },
  { key: 'p384', keyType: 'ECC_SECP384R1', hash: 'SHA-384', verifyArgs: ['-sha384'] },
  { key: 'p521', keyType: 'ECC_SECP521R1', hash: 'SHA-512', verifyArgs: ['-sha512'] },
  { key: 'dsa', keyType: 'DSA', hash: 'SHA-256', verifyArgs: ['-sha256'] },
  { key: 'k571', keyType: 'ECC_SECT571K1', hash: 'SHA-256', verifyArgs: ['-sha256'] },
] as const;

for (const s of SIGN_CASES) {
  test(`sign ${s.keyType} ${s.hash} (PEM key): openssl dgst -verify accepts it, and so does verify`, { skip }, async () => {
    const props = await signImage({
      image: imagePath,
      hashMethod: s.hash,
      keyType: s.keyType,
      key: { privateKeyPem: readFileSync(f(`${s.key}.key`)) },
      certificateId: certIds[`${s.key}-leaf`],
      keyManager: km,
      caller,
    });
    assert.equal(props.img_signature_hash_method, s.hash);
    assert.equal(props.img_signature_key_type, s.keyType);
    assert.equal(props.img_signature_certificate_uuid, certIds[`${s.key}-leaf`]);
    const sigFile = f(`our-sig-${s.key}-${s.hash}`);
    writeFileSync(sigFile, Buffer.from(props.img_signature, 'base64'));
    const ok = runStatus('openssl', ['dgst', ...s.verifyArgs, '-verify', f(`${s.key}.pub`), '-signature', sigFile, imagePath]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /Verified OK/);
    // openssl must refuse the same signature over a modified image (the check can fail).
    const other = f('image-modified.raw');
    const copy = Buffer.from(image);
    copy[0]! ^= 0x80;
    writeFileSync(other, copy);
    const bad = runStatus('openssl', ['dgst', ...s.verifyArgs, '-verify', f(`${s.key}.pub`), '-signature', sigFile, other]);
    assert.notEqual(bad.status, 0);
    await verifyImageSignature({ image: imagePath, properties: props as ImageSignatureProperties, keyManager: km, caller, trustedCertificates: trust.root! });
  });
}

test('sign with a managed PKCS#8 private key; mismatched certificate and key type are refused', { skip }, async () => {
  const props = await signImage({ image: imagePath, hashMethod: 'SHA-256', keyType: 'RSA-PSS', key: { privateKeyId }, certificateId: certIds['rsa-leaf'], keyManager: km, caller });
  const sigFile = f('managed-sig');
  writeFileSync(sigFile, Buffer.from(props.img_signature, 'base64'));
  const ok = runStatus('openssl', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:max', '-verify', f('rsa.pub'), '-signature', sigFile, imagePath]);
  assert.equal(ok.status, 0, ok.stderr);
  await assert.rejects(
    signImage({ image: imagePath, hashMethod: 'SHA-256', keyType: 'RSA-PSS', key: { privateKeyId }, certificateId: certIds['p384-leaf'], keyManager: km, caller }),
    (err: unknown) => err instanceof CertificateError && err.reason === 'key-type',
  );
  await assert.rejects(signImage({ image: imagePath, hashMethod: 'SHA-256', keyType: 'ECC_SECP384R1', key: { privateKeyId }, keyManager: km, caller }), InvalidArgumentError);
  await assert.rejects(signImage({ image: imagePath, hashMethod: 'SHA-256', keyType: 'RSA-PSS', key: { privateKeyId: certIds['rsa-leaf']! }, keyManager: km, caller }), InvalidObjectError);
  await assert.rejects(signImage({ image: imagePath, hashMethod: 'SHA-256', keyType: 'RSA-PSS', key: { privateKeyPem: 'garbage' } }), InvalidArgumentError);
});
