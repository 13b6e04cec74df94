/**
 * Volume lifecycle commands: `resize` (cryptsetup resize, Cinder's extend) and `convert-header`
 * (cryptsetup convert). Thin layer over src/luks/resize.ts and src/luks/convert-header.ts; both
 * hold the volume's writer lock.
 */
import type { Command } from 'commander';
import { FileDevice } from '../../devices/file-device.js';
import { InvalidArgumentError } from '../../errors.js';
import { LuksVolume } from '../../luks/index.js';
import { planResize, resizeLuks } from '../../luks/resize.js';
import { convertLuksHeader } from '../../luks/convert-header.js';
import { CryptoPool, defaultWorkerCount } from '../../workflows/worker-pool.js';
import { withPassphraseTries } from '../passphrase-prompt.js';
import { parseChoice, parseSize } from '../parse.js';
import { addKeyFileOptions, EXIT_HELP, KEYFILE_HELP, oldKeyInput, triesOf, withWriterLock, type HeaderOpt, type KeyOpts } from './luks.js';

interface ResizeCliOptions extends KeyOpts, HeaderOpt {
  size?: string;
  deviceSize?: string;
  allowTruncate?: boolean;
}

/** Opens VOLUME (and --header) writable for `fn`, holding the writer lock. */
async function withDevices<T>(volume: string, o: HeaderOpt, fn: (data: FileDevice, header: FileDevice | undefined) => Promise<T>): Promise<T> {
  return withWriterLock(volume, async () => {
    const data = await FileDevice.open(volume);
    let header: FileDevice | undefined;
    try {
      if (o.header) header = await FileDevice.open(o.header);
      return await fn(data, header);
    } finally {
      await header?.close();
      await data.close();
    }
  });
}

/** The usable size asked for: --size (usable), --device-size (whole device), or all of a block device. */
function targetPayload(o: ResizeCliOptions, vol: LuksVolume, data: FileDevice): number {
  if (o.size !== undefined && o.deviceSize !== undefined) throw new InvalidArgumentError('Give --size or --device-size, not both.');
  if (o.size !== undefined) return parseSize(o.size, 'size');
  if (o.deviceSize !== undefined) {
    const total = parseSize(o.deviceSize, 'device-size');
    if (total <= vol.dataOffset) throw new InvalidArgumentError(`--device-size ${total} leaves no room after the ${vol.dataOffset}-byte header.`);
    return total - vol.dataOffset;
  }
  if (!data.isBlockDevice) throw new InvalidArgumentError('Give --size (usable bytes) or --device-size (bytes of the whole file).');
  const ss = vol.sectorSize;
  return Math.floor((data.size - vol.dataOffset) / ss) * ss;
}

export function register(program: Command): void {
  addKeyFileOptions(
    program
      .command('resize')
      .description('Grow (or with --allow-truncate shrink) a LUKS1/LUKS2 volume; new space reads as zeros (cryptsetup resize).')
      .argument('<volume>', 'LUKS file or block device')
      .option('--size <size>', 'the usable (decrypted) size wanted, K/M/G/T suffixes; the header comes on top')
      .option('--device-size <size>', 'instead of --size: the size of the whole file or device, header included')
      .option('--allow-truncate', 'allow a smaller size: the data past the new end is lost')
      .option('--header <file>', 'detached header file'),
    false,
  )
    .addHelpText(
      'after',
      `
--size is what the volume's user sees (an OpenStack volume's size), never the file size: a file
grows by exactly the difference. The new space is written as encrypted zeros, so it reads as zeros
through attach/convert; that needs the passphrase. A LUKS2 segment of fixed size gets the new size,
a dynamic one stays dynamic. On a block device (no --size) the volume grows to the whole device;
LUKS1 and dynamic LUKS2 volumes on a block device always span it, so there only fixed segments grow.
Shrinking is refused (exit 1, nothing changed) unless --allow-truncate; it needs no passphrase.
A crash leaves the old or the new size (docs/luks.md, "resize").
Examples:
  brickcrypt resize vol.img --size 20G --key-file pass.txt
  brickcrypt resize vol.img --device-size 21G --key-file pass.txt
  brickcrypt resize vol.img --size 5G --allow-truncate
${KEYFILE_HELP}
${EXIT_HELP}`,
    )
    .action(async (volume: string, o: ResizeCliOptions) => {
      await withDevices(volume, o, async (data, header) => {
        // Read-only inspection: a refusal changes nothing, not even a stale LUKS2 copy.
        const vol = await LuksVolume.open(data, { readOnly: true, ...(header ? { headerDevice: header } : {}) });
        const payloadSize = targetPayload(o, vol, data);
        const plan = planResize(vol, payloadSize, { allowTruncate: o.allowTruncate === true });
        if (plan.newPayloadSize === plan.oldPayloadSize && plan.newDeviceSize === plan.oldDeviceSize) {
          process.stdout.write(`${volume} already has ${payloadSize} usable bytes; nothing to do.\n`);
          return;
        }
        let pool: CryptoPool | undefined;
        let key;
        try {
          if (plan.newPayloadSize > plan.oldPayloadSize) {
            key = (await withPassphraseTries(await oldKeyInput(o, volume), (pass) => vol.unlock(pass, { forWrite: true }), { tries: triesOf(o) })).key;
            pool = CryptoPool.create(defaultWorkerCount());
          }
          const offload = pool && key ? pool.sectorCrypto({ encryption: vol.encryption, keyBytes: vol.keyBytes, sectorSize: vol.sectorSize }, key.expose()) : undefined;
          const done = await resizeLuks(data, {
            payloadSize,
            allowTruncate: o.allowTruncate === true,
            ...(header ? { headerDevice: header } : {}),
            ...(key ? { key } : {}),
            ...(offload ? { cryptoOffload: offload } : {}),
          });
          await offload?.close();
          process.stdout.write(
            `Resized ${volume} (LUKS${done.version}${done.segment === 'luks1' ? '' : `, ${done.segment} segment`}): ` +
              `${done.oldPayloadSize} -> ${done.newPayloadSize} usable bytes, device ${done.oldDeviceSize} -> ${done.newDeviceSize} bytes` +
              `${done.zeroBytes > 0 ? `, ${done.zeroBytes} new bytes zeroed` : ''}.\n`,
          );
        } finally {
          key?.wipe();
          await pool?.close();
        }
      });
    });

  program
    .command('convert-header')
    .description('Convert a LUKS1 header to LUKS2 or back, in place (cryptsetup convert).')
    .argument('<volume>', 'LUKS file or block device')
    .requiredOption('--type <type>', 'luks2 or luks1')
    .option('--header <file>', 'detached header file')
    .addHelpText(
      'after',
      `
The data is not touched and no passphrase is needed: keyslots, volume key digest and UUID move to
the other format, laid out as cryptsetup lays them out. Refused with exit 1 and nothing changed,
as cryptsetup refuses them: LUKS2 -> LUKS1 needs PBKDF2 keyslots (same hash as the digest) numbered
0-7, one 512-byte-sector segment, one digest, no tokens, and room for eight LUKS1 keyslot areas;
LUKS1 -> LUKS2 needs the keyslots at 4096 bytes and room for the LUKS2 headers before the data.
A crash leaves the old or the new format, opening with every passphrase (docs/luks.md,
"convert-header"); brickcrypt refuses (reason no-room-for-safe-move) where that order cannot exist.
Examples:
  brickcrypt convert-header vol.img --type luks2
  brickcrypt convert-header vol.img --type luks1
${EXIT_HELP}`,
    )
    .action(async (volume: string, o: HeaderOpt & { type: string }) => {
      const type = parseChoice(o.type, 'type', ['luks1', 'luks2'] as const);
      await withDevices(volume, o, async (data, header) => {
        const result = await convertLuksHeader(data, { type, ...(header ? { headerDevice: header } : {}) });
        process.stdout.write(`Converted ${volume} from LUKS${result.from} to LUKS${result.to} (${result.keyslots.length} keyslot(s): ${result.keyslots.join(', ')}).\n`);
      });
    });
}
