/**
 * qcow2 L1 and L2 table entries (QEMU docs/interop/qcow2.txt, "Cluster mapping" and
 * "Extended L2 Entries"). Entries are big-endian u64s, handled here as (hi, lo) u32
 * halves so the hot path never needs BigInt.
 *
 * L1 entry bits:        0-8 reserved | 9-55 L2 table offset | 56-62 reserved | 63 copied
 * L2 entry bits:        0-61 cluster descriptor | 62 compressed | 63 copied
 * Standard descriptor:  0 reads-as-zero (v3, not extended) | 1-8 reserved |
 *                       9-55 host cluster offset | 56-61 reserved
 * Compressed descriptor (x = 62 - (cluster_bits - 8)):
 *                       0..x-1 host byte offset | x..61 additional 512-byte sectors
 * Extended L2 entry:    standard u64 + bitmap u64 (bits 0-31 subcluster allocated,
 *                       bits 32-63 subcluster reads as zero); 32 subclusters per cluster.
 */

export const L2_COMPRESSED_SECTOR = 512;
export const SUBCLUSTERS_PER_CLUSTER = 32;

const TWO32 = 2 ** 32;
/** Bits 9-55 of a (hi, lo) pair as a number. */
function offset9to55(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

export interface L1Entry {
  l2Offset: number;
  copied: boolean;
  /** Any reserved bit set (QEMU's check reports this as corruption). */
  reserved: boolean;
}

export function decodeL1Entry(hi: number, lo: number): L1Entry {
  return {
    l2Offset: offset9to55(hi, lo),
    copied: (hi & 0x80000000) !== 0,
    reserved: (lo & 0x1ff) !== 0 || (hi & 0x7f000000) !== 0,
  };
}

/** Returns [hi, lo] of an L1 entry. */
export function encodeL1Entry(l2Offset: number, copied: boolean): [number, number] {
  return [(Math.floor(l2Offset / TWO32) | (copied ? 0x80000000 : 0)) >>> 0, l2Offset % TWO32 >>> 0];
}

export type L2Entry =
  | { kind: 'unallocated' }
  /** Reads as zeros; `hostOffset` is a preallocation (0 = none). */
  | { kind: 'zero'; hostOffset: number }
  | { kind: 'normal'; hostOffset: number; copied: boolean }
  /** Compressed data at `hostOffset` (any byte); `span` bytes starting there may hold it. */
  | { kind: 'compressed'; hostOffset: number; additionalSectors: number; span: number };

/**
 * Decodes a standard (64-bit) L2 entry, or the first half of an extended one.
 * `zeroFlag` is honoured only when the image allows it (v3 without extended L2).
 *
 * @example
 *   const e = decodeL2Entry(view.getUint32(i * 8), view.getUint32(i * 8 + 4), 16, true);
 */
export function decodeL2Entry(hi: number, lo: number, clusterBits: number, zeroFlag: boolean): L2Entry {
  if (hi & 0x40000000) {
    const shift = 38 - clusterBits; // x - 32, x = 70 - cluster_bits
    const desc = hi & 0x3fffffff;
    const hostOffset = (desc % 2 ** shift) * TWO32 + (lo >>> 0);
    const additionalSectors = Math.floor(desc / 2 ** shift);
    const span = (additionalSectors + 1) * L2_COMPRESSED_SECTOR - (hostOffset % L2_COMPRESSED_SECTOR);
    return { kind: 'compressed', hostOffset, additionalSectors, span };
  }
  const hostOffset = offset9to55(hi, lo);
  if (zeroFlag && lo & 1) return { kind: 'zero', hostOffset };
  if (hostOffset === 0) return { kind: 'unallocated' };
  return { kind: 'normal', hostOffset, copied: (hi & 0x80000000) !== 0 };
}

/** True when a standard entry has reserved bits set (1-8 and 56-61; bit 0 too when it has no meaning). */
export function l2EntryReservedBits(hi: number, lo: number, zeroFlagAllowed: boolean): boolean {
  if (hi & 0x40000000) return false;
  return (lo & (zeroFlagAllowed ? 0x1fe : 0x1ff)) !== 0 || (hi & 0x3f000000) !== 0;
}

/** Returns [hi, lo] of a standard data-cluster entry. */
export function encodeL2Normal(hostOffset: number, copied: boolean): [number, number] {
  return [(Math.floor(hostOffset / TWO32) | (copied ? 0x80000000 : 0)) >>> 0, hostOffset % TWO32 >>> 0];
}

/** Returns [hi, lo] of a v3 zero-flag entry without preallocation. */
export function encodeL2Zero(): [number, number] {
  return [0, 1];
}

/**
 * Returns [hi, lo] of a compressed-cluster entry for `length` bytes of compressed data
 * at byte `hostOffset` (the sector count covers the last partial sector).
 */
export function encodeL2Compressed(hostOffset: number, length: number, clusterBits: number): [number, number] {
  const shift = 38 - clusterBits;
  const additional = Math.ceil(((hostOffset % L2_COMPRESSED_SECTOR) + length) / L2_COMPRESSED_SECTOR) - 1;
  if (additional >= 2 ** (clusterBits - 8)) throw new RangeError('compressed data too long for its descriptor');
  if (hostOffset >= 2 ** (32 + shift)) throw new RangeError('compressed data offset too large for its descriptor');
  const hi = (0x40000000 | (additional * 2 ** shift + Math.floor(hostOffset / TWO32))) >>> 0;
  return [hi, hostOffset % TWO32 >>> 0];
}

/** State of subcluster `index` (0..31) from an extended entry's bitmap halves. */
export type SubclusterState = 'data' | 'zero' | 'unallocated' | 'invalid';

export function subclusterState(allocBits: number, zeroBits: number, index: number): SubclusterState {
  const bit = 1 << index;
  const alloc = (allocBits & bit) !== 0;
  const zero = (zeroBits & bit) !== 0;
  if (alloc && zero) return 'invalid';
  return alloc ? 'data' : zero ? 'zero' : 'unallocated';
}
