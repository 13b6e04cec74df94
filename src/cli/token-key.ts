/**
 * Finding a volume's key through its `brickcrypt-key-manager` token on the command line.
 *
 * Precedence (docs/luks.md "Tokens"), strongest first:
 * 1. a key option given on the command line (`--key-file`, `--key-id`, `--src-key-id`, ...):
 *    the token is not read at all;
 * 2. the token's key id, fetched from `--key-manager` when given (the operator's explicit
 *    choice: e.g. the keystore moved), else from the token's `key_manager`, else from
 *    `$BRICKCRYPT_KEY_MANAGER` or the local keystore; the caller identity and TLS options
 *    always come from the command line, never from the volume;
 * 3. with neither, a prompt on a terminal (src/cli/passphrase-prompt.ts) or a usage error.
 */
import { FileDevice } from '../devices/file-device.js';
import { InvalidArgumentError } from '../errors.js';
import { LuksVolume } from '../luks/volume.js';
import { hasKeyManagerToken, keyFromTokens, type TokenKeyResolver, type TokenSource } from '../luks/tokens.js';
import type { Passphrase } from '../secret.js';
import { passphraseFromKeyManager, type KeyManagerCliOptions } from './key-manager-options.js';
import type { PassphraseInput } from './passphrase-prompt.js';

/**
 * Resolves a token's key reference with the command line's key-manager options:
 * `--key-manager` beats the token's URI, which beats the default.
 */
export function tokenKeyResolver(o: KeyManagerCliOptions): TokenKeyResolver {
  return ({ keyManager, keyId }) => passphraseFromKeyManager(o.keyManager === undefined && keyManager !== undefined ? { ...o, keyManager } : o, keyId);
}

/**
 * A snapshot of the tokens and keyslots of the LUKS2 volume at `path` (header at `header`
 * when detached), or undefined when it is no readable LUKS2 volume or has no
 * brickcrypt-key-manager token; the normal key path then reports whatever is wrong.
 */
export async function readVolumeTokens(path: string, header?: string): Promise<TokenSource | undefined> {
  let data: FileDevice | undefined;
  let hdr: FileDevice | undefined;
  try {
    data = await FileDevice.open(path, { readOnly: true });
    if (header !== undefined) hdr = await FileDevice.open(header, { readOnly: true });
    const volume = await LuksVolume.open(data, { readOnly: true, headerOnly: true, ...(hdr ? { headerDevice: hdr } : {}) });
    if (!hasKeyManagerToken(volume)) return undefined;
    const tokens = volume.tokens();
    const keyslots = volume.keyslots();
    return { tokens: () => structuredClone(tokens), keyslots: () => keyslots.map((k) => ({ ...k })) };
  } catch {
    return undefined;
  } finally {
    await hdr?.close().catch(() => undefined);
    await data?.close().catch(() => undefined);
  }
}

/** Reads the passphrase through the tokens of `source`; passed-over tokens are reported on stderr. */
export async function passphraseFromTokens(source: TokenSource, o: KeyManagerCliOptions, path: string): Promise<Passphrase> {
  const found = await keyFromTokens(source, tokenKeyResolver(o), {
    onSkip: (id, reason) => process.stderr.write(`brickcrypt: ${path}: token ${id} not used: ${reason.message}\n`),
  });
  if (!found) throw new InvalidArgumentError(`${path} has no ${'brickcrypt-key-manager'} token.`);
  return found.passphrase;
}

/**
 * The passphrase input a volume's token gives, or undefined when it has none (the caller
 * falls back to a prompt or a "no key source" error). Call it only when no key option was given.
 */
export async function tokenPassphraseInput(path: string, o: KeyManagerCliOptions, header?: string): Promise<PassphraseInput | undefined> {
  const source = await readVolumeTokens(path, header);
  if (!source) return undefined;
  return { interactive: false, read: () => passphraseFromTokens(source, o, path) };
}

/** The key-manager URI a token records for the effective --key-manager (credentials refused, query dropped). */
export async function tokenUriFor(o: KeyManagerCliOptions): Promise<string> {
  const { keyManagerUriForToken } = await import('../keys/token-uri.js');
  const { defaultKeyManagerUri } = await import('../keys/open-key-manager.js');
  const { uri, dropped } = keyManagerUriForToken(o.keyManager ?? defaultKeyManagerUri());
  if (dropped.length > 0) {
    process.stderr.write(`brickcrypt: the token records ${uri} without its query (${dropped.join(', ')}): give the TLS and token-file options where the volume is opened.\n`);
  }
  return uri;
}
