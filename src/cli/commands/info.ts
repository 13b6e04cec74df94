/**
 * `brickcrypt info IMAGE [--json]`: what `qemu-img info` reports (format by content,
 * virtual and disk size, qcow2 features, LUKS cipher and payload), no passphrase needed.
 */
import type { Command } from 'commander';
import { formatImageInfo, imageInfo } from '../../images/image-info.js';

export function register(program: Command): void {
  program
    .command('info')
    .description('Show the format and properties of an image (qcow2, raw, LUKS1, LUKS2), like qemu-img info.')
    .argument('<image>', 'image file or block device')
    .option('--json', 'print JSON with the keys of qemu-img info --output=json')
    .action(async (image: string, opts: { json?: boolean }) => {
      const info = await imageInfo(image);
      process.stdout.write(opts.json ? JSON.stringify(info, null, 4) + '\n' : formatImageInfo(info));
    });
}
