/**
 * resumableCopy under power cuts: after a cut at any write, the disk (durable bytes plus a
 * random part of unflushed writes) resumed from the last committed offset ends with exactly
 * the source's bytes; a commit never names bytes that were not flushed; cancellation stops it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { resumableCopy } from '../../src/workflows/resumable-copy.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { CancelledError, InvalidArgumentError } from '../../src/errors.js';

const CHUNK = 64 << 10;
const COMMIT = 3 * CHUNK; // commits fall between writes, not on every one

test('a power cut after any write, then a resume from the last commit, gives exactly the source', async () => {
  const source = new Uint8Array(randomBytes(20 * CHUNK + 1234)); // a tail shorter than a chunk
  const writesPerRun = Math.ceil(source.length / CHUNK);
  for (let cut = 1; cut <= writesPerRun; cut++) {
    for (const seed of [1, 7, 42]) {
      const disk = new FaultInjectingDevice(new Uint8Array(source.length), { cutAfterWrite: cut, seed });
      let committed = 0;
      await assert.rejects(
        resumableCopy({ source: new MemoryDevice(source, true), target: disk, length: source.length, chunkBytes: CHUNK, commitBytes: COMMIT, commit: (o) => void (committed = o) }),
        PowerCutError,
      );
      const after = disk.crashImage();
      // Everything before the commit survived the cut.
      assert.deepEqual(after.subarray(0, committed), source.subarray(0, committed), `cut ${cut} seed ${seed}: committed bytes lost`);
      const target = new MemoryDevice(after);
      const copied = await resumableCopy({ source: new MemoryDevice(source, true), target, length: source.length, start: committed, chunkBytes: CHUNK, commitBytes: COMMIT, commit: () => {} });
      assert.equal(copied, source.length - committed);
      const out = new Uint8Array(source.length);
      await target.read(out, 0);
      assert.ok(Buffer.from(out).equals(Buffer.from(source)), `cut ${cut} seed ${seed}: resumed copy differs`);
    }
  }
});

test('commits come every commitBytes and at the end, each after a flush', async () => {
  const source = new Uint8Array(randomBytes(10 * CHUNK));
  const disk = new FaultInjectingDevice(new Uint8Array(source.length));
  const commits: Array<{ offset: number; flushes: number }> = [];
  await resumableCopy({ source: new MemoryDevice(source, true), target: disk, length: source.length, chunkBytes: CHUNK, commitBytes: COMMIT, commit: (offset) => void commits.push({ offset, flushes: disk.flushes }) });
  assert.deepEqual(commits.map((c) => c.offset), [3, 6, 9, 10].map((n) => n * CHUNK));
  assert.deepEqual(commits.map((c) => c.flushes), [1, 2, 3, 4]);
});

test('an aborted signal stops the copy with CancelledError; a checkpoint outside the range is refused', async () => {
  const source = new Uint8Array(randomBytes(8 * CHUNK));
  const ctl = new AbortController();
  let progress = 0;
  await assert.rejects(
    resumableCopy({
      source: new MemoryDevice(source, true),
      target: new MemoryDevice(source.length),
      length: source.length,
      chunkBytes: CHUNK,
      signal: ctl.signal,
      commit: () => {},
      onProgress: (o) => {
        progress = o;
        if (o >= 2 * CHUNK) ctl.abort();
      },
    }),
    CancelledError,
  );
  assert.ok(progress < source.length);
  await assert.rejects(resumableCopy({ source: new MemoryDevice(source, true), target: new MemoryDevice(source.length), length: source.length, start: source.length + 1, commit: () => {} }), InvalidArgumentError);
});
