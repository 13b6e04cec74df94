/**
 * Keys of a reencryption: opening the old and new volume keys from passphrases (per digest),
 * sealing new keyslots for the new key, the LUKS2 digests of the new key and of the
 * reencryption state (cryptsetup's LUKS2_digest_create "pbkdf2": sha256, 32-byte salt,
 * iterations as for a volume-key digest).
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../../block-device.js';
import { CorruptHeaderError, InvalidArgumentError, UnsupportedError, WrongPassphraseError } from '../../errors.js';
import type { Luks2Digest, Luks2Metadata, Luks2Segment } from '../../formats/luks2/metadata.js';
import { reencryptVerificationData, type ReencryptState } from '../../formats/luks2/reencrypt-state.js';
import type { Passphrase, VolumeKey } from '../../secret.js';
import { pbkdf2Digest } from '../keyslot-crypto.js';
import { luks2DigestMatches, luks2DigestOfKeyslot, openLuks2Keyslot } from '../keyslot-store.js';
import { digestIterations } from '../kdf-choice.js';
import type { KdfOptions } from '../options.js';

/** A keyslot a passphrase opened. */
export interface OpenedKeyslot {
  id: string;
  digestId: string;
  /** Index into the passphrases given. */
  passphrase: number;
}

/**
 * Tries each passphrase on each LUKS2 keyslot (restricted to `keyslotIds` when given) and
 * returns the keys by digest id plus the keyslots opened. With `stopWhen`, stops trying once
 * it returns true (each try costs a KDF run). The caller wipes the keys.
 */
export async function openKeys(
  header: BlockDevice,
  meta: Luks2Metadata,
  passphrases: Passphrase[],
  options: { keyslotIds?: string[]; stopWhen?: (keys: Map<string, VolumeKey>) => boolean } = {},
): Promise<{ keys: Map<string, VolumeKey>; opened: OpenedKeyslot[] }> {
  const keys = new Map<string, VolumeKey>();
  const opened: OpenedKeyslot[] = [];
  const ids = Object.keys(meta.keyslots)
    .filter((id) => meta.keyslots[id]!.type === 'luks2' && (options.keyslotIds === undefined || options.keyslotIds.includes(id)))
    .sort((a, b) => Number(a) - Number(b));
  try {
    for (const id of ids) {
      if (options.stopWhen?.(keys)) break;
      const digestId = luks2DigestOfKeyslot(meta, id)?.[0];
      if (digestId === undefined) continue;
      for (let p = 0; p < passphrases.length; p++) {
        const key = await openLuks2Keyslot(header, meta, id, passphrases[p]!);
        if (!key) continue;
        opened.push({ id, digestId, passphrase: p });
        if (keys.has(digestId)) key.wipe();
        else keys.set(digestId, key);
        break;
      }
    }
  } catch (err) {
    for (const k of keys.values()) k.wipe();
    throw err;
  }
  return { keys, opened };
}

/** A pbkdf2 digest object of `data` (keyslots and segments filled in by the caller). */
export async function createDigest(data: Uint8Array, kdf: KdfOptions, keyslots: string[], segments: string[]): Promise<Luks2Digest> {
  const salt = new Uint8Array(randomBytes(32));
  const iterations = await digestIterations(kdf, 'sha256');
  const digest = await pbkdf2Digest('sha256', data, salt, iterations, 32);
  return { type: 'pbkdf2', keyslots, segments, hash: 'sha256', iterations, salt: Buffer.from(salt).toString('base64'), digest: Buffer.from(digest).toString('base64') };
}

/**
 * Checks the reencryption digest against the keys (cryptsetup >= 2.4.3 refuses a state whose
 * digest does not match: the layout or keys were tampered with). Throws `CorruptHeaderError`.
 */
export async function verifyReencryptDigest(meta: Luks2Metadata, state: ReencryptState, keys: { old?: VolumeKey; new?: VolumeKey }): Promise<void> {
  const digest = state.verificationDigestId !== undefined ? meta.digests[state.verificationDigestId] : undefined;
  if (!digest) throw new CorruptHeaderError('LUKS2 reencryption digest is missing.');
  const data = reencryptVerificationData(meta, state, { ...(keys.old ? { old: keys.old.expose() } : {}), ...(keys.new ? { new: keys.new.expose() } : {}) });
  try {
    if (!(await luks2DigestMatches(digest, data))) throw new CorruptHeaderError('LUKS2 reencryption metadata is invalid: its digest does not match (the header was changed).');
  } finally {
    data.fill(0);
  }
}

/** The keys a passphrase must open for a recorded reencryption; WrongPassphraseError when it opens neither. */
export async function openReencryptKeys(header: BlockDevice, meta: Luks2Metadata, state: ReencryptState, passphrases: Passphrase[]): Promise<{ old?: VolumeKey; new?: VolumeKey }> {
  const want = [state.oldDigestId, state.newDigestId].filter((d): d is string => d !== undefined);
  const { keys } = await openKeys(header, meta, passphrases, { stopWhen: (k) => want.every((d) => k.has(d)) });
  const missing = want.filter((d) => !keys.has(d));
  if (missing.length > 0) {
    for (const k of keys.values()) k.wipe();
    if (keys.size === 0) throw new WrongPassphraseError();
    throw new WrongPassphraseError(`The passphrase does not open the ${missing.includes(state.newDigestId!) ? 'new' : 'old'} volume key of the reencryption.`);
  }
  const out: { old?: VolumeKey; new?: VolumeKey } = {};
  if (state.oldDigestId !== undefined) out.old = keys.get(state.oldDigestId)!;
  if (state.newDigestId !== undefined) out.new = keys.get(state.newDigestId)!;
  for (const [d, k] of keys) if (d !== state.oldDigestId && d !== state.newDigestId) k.wipe();
  return out;
}

/**
 * The one dynamic-size crypt segment a reencryption or decryption starts from, its digest, and
 * the keyslots to open: every keyslot of that key, or only `keyslot`. Refuses other layouts
 * (several or flagged segments, a fixed size) before anything is written.
 */
export function startSegment(meta: Luks2Metadata, keyslot: number | undefined, what: 'Reencryption' | 'Decryption'): { segId: string; segment: Luks2Segment; digestId: string; keyslotIds: string[] } {
  const segIds = Object.keys(meta.segments);
  if (segIds.length !== 1 || meta.segments[segIds[0]!]!.type !== 'crypt') throw new UnsupportedError(`${what} needs a LUKS2 volume with one crypt data segment.`);
  const segId = segIds[0]!;
  const segment = meta.segments[segId]!;
  if (segment.size !== 'dynamic') throw new UnsupportedError(`${what} of a LUKS2 segment with a fixed size is not supported.`);
  if (segment.flags && segment.flags.length > 0) throw new UnsupportedError(`The data segment carries flags (${segment.flags.join(', ')}).`);
  const digestId = Object.keys(meta.digests).find((d) => meta.digests[d]!.segments.includes(segId));
  if (digestId === undefined) throw new CorruptHeaderError('LUKS2 data segment has no digest.');
  const bound = meta.digests[digestId]!.keyslots.filter((k) => meta.keyslots[k]?.type === 'luks2');
  if (keyslot === undefined) return { segId, segment, digestId, keyslotIds: bound };
  if (!bound.includes(String(keyslot))) throw new InvalidArgumentError(`Keyslot ${keyslot} does not hold the volume key.`);
  return { segId, segment, digestId, keyslotIds: [String(keyslot)] };
}
