/**
 * Plain dm-crypt volumes end to end: ciphertext made outside brickcrypt (Python's
 * `cryptography`, i.e. OpenSSL's AES, one sector at a time with dm-crypt's IVs), read back by
 * `convert --src-format plain` and `verify`, served by `attach --type plain` to an NBD client.
 * cryptsetup cannot open a plain volume without device-mapper, so that encryptor and the
 * known-answer keys of plain-key.test.ts stand in for it here (docs/plain.md).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { needTools, runCli, tempDir, whichTool, cliPath } from '../helpers/tools.js';
import { plainGeometry, resolvePlainParams } from '../../src/plain/plain-volume.js';
import { OutOfRangeError, InvalidArgumentError, UnsupportedCipherError } from '../../src/errors.js';

const tmp = tempDir('brickcrypt-plain-');
after(() => tmp.cleanup());
const execFileP = promisify(execFile);

/** Debian's python3 with python3-cryptography (OpenSSL's AES-XTS/CBC/ECB), the independent encryptor. */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Skips loudly (fails under CI=true) when python3-cryptography is missing. */
function needPyCrypto(): false | string {
  try {
    execFileSync(PYTHON, ['-c', 'import cryptography.hazmat.primitives.ciphers'], { stdio: 'ignore' });
    return false;
  } catch {
    return needTools('python3-cryptography-module');
  }
}

// dm-crypt's sector encryption, written from the dm-crypt IV definitions (plain64: the
// little-endian sector number in 512-byte units; essiv: that block encrypted with AES-ECB
// under the hash of the key), one encryption sector at a time.
const DM_CRYPT_PY = `
import sys, hashlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
mode, keyhex, iv_start, ss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
key = bytes.fromhex(keyhex)
data = sys.stdin.buffer.read()
out = bytearray()
for at in range(0, len(data), ss):
    n = iv_start + at // 512
    iv = n.to_bytes(8, 'little') + bytes(8)
    if mode == 'xts-plain64':
        c = Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor()
    elif mode == 'cbc-plain64':
        c = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    elif mode == 'cbc-essiv:sha256':
        e = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB()).encryptor()
        c = Cipher(algorithms.AES(key), modes.CBC(e.update(iv) + e.finalize())).encryptor()
    else:
        raise SystemExit('unknown mode ' + mode)
    out += c.update(data[at:at + ss]) + c.finalize()
sys.stdout.buffer.write(bytes(out))
`;

/** Encrypts `plain` as dm-crypt would, first IV `ivStart` (512-byte units), with python3-cryptography. */
function encryptIndependently(plain: Buffer, o: { mode: 'xts-plain64' | 'cbc-essiv:sha256' | 'cbc-plain64'; key: Buffer; ivStart: number; sectorSize?: number }): Buffer {
  return execFileSync(PYTHON, ['-c', DM_CRYPT_PY, o.mode, o.key.toString('hex'), String(o.ivStart), String(o.sectorSize ?? 512)], { input: plain, maxBuffer: 1 << 26 });
}

const SECTORS = 48;
const plaintext = randomBytes(SECTORS * 512);
plaintext.write('plain dm-crypt payload, first sector\n', 0);
const plainPath = join(tmp.dir, 'plaintext.raw');
writeFileSync(plainPath, plaintext);

test('geometry: offset/skip/size in 512-byte sectors; offset beyond the device and a size past its end are refused', () => {
  const p = resolvePlainParams({ offset: 8, skip: 100, size: 16 });
  assert.deepEqual(plainGeometry(p, 64 * 512), { encryption: 'aes-xts-plain64', keyBytes: 32, sectorSize: 512, ivTweak: 100, dataOffset: 4096, payloadSize: 8192 });
  assert.equal(plainGeometry(resolvePlainParams({ offset: 8 }), 64 * 512).payloadSize, 56 * 512);
  assert.throws(() => plainGeometry(resolvePlainParams({ offset: 64 }), 64 * 512), OutOfRangeError);
  assert.throws(() => plainGeometry(resolvePlainParams({ offset: 60, size: 8 }), 64 * 512), OutOfRangeError);
  assert.throws(() => resolvePlainParams({ cipher: 'serpent-xts-plain64' }), UnsupportedCipherError);
  assert.throws(() => resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 128 }), UnsupportedCipherError);
  assert.throws(() => resolvePlainParams({ keyBits: 12 }), InvalidArgumentError);
  assert.throws(() => resolvePlainParams({ sectorSize: 4096, skip: 3 }), InvalidArgumentError);
  assert.throws(() => resolvePlainParams({ hash: 'sha256:99', keyBits: 256 }), InvalidArgumentError);
});

const CASES = [
  {
    name: 'aes-xts-plain64, 512-bit key file, --offset 8 --skip 5',
    mode: 'xts-plain64' as const,
    cli: ['--src-cipher', 'aes-xts-plain64', '--src-key-size', '512', '--src-offset', '8', '--src-skip', '5'],
    key: randomBytes(64),
    offset: 8,
    skip: 5,
    keyInput: 'file' as const,
  },
  {
    // The KAT in plain-key.test.ts: "brickcrypt" through ripemd160 (cryptsetup < 2.7's default) to 32 bytes.
    name: 'aes-cbc-essiv:sha256 (cryptsetup < 2.7 defaults), passphrase on stdin hashed with ripemd160',
    mode: 'cbc-essiv:sha256' as const,
    cli: ['--src-cipher', 'aes-cbc-essiv:sha256', '--src-key-size', '256', '--src-hash', 'ripemd160', '--src-key-file', '-'],
    key: Buffer.from('3375a0e034004d2c2812449ad3c80567ee78c73db11d9009bdc4cdcbbf50657d', 'hex'),
    offset: 0,
    skip: 0,
    keyInput: 'stdin' as const,
    stdin: 'brickcrypt',
  },
  {
    name: 'aes-xts-plain64 with 4096-byte sectors (IV still in 512-byte units), --skip 16',
    mode: 'xts-plain64' as const,
    cli: ['--src-key-size', '256', '--src-sector-size', '4096', '--src-skip', '16'],
    key: randomBytes(32),
    offset: 0,
    skip: 16,
    sectorSize: 4096,
    keyInput: 'file' as const,
  },
];

for (const c of CASES) {
  test(`plain round trip: ${c.name}: independently made ciphertext reads back through convert and verify`, { skip: needPyCrypto() }, () => {
    const dir = join(tmp.dir, c.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 40));
    execFileSync('mkdir', ['-p', dir]);
    const junk = randomBytes(c.offset * 512);
    const cipher = encryptIndependently(plaintext, { mode: c.mode, key: c.key, ivStart: c.skip, ...(c.sectorSize ? { sectorSize: c.sectorSize } : {}) });
    const vol = join(dir, 'vol.plain');
    writeFileSync(vol, Buffer.concat([junk, cipher]));
    const keyArgs: string[] = [];
    let input: string | undefined;
    if (c.keyInput === 'file') {
      const keyFile = join(dir, 'key.bin');
      writeFileSync(keyFile, c.key);
      keyArgs.push('--src-key-file', keyFile);
    } else input = c.stdin;
    const out = join(dir, 'out.raw');
    const r = runCli(['convert', vol, out, '--src-format', 'plain', ...c.cli, ...keyArgs, '--dst-format', 'raw'], { ...(input !== undefined ? { input } : {}) });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(out).equals(plaintext), 'decrypted bytes equal the plaintext');
    const v = runCli(['verify', vol, plainPath, '--src-format', 'plain', ...c.cli, ...keyArgs], { ...(input !== undefined ? { input } : {}) });
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, /Images are equal/);
    // The plain volume on the second side, too.
    const dstArgs = [...c.cli, ...keyArgs].map((a) => a.replace(/^--src-/, '--dst-'));
    const v2 = runCli(['verify', plainPath, vol, '--dst-format', 'plain', ...dstArgs], { ...(input !== undefined ? { input } : {}) });
    assert.equal(v2.status, 0, v2.stderr);
    // A wrong key gives other plaintext: verify finds the difference (exit 7).
    const wrong = join(dir, 'wrong.bin');
    writeFileSync(wrong, randomBytes(c.key.length));
    const bad = runCli(['verify', vol, plainPath, '--src-format', 'plain', ...c.cli.filter((a) => a !== '-' && a !== '--src-key-file'), '--src-key-file', wrong, '--src-hash', 'plain'], {});
    assert.equal(bad.status, 7, bad.stderr);
  });
}

test('os-brick plain volume (cryptsetup create --key-file=- with the hex passphrase) converts to LUKS2 that cryptsetup opens', { skip: needPyCrypto() || needTools('cryptsetup') }, () => {
  const dir = join(tmp.dir, 'osbrick');
  execFileSync('mkdir', ['-p', dir]);
  // The managed key [00..1f]; os-brick's passphrase is its hex; cryptsetup 2.7 hashes it with sha256 (KAT).
  const hexPassphrase = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f';
  const volumeKey = Buffer.from(
    '6c86c6aac5fb24bcf5d9939cb7d7d5645ce39418f449e03b262dd4fa14b4b92b38299db37ecf9ebd94c76caaac1229820fd0cf214f14ce1fc343adc0180db026',
    'hex',
  );
  const vol = join(dir, 'vol.plain');
  writeFileSync(vol, encryptIndependently(plaintext, { mode: 'xts-plain64', key: volumeKey, ivStart: 0 }));
  const pass = join(dir, 'luks-pass');
  writeFileSync(pass, 'new luks passphrase');
  const luks = join(dir, 'vol.luks');
  const r = runCli(
    ['convert', vol, luks, '--src-format', 'plain', '--src-cipher', 'aes-xts-plain64', '--src-key-size', '512', '--src-key-file', '-',
      '--dst-format', 'luks2', '--dst-key-file', pass, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'],
    { input: hexPassphrase },
  );
  assert.equal(r.status, 0, r.stderr);
  execFileSync(whichTool('cryptsetup')!, ['open', '--test-passphrase', '--key-file', pass, luks]);
  const v = runCli(['verify', plainPath, luks, '--dst-key-file', pass]);
  assert.equal(v.status, 0, v.stderr);
});

test('refusals are typed errors and leave no target behind', () => {
  const vol = join(tmp.dir, 'refuse.plain');
  writeFileSync(vol, randomBytes(16 * 512));
  const key = join(tmp.dir, 'refuse.key');
  writeFileSync(key, randomBytes(64));
  const out = join(tmp.dir, 'refuse.out');
  const cases: Array<[args: string[], code: string, exit: number]> = [
    [['--src-format', 'plain', '--src-cipher', 'serpent-xts-plain64', '--src-key-file', key], 'UNSUPPORTED_CIPHER', 4],
    [['--src-format', 'plain', '--src-cipher', 'aes-xts-plain64', '--src-key-size', '128', '--src-key-file', key], 'UNSUPPORTED_CIPHER', 4],
    [['--src-format', 'plain', '--src-offset', '16', '--src-key-file', key], 'OUT_OF_RANGE', 4],
    [['--src-format', 'plain', '--src-offset', '8', '--src-size', '9', '--src-key-file', key], 'OUT_OF_RANGE', 4],
    [['--src-cipher', 'aes-xts-plain64', '--src-key-file', key], 'INVALID_ARGUMENT', 1],
    [['--src-format', 'plain', '--src-key-size', '512', '--src-key-file', join(tmp.dir, 'short.key')], 'INVALID_ARGUMENT', 1],
    [['--src-format', 'plain'], 'INVALID_ARGUMENT', 1],
  ];
  writeFileSync(join(tmp.dir, 'short.key'), randomBytes(20));
  for (const [args, code, exit] of cases) {
    const r = runCli(['convert', vol, out, ...args, '--dst-format', 'raw']);
    assert.equal(r.status, exit, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`error ${code}:`), args.join(' '));
    assert.equal(existsSync(out), false, 'no target is left behind');
  }
});

test('a LUKS volume given as a plain source is refused', { skip: needTools('cryptsetup') }, () => {
  const luks = join(tmp.dir, 'is-luks.img');
  writeFileSync(luks, Buffer.alloc(20 << 20));
  const pass = join(tmp.dir, 'is-luks.pass');
  writeFileSync(pass, 'pw');
  execFileSync(whichTool('cryptsetup')!, ['luksFormat', '-q', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', pass, luks]);
  const key = join(tmp.dir, 'is-luks.key');
  writeFileSync(key, randomBytes(32));
  const r = runCli(['convert', luks, join(tmp.dir, 'is-luks.out'), '--src-format', 'plain', '--src-key-file', key, '--dst-format', 'raw']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /holds luks2 data, not a plain/);
});

test('attach --type plain: nbdcopy reads the plaintext; writes land as the ciphertext dm-crypt would write', { skip: needPyCrypto() || needTools('nbdcopy') }, async () => {
  const key = randomBytes(64);
  const keyFile = join(tmp.dir, 'attach.key');
  writeFileSync(keyFile, key);
  const vol = join(tmp.dir, 'attach.plain');
  writeFileSync(vol, Buffer.concat([Buffer.alloc(4096), encryptIndependently(plaintext, { mode: 'xts-plain64', key, ivStart: 7 })]));
  const sock = join(tmp.dir, 'plain.sock');
  const pid = join(tmp.dir, 'plain.pid');
  const common = ['--type', 'plain', '--cipher', 'aes-xts-plain64', '--key-size', '512', '--offset', '8', '--skip', '7', '--key-file', keyFile];
  const { stdout } = await execFileP(process.execPath, [cliPath, 'attach', vol, ...common, '--socket', sock, '--daemon', '--pid-file', pid], { encoding: 'utf8' });
  const uri = stdout.trim();
  try {
    const back = join(tmp.dir, 'attach.back');
    await execFileP(whichTool('nbdcopy')!, [uri, back]);
    assert.ok(readFileSync(back).equals(plaintext));
    const fresh = randomBytes(plaintext.length);
    const src = join(tmp.dir, 'attach.fresh');
    writeFileSync(src, fresh);
    await execFileP(whichTool('nbdcopy')!, [src, uri]);
    assert.equal(runCli(['detach', '--pid-file', pid]).status, 0);
    const disk = readFileSync(vol);
    assert.ok(disk.subarray(4096).equals(encryptIndependently(fresh, { mode: 'xts-plain64', key, ivStart: 7 })), 'ciphertext equals the independent encryption of what was written');
  } finally {
    runCli(['detach', '--pid-file', pid]);
  }
});

test('attach: plain options without --type plain, and a bad cipher, are refused before serving', () => {
  const vol = join(tmp.dir, 'attach-bad.plain');
  writeFileSync(vol, randomBytes(8 * 512));
  const sock = join(tmp.dir, 'bad.sock');
  const r1 = runCli(['attach', vol, '--cipher', 'aes-xts-plain64', '--socket', sock]);
  assert.equal(r1.status, 1, r1.stderr);
  assert.match(r1.stderr, /need --type plain/);
  const key = join(tmp.dir, 'attach-bad.key');
  writeFileSync(key, randomBytes(32));
  const r2 = runCli(['attach', vol, '--type', 'plain', '--cipher', 'twofish-xts-plain64', '--key-file', key, '--socket', sock]);
  assert.equal(r2.status, 4, r2.stderr);
  assert.match(r2.stderr, /error UNSUPPORTED_CIPHER:/);
  const r3 = runCli(['attach', vol, '--type', 'plain', '--offset', '8', '--key-file', key, '--socket', sock]);
  assert.equal(r3.status, 4, r3.stderr);
  assert.match(r3.stderr, /error OUT_OF_RANGE:/);
  assert.equal(existsSync(sock), false);
});

test('os-brick plain volume with its key in the key manager: convert --src-key-id and attach --type plain --key-id', { skip: needPyCrypto() || needTools('nbdcopy') }, async () => {
  const dir = join(tmp.dir, 'managed');
  execFileSync('mkdir', ['-p', dir]);
  const env = { BRICKCRYPT_HOME: join(dir, 'home'), BRICKCRYPT_PROFILE: '', BRICKCRYPT_KEY_MANAGER: '' };
  assert.equal(runCli(['key', 'init'], { env }).status, 0);
  const keyFile = join(dir, 'managed.key');
  writeFileSync(keyFile, Buffer.from(Array.from({ length: 32 }, (_, i) => i)));
  const stored = runCli(['key', 'store', '--file', keyFile], { env });
  assert.equal(stored.status, 0, stored.stderr);
  const id = stored.stdout.trim();
  // sha256 rounds of the hex passphrase "000102...1f", 512 bits (plain-key.test.ts).
  const volumeKey = Buffer.from(
    '6c86c6aac5fb24bcf5d9939cb7d7d5645ce39418f449e03b262dd4fa14b4b92b38299db37ecf9ebd94c76caaac1229820fd0cf214f14ce1fc343adc0180db026',
    'hex',
  );
  const vol = join(dir, 'vol.plain');
  writeFileSync(vol, encryptIndependently(plaintext, { mode: 'xts-plain64', key: volumeKey, ivStart: 0 }));
  const out = join(dir, 'out.raw');
  const r = runCli(['convert', vol, out, '--src-format', 'plain', '--src-cipher', 'aes-xts-plain64', '--src-key-size', '512', '--src-key-id', id, '--dst-format', 'raw'], { env });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(readFileSync(out).equals(plaintext));
  const sock = join(dir, 'm.sock');
  const pid = join(dir, 'm.pid');
  const { stdout } = await execFileP(
    process.execPath,
    [cliPath, 'attach', vol, '--type', 'plain', '--cipher', 'aes-xts-plain64', '--key-size', '512', '--key-id', id, '--read-only', '--socket', sock, '--daemon', '--pid-file', pid],
    { encoding: 'utf8', env: { ...process.env, ...env } },
  );
  try {
    const back = join(dir, 'back.raw');
    await execFileP(whichTool('nbdcopy')!, [stdout.trim(), back]);
    assert.ok(readFileSync(back).equals(plaintext));
  } finally {
    runCli(['detach', '--pid-file', pid]);
  }
});
