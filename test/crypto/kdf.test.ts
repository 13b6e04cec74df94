import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ARGON2_MIN_TIME,
  LUKS1_DEFAULT_KDF,
  LUKS2_DEFAULT_KDF,
  MK_DIGEST_KDF,
  PBKDF2_MIN_ITERATIONS,
  benchmarkKdf,
  defaultArgon2MemoryKiB,
  defaultArgon2Parallel,
  deriveKey,
  type KdfParams,
} from '../../src/crypto/kdf.js';
import { InvalidArgumentError, UnsupportedError } from '../../src/errors.js';

const bytes = (s: string) => new Uint8Array(Buffer.from(s, 'latin1'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

// RFC 6070 (PBKDF2-HMAC-SHA1) and the widely published PBKDF2-HMAC-SHA256 set for the same inputs.
const PBKDF2_VECTORS: Array<{ hash: string; p: string; s: string; c: number; dk: string; slow?: boolean }> = [
  { hash: 'sha1', p: 'password', s: 'salt', c: 1, dk: '0c60c80f961f0e71f3a9b524af6012062fe037a6' },
  { hash: 'sha1', p: 'password', s: 'salt', c: 2, dk: 'ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957' },
  { hash: 'sha1', p: 'password', s: 'salt', c: 4096, dk: '4b007901b765489abead49d926f721d065a429c1' },
  { hash: 'sha1', p: 'password', s: 'salt', c: 16777216, dk: 'eefe3d61cd4da4e4e9945b3d6ba2158c2634e984', slow: true },
  {
    hash: 'sha1',
    p: 'passwordPASSWORDpassword',
    s: 'saltSALTsaltSALTsaltSALTsaltSALTsalt',
    c: 4096,
    dk: '3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038',
  },
  { hash: 'sha1', p: 'pass\0word', s: 'sa\0lt', c: 4096, dk: '56fa6aa75548099dcc37d7f03425e0c3' },
  { hash: 'sha256', p: 'password', s: 'salt', c: 1, dk: '120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b' },
  { hash: 'sha256', p: 'password', s: 'salt', c: 2, dk: 'ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43' },
  { hash: 'sha256', p: 'password', s: 'salt', c: 4096, dk: 'c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a' },
  { hash: 'sha256', p: 'password', s: 'salt', c: 16777216, dk: 'cf81c66fe8cfc04d1f31ecb65dab4089f7f179e89b3b0bcb17ad10e3ac6eba46', slow: true },
  {
    hash: 'sha256',
    p: 'passwordPASSWORDpassword',
    s: 'saltSALTsaltSALTsaltSALTsaltSALTsalt',
    c: 4096,
    dk: '348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9',
  },
  { hash: 'sha256', p: 'pass\0word', s: 'sa\0lt', c: 4096, dk: '89b69d0516f829893c696226650a8687' },
];

for (const v of PBKDF2_VECTORS) {
  test(`PBKDF2-HMAC-${v.hash.toUpperCase()} c=${v.c} dkLen=${v.dk.length / 2} (${JSON.stringify(v.p)})`, { skip: v.slow ? 'slow (16777216 iterations)' : false }, async () => {
    const dk = await deriveKey({ type: 'pbkdf2', hash: v.hash, iterations: v.c }, bytes(v.p), bytes(v.s), v.dk.length / 2);
    assert.equal(hex(dk), v.dk);
  });
}

// RFC 9106 section 5.2 / 5.3: password 32 x 01, salt 16 x 02, secret 8 x 03, associated data 12 x 04, t=3, m=32 KiB, p=4, tag 32.
const RFC9106 = {
  password: new Uint8Array(32).fill(1),
  salt: new Uint8Array(16).fill(2),
  secret: new Uint8Array(8).fill(3),
  associatedData: new Uint8Array(12).fill(4),
};
const ARGON2_VECTORS: Array<{ type: 'argon2i' | 'argon2id'; tag: string }> = [
  { type: 'argon2i', tag: 'c814d9d1dc7f37aa13f0d77f2494bda1c8de6b016dd388d29952a4c4672b6ce8' },
  { type: 'argon2id', tag: '0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659' },
];

for (const v of ARGON2_VECTORS) {
  test(`RFC 9106 ${v.type} test vector through deriveKey`, async () => {
    const tag = await deriveKey({ type: v.type, time: 3, memoryKiB: 32, parallel: 4 }, RFC9106.password, RFC9106.salt, 32, {
      secret: RFC9106.secret,
      associatedData: RFC9106.associatedData,
    });
    assert.equal(hex(tag), v.tag);
    // Without secret and associated data (the LUKS case) the tag differs.
    const plain = await deriveKey({ type: v.type, time: 3, memoryKiB: 32, parallel: 4 }, RFC9106.password, RFC9106.salt, 32);
    assert.notEqual(hex(plain), v.tag);
  });
}

test('argon2i and argon2id differ, output length is honoured, inputs are not modified', async () => {
  const pass = bytes('compatkey');
  const salt = new Uint8Array(32).fill(7);
  const p = { time: 1, memoryKiB: 64, parallel: 1 };
  const a = await deriveKey({ type: 'argon2i', ...p }, pass, salt, 64);
  const b = await deriveKey({ type: 'argon2id', ...p }, pass, salt, 64);
  assert.equal(a.length, 64);
  assert.notEqual(hex(a), hex(b));
  assert.equal(Buffer.from(pass).toString(), 'compatkey');
  // A view with an offset is read from the right place.
  const backing = new Uint8Array(40);
  backing.set(salt, 8);
  const c = await deriveKey({ type: 'argon2i', ...p }, pass, backing.subarray(8), 64);
  assert.equal(hex(c), hex(a));
});

test('deriveKey rejects bad parameters with typed errors', async () => {
  const pass = bytes('x');
  const salt = new Uint8Array(32);
  const bad: KdfParams[] = [
    { type: 'pbkdf2', hash: 'sha256', iterations: 0 },
    { type: 'argon2id', time: 0, memoryKiB: 64, parallel: 1 },
    { type: 'argon2id', time: 1, memoryKiB: 16, parallel: 4 },
    { type: 'argon2i', time: 1, memoryKiB: 64, parallel: 0 },
  ];
  for (const p of bad) await assert.rejects(deriveKey(p, pass, salt, 32), InvalidArgumentError);
  await assert.rejects(deriveKey({ type: 'pbkdf2', hash: 'whirlpool', iterations: 1000 }, pass, salt, 32), UnsupportedError);
  await assert.rejects(deriveKey({ type: 'scrypt' } as unknown as KdfParams, pass, salt, 32), UnsupportedError);
  await assert.rejects(deriveKey({ type: 'argon2id', time: 1, memoryKiB: 64, parallel: 1 }, pass, new Uint8Array(4), 32), InvalidArgumentError);
});

test('cryptsetup default KDF settings', () => {
  assert.deepEqual({ ...LUKS1_DEFAULT_KDF }, { type: 'pbkdf2', hash: 'sha256', iterTimeMs: 2000 });
  assert.equal(LUKS2_DEFAULT_KDF.type, 'argon2id');
  assert.equal(LUKS2_DEFAULT_KDF.iterTimeMs, 2000);
  assert.equal(LUKS2_DEFAULT_KDF.maxMemoryKiB, 1048576);
  assert.equal(LUKS2_DEFAULT_KDF.maxParallel, 4);
  assert.equal(MK_DIGEST_KDF.iterTimeMs, 125);
  assert.equal(MK_DIGEST_KDF.minIterations, 1000);
  assert.ok(defaultArgon2MemoryKiB() <= 1048576 && defaultArgon2MemoryKiB() >= 64 * 1024);
  assert.ok(defaultArgon2Parallel() >= 1 && defaultArgon2Parallel() <= 4);
});

test('benchmarkKdf pbkdf2: iterations scale with the target time and respect the 1000 minimum', async () => {
  // 1 ms is at most ~10k iterations even on fast CPUs; whatever the speed, never below the minimum.
  const short = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha256', targetMs: 1, keyLength: 32, minSampleMs: 20 });
  assert.equal(short.type, 'pbkdf2');
  assert.ok(short.type === 'pbkdf2' && short.iterations >= PBKDF2_MIN_ITERATIONS, JSON.stringify(short));
  const p = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha256', targetMs: 200, keyLength: 32, minSampleMs: 20 });
  assert.ok(p.type === 'pbkdf2' && p.iterations > 10_000, JSON.stringify(p));
  assert.ok(short.type === 'pbkdf2' && p.iterations > short.iterations * 20, 'iterations scale with the target time');
  // The estimate is usable: one derivation takes the right order of magnitude (noisy shared CPU: wide bounds).
  const start = Date.now();
  await deriveKey(p, bytes('x'), new Uint8Array(32), 32);
  const ms = Date.now() - start;
  assert.ok(ms > 20 && ms < 2000, `took ${ms} ms`);
});

test('benchmarkKdf pbkdf2: one measurement per hash serves every key length (cost = iterations x hash blocks)', async () => {
  const first = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha1', targetMs: 100, keyLength: 20, minSampleMs: 20, fresh: true });
  // Measured just now, so no new measurement: 64 bytes of SHA-1 output are 4 blocks, a quarter of the iterations.
  const t0 = performance.now();
  const wide = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha1', targetMs: 100, keyLength: 64, minSampleMs: 20 });
  assert.ok(performance.now() - t0 < 15, 'reused, not measured again');
  assert.ok(first.type === 'pbkdf2' && wide.type === 'pbkdf2');
  assert.ok(Math.abs(wide.iterations * 4 - first.iterations) <= 4, `${wide.iterations} x 4 vs ${first.iterations}`);
  // Twice the target time, twice the iterations, from the same measurement.
  const longer = await benchmarkKdf({ type: 'pbkdf2', hash: 'sha1', targetMs: 200, keyLength: 20, minSampleMs: 20 });
  assert.ok(longer.type === 'pbkdf2' && Math.abs(longer.iterations - 2 * first.iterations) <= 2);
  // `fresh` measures again (the result differs by the noise of a new run, not by a pure computation).
  const t1 = performance.now();
  await benchmarkKdf({ type: 'pbkdf2', hash: 'sha1', targetMs: 100, keyLength: 20, minSampleMs: 20, fresh: true });
  assert.ok(performance.now() - t1 >= 20, 'measured again');
});

test('benchmarkKdf argon2id: minimum time cost with capped memory and lanes', async () => {
  const p = await benchmarkKdf({ type: 'argon2id', targetMs: 60, keyLength: 64, memoryKiB: 8 * 1024, parallel: 2, minSampleMs: 15 });
  assert.equal(p.type, 'argon2id');
  if (p.type !== 'argon2id') return;
  assert.equal(p.parallel, 2);
  assert.ok(p.memoryKiB <= 8 * 1024 && p.memoryKiB >= 16, JSON.stringify(p));
  assert.ok(p.time >= ARGON2_MIN_TIME, JSON.stringify(p));
  await assert.rejects(benchmarkKdf({ type: 'argon2id', targetMs: 60, keyLength: 64, memoryKiB: 8192, parallel: 5 }), InvalidArgumentError);
});
