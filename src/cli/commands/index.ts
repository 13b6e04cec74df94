/**
 * Every command group of the CLI, in the order `--help` lists them, with the top-level
 * commands each one registers. A run that names a command loads only that group's module
 * (and what it imports): start-up time counts in every conversion and every test run.
 * test/cli/command-index.test.ts checks this table against what the modules register.
 */
import type { Command } from 'commander';

export interface CommandGroup {
  /** Top-level command names the module registers. */
  commands: readonly string[];
  load: () => Promise<{ register: (program: Command) => void }>;
}

export const COMMAND_GROUPS: readonly CommandGroup[] = [
  { commands: ['info'], load: () => import('./info.js') },
  {
    commands: ['format', 'dump', 'test-key', 'add-key', 'change-key', 'remove-key', 'kill-slot', 'header-backup', 'header-restore'],
    load: () => import('./luks.js'),
  },
  { commands: ['convert', 'verify'], load: () => import('./convert.js') },
  { commands: ['resize', 'convert-header'], load: () => import('./lifecycle.js') },
  { commands: ['reencrypt'], load: () => import('./reencrypt.js') },
  { commands: ['token'], load: () => import('./token.js') },
  { commands: ['key'], load: () => import('./key.js') },
  { commands: ['image'], load: () => import('./image.js') },
  { commands: ['attach', 'detach'], load: () => import('./attach.js') },
  { commands: ['backup'], load: () => import('./backup.js') },
  { commands: ['serve'], load: () => import('./serve.js') },
];

/**
 * The register functions needed for `args` (the arguments after the program name): the group
 * owning the first non-option argument, or every group (help, version, unknown commands).
 */
export async function commandRegistrars(args: readonly string[] = []): Promise<Array<(program: Command) => void>> {
  const first = args.find((a) => !a.startsWith('-'));
  const owner = first === undefined ? undefined : COMMAND_GROUPS.find((g) => g.commands.includes(first));
  const groups = owner ? [owner] : COMMAND_GROUPS;
  return (await Promise.all(groups.map((g) => g.load()))).map((m) => m.register);
}
