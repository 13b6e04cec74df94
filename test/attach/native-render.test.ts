/**
 * The pure parts of `attach --print qemu|libvirt`: shell quoting (checked by letting bash
 * parse it), QEMU key=value escaping, the option forms, the QEMU 7.2 support rules and the
 * libvirt XML (well-formedness checked by xmllint).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { shellJoin, shellQuote } from '../../src/attach/shell-quote.js';
import { checkQemuId, qemuLuksArgs, qemuNbdBlockdev, qemuOptValue, qemuSecretObject, type QemuSyntax } from '../../src/attach/qemu-options.js';
import { checkXmlSafe, libvirtDiskXml, libvirtSecretXml, xmlEscape } from '../../src/attach/libvirt-xml.js';
import { checkQemuLuksSupport, libvirtSecretUuid, nbdRouteAdvice } from '../../src/attach/native-config.js';
import { InvalidArgumentError, UnsupportedError } from '../../src/errors.js';
import { needTools } from '../helpers/tools.js';

/** What bash makes of a printed line: the argv words, NUL-separated. */
function bashWords(line: string): string[] {
  const out = execFileSync('bash', ['-c', `printf '%s\\0' ${line}`], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

const AWKWARD = [
  'plain',
  'with space',
  "it's",
  'a"b',
  '$HOME',
  '`id`',
  '$(id)',
  'semi;colon',
  'pipe|amp&',
  'glob*?[a]',
  '~tilde',
  '#hash',
  'back\\slash',
  '!bang',
  'tab\there',
  'new\nline',
  'ünïcødé',
  '',
  '=leading-equals',
  '{"driver":"luks","file":{"filename":"/a b"}}',
  "''",
];

test('shellQuote: bash reads back every awkward argument unchanged', () => {
  assert.deepEqual(bashWords(shellJoin(AWKWARD)), AWKWARD);
  for (const a of AWKWARD) assert.deepEqual(bashWords(shellQuote(a)), [a], JSON.stringify(a));
});

test('shellQuote: safe words stay bare, NUL is refused', () => {
  const bare = ['--object', 'secret,id=sec0,file=/run/x.secret,format=raw', 'driver=luks,file.filename=/a,,b', '/dev/stdin'];
  for (const w of bare) assert.equal(shellQuote(w), w);
  assert.throws(() => shellQuote('a\0b'), InvalidArgumentError);
});

test('qemuOptValue doubles commas (QEMU option escaping)', () => {
  const cases: Array<[string, string]> = [
    ['/img/plain.luks', '/img/plain.luks'],
    ['/img/a,b.luks', '/img/a,,b.luks'],
    [',,', ',,,,'],
    ['/x=y', '/x=y'],
  ];
  for (const [input, want] of cases) assert.equal(qemuOptValue(input), want);
});

test('QEMU ids: letters first, at most 31 bytes, only [A-Za-z0-9._-]', () => {
  for (const ok of ['sec0', 'vol0', 'a', 'A.b_c-d', 'x'.repeat(31)]) checkQemuId(ok, 'id');
  for (const bad of ['', '0sec', '-a', 'a b', 'a,b', 'x'.repeat(32), '#block1']) {
    assert.throws(() => checkQemuId(bad, 'id'), InvalidArgumentError, bad);
  }
});

const BASE = { volumePath: '/srv/v,1.img', secretFile: '/run/s,1.secret', secretId: 'sec0', nodeName: 'vol0' };

test('qemuLuksArgs: the three option forms', () => {
  const table: Array<{ syntax: QemuSyntax; isBlockDevice: boolean; readOnly?: boolean; want: string[] }> = [
    {
      syntax: 'blockdev',
      isBlockDevice: false,
      want: ['--blockdev', 'driver=luks,node-name=vol0,key-secret=sec0,file.driver=file,file.filename=/srv/v,,1.img'],
    },
    {
      syntax: 'blockdev',
      isBlockDevice: true,
      readOnly: true,
      want: ['--blockdev', 'driver=luks,node-name=vol0,key-secret=sec0,read-only=on,file.driver=host_device,file.filename=/srv/v,,1.img'],
    },
    {
      syntax: 'blockdev-json',
      isBlockDevice: false,
      want: ['--blockdev', '{"driver":"luks","node-name":"vol0","key-secret":"sec0","file":{"driver":"file","filename":"/srv/v,1.img"}}'],
    },
    {
      syntax: 'blockdev-json',
      isBlockDevice: true,
      readOnly: true,
      want: ['--blockdev', '{"driver":"luks","node-name":"vol0","key-secret":"sec0","read-only":true,"file":{"driver":"host_device","filename":"/srv/v,1.img"}}'],
    },
    {
      syntax: 'drive',
      isBlockDevice: false,
      want: ['-drive', 'if=none,id=vol0,driver=luks,key-secret=sec0,file.driver=file,file.filename=/srv/v,,1.img'],
    },
    {
      syntax: 'drive',
      isBlockDevice: false,
      readOnly: true,
      want: ['-drive', 'if=none,id=vol0,driver=luks,key-secret=sec0,readonly=on,file.driver=file,file.filename=/srv/v,,1.img'],
    },
  ];
  for (const row of table) {
    const args = qemuLuksArgs({ ...BASE, syntax: row.syntax, isBlockDevice: row.isBlockDevice, ...(row.readOnly ? { readOnly: true } : {}) });
    assert.deepEqual(args, ['--object', 'secret,id=sec0,file=/run/s,,1.secret,format=raw', ...row.want], row.syntax);
  }
  assert.throws(() => qemuLuksArgs({ ...BASE, syntax: 'hmp' as QemuSyntax, isBlockDevice: false }), InvalidArgumentError);
  assert.throws(() => qemuSecretObject('9', '/s'), InvalidArgumentError);
});

test('qemuNbdBlockdev: the NBD route options', () => {
  assert.equal(qemuNbdBlockdev('/run/b,c.sock', 'vol0'), 'driver=nbd,node-name=vol0,server.type=unix,server.path=/run/b,,c.sock');
  assert.equal(qemuNbdBlockdev('/s', 'disk1', 'exp'), 'driver=nbd,node-name=disk1,server.type=unix,server.path=/s,export=exp');
});

test('checkQemuLuksSupport: QEMU 7.2 rules, each refusal names the NBD route', () => {
  const ok = ['aes-xts-plain64', 'aes-cbc-essiv:sha256', 'aes-cbc-plain', 'serpent-xts-plain64', 'twofish-cbc-plain64', 'cast5-cbc-plain', 'aes-ecb', 'aes-ctr-plain64'];
  for (const encryption of ok) checkQemuLuksSupport({ path: '/v', version: 1, encryption, detachedHeader: false });
  const refused: Array<[Parameters<typeof checkQemuLuksSupport>[0], RegExp]> = [
    [{ path: '/v', version: 2, encryption: 'aes-xts-plain64', detachedHeader: false }, /LUKS2 volume; QEMU 7\.2 decrypts LUKS1 only/],
    [{ path: '/v', version: 1, encryption: 'aes-xts-plain64', detachedHeader: true }, /detached LUKS header.*QEMU 9\.0/],
    [{ path: '/v', version: 1, encryption: 'camellia-xts-plain64', detachedHeader: false }, /no cipher 'camellia'/],
    [{ path: '/v', version: 1, encryption: 'aes-lrw-benbi', detachedHeader: false }, /no cipher mode 'lrw'/],
    [{ path: '/v', version: 1, encryption: 'aes-cbc-benbi', detachedHeader: false }, /no IV generator 'benbi'/],
    [{ path: '/v', version: 1, encryption: 'aes-xts-lmk', detachedHeader: false }, /no IV generator 'lmk'/],
  ];
  for (const [vol, re] of refused) {
    assert.throws(
      () => checkQemuLuksSupport(vol, { nbdSocket: '/run/v.sock' }),
      (err: unknown) => {
        assert.ok(err instanceof UnsupportedError, String(err));
        assert.equal(err.code, 'UNSUPPORTED');
        assert.match(err.message, re);
        assert.match(err.message, /brickcrypt attach \/v --socket \/run\/v\.sock/);
        assert.match(err.message, /--blockdev driver=nbd,node-name=vol0,server\.type=unix,server\.path=\/run\/v\.sock/);
        return true;
      },
      vol.encryption,
    );
  }
});

test('nbdRouteAdvice: the printed commands are shell-safe', () => {
  const text = nbdRouteAdvice("/srv/it's a vol.img", { nbdSocket: '/run/a b,c.sock' });
  const lines = text.split('\n');
  assert.deepEqual(bashWords(lines[1]!.trim()), ['brickcrypt', 'attach', "/srv/it's a vol.img", '--socket', '/run/a b,c.sock']);
  assert.deepEqual(bashWords(lines[3]!.trim()), ['--blockdev', 'driver=nbd,node-name=vol0,server.type=unix,server.path=/run/a b,,c.sock']);
  const dflt = nbdRouteAdvice('/srv/v.img', { env: { XDG_RUNTIME_DIR: '/run/user/7' } });
  assert.match(dflt, /--socket \/run\/user\/7\/brickcrypt\/v\.img\.sock/);
});

test('xmlEscape and checkXmlSafe', () => {
  assert.equal(xmlEscape(`a&b<c>d'e"f`), 'a&amp;b&lt;c&gt;d&apos;e&quot;f');
  for (const bad of ['a\nb', 'a\rb', 'a\u0001b', 'a\u007fb']) assert.throws(() => checkXmlSafe(bad, 'x'), InvalidArgumentError);
  checkXmlSafe('/srv/ünï & <x>', 'x');
});

const UUID = '0a81f5b2-8403-4b23-a8d6-21ccc2f80d6f';

function xpath(xml: string, expr: string): string {
  // xmllint ends a string() result with one newline of its own.
  return execFileSync('xmllint', ['--xpath', expr, '-'], { input: xml, encoding: 'utf8' }).replace(/\n$/, '');
}

test('libvirt XML: secret and disk are well-formed and carry path, uuid and usage', { skip: needTools('xmllint') }, () => {
  const awkward = `/srv/it's <a> & "b",c.img`;
  const secret = libvirtSecretXml({ uuid: UUID, volumePath: awkward });
  execFileSync('xmllint', ['--noout', '-'], { input: secret });
  assert.equal(xpath(secret, 'string(/secret/@private)'), 'yes');
  assert.equal(xpath(secret, 'string(/secret/@ephemeral)'), 'no');
  assert.equal(xpath(secret, 'string(/secret/uuid)'), UUID);
  assert.equal(xpath(secret, 'string(/secret/usage/@type)'), 'volume');
  assert.equal(xpath(secret, 'string(/secret/usage/volume)'), awkward);

  for (const isBlockDevice of [false, true]) {
    for (const readOnly of [false, true]) {
      const disk = libvirtDiskXml({ volumePath: awkward, isBlockDevice, secretUuid: UUID, targetDev: 'vdc', targetBus: 'virtio', readOnly });
      execFileSync('xmllint', ['--noout', '-'], { input: disk });
      assert.equal(xpath(disk, 'string(/disk/@type)'), isBlockDevice ? 'block' : 'file');
      assert.equal(xpath(disk, 'string(/disk/@device)'), 'disk');
      assert.equal(xpath(disk, 'string(/disk/driver/@name)'), 'qemu');
      assert.equal(xpath(disk, 'string(/disk/driver/@type)'), 'raw');
      assert.equal(xpath(disk, isBlockDevice ? 'string(/disk/source/@dev)' : 'string(/disk/source/@file)'), awkward);
      assert.equal(xpath(disk, 'string(/disk/source/encryption/@format)'), 'luks');
      assert.equal(xpath(disk, 'string(/disk/source/encryption/secret/@type)'), 'passphrase');
      assert.equal(xpath(disk, 'string(/disk/source/encryption/secret/@uuid)'), UUID);
      assert.equal(xpath(disk, 'string(/disk/target/@dev)'), 'vdc');
      assert.equal(xpath(disk, 'count(/disk/readonly)'), readOnly ? '1' : '0');
    }
  }
});

test('libvirt XML: bad uuid, device name, bus or path are refused', () => {
  assert.throws(() => libvirtSecretXml({ uuid: 'nope', volumePath: '/v' }), InvalidArgumentError);
  assert.throws(() => libvirtSecretXml({ uuid: UUID.toUpperCase(), volumePath: '/v' }), InvalidArgumentError);
  assert.throws(() => libvirtSecretXml({ uuid: UUID, volumePath: '/v\n</secret>' }), InvalidArgumentError);
  const d = { volumePath: '/v', isBlockDevice: false, secretUuid: UUID, targetDev: 'vdb', targetBus: 'virtio' };
  assert.throws(() => libvirtDiskXml({ ...d, targetDev: "vd'b" }), InvalidArgumentError);
  assert.throws(() => libvirtDiskXml({ ...d, targetBus: 'vir tio' }), InvalidArgumentError);
  assert.throws(() => libvirtDiskXml({ ...d, secretUuid: 'x' }), InvalidArgumentError);
});

test('libvirtSecretUuid: RFC 4122 version 5, stable per (LUKS UUID, path), different otherwise', () => {
  const a = libvirtSecretUuid('c3b2a1d0-1111-4222-8333-444455556666', '/srv/a.img');
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(libvirtSecretUuid('c3b2a1d0-1111-4222-8333-444455556666', '/srv/a.img'), a);
  const others = new Set([
    a,
    libvirtSecretUuid('c3b2a1d0-1111-4222-8333-444455556666', '/srv/b.img'),
    libvirtSecretUuid('c3b2a1d0-1111-4222-8333-444455556667', '/srv/a.img'),
  ]);
  assert.equal(others.size, 3);
});

test('libvirtSecretUuid matches Python uuid.uuid5 (independent RFC 4122 implementation)', { skip: needTools('python3') }, () => {
  const luks = 'c3b2a1d0-1111-4222-8333-444455556666';
  const path = '/srv/ünï vol.img';
  const py = execFileSync(
    'python3',
    ['-c', 'import sys, uuid; print(uuid.uuid5(uuid.UUID("6f1d2c4e-8b7a-4f0e-9c3d-5a1b2e4f6a7c"), sys.argv[1] + "\\n" + sys.argv[2]))', luks, path],
    { encoding: 'utf8' },
  ).trim();
  assert.equal(libvirtSecretUuid(luks, path), py);
});
