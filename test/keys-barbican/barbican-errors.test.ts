/**
 * Barbican backend behaviour that needs no server: HTTP status mapping, URI parsing,
 * id validation and retries ending in BackendUnavailableError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  AlreadyExistsError,
  BackendUnavailableError,
  ForbiddenError,
  InvalidArgumentError,
  InvalidObjectError,
  KeyNotFoundError,
} from '../../src/errors.js';
import { mapHttpError } from '../../src/keys/barbican/barbican-http.js';
import { BarbicanKeyManager } from '../../src/keys/barbican/barbican-key-manager.js';

const caller = { user: 'u', project: 'p', roles: ['member'] };

const STATUS_TABLE: Array<[number, new (...a: never[]) => Error]> = [
  [400, InvalidObjectError],
  [401, ForbiddenError],
  [403, ForbiddenError],
  [404, KeyNotFoundError],
  [409, AlreadyExistsError],
  [413, InvalidObjectError],
  [429, BackendUnavailableError],
  [500, BackendUnavailableError],
  [503, BackendUnavailableError],
];
for (const [status, cls] of STATUS_TABLE) {
  test(`barbican HTTP ${status} maps to ${cls.name}`, () => {
    assert.ok(mapHttpError(status, 'id', 'detail') instanceof cls);
  });
}

test('barbican URIs parse to endpoint and options; other schemes are refused', () => {
  const o = BarbicanKeyManager.optionsFromUri('barbican+https://kms.example:9311?private=1&timeout-ms=500&attempts=5');
  assert.equal(o.url, 'https://kms.example:9311');
  assert.equal(o.privateByDefault, true);
  assert.equal(o.timeoutMs, 500);
  assert.equal(o.attempts, 5);
  assert.equal(BarbicanKeyManager.optionsFromUri('barbican+http://127.0.0.1:9311').privateByDefault, false);
  assert.throws(() => BarbicanKeyManager.optionsFromUri('barbican+ftp://x'), InvalidArgumentError);
  assert.throws(() => new BarbicanKeyManager({ url: 'ftp://x' }), InvalidObjectError);
});

test('ids that are not UUIDs are KeyNotFoundError without a request', async () => {
  const km = new BarbicanKeyManager({ url: 'http://127.0.0.1:1', attempts: 1 });
  for (const id of ['../orders', '1', '00000000-0000-0000-0000-00000000000g', '']) {
    await assert.rejects(km.get(caller, id), KeyNotFoundError);
  }
  await km.close();
});

test('an unreachable endpoint ends in BackendUnavailableError after the retries', async () => {
  const km = new BarbicanKeyManager({ url: 'http://127.0.0.1:1', attempts: 3, baseDelayMs: 5 });
  await assert.rejects(km.list(caller), (e) => e instanceof BackendUnavailableError && /3 attempt/.test(e.message));
  await km.close();
});

test('5xx answers are retried for GET, not for POST; identity headers are sent', async () => {
  const seen: Array<{ method: string; headers: http.IncomingHttpHeaders }> = [];
  const srv = http.createServer((req, res) => {
    seen.push({ method: req.method!, headers: req.headers });
    req.resume();
    res.writeHead(503, { 'Content-Type': 'application/json' }).end('{"title":"busy"}');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  const km = new BarbicanKeyManager({ url: `http://127.0.0.1:${port}`, attempts: 3, baseDelayMs: 5, authToken: 'tok' });
  try {
    await assert.rejects(km.list(caller), BackendUnavailableError);
    assert.equal(seen.length, 3, 'GET tried three times');
    assert.equal(seen[0]!.headers['x-project-id'], 'p');
    assert.equal(seen[0]!.headers['x-user-id'], 'u');
    assert.equal(seen[0]!.headers['x-roles'], 'member');
    assert.equal(seen[0]!.headers['x-auth-token'], 'tok');
    seen.length = 0;
    await assert.rejects(km.createKey(caller), BackendUnavailableError);
    assert.equal(seen.length, 1, 'an order is never placed twice');
    seen.length = 0;
    await assert.rejects(km.createKey({ user: 'n', project: 'p', roles: [] }), BackendUnavailableError);
    assert.equal(seen[0]!.headers['x-roles'], 'brickcrypt-no-role', 'no roles is never sent as an empty header (Barbican would default to admin)');
  } finally {
    await km.close();
    srv.close();
  }
});
