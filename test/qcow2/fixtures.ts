/** Shared builders for the qcow2 and image tests: deterministic raw disks and whole-device reads. */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type { BlockDevice } from '../../src/block-device.js';

/**
 * A deterministic disk image of `size` bytes made of 4 KiB blocks: random data,
 * zero runs (holes after conversion), and compressible text, with `seed` choosing the mix.
 */
export function makeDisk(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let state = seed >>> 0 || 1;
  const rand = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  const block = 4096;
  for (let at = 0; at < size; at += block) {
    const end = Math.min(size, at + block);
    const r = rand();
    // Long zero stretches make whole zero clusters even at 64 KiB and 2 MiB.
    const inZeroStretch = Math.floor(at / (3 * 1024 * 1024)) % 2 === 1 && at % (3 * 1024 * 1024) < 2.5 * 1024 * 1024;
    if (inZeroStretch || r < 0.25) continue;
    if (r < 0.55) {
      const text = new TextEncoder().encode(`block ${at} of seed ${seed}; `.repeat(200));
      out.set(text.subarray(0, end - at), at);
    } else {
      for (let p = at; p < end; p++) out[p] = (rand() * 256) | 0;
    }
  }
  return out;
}

export function writeDisk(path: string, data: Uint8Array): void {
  writeFileSync(path, data);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Reads a whole device in `chunk`-byte reads. */
export async function readAll(dev: BlockDevice, chunk = 1024 * 1024): Promise<Uint8Array> {
  const out = new Uint8Array(dev.size);
  for (let at = 0; at < dev.size; at += chunk) await dev.read(out.subarray(at, Math.min(dev.size, at + chunk)), at);
  return out;
}
