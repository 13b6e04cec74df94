/**
 * LUKS targets with a benchmarked keyslot KDF: the keyslot derivation runs during the copy
 * (convert.ts); the result must be an ordinary volume with the benchmarked (not the layout
 * planning's) KDF parameters, opened by cryptsetup and holding the source's plaintext.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, runStatus, tempDir } from '../helpers/tools.js';
import { Passphrase } from '../../src/secret.js';
import { convert, partialPath } from '../../src/workflows/convert.js';
import { verify } from '../../src/workflows/verify.js';

let dir = '';
let cleanup = () => {};
const PASS = 'overlap passphrase';
before(() => {
  ({ dir, cleanup } = tempDir('brickcrypt-kdf-overlap-'));
  writeFileSync(join(dir, 'key'), PASS);
});
after(() => cleanup());

const passphrase = async () => Passphrase.fromString(PASS);

/**
 * Keyslot 0's KDF parameters and the volume-key digest's iterations, read from the header
 * (LUKS1: keyslot table and mk-digest-iter at 164; LUKS2: JSON area).
 */
function keyslotKdf(path: string): { iterations?: number; memory?: number; digestIterations: number } {
  const hdr = readFileSync(path).subarray(0, 1 << 16);
  if (hdr.readUInt16BE(6) === 1) return { iterations: hdr.readUInt32BE(208 + 4), digestIterations: hdr.readUInt32BE(164) };
  const json = JSON.parse(hdr.subarray(4096, hdr.indexOf(0, 4096)).toString('utf8'));
  const kdf = json.keyslots['0'].kdf;
  return { iterations: kdf.iterations, memory: kdf.memory, digestIterations: json.digests['0'].iterations };
}

const CASES = [
  { name: 'luks1, pbkdf2 benchmarked to 50 ms', format: 'luks1' as const, luks: { iterTimeMs: 50 } },
  { name: 'luks2, pbkdf2 benchmarked to 50 ms, 4096-byte sectors', format: 'luks2' as const, luks: { pbkdf: 'pbkdf2' as const, iterTimeMs: 50 } },
  { name: 'luks2, argon2id with forced costs', format: 'luks2' as const, luks: { pbkdf: 'argon2id' as const, iterations: 4, memoryKiB: 8192, parallel: 1 } },
];

for (const c of CASES) {
  test(`raw -> ${c.name}: keyslot derived during the copy, volume opens and matches`, async () => {
    const src = join(dir, `${c.format}-${c.luks.iterTimeMs ?? 'forced'}.raw`);
    writeFileSync(src, randomBytes(3 * 1024 * 1024 + 4096));
    const dst = `${src}.luks`;
    const report = await convert({ source: src, target: dst, targetFormat: c.format, targetPassphrase: passphrase, luks: c.luks });
    assert.ok(existsSync(dst) && !existsSync(partialPath(dst)));
    assert.ok(report.kdfBackgroundSeconds > 0, 'the keyslot KDF ran alongside the copy');
    const kdf = keyslotKdf(dst);
    if (c.luks.iterTimeMs !== undefined) {
      // Benchmarked, not the planning run's 1000 iterations.
      assert.ok((kdf.iterations ?? 0) > 1000, `benchmarked iterations, got ${JSON.stringify(kdf)}`);
      // The volume-key digest is benchmarked (125 ms), as cryptsetup does when nothing is forced.
      assert.ok(kdf.digestIterations > 1000, `benchmarked digest, got ${JSON.stringify(kdf)}`);
    } else {
      assert.equal(kdf.digestIterations, 1000, 'forced costs: digest at the minimum, as cryptsetup');
      assert.equal(kdf.memory, 8192, `forced Argon2 memory kept: ${JSON.stringify(kdf)}`);
    }
    const same = await verify({ a: src, b: dst, bPassphrase: passphrase });
    assert.equal(same.equal, true);
  });
}

test('cryptsetup opens a volume whose keyslot was derived during the copy', { skip: needTools('cryptsetup') }, async () => {
  const src = join(dir, 'cs.raw');
  writeFileSync(src, randomBytes(2 * 1024 * 1024));
  const dst = `${src}.luks`;
  await convert({ source: src, target: dst, targetFormat: 'luks1', targetPassphrase: passphrase, luks: { iterTimeMs: 50 } });
  const r = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'key'), dst]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(readFileSync(dst).subarray(0, 6).equals(Buffer.from('LUKS\xba\xbe', 'latin1')));
});
