/**
 * `renderNativeConfig` end to end with the real consumers: the printed text is parsed by
 * bash, and exactly those options are handed to qemu-io / qemu-img / qemu-storage-daemon
 * (QEMU 7.2) to write and read a LUKS1 volume; what QEMU wrote is read back by brickcrypt's
 * own engine. LUKS2, detached headers and wrong passphrases are refused before anything is
 * written; the libvirt script runs against a recording stand-in for virsh (libvirtd is not
 * available here) and its XML is checked with xmllint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { libvirtSecretUuid, renderNativeConfig, type NativeConfig } from '../../src/attach/native-config.js';
import { removeSecretFile, writeSecretFile } from '../../src/attach/secret-file.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { passphraseForLuks } from '../../src/keys/luks-passphrase.js';
import type { ManagedObject } from '../../src/keys/key-manager.js';
import { Passphrase, SecretBytes } from '../../src/secret.js';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, UnsupportedError, WrongPassphraseError } from '../../src/errors.js';
import { needTools, run, tempDir, whichTool } from '../helpers/tools.js';

const MIB = 1024 * 1024;

/** The argv words bash makes of the printed text (comments and line continuations as a shell sees them). */
function printedArgv(text: string): string[] {
  const script = `args=(\n${text}\n)\nprintf '%s\\0' "\${args[@]}"`;
  return execFileSync('bash', ['-c', script], { encoding: 'utf8' }).split('\0').slice(0, -1);
}

/**
 * qemu-io has no --blockdev/-drive; it takes the same values as `--image-opts VALUE` (key=value)
 * or a `json:` filename. `-drive`'s front-end keys (if, id) are the only ones dropped.
 */
function qemuIoImageArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i]!, argv[i + 1]!];
    if (flag === '--object') out.push('--object', value);
    else if (flag === '--blockdev' && value.startsWith('{')) out.push(`json:${value}`);
    else if (flag === '--blockdev') out.push('--image-opts', value);
    else if (flag === '-drive') {
      assert.match(value, /^if=none,id=[^,]+,/);
      out.push('--image-opts', value.replace(/^if=none,id=[^,]+,/, ''));
    } else assert.fail(`unexpected printed option ${flag}`);
  }
  return out;
}

function qemuIo(imageArgs: string[], commands: string[]): string {
  return run('qemu-io', [...imageArgs, ...commands.flatMap((c) => ['-c', c])]);
}

async function readPlain(volumePath: string, pass: Passphrase, offset: number, length: number): Promise<Buffer> {
  const dev = await FileDevice.open(volumePath, { readOnly: true });
  const vol = await LuksVolume.open(dev, { readOnly: true });
  const { key } = await vol.unlock(pass);
  const plain = EncryptedDevice.open(dev, vol, key, { readOnly: true });
  try {
    const buf = new Uint8Array(length);
    await plain.read(buf, offset);
    return Buffer.from(buf);
  } finally {
    await plain.close();
    await dev.close().catch(() => undefined);
  }
}

/** A LUKS1 volume by cryptsetup (fast PBKDF2), passphrase bytes exactly as given. */
function cryptsetupLuks1(dir: string, name: string, pass: Uint8Array, extra: string[] = []): string {
  const img = join(dir, name);
  writeFileSync(img, '');
  truncateSync(img, 8 * MIB);
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, pass, { mode: 0o600 });
  run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, ...extra, img]);
  return img;
}

/** os-brick's passphrase for a managed symmetric key: lowercase hex of its bytes. */
function osBrickPassphrase(): Passphrase {
  const key = new Uint8Array(randomBytes(32));
  key[0] = 0; // a leading zero byte must survive ("00..." not "0...")
  const object = { id: 'k', type: 'symmetric', secret: SecretBytes.copyOf(key), created: '', owner: { user: 'u', project: 'p' }, consumers: [] } as unknown as ManagedObject;
  return passphraseForLuks(object);
}

function assertSecretFile(cfg: NativeConfig, pass: Passphrase): void {
  const st = lstatSync(cfg.secretFile.path);
  assert.ok(st.isFile());
  assert.equal(st.mode & 0o777, 0o600, `mode ${(st.mode & 0o777).toString(8)}`);
  assert.deepEqual(new Uint8Array(readFileSync(cfg.secretFile.path)), pass.expose());
}

const qemuSkip = needTools('qemu-img', 'qemu-io', 'cryptsetup');

test('qemu: every option form, parsed from the printed text, lets qemu-io write and read the volume', { skip: qemuSkip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const cases: Array<{ label: string; pass: Passphrase }> = [
      { label: 'os-brick hex of a managed key', pass: osBrickPassphrase() },
      { label: 'raw bytes with comma, quote and trailing newline', pass: new Passphrase(new Uint8Array(Buffer.from("pa,ss 'w\"ord\n", 'utf8'))) },
    ];
    let n = 0;
    for (const { label, pass } of cases) {
      // A name QEMU (commas), the shell (quote, space) and XML all have to escape.
      const img = cryptsetupLuks1(dir, `vol ${n},'x'.img`, pass.expose());
      for (const syntax of ['blockdev', 'blockdev-json', 'drive'] as const) {
        const secretPath = join(dir, `sec ${n++},${syntax}.secret`);
        const cfg = await renderNativeConfig({ volumePath: img, target: 'qemu', syntax, passphrase: pass, secretFile: secretPath });
        assert.equal(cfg.secretFile.path, secretPath);
        assertSecretFile(cfg, pass);
        assert.ok(!cfg.text.includes(Buffer.from(pass.expose()).toString('latin1').trim()), 'the passphrase is not printed');
        assert.equal(cfg.volume.version, 1);
        const argv = printedArgv(cfg.text);
        assert.deepEqual(argv, cfg.qemuArgs, `${label} ${syntax}`);
        assert.equal(argv[0], '--object');
        assert.equal(argv[2], syntax === 'drive' ? '-drive' : '--blockdev');

        const io = qemuIoImageArgs(argv);
        const fill = 0x11 + n;
        const off = 64 * 1024 * n;
        qemuIo(io, [`write -P ${fill} ${off} 65536`]);
        const out = qemuIo(io, [`read -P ${fill} ${off} 65536`]);
        assert.match(out, /read 65536\/65536 bytes/);
        // brickcrypt's engine decrypts what QEMU wrote...
        assert.deepEqual(await readPlain(img, pass, off, 65536), Buffer.alloc(65536, fill), `${label} ${syntax}`);
        // ...and the file holds ciphertext, not the pattern.
        const raw = readFileSync(img).subarray(cfg.volume.dataOffset + off, cfg.volume.dataOffset + off + 65536);
        assert.notDeepEqual(raw, Buffer.alloc(65536, fill));
        await removeSecretFile(cfg.secretFile);
        assert.ok(!existsSync(secretPath));
      }
    }
    for (const c of cases) c.pass.wipe();
  } finally {
    cleanup();
  }
});

test('qemu: qemu-img convert with the printed options reads the same plaintext as brickcrypt', { skip: qemuSkip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const pass = Passphrase.fromString('convert me');
    // Engine-made LUKS1 with ESSIV: QEMU decrypts brickcrypt's volumes too.
    const img = join(dir, 'essiv.img');
    writeFileSync(img, '');
    truncateSync(img, 4 * MIB);
    const dev = await FileDevice.open(img);
    const { volume, key } = await LuksVolume.format(dev, { type: 'luks1', passphrase: pass, cipher: 'aes-cbc-essiv:sha256', keySizeBits: 256, pbkdf: 'pbkdf2', iterations: 1000 });
    const plain = EncryptedDevice.open(dev, volume, key);
    const data = new Uint8Array(randomBytes(volume.payloadSize));
    await plain.write(data, 0);
    await plain.flush();
    await plain.close();
    await dev.close().catch(() => undefined);

    const cfg = await renderNativeConfig({ volumePath: img, target: 'qemu', passphrase: pass, secretFile: join(dir, 's.secret'), readOnly: true });
    assert.equal(cfg.volume.encryption, 'aes-cbc-essiv:sha256');
    const argv = printedArgv(cfg.text);
    assert.match(argv[3]!, /read-only=on/);
    const out = join(dir, 'plain.raw');
    run('qemu-img', ['convert', ...qemuIoImageArgs(argv), '-O', 'raw', out]);
    assert.deepEqual(new Uint8Array(readFileSync(out)), data);
    // read-only=on really is read-only
    const w = spawnSync('qemu-io', [...qemuIoImageArgs(argv), '-c', 'write -P 1 0 512'], { encoding: 'utf8' });
    assert.match(`${w.stdout}${w.stderr}`, /read-only|Permission denied|Operation not permitted/i);
    await removeSecretFile(cfg.secretFile);
  } finally {
    cleanup();
  }
});

test('qemu-storage-daemon runs the printed --object/--blockdev (key=value and JSON) verbatim', { skip: needTools('qemu-storage-daemon', 'qemu-io', 'cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const pass = osBrickPassphrase();
    const img = cryptsetupLuks1(dir, 'qsd,vol.img', pass.expose());
    for (const [i, syntax] of (['blockdev', 'blockdev-json'] as const).entries()) {
      const cfg = await renderNativeConfig({ volumePath: img, target: 'qemu', syntax, passphrase: pass, secretFile: join(dir, `qsd${i}.secret`), nodeName: 'disk0' });
      const sock = join(dir, `qsd${i}.sock`);
      const argv = printedArgv(cfg.text);
      const daemon = spawn(whichTool('qemu-storage-daemon')!, [
        ...argv,
        '--nbd-server', `addr.type=unix,addr.path=${sock}`,
        '--export', 'type=nbd,id=exp0,node-name=disk0,writable=on',
      ], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      daemon.stderr.on('data', (d) => (stderr += String(d)));
      const exited = new Promise<number | null>((res) => daemon.on('exit', (code) => res(code)));
      try {
        for (let t = 0; t < 200 && !existsSync(sock) && daemon.exitCode === null; t++) await new Promise((r) => setTimeout(r, 25));
        assert.ok(existsSync(sock), `qemu-storage-daemon did not serve: ${stderr}`);
        const uri = `nbd+unix:///disk0?socket=${sock}`;
        const fill = 0x60 + i;
        run('qemu-io', ['-f', 'raw', uri, '-c', `write -P ${fill} ${MIB} 8192`]);
        assert.match(run('qemu-io', ['-f', 'raw', uri, '-c', `read -P ${fill} ${MIB} 8192`]), /read 8192\/8192/);
      } finally {
        daemon.kill('SIGTERM');
        await exited;
      }
      assert.deepEqual(await readPlain(img, pass, MIB, 8192), Buffer.alloc(8192, 0x60 + i), syntax);
      await removeSecretFile(cfg.secretFile);
    }
    pass.wipe();
  } finally {
    cleanup();
  }
});

test('LUKS2 is refused with the NBD route, before any secret file is written', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'v2.img');
    writeFileSync(img, '');
    truncateSync(img, 20 * MIB);
    const pass = Passphrase.fromString('luks2 pass');
    const dev = await FileDevice.open(img);
    const { key } = await LuksVolume.format(dev, { type: 'luks2', passphrase: pass, pbkdf: 'pbkdf2', iterations: 1000 });
    key.wipe();
    await dev.close();
    const secretFile = join(dir, 'never.secret');
    for (const target of ['qemu', 'libvirt'] as const) {
      await assert.rejects(
        renderNativeConfig({ volumePath: img, target, passphrase: pass, secretFile, nbdSocket: join(dir, 'v2.sock') }),
        (err: unknown) => {
          assert.ok(err instanceof UnsupportedError, String(err));
          assert.match(err.message, /LUKS2 volume; QEMU 7\.2 decrypts LUKS1 only/);
          assert.ok(err.message.includes(`brickcrypt attach ${img} --socket ${join(dir, 'v2.sock')}`), err.message);
          assert.match(err.message, /--blockdev driver=nbd,node-name=vol0,server\.type=unix,server\.path=/);
          return true;
        },
      );
    }
    assert.ok(!existsSync(secretFile));
  } finally {
    cleanup();
  }
});

test('qemu-img agrees: QEMU 7.2 cannot open a LUKS2 volume natively', { skip: needTools('qemu-img', 'cryptsetup') }, () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'cs2.img');
    writeFileSync(img, '');
    truncateSync(img, 20 * MIB);
    const keyFile = join(dir, 'k');
    writeFileSync(keyFile, 'pw');
    run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', keyFile, img]);
    const r = spawnSync('qemu-img', ['info', '--object', `secret,id=s,file=${keyFile},format=raw`, '--image-opts', `driver=luks,key-secret=s,file.filename=${img}`], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /LUKS version 2 is not supported/);
  } finally {
    cleanup();
  }
});

test('a detached header is refused (QEMU 7.2 luks has no header option)', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const data = join(dir, 'data.img');
    const hdr = join(dir, 'hdr.img');
    writeFileSync(data, '');
    truncateSync(data, 2 * MIB);
    writeFileSync(hdr, '');
    truncateSync(hdr, 2 * MIB);
    const pass = Passphrase.fromString('detached');
    const d = await FileDevice.open(data);
    const h = await FileDevice.open(hdr);
    const { key } = await LuksVolume.format(d, { type: 'luks1', passphrase: pass, pbkdf: 'pbkdf2', iterations: 1000, headerDevice: h });
    key.wipe();
    await d.close();
    await h.close();
    await assert.rejects(renderNativeConfig({ volumePath: data, headerPath: hdr, target: 'qemu', passphrase: pass }), (err: unknown) => {
      assert.ok(err instanceof UnsupportedError, String(err));
      assert.match(err.message, /detached LUKS header.*QEMU 9\.0/);
      assert.match(err.message, /brickcrypt attach/);
      return true;
    });
    // The header file alone (payload offset 0 in a LUKS1 header) is the same case.
    await assert.rejects(renderNativeConfig({ volumePath: hdr, target: 'qemu', passphrase: pass }), UnsupportedError);
  } finally {
    cleanup();
  }
});

test('a wrong passphrase fails with WrongPassphraseError and writes nothing', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = cryptsetupLuks1(dir, 'w.img', Buffer.from('right'));
    const secretFile = join(dir, 'w.secret');
    for (const target of ['qemu', 'libvirt'] as const) {
      await assert.rejects(renderNativeConfig({ volumePath: img, target, passphrase: Passphrase.fromString('wrong'), secretFile }), WrongPassphraseError);
    }
    assert.ok(!existsSync(secretFile));
    const xdg = join(dir, 'xdg');
    mkdirSync(xdg, { mode: 0o700 });
    await assert.rejects(renderNativeConfig({ volumePath: img, target: 'qemu', passphrase: Passphrase.fromString('wrong'), env: { XDG_RUNTIME_DIR: xdg } }), WrongPassphraseError);
    assert.deepEqual(readdirSync(xdg), []);
    // keyslot restriction: the right passphrase in an empty keyslot does not count
    await assert.rejects(renderNativeConfig({ volumePath: img, target: 'qemu', passphrase: Passphrase.fromString('right'), secretFile, keyslot: 3 }));
    assert.ok(!existsSync(secretFile));
  } finally {
    cleanup();
  }
});

test('bad arguments fail before the volume is touched', async () => {
  const pass = Passphrase.fromString('x');
  const base = { volumePath: '/nonexistent/v.img', passphrase: pass };
  await assert.rejects(renderNativeConfig({ ...base, target: 'vmware' as 'qemu' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'qemu', syntax: 'hmp' as 'drive' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'libvirt', syntax: 'drive' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'qemu', secretId: '1sec' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'qemu', nodeName: 'a,b' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'libvirt', secretUuid: 'not-a-uuid' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'libvirt', targetDev: 'vd b' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, volumePath: '/tmp/a\nb', target: 'qemu' }), InvalidArgumentError);
  await assert.rejects(renderNativeConfig({ ...base, target: 'qemu' }), NotFoundError);
});

test('secret file: 0600 whatever the umask, exclusive, never through a symlink, XDG_RUNTIME_DIR default', async () => {
  const { dir, cleanup } = tempDir();
  const oldMask = process.umask(0o000);
  try {
    const pass = Passphrase.fromString('sec\0ret\n');
    const p = join(dir, 'a.secret');
    const f = await writeSecretFile(pass, { path: p });
    assert.equal(statSync(p).mode & 0o777, 0o600);
    assert.deepEqual(new Uint8Array(readFileSync(p)), pass.expose());
    await assert.rejects(writeSecretFile(pass, { path: p }), AlreadyExistsError);
    // overwrite replaces a symlink instead of writing through it
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'keep');
    const link = join(dir, 'link.secret');
    symlinkSync(victim, link);
    await assert.rejects(writeSecretFile(pass, { path: link }), AlreadyExistsError);
    await writeSecretFile(pass, { path: link, overwrite: true });
    assert.equal(readFileSync(victim, 'utf8'), 'keep');
    assert.ok(lstatSync(link).isFile());
    await assert.rejects(writeSecretFile(pass, { path: join(dir, 'no/such/dir/x') }), NotFoundError);

    const xdg = join(dir, 'xdg');
    mkdirSync(xdg, { mode: 0o700 });
    const r = await writeSecretFile(pass, { env: { XDG_RUNTIME_DIR: xdg }, volumePath: "/srv/my vol's.img" });
    assert.equal(r.location, 'runtime-dir');
    assert.match(r.path, new RegExp(`^${xdg}/brickcrypt/my_vol_s\\.img-[0-9a-f]{8}\\.secret$`));
    assert.equal(statSync(join(xdg, 'brickcrypt')).mode & 0o777, 0o700);
    assert.equal(statSync(r.path).mode & 0o777, 0o600);
    // a runtime subdirectory others can read is not used
    chmodSync(join(xdg, 'brickcrypt'), 0o755);
    const t = await writeSecretFile(pass, { env: { XDG_RUNTIME_DIR: xdg } });
    assert.equal(t.location, 'temp-dir');
    assert.equal(statSync(join(t.path, '..')).mode & 0o777, 0o700);
    await removeSecretFile(t);
    assert.ok(!existsSync(join(t.path, '..')), 'private temp dir removed');
    await removeSecretFile(f);
    assert.ok(!existsSync(p));
    await removeSecretFile(f); // gone already: fine
  } finally {
    process.umask(oldMask);
    cleanup();
  }
});

test('libvirt: the printed script defines the secret, sets it from the file and attaches the disk', { skip: needTools('xmllint', 'cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const pass = osBrickPassphrase();
    const img = cryptsetupLuks1(dir, `lib & 'virt' <1>,a.img`, pass.expose());
    const secretFile = join(dir, 'virt.secret');
    const cfg = await renderNativeConfig({ volumePath: img, target: 'libvirt', passphrase: pass, secretFile, targetDev: 'vdc' });
    assertSecretFile(cfg, pass);
    assert.ok(cfg.libvirt);
    const uuid = cfg.libvirt.secretUuid;
    assert.match(uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const luksUuid = run('cryptsetup', ['luksUUID', img]).trim();
    assert.equal(uuid, libvirtSecretUuid(luksUuid, img));

    // A stand-in virsh that records each call: its argv, the XML it was fed, the secret value file.
    const bin = join(dir, 'bin');
    const log = join(dir, 'log');
    mkdirSync(bin);
    mkdirSync(log);
    writeFileSync(
      join(bin, 'virsh'),
      `#!/bin/bash
set -e
n=$(ls "$VIRSH_LOG" | grep -c argv || true)
printf '%s\\0' "$@" > "$VIRSH_LOG/$n.argv"
case "$1" in
  secret-define) cat "$2" > "$VIRSH_LOG/$n.xml" ;;
  attach-device) cat "$3" > "$VIRSH_LOG/$n.xml" ;;
  secret-set-value)
    while [ $# -gt 0 ]; do if [ "$1" = --file ]; then cp -- "$2" "$VIRSH_LOG/$n.value"; stat -c %a -- "$2" > "$VIRSH_LOG/$n.mode"; fi; shift; done ;;
esac
`,
      { mode: 0o755 },
    );
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, VIRSH_LOG: log };
    // Without a domain the script stops at the attach step and says why.
    const noDomain = spawnSync('bash', ['-c', cfg.text], { env: { ...env, DOMAIN: '' }, encoding: 'utf8' });
    assert.notEqual(noDomain.status, 0);
    assert.match(noDomain.stderr, /set DOMAIN to the libvirt domain name/);
    assert.ok(!existsSync(secretFile), 'the secret file is removed once its value is set');
    for (const f of readdirSync(log)) execFileSync('rm', ['-f', join(log, f)]);

    writeFileSync(secretFile, pass.expose(), { mode: 0o600 });
    const r = spawnSync('bash', ['-c', cfg.text], { env: { ...env, DOMAIN: "guest 'one'" }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const argv = (i: number) => readFileSync(join(log, `${i}.argv`), 'utf8').split('\0').slice(0, -1);
    const xpath = (xml: string, expr: string) => execFileSync('xmllint', ['--xpath', expr, xml], { encoding: 'utf8' }).replace(/\n$/, '');

    assert.deepEqual(argv(0), ['secret-define', '/dev/stdin']);
    const secretXml = join(log, '0.xml');
    execFileSync('xmllint', ['--noout', secretXml]);
    assert.equal(readFileSync(secretXml, 'utf8'), cfg.libvirt.secretXml);
    assert.equal(xpath(secretXml, 'string(/secret/uuid)'), uuid);
    assert.equal(xpath(secretXml, 'string(/secret/usage/@type)'), 'volume');
    assert.equal(xpath(secretXml, 'string(/secret/usage/volume)'), img);

    assert.deepEqual(argv(1), ['secret-set-value', '--secret', uuid, '--file', secretFile, '--plain']);
    assert.deepEqual(new Uint8Array(readFileSync(join(log, '1.value'))), pass.expose());
    assert.equal(readFileSync(join(log, '1.mode'), 'utf8').trim(), '600');
    assert.ok(!existsSync(secretFile));

    assert.deepEqual(argv(2), ['attach-device', "guest 'one'", '/dev/stdin', '--persistent']);
    const diskXml = join(log, '2.xml');
    execFileSync('xmllint', ['--noout', diskXml]);
    assert.equal(readFileSync(diskXml, 'utf8'), cfg.libvirt.diskXml);
    assert.equal(xpath(diskXml, 'string(/disk/source/@file)'), img);
    assert.equal(xpath(diskXml, 'string(/disk/source/encryption/@format)'), 'luks');
    assert.equal(xpath(diskXml, 'string(/disk/source/encryption/secret/@uuid)'), uuid);
    assert.equal(xpath(diskXml, 'string(/disk/target/@dev)'), 'vdc');

    // Printing again names the same secret (re-running redefines it); an explicit UUID wins.
    const again = await renderNativeConfig({ volumePath: img, target: 'libvirt', passphrase: pass, secretFile, overwriteSecretFile: true });
    assert.equal(again.libvirt?.secretUuid, uuid);
    await removeSecretFile(again.secretFile);
    // An explicit domain is printed quoted.
    const cfg2 = await renderNativeConfig({ volumePath: img, target: 'libvirt', passphrase: pass, secretFile, overwriteSecretFile: true, domain: 'web;1', secretUuid: '0A81F5B2-8403-4B23-A8D6-21CCC2F80D6F' });
    assert.equal(cfg2.libvirt?.secretUuid, '0a81f5b2-8403-4b23-a8d6-21ccc2f80d6f');
    assert.ok(cfg2.text.includes("virsh attach-device 'web;1' /dev/stdin --persistent"));
    await removeSecretFile(cfg2.secretFile);
    pass.wipe();
  } finally {
    cleanup();
  }
});
