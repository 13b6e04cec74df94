/**
 * KMIP ownership against a real PyKMIP 0.10 server: the client certificate that creates an
 * object owns it, another client certificate is refused (PERMISSION_DENIED -> ForbiddenError),
 * and what KMIP 1.x cannot express is reported as UnsupportedError.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BackendUnavailableError, ForbiddenError, KeyNotFoundError, UnsupportedError } from '../../src/errors.js';
import { KmipKeyManager } from '../../src/keys/kmip/kmip-key-manager.js';
import { SecretBytes } from '../../src/secret.js';
import { kmipServer } from '../helpers/key-servers.js';
import { needTools, run, tempDir } from '../helpers/tools.js';

const server = await kmipServer();

describe('kmip ownership by client certificate', { skip: 'skip' in server ? server.skip : false }, () => {
  const cfg = 'skip' in server ? undefined : server;
  const caller = { user: 'alice', project: 'p', roles: ['admin'] };
  let a: KmipKeyManager;
  let b: KmipKeyManager;
  before(() => {
    a = new KmipKeyManager({ host: cfg!.host, port: cfg!.port, caFile: cfg!.ca, certFile: cfg!.cert, keyFile: cfg!.key, attempts: 2 });
    b = new KmipKeyManager({ host: cfg!.host, port: cfg!.port, caFile: cfg!.ca, certFile: cfg!.cert2, keyFile: cfg!.key2, attempts: 2 });
  });
  after(async () => {
    await a.close();
    await b.close();
  });

  test('the identity is the client certificate CN', () => {
    assert.equal(a.identity, 'brickcrypt-a');
    assert.equal(b.identity, 'brickcrypt-b');
  });

  test("a second client certificate can neither read, inspect, clone nor destroy the first's objects", async () => {
    const { id, key } = await a.createKey(caller, { name: 'owned-by-a' });
    key.wipe();
    assert.equal((await a.getMetadata(caller, id)).owner.user, 'brickcrypt-a');
    await assert.rejects(b.get(caller, id), ForbiddenError);
    await assert.rejects(b.getMetadata(caller, id), ForbiddenError);
    await assert.rejects(b.clone(caller, id), ForbiddenError);
    await assert.rejects(b.delete(caller, id), ForbiddenError);
    assert.equal((await b.list(caller)).some((m) => m.id === id), false, 'Locate does not show it to b');
    assert.ok((await a.list(caller)).some((m) => m.id === id));
    await a.delete(caller, id);
    await assert.rejects(a.get(caller, id), KeyNotFoundError);
  });

  test('consumers and read ACLs are UnsupportedError on KMIP', async () => {
    const id = await a.store(caller, { type: 'opaque', secret: SecretBytes.copyOf(Buffer.from('x')) });
    const c = { service: 'volume', resourceType: 'volume', resourceId: 'v' };
    await assert.rejects(a.addConsumer(caller, id, c), UnsupportedError);
    await assert.rejects(a.removeConsumer(caller, id, c), UnsupportedError);
    await assert.rejects(a.grantRead(caller, id, 'bob'), UnsupportedError);
    await assert.rejects(a.revokeRead(caller, id, 'bob'), UnsupportedError);
    await a.delete(caller, id);
  });

  test('a client certificate from another CA is refused by the server', { skip: needTools('openssl') }, async () => {
    const tmp = tempDir('brickcrypt-kmip-rogue-');
    try {
      const key = join(tmp.dir, 'rogue.key');
      const cert = join(tmp.dir, 'rogue.pem');
      run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=brickcrypt-a', '-keyout', key, '-out', cert]);
      // Same CN as a's certificate, but not issued by the server's CA: the handshake fails.
      const rogue = new KmipKeyManager({ host: cfg!.host, port: cfg!.port, caFile: cfg!.ca, certFile: cert, keyFile: key, attempts: 1 });
      await assert.rejects(rogue.list(caller), BackendUnavailableError);
      await rogue.close();
    } finally {
      tmp.cleanup();
    }
  });

  test('openKeyManager opens this backend from a kmip:// URI with certificate files', async () => {
    const { openKeyManager } = await import('../../src/keys/open-key-manager.js');
    const q = new URLSearchParams({ ca: cfg!.ca, cert: cfg!.cert, key: cfg!.key });
    const km = await openKeyManager(`kmip://${cfg!.host}:${cfg!.port}?${q}`);
    assert.equal(km.backend, 'kmip');
    const { id, key } = await km.createKey(caller);
    const got = await a.get(caller, id); // same certificate: same owner
    assert.ok(got.secret.equals(key));
    got.secret.wipe();
    key.wipe();
    await km.delete(caller, id);
    await km.close();
  });

  test('an unreachable server is BackendUnavailableError after the retries', async () => {
    const dead = new KmipKeyManager({ host: '127.0.0.1', port: 1, caFile: cfg!.ca, certFile: cfg!.cert, keyFile: cfg!.key, attempts: 2, baseDelayMs: 10 });
    await assert.rejects(dead.list(caller), BackendUnavailableError);
    await dead.close();
  });
});
