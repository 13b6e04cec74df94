/**
 * `qemu-img info`-style facts about an image file, without a passphrase. The JSON
 * keys follow `qemu-img info --output=json` where QEMU has one, so scripts can switch.
 */
import { FileDevice, statPath } from '../devices/file-device.js';
import { INCOMPAT, COMPAT_LAZY_REFCOUNTS, compressionTypeName } from '../formats/qcow2/header.js';
import { detectFormat, type ImageFormat } from './detect.js';
import { inspectQcow2 } from './qcow2-device.js';

export interface Qcow2InfoData {
  compat: '0.10' | '1.1';
  'compression-type': string;
  'lazy-refcounts'?: boolean;
  'refcount-bits': number;
  corrupt?: boolean;
  'extended-l2'?: boolean;
  /** External data file name (brickcrypt cannot read such images). */
  'data-file'?: string;
}

export interface LuksInfoData {
  version: 1 | 2;
  uuid: string;
  /** cryptsetup notation, e.g. "aes-xts-plain64". */
  cipher: string;
  'key-bits'?: number;
  'sector-size': number;
  'payload-offset': number;
  'payload-size': number;
  'read-only-reason'?: string;
}

export interface ImageInfo {
  filename: string;
  format: ImageFormat;
  /** Guest-visible bytes: qcow2 virtual size, LUKS payload size, raw file size. */
  'virtual-size': number;
  /** Bytes the file occupies on disk (st_blocks * 512). */
  'actual-size': number;
  'cluster-size'?: number;
  'dirty-flag': boolean;
  encrypted?: boolean;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific'?: { type: 'qcow2'; data: Qcow2InfoData } | { type: 'luks'; data: LuksInfoData };
}

/**
 * Inspects an image by content.
 *
 * @example
 *   const info = await imageInfo('disk.qcow2'); // { format: 'qcow2', 'virtual-size': 10737418240, ... }
 */
export async function imageInfo(path: string): Promise<ImageInfo> {
  return inQemuKeyOrder(await inspect(path));
}

const QEMU_KEY_ORDER = [
  'virtual-size', 'filename', 'cluster-size', 'format', 'actual-size', 'encrypted',
  'format-specific', 'backing-filename', 'backing-filename-format', 'dirty-flag',
] as const;

function inQemuKeyOrder(info: ImageInfo): ImageInfo {
  const out: Record<string, unknown> = {};
  for (const key of QEMU_KEY_ORDER) if (info[key] !== undefined) out[key] = info[key];
  return out as unknown as ImageInfo;
}

async function inspect(path: string): Promise<ImageInfo> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const st = await statPath(path);
    const format = await detectFormat(file);
    const base = { filename: path, format, 'actual-size': st.isBlockDevice ? 0 : st.allocated, 'dirty-flag': false };
    if (format === 'raw') return { ...base, 'virtual-size': file.size };
    if (format === 'qcow2') {
      const { header: h, extras } = await inspectQcow2(file);
      const info: ImageInfo = { ...base, 'virtual-size': h.size, 'cluster-size': 2 ** h.clusterBits };
      const data: Qcow2InfoData = {
        compat: h.version >= 3 ? '1.1' : '0.10',
        'compression-type': compressionTypeName(h),
        'refcount-bits': 2 ** h.refcountOrder,
      };
      if (h.version >= 3) {
        data['lazy-refcounts'] = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
        data.corrupt = (h.incompatibleFeatures & INCOMPAT.corrupt) !== 0n;
        data['extended-l2'] = (h.incompatibleFeatures & INCOMPAT.extendedL2) !== 0n;
        info['dirty-flag'] = (h.incompatibleFeatures & INCOMPAT.dirty) !== 0n;
      }
      if (extras.externalDataFile !== undefined) data['data-file'] = extras.externalDataFile;
      if (h.cryptMethod !== 0) info.encrypted = true;
      if (h.backingFile !== undefined) info['backing-filename'] = h.backingFile;
      if (extras.backingFormat !== undefined) info['backing-filename-format'] = extras.backingFormat;
      info['format-specific'] = { type: 'qcow2', data };
      return info;
    }
    // Loaded on demand: the LUKS engine pulls in the KDFs (native argon2), which qcow2/raw never need.
    const { LuksVolume } = await import('../luks/volume.js');
    const vol = await LuksVolume.open(file, { readOnly: true });
    const data: LuksInfoData = {
      version: vol.version,
      uuid: vol.uuid,
      cipher: vol.encryption,
      'sector-size': vol.sectorSize,
      'payload-offset': vol.dataOffset,
      'payload-size': vol.payloadSize,
    };
    try {
      data['key-bits'] = vol.keyBytes * 8;
    } catch {
      // A LUKS2 header without a keyslot for its segment has no recorded key size.
    }
    if (vol.readOnlyReason !== undefined) data['read-only-reason'] = vol.readOnlyReason;
    return { ...base, 'virtual-size': vol.payloadSize, encrypted: true, 'format-specific': { type: 'luks', data } };
  } finally {
    await file.close();
  }
}

/** Human-readable lines in the style of `qemu-img info`. */
export function formatImageInfo(info: ImageInfo): string {
  const out: string[] = [];
  const human = (n: number) => {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u++;
    }
    return u === 0 ? `${n} B` : `${Number(v.toFixed(2))} ${units[u]}`;
  };
  out.push(`image: ${info.filename}`);
  out.push(`file format: ${info.format}`);
  out.push(`virtual size: ${human(info['virtual-size'])} (${info['virtual-size']} bytes)`);
  out.push(`disk size: ${human(info['actual-size'])}`);
  if (info['cluster-size'] !== undefined) out.push(`cluster_size: ${info['cluster-size']}`);
  if (info['backing-filename'] !== undefined) out.push(`backing file: ${info['backing-filename']}`);
  if (info['backing-filename-format'] !== undefined) out.push(`backing file format: ${info['backing-filename-format']}`);
  if (info.encrypted) out.push('encrypted: yes');
  const fs = info['format-specific'];
  if (fs) {
    out.push('Format specific information:');
    for (const [k, v] of Object.entries(fs.data)) out.push(`    ${k.replace(/-/g, ' ')}: ${v}`);
  }
  if (info['dirty-flag']) out.push('dirty flag: yes');
  return out.join('\n') + '\n';
}
