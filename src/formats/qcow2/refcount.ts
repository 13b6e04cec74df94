/**
 * qcow2 refcount table and refcount blocks (QEMU docs/interop/qcow2.txt, "Host cluster
 * management"). Readers ignore refcounts; writers must make them exact, since
 * `qemu-img check` compares them with the clusters the L1/L2 tables reference.
 *
 * Refcount table entry (u64 BE): bits 0-8 reserved | 9-63 refcount block offset (0 = none).
 * Refcount block: one cluster of `cluster_size * 8 / refcount_bits` entries,
 * refcount_bits = 1 << refcount_order; entries are big-endian for widths >= 8.
 *
 *   refcount_block_entries = cluster_size * 8 / refcount_bits
 *   block_index = (offset / cluster_size) % refcount_block_entries
 *   table_index = (offset / cluster_size) / refcount_block_entries
 */

/** Entries in one refcount block. */
export function refcountBlockEntries(clusterBits: number, refcountOrder: number): number {
  return 2 ** (clusterBits + 3 - refcountOrder);
}

/**
 * Sets entry `index` of a refcount block. Supports orders 0..6 (1 to 64 bits); for
 * sub-byte widths bit 0 is the least significant bit of the byte, as the spec says.
 *
 * @example
 *   setRefcount(block, 3, 1, 4); // 16-bit refcounts, cluster 3 used once
 */
export function setRefcount(block: Uint8Array, index: number, value: number, refcountOrder: number): void {
  const bits = 1 << refcountOrder;
  if (value < 0 || !Number.isSafeInteger(value) || (bits < 53 && value >= 2 ** bits)) throw new RangeError(`refcount ${value} does not fit ${bits} bits`);
  if (bits < 8) {
    const perByte = 8 / bits;
    const byte = Math.floor(index / perByte);
    const shift = (index % perByte) * bits;
    const mask = ((1 << bits) - 1) << shift;
    block[byte] = (block[byte]! & ~mask) | (value << shift);
    return;
  }
  const width = bits / 8;
  let v = value;
  for (let i = width - 1; i >= 0; i--) {
    block[index * width + i] = v % 256;
    v = Math.floor(v / 256);
  }
}

/** Reads entry `index` of a refcount block (see `setRefcount`). */
export function getRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  const bits = 1 << refcountOrder;
  if (bits < 8) {
    const perByte = 8 / bits;
    return (block[Math.floor(index / perByte)]! >> ((index % perByte) * bits)) & ((1 << bits) - 1);
  }
  const width = bits / 8;
  let v = 0;
  for (let i = 0; i < width; i++) v = v * 256 + block[index * width + i]!;
  return v;
}
