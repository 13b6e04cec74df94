import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferPool } from '../../src/devices/buffer-pool.js';

test('BufferPool reuses returned buffers of the same size, in shared memory', () => {
  const pool = new BufferPool({ maxPooledBytes: 1 << 20 });
  const a = pool.take(4096);
  assert.ok(a.buffer instanceof SharedArrayBuffer);
  assert.equal(a.length, 4096);
  a.fill(7);
  pool.give(a);
  assert.equal(pool.pooledBytes, 4096);
  assert.equal(pool.take(8192).length, 8192, 'another size is a new buffer');
  const again = pool.take(4096);
  assert.equal(again, a, 'the returned buffer comes back');
  assert.equal(pool.pooledBytes, 0);
  assert.notEqual(pool.take(4096), a, 'a buffer is handed out once');
});

test('BufferPool keeps at most maxPooledBytes idle and never pools oversized buffers', () => {
  const pool = new BufferPool({ maxPooledBytes: 3 * 4096, maxPooledSize: 8192 });
  const bufs = Array.from({ length: 5 }, () => pool.take(4096));
  for (const b of bufs) pool.give(b);
  assert.equal(pool.pooledBytes, 3 * 4096);
  pool.give(pool.take(16384));
  assert.equal(pool.pooledBytes, 3 * 4096, 'too large to pool');
  pool.give(new Uint8Array(0));
  assert.equal(pool.pooledBytes, 3 * 4096);
});

test('BufferPool.wipe zeroes the idle buffers (earlier plaintext) and empties the pool', () => {
  const pool = new BufferPool();
  const b = pool.take(1024);
  b.fill(0xaa);
  pool.give(b);
  pool.wipe();
  assert.equal(pool.pooledBytes, 0);
  assert.ok(b.every((x) => x === 0));
  assert.notEqual(pool.take(1024), b);
});
