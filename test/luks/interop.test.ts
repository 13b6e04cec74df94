/**
 * Interop with cryptsetup 2.6 and qemu-img 7.2 in both directions: volumes we format open in
 * cryptsetup with the same volume key; volumes and keyslots cryptsetup (and QEMU) create open
 * here; keyslot changes and header backups match cryptsetup's view byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, truncateSync as truncateExisting } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume, restoreLuksHeader, type FormatOptions } from '../../src/luks/index.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { AlreadyExistsError, InvalidArgumentError, WrongPassphraseError } from '../../src/errors.js';
import { parseEncryption } from '../../src/crypto/cipher-spec.js';
import { createSectorCipher } from '../../src/crypto/sector-cipher.js';
import { cryptsetupVolumeKeyHex, needTools, run, runQemuImgLuks, runStatus, tempDir } from '../helpers/tools.js';

const skip = needTools('cryptsetup');
const PASS = 'correct horse\n';
const FAST: Partial<FormatOptions> = { pbkdf: 'pbkdf2', iterations: 1000 };

/** Creates (or resizes) a sparse file. */
function truncateSync(path: string, size: number): void {
  writeFileSync(path, '', { flag: 'a' });
  truncateExisting(path, size);
}

const csVolumeKey = (img: string, keyFile: string, extra: string[] = []): string => cryptsetupVolumeKeyHex(img, keyFile, extra);

function hexOf(key: VolumeKey): string {
  return Buffer.from(key.expose()).toString('hex');
}

async function formatFile(path: string, size: number, options: Omit<FormatOptions, 'passphrase'>, pass = PASS): Promise<string> {
  writeFileSync(path, '');
  truncateExisting(path, size);
  const dev = await FileDevice.open(path);
  try {
    const { volume, key } = await LuksVolume.format(dev, { ...options, passphrase: Passphrase.fromString(pass) } as FormatOptions);
    assert.ok(await volume.verifyVolumeKey(key));
    const hex = hexOf(key);
    key.wipe();
    return hex;
  } finally {
    await dev.close();
  }
}

async function ourKey(path: string, pass: string, options: { keyslot?: number; header?: string } = {}): Promise<string> {
  const dev = await FileDevice.open(path, { readOnly: true });
  const hdr = options.header ? await FileDevice.open(options.header, { readOnly: true }) : undefined;
  try {
    const vol = await LuksVolume.open(dev, hdr ? { headerDevice: hdr, readOnly: true } : { readOnly: true });
    const r = await vol.unlock(Passphrase.fromString(pass), options.keyslot !== undefined ? { keyslot: options.keyslot } : {});
    const hex = hexOf(r.key);
    r.key.wipe();
    return hex;
  } finally {
    await hdr?.close();
    await dev.close();
  }
}

async function withVol<T>(path: string, fn: (v: LuksVolume) => Promise<T>): Promise<T> {
  const dev = await FileDevice.open(path);
  try {
    return await fn(await LuksVolume.open(dev));
  } finally {
    await dev.close();
  }
}

const MATRIX: Array<Omit<FormatOptions, 'passphrase'> & { name: string }> = [
  { name: 'luks1 aes-xts-plain64 512 sha256', type: 'luks1', cipher: 'aes-xts-plain64', keySizeBits: 512, hash: 'sha256' },
  { name: 'luks1 aes-xts-plain64 256 sha1', type: 'luks1', cipher: 'aes-xts-plain64', keySizeBits: 256, hash: 'sha1' },
  { name: 'luks1 aes-xts-plain 512 sha512', type: 'luks1', cipher: 'aes-xts-plain', keySizeBits: 512, hash: 'sha512' },
  { name: 'luks1 aes-cbc-essiv:sha256 256 ripemd160', type: 'luks1', cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, hash: 'ripemd160' },
  { name: 'luks1 aes-cbc-plain 128', type: 'luks1', cipher: 'aes-cbc-plain', keySizeBits: 128 },
  { name: 'luks1 aes-cbc-plain64 256', type: 'luks1', cipher: 'aes-cbc-plain64', keySizeBits: 256 },
  { name: 'luks2 aes-xts-plain64 512 4096', type: 'luks2', cipher: 'aes-xts-plain64', keySizeBits: 512, sectorSize: 4096 },
  { name: 'luks2 aes-xts-plain64 256 512', type: 'luks2', cipher: 'aes-xts-plain64', keySizeBits: 256, sectorSize: 512 },
  { name: 'luks2 aes-xts-plain 512 512', type: 'luks2', cipher: 'aes-xts-plain', keySizeBits: 512, sectorSize: 512 },
  { name: 'luks2 aes-cbc-essiv:sha256 256 4096 sha512', type: 'luks2', cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, sectorSize: 4096, hash: 'sha512' },
  { name: 'luks2 aes-cbc-plain 128 512', type: 'luks2', cipher: 'aes-cbc-plain', keySizeBits: 128, sectorSize: 512 },
  { name: 'luks2 aes-cbc-plain64 256 4096 ripemd160', type: 'luks2', cipher: 'aes-cbc-plain64', keySizeBits: 256, sectorSize: 4096, hash: 'ripemd160' },
];

test('volumes we format open in cryptsetup with the same volume key (every cipher, both versions)', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    for (const row of MATRIX) {
      const img = join(dir, `${row.name.replace(/[^a-z0-9]+/gi, '_')}.img`);
      const size = row.type === 'luks1' ? 3 * 1024 * 1024 : 17 * 1024 * 1024;
      const { name, ...opts } = row;
      const hex = await formatFile(img, size, { ...opts, ...FAST });
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]).status, 0, name);
      const dump = run('cryptsetup', ['luksDump', img]);
      assert.match(dump, row.type === 'luks1' ? /Version:\s+1/ : /Version:\s+2/, name);
      if (row.type === 'luks2') assert.match(dump, new RegExp(`sector: ${row.sectorSize} \\[bytes\\]`), name);
      assert.match(dump, new RegExp((row.cipher ?? '').split('-').slice(1).join('-').replace(/[:]/g, '.')), name);
      assert.equal(csVolumeKey(img, keyFile), hex, name);
      // Wrong passphrase is refused by both.
      writeFileSync(join(dir, 'bad'), 'correct horse');
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', join(dir, 'bad'), img]).status, 2, name);
    }
  } finally {
    cleanup();
  }
});

test('argon2id and argon2i keyslots we make (small costs) open in cryptsetup; LUKS1 layout matches cryptsetup', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    for (const pbkdf of ['argon2id', 'argon2i'] as const) {
      const img = join(dir, `${pbkdf}.img`);
      const hex = await formatFile(img, 17 * 1024 * 1024, { type: 'luks2', pbkdf, iterations: 4, memoryKiB: 8192, parallel: 1 });
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]).status, 0);
      assert.match(run('cryptsetup', ['luksDump', img]), new RegExp(`PBKDF:\\s+${pbkdf}[\\s\\S]*Memory:\\s+8192`));
      assert.equal(csVolumeKey(img, keyFile), hex);
    }
    // Same payload offset and keyslot offsets as cryptsetup luksFormat --type luks1.
    const ours = join(dir, 'l1.img');
    await formatFile(ours, 3 * 1024 * 1024, { type: 'luks1', ...FAST });
    const theirs = join(dir, 'l1cs.img');
    truncateSync(theirs, 3 * 1024 * 1024);
    run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, theirs]);
    const layout = (p: string) => run('cryptsetup', ['luksDump', p]).split('\n').filter((l) => /Payload offset|Key material offset|MK bits/.test(l));
    assert.deepEqual(layout(ours), layout(theirs));
    assert.ok(layout(ours).includes('Payload offset:\t4096'));
  } finally {
    cleanup();
  }
});

test('cryptsetup luksFormat volumes (LUKS1, LUKS2 pbkdf2, argon2id, detached header) unlock here with the same key', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const cases: Array<[string, string[]]> = [
      ['luks1', ['--type', 'luks1', '--pbkdf-force-iterations', '1000']],
      ['luks1-cbc', ['--type', 'luks1', '--pbkdf-force-iterations', '1000', '--cipher', 'aes-cbc-essiv:sha256', '--key-size', '256', '--hash', 'sha1']],
      ['luks2', ['--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']],
      ['luks2-512', ['--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '512', '--cipher', 'aes-cbc-plain64', '--key-size', '128']],
      ['luks2-argon', ['--type', 'luks2', '--pbkdf', 'argon2id', '--pbkdf-memory', '65536', '--pbkdf-force-iterations', '4', '--pbkdf-parallel', '1']],
    ];
    for (const [name, args] of cases) {
      const img = join(dir, `${name}.img`);
      truncateSync(img, 18 * 1024 * 1024);
      run('cryptsetup', ['luksFormat', '--batch-mode', '--key-file', keyFile, ...args, img]);
      assert.equal(await ourKey(img, PASS), csVolumeKey(img, keyFile), name);
    }
    const data = join(dir, 'data.img');
    const hdr = join(dir, 'hdr.img');
    truncateSync(data, 4 * 1024 * 1024);
    truncateSync(hdr, 16 * 1024 * 1024);
    run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, '--header', hdr, data]);
    assert.equal(await ourKey(data, PASS, { header: hdr }), csVolumeKey(data, keyFile, ['--header', hdr]));
  } finally {
    cleanup();
  }
});

test('cryptsetup defaults (argon2id benchmarked, 4096-byte sectors) unlock here', { skip, timeout: 240_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const img = join(dir, 'defaults.img');
    truncateSync(img, 20 * 1024 * 1024);
    run('cryptsetup', ['luksFormat', '--batch-mode', '--iter-time', '200', '--key-file', keyFile, img], { timeout: 120_000 });
    const dump = run('cryptsetup', ['luksDump', img]);
    assert.match(dump, /PBKDF:\s+argon2id/);
    assert.match(dump, /sector: 4096/);
    await withVol(img, async (v) => assert.equal(v.sectorSize, 4096));
    assert.equal(await ourKey(img, PASS), csVolumeKey(img, keyFile));
  } finally {
    cleanup();
  }
});

test('qemu-img LUKS1 images unlock here; data written by qemu-io decrypts with our key', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'q.luks');
    runQemuImgLuks(['create', '-f', 'luks', '--object', 'secret,id=sec0,data=qemupass', '-o', 'key-secret=sec0,iter-time=100', img, '4M']);
    run('qemu-io', ['--object', 'secret,id=sec0,data=qemupass', '--image-opts', `driver=luks,key-secret=sec0,file.filename=${img}`, '-c', 'write -P 0xa5 4096 8192']);
    const dev = await FileDevice.open(img, { readOnly: true });
    try {
      const vol = await LuksVolume.open(dev, { readOnly: true });
      assert.equal(vol.version, 1);
      assert.equal(vol.dataOffset, 4040 * 512); // QEMU packs keyslots without cryptsetup's 1 MiB alignment
      const { key } = await vol.unlock(Passphrase.fromString('qemupass'));
      const buf = new Uint8Array(16384);
      await dev.read(buf, vol.dataOffset);
      const c = createSectorCipher(parseEncryption(vol.encryption), key.expose(), 512);
      c.decrypt(buf, 0);
      c.wipe();
      key.wipe();
      assert.ok(buf.subarray(4096, 12288).every((b) => b === 0xa5));
    } finally {
      await dev.close();
    }
  } finally {
    cleanup();
  }
});

test('keyslot management is seen right by cryptsetup (add, change, remove, kill; both versions)', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const files: Record<string, string> = {};
    for (const [n, text] of [['a', PASS], ['b', 'second'], ['c', 'third'], ['d', 'fourth']] as const) {
      files[n] = join(dir, n);
      writeFileSync(files[n]!, text);
    }
    const test = (img: string, key: string, slot?: number) =>
      runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', files[key]!, ...(slot !== undefined ? ['--key-slot', String(slot)] : []), img]).status;
    for (const type of ['luks1', 'luks2'] as const) {
      const img = join(dir, `${type}.img`);
      const vk = await formatFile(img, 17 * 1024 * 1024, { type, ...FAST });
      await withVol(img, async (v) => {
        assert.equal(await v.addKey(Passphrase.fromString(PASS), Passphrase.fromString('second'), { ...FAST, keyslot: 3 }), 3);
        assert.equal(await v.addKey(VolumeKey.copyOf(Buffer.from(vk, 'hex')), Passphrase.fromString('third'), FAST), 1);
      });
      assert.equal(test(img, 'b', 3), 0, `${type} added slot 3`);
      assert.equal(test(img, 'c', 1), 0, `${type} added slot 1 from the volume key`);
      assert.equal(test(img, 'b', 1), 1 + 1, `${type} slot 1 refuses the slot-3 passphrase`);
      // cryptsetup adds a slot; we unlock it.
      run('cryptsetup', ['luksAddKey', '--batch-mode', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', files.a!, '--key-slot', '5', img, files.d!]);
      assert.equal(await ourKey(img, 'fourth', { keyslot: 5 }), vk);
      const changed = await withVol(img, (v) => v.changeKey(Passphrase.fromString('second'), Passphrase.fromString('new-second'), FAST));
      const dump = run('cryptsetup', ['luksDump', img]);
      if (type === 'luks1') {
        assert.equal(changed, 2, 'LUKS1 moves a changed key to the first free slot, as luksChangeKey');
        assert.match(dump, /Key Slot 3: DISABLED/);
        assert.match(dump, /Key Slot 2: ENABLED/);
      } else {
        assert.equal(changed, 3, 'LUKS2 keeps the keyslot number, as luksChangeKey');
        assert.match(dump, /\n  3: luks2/);
      }
      writeFileSync(files.b!, 'new-second');
      assert.equal(test(img, 'b', changed), 0);
      assert.equal(await ourKey(img, 'new-second'), vk);
      await assert.rejects(ourKey(img, 'second'), WrongPassphraseError);
      await withVol(img, async (v) => {
        assert.equal(await v.removeKey(Passphrase.fromString('third')), 1);
        await v.killSlot(5);
      });
      assert.equal(test(img, 'c'), 2);
      assert.equal(test(img, 'd'), 2);
      const after = run('cryptsetup', ['luksDump', img]);
      if (type === 'luks1') {
        assert.match(after, /Key Slot 1: DISABLED/);
        assert.match(after, /Key Slot 5: DISABLED/);
      } else {
        assert.doesNotMatch(after, /\n  1: luks2/);
        assert.doesNotMatch(after, /\n  5: luks2/);
      }
      assert.equal(test(img, 'a', 0), 0);
      writeFileSync(files.b!, 'second');
    }
  } finally {
    cleanup();
  }
});

test('header backup equals cryptsetup luksHeaderBackup; restore validates, refuses a foreign UUID without force', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    for (const type of ['luks1', 'luks2'] as const) {
      const img = join(dir, `${type}.img`);
      await formatFile(img, 17 * 1024 * 1024, { type, ...FAST });
      const csBackup = join(dir, `${type}.cs.hdr`);
      run('cryptsetup', ['luksHeaderBackup', img, '--header-backup-file', csBackup]);
      const ours = await withVol(img, (v) => v.headerBackup());
      const theirs = readFileSync(csBackup);
      assert.equal(ours.length, theirs.length, type);
      assert.ok(Buffer.compare(Buffer.from(ours), theirs) === 0, `${type} backup bytes`);
      // Kill the only keyslot, then restore the backup: the passphrase works again.
      await withVol(img, (v) => v.killSlot(0));
      assert.notEqual(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]).status, 0);
      await withVol(img, async (v) => {
        await restoreLuksHeader(v.dataDevice, ours);
      });
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, img]).status, 0);
      // Another volume (other UUID, same layout): refused unless forced. A garbled backup is refused.
      const other = join(dir, `${type}.other.img`);
      await formatFile(other, 17 * 1024 * 1024, { type, ...FAST }, 'other');
      const dev = await FileDevice.open(other);
      try {
        const before = createHash('sha256').update(readFileSync(other)).digest('hex');
        await assert.rejects(restoreLuksHeader(dev, ours), AlreadyExistsError);
        const garbled = new Uint8Array(ours);
        garbled[0] = 0;
        garbled[type === 'luks1' ? 0 : 16384] = 0;
        await assert.rejects(restoreLuksHeader(dev, garbled));
        assert.equal(createHash('sha256').update(readFileSync(other)).digest('hex'), before);
        await restoreLuksHeader(dev, ours, { force: true });
      } finally {
        await dev.close();
      }
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, other]).status, 0);
      // A LUKS2 backup never restores onto a LUKS1 volume (different data offset/key size).
    }
    const l1 = await FileDevice.open(join(dir, 'luks1.img'));
    try {
      await assert.rejects(restoreLuksHeader(l1, readFileSync(join(dir, 'luks2.cs.hdr')), { force: true }), InvalidArgumentError);
    } finally {
      await l1.close();
    }
  } finally {
    cleanup();
  }
});

test('detached headers (LUKS1 and LUKS2) open in cryptsetup --header with data offset 0', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    for (const type of ['luks1', 'luks2'] as const) {
      const data = join(dir, `${type}.data`);
      const hdr = join(dir, `${type}.hdr`);
      truncateSync(data, 1024 * 1024);
      truncateSync(hdr, 16 * 1024 * 1024);
      const dd = await FileDevice.open(data);
      const hd = await FileDevice.open(hdr);
      let hex: string;
      try {
        const { volume, key } = await LuksVolume.format(dd, { type, ...FAST, passphrase: Passphrase.fromString(PASS), headerDevice: hd } as FormatOptions & { headerDevice: FileDevice });
        assert.equal(volume.dataOffset, 0);
        assert.equal(volume.payloadSize, 1024 * 1024);
        hex = hexOf(key);
        key.wipe();
      } finally {
        await hd.close();
        await dd.close();
      }
      assert.ok(readFileSync(data).every((b) => b === 0), 'the data device is not touched');
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, '--header', hdr, data]).status, 0);
      assert.equal(csVolumeKey(data, keyFile, ['--header', hdr]), hex);
    }
  } finally {
    cleanup();
  }
});
