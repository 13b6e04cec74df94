/**
 * The `brickcrypt` command line: a thin layer over the library. Each command group
 * lives in `commands/<name>.ts` and exports `register(program)`. Errors are printed
 * once, here, as one line with their stable code, and mapped to the exit code.
 */
import { Command, CommanderError } from 'commander';
import { BrickcryptError, EXIT_CODES, exitCodeOf } from '../errors.js';
import { commandRegistrars } from './commands/index.js';

/**
 * The program with the commands `args` needs (all of them by default; see `commandRegistrars`).
 */
export async function buildProgram(args?: readonly string[]): Promise<Command> {
  const registrars = await commandRegistrars(args);
  const program = new Command('brickcrypt')
    .description('Encrypted block volumes in userspace: LUKS1/LUKS2, images, keys, attach.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const register of registrars) register(program);
  return program;
}

export function formatError(err: unknown): string {
  if (err instanceof BrickcryptError) return `brickcrypt: error ${err.code}: ${err.message}`;
  return `brickcrypt: internal error: ${(err as Error)?.stack ?? String(err)}`;
}

export async function main(argv: string[] = process.argv): Promise<number> {
  // A closed pipe (`brickcrypt dump VOL | head`) ends output quietly, as for other Unix tools.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT_CODES.ok);
    throw err;
  });
  const program = await buildProgram(argv.slice(2));
  try {
    await program.parseAsync(argv);
    return process.exitCode === undefined ? EXIT_CODES.ok : Number(process.exitCode);
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? EXIT_CODES.ok : EXIT_CODES.usage;
    }
    process.stderr.write(formatError(err) + '\n');
    return exitCodeOf(err);
  }
}
