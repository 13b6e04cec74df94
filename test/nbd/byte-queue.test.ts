import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteQueue } from '../../src/nbd/protocol/byte-queue.js';

test('ByteQueue.take: a view inside one chunk, a copy across chunks, into the allocator\'s buffer when given', () => {
  const q = new ByteQueue();
  const a = new Uint8Array([1, 2, 3, 4]);
  q.push(a);
  q.push(new Uint8Array([5, 6]));
  const view = q.take(2);
  assert.equal(view.buffer, a.buffer, 'a view of the received chunk');
  const into = new Uint8Array(3);
  const got = q.take(3, (n) => (assert.equal(n, 3), into));
  assert.equal(got, into);
  assert.deepEqual([...got], [3, 4, 5]);
  // Even bytes inside one chunk are copied into the allocator's buffer.
  const own = q.take(1, (n) => new Uint8Array(n));
  assert.notEqual(own.buffer, a.buffer);
  assert.deepEqual([...own], [6]);
  assert.equal(q.length, 0);
  q.push(new Uint8Array(8));
  assert.throws(() => q.take(4, () => new Uint8Array(5)), RangeError, 'a wrong-sized buffer is refused');
  assert.throws(() => q.take(20), RangeError);
});
