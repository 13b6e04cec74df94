/**
 * Barbican backend over HTTPS with mutual TLS, against a local node:https stand-in that speaks
 * just enough of Barbican's v1 secrets API (the real test server, waitress, speaks plain HTTP).
 * Certificates come from the openssl CLI: a CA, a server certificate (serverAuth, SAN IP:127.0.0.1),
 * a server certificate for another name, and a client certificate (clientAuth).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { BackendUnavailableError } from '../../src/errors.js';
import { BarbicanKeyManager } from '../../src/keys/barbican/barbican-key-manager.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { SecretBytes } from '../../src/secret.js';
import { needTools, run, tempDir } from '../helpers/tools.js';

const skip = needTools('openssl');
const caller = { user: 'alice', project: 'p-tls', roles: ['member'] };
// One attempt, short timeout: a refused handshake must fail fast, not back off.
const fast = { attempts: 1, timeoutMs: 5000, baseDelayMs: 5 };

interface Stored {
  bytes: Buffer;
  type: string;
  created: string;
}

interface StandIn {
  server: https.Server;
  port: number;
  /** Requests that reached the HTTP layer (after a completed mutual-TLS handshake). */
  requests: Array<{ method: string; path: string; project: string | undefined; clientCn: string | undefined }>;
}

/** A Barbican v1 stand-in: POST/GET/DELETE secrets, GET payload, GET acl. */
async function startStandIn(pem: { key: Buffer; cert: Buffer; ca: Buffer }): Promise<StandIn> {
  const secrets = new Map<string, Stored>();
  const requests: StandIn['requests'] = [];
  const server = https.createServer({ key: pem.key, cert: pem.cert, ca: pem.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', `https://${req.headers.host}`);
      const project = req.headers['x-project-id'] as string | undefined;
      const peer = (req.socket as import('node:tls').TLSSocket).getPeerCertificate();
      requests.push({ method: req.method ?? '', path: url.pathname, project, clientCn: peer?.subject?.CN });
      const json = (status: number, body: unknown) => res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
      if (!project) return json(401, { title: 'no project' });
      const m = /^\/v1\/secrets(?:\/([0-9a-f-]{36})(\/payload|\/acl)?)?$/.exec(url.pathname);
      if (!m) return json(404, { title: 'Not Found' });
      const [, id, sub] = m;
      const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
      if (!id && req.method === 'POST') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { payload: string; secret_type: string; payload_content_encoding: string };
        assert.equal(body.payload_content_encoding, 'base64');
        const newId = randomUUID();
        secrets.set(newId, { bytes: Buffer.from(body.payload, 'base64'), type: body.secret_type, created: new Date().toISOString() });
        return json(201, { secret_ref: `${origin}/v1/secrets/${newId}` });
      }
      const s = id ? secrets.get(id) : undefined;
      if (!id || !s) return json(404, { title: 'Not Found' });
      if (req.method === 'GET' && sub === '/payload') return res.writeHead(200, { 'Content-Type': 'application/octet-stream' }).end(s.bytes);
      if (req.method === 'GET' && sub === '/acl') return json(200, { read: { 'project-access': true } });
      if (req.method === 'GET' && !sub) {
        return json(200, { secret_ref: `${origin}/v1/secrets/${id}`, secret_type: s.type, created: s.created, creator_id: req.headers['x-user-id'], status: 'ACTIVE', consumers: [] });
      }
      if (req.method === 'DELETE' && !sub) {
        secrets.delete(id);
        return res.writeHead(204).end();
      }
      return json(405, { title: 'Method Not Allowed' });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, requests };
}

let tmp: { dir: string; cleanup: () => void } | undefined;
const f = (name: string) => join(tmp!.dir, name);
let good: StandIn;
let wrongName: StandIn;

/** Issues a certificate signed by the test CA with the given extensions. */
function issue(name: string, cn: string, ext: string): void {
  run('openssl', ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`]);
  writeFileSync(f(`${name}.ext`), `${ext}\n`);
  run('openssl', ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-sha256', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`)]);
}

before(async () => {
  if (skip) return;
  tmp = tempDir('brickcrypt-barbican-tls-');
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=brickcrypt test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  issue('server', '127.0.0.1', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1');
  issue('wrong', 'kms.invalid', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:kms.invalid,IP:127.0.0.2');
  issue('client', 'brickcrypt-client', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth');
  const ca = readFileSync(f('ca.pem'));
  good = await startStandIn({ key: readFileSync(f('server.key')), cert: readFileSync(f('server.pem')), ca });
  wrongName = await startStandIn({ key: readFileSync(f('wrong.key')), cert: readFileSync(f('wrong.pem')), ca });
});

after(async () => {
  for (const s of [good, wrongName]) if (s) await new Promise<void>((r) => { s.server.closeAllConnections(); s.server.close(() => r()); });
  tmp?.cleanup();
});

/** The handshake failure is kept as the cause, so operators see why the server was unreachable. */
function tlsRefusal(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BackendUnavailableError, `expected BackendUnavailableError, got ${String((err as Error)?.name)}: ${String((err as Error)?.message)}`);
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    assert.match(`${cause?.code ?? ''} ${cause?.message ?? ''} ${err.message}`, pattern);
    return true;
  };
}

test('store and get over mutual TLS (openKeyManager barbican+https:// with caFile/certFile/keyFile)', { skip }, async () => {
  const km = await openKeyManager(`barbican+https://127.0.0.1:${good.port}`, { caFile: f('ca.pem'), certFile: f('client.pem'), keyFile: f('client.key'), project: 'p-default', ...fast });
  const secret = randomBytes(64);
  good.requests.length = 0;
  try {
    const id = await km.store(caller, { type: 'symmetric', secret: SecretBytes.copyOf(secret), algorithm: 'aes', bitLength: 512 });
    const obj = await km.get(caller, id);
    assert.equal(obj.id, id);
    assert.equal(obj.type, 'symmetric');
    assert.deepEqual(Buffer.from(obj.secret.expose()), secret);
    obj.secret.wipe();
    // The project default fills in for a caller without one.
    const obj2 = await km.get({ user: 'bob', project: '', roles: ['member'] }, id);
    assert.deepEqual(Buffer.from(obj2.secret.expose()), secret);
    obj2.secret.wipe();
    await km.delete(caller, id);
    await assert.rejects(km.get(caller, id), (e: unknown) => (e as Error).name === 'KeyNotFoundError');
  } finally {
    await km.close();
  }
  assert.ok(good.requests.length >= 5);
  for (const r of good.requests) assert.equal(r.clientCn, 'brickcrypt-client', 'every request came over the client certificate');
  assert.deepEqual(good.requests.map((r) => r.project).filter((p) => p !== 'p-tls'), ['p-default', 'p-default', 'p-default'], 'X-Project-Id is sent on every request');
  assert.ok(good.requests.some((r) => r.method === 'DELETE'));
});

test('store and get over mutual TLS (BarbicanKeyManager with tls options and URI ?ca=&cert=&key=)', { skip }, async () => {
  const direct = new BarbicanKeyManager({
    url: `https://127.0.0.1:${good.port}`,
    tls: { ca: readFileSync(f('ca.pem')), cert: readFileSync(f('client.pem')), key: readFileSync(f('client.key')) },
    ...fast,
  });
  const viaUri = new BarbicanKeyManager(`barbican+https://127.0.0.1:${good.port}?ca=${f('ca.pem')}&cert=${f('client.pem')}&key=${f('client.key')}&attempts=1&timeout-ms=5000`);
  try {
    const secret = randomBytes(32);
    const id = await direct.store(caller, { type: 'opaque', secret: SecretBytes.copyOf(secret) });
    const obj = await viaUri.get(caller, id);
    assert.deepEqual(Buffer.from(obj.secret.expose()), secret);
    obj.secret.wipe();
    await viaUri.delete(caller, id);
  } finally {
    await direct.close();
    await viaUri.close();
  }
});

test('without the CA the client refuses the server certificate (BackendUnavailableError, nothing sent)', { skip }, async () => {
  good.requests.length = 0;
  const km = await openKeyManager(`barbican+https://127.0.0.1:${good.port}`, { certFile: f('client.pem'), keyFile: f('client.key'), ...fast });
  try {
    await assert.rejects(km.store(caller, { type: 'opaque', secret: SecretBytes.copyOf(randomBytes(16)) }), tlsRefusal(/UNABLE_TO_VERIFY|self[- ]signed|unable to (get|verify)/i));
    await assert.rejects(km.list(caller), tlsRefusal(/UNABLE_TO_VERIFY|self[- ]signed|unable to (get|verify)/i));
  } finally {
    await km.close();
  }
  assert.equal(good.requests.length, 0, 'no request reached the server');
});

test('without a client certificate the server rejects the handshake (BackendUnavailableError)', { skip }, async () => {
  good.requests.length = 0;
  const km = await openKeyManager(`barbican+https://127.0.0.1:${good.port}`, { caFile: f('ca.pem'), ...fast });
  try {
    await assert.rejects(km.store(caller, { type: 'opaque', secret: SecretBytes.copyOf(randomBytes(16)) }), tlsRefusal(/certificate|ECONNRESET|socket hang up|alert/i));
    await assert.rejects(km.list(caller), tlsRefusal(/certificate|ECONNRESET|socket hang up|alert/i));
  } finally {
    await km.close();
  }
  assert.equal(good.requests.length, 0, 'no request reached the server');
});

test('a server certificate for another name/IP is refused (BackendUnavailableError)', { skip }, async () => {
  wrongName.requests.length = 0;
  const km = await openKeyManager(`barbican+https://127.0.0.1:${wrongName.port}`, { caFile: f('ca.pem'), certFile: f('client.pem'), keyFile: f('client.key'), ...fast });
  try {
    await assert.rejects(km.store(caller, { type: 'opaque', secret: SecretBytes.copyOf(randomBytes(16)) }), tlsRefusal(/ERR_TLS_CERT_ALTNAME_INVALID|not in the cert's (altnames|list)/i));
    await assert.rejects(km.list(caller), tlsRefusal(/ERR_TLS_CERT_ALTNAME_INVALID|not in the cert's (altnames|list)/i));
  } finally {
    await km.close();
  }
  assert.equal(wrongName.requests.length, 0, 'no request reached the server');
});
