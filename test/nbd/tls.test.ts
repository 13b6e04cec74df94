import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync, mkdirSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { parsePskFile } from '../../src/nbd/tls-config.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { needTools, tempDir, whichTool } from '../helpers/tools.js';
import { RawClient } from './raw-client.js';
import * as c from '../../src/nbd/protocol/codec.js';
import { NBD_OPT, NBD_REP } from '../../src/nbd/protocol/constants.js';

const execFileP = promisify(execFile);
async function nbdinfo(args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await execFileP(whichTool('nbdinfo') ?? 'nbdinfo', args, { encoding: 'utf8', timeout: 60_000, env: { ...process.env, LIBNBD_DEBUG: process.env.NBD_TEST_DEBUG ?? '' } });
    return { ok: true, out: r.stdout };
  } catch (err) {
    return { ok: false, out: String((err as { stderr?: string }).stderr ?? err) };
  }
}

const tmp = tempDir('brickcrypt-nbd-tls-');
after(() => tmp.cleanup());

/** A throwaway CA, server certificate (CN=localhost) and client certificate, made with openssl. */
function makePki(): { serverDir: string; clientDir: string; strangerDir: string } {
  const d = tmp.dir;
  const ossl = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: d, stdio: 'pipe' });
  };
  ossl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=brickcrypt test CA']);
  writeFileSync(join(d, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
  for (const who of ['server', 'client']) {
    ossl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', `/CN=${who === 'server' ? 'localhost' : 'client'}`]);
    ossl(['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${who}-cert.pem`, '-days', '2', '-extfile', 'ext.cnf']);
  }
  const serverDir = join(d, 'server');
  const clientDir = join(d, 'client');
  const strangerDir = join(d, 'stranger');
  for (const dir of [serverDir, clientDir, strangerDir]) mkdirSync(dir);
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) copyFileSync(join(d, f), join(serverDir, f));
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) copyFileSync(join(d, f), join(clientDir, f));
  copyFileSync(join(d, 'ca-cert.pem'), join(strangerDir, 'ca-cert.pem'));
  return { serverDir, clientDir, strangerDir };
}

test('parsePskFile reads username:hexkey lines and rejects junk', () => {
  const m = parsePskFile('# comment\nalice:00ff10\n\nbob:abcd\n');
  assert.deepEqual([...m.keys()], ['alice', 'bob']);
  assert.deepEqual([...m.get('alice')!.expose()], [0, 255, 16]);
  assert.throws(() => parsePskFile('alice:xyz\n'), InvalidArgumentError);
  assert.throws(() => parsePskFile('nokey\n'), InvalidArgumentError);
  assert.throws(() => parsePskFile('\n'), InvalidArgumentError);
});

test('x509 TLS: nbdinfo over nbds+unix with tls-certificates; plaintext options get TLS_REQD', { skip: needTools('nbdinfo', 'openssl') }, async () => {
  const pki = makePki();
  const dev = new MemoryDevice(randomBytes(1 << 20));
  const sock = join(tmp.dir, 'x509.sock');
  const server = new NbdServer({ exports: { disk: { device: dev } }, tls: { certDir: pki.serverDir } });
  await server.listen({ socket: sock });
  try {
    const r = await nbdinfo(['--json', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.clientDir}`]);
    assert.ok(r.ok, r.out);
    const j = JSON.parse(r.out);
    assert.equal(j.TLS, true);
    assert.equal(j.exports[0]['export-size'], 1 << 20);
    // Without TLS the client is refused.
    const plain = await nbdinfo(['--json', `nbd+unix:///disk?socket=${sock}`]);
    assert.equal(plain.ok, false);
    const cl = await RawClient.connect(sock);
    await cl.handshake();
    assert.equal((await cl.option(NBD_OPT.LIST))[0]!.type, NBD_REP.ERR_TLS_REQD);
    assert.equal((await cl.option(NBD_OPT.GO, c.encodeInfoRequest({ name: 'disk', infos: [] })))[0]!.type, NBD_REP.ERR_TLS_REQD);
    cl.close();
  } finally {
    await server.close();
  }

  // Client certificate verification: a client without a certificate is rejected.
  const server2 = new NbdServer({ exports: { disk: { device: dev } }, tls: { certDir: pki.serverDir, verifyPeer: true } });
  await server2.listen({ socket: sock });
  try {
    const ok = await nbdinfo(['--json', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.clientDir}`]);
    assert.ok(ok.ok, ok.out);
    const no = await nbdinfo(['--json', `nbds+unix:///disk?socket=${sock}&tls-certificates=${pki.strangerDir}`]);
    assert.equal(no.ok, false);
  } finally {
    await server2.close();
  }
});

test('PSK TLS: nbdinfo with tls-psk-file; a wrong key is refused', { skip: needTools('nbdinfo') }, async () => {
  const dev = new MemoryDevice(65536);
  const sock = join(tmp.dir, 'psk.sock');
  const keys = join(tmp.dir, 'keys.psk');
  const wrong = join(tmp.dir, 'wrong.psk');
  writeFileSync(keys, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const server = new NbdServer({ exports: { disk: { device: dev } }, tls: { pskFile: keys } });
  await server.listen({ socket: sock });
  try {
    const r = await nbdinfo(['--json', `nbds+unix://alice@/disk?socket=${sock}&tls-psk-file=${keys}`]);
    assert.ok(r.ok, r.out);
    assert.equal(JSON.parse(r.out).TLS, true);
    assert.equal(JSON.parse(r.out).exports[0]['export-size'], 65536);
    const bad = await nbdinfo(['--json', `nbds+unix://alice@/disk?socket=${sock}&tls-psk-file=${wrong}`]);
    assert.equal(bad.ok, false);
  } finally {
    await server.close();
  }
});
