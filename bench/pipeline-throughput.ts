/**
 * Data-path throughput without process start-up or key derivation: the convert pipeline
 * encrypting, decrypting and copying a file through the page cache, with 0..N crypto workers.
 *
 *   node dist/bench/pipeline-throughput.js [SIZE_MiB=512] [DIR=/tmp]
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { FileDevice } from '../src/devices/file-device.js';
import { copyData, type PipelineSource, type PipelineTarget } from '../src/workflows/pipeline.js';
import { CryptoPool } from '../src/workflows/worker-pool.js';

const sizeMiB = Number(process.argv[2] ?? 512);
const dir = mkdtempSync(join(process.argv[3] ?? '/tmp', 'brickcrypt-pipe-'));
const size = sizeMiB * 1024 * 1024;

async function timed(label: string, workers: number, run: (pool: CryptoPool, cipher: number) => Promise<unknown>): Promise<void> {
  const pool = CryptoPool.create(workers);
  const cipher = pool.addCipher({ encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512 }, randomBytes(64));
  const t0 = performance.now();
  await run(pool, cipher);
  const s = (performance.now() - t0) / 1000;
  await pool.close();
  console.log(`${label.padEnd(22)} workers ${workers}: ${(sizeMiB / s).toFixed(0).padStart(6)} MiB/s`);
}

try {
  const srcPath = join(dir, 'src.raw');
  const chunk = randomBytes(16 << 20);
  writeFileSync(srcPath, '');
  const w = await FileDevice.open(srcPath, { size });
  for (let pos = 0; pos < size; pos += chunk.length) await w.write(chunk.subarray(0, Math.min(chunk.length, size - pos)), pos);
  await w.close();
  const src = await FileDevice.open(srcPath, { readOnly: true });
  const plain: PipelineSource = { device: src, base: 0, size };
  const fresh = async (name: string) => {
    rmSync(join(dir, name), { force: true });
    return FileDevice.open(join(dir, name), { create: true, size });
  };
  for (const workers of [0, 1, Math.min(4, availableParallelism())]) {
    await timed('copy (zero scan)', workers, async (pool) => {
      const dst = await fresh('copy.raw');
      await copyData(plain, { device: dst, base: 0, zeros: 'skip' }, size, { pool });
      await dst.close();
    });
    await timed('encrypt', workers, async (pool, cipher) => {
      const dst = await fresh('enc.raw');
      const target: PipelineTarget = { device: dst, base: 0, encrypt: { cipher, ivTweak: 0 }, zeros: 'write' };
      await copyData(plain, target, size, { pool });
      await dst.close();
    });
    await timed('decrypt (zero scan)', workers, async (pool, cipher) => {
      const dst = await fresh('dec.raw');
      await copyData({ ...plain, decrypt: { cipher, ivTweak: 0 } }, { device: dst, base: 0, zeros: 'skip' }, size, { pool });
      await dst.close();
    });
  }
  await src.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
