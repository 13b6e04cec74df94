/**
 * `brickcrypt image sign|verify` end to end: a local keystore holds the certificate and
 * the private key; openssl checks our signatures and makes the ones we verify.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const skip = needTools('openssl');
let tmp: { dir: string; cleanup: () => void };
const f = (name: string) => join(tmp.dir, name);
let km: string[] = [];
const ids: Record<string, string> = {};

function cli(args: string[]) {
  return runCli([...args, ...km], { env: { BRICKCRYPT_PROFILE: '', BRICKCRYPT_KEY_MANAGER: '' } });
}

function ok(args: string[]): string {
  const r = cli(args);
  assert.equal(r.status, 0, `brickcrypt ${args.join(' ')}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

before(() => {
  if (skip) return;
  tmp = tempDir('brickcrypt-image-cli-');
  km = ['--key-manager', `local:${f('ks.db')}`, '--kek-file', f('kek'), '--user', 'alice', '--project', 'images', '--roles', 'member'];
  writeFileSync(f('image.qcow2'), randomBytes(300_000));
  writeFileSync(f('cnf'), '[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=x\n[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n[leaf]\nkeyUsage=critical,digitalSignature\n');
  run('openssl', ['req', '-x509', '-config', f('cnf'), '-extensions', 'ca', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-subj', '/CN=image root', '-days', '10', '-out', f('ca.pem')]);
  run('openssl', ['req', '-x509', '-config', f('cnf'), '-extensions', 'ca', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('other.key'), '-subj', '/CN=other root', '-days', '10', '-out', f('other.pem')]);
  for (const [name, alg] of [['rsa', ['-newkey', 'rsa:2048']], ['ec', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp521r1']]] as const) {
    run('openssl', ['req', '-new', '-config', f('cnf'), ...alg, '-nodes', '-keyout', f(`${name}.key`), '-subj', `/CN=${name} signer`, '-out', f(`${name}.csr`)]);
    run('openssl', ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', '7', '-extfile', f('cnf'), '-extensions', 'leaf', '-days', '5', '-out', f(`${name}.pem`)]);
    run('openssl', ['pkey', '-in', f(`${name}.key`), '-pubout', '-out', f(`${name}.pub`)]);
  }
  const init = runCli(['key', 'init', '--key-manager', `local:${f('ks.db')}`, '--kek-file', f('kek')]);
  assert.equal(init.status, 0, init.stderr);
  ids.rsaCert = ok(['key', 'store', '--type', 'certificate', '--file', f('rsa.pem')]).trim();
  ids.ecCert = ok(['key', 'store', '--type', 'certificate', '--file', f('ec.pem')]).trim();
  ids.rsaKey = ok(['key', 'store', '--type', 'private', '--file', f('rsa.key')]).trim();
});

after(() => tmp?.cleanup());

function parseProps(text: string): Record<string, string> {
  return Object.fromEntries(text.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

test('sign with a managed key: properties verify with openssl and with image verify', { skip }, () => {
  const props = parseProps(ok(['image', 'sign', f('image.qcow2'), '--private-key-id', ids.rsaKey!, '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS', '--certificate-id', ids.rsaCert!]));
  assert.deepEqual(Object.keys(props).sort(), ['img_signature', 'img_signature_certificate_uuid', 'img_signature_hash_method', 'img_signature_key_type']);
  assert.equal(props.img_signature_certificate_uuid, ids.rsaCert);
  writeFileSync(f('sig.bin'), Buffer.from(props.img_signature!, 'base64'));
  const v = runStatus('openssl', ['dgst', '-sha256', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:max', '-verify', f('rsa.pub'), '-signature', f('sig.bin'), f('image.qcow2')]);
  assert.equal(v.status, 0, v.stdout + v.stderr);

  const out = ok(['image', 'verify', f('image.qcow2'), '--signature', props.img_signature!, '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS', '--certificate-id', ids.rsaCert!, '--trusted-cert', f('ca.pem')]);
  assert.match(out, /Signature verified: RSA-PSS with SHA-256 over 300000 bytes/);
  assert.match(out, /Chain: CN=rsa signer, issued by CN=image root/);
});

test('verify an openssl ECDSA signature from an `openstack image show -f json` file', { skip }, () => {
  run('openssl', ['dgst', '-sha512', '-sign', f('ec.key'), '-out', f('ec.sig'), f('image.qcow2')]);
  const sig = readFileSync(f('ec.sig')).toString('base64');
  writeFileSync(f('image.json'), JSON.stringify({
    id: 'a0b1', name: 'cirros', disk_format: 'qcow2',
    properties: { img_signature: sig, img_signature_hash_method: 'SHA-512', img_signature_key_type: 'ECC_SECP521R1', img_signature_certificate_uuid: ids.ecCert, os_hash_algo: 'sha512' },
  }));
  const result = JSON.parse(ok(['image', 'verify', f('image.qcow2'), '--properties', f('image.json'), '--trusted-cert', f('ca.pem'), '--json']));
  assert.equal(result.verified, true);
  assert.equal(result.keyType, 'ECC_SECP521R1');
  assert.equal(result.certificate.id, ids.ecCert);
  assert.equal(result.chain.length, 2);
});

test('sign with a PEM key file needs no key manager; ECDSA output verifies with openssl', { skip }, () => {
  const r = runCli(['image', 'sign', f('image.qcow2'), '--private-key', f('ec.key'), '--hash-method', 'SHA-384', '--key-type', 'ECC_SECP521R1', '--json'], {
    env: { BRICKCRYPT_KEY_MANAGER: 'local:/nonexistent/ks.db' },
  });
  assert.equal(r.status, 0, r.stderr);
  const props = JSON.parse(r.stdout);
  assert.equal(props.img_signature_certificate_uuid, undefined);
  writeFileSync(f('ec-ours.sig'), Buffer.from(props.img_signature, 'base64'));
  const v = runStatus('openssl', ['dgst', '-sha384', '-verify', f('ec.pub'), '-signature', f('ec-ours.sig'), f('image.qcow2')]);
  assert.equal(v.status, 0, v.stdout + v.stderr);
});

test('failures map to exit codes and stable error codes', { skip }, () => {
  const props = parseProps(ok(['image', 'sign', f('image.qcow2'), '--private-key', f('rsa.key'), '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS', '--certificate-id', ids.rsaCert!]));
  const base = ['--signature', props.img_signature!, '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS', '--certificate-id', ids.rsaCert!];
  const tampered = Buffer.from(readFileSync(f('image.qcow2')));
  tampered[1000]! ^= 0x04;
  writeFileSync(f('tampered.qcow2'), tampered);
  const cases: Array<[string, string[], number, RegExp]> = [
    ['tampered image', ['image', 'verify', f('tampered.qcow2'), ...base], 7, /error INTEGRITY:/],
    ['untrusted chain', ['image', 'verify', f('image.qcow2'), ...base, '--trusted-cert', f('other.pem')], 7, /error INVALID_CERTIFICATE:.*No trusted certificate/],
    ['missing property', ['image', 'verify', f('image.qcow2'), '--signature', props.img_signature!, '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS'], 1, /error INVALID_ARGUMENT:.*img_signature_certificate_uuid/],
    ['bad hash method', ['image', 'verify', f('image.qcow2'), ...base, '--hash-method', 'MD5'], 1, /error INVALID_ARGUMENT:.*MD5/],
    ['unknown certificate id', ['image', 'verify', f('image.qcow2'), ...base, '--certificate-id', '00000000-0000-0000-0000-000000000000'], 6, /error KEY_NOT_FOUND:/],
    ['private key id as certificate', ['image', 'verify', f('image.qcow2'), ...base, '--certificate-id', ids.rsaKey!], 6, /error INVALID_OBJECT:/],
    ['both key sources', ['image', 'sign', f('image.qcow2'), '--private-key', f('rsa.key'), '--private-key-id', ids.rsaKey!, '--hash-method', 'SHA-256', '--key-type', 'RSA-PSS'], 1, /exactly one of/],
    ['missing image', ['image', 'verify', f('nope.qcow2'), ...base], 4, /error NOT_FOUND:/],
  ];
  for (const [name, args, status, pattern] of cases) {
    const r = cli(args);
    assert.equal(r.status, status, `${name}: ${r.stderr}`);
    assert.match(r.stderr, pattern, name);
  }
});

test('--help documents the property names and key types', { skip }, () => {
  const sign = runCli(['image', 'sign', '--help']);
  const verify = runCli(['image', 'verify', '--help']);
  assert.equal(sign.status, 0);
  assert.equal(verify.status, 0);
  for (const text of [sign.stdout, verify.stdout]) {
    for (const word of ['img_signature_certificate_uuid', 'img_signature_key_type', 'RSA-PSS', 'ECC_SECP384R1', 'SHA-512', '--key-manager']) assert.ok(text.includes(word), word);
  }
  assert.match(verify.stdout, /--trusted-cert/);
  assert.match(sign.stdout, /--private-key-id/);
});
