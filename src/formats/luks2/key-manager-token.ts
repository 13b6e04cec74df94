/**
 * The `brickcrypt-key-manager` LUKS2 token: where a volume's key lives, never the key.
 *
 * A LUKS2 token is a JSON object in the header's `tokens` section with a `type`, a
 * `keyslots` array of keyslot id strings, and any fields the type defines (LUKS2 On-Disk
 * Format Specification, section 3.3; cryptsetup `token import/export`). This type adds:
 *
 * | field         | JSON type | meaning                                                         |
 * |---------------|-----------|-----------------------------------------------------------------|
 * | `type`        | string    | always `"brickcrypt-key-manager"`                               |
 * | `keyslots`    | string[]  | keyslots the key's LUKS passphrase opens (empty once removed)   |
 * | `key_manager` | string    | optional: key-manager URI without credentials or query          |
 * | `key_id`      | string    | the managed object's id in that key manager                     |
 *
 * e.g. `{"type":"brickcrypt-key-manager","keyslots":["0"],"key_manager":"local:/srv/keystore.db","key_id":"4f0c..."}`
 *
 * Nothing here is secret: a header is readable by anyone who can read the volume and is
 * copied into every header backup, so a URI with a user name or password (`user:pw@host`),
 * or with a query (local file paths of one host: `?ca=`, `?token-file=`) is malformed.
 * Other fields are kept on rewrite and ignored on read (room for later versions), as
 * cryptsetup ignores token types it has no handler for.
 *
 * Pure: no I/O. The volume side is src/luks/tokens.ts.
 *
 * @example
 * const raw = encodeKeyManagerToken({ keyslots: [0], keyManager: 'local:/srv/ks.db', keyId: 'abc' });
 * decodeKeyManagerToken('0', raw) // { id: 0, keyslots: [0], keyManager: 'local:/srv/ks.db', keyId: 'abc' }
 */
import { InvalidArgumentError, MalformedTokenError } from '../../errors.js';
import { LUKS2_LIMITS, isObject, type Luks2Token } from './metadata.js';

export const KEY_MANAGER_TOKEN_TYPE = 'brickcrypt-key-manager';

/** Longest key id and URI accepted (the whole JSON area is 12 KiB by default). */
export const KEY_MANAGER_TOKEN_MAX_FIELD = 1024;

export interface KeyManagerTokenFields {
  /** Keyslot numbers the key opens. */
  keyslots: number[];
  /** Key-manager URI (absent: the key manager configured where the volume is opened). */
  keyManager?: string;
  /** Managed object id. */
  keyId: string;
}

export interface KeyManagerToken extends KeyManagerTokenFields {
  /** Token number in the header (0..31). */
  id: number;
}

// Control characters would garble luksDump output and terminals.
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Why `uri` may not be recorded in a token, or undefined when it may. `local:` and `memory:`
 * name a file or nothing; every URL form must be scheme://host[:port][/path] only.
 */
export function tokenUriProblem(uri: string): string | undefined {
  if (uri.length === 0 || uri.length > KEY_MANAGER_TOKEN_MAX_FIELD) return `must be 1..${KEY_MANAGER_TOKEN_MAX_FIELD} characters`;
  if (CONTROL.test(uri)) return 'contains control characters';
  if (uri === 'memory:' || uri === 'memory' || uri === 'local' || uri.startsWith('local:')) return undefined;
  let url: URL;
  try {
    url = new URL(uri.replace(/^barbican\+/, ''));
  } catch {
    return 'is not a URI';
  }
  if (url.username !== '' || url.password !== '') return 'carries a user name or password (credentials never go into a LUKS header)';
  if (url.search !== '' || url.hash !== '' || uri.includes('?') || uri.includes('#')) {
    return 'carries a query or fragment (TLS files, token files and tuning belong on the command line of the host opening the volume)';
  }
  return undefined;
}

function fieldProblem(value: unknown, name: string): string | undefined {
  if (typeof value !== 'string' || value.length === 0) return `${name} must be a non-empty string`;
  if (value.length > KEY_MANAGER_TOKEN_MAX_FIELD) return `${name} is longer than ${KEY_MANAGER_TOKEN_MAX_FIELD} characters`;
  if (CONTROL.test(value)) return `${name} contains control characters`;
  return undefined;
}

function keyslotNumbers(value: unknown): number[] | string {
  if (!Array.isArray(value)) return 'keyslots must be an array of keyslot id strings';
  const out: number[] = [];
  for (const k of value) {
    if (typeof k !== 'string' || !/^(0|[1-9][0-9]?)$/.test(k) || Number(k) >= LUKS2_LIMITS.keyslots) return `keyslot '${String(k)}' is not a keyslot id`;
    if (out.includes(Number(k))) return `keyslot ${k} is listed twice`;
    out.push(Number(k));
  }
  return out;
}

/** True for a token of this type (its shape is checked by `decodeKeyManagerToken`). */
export function isKeyManagerToken(raw: unknown): boolean {
  return isObject(raw) && raw.type === KEY_MANAGER_TOKEN_TYPE;
}

/**
 * Validates and decodes token `id` (its key in the `tokens` section). Throws
 * `MalformedTokenError` for a token of this type that breaks the table above.
 */
export function decodeKeyManagerToken(id: string, raw: unknown): KeyManagerToken {
  const bad = (why: string) => new MalformedTokenError(`Token ${id} (${KEY_MANAGER_TOKEN_TYPE}) is malformed: ${why}.`);
  if (!/^(0|[1-9][0-9]?)$/.test(id) || Number(id) >= LUKS2_LIMITS.tokens) throw bad('its id is not a token number');
  if (!isObject(raw) || raw.type !== KEY_MANAGER_TOKEN_TYPE) throw bad(`its type is not ${KEY_MANAGER_TOKEN_TYPE}`);
  const keyslots = keyslotNumbers(raw.keyslots);
  if (typeof keyslots === 'string') throw bad(keyslots);
  const idProblem = fieldProblem(raw.key_id, 'key_id');
  if (idProblem) throw bad(idProblem);
  const token: KeyManagerToken = { id: Number(id), keyslots, keyId: raw.key_id as string };
  if (raw.key_manager !== undefined) {
    const p = fieldProblem(raw.key_manager, 'key_manager') ?? tokenUriProblem(raw.key_manager as string);
    if (p) throw bad(`key_manager ${p}`);
    token.keyManager = raw.key_manager as string;
  }
  return token;
}

/** The token's JSON object. Throws `InvalidArgumentError` for fields that would make it malformed. */
export function encodeKeyManagerToken(fields: KeyManagerTokenFields): Luks2Token {
  const idProblem = fieldProblem(fields.keyId, 'key id');
  if (idProblem) throw new InvalidArgumentError(`Token: the ${idProblem}.`);
  if (fields.keyManager !== undefined) {
    const p = fieldProblem(fields.keyManager, 'key-manager URI') ?? tokenUriProblem(fields.keyManager);
    if (p) throw new InvalidArgumentError(`Token: the key-manager URI ${p}.`);
  }
  const keyslots = keyslotNumbers(fields.keyslots.map(String));
  if (typeof keyslots === 'string') throw new InvalidArgumentError(`Token: ${keyslots}.`);
  const token: Luks2Token = { type: KEY_MANAGER_TOKEN_TYPE, keyslots: keyslots.map(String) };
  if (fields.keyManager !== undefined) token.key_manager = fields.keyManager;
  token.key_id = fields.keyId;
  return token;
}
