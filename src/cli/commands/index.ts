/** Every command group of the CLI, in the order `--help` lists them. */
import type { Command } from 'commander';

export const commandModules: Array<(program: Command) => void> = [];
