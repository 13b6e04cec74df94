/**
 * The contract every ObjectStore adapter passes (file:, Swift, S3): atomic put/replace, get of a
 * missing object is NotFoundError, exists, idempotent delete, prefix listing past one page, binary
 * content, parallel puts, refused names.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import type { ObjectStore } from '../../src/backup/object-store.js';

export function storeContract(label: string, open: () => Promise<ObjectStore>, skip: false | string = false): void {
  const t = (name: string, fn: (s: ObjectStore) => Promise<void>) =>
    test(`${label}: ${name}`, { skip }, async () => {
      const s = await open();
      try {
        await fn(s);
      } finally {
        await s.close();
      }
    });

  t('put, get, exists, replace, delete', async (s) => {
    const data = randomBytes(100_000);
    assert.equal(await s.exists('chunks/ab/x1'), false);
    await s.put('chunks/ab/x1', data);
    assert.equal(await s.exists('chunks/ab/x1'), true);
    assert.deepEqual(Buffer.from(await s.get('chunks/ab/x1')), data);
    const other = randomBytes(10);
    await s.put('chunks/ab/x1', other);
    assert.deepEqual(Buffer.from(await s.get('chunks/ab/x1')), other);
    await s.delete('chunks/ab/x1');
    assert.equal(await s.exists('chunks/ab/x1'), false);
    await s.delete('chunks/ab/x1'); // absent: not an error
  });

  t('get of a missing object is NotFoundError; empty and binary objects survive', async (s) => {
    await assert.rejects(s.get('manifests/none'), NotFoundError);
    await s.put('config-empty', new Uint8Array(0));
    assert.equal((await s.get('config-empty')).length, 0);
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await s.put('bin', all);
    assert.deepEqual(Buffer.from(await s.get('bin')), all);
    await s.delete('config-empty');
    await s.delete('bin');
  });

  t('list by prefix, parallel puts', async (s) => {
    const names = Array.from({ length: 40 }, (_, i) => `chunks/${String(i % 4).padStart(2, '0')}/c${i}`);
    await Promise.all(names.map((n) => s.put(n, Buffer.from(n))));
    await s.put('manifests/m1', Buffer.from('m'));
    assert.deepEqual((await s.list('chunks/')).sort(), [...names].sort());
    assert.deepEqual((await s.list('chunks/01/')).sort(), names.filter((n) => n.startsWith('chunks/01/')).sort());
    assert.deepEqual(await s.list('manifests/'), ['manifests/m1']);
    assert.deepEqual(await s.list('locks/'), []);
    await Promise.all([...names, 'manifests/m1'].map((n) => s.delete(n)));
    assert.deepEqual(await s.list('chunks/'), []);
  });

  t('names outside the repository alphabet are refused', async (s) => {
    for (const bad of ['../x', '/abs', 'a//b', 'a/./b', 'sp ace', '']) await assert.rejects(s.put(bad, new Uint8Array(1)), InvalidArgumentError, bad);
  });
}
