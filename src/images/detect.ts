/**
 * Image format detection by content (never by file name, which an uploader controls).
 *
 * | format | signature                                                         |
 * |--------|-------------------------------------------------------------------|
 * | luks1  | "LUKS\xba\xbe" at 0, version u16 BE at 6 == 1 (LUKS on-disk spec) |
 * | luks2  | "LUKS\xba\xbe" at 0, version u16 BE at 6 == 2                      |
 * | qcow2  | "QFI\xfb" at 0 (QEMU docs/interop/qcow2.txt; version checked later) |
 * | raw    | anything else                                                     |
 */
import type { BlockDevice } from '../block-device.js';

export type ImageFormat = 'luks1' | 'luks2' | 'qcow2' | 'raw';

const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const QCOW2_MAGIC = [0x51, 0x46, 0x49, 0xfb];

/**
 * Classifies the first bytes of an image. A LUKS magic with an unknown version is
 * reported as `raw` (it is not something brickcrypt can open as LUKS).
 *
 * @example
 *   detectFormatFromBytes(firstSector) // 'qcow2'
 */
export function detectFormatFromBytes(head: Uint8Array): ImageFormat {
  if (head.length >= 8 && LUKS_MAGIC.every((b, i) => head[i] === b)) {
    const version = (head[6]! << 8) | head[7]!;
    if (version === 1) return 'luks1';
    if (version === 2) return 'luks2';
  }
  if (head.length >= 4 && QCOW2_MAGIC.every((b, i) => head[i] === b)) return 'qcow2';
  return 'raw';
}

/**
 * Detects the format of an image by its content.
 *
 * @example
 *   const format = await detectFormat(await FileDevice.open(path, { readOnly: true }));
 */
export async function detectFormat(device: BlockDevice): Promise<ImageFormat> {
  const head = new Uint8Array(Math.min(8, device.size));
  if (head.length > 0) await device.read(head, 0);
  return detectFormatFromBytes(head);
}
