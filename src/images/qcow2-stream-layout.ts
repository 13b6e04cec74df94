/**
 * A qcow2 v3 image laid out for writing front to back in one stream (an upload that cannot
 * seek back), following QEMU docs/interop/qcow2.txt.
 *
 * Which guest clusters hold data must be known first (a scan of the source). The image is
 * then, in host order: the header (cluster 0), the L1 table, the refcount table, the refcount
 * blocks, the L2 tables of the regions that hold data, and the data clusters in guest order.
 * Clusters that are all zeros are left unallocated (they read as zeros), as `qemu-img convert`
 * does. Every cluster is counted once, so `qemu-img check` reports the image clean.
 *
 * `planQcow2Stream` builds all metadata in memory (one L2 table per 512 MiB of guest space
 * with data, at the default 64 KiB clusters); `Qcow2StreamDevice` (`qcow2-stream-device.ts`)
 * turns the plaintext writes of the pipeline into the data part.
 *
 * Compressed images (`qemu-img convert -c`): the L2 tables hold each compressed cluster's
 * byte offset and length, so the lengths must be known before the tables are sent. The scan
 * pass compresses every data cluster once to learn its length (deflate is deterministic for
 * the same input and level); the plan packs the compressed clusters back to back, never across
 * a host cluster (so each references one host cluster, whose refcount is the number of
 * compressed clusters in it), and clusters that do not shrink are stored whole and aligned.
 */
import { InvalidArgumentError } from '../errors.js';
import { QCOW2_WRITE_REFCOUNT_ORDER, encodeQcow2Header, newQcow2Header } from '../formats/qcow2/header.js';
import { encodeL1Entry, encodeL2Compressed, encodeL2Normal } from '../formats/qcow2/l2-entry.js';
import { refcountBlockEntries, setRefcount } from '../formats/qcow2/refcount.js';

const REFCOUNT_ORDER = QCOW2_WRITE_REFCOUNT_ORDER;
const MAX_REFCOUNT = 2 ** 16 - 1;

export interface Qcow2StreamPlan {
  clusterSize: number;
  /** Virtual size. */
  size: number;
  /** Header, L1, refcount table and blocks, L2 tables: the first bytes of the image. */
  metadata: Uint8Array;
  /** Guest cluster numbers holding data, ascending; their data follows `metadata` in this order. */
  dataClusters: number[];
  /** Where each data cluster's bytes start in the file (same order as `dataClusters`). */
  hostOffsets: Float64Array;
  /**
   * Compressed plans: the deflate length of each data cluster, 0 where it is stored whole.
   * Absent when nothing is compressed (then the data clusters follow each other).
   */
  storedLengths?: Uint32Array;
  /** Total bytes of the image file. */
  fileSize: number;
}

/** Where the data clusters go relative to the (cluster-aligned) start of the data part. */
function packData(count: number, cs: number, storedLengths?: Uint32Array): { offsets: Float64Array; hostRefs: Map<number, number>; clusters: number } {
  const offsets = new Float64Array(count);
  const hostRefs = new Map<number, number>();
  let cursor = 0;
  for (let i = 0; i < count; i++) {
    const len = storedLengths?.[i] ?? 0;
    if (len > 0) {
      if ((cursor % cs) + len > cs) cursor = Math.ceil(cursor / cs) * cs;
    } else {
      cursor = Math.ceil(cursor / cs) * cs;
    }
    offsets[i] = cursor;
    const host = Math.floor(cursor / cs);
    hostRefs.set(host, (hostRefs.get(host) ?? 0) + 1);
    cursor += len > 0 ? len : cs;
  }
  return { offsets, hostRefs, clusters: Math.ceil(cursor / cs) };
}

/**
 * Plans the image for a disk of `size` bytes whose guest clusters `allocated` (a flag per
 * cluster, 1 = holds data) are stored; `storedLengths` (one per data cluster, in guest order;
 * 0 = stored whole) makes a compressed image.
 */
export function planQcow2Stream(size: number, allocated: Uint8Array, clusterBits = 16, storedLengths?: Uint32Array): Qcow2StreamPlan {
  const cs = 2 ** clusterBits;
  if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`qcow2 size ${size} is not a positive number of bytes.`);
  // QEMU rounds a qcow2 disk up to whole 512-byte sectors; a size between would read differently there.
  if (size % 512 !== 0) throw new InvalidArgumentError(`qcow2 size ${size} is not a multiple of 512 bytes.`);
  const guestClusters = Math.ceil(size / cs);
  if (allocated.length !== guestClusters) throw new InvalidArgumentError(`qcow2 plan: ${allocated.length} cluster flags for ${guestClusters} clusters.`);
  const l2Entries = cs / 8;
  const l1Size = Math.ceil(guestClusters / l2Entries);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const dataClusters: number[] = [];
  const l2Used = new Set<number>();
  for (let c = 0; c < guestClusters; c++) {
    if (allocated[c]) {
      dataClusters.push(c);
      l2Used.add(Math.floor(c / l2Entries));
    }
  }
  const l2Tables = [...l2Used].sort((a, b) => a - b);
  if (storedLengths && storedLengths.length !== dataClusters.length) {
    throw new InvalidArgumentError(`qcow2 plan: ${storedLengths.length} stored lengths for ${dataClusters.length} data clusters.`);
  }
  storedLengths?.forEach((len) => {
    if (len >= cs) throw new InvalidArgumentError(`qcow2 plan: a compressed cluster of ${len} bytes does not shrink a ${cs}-byte cluster.`);
  });
  const packed = packData(dataClusters.length, cs, storedLengths);
  // Refcount table and blocks count themselves: iterate to a fixed point.
  const perBlock = refcountBlockEntries(clusterBits, REFCOUNT_ORDER);
  const fixed = 1 + l1Clusters + l2Tables.length + packed.clusters;
  let tableClusters = 1;
  let blocks = 0;
  for (;;) {
    const nextBlocks = Math.ceil((fixed + tableClusters + blocks) / perBlock);
    const nextTable = Math.max(1, Math.ceil((nextBlocks * 8) / cs));
    if (nextBlocks === blocks && nextTable === tableClusters) break;
    blocks = nextBlocks;
    tableClusters = nextTable;
  }
  const l1Offset = cs;
  const tableOffset = l1Offset + l1Clusters * cs;
  const blocksOffset = tableOffset + tableClusters * cs;
  const l2Offset = blocksOffset + blocks * cs;
  const dataOffset = l2Offset + l2Tables.length * cs;
  const totalClusters = dataOffset / cs + packed.clusters;
  const hostOffsets = packed.offsets.map((o) => dataOffset + o);

  const metadata = new Uint8Array(dataOffset);
  const view = new DataView(metadata.buffer);
  // L1 -> L2 tables; L2 -> data clusters (in guest order after the metadata).
  const l2Host = new Map<number, number>();
  l2Tables.forEach((l1Index, i) => {
    const host = l2Offset + i * cs;
    l2Host.set(l1Index, host);
    const [hi, lo] = encodeL1Entry(host, true);
    view.setUint32(l1Offset + l1Index * 8, hi);
    view.setUint32(l1Offset + l1Index * 8 + 4, lo);
  });
  dataClusters.forEach((c, i) => {
    const table = l2Host.get(Math.floor(c / l2Entries))!;
    const len = storedLengths?.[i] ?? 0;
    const [hi, lo] = len > 0 ? encodeL2Compressed(hostOffsets[i]!, len, clusterBits) : encodeL2Normal(hostOffsets[i]!, true);
    const at = table + (c % l2Entries) * 8;
    view.setUint32(at, hi);
    view.setUint32(at + 4, lo);
  });
  for (let b = 0; b < blocks; b++) {
    const [hi, lo] = encodeL1Entry(blocksOffset + b * cs, false);
    view.setUint32(tableOffset + b * 8, hi);
    view.setUint32(tableOffset + b * 8 + 4, lo);
  }
  const firstData = dataOffset / cs;
  for (let c = 0; c < totalClusters; c++) {
    // Metadata clusters count once; a data host cluster once per cluster stored in it.
    const refs = c < firstData ? 1 : (packed.hostRefs.get(c - firstData) ?? 0);
    if (refs > MAX_REFCOUNT) throw new InvalidArgumentError(`qcow2 plan: host cluster ${c} would hold ${refs} compressed clusters.`);
    setRefcount(metadata.subarray(blocksOffset + Math.floor(c / perBlock) * cs), c % perBlock, refs, REFCOUNT_ORDER);
  }
  const header = newQcow2Header({ clusterBits, size, l1Size, l1TableOffset: l1Offset, refcountTableOffset: tableOffset, refcountTableClusters: tableClusters });
  metadata.set(encodeQcow2Header(header), 0);
  return { clusterSize: cs, size, metadata, dataClusters, hostOffsets, ...(storedLengths ? { storedLengths } : {}), fileSize: totalClusters * cs };
}
