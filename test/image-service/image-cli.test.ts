/**
 * `brickcrypt image upload|download|delete|list|show` as a user runs them, against the real
 * Glance test server and a local keystore: printed ids, exit codes, nothing left behind.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { glanceAs, glanceServer, uniqueProject } from '../helpers/glance.js';
import { cliPath, needTools, run, runCli, tempDir } from '../helpers/tools.js';

const server = await glanceServer();
const skip = 'skip' in server ? server.skip : needTools('openssl');
const url = 'skip' in server ? '' : server.url;
const store = 'skip' in server ? '' : server.store;
const tmp = tempDir('brickcrypt-image-cli-');
after(() => tmp.cleanup());
const f = (name: string) => join(tmp.dir, name);
const project = uniqueProject('cli');
const who = ['--user', 'cinder', '--project', project, '--roles', 'member,creator'];
const env = { BRICKCRYPT_HOME: f('home'), BRICKCRYPT_PROFILE: '', BRICKCRYPT_KEY_MANAGER: '', BRICKCRYPT_IMAGE_SERVICE: url, OS_AUTH_TOKEN: '' };

function cli(args: string[]) {
  return runCli([...args, ...who], { env });
}
function ok(args: string[]): string {
  const r = cli(args);
  assert.equal(r.status, 0, `brickcrypt ${args.join(' ')}\n${r.stdout}${r.stderr}`);
  return r.stdout.trim();
}

test('upload as-is, show, download with a key clone, delete with the key; signed round trip; tampering exits 7', { skip }, async () => {
  ok(['key', 'init']);
  const data = Buffer.alloc(16 << 20);
  randomBytes(6 << 20).copy(data, 1 << 20);
  writeFileSync(f('disk.raw'), data);
  const key = ok(['convert', f('disk.raw'), f('vol.luks'), '--dst-format', 'luks2', '--create-key', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']);
  const image = ok(['image', 'upload', f('vol.luks'), '--name', 'cli-1', '--key-id', key]);
  assert.match(image, /^[0-9a-f-]{36}$/);
  const shown = JSON.parse(ok(['image', 'show', image, '--json'])) as { properties: Record<string, string>; status: string };
  assert.equal(shown.status, 'active');
  const clone = shown.properties.cinder_encryption_key_id!;
  assert.equal(shown.properties.os_encrypt_key_id, clone);
  assert.equal(shown.properties.os_encrypt_format, 'LUKSv2');
  assert.match(ok(['image', 'list']), new RegExp(`${image}\\s+cli-1\\s+active\\s+raw\\s+\\d+\\s+LUKSv2`));

  const volKey = ok(['image', 'download', image, f('back.luks'), '--dst-format', 'luks2']);
  assert.ok(![key, clone].includes(volKey));
  assert.ok(readFileSync(f('back.luks')).equals(readFileSync(f('vol.luks'))));
  // Refusing to overwrite: exit 5, the file untouched.
  assert.equal(cli(['image', 'download', image, f('back.luks'), '--dst-format', 'luks2']).status, 5);

  ok(['image', 'delete', image]);
  assert.equal(cli(['image', 'show', image]).status, 4);
  const keys = ok(['key', 'list']);
  assert.ok(!keys.includes(clone), 'the image key was deleted with the image');
  assert.ok(keys.includes(key) && keys.includes(volKey));

  // Signed decrypted upload; then the stored file is tampered with.
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=signer', '-keyout', f('s.key'), '-out', f('s.pem')]);
  const cert = ok(['key', 'store', '--type', 'certificate', '--file', f('s.pem')]);
  const signed = ok(['image', 'upload', f('vol.luks'), '--name', 'cli-2', '--decrypt', '--disk-format', 'raw', '--key-id', key, '--sign-key', f('s.key'), '--certificate-id', cert, '--import', 'glance-direct']);
  writeFileSync(f('pass'), 'new-pass');
  const luksOpts = ['--dst-key-file', f('pass'), '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
  ok(['image', 'download', signed, f('plain.luks'), '--dst-format', 'luks2', '--require-signature', ...luksOpts]);
  ok(['verify', f('disk.raw'), f('plain.luks'), '--dst-key-file', f('pass')]);
  const fd = openSync(join(store, signed), 'r+');
  writeSync(fd, Buffer.from('X'), 0, 1, 3 << 20);
  closeSync(fd);
  const bad = cli(['image', 'download', signed, f('tampered.luks'), '--dst-format', 'luks2', ...luksOpts]);
  assert.equal(bad.status, 7, bad.stderr);
  assert.match(bad.stderr, /INTEGRITY/);
  assert.equal(existsSync(f('tampered.luks')), false);
  assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.includes('partial')), []);
  ok(['image', 'delete', signed]);
});

test('SIGINT during an upload exits 130 and leaves no image', { skip }, async () => {
  writeFileSync(f('big.raw'), randomBytes(256 << 20));
  const child = spawn(process.execPath, [cliPath, 'image', 'upload', f('big.raw'), '--name', 'interrupted', '--json', ...who], { env: { ...process.env, ...env } });
  let out = '';
  let sent = false;
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (!sent && out.includes('"event":"progress"')) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  assert.ok(sent, 'a progress line came before the end');
  assert.equal(code, 130);
  const glance = glanceAs(url, project);
  assert.deepEqual((await glance.list()).filter((i) => i.name === 'interrupted'), []);
});
