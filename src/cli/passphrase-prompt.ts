/**
 * Passphrases typed at a terminal, as cryptsetup asks for them (src/utils_password.c):
 * the prompt goes to the terminal side (stderr here), echo is off, one line is read without
 * its newline; a new passphrase is asked twice and must match ("Verify passphrase: ");
 * `--tries N` (default 3) re-asks after a wrong one, and only when the input is a terminal
 * (src/utils_luks.c set_tries_tty).
 *
 * Node's readline reads the line with the terminal in raw mode and its echo sent to a
 * stream that drops it, so nothing typed is shown. The line passes through a JS string
 * (UTF-8), which cannot be wiped; the bytes handed on are a `Passphrase`.
 */
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { CancelledError, InvalidArgumentError, PassphraseMismatchError, WrongPassphraseError } from '../errors.js';
import { Passphrase } from '../secret.js';

/** cryptsetup's default for --tries. */
export const DEFAULT_TRIES = 3;

/** Longest interactive passphrase cryptsetup reads (DEFAULT_PASSPHRASE_SIZE_MAX). */
const MAX_TERMINAL_BYTES = 512;

export interface TerminalStreams {
  input: NodeJS.ReadableStream & { isTTY?: boolean };
  output: NodeJS.WritableStream;
}

function defaultStreams(): TerminalStreams {
  return { input: process.stdin, output: process.stderr };
}

/** True when standard input is a terminal: the only case brickcrypt prompts in. */
export function stdinIsTerminal(streams: TerminalStreams = defaultStreams()): boolean {
  return streams.input.isTTY === true;
}

/** Reads one line without echo. Ctrl-C is a `CancelledError`, end of input an `InvalidArgumentError`. */
async function readHiddenLine(prompt: string, streams: TerminalStreams): Promise<string> {
  const silent = new Writable({ write: (_chunk, _enc, done) => done() });
  // The terminal is in raw mode (no echo) from here on: only then is the prompt shown, so
  // nothing typed after it can be echoed.
  const rl = createInterface({ input: streams.input, output: silent, terminal: true, historySize: 0 });
  streams.output.write(prompt);
  try {
    return await new Promise<string>((resolve, reject) => {
      rl.once('line', resolve);
      rl.once('SIGINT', () => reject(new CancelledError('Passphrase entry interrupted.')));
      rl.once('close', () => reject(new InvalidArgumentError('Error reading passphrase from terminal (end of input).')));
    });
  } finally {
    rl.close();
    streams.output.write('\n');
  }
}

/**
 * Asks for a passphrase at the terminal. With `verify` it is asked twice and the two must
 * match (`PassphraseMismatchError` otherwise, exit 2 as cryptsetup's -EPERM).
 */
export async function promptPassphrase(prompt: string, options: { verify?: boolean; streams?: TerminalStreams } = {}): Promise<Passphrase> {
  const streams = options.streams ?? defaultStreams();
  if (!stdinIsTerminal(streams)) throw new InvalidArgumentError('Standard input is not a terminal: cannot ask for a passphrase.');
  const first = await readHiddenLine(prompt, streams);
  if (options.verify) {
    const second = await readHiddenLine('Verify passphrase: ', streams);
    if (first !== second) throw new PassphraseMismatchError('Passphrases do not match.');
  }
  const bytes = Buffer.from(first, 'utf8');
  if (bytes.length > MAX_TERMINAL_BYTES) {
    bytes.fill(0);
    throw new InvalidArgumentError(`The passphrase is longer than ${MAX_TERMINAL_BYTES} bytes, the most cryptsetup reads from a terminal.`);
  }
  const pass = Passphrase.copyOf(bytes);
  bytes.fill(0);
  return pass;
}

/** Where a command's passphrase comes from: `read` gives a new one each call. */
export interface PassphraseInput {
  /** Typed at a terminal: a wrong one may be asked again. */
  interactive: boolean;
  read(): Promise<Passphrase>;
}

/**
 * Runs `use` with a passphrase from `input`; when the input is interactive, a
 * `WrongPassphraseError` asks again, up to `tries` times in all (cryptsetup's --tries). Every
 * passphrase is wiped after its try.
 */
export async function withPassphraseTries<T>(
  input: PassphraseInput,
  use: (passphrase: Passphrase) => Promise<T>,
  options: { tries?: number; output?: NodeJS.WritableStream } = {},
): Promise<T> {
  const tries = input.interactive ? Math.max(1, options.tries ?? DEFAULT_TRIES) : 1;
  for (let attempt = 1; ; attempt++) {
    const passphrase = await input.read();
    try {
      return await use(passphrase);
    } catch (err) {
      if (!(err instanceof WrongPassphraseError) || attempt >= tries) throw err;
      (options.output ?? process.stderr).write('No key available with this passphrase.\n');
    } finally {
      passphrase.wipe();
    }
  }
}
