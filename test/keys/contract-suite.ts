/**
 * The key-manager contract suite: every backend runs it with a factory and a statement
 * of what it supports.
 *
 * @example
 * runContractSuite('memory', async () => ({ km: new MemoryKeyManager(), owner, otherProject, reader }), {
 *   acl: true, keyPairs: ['rsa', 'ec', 'dsa'], consumers: true, crossProject: 'not-found', validatesDer: true,
 * });
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, X509Certificate } from 'node:crypto';
import { ForbiddenError, InUseError, InvalidObjectError, KeyNotFoundError } from '../../src/errors.js';
import { Passphrase, SecretBytes } from '../../src/secret.js';
import type { CallerIdentity, KeyManager, ObjectType } from '../../src/keys/key-manager.js';
import { passphraseForLuks } from '../../src/keys/luks-passphrase.js';

export interface ContractFixture {
  km: KeyManager;
  /** Can create, read, clone, delete and manage ACLs in its project (e.g. roles ['admin']). */
  owner: CallerIdentity;
  /** Same powers, another project. */
  otherProject: CallerIdentity;
  /** A user of owner's project who reads only what is granted (needed when `acl`). */
  reader?: CallerIdentity;
  cleanup?: () => Promise<void>;
}

export interface ContractCapabilities {
  /** grantRead/revokeRead enforce a per-object read ACL for `reader`. */
  acl: boolean;
  /** Key-pair algorithms the backend generates. */
  keyPairs: ReadonlyArray<'rsa' | 'ec' | 'dsa'>;
  /** addConsumer/removeConsumer and delete refusal while consumed. */
  consumers: boolean;
  /** How another project's object is reported. */
  crossProject: 'not-found' | 'forbidden' | 'either';
  /** `store` rejects malformed DER for private/public/certificate with InvalidObjectError. */
  validatesDer: boolean;
  /** Object types `store` accepts (default: all six). */
  storeTypes?: readonly ObjectType[];
  /** Symmetric key sizes to exercise (default [128, 256, 512]). */
  keySizes?: readonly number[];
}

/** A self-signed P-256 certificate (DER), generated once with openssl for this suite. */
export const TEST_CERT_DER = Buffer.from(
  'MIIBmzCCAUGgAwIBAgIUf2Y7S1do3Jci5Aya4957LKo6NZswCgYIKoZIzj0EAwIwIzEhMB8GA1UEAwwYYnJpY2tjcnlwdCBjb250cmFjdCB0ZXN0MB4XDTI2MTEyOTExMzgyNloXDTM2MTEyNjExMzgyNlowIzEhMB8GA1UEAwwYYnJpY2tjcnlwdCBjb250cmFjdCB0ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeY8FvaYEDgXL64MLcRIVlMOKW2+hbduaPyTJ/QEkb0NWKumB9ThDL3AJ1xwLFg40i1oq5Q/CYYIxlxkWXgYFUaNTMFEwHQYDVR0OBBYEFNKRO3z0Kx7Br7HC7h1VGqeqZWZbMB8GA1UdIwQYMBaAFNKRO3z0Kx7Br7HC7h1VGqeqZWZbMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAI3PJc6O71S8DIH/UuT5V18YGE2VOWmkxi24A+LqZ3tKAiA4rPlph2GffbXitha4WHpcoAj1AI/pYhRFOez7khs6/Q==',
  'base64',
);

function sampleObjects(): Array<{ type: ObjectType; bytes: Buffer; algorithm?: string; bitLength?: number }> {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return [
    { type: 'symmetric', bytes: Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex'), algorithm: 'aes', bitLength: 256 },
    { type: 'passphrase', bytes: Buffer.from('correct horse battery staple', 'utf8') },
    { type: 'opaque', bytes: Buffer.from([0, 1, 2, 3, 254, 255]) },
    { type: 'certificate', bytes: TEST_CERT_DER },
    { type: 'private', bytes: rsa.privateKey.export({ format: 'der', type: 'pkcs8' }), algorithm: 'rsa', bitLength: 2048 },
    { type: 'public', bytes: rsa.publicKey.export({ format: 'der', type: 'spki' }), algorithm: 'rsa', bitLength: 2048 },
  ];
}

async function expectHidden(p: Promise<unknown>, mode: ContractCapabilities['crossProject']): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    if (mode === 'not-found') return err instanceof KeyNotFoundError;
    if (mode === 'forbidden') return err instanceof ForbiddenError;
    return err instanceof KeyNotFoundError || err instanceof ForbiddenError;
  });
}

const bytesOf = (s: SecretBytes) => Buffer.from(s.expose());

/** Registers the contract tests for one backend. */
export function runContractSuite(name: string, factory: () => Promise<ContractFixture>, caps: ContractCapabilities): void {
  describe(`key-manager contract: ${name}`, () => {
    let fx: ContractFixture;
    let km: KeyManager;
    let owner: CallerIdentity;
    before(async () => {
      fx = await factory();
      km = fx.km;
      owner = fx.owner;
    });
    after(async () => {
      await fx?.km.close();
      await fx?.cleanup?.();
    });

    test('createKey hands out the new key once and get returns the same bytes with metadata', async () => {
      for (const bits of caps.keySizes ?? [128, 256, 512]) {
        const { id, key } = await km.createKey(owner, { bitLength: bits, name: `k-${bits}` });
        assert.equal(key.length, bits / 8);
        const obj = await km.get(owner, id);
        assert.equal(obj.id, id);
        assert.equal(obj.type, 'symmetric');
        assert.equal(obj.algorithm?.toLowerCase(), 'aes');
        assert.equal(obj.bitLength, bits);
        assert.equal(obj.name, `k-${bits}`);
        assert.ok(!Number.isNaN(Date.parse(obj.created)), `created is a date: ${obj.created}`);
        assert.ok(obj.secret.equals(key), 'stored bytes equal the handed-out key');
        key.wipe();
        obj.secret.wipe();
      }
    });

    test('createKey defaults to a 256-bit AES key and two keys differ', async () => {
      const a = await km.createKey(owner);
      const b = await km.createKey(owner);
      assert.notEqual(a.id, b.id);
      assert.equal(a.key.length, 32);
      assert.ok(!a.key.equals(b.key));
      const meta = await km.getMetadata(owner, a.id);
      assert.equal(meta.bitLength, 256);
      a.key.wipe();
      b.key.wipe();
    });

    test('getMetadata carries no bytes', async () => {
      const { id, key } = await km.createKey(owner, { name: 'meta-only' });
      key.wipe();
      const meta = await km.getMetadata(owner, id);
      assert.equal(meta.id, id);
      assert.equal(meta.name, 'meta-only');
      assert.equal('secret' in meta, false);
      assert.equal(JSON.stringify(meta).includes('redacted'), false);
    });

    test('store and get round-trip every supported object type', async () => {
      const types = caps.storeTypes ?? ['symmetric', 'passphrase', 'opaque', 'certificate', 'private', 'public'];
      for (const s of sampleObjects().filter((o) => types.includes(o.type))) {
        const id = await km.store(owner, {
          type: s.type,
          secret: SecretBytes.copyOf(s.bytes),
          name: `stored-${s.type}`,
          ...(s.algorithm ? { algorithm: s.algorithm } : {}),
          ...(s.bitLength ? { bitLength: s.bitLength } : {}),
        });
        const obj = await km.get(owner, id);
        assert.equal(obj.type, s.type, `type of ${s.type}`);
        assert.deepEqual(bytesOf(obj.secret), s.bytes, `bytes of ${s.type}`);
        assert.equal(obj.name, `stored-${s.type}`);
        if (s.bitLength) assert.equal(obj.bitLength, s.bitLength, `bitLength of ${s.type}`);
        if (s.type === 'certificate') assert.equal(new X509Certificate(bytesOf(obj.secret)).subject, 'CN=brickcrypt contract test');
        obj.secret.wipe();
      }
    });

    test('passphraseForLuks: symmetric -> lowercase hex keeping leading zeros, passphrase -> its bytes', async () => {
      const raw = Buffer.from('00000f' + 'a5'.repeat(29), 'hex');
      const id = await km.store(owner, { type: 'symmetric', secret: SecretBytes.copyOf(raw), algorithm: 'aes' });
      const obj = await km.get(owner, id);
      const pass = passphraseForLuks(obj);
      assert.equal(Buffer.from(pass.expose()).toString('latin1'), raw.toString('hex'));
      assert.ok(Buffer.from(pass.expose()).toString('latin1').startsWith('00000f'));
      if ((caps.storeTypes ?? ['passphrase']).includes('passphrase')) {
        const pid = await km.store(owner, { type: 'passphrase', secret: Passphrase.fromString('s3cret pass') });
        const pobj = await km.get(owner, pid);
        assert.equal(Buffer.from(passphraseForLuks(pobj).expose()).toString('utf8'), 's3cret pass');
      }
    });

    for (const alg of caps.keyPairs) {
      test(`createKeyPair ${alg}: PKCS#8 private and SPKI public that belong together`, async () => {
        const bits = alg === 'ec' ? 256 : 2048;
        const { privateKeyId, publicKeyId } = await km.createKeyPair(owner, { algorithm: alg, bitLength: bits, name: `pair-${alg}` });
        assert.notEqual(privateKeyId, publicKeyId);
        const priv = await km.get(owner, privateKeyId);
        const pub = await km.get(owner, publicKeyId);
        assert.equal(priv.type, 'private');
        assert.equal(pub.type, 'public');
        assert.equal(priv.algorithm?.toLowerCase(), alg);
        assert.equal(priv.bitLength, bits);
        const privKey = createPrivateKey({ key: bytesOf(priv.secret), format: 'der', type: 'pkcs8' });
        const pubKey = createPublicKey({ key: bytesOf(pub.secret), format: 'der', type: 'spki' });
        assert.deepEqual(createPublicKey(privKey).export({ format: 'der', type: 'spki' }), pubKey.export({ format: 'der', type: 'spki' }));
        priv.secret.wipe();
      });
    }

    test('unknown ids give KeyNotFoundError on every per-object operation', async () => {
      const ghost = randomUUID();
      await assert.rejects(km.get(owner, ghost), KeyNotFoundError);
      await assert.rejects(km.getMetadata(owner, ghost), KeyNotFoundError);
      await assert.rejects(km.clone(owner, ghost), KeyNotFoundError);
      await assert.rejects(km.delete(owner, ghost), KeyNotFoundError);
    });

    test('delete removes the object; deleting again is KeyNotFoundError', async () => {
      const { id, key } = await km.createKey(owner);
      key.wipe();
      await km.delete(owner, id);
      await assert.rejects(km.get(owner, id), KeyNotFoundError);
      await assert.rejects(km.delete(owner, id), KeyNotFoundError);
      assert.equal((await km.list(owner)).some((m) => m.id === id), false);
    });

    test('clone copies bytes and metadata under a new id, independent of the original', async () => {
      const { id, key } = await km.createKey(owner, { bitLength: 256, name: 'orig' });
      const copy = await km.clone(owner, id, { name: 'copy' });
      assert.notEqual(copy, id);
      const c = await km.get(owner, copy);
      assert.ok(c.secret.equals(key));
      assert.equal(c.type, 'symmetric');
      assert.equal(c.bitLength, 256);
      assert.equal(c.name, 'copy');
      assert.equal(c.owner.project, owner.project);
      await km.delete(owner, id);
      const again = await km.get(owner, copy);
      assert.ok(again.secret.equals(key), 'clone survives deletion of the original');
      key.wipe();
      c.secret.wipe();
      again.secret.wipe();
      await km.delete(owner, copy);
    });

    test('list shows the project\'s objects, filters by type, and hides other projects', async () => {
      const { id: sym, key } = await km.createKey(owner, { name: 'list-sym' });
      key.wipe();
      const pass = await km.store(owner, { type: 'passphrase', secret: Passphrase.fromString('list me') });
      const all = await km.list(owner);
      assert.ok(all.some((m) => m.id === sym) && all.some((m) => m.id === pass));
      assert.ok(all.every((m) => !('secret' in m)));
      const syms = await km.list(owner, { type: 'symmetric' });
      assert.ok(syms.some((m) => m.id === sym));
      assert.ok(syms.every((m) => m.type === 'symmetric'));
      const passes = await km.list(owner, { type: 'passphrase' });
      assert.ok(passes.some((m) => m.id === pass) && !passes.some((m) => m.id === sym));
      const theirs = await km.list(fx.otherProject);
      assert.equal(theirs.some((m) => m.id === sym || m.id === pass), false);
    });

    if (caps.consumers) {
      test('consumers: delete refused while consumed, allowed after removal or with force', async () => {
        const { id, key } = await km.createKey(owner);
        key.wipe();
        const vol = { service: 'volume', resourceType: 'volume', resourceId: randomUUID() };
        await km.addConsumer(owner, id, vol);
        const meta = await km.getMetadata(owner, id);
        assert.deepEqual(meta.consumers, [vol]);
        await assert.rejects(km.delete(owner, id), InUseError);
        assert.equal((await km.getMetadata(owner, id)).id, id, 'still there after refusal');
        await km.removeConsumer(owner, id, vol);
        assert.deepEqual((await km.getMetadata(owner, id)).consumers, []);
        await km.delete(owner, id);
        const { id: id2, key: k2 } = await km.createKey(owner);
        k2.wipe();
        await km.addConsumer(owner, id2, vol);
        await km.delete(owner, id2, { force: true });
        await assert.rejects(km.getMetadata(owner, id2), KeyNotFoundError);
      });
    }

    test('another project can neither read, inspect, clone nor delete', async () => {
      const { id, key } = await km.createKey(owner);
      key.wipe();
      const other = fx.otherProject;
      await expectHidden(km.get(other, id), caps.crossProject);
      await expectHidden(km.getMetadata(other, id), caps.crossProject);
      await expectHidden(km.clone(other, id), caps.crossProject);
      await expectHidden(km.delete(other, id), caps.crossProject);
      assert.equal((await km.getMetadata(owner, id)).id, id, 'object untouched');
    });

    if (caps.acl) {
      test('read ACL: reader denied until granted, allowed after grant, denied after revoke', async () => {
        const reader = fx.reader!;
        const { id, key } = await km.createKey(owner);
        await assert.rejects(km.get(reader, id), (e) => e instanceof ForbiddenError || e instanceof KeyNotFoundError);
        await km.grantRead(owner, id, reader.user);
        assert.ok((await km.getMetadata(owner, id)).readers?.includes(reader.user));
        const obj = await km.get(reader, id);
        assert.ok(obj.secret.equals(key));
        obj.secret.wipe();
        await km.revokeRead(owner, id, reader.user);
        await assert.rejects(km.get(reader, id), (e) => e instanceof ForbiddenError || e instanceof KeyNotFoundError);
        key.wipe();
      });
    }

    if (caps.validatesDer) {
      test('malformed DER for private/public/certificate is InvalidObjectError', async () => {
        for (const type of ['private', 'public', 'certificate'] as const) {
          await assert.rejects(km.store(owner, { type, secret: SecretBytes.copyOf(Buffer.from('not DER at all')) }), InvalidObjectError, type);
        }
      });
    }
  });
}
