/**
 * Compressed qcow2 clusters (QEMU docs/interop/qcow2.txt, "compression_type" and
 * "Compressed Clusters Descriptor"): zlib type = raw deflate (no zlib/gzip wrapper) with
 * a window of at most 2^12 bytes, zstd type = one or more zstd frames. The stored
 * bytes may be followed by unrelated data up to the descriptor's sector end, so
 * decompression stops once a full cluster has been produced.
 *
 * zstd frame layout (RFC 8878 §3.1.1), used to find where a frame ends:
 *   magic u32 LE 0xFD2FB528 | frame header descriptor u8 | [window descriptor u8]
 *   | [dictionary id 0/1/2/4 bytes] | [frame content size 0/1/2/4/8 bytes]
 *   | blocks (3-byte LE header: bit 0 last, bits 1-2 type, bits 3-23 size) | [checksum u32]
 */
import { constants as zc, deflateRawSync, inflateRawSync } from 'node:zlib';
import { decompress as zstdDecompress } from 'fzstd';
import { CorruptHeaderError } from '../../errors.js';

/** QEMU inflates with a 4 KiB window (inflateInit2(-12)); deflating with more would break it. */
export const QCOW2_DEFLATE_WINDOW_BITS = 12;
const ZSTD_MAGIC = 0xfd2fb528;
const ZSTD_SKIPPABLE_MASK = 0xfffffff0;
const ZSTD_SKIPPABLE = 0x184d2a50;
const MAX_ZSTD_WINDOW = 8 * 1024 * 1024;

/**
 * Decompresses one cluster. Throws `CorruptHeaderError` unless exactly `clusterSize`
 * bytes come out (QEMU's rule).
 *
 * @example
 *   const plain = decompressCluster('zlib', stored, 65536);
 */
export function decompressCluster(type: 'zlib' | 'zstd', data: Uint8Array, clusterSize: number): Uint8Array {
  if (type === 'zlib') {
    let out: Uint8Array;
    try {
      // Z_SYNC_FLUSH tolerates a stream cut at the sector end; maxOutputLength bounds the allocation.
      out = inflateRawSync(data, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
    } catch (err) {
      throw new CorruptHeaderError(`qcow2: compressed (deflate) cluster is damaged: ${(err as Error).message}`, { cause: err });
    }
    if (out.length !== clusterSize) {
      throw new CorruptHeaderError(`qcow2: compressed cluster inflates to ${out.length} bytes, expected ${clusterSize}`);
    }
    return out;
  }
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  let at = 0;
  while (filled < clusterSize) {
    const frameLength = zstdFrameLength(data, at, clusterSize - filled);
    const frame = data.subarray(at, at + frameLength);
    at += frameLength;
    const magic = new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0, true);
    if ((magic & ZSTD_SKIPPABLE_MASK) >>> 0 === ZSTD_SKIPPABLE) continue;
    let plain: Uint8Array;
    try {
      plain = zstdDecompress(frame);
    } catch (err) {
      throw new CorruptHeaderError(`qcow2: compressed (zstd) cluster is damaged: ${(err as Error).message}`, { cause: err });
    }
    if (filled + plain.length > clusterSize) throw new CorruptHeaderError('qcow2: zstd cluster decompresses to more than a cluster');
    out.set(plain, filled);
    filled += plain.length;
  }
  return out;
}

/**
 * Byte length of the zstd frame starting at `at`, from its headers alone; also
 * refuses frames whose declared content or blocks could not belong to one cluster.
 */
export function zstdFrameLength(data: Uint8Array, at: number, maxContent: number): number {
  const bad = (why: string) => new CorruptHeaderError(`qcow2: compressed (zstd) cluster is damaged: ${why}`);
  if (at + 4 > data.length) throw bad('data ends before a frame');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const magic = view.getUint32(at, true);
  if ((magic & ZSTD_SKIPPABLE_MASK) >>> 0 === ZSTD_SKIPPABLE) {
    if (at + 8 > data.length) throw bad('truncated skippable frame');
    const len = 8 + view.getUint32(at + 4, true);
    if (at + len > data.length) throw bad('truncated skippable frame');
    return len;
  }
  if (magic !== ZSTD_MAGIC) throw bad(`bad frame magic 0x${magic.toString(16)}`);
  let p = at + 4;
  if (p >= data.length) throw bad('truncated frame header');
  const fhd = data[p++]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictIdSize = [0, 1, 2, 4][fhd & 3]!;
  const fcsSize = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  const windowByte = singleSegment ? 0 : data[p]!;
  p += (singleSegment ? 0 : 1) + dictIdSize;
  if (p + fcsSize > data.length) throw bad('truncated frame header');
  let contentSize = 0;
  for (let i = fcsSize - 1; i >= 0; i--) contentSize = contentSize * 256 + data[p + i]!;
  if (fcsSize === 2) contentSize += 256;
  p += fcsSize;
  // fzstd allocates the declared content size (or the window): bound it before decoding.
  if (fcsSize > 0 && contentSize > maxContent) throw bad(`frame declares ${contentSize} bytes, more than a cluster`);
  if (fcsSize === 0) {
    const windowBase = 2 ** (10 + (windowByte >> 3));
    if (windowBase + (windowBase / 8) * (windowByte & 7) > Math.max(maxContent, MAX_ZSTD_WINDOW)) throw bad('frame window is too large');
  }
  for (;;) {
    if (p + 3 > data.length) throw bad('truncated block header');
    const bh = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16);
    p += 3;
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw bad('reserved block type');
    p += type === 1 ? 1 : size;
    if (p > data.length) throw bad('block runs past the compressed data');
    if (last) break;
  }
  p += checksum ? 4 : 0;
  if (p > data.length) throw bad('truncated checksum');
  return p - at;
}

/**
 * Compresses one cluster for a zlib-type image (raw deflate, 4 KiB window), or returns
 * `undefined` when compression would not save space (QEMU then stores it uncompressed).
 *
 * @example
 *   const packed = compressClusterDeflate(cluster); // undefined -> write it plain
 */
export function compressClusterDeflate(cluster: Uint8Array, level = 6): Uint8Array | undefined {
  const out = deflateRawSync(cluster, { windowBits: QCOW2_DEFLATE_WINDOW_BITS, level, memLevel: 9 });
  return out.length < cluster.length ? out : undefined;
}
