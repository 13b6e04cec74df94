/**
 * brickcrypt-key-manager tokens in the library: the token JSON (encode, decode, malformed
 * shapes, URIs without credentials), header writes (both copies, seqid bump, refusals that
 * leave the header unchanged) and finding the key through a key manager.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { LuksVolume, type FormatOptions } from '../../src/luks/index.js';
import {
  addKeyManagerToken,
  hasKeyManagerToken,
  keyFromTokens,
  keyManagerTokens,
  listTokens,
  removeToken,
  unlockWithTokens,
  type TokenKeyResolver,
} from '../../src/luks/tokens.js';
import { decodeKeyManagerToken, encodeKeyManagerToken, tokenUriProblem, KEY_MANAGER_TOKEN_TYPE } from '../../src/formats/luks2/key-manager-token.js';
import { keyManagerUriForToken } from '../../src/keys/token-uri.js';
import { readLuks2Copy } from '../../src/luks/luks2-io.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import { passphraseForLuks } from '../../src/keys/luks-passphrase.js';
import { Passphrase } from '../../src/secret.js';
import {
  AlreadyExistsError,
  InsufficientSpaceError,
  InvalidArgumentError,
  KeyNotFoundError,
  KeyslotNotFoundError,
  KeyslotUnavailableError,
  MalformedTokenError,
  WrongPassphraseError,
} from '../../src/errors.js';

const MIB = 1024 * 1024;
const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const CALLER = { user: 'u', project: 'p', roles: ['admin'] };

async function snapshot(dev: MemoryDevice, length = 2 * 16384): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await dev.read(b, 0);
  return b;
}

/** A LUKS2 volume whose keyslot 0 opens with a managed key's hex passphrase. */
async function managedVolume(type: 'luks1' | 'luks2' = 'luks2') {
  const km = new MemoryKeyManager();
  const { id, key } = await km.createKey(CALLER, { bitLength: 256 });
  const object = { id, type: 'symmetric' as const, created: '', owner: CALLER, consumers: [], secret: key };
  const dev = new MemoryDevice(3 * MIB);
  const { volume, key: vk } = await LuksVolume.format(dev, { type, passphrase: passphraseForLuks(object), ...FAST, ...(type === 'luks2' ? { dataOffset: MIB } : {}) } as FormatOptions);
  vk.wipe();
  key.wipe();
  const seen: Array<{ keyManager: string | undefined; keyId: string }> = [];
  const resolve: TokenKeyResolver = async ({ keyManager, keyId }) => {
    seen.push({ keyManager, keyId });
    const o = await km.get(CALLER, keyId);
    try {
      return passphraseForLuks(o);
    } finally {
      o.secret.wipe();
    }
  };
  return { km, id, dev, volume, resolve, seen };
}

test('token JSON: encode and decode round-trip; the documented shape, nothing else', () => {
  const raw = encodeKeyManagerToken({ keyslots: [0, 3], keyManager: 'barbican+https://kms.example:9311', keyId: 'abc-1' });
  assert.deepEqual(raw, { type: 'brickcrypt-key-manager', keyslots: ['0', '3'], key_manager: 'barbican+https://kms.example:9311', key_id: 'abc-1' });
  assert.deepEqual(decodeKeyManagerToken('2', raw), { id: 2, keyslots: [0, 3], keyManager: 'barbican+https://kms.example:9311', keyId: 'abc-1' });
  // key_manager is optional; unknown fields are ignored (later versions may add some).
  assert.deepEqual(decodeKeyManagerToken('0', { type: KEY_MANAGER_TOKEN_TYPE, keyslots: [], key_id: 'k', note: 'x' }), { id: 0, keyslots: [], keyId: 'k' });
});

test('malformed brickcrypt tokens are rejected with MalformedTokenError', () => {
  const base = { type: KEY_MANAGER_TOKEN_TYPE, keyslots: ['0'], key_id: 'k' };
  const bad: Array<[string, unknown]> = [
    ['no key_id', { type: KEY_MANAGER_TOKEN_TYPE, keyslots: ['0'] }],
    ['empty key_id', { ...base, key_id: '' }],
    ['numeric key_id', { ...base, key_id: 7 }],
    ['control character', { ...base, key_id: 'a\nb' }],
    ['keyslots not an array', { ...base, keyslots: '0' }],
    ['keyslot not a string', { ...base, keyslots: [0] }],
    ['keyslot out of range', { ...base, keyslots: ['32'] }],
    ['keyslot twice', { ...base, keyslots: ['1', '1'] }],
    ['key_manager not a string', { ...base, key_manager: 5 }],
    ['credentials in the URI', { ...base, key_manager: 'barbican+https://admin:secret@kms:9311' }],
    ['a query in the URI', { ...base, key_manager: 'kmip://kms:5696?key=/etc/client.key' }],
  ];
  for (const [what, raw] of bad) assert.throws(() => decodeKeyManagerToken('0', raw), MalformedTokenError, what);
  assert.throws(() => encodeKeyManagerToken({ keyslots: [0], keyId: 'k', keyManager: 'barbican+http://u:p@h:1' }), InvalidArgumentError);
  assert.throws(() => encodeKeyManagerToken({ keyslots: [0], keyId: '' }), InvalidArgumentError);
});

test('URIs a token may record: credentials refused, query dropped, local paths absolute', () => {
  assert.equal(tokenUriProblem('local:/srv/ks.db'), undefined);
  assert.equal(tokenUriProblem('kmip://kms:5696'), undefined);
  assert.match(tokenUriProblem('barbican+https://u@kms:9311') ?? '', /user name or password/);
  assert.match(tokenUriProblem('barbican+https://kms:9311?token-file=/t') ?? '', /query/);

  assert.deepEqual(keyManagerUriForToken('barbican+https://kms.example:9311/?ca=/etc/ca.pem&token-file=/run/t'), {
    uri: 'barbican+https://kms.example:9311',
    dropped: ['ca', 'token-file'],
  });
  assert.deepEqual(keyManagerUriForToken('kmip://kms:5696?cert=c.pem'), { uri: 'kmip://kms:5696', dropped: ['cert'] });
  assert.throws(() => keyManagerUriForToken('barbican+https://admin:pw@kms:9311'), InvalidArgumentError);
  assert.throws(() => keyManagerUriForToken('kmip://admin:pw@kms:5696'), InvalidArgumentError);
  const local = keyManagerUriForToken('local:relative/ks.db').uri;
  assert.ok(local.startsWith('local:/') && local.endsWith('/relative/ks.db'), local);
  assert.equal(keyManagerUriForToken('local:', { BRICKCRYPT_HOME: '/h' }).uri, 'local:/h/keystore.db');
});

test('addKeyManagerToken writes both header copies with seqid + 1; the key is found with no key id', async () => {
  const { id, dev, volume, resolve, seen } = await managedVolume();
  assert.equal(await keyFromTokens(volume, resolve), undefined, 'no token: the caller falls back');
  const before = await readLuks2Copy(dev, 0, 'primary');
  const tokenId = await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: id });
  assert.equal(tokenId, 0);
  const primary = await readLuks2Copy(dev, 0, 'primary');
  const secondary = await readLuks2Copy(dev, 16384, 'secondary');
  assert.equal(primary.bin.seqid, before.bin.seqid + 1n);
  assert.equal(secondary.bin.seqid, primary.bin.seqid);
  assert.deepEqual(primary.metadata.tokens, { '0': { type: 'brickcrypt-key-manager', keyslots: ['0'], key_manager: 'memory:', key_id: id } });
  assert.deepEqual(secondary.metadata.tokens, primary.metadata.tokens);

  const reopened = await LuksVolume.open(dev);
  assert.ok(hasKeyManagerToken(reopened));
  const found = await keyFromTokens(reopened, resolve);
  assert.ok(found);
  assert.equal(found.token.keyId, id);
  assert.deepEqual(seen.at(-1), { keyManager: 'memory:', keyId: id });
  const r = await reopened.unlock(found.passphrase);
  assert.equal(r.keyslot, 0);
  r.key.wipe();
  found.passphrase.wipe();

  const unlocked = await unlockWithTokens(reopened, resolve);
  assert.equal(unlocked?.keyslot, 0);
  assert.equal(unlocked?.token.id, 0);
  unlocked?.key.wipe();
});

test('refusals leave the header unchanged: LUKS1, inactive keyslot, duplicate, id in use, credentials, a full JSON area', async () => {
  const luks1 = await managedVolume('luks1');
  await assert.rejects(addKeyManagerToken(luks1.volume, { keyslots: [0], keyId: luks1.id }), InvalidArgumentError);

  const { id, dev, volume } = await managedVolume();
  await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: id });
  const header = await snapshot(dev);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [5], keyId: id }), KeyslotNotFoundError);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [], keyId: id }), InvalidArgumentError);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: id }), AlreadyExistsError);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [0], keyId: 'other' }, { tokenId: 0 }), KeyslotUnavailableError);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [0], keyManager: 'barbican+https://a:b@h:1', keyId: 'x' }), InvalidArgumentError);
  await assert.rejects(removeToken(volume, 9), KeyslotNotFoundError);
  assert.deepEqual(await snapshot(dev), header, 'nothing was written');

  // Long key ids fill the 12 KiB JSON area: the token that does not fit is refused.
  let added = 0;
  let error: unknown;
  try {
    for (let i = 1; i < 32; i++, added++) {
      await addKeyManagerToken(volume, { keyslots: [0], keyId: `${i}-${'k'.repeat(1000)}` });
    }
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof InsufficientSpaceError, String(error));
  assert.ok(added > 0 && added < 31, `${added} tokens fit`);
  const full = await snapshot(dev);
  await assert.rejects(addKeyManagerToken(volume, { keyslots: [0], keyId: 'z'.repeat(1000) }), InsufficientSpaceError);
  assert.deepEqual(await snapshot(dev), full);
  assert.equal(Object.keys((await LuksVolume.open(dev)).tokens()).length, added + 1);
});

test('failures: missing key, removed keyslot, malformed token; other token types are ignored', async () => {
  const { km, id, dev, volume, resolve } = await managedVolume();
  // A foreign token type (e.g. systemd's) is never interpreted.
  await volume.writeToken(0, { type: 'systemd-tpm2', keyslots: ['0'], 'tpm2-pcrs': [7] });
  assert.equal(await keyFromTokens(volume, resolve), undefined);
  assert.deepEqual(listTokens(volume), [{ id: 0, type: 'systemd-tpm2', keyslots: ['0'] }]);

  // Malformed brickcrypt token alone: its error; with a good one after it: skipped.
  await volume.writeToken(1, { type: KEY_MANAGER_TOKEN_TYPE, keyslots: ['0'], key_manager: 'memory:' });
  await assert.rejects(keyFromTokens(volume, resolve), MalformedTokenError);
  assert.match(listTokens(volume)[1]!.problem ?? '', /malformed: key_id/);
  await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: id });
  const skipped: number[] = [];
  const found = await keyFromTokens(volume, resolve, { onSkip: (tokenId) => skipped.push(tokenId) });
  assert.equal(found?.token.id, 2);
  assert.deepEqual(skipped, [1]);
  found?.passphrase.wipe();
  await removeToken(volume, 1);

  // The key is gone from the key manager: the key manager's not-found error.
  const second = await km.createKey(CALLER);
  second.key.wipe();
  await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: second.id });
  await km.delete(CALLER, second.id, { force: true });
  await removeToken(volume, 2);
  await assert.rejects(keyFromTokens(volume, resolve), KeyNotFoundError);

  // A key that exists but opens nothing: unlockWithTokens says so.
  const third = await km.createKey(CALLER);
  third.key.wipe();
  await removeToken(volume, 1);
  await addKeyManagerToken(volume, { keyslots: [0], keyId: third.id });
  await assert.rejects(unlockWithTokens(volume, resolve), WrongPassphraseError);
  await removeToken(volume, 1);

  // The token's keyslot is removed: the token stays (as in cryptsetup), assigned to nothing.
  await addKeyManagerToken(volume, { keyslots: [0], keyManager: 'memory:', keyId: id });
  const spare = await (async () => {
    const f = await keyFromTokens(volume, resolve);
    assert.ok(f);
    try {
      return await volume.addKey(f.passphrase, Passphrase.fromString('spare'), FAST);
    } finally {
      f.passphrase.wipe();
    }
  })();
  await volume.killSlot(0);
  const reopened = await LuksVolume.open(dev);
  assert.deepEqual(reopened.tokens()['1']!.keyslots, []);
  const entries = keyManagerTokens(reopened);
  assert.ok(entries[0]!.error instanceof KeyslotNotFoundError);
  await assert.rejects(keyFromTokens(reopened, resolve), KeyslotNotFoundError);
  assert.match(listTokens(reopened)[1]!.problem ?? '', /no keyslot/);
  assert.equal(spare, 1);
});
