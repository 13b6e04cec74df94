import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeContentRange,
  decodeImage,
  decodeImageList,
  encodeNewImage,
  encodePatch,
  encodeRange,
  errorDetail,
  identityHeaders,
  mapGlanceError,
} from '../../src/image-service/glance-wire.js';
import {
  BackendUnavailableError,
  ForbiddenError,
  InsufficientSpaceError,
  InUseError,
  InvalidArgumentError,
  InvalidObjectError,
  NotFoundError,
  OutOfRangeError,
} from '../../src/errors.js';

// A GET /v2/images/ID answer of Glance 25 (Zed), as the test server returns it.
const SHOWN = {
  cinder_encryption_key_id: 'k-1',
  name: 't',
  disk_format: 'raw',
  container_format: 'bare',
  visibility: 'shared',
  size: 100000,
  virtual_size: 100000,
  status: 'active',
  checksum: 'cb8c4bd1703b6acdc40b60bfbeeb2322',
  protected: false,
  min_ram: 0,
  min_disk: 0,
  owner: 'p1',
  os_hidden: false,
  os_hash_algo: 'sha512',
  os_hash_value: 'af56',
  id: 'eab28431-d477-4e3b-8274-b55f970f0838',
  created_at: '2026-12-07T12:57:15Z',
  updated_at: '2026-12-07T12:57:15Z',
  tags: [],
  self: '/v2/images/eab28431-d477-4e3b-8274-b55f970f0838',
  file: '/v2/images/eab28431-d477-4e3b-8274-b55f970f0838/file',
  schema: '/v2/schemas/image',
};

test('decodeImage separates core fields from custom properties', () => {
  const img = decodeImage(SHOWN);
  assert.equal(img.id, SHOWN.id);
  assert.equal(img.status, 'active');
  assert.equal(img.size, 100000);
  assert.equal(img.hashAlgo, 'sha512');
  assert.equal(img.hashValue, 'af56');
  assert.equal(img.owner, 'p1');
  assert.deepEqual(img.properties, { cinder_encryption_key_id: 'k-1' });
  assert.equal(decodeImage({ ...SHOWN, size: null, checksum: null }).size, null);
});

test('decodeImage refuses malformed documents', () => {
  const bad: unknown[] = [null, [], 'x', { ...SHOWN, id: undefined }, { ...SHOWN, id: 7 }, { ...SHOWN, size: -1 }, { ...SHOWN, size: 1.5 }, { ...SHOWN, status: undefined }];
  for (const b of bad) assert.throws(() => decodeImage(b), InvalidObjectError, JSON.stringify(b)?.slice(0, 40));
  assert.throws(() => decodeImageList({ nope: [] }), InvalidObjectError);
  const page = decodeImageList({ images: [SHOWN], next: '/v2/images?marker=x' });
  assert.equal(page.images.length, 1);
  assert.equal(page.next, '/v2/images?marker=x');
});

test('encodeNewImage: bare by default, custom properties may not shadow core fields', () => {
  assert.deepEqual(encodeNewImage({ name: 'n', diskFormat: 'raw', properties: { os_encrypt_format: 'LUKSv2' } }), {
    name: 'n',
    disk_format: 'raw',
    container_format: 'bare',
    os_encrypt_format: 'LUKSv2',
  });
  for (const k of ['size', 'status', 'os_hash_value', 'owner', 'id']) {
    assert.throws(() => encodeNewImage({ name: 'n', diskFormat: 'raw', properties: { [k]: 'x' } }), InvalidArgumentError, k);
  }
});

test('encodePatch writes Glance v2.1 JSON patch paths', () => {
  assert.deepEqual(encodePatch([{ op: 'add', name: 'img_signature', value: 'abc' }, { op: 'remove', name: 'x' }, { op: 'replace', name: 'a_b', value: '' }]), [
    { op: 'add', path: '/img_signature', value: 'abc' },
    { op: 'remove', path: '/x' },
    { op: 'replace', path: '/a_b', value: '' },
  ]);
  assert.throws(() => encodePatch([{ op: 'remove', name: 'a/b' }]), InvalidArgumentError);
  assert.throws(() => encodePatch([{ op: 'remove', name: '' }]), InvalidArgumentError);
});

test('identity headers: a token, or the headers Keystone middleware sets', () => {
  assert.deepEqual(identityHeaders({ token: 'gAAA' }), { 'X-Auth-Token': 'gAAA' });
  assert.deepEqual(identityHeaders({ user: 'u', project: 'p', roles: ['member', 'creator'] }), {
    'X-Identity-Status': 'Confirmed',
    'X-Project-Id': 'p',
    'X-User-Id': 'u',
    'X-Roles': 'member,creator',
  });
  // A forwarded caller token goes with the headers (keystonemiddleware validates it, a trusting proxy reads the headers).
  assert.deepEqual(identityHeaders({ user: 'u', project: 'p', roles: ['member'], token: 'gAAB' }), {
    'X-Identity-Status': 'Confirmed',
    'X-Project-Id': 'p',
    'X-User-Id': 'u',
    'X-Roles': 'member',
    'X-Auth-Token': 'gAAB',
  });
  assert.throws(() => identityHeaders({ token: '' }), InvalidArgumentError);
  assert.throws(() => identityHeaders({ user: 'u', project: '', roles: [] }), InvalidArgumentError);
});

test('ranges: request header and Content-Range answers', () => {
  assert.equal(encodeRange(0), 'bytes=0-');
  assert.equal(encodeRange(10, 20), 'bytes=10-19');
  assert.deepEqual(decodeContentRange('bytes 10-19/100000'), { start: 10, end: 20, total: 100000 });
  assert.deepEqual(decodeContentRange('bytes 0-0/*'), { start: 0, end: 1, total: null });
  for (const bad of [null, '', 'bytes 10-19', 'bytes 19-10/100', 'bytes 0-100/100', 'items 0-1/2']) {
    assert.throws(() => decodeContentRange(bad), InvalidObjectError, String(bad));
  }
});

test('every HTTP failure maps to one typed error', () => {
  const table: Array<[number, new (...a: never[]) => Error]> = [
    [400, InvalidArgumentError],
    [401, ForbiddenError],
    [403, ForbiddenError],
    [404, NotFoundError],
    [409, InUseError],
    [413, InsufficientSpaceError],
    [416, OutOfRangeError],
    [429, BackendUnavailableError],
    [500, BackendUnavailableError],
    [503, BackendUnavailableError],
    [418, InvalidObjectError],
  ];
  for (const [status, cls] of table) {
    const err = mapGlanceError(status, 'image X', 'detail');
    assert.ok(err instanceof cls, `${status} -> ${err.constructor.name}`);
    assert.match(err.message, new RegExp(`HTTP ${status}: detail`));
  }
  assert.equal(errorDetail('<html><body><h1>404 Not Found</h1>No image found</body></html>'), '404 Not Found No image found');
  assert.equal(errorDetail('{"message": "quota"}'), 'quota');
});
