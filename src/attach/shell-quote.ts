/**
 * POSIX shell quoting for the command lines brickcrypt prints, so a printed line can be
 * pasted into bash/sh as-is and yields exactly the intended argv.
 */
import { InvalidArgumentError } from '../errors.js';

/** Characters that never need quoting in sh (no globbing, expansion or word splitting). */
const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

/**
 * Quotes one argument for a POSIX shell: safe words stay bare, anything else is put in
 * single quotes (a `'` inside becomes `'\''`). NUL cannot be passed in an argv and is refused.
 *
 * @example
 * shellQuote('a b');      // "'a b'"
 * shellQuote("it's");     // "'it'\\''s'"
 * shellQuote('--object'); // "--object"
 */
export function shellQuote(arg: string): string {
  if (arg.includes('\0')) throw new InvalidArgumentError('An argument cannot contain a NUL byte.');
  if (arg !== '' && SAFE.test(arg) && !arg.startsWith('=')) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * Joins argv words into one shell line.
 *
 * @example
 * shellJoin(['rm', '-f', '--', '/tmp/a b']); // "rm -f -- '/tmp/a b'"
 */
export function shellJoin(args: readonly string[]): string {
  return args.map(shellQuote).join(' ');
}
