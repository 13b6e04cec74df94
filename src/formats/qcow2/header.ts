/**
 * The qcow2 image header (versions 2 and 3) and its header extensions.
 * Spec: QEMU docs/interop/qcow2.txt, "Header", "Header extensions", "Feature name table".
 * All numbers are big-endian.
 *
 * Offsets table (bytes):
 *
 * | offset | size | field                   | notes                                   |
 * |-------:|-----:|-------------------------|-----------------------------------------|
 * |      0 |    4 | magic                   | "QFI\xfb"                               |
 * |      4 |    4 | version                 | 2 or 3                                  |
 * |      8 |    8 | backing_file_offset     | 0 = no backing file                     |
 * |     16 |    4 | backing_file_size       | <= 1023, name not NUL-terminated        |
 * |     20 |    4 | cluster_bits            | >= 9; QEMU opens <= 21 (2 MiB)          |
 * |     24 |    8 | size                    | virtual size in bytes                   |
 * |     32 |    4 | crypt_method            | 0 none, 1 AES-CBC, 2 LUKS               |
 * |     36 |    4 | l1_size                 | entries in the active L1 table          |
 * |     40 |    8 | l1_table_offset         | cluster aligned                         |
 * |     48 |    8 | refcount_table_offset   | cluster aligned                         |
 * |     56 |    4 | refcount_table_clusters |                                         |
 * |     60 |    4 | nb_snapshots            |                                         |
 * |     64 |    8 | snapshots_offset        | v2 header ends here (72 bytes)          |
 * |     72 |    8 | incompatible_features   | v3: bit 0 dirty, 1 corrupt, 2 external  |
 * |        |      |                         | data file, 3 compression type, 4 ext L2 |
 * |     80 |    8 | compatible_features     | bit 0 lazy refcounts                    |
 * |     88 |    8 | autoclear_features      | bit 0 bitmaps, 1 raw external data      |
 * |     96 |    4 | refcount_order          | refcount_bits = 1 << order, order <= 6  |
 * |    100 |    4 | header_length           | >= 104, multiple of 8                   |
 * |    104 |    1 | compression_type        | present if header_length > 104          |
 *
 * Header extensions follow at `header_length`: u32 type, u32 length, data, zero padding to 8.
 * Type 0 ends the list. The backing file name lives after the extensions, in the first cluster.
 */
import { CorruptHeaderError, UnsupportedError } from '../../errors.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW2_V2_HEADER_LENGTH = 72;
export const QCOW2_V3_MIN_HEADER_LENGTH = 104;
/** QEMU's limits, which we adopt so no image can make us allocate absurd amounts. */
export const QCOW2_MIN_CLUSTER_BITS = 9;
export const QCOW2_MAX_CLUSTER_BITS = 21;
export const QCOW2_MAX_L1_BYTES = 32 * 1024 * 1024;
export const QCOW2_MAX_BACKING_NAME = 1023;

/** Incompatible feature bits (qcow2.txt "incompatible_features"). */
export const INCOMPAT = {
  dirty: 1n << 0n,
  corrupt: 1n << 1n,
  dataFile: 1n << 2n,
  compression: 1n << 3n,
  extendedL2: 1n << 4n,
} as const;
export const KNOWN_INCOMPAT = INCOMPAT.dirty | INCOMPAT.corrupt | INCOMPAT.dataFile | INCOMPAT.compression | INCOMPAT.extendedL2;
export const COMPAT_LAZY_REFCOUNTS = 1n;

/** Header extension types (qcow2.txt "Header extensions"). */
export const EXT = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureNames: 0x6803f857,
  bitmaps: 0x23852875,
  cryptoHeader: 0x0537be77,
  dataFile: 0x44415441,
} as const;

export type Qcow2CompressionType = 'zlib' | 'zstd';

export interface Qcow2HeaderExtension {
  type: number;
  data: Uint8Array;
  /** The bytes that round the data up to 8 (normally zeros; kept for an exact round trip). */
  padding: Uint8Array;
}

export interface Qcow2FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  bit: number;
  name: string;
}

export interface Qcow2Header {
  magic: number;
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** v3 fields; for v2 they read as their implied values (0 features, order 4, length 72). */
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  /** Raw compression_type byte (0 zlib, 1 zstd); 0 when the field is absent. */
  compressionType: number;
  /** Bytes 105..header_length: padding and fields newer than this module (kept verbatim). */
  extraHeader: Uint8Array;
  /** Extensions in file order, not including the end marker. */
  extensions: Qcow2HeaderExtension[];
  /** Length field of the end-marker extension (0 in every known writer). */
  endMarkerLength: number;
  /** Backing file name, when it lies inside the bytes given to `decodeQcow2Header`. */
  backingFile?: string;
}

function u64(view: DataView, at: number): number {
  // Values >= 2^53 lose precision here; validateQcow2Header rejects them as unsafe.
  return view.getUint32(at) * 2 ** 32 + view.getUint32(at + 4);
}

function putU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / 2 ** 32));
  view.setUint32(at + 4, value % 2 ** 32);
}

/**
 * Parses a header (plus extensions and backing file name) from the start of an image.
 * Pass at least the header area: the first cluster, or the whole file if shorter.
 * Throws `CorruptHeaderError` only when the bytes cannot be parsed at all; semantic
 * checks are in `validateQcow2Header`.
 *
 * @example
 *   const h = decodeQcow2Header(firstCluster);
 *   validateQcow2Header(h, { fileSize });
 */
export function decodeQcow2Header(bytes: Uint8Array): Qcow2Header {
  if (bytes.length < QCOW2_V2_HEADER_LENGTH) {
    throw new CorruptHeaderError(`qcow2 header truncated: ${bytes.length} bytes, need at least ${QCOW2_V2_HEADER_LENGTH}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = v.getUint32(4);
  const h: Qcow2Header = {
    magic: v.getUint32(0),
    version,
    backingFileOffset: u64(v, 8),
    backingFileSize: v.getUint32(16),
    clusterBits: v.getUint32(20),
    size: u64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: u64(v, 40),
    refcountTableOffset: u64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: u64(v, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: QCOW2_V2_HEADER_LENGTH,
    compressionType: 0,
    extraHeader: new Uint8Array(0),
    extensions: [],
    endMarkerLength: 0,
  };
  if (version >= 3) {
    if (bytes.length < QCOW2_V3_MIN_HEADER_LENGTH) {
      throw new CorruptHeaderError(`qcow2 v3 header truncated: ${bytes.length} bytes, need ${QCOW2_V3_MIN_HEADER_LENGTH}`);
    }
    h.incompatibleFeatures = v.getBigUint64(72);
    h.compatibleFeatures = v.getBigUint64(80);
    h.autoclearFeatures = v.getBigUint64(88);
    h.refcountOrder = v.getUint32(96);
    h.headerLength = v.getUint32(100);
    if (h.headerLength < QCOW2_V3_MIN_HEADER_LENGTH || h.headerLength > bytes.length) {
      throw new CorruptHeaderError(`qcow2 header_length ${h.headerLength} is outside ${QCOW2_V3_MIN_HEADER_LENGTH}..${bytes.length}`);
    }
    if (h.headerLength > 104) {
      h.compressionType = bytes[104]!;
      h.extraHeader = bytes.slice(105, h.headerLength);
    }
  }
  // Extensions: only meaningful for known versions; v2 images may carry them too.
  let at = h.headerLength;
  for (;;) {
    if (at + 8 > bytes.length) {
      throw new CorruptHeaderError(`qcow2 header extension list at ${at} runs past the header area (${bytes.length} bytes)`);
    }
    const type = v.getUint32(at);
    const length = v.getUint32(at + 4);
    const padded = Math.ceil(length / 8) * 8;
    if (at + 8 + padded > bytes.length) {
      throw new CorruptHeaderError(`qcow2 header extension 0x${type.toString(16)} (${length} bytes) at ${at} runs past the header area`);
    }
    if (type === EXT.end) {
      h.endMarkerLength = length;
      break;
    }
    h.extensions.push({
      type,
      data: bytes.slice(at + 8, at + 8 + length),
      padding: bytes.slice(at + 8 + length, at + 8 + padded),
    });
    at += 8 + padded;
  }
  if (h.backingFileOffset !== 0 && h.backingFileSize <= QCOW2_MAX_BACKING_NAME) {
    const end = h.backingFileOffset + h.backingFileSize;
    if (end <= bytes.length) h.backingFile = new TextDecoder().decode(bytes.subarray(h.backingFileOffset, end));
  }
  return h;
}

/** Refcount width brickcrypt writes: 16-bit refcounts (refcount_order 4), QEMU's default. */
export const QCOW2_WRITE_REFCOUNT_ORDER = 4;
/** Header length brickcrypt writes: the v3 header with the compression_type byte, padded to 8. */
export const QCOW2_WRITE_HEADER_LENGTH = 112;

/**
 * The header of a new standalone v3 image (no backing file, no encryption, no snapshots, no
 * feature bits, zlib compression type) with the given geometry.
 *
 * @example
 *   await file.write(encodeQcow2Header(newQcow2Header({ clusterBits: 16, size, l1Size, l1TableOffset, refcountTableOffset, refcountTableClusters })), 0);
 */
export function newQcow2Header(g: Pick<Qcow2Header, 'clusterBits' | 'size' | 'l1Size' | 'l1TableOffset' | 'refcountTableOffset' | 'refcountTableClusters'>): Qcow2Header {
  return {
    magic: QCOW2_MAGIC,
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    ...g,
    cryptMethod: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: QCOW2_WRITE_REFCOUNT_ORDER,
    headerLength: QCOW2_WRITE_HEADER_LENGTH,
    compressionType: 0,
    extraHeader: new Uint8Array(QCOW2_WRITE_HEADER_LENGTH - 105),
    extensions: [],
    endMarkerLength: 0,
  };
}

/** Byte length `encodeQcow2Header` produces: header, extensions, end marker and backing name. */
export function qcow2HeaderEncodedLength(h: Qcow2Header): number {
  let end = h.headerLength;
  for (const e of h.extensions) end += 8 + e.data.length + e.padding.length;
  end += 8 + Math.ceil(h.endMarkerLength / 8) * 8;
  if (h.backingFile !== undefined) end = Math.max(end, h.backingFileOffset + new TextEncoder().encode(h.backingFile).length);
  return end;
}

/**
 * Serialises a header. `encodeQcow2Header(decodeQcow2Header(b))` equals the first
 * `qcow2HeaderEncodedLength` bytes of `b` when the gap before the backing name is zero.
 *
 * @example
 *   await file.write(encodeQcow2Header(header), 0);
 */
export function encodeQcow2Header(h: Qcow2Header): Uint8Array {
  const out = new Uint8Array(qcow2HeaderEncodedLength(h));
  const v = new DataView(out.buffer);
  v.setUint32(0, h.magic);
  v.setUint32(4, h.version);
  putU64(v, 8, h.backingFileOffset);
  v.setUint32(16, h.backingFileSize);
  v.setUint32(20, h.clusterBits);
  putU64(v, 24, h.size);
  v.setUint32(32, h.cryptMethod);
  v.setUint32(36, h.l1Size);
  putU64(v, 40, h.l1TableOffset);
  putU64(v, 48, h.refcountTableOffset);
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  putU64(v, 64, h.snapshotsOffset);
  if (h.version >= 3) {
    v.setBigUint64(72, h.incompatibleFeatures);
    v.setBigUint64(80, h.compatibleFeatures);
    v.setBigUint64(88, h.autoclearFeatures);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, h.headerLength);
    if (h.headerLength > 104) {
      out[104] = h.compressionType;
      out.set(h.extraHeader.subarray(0, h.headerLength - 105), 105);
    }
  }
  let at = h.headerLength;
  for (const e of h.extensions) {
    v.setUint32(at, e.type);
    v.setUint32(at + 4, e.data.length);
    out.set(e.data, at + 8);
    out.set(e.padding, at + 8 + e.data.length);
    at += 8 + e.data.length + e.padding.length;
  }
  v.setUint32(at, EXT.end);
  v.setUint32(at + 4, h.endMarkerLength);
  if (h.backingFile !== undefined) out.set(new TextEncoder().encode(h.backingFile), h.backingFileOffset);
  return out;
}

/** Zero padding that rounds `length` up to a multiple of 8. */
export function extensionPadding(length: number): Uint8Array {
  return new Uint8Array(Math.ceil(length / 8) * 8 - length);
}

/** Entries of a feature name table extension (48 bytes each). */
export function decodeFeatureNameTable(data: Uint8Array): Qcow2FeatureName[] {
  const out: Qcow2FeatureName[] = [];
  for (let at = 0; at + 48 <= data.length; at += 48) {
    const raw = data.subarray(at + 2, at + 48);
    const nul = raw.indexOf(0);
    out.push({ type: data[at]!, bit: data[at + 1]!, name: new TextDecoder().decode(nul < 0 ? raw : raw.subarray(0, nul)) });
  }
  return out;
}

/** The meaning of a header's extensions, decoded. */
export interface Qcow2HeaderExtras {
  backingFormat?: string;
  featureNames: Qcow2FeatureName[];
  externalDataFile?: string;
  cryptoHeader?: { offset: number; length: number };
  hasBitmaps: boolean;
}

export function decodeQcow2Extras(h: Qcow2Header): Qcow2HeaderExtras {
  const extras: Qcow2HeaderExtras = { featureNames: [], hasBitmaps: false };
  const text = (d: Uint8Array) => new TextDecoder().decode(d);
  for (const e of h.extensions) {
    if (e.type === EXT.backingFormat) extras.backingFormat = text(e.data);
    else if (e.type === EXT.featureNames) extras.featureNames = decodeFeatureNameTable(e.data);
    else if (e.type === EXT.dataFile) extras.externalDataFile = text(e.data);
    else if (e.type === EXT.bitmaps) extras.hasBitmaps = true;
    else if (e.type === EXT.cryptoHeader && e.data.length >= 16) {
      const v = new DataView(e.data.buffer, e.data.byteOffset, e.data.byteLength);
      extras.cryptoHeader = { offset: u64(v, 0), length: u64(v, 8) };
    }
  }
  return extras;
}

export function compressionTypeName(h: Qcow2Header): Qcow2CompressionType | `unknown(${number})` {
  if (h.compressionType === 0) return 'zlib';
  if (h.compressionType === 1) return 'zstd';
  return `unknown(${h.compressionType})`;
}

export interface ValidateQcow2Options {
  /** Size of the image file; enables the "points past EOF" checks. */
  fileSize?: number;
  /**
   * `open` (default): also refuse what a reader cannot serve (encryption, external data
   * file, unknown incompatible features). `inspect`: structure only, for `info`.
   */
  purpose?: 'open' | 'inspect';
  /** `open` only: the caller can unlock LUKS encryption (crypt_method 2), so do not refuse it. */
  allowLuksEncryption?: boolean;
}

/**
 * Semantic checks on a decoded header. Throws `CorruptHeaderError` for values that
 * violate the spec or would need absurd allocations, `UnsupportedError` for valid
 * features this reader does not implement.
 *
 * @example
 *   validateQcow2Header(decodeQcow2Header(bytes), { fileSize: file.size });
 */
export function validateQcow2Header(h: Qcow2Header, options: ValidateQcow2Options = {}): void {
  const corrupt = (msg: string) => new CorruptHeaderError(`qcow2: ${msg}`);
  if (h.magic !== QCOW2_MAGIC) throw corrupt(`bad magic 0x${h.magic.toString(16)}`);
  if (h.version !== 2 && h.version !== 3) throw new UnsupportedError(`qcow2: version ${h.version} is not supported (only 2 and 3)`);
  if (h.clusterBits < QCOW2_MIN_CLUSTER_BITS || h.clusterBits > 30) throw corrupt(`cluster_bits ${h.clusterBits} is out of range`);
  if (h.clusterBits > QCOW2_MAX_CLUSTER_BITS) {
    throw new UnsupportedError(`qcow2: cluster size 2^${h.clusterBits} is larger than 2 MiB (QEMU's limit)`);
  }
  const clusterSize = 2 ** h.clusterBits;
  if (h.version === 3) {
    if (h.headerLength % 8 !== 0) throw corrupt(`header_length ${h.headerLength} is not a multiple of 8`);
    if (h.headerLength > clusterSize) throw corrupt(`header_length ${h.headerLength} exceeds the cluster size`);
    if (h.refcountOrder > 6) throw corrupt(`refcount_order ${h.refcountOrder} is out of range (max 6)`);
  }
  for (const [name, value] of [
    ['size', h.size],
    ['l1_table_offset', h.l1TableOffset],
    ['refcount_table_offset', h.refcountTableOffset],
    ['snapshots_offset', h.snapshotsOffset],
    ['backing_file_offset', h.backingFileOffset],
  ] as const) {
    if (!Number.isSafeInteger(value)) throw corrupt(`${name} ${value} is out of range`);
  }
  if (h.l1TableOffset % clusterSize !== 0) throw corrupt(`l1_table_offset ${h.l1TableOffset} is not cluster aligned`);
  if (h.refcountTableOffset % clusterSize !== 0) throw corrupt(`refcount_table_offset ${h.refcountTableOffset} is not cluster aligned`);
  if (h.l1Size * 8 > QCOW2_MAX_L1_BYTES) throw corrupt(`l1_size ${h.l1Size} exceeds ${QCOW2_MAX_L1_BYTES / 8} entries`);
  const l2Entries = clusterSize / (h.incompatibleFeatures & INCOMPAT.extendedL2 ? 16 : 8);
  const needL1 = Math.ceil(h.size / clusterSize / l2Entries);
  if (h.l1Size < needL1) throw corrupt(`l1_size ${h.l1Size} is too small for a ${h.size}-byte disk (need ${needL1})`);
  if (h.l1Size > 0 && h.l1TableOffset === 0) throw corrupt('l1_table_offset is 0 with a non-empty L1 table');
  if (h.l1Size > 0 && h.l1TableOffset < clusterSize) throw corrupt('the L1 table overlaps the header');
  if (options.fileSize !== undefined) {
    const fileSize = options.fileSize;
    if (h.l1TableOffset + h.l1Size * 8 > fileSize) {
      throw corrupt(`L1 table (${h.l1Size} entries at ${h.l1TableOffset}) extends past the end of the ${fileSize}-byte file`);
    }
  }
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > QCOW2_MAX_BACKING_NAME) throw corrupt(`backing file name length ${h.backingFileSize} exceeds 1023`);
    if (h.backingFileOffset + h.backingFileSize > clusterSize) throw corrupt('backing file name lies outside the first cluster');
  }
  if (h.cryptMethod > 2) throw corrupt(`crypt_method ${h.cryptMethod} is unknown`);
  const compressionBit = (h.incompatibleFeatures & INCOMPAT.compression) !== 0n;
  if (compressionBit !== (h.compressionType !== 0)) {
    throw corrupt(`compression_type ${h.compressionType} does not match the compression-type feature bit`);
  }
  if (h.incompatibleFeatures & INCOMPAT.extendedL2 && h.clusterBits < 14) {
    throw corrupt('extended L2 entries need a cluster size of at least 16 KiB');
  }
  if ((options.purpose ?? 'open') === 'inspect') return;

  const unknown = h.incompatibleFeatures & ~KNOWN_INCOMPAT;
  if (unknown !== 0n) {
    const names = decodeQcow2Extras(h).featureNames;
    const list: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if (unknown & (1n << BigInt(bit))) {
        const named = names.find((n) => n.type === 0 && n.bit === bit);
        list.push(named ? `${bit} (${named.name})` : String(bit));
      }
    }
    throw new UnsupportedError(`qcow2: unknown incompatible feature bit(s) ${list.join(', ')}`);
  }
  if (h.incompatibleFeatures & INCOMPAT.dataFile) {
    throw new UnsupportedError('qcow2: images with an external data file are not supported');
  }
  if (h.compressionType > 1) throw new UnsupportedError(`qcow2: compression type ${h.compressionType} is not supported`);
  if (h.cryptMethod === 1) {
    throw new UnsupportedError('qcow2: legacy AES-CBC encryption (crypt_method 1) is not supported; decrypt with qemu-img convert first');
  }
  if (h.cryptMethod === 2 && !options.allowLuksEncryption) {
    throw new UnsupportedError(
      'qcow2: LUKS-encrypted qcow2 (encrypt.format=luks) can only be read with its passphrase; none was given',
    );
  }
}
