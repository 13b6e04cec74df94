/**
 * The local keystore with its KEK inside a PKCS#11 token (SoftHSM2): library and CLI,
 * including rotation from a key file into the token.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WrongPassphraseError } from '../../src/errors.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { LocalKeyManager } from '../../src/keys/local-key-manager.js';
import { needTools, run, runCli, tempDir } from '../helpers/tools.js';

const skip = needTools('softhsm2-util');
const TOKEN = 'bc-keystore-test';
const admin = { user: 'ops', project: 'p1', roles: ['admin'] };
let tmp: { dir: string; cleanup: () => void } | undefined;
let pinFile = '';
let conf = '';
const savedConf = process.env.SOFTHSM2_CONF;

before(() => {
  if (skip) return;
  tmp = tempDir('brickcrypt-ks-softhsm-');
  mkdirSync(join(tmp.dir, 'tokens'));
  conf = join(tmp.dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${join(tmp.dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  run('softhsm2-util', ['--init-token', '--free', '--label', TOKEN, '--so-pin', '1234', '--pin', '4321'], { env: process.env });
  pinFile = join(tmp.dir, 'pin');
  writeFileSync(pinFile, '4321\n', { mode: 0o600 });
});

after(() => {
  if (savedConf === undefined) delete process.env.SOFTHSM2_CONF;
  else process.env.SOFTHSM2_CONF = savedConf;
  tmp?.cleanup();
});

test('keystore with a PKCS#11 KEK: init, reopen, wrong token key refused, rotation from a key file', { skip }, async () => {
  const pkcs11 = { tokenLabel: TOKEN, pinFile, keyLabel: 'ks-kek' };
  const db = join(tmp!.dir, 'hsm.db');
  const km = await openKeyManager(`local:${db}`, { init: true, pkcs11 });
  const { id, key } = await km.createKey(admin);
  await km.close();
  const again = await openKeyManager(`local:${db}`, { pkcs11 });
  assert.ok((await again.get(admin, id)).secret.equals(key));
  assert.deepEqual((again as LocalKeyManager).kekInfo(), { kind: 'external', id: `pkcs11:${TOKEN}/ks-kek` });
  await again.close();
  await assert.rejects(openKeyManager(`local:${db}`, { pkcs11: { ...pkcs11, keyLabel: 'other-kek' }, init: true }), WrongPassphraseError);
  // A file-KEK keystore moves into the token.
  const db2 = join(tmp!.dir, 'file.db');
  const fileKm = await LocalKeyManager.init(db2);
  const k2 = await fileKm.createKey(admin);
  const { Pkcs11Kek } = await import('../../src/keys/kek/pkcs11-kek.js');
  await fileKm.rotateKek(admin, { kind: 'external', provider: await Pkcs11Kek.open({ ...pkcs11, keyLabel: 'moved-kek', create: true }) });
  await fileKm.close();
  await assert.rejects(LocalKeyManager.open(db2), /external KEK/);
  const moved = await openKeyManager(`local:${db2}`, { pkcs11: { ...pkcs11, keyLabel: 'moved-kek' } });
  assert.ok((await moved.get(admin, k2.id)).secret.equals(k2.key));
  await moved.close();
  key.wipe();
  k2.key.wipe();
});

test('CLI: key init/create/get with --kek-pkcs11-key', { skip }, () => {
  const home = join(tmp!.dir, 'home');
  const env = { BRICKCRYPT_HOME: home, BRICKCRYPT_PROFILE: '', SOFTHSM2_CONF: conf };
  const hsm = ['--kek-pkcs11-key', 'cli-kek', '--pkcs11-token', TOKEN, '--pkcs11-pin-file', pinFile];
  const init = runCli(['key', 'init', ...hsm], { env });
  assert.equal(init.status, 0, init.stderr);
  assert.match(init.stdout, new RegExp(`KEK: pkcs11:${TOKEN}/cli-kek`));
  const create = runCli(['key', 'create', ...hsm], { env });
  assert.equal(create.status, 0, create.stderr);
  const out = join(tmp!.dir, 'k.bin');
  const get = runCli(['key', 'get', create.stdout.trim(), '--out', out, ...hsm], { env });
  assert.equal(get.status, 0, get.stderr);
  assert.equal(readFileSync(out).length, 32);
  const noHsm = runCli(['key', 'list'], { env });
  assert.equal(noHsm.status, 1);
  assert.match(noHsm.stderr, /external KEK/);
});
