import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';

test('fault-injecting device: flushed writes survive a cut, the cut write and later ones fail', async () => {
  const dev = new FaultInjectingDevice(new Uint8Array(4096), { cutAfterWrite: 3, seed: 7 });
  await dev.write(new Uint8Array(512).fill(1), 0);
  await dev.flush();
  await dev.write(new Uint8Array(512).fill(2), 512);
  await assert.rejects(dev.write(new Uint8Array(1024).fill(3), 1024), PowerCutError);
  await assert.rejects(dev.read(new Uint8Array(1), 0), PowerCutError);
  await assert.rejects(dev.flush(), PowerCutError);
  assert.equal(dev.writes, 3);
  assert.equal(dev.flushes, 1);
  const image = dev.crashImage();
  assert.ok(image.subarray(0, 512).every((b) => b === 1), 'flushed sector is durable');
  for (const [from, to, value] of [
    [512, 1024, 2],
    [1024, 2048, 3],
  ] as const) {
    // Unflushed: each sector is old (0) or new, and new sectors form a prefix of the write.
    const sectors = [];
    for (let s = from; s < to; s += 512) {
      const part = image.subarray(s, s + 512);
      assert.ok(part.every((b) => b === 0) || part.every((b) => b === value));
      sectors.push(part[0] === value);
    }
    assert.deepEqual(sectors, [...sectors].sort((a, b) => Number(b) - Number(a)), 'a torn write keeps a prefix');
  }
});

test('fault-injecting device: over many seeds unflushed writes are dropped, torn and kept', async () => {
  const outcomes = new Set<string>();
  for (let seed = 1; seed <= 64; seed++) {
    const dev = new FaultInjectingDevice(new Uint8Array(2048), { cutAfterWrite: 1, seed });
    await assert.rejects(dev.write(new Uint8Array(2048).fill(9), 0), PowerCutError);
    const image = dev.crashImage();
    const kept = image.reduce((n, b) => n + (b === 9 ? 1 : 0), 0) / 512;
    outcomes.add(kept === 0 ? 'dropped' : kept === 4 ? 'kept' : 'torn');
  }
  assert.deepEqual([...outcomes].sort(), ['dropped', 'kept', 'torn']);
});

test('fault-injecting device: a resize is durable only at a flush, and reads see unflushed data', async () => {
  const dev = new FaultInjectingDevice(new Uint8Array(1024), { seed: 5 });
  await dev.resize(2048);
  await dev.write(new Uint8Array(4).fill(4), 1500);
  const buf = new Uint8Array(4);
  await dev.read(buf, 1500);
  assert.deepEqual([...buf], [4, 4, 4, 4]);
  await dev.flush();
  assert.equal(dev.crashImage().length, 2048);
  await dev.resize(512);
  assert.ok([512, 2048].includes(dev.crashImage().length));
});
