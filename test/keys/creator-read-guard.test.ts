/**
 * The creator rule kept in front of backends whose own policy cannot (Barbican, KMIP): a
 * caller whose only reading role would be `creator` never reaches the backend's `get`; every
 * other call and caller goes through unchanged. The local and memory keystores enforce the
 * rule themselves and are returned as they are.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ForbiddenError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';
import { creatorMayNotRead, guardCreatorReads } from '../../src/keys/creator-read-guard.js';
import type { CallerIdentity, KeyManager } from '../../src/keys/key-manager.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';

/** A backend that allows everything and records who asked for what. */
function recordingBackend(): { km: KeyManager; calls: Array<[string, CallerIdentity]> } {
  const calls: Array<[string, CallerIdentity]> = [];
  const handler: ProxyHandler<object> = {
    get(_t, prop) {
      if (prop === 'backend') return 'fake';
      return async (caller: CallerIdentity, id: string) => {
        calls.push([String(prop), caller]);
        if (prop === 'get') return { id, type: 'symmetric', created: '', owner: caller, consumers: [], secret: SecretBytes.copyOf(new Uint8Array(32)) };
        if (prop === 'createKey') return { id: 'k1', key: SecretBytes.copyOf(new Uint8Array(32)) };
        return undefined;
      };
    },
  };
  return { km: new Proxy({}, handler) as KeyManager, calls };
}

const creator: CallerIdentity = { user: 'cinder', project: 'p', roles: ['creator'] };

test('a creator creates, clones, deletes and registers consumers through the guard, but its get is refused before the backend', async () => {
  const { km, calls } = recordingBackend();
  const denied: string[] = [];
  const guarded = guardCreatorReads(km, (c, id) => denied.push(`${c.user}:${id}`));
  assert.equal(guarded.backend, 'fake');
  (await guarded.createKey(creator)).key.wipe();
  await guarded.clone(creator, 'k1');
  await guarded.addConsumer(creator, 'k1', { service: 's', resourceType: 'volume', resourceId: 'v' });
  await guarded.delete(creator, 'k1', { force: true });
  await assert.rejects(guarded.get(creator, 'k1'), ForbiddenError);
  assert.deepEqual(calls.map(([op]) => op), ['createKey', 'clone', 'addConsumer', 'delete'], 'the backend never saw the get');
  assert.ok(calls.every(([, c]) => c === creator), 'the caller reaches the backend unchanged (same object)');
  assert.deepEqual(denied, ['cinder:k1']);
});

test('admin, member and reader callers (and creator plus one of them) are left to the backend', async () => {
  for (const roles of [['admin'], ['member'], ['reader'], ['creator', 'member'], ['creator', 'reader'], []]) {
    const { km, calls } = recordingBackend();
    const caller = { user: 'u', project: 'p', roles };
    (await guardCreatorReads(km).get(caller, 'k')).secret.wipe();
    assert.deepEqual(calls.map(([op]) => op), ['get'], roles.join(','));
    assert.equal(creatorMayNotRead(caller), false);
  }
  assert.equal(creatorMayNotRead(creator), true);
});

test('the local and memory keystores are not wrapped: they enforce and audit the rule themselves', async () => {
  const mem = new MemoryKeyManager();
  assert.equal(guardCreatorReads(mem), mem);
  const { km } = recordingBackend();
  const once = guardCreatorReads(km);
  assert.equal(guardCreatorReads(once), once, 'never wrapped twice');
  await mem.close();
});
