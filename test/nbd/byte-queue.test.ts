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

test('ByteQueue: the copy function it is given moves the bytes of every taken copy', () => {
  const calls: Array<[number, number]> = [];
  const q = new ByteQueue((dst, dstOffset, src) => {
    calls.push([dstOffset, src.length]);
    dst.set(src, dstOffset);
  });
  q.push(new Uint8Array([1, 2, 3]));
  q.push(new Uint8Array([4, 5, 6, 7]));
  assert.deepEqual([...q.take(1)], [1], 'a view needs no copy');
  assert.deepEqual(calls, []);
  assert.deepEqual([...q.take(5)], [2, 3, 4, 5, 6]);
  assert.deepEqual(calls, [[0, 2], [2, 3]], 'one copy per chunk piece, at its place in the output');
  calls.length = 0;
  assert.deepEqual([...q.take(1, (n) => new Uint8Array(n))], [7]);
  assert.deepEqual(calls, [[0, 1]]);
});

test('ByteQueue.takeInto fills a buffer piecewise; own() detaches the queue from pushed chunks', () => {
  const q = new ByteQueue();
  const chunk = new Uint8Array([1, 2, 3, 4, 5]);
  q.push(chunk);
  const out = new Uint8Array(8);
  assert.equal(q.takeInto(out, 0, 3), 3);
  q.own();
  chunk.fill(0); // the pusher reuses its buffer
  q.push(new Uint8Array([6, 7]));
  assert.equal(q.takeInto(out, 3, 10), 4, 'no more than is queued');
  assert.deepEqual([...out], [1, 2, 3, 4, 5, 6, 7, 0]);
  assert.equal(q.length, 0);
  assert.equal(q.takeInto(out, 7, 1), 0);
  q.own(); // nothing queued: a no-op
  assert.equal(q.length, 0);
});
