/**
 * Least privilege on the local and memory backends, each denial and grant checked
 * against the audit log (allowed/denied entries with the right operation and id).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ForbiddenError, KeyNotFoundError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';
import type { AuditEntry } from '../../src/keys/audit.js';
import type { CallerIdentity } from '../../src/keys/key-manager.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import { LocalKeyManager } from '../../src/keys/local-key-manager.js';
import type { PolicyKeyManager } from '../../src/keys/policy-key-manager.js';
import { tempDir } from '../helpers/tools.js';

const admin: CallerIdentity = { user: 'ops', project: 'p1', roles: ['admin'] };
const cinder: CallerIdentity = { user: 'cinder', project: 'p1', roles: ['creator'] };
const nova: CallerIdentity = { user: 'nova', project: 'p1', roles: ['reader'] };
const otherNova: CallerIdentity = { user: 'nova2', project: 'p1', roles: ['reader'] };
const member: CallerIdentity = { user: 'bob', project: 'p1', roles: ['member'] };
const foreign: CallerIdentity = { user: 'mallory', project: 'p2', roles: ['admin'] };
const nobody: CallerIdentity = { user: 'guest', project: 'p1', roles: ['observer'] };

const backends: Array<[string, () => Promise<{ km: PolicyKeyManager; cleanup: () => void }>]> = [
  ['memory', async () => ({ km: new MemoryKeyManager(), cleanup: () => undefined })],
  [
    'local',
    async () => {
      const t = tempDir();
      return { km: await LocalKeyManager.init(join(t.dir, 'ks.db')), cleanup: t.cleanup };
    },
  ],
];

for (const [name, make] of backends) {
  describe(`least privilege: ${name}`, () => {
    let km: PolicyKeyManager;
    let cleanup: () => void;
    before(async () => ({ km, cleanup } = await make()));
    after(async () => {
      await km.close();
      cleanup();
    });

    /** The audit entries appended by `fn`. */
    async function auditOf(fn: () => Promise<unknown>): Promise<AuditEntry[]> {
      const before = (await km.readAudit(admin, { all: true })).length;
      try {
        await fn();
      } catch {
        /* the assertions below check the outcome */
      }
      return (await km.readAudit(admin, { all: true })).slice(before);
    }

    function expectEntry(entries: AuditEntry[], want: Partial<AuditEntry>): void {
      assert.equal(entries.length, 1, `exactly one audit entry: ${JSON.stringify(entries)}`);
      for (const [k, v] of Object.entries(want)) assert.deepEqual((entries[0] as unknown as Record<string, unknown>)[k], v, `audit ${k}`);
    }

    test('creator creates a key, gets its bytes once, and can never get it afterwards', async () => {
      let id = '';
      let key: SecretBytes | undefined;
      const created = await auditOf(async () => ({ id, key } = await km.createKey(cinder, { name: 'vol-1' })));
      expectEntry(created, { operation: 'createKey', objectId: id, outcome: 'allowed', user: 'cinder' });
      assert.equal(key!.length, 32);
      key!.wipe();
      const denied = await auditOf(() => km.get(cinder, id));
      await assert.rejects(km.get(cinder, id), ForbiddenError);
      expectEntry(denied, { operation: 'get', objectId: id, outcome: 'denied', code: 'FORBIDDEN', user: 'cinder' });
      // ...but may inspect, clone and delete keys of its project.
      assert.equal((await km.getMetadata(cinder, id)).owner.user, 'cinder');
      const cloned = await km.clone(cinder, id);
      const cloneMeta = await km.getMetadata(cinder, cloned);
      assert.deepEqual(cloneMeta.readers, [], 'a clone starts with an empty ACL');
      await assert.rejects(km.get(cinder, cloned), ForbiddenError);
      const del = await auditOf(() => km.delete(cinder, cloned));
      expectEntry(del, { operation: 'delete', objectId: cloned, outcome: 'allowed' });
      await assert.rejects(km.getMetadata(admin, cloned), KeyNotFoundError);
      // Even a stored (not generated) key cannot be read back by its creator.
      const stored = await km.store(cinder, { type: 'symmetric', secret: SecretBytes.random(32) });
      await assert.rejects(km.get(cinder, stored), ForbiddenError);
    });

    test('reader reads only granted keys; grant and revoke work and are audited', async () => {
      const { id, key } = await km.createKey(cinder);
      const { id: other, key: k2 } = await km.createKey(cinder);
      k2.wipe();
      const d1 = await auditOf(() => km.get(nova, id));
      await assert.rejects(km.get(nova, id), ForbiddenError);
      expectEntry(d1, { operation: 'get', objectId: id, outcome: 'denied', user: 'nova' });
      assert.deepEqual((await km.list(nova)).map((m) => m.id), [], 'nothing granted: empty list');
      // The creator may grant read on its own key to the compute host.
      const g = await auditOf(() => km.grantRead(cinder, id, 'nova'));
      expectEntry(g, { operation: 'grantRead', objectId: id, outcome: 'allowed', detail: 'user nova' });
      const ok = await auditOf(async () => (await km.get(nova, id)).secret.wipe());
      expectEntry(ok, { operation: 'get', objectId: id, outcome: 'allowed', user: 'nova' });
      const got = await km.get(nova, id);
      assert.ok(got.secret.equals(key));
      got.secret.wipe();
      assert.deepEqual((await km.list(nova)).map((m) => m.id), [id]);
      await assert.rejects(km.get(nova, other), ForbiddenError, 'grant is per key');
      await assert.rejects(km.get(otherNova, id), ForbiddenError, 'grant is per user');
      // A reader cannot grant itself or others, nor delete.
      await assert.rejects(km.grantRead(nova, other, 'nova'), ForbiddenError);
      await assert.rejects(km.delete(nova, id), ForbiddenError);
      // Granting read to a creator does not let it read: creator confers no read.
      await km.grantRead(admin, id, 'cinder');
      await assert.rejects(km.get(cinder, id), ForbiddenError);
      const r = await auditOf(() => km.revokeRead(cinder, id, 'nova'));
      expectEntry(r, { operation: 'revokeRead', objectId: id, outcome: 'allowed' });
      const d2 = await auditOf(() => km.get(nova, id));
      await assert.rejects(km.get(nova, id), ForbiddenError);
      expectEntry(d2, { operation: 'get', objectId: id, outcome: 'denied' });
      key.wipe();
    });

    test('cross-project access is reported as not found and audited as denied', async () => {
      const { id, key } = await km.createKey(admin);
      key.wipe();
      for (const op of [() => km.get(foreign, id), () => km.getMetadata(foreign, id), () => km.delete(foreign, id), () => km.clone(foreign, id), () => km.grantRead(foreign, id, 'x')]) {
        const e = await auditOf(op);
        await assert.rejects(op(), KeyNotFoundError);
        expectEntry(e, { objectId: id, outcome: 'denied', code: 'KEY_NOT_FOUND', project: 'p2' });
      }
      // Same error as a key that does not exist at all: no existence oracle.
      const ghost = '00000000-0000-4000-8000-000000000000';
      const [a, b] = await Promise.allSettled([km.get(foreign, id), km.get(foreign, ghost)]);
      assert.equal((a as PromiseRejectedResult).reason.code, (b as PromiseRejectedResult).reason.code);
      assert.equal((await km.getMetadata(admin, id)).id, id);
    });

    test('member has Barbican owner semantics; unknown roles get nothing', async () => {
      const { id, key } = await km.createKey(member);
      const got = await km.get(member, id);
      assert.ok(got.secret.equals(key));
      got.secret.wipe();
      const byCinder = await km.createKey(cinder);
      byCinder.key.wipe();
      (await km.get(member, byCinder.id)).secret.wipe();
      (await km.get(admin, byCinder.id)).secret.wipe();
      await assert.rejects(km.createKey(nobody), ForbiddenError);
      await assert.rejects(km.get(nobody, id), ForbiddenError);
      await assert.rejects(km.list(nobody), ForbiddenError);
      await assert.rejects(km.createKey(nova), ForbiddenError, 'reader cannot create');
      key.wipe();
    });

    test('only admin reads the audit log, and no entry holds key bytes', async () => {
      await assert.rejects(km.readAudit(cinder), ForbiddenError);
      await assert.rejects(km.verifyAudit(member), ForbiddenError);
      const { id, key } = await km.createKey(cinder);
      const hex = Buffer.from(key.expose()).toString('hex');
      const b64 = Buffer.from(key.expose()).toString('base64');
      key.wipe();
      await km.grantRead(admin, id, 'nova');
      (await km.get(nova, id)).secret.wipe();
      const log = JSON.stringify(await km.readAudit(admin, { all: true }));
      assert.ok(!log.includes(hex) && !log.includes(b64));
      const own = await km.readAudit(admin);
      assert.ok(own.every((e) => e.project === 'p1'));
      const v = await km.verifyAudit(admin);
      assert.equal(v.ok, true);
      assert.ok(v.entries > 10);
    });
  });
}
