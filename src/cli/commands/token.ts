/**
 * `brickcrypt token add|remove|list`: LUKS2 tokens, after cryptsetup's `token` command.
 * brickcrypt's own token type, `brickcrypt-key-manager`, names a key manager and a key id
 * (never key bytes) so other commands find the key without `--key-id` (src/luks/tokens.ts,
 * docs/luks.md "Tokens"). Tokens of other types are listed and can be removed, never used.
 */
import type { Command } from 'commander';
import { FileDevice } from '../../devices/file-device.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { InvalidArgumentError, WrongPassphraseError } from '../../errors.js';
import { LuksVolume } from '../../luks/volume.js';
import { addKeyManagerToken, listTokens, removeToken, type TokenSummary } from '../../luks/tokens.js';
import { addKeyManagerOptions, KEY_MANAGER_HELP, passphraseFromKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseInteger } from '../parse.js';
import { tokenUriFor } from '../token-key.js';

interface TokenOpts extends KeyManagerCliOptions {
  header?: string;
  keyId?: string;
  keySlot?: string;
  tokenId?: string;
  /** --no-verify: false. */
  verify?: boolean;
  json?: boolean;
}

const TOKEN_HELP = `
A brickcrypt-key-manager token is JSON in the LUKS2 header, e.g.
  {"type":"brickcrypt-key-manager","keyslots":["0"],"key_manager":"local:/srv/keystore.db","key_id":"ID"}
It holds no key bytes and no credentials: a URI with user:password@ is refused, its query
(?ca=, ?token-file=, ...) is not recorded. cryptsetup ignores the token and opens the volume
with the key's os-brick passphrase (lowercase hex of the key bytes) as before.
Commands given no key option (test-key, attach, verify, convert, add-key, ...) use the token:
the token's key id, from --key-manager when given, else the token's key manager; the caller
(--user/--project/--roles/--profile) and TLS options always come from the command line.
Exit codes: 0 ok, 1 usage (LUKS1 volume, bad URI), 2 the key does not open the keyslot or the
caller may not read it, 4 not LUKS / token or keyslot not found / malformed token / JSON area full,
5 token id in use or duplicate, 6 key-manager error (key not found, backend unreachable).`;

/** Opens VOLUME (and --header) and runs `fn`; writers hold the volume's lock, as the LUKS commands. */
async function withVolume<T>(path: string, o: TokenOpts, readOnly: boolean, fn: (volume: LuksVolume) => Promise<T>): Promise<T> {
  const lock = readOnly ? undefined : await VolumeLock.acquire(path);
  try {
    const data = await FileDevice.open(path, { readOnly });
    let header: FileDevice | undefined;
    try {
      if (o.header !== undefined) header = await FileDevice.open(o.header, { readOnly });
      const volume = await LuksVolume.open(data, { readOnly, ...(header ? { headerDevice: header } : {}), ...(readOnly ? { headerOnly: true } : {}) });
      return await fn(volume);
    } finally {
      await header?.close();
      await data.close();
    }
  } finally {
    await lock?.release();
  }
}

function describe(t: TokenSummary): string {
  const lines = [`  ${t.id}: ${t.type}`, `\tKeyslot:     ${t.keyslots.length > 0 ? t.keyslots.join(', ') : '(none)'}`];
  if (t.keyId !== undefined) lines.push(`\tKey id:      ${t.keyId}`);
  if (t.keyManager !== undefined) lines.push(`\tKey manager: ${t.keyManager}`);
  if (t.problem !== undefined) lines.push(`\tUnusable:    ${t.problem}`);
  return lines.join('\n');
}

export function register(program: Command): void {
  const token = program
    .command('token')
    .description('Manage LUKS2 tokens (cryptsetup token): record where a volume\'s managed key lives.')
    .addHelpText('after', `
Examples:
  brickcrypt token add vol.img --key-id ID --key-manager barbican+https://kms:9311
  brickcrypt token list vol.img --json
  brickcrypt token remove vol.img --token-id 0
${TOKEN_HELP}`);

  const add = token
    .command('add')
    .description('Add a brickcrypt-key-manager token naming managed key ID (checked to open the volume first).')
    .argument('<volume>', 'LUKS2 file or block device')
    .requiredOption('--key-id <id>', 'the managed key whose LUKS passphrase opens the keyslot')
    .option('--key-slot <n>', 'the keyslot the key opens (default: found by unlocking with the key)')
    .option('--token-id <n>', 'token number (default: the first free one)')
    .option('--no-verify', 'do not fetch the key and unlock with it (needs --key-slot): for a caller that may not read the key')
    .option('--header <file>', 'detached LUKS2 header');
  addKeyManagerOptions(add, { help: false });
  add
    .addHelpText('after', `
The token records --key-manager (default $BRICKCRYPT_KEY_MANAGER, else the local keystore) as
local:/absolute/path, barbican+https://HOST:PORT[/PATH] or kmip://HOST:PORT.
Examples:
  brickcrypt token add vol.img --key-id 3f1c0e0a-...               (keyslot found with the key)
  brickcrypt token add vol.img --key-id ID --key-slot 1 --no-verify --roles creator
${TOKEN_HELP}
${KEY_MANAGER_HELP}`)
    .action(async (path: string, o: TokenOpts) => {
      const keyId = o.keyId!;
      const wantedSlot = o.keySlot !== undefined ? parseInteger(o.keySlot, 'key-slot', 0, 31) : undefined;
      const tokenId = o.tokenId !== undefined ? parseInteger(o.tokenId, 'token-id', 0, 31) : undefined;
      if (o.verify === false && wantedSlot === undefined) throw new InvalidArgumentError('--no-verify needs --key-slot N (the keyslot cannot be found without the key).');
      const uri = await tokenUriFor(o);
      // The key must open the volume: a token naming a key that opens nothing would only mislead.
      const passphrase = o.verify !== false ? await passphraseFromKeyManager(o, keyId) : undefined;
      try {
        const { id, slot } = await withVolume(path, o, false, async (volume) => {
          if (volume.version !== 2) throw new InvalidArgumentError('LUKS1 headers have no tokens: open a LUKS1 volume with --key-id ID.');
          let slot = wantedSlot;
          if (passphrase) {
            try {
              const r = await volume.unlock(passphrase, wantedSlot !== undefined ? { keyslot: wantedSlot } : {});
              r.key.wipe();
              slot = r.keyslot;
            } catch (err) {
              if (!(err instanceof WrongPassphraseError)) throw err;
              throw new WrongPassphraseError(`Key ${keyId} opens ${wantedSlot !== undefined ? `keyslot ${wantedSlot}` : 'no keyslot'} of ${path}; no token was added.`);
            }
          }
          const id = await addKeyManagerToken(volume, { keyslots: [slot!], keyManager: uri, keyId }, tokenId !== undefined ? { tokenId } : {});
          return { id, slot: slot! };
        });
        process.stdout.write(`Token ${id} created: key ${keyId} in ${uri} opens keyslot ${slot}.\n`);
      } finally {
        passphrase?.wipe();
      }
    });

  token
    .command('remove')
    .description('Remove a token of any type (cryptsetup token remove). Keyslots are not touched.')
    .argument('<volume>', 'LUKS2 file or block device')
    .requiredOption('--token-id <n>', 'token number (see token list)')
    .option('--header <file>', 'detached LUKS2 header')
    .addHelpText('after', `\nExample:\n  brickcrypt token remove vol.img --token-id 0\n${TOKEN_HELP}`)
    .action(async (path: string, o: TokenOpts) => {
      const id = parseInteger(o.tokenId!, 'token-id', 0, 31);
      const removed = await withVolume(path, o, false, (volume) => removeToken(volume, id));
      process.stdout.write(`Token ${id} (${String(removed.type)}) removed.\n`);
    });

  token
    .command('list')
    .description('List the tokens of a LUKS2 volume; brickcrypt-key-manager tokens are decoded and checked.')
    .argument('<volume>', 'LUKS file or block device (LUKS1: none)')
    .option('--json', 'print a JSON array: {id, type, keyslots, keyManager?, keyId?, problem?}')
    .option('--header <file>', 'detached LUKS2 header')
    .addHelpText('after', `\nExamples:\n  brickcrypt token list vol.img\n  brickcrypt token list vol.img --json | jq -r '.[0].keyId'\n${TOKEN_HELP}`)
    .action(async (path: string, o: TokenOpts) => {
      const tokens = await withVolume(path, o, true, async (volume) => listTokens(volume));
      if (o.json) process.stdout.write(JSON.stringify(tokens, null, 2) + '\n');
      else process.stdout.write(tokens.length === 0 ? 'No tokens.\n' : `Tokens:\n${tokens.map(describe).join('\n')}\n`);
    });
}
