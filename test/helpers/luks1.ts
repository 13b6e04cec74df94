/**
 * Checks of a finished LUKS1 header in tests (re-key and encryption through LUKS2): LUKS1, no
 * brickcrypt marker, and nothing but the active keyslots' material between the header and the
 * data (the marker, the LUKS2 headers, old keyslots and resilience data are wiped).
 */
import assert from 'node:assert/strict';
import type { BlockDevice } from '../../src/block-device.js';
import { detectFormat } from '../../src/images/detect.js';
import { LUKS1_HEADER_SIZE, LUKS1_KEY_ENABLED, decodeLuks1Header, luks1KeyslotSectors } from '../../src/formats/luks1/header.js';
import { isLuks1Reencryption, readLuks1Marker } from '../../src/luks/reencrypt/luks1.js';

/** `dev` (or its detached header: `end` = the header size when the payload offset is 0) is a clean LUKS1 header. */
export async function assertFinishedLuks1(dev: BlockDevice & { bytes: Uint8Array }, label: string): Promise<void> {
  assert.equal(await detectFormat(dev), 'luks1', `${label}: format`);
  assert.equal(await readLuks1Marker(dev), undefined, `${label}: marker left`);
  assert.equal(await isLuks1Reencryption(dev), false, `${label}: still recorded`);
  const hdr = decodeLuks1Header(dev.bytes.subarray(0, LUKS1_HEADER_SIZE));
  const length = luks1KeyslotSectors(hdr.keyBytes) * 512;
  const keep = hdr.keyslots.filter((k) => k.state === LUKS1_KEY_ENABLED).map((k) => [k.keyMaterialOffset * 512, k.keyMaterialOffset * 512 + length] as const);
  const end = hdr.payloadOffset > 0 ? hdr.payloadOffset * 512 : dev.size;
  for (let at = LUKS1_HEADER_SIZE; at < end; at++) {
    if (dev.bytes[at] !== 0 && !keep.some(([a, b]) => at >= a && at < b)) assert.fail(`${label}: byte ${at} of the header area is not wiped`);
  }
}
