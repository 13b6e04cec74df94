/**
 * AES-XTS throughput: the native kernel (OpenSSL XTS in place, when built), the batched
 * sector cipher (WebAssembly and JavaScript tweak kernels) and one OpenSSL createCipheriv
 * per sector, on 64 MiB of random data, 512- and 4096-byte sectors, one thread.
 *
 *   npx tsc -p . && node dist/bench/xts-throughput.js [MiB]
 */
import { randomBytes } from 'node:crypto';
import { createPerSectorXtsCipher, createSectorCipher, type SectorCipher } from '../src/crypto/sector-cipher.js';
import { parseEncryption } from '../src/crypto/cipher-spec.js';
import { xtsNative, xtsNativeError } from '../src/crypto/xts-native.js';

const mib = Number(process.argv[2] ?? 64);
const total = mib * 1024 * 1024;
/** Bytes handed to the cipher per call, as the data path would batch them. */
const BATCH = 1024 * 1024;

/**
 * MiB per second of this process's CPU time (user + system): on a shared, busy
 * machine wall time mostly measures the neighbours; CPU time measures the code.
 * Everything here runs synchronously on the main thread, so CPU time ~ one core's time.
 */
function measure(cipher: SectorCipher, data: Uint8Array, encrypt: boolean): number {
  const step = cipher.sectorSize / 512;
  const start = process.cpuUsage();
  for (let off = 0; off < data.length; off += BATCH) {
    const part = data.subarray(off, off + BATCH);
    const iv = (off / cipher.sectorSize) * step;
    if (encrypt) cipher.encrypt(part, iv);
    else cipher.decrypt(part, iv);
  }
  const used = process.cpuUsage(start);
  const seconds = (used.user + used.system) / 1e6;
  return data.length / (1024 * 1024) / seconds;
}

function best(fn: () => number, runs = 3): number {
  let top = 0;
  for (let i = 0; i < runs; i++) top = Math.max(top, fn());
  return top;
}

const spec = parseEncryption('aes-xts-plain64');
const key = new Uint8Array(randomBytes(64));
const data = new Uint8Array(randomBytes(total));
const rows: string[] = [];
const fmt = (e: number, d: number) => `encrypt ${e.toFixed(0).padStart(5)} / decrypt ${d.toFixed(0).padStart(5)} MiB/s`;
for (const sectorSize of [512, 4096]) {
  let nativeRow = `native: not built (${xtsNativeError() ?? 'unknown'})`;
  if (xtsNative()) {
    const native = createSectorCipher(spec, key, sectorSize, { xtsKernel: 'native' });
    const evp = createSectorCipher(spec, key, sectorSize, { xtsKernel: 'native-evp' });
    nativeRow =
      `native ${fmt(best(() => measure(native, data, true)), best(() => measure(native, data, false)))}` +
      ` | native OpenSSL EVP ${fmt(best(() => measure(evp, data, true)), best(() => measure(evp, data, false)))}`;
    native.wipe();
    evp.wipe();
  }
  const wasm = createSectorCipher(spec, key, sectorSize, { xtsKernel: 'wasm' });
  const js = createSectorCipher(spec, key, sectorSize, { xtsKernel: 'js' });
  const perSector = createPerSectorXtsCipher(spec, key, sectorSize);
  const we = best(() => measure(wasm, data, true));
  const wd = best(() => measure(wasm, data, false));
  const je = best(() => measure(js, data, true));
  const jd = best(() => measure(js, data, false));
  const pe = best(() => measure(perSector, data, true), 1);
  const pd = best(() => measure(perSector, data, false), 1);
  rows.push(`sector ${sectorSize}: ${nativeRow} | batched+wasm ${fmt(we, wd)} | batched+js ${fmt(je, jd)} | per-sector createCipheriv ${fmt(pe, pd)}`);
  wasm.wipe();
  js.wipe();
  perSector.wipe();
}
console.log(`AES-256-XTS-plain64, ${mib} MiB, ${BATCH / 1024} KiB per call, MiB per CPU-second, best of 3 (per-sector: 1 run)`);
for (const r of rows) console.log(r);
