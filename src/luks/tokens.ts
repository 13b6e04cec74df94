/**
 * Volumes that know their key: LUKS2 tokens of type `brickcrypt-key-manager` (shape in
 * src/formats/luks2/key-manager-token.ts, rules in docs/luks.md "Tokens"). A token names a
 * key manager and a key id, never key bytes; `keyFromTokens` turns it back into the LUKS
 * passphrase through a resolver the caller supplies, so this module (below the key
 * managers) opens no key manager itself.
 *
 * Tokens of any other type are listed and can be removed, but are never interpreted, as
 * cryptsetup ignores token types it has no handler for.
 *
 * @example
 * const id = await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'local:/srv/ks.db', keyId });
 * const found = await keyFromTokens(volume, async ({ keyManager, keyId }) => passphraseOf(keyManager, keyId));
 * if (found) { const r = await volume.unlock(found.passphrase); found.passphrase.wipe(); ... }
 */
import { AlreadyExistsError, BrickcryptError, InvalidArgumentError, KeyslotNotFoundError, KeyslotUnavailableError, WrongPassphraseError } from '../errors.js';
import { LUKS2_LIMITS, type Luks2Token } from '../formats/luks2/metadata.js';
import {
  decodeKeyManagerToken,
  encodeKeyManagerToken,
  isKeyManagerToken,
  type KeyManagerToken,
  type KeyManagerTokenFields,
} from '../formats/luks2/key-manager-token.js';
import type { Passphrase } from '../secret.js';
import type { LuksVolume, UnlockResult } from './volume.js';

export { KEY_MANAGER_TOKEN_TYPE, type KeyManagerToken, type KeyManagerTokenFields } from '../formats/luks2/key-manager-token.js';

/** What a token lookup needs of a volume (a `LuksVolume`, or a snapshot of its header). */
export type TokenSource = Pick<LuksVolume, 'tokens' | 'keyslots'>;

/** One token as `token list` shows it. */
export interface TokenSummary {
  id: number;
  type: string;
  keyslots: string[];
  /** brickcrypt-key-manager tokens: the decoded fields. */
  keyManager?: string;
  keyId?: string;
  /** brickcrypt-key-manager tokens that cannot be used: why (malformed, keyslot removed). */
  problem?: string;
}

/** Every token of the volume in id order, brickcrypt ones decoded (never throws for a bad one). */
export function listTokens(volume: TokenSource): TokenSummary[] {
  const active = new Set(volume.keyslots().map((k) => k.id));
  return Object.entries(volume.tokens())
    .map(([id, raw]): TokenSummary => {
      const summary: TokenSummary = { id: Number(id), type: String(raw.type), keyslots: Array.isArray(raw.keyslots) ? raw.keyslots.map(String) : [] };
      if (!isKeyManagerToken(raw)) return summary;
      try {
        const t = decodeKeyManagerToken(id, raw);
        if (t.keyManager !== undefined) summary.keyManager = t.keyManager;
        summary.keyId = t.keyId;
        const problem = keyslotProblem(t, active);
        if (problem) summary.problem = problem;
      } catch (err) {
        if (!(err instanceof BrickcryptError)) throw err;
        summary.problem = err.message;
      }
      return summary;
    })
    .sort((a, b) => a.id - b.id);
}

function keyslotProblem(t: KeyManagerToken, active: Set<number>): string | undefined {
  if (t.keyslots.length === 0) return `Token ${t.id} (key ${t.keyId}) is assigned to no keyslot: its keyslot was removed.`;
  const gone = t.keyslots.filter((k) => !active.has(k));
  if (gone.length === t.keyslots.length) return `Token ${t.id} (key ${t.keyId}) names keyslot ${gone.join(', ')}, which no longer exists.`;
  return undefined;
}

/** One brickcrypt-key-manager token of a volume: decoded, or the typed error saying why it cannot be used. */
export type KeyManagerTokenEntry = { id: number; token: KeyManagerToken; error?: undefined } | { id: number; token?: undefined; error: BrickcryptError };

/**
 * The volume's brickcrypt-key-manager tokens in id order, each decoded or, when it cannot
 * be used, with the typed error saying why (`MalformedTokenError`; `KeyslotNotFoundError` for
 * a token whose keyslots were removed).
 */
export function keyManagerTokens(volume: TokenSource): KeyManagerTokenEntry[] {
  const active = new Set(volume.keyslots().map((k) => k.id));
  return Object.entries(volume.tokens())
    .filter(([, raw]) => isKeyManagerToken(raw))
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([id, raw]): KeyManagerTokenEntry => {
      try {
        const token = decodeKeyManagerToken(id, raw);
        const problem = keyslotProblem(token, active);
        return problem ? { id: token.id, error: new KeyslotNotFoundError(problem) } : { id: token.id, token };
      } catch (err) {
        if (err instanceof BrickcryptError) return { id: Number(id), error: err };
        throw err;
      }
    });
}

/** True when the volume carries at least one brickcrypt-key-manager token (usable or not). */
export function hasKeyManagerToken(volume: TokenSource): boolean {
  return Object.values(volume.tokens()).some((raw) => isKeyManagerToken(raw));
}

/**
 * Adds a brickcrypt-key-manager token (cryptsetup `token import` with our type) and writes the
 * header. The keyslots must be active; `tokenId` defaults to the first free number. A token
 * with the same key manager, key id and keyslots is refused (`AlreadyExistsError`).
 * @returns the token id
 */
export async function addKeyManagerToken(volume: LuksVolume, fields: KeyManagerTokenFields, options: { tokenId?: number } = {}): Promise<number> {
  if (volume.version !== 2) throw new InvalidArgumentError('LUKS1 headers have no tokens: open a LUKS1 volume with --key-id ID, or convert its header to LUKS2.');
  const raw = encodeKeyManagerToken(fields);
  if (fields.keyslots.length === 0) throw new InvalidArgumentError('A token needs at least one keyslot.');
  const active = new Set(volume.keyslots().map((k) => k.id));
  for (const k of fields.keyslots) if (!active.has(k)) throw new KeyslotNotFoundError(`Keyslot ${k} is not active.`);
  const existing = volume.tokens();
  for (const { token: t } of keyManagerTokens(volume)) {
    if (!t) continue;
    if (t.keyId === fields.keyId && t.keyManager === fields.keyManager && [...t.keyslots].sort().join() === [...fields.keyslots].sort().join()) {
      throw new AlreadyExistsError(`Token ${t.id} already names key ${fields.keyId} for keyslot ${t.keyslots.join(', ')}.`);
    }
  }
  let id = options.tokenId;
  if (id !== undefined) {
    if (!Number.isInteger(id) || id < 0 || id >= LUKS2_LIMITS.tokens) throw new InvalidArgumentError(`Token ${id} is out of range 0..${LUKS2_LIMITS.tokens - 1}.`);
    if (String(id) in existing) throw new KeyslotUnavailableError(`Token ${id} is in use.`);
  } else {
    id = [...Array(LUKS2_LIMITS.tokens).keys()].find((i) => !(String(i) in existing));
    if (id === undefined) throw new KeyslotUnavailableError(`All ${LUKS2_LIMITS.tokens} token slots are in use.`);
  }
  await volume.writeToken(id, raw);
  return id;
}

/** Removes token `id` of any type (cryptsetup `token remove`). `KeyslotNotFoundError` when there is none. */
export async function removeToken(volume: LuksVolume, id: number): Promise<Luks2Token> {
  const existing = volume.tokens()[String(id)];
  if (volume.version !== 2 || existing === undefined) throw new KeyslotNotFoundError(`Token ${id} does not exist.`);
  await volume.writeToken(id, undefined);
  return existing;
}

/**
 * Turns a token's key reference into the key's LUKS passphrase (the caller opens the key
 * manager: `keyManager` is the token's URI, or undefined when the token names none).
 * Errors are the key manager's own (`KeyNotFoundError` for a key that is gone).
 */
export type TokenKeyResolver = (reference: { tokenId: number; keyManager: string | undefined; keyId: string }) => Promise<Passphrase>;

export interface TokenLookupOptions {
  /** Told of each token that was passed over, with the reason, before the next is tried. */
  onSkip?: (tokenId: number, reason: BrickcryptError) => void;
}

/** A passphrase found through a token (the caller wipes it). */
export interface TokenKey {
  passphrase: Passphrase;
  token: KeyManagerToken;
}

/**
 * The LUKS passphrase of the first brickcrypt-key-manager token (in id order) whose key the
 * resolver can fetch; undefined when the volume has no such token, so the caller falls back
 * to its other key sources (a prompt). A token that cannot be used - malformed, keyslots
 * removed, key not found - is passed over; when none works, the first token's error is thrown.
 * The passphrase is not tried here: unlocking costs a KDF run, and the caller unlocks anyway.
 */
export async function keyFromTokens(volume: TokenSource, resolve: TokenKeyResolver, options: TokenLookupOptions = {}): Promise<TokenKey | undefined> {
  const tokens = keyManagerTokens(volume);
  if (tokens.length === 0) return undefined;
  let first: BrickcryptError | undefined;
  for (const { id, token: t, error } of tokens) {
    let reason: BrickcryptError;
    if (!t) reason = error;
    else {
      try {
        return { passphrase: await resolve({ tokenId: t.id, keyManager: t.keyManager, keyId: t.keyId }), token: t };
      } catch (err) {
        if (!(err instanceof BrickcryptError)) throw err;
        reason = err;
      }
    }
    first ??= reason;
    options.onSkip?.(id, reason);
  }
  throw first!;
}

/**
 * Unlocks the volume with its tokens: each usable token's key is tried on that token's own
 * keyslots only (the token says which keyslot its key opens). Undefined when the volume has
 * no brickcrypt-key-manager token; otherwise the first success, or the first error
 * (`WrongPassphraseError` when a fetched key opens none of its keyslots).
 */
export async function unlockWithTokens(
  volume: LuksVolume,
  resolve: TokenKeyResolver,
  options: TokenLookupOptions & { forWrite?: boolean } = {},
): Promise<(UnlockResult & { token: KeyManagerToken }) | undefined> {
  const tokens = keyManagerTokens(volume);
  if (tokens.length === 0) return undefined;
  const active = new Set(volume.keyslots().map((k) => k.id));
  let first: BrickcryptError | undefined;
  for (const { id, token: t, error } of tokens) {
    let reason: BrickcryptError;
    if (!t) reason = error;
    else {
      let passphrase: Passphrase | undefined;
      try {
        passphrase = await resolve({ tokenId: t.id, keyManager: t.keyManager, keyId: t.keyId });
        for (const keyslot of t.keyslots.filter((k) => active.has(k))) {
          try {
            const r = await volume.unlock(passphrase, { keyslot, ...(options.forWrite !== undefined ? { forWrite: options.forWrite } : {}) });
            return { ...r, token: t };
          } catch (err) {
            if (!(err instanceof WrongPassphraseError)) throw err;
          }
        }
        reason = new WrongPassphraseError(`The key of token ${t.id} (${t.keyId}) opens none of its keyslots (${t.keyslots.join(', ')}).`);
      } catch (err) {
        if (!(err instanceof BrickcryptError)) throw err;
        reason = err;
      } finally {
        passphrase?.wipe();
      }
    }
    first ??= reason;
    options.onSkip?.(id, reason);
  }
  throw first!;
}
