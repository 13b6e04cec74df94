/**
 * Online encryption (detached header): `attach --online-encrypt` serves a raw file through a
 * `ReencryptingDevice` whose old view is the file itself; `reencrypt --encrypt --header H` from
 * another process hands the work to the server, which encrypts forward zone by zone while
 * clients read and write. In process: concurrent clients checked against a model, the result
 * opened as LUKS2 with the new header, then re-keyed and decrypted online through that header. Through the
 * CLI: NBD clients during the run, `kill -9` of the server then offline and cryptsetup resumes,
 * and the refusal of the growing layout (no --header) with nothing written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { ReencryptingDevice } from '../../src/devices/reencrypting-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import type { BlockDevice } from '../../src/block-device.js';
import type { Resilience } from '../../src/luks/reencrypt/engine.js';
import { OnlineReencryptor, openReencryptingView } from '../../src/workflows/reencrypt-online.js';
import { encryptLuks2 } from '../../src/luks/reencrypt/encrypt.js';
import { readLuks2Headers } from '../../src/luks/luks2-io.js';
import { decodeReencryptState } from '../../src/formats/luks2/reencrypt-state.js';
import { DeviceIoError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { Passphrase } from '../../src/secret.js';
import { InvalidArgumentError, NotImplementedError } from '../../src/errors.js';
import { NbdTestClient, killServerMidRun, clientLoad, cryptsetupFinishesKilledRun, firstDiff, nbdCheckedReads, nbdLoad, runReencrypt, serveAndResumeOnline, yielding } from '../helpers/online.js';
import { cliPath, needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { CS_FAST, CS_OFFLINE, cryptsetupMetadata } from '../helpers/reencrypt-states.js';
import { equalPlain } from '../helpers/plaintext.js';
import { spawn, type ChildProcess } from 'node:child_process';

const FAST = { pbkdf: 'pbkdf2' as const, iterations: 1000 };
const PASS = 'online encrypt pass';
const ZONE = 64 * 1024;

/** The plaintext of data + detached header. */
async function plaintextWithHeader(data: BlockDevice, header: BlockDevice): Promise<Uint8Array> {
  const vol = await LuksVolume.open(data, { readOnly: true, headerDevice: header });
  const { key } = await vol.unlock(Passphrase.fromString(PASS));
  const view = EncryptedDevice.open(data, vol, key, { readOnly: true });
  const out = new Uint8Array(view.size);
  await view.read(out, 0);
  await view.close();
  return out;
}

async function plaintextOfFiles(img: string, hdr: string): Promise<Uint8Array> {
  const data = await FileDevice.open(img, { readOnly: true });
  const header = await FileDevice.open(hdr, { readOnly: true });
  try {
    return await plaintextWithHeader(data, header);
  } finally {
    await header.close();
    await data.close();
  }
}

/** The served stack as `attach --online-encrypt` builds it. */
function served(data: BlockDevice): { view: ReencryptingDevice; reencryptor: OnlineReencryptor; pool: CryptoPool } {
  const view = new ReencryptingDevice(new SliceDevice(data, 0, data.size));
  const pool = CryptoPool.create(0);
  const reencryptor = new OnlineReencryptor({ data, view, pool, old: { encryption: 'plain', sectorSize: 512, ivTweak: 0, dataOffset: 0 } });
  return { view, reencryptor, pool };
}

for (const resilience of ['checksum', 'journal', 'none'] as Resilience[]) {
  test(`online encrypt (${resilience}): concurrent random reads and writes see the model throughout; the result is LUKS2 with the new header, then re-keyed and decrypted online through it`, async () => {
    const { dir, cleanup } = tempDir('brickcrypt-online-encrypt-');
    try {
      const payload = 2 * 1024 * 1024;
      const model = new Uint8Array(randomBytes(payload));
      const mem = new MemoryDevice(new Uint8Array(model));
      const { view, reencryptor, pool } = served(yielding(mem));
      const hdr = join(dir, 'vol.hdr');
      await assert.rejects(reencryptor.encrypt(Passphrase.fromString(PASS), { ...FAST }), NotImplementedError, 'no header: the file would grow');
      await assert.rejects(reencryptor.decrypt(Passphrase.fromString(PASS), { header: hdr }), InvalidArgumentError, 'nothing to decrypt');
      assert.equal(existsSync(hdr), false, 'nothing created by a refusal');
      let done = false;
      const run = reencryptor
        .encrypt(Passphrase.fromString(PASS), { resilience, hotzoneSize: ZONE, header: hdr, sectorSize: 4096, ...FAST })
        .finally(() => (done = true));
      const stats = await clientLoad(view, model, resilience.length * 13, () => done);
      const report = await run;
      process.stderr.write(`# encrypt ${resilience}: ${JSON.stringify(stats)}\n`);
      assert.equal(report.finished, true);
      assert.ok(stats.midRun > 20, `requests while the boundary moved: ${stats.midRun}`);
      assert.ok(stats.crossing > 0);
      assert.equal(view.hasNewView, false, 'one key: the encrypting view is now the only one');
      const after = new Uint8Array(payload);
      await view.read(after, 0);
      assert.equal(firstDiff(after, model), -1, 'served view after the finish');
      const header = await FileDevice.open(hdr, { readOnly: true });
      equalPlain(await plaintextWithHeader(mem, header), model, 'opened afresh with the header');
      await header.close();
      assert.ok(firstDiff(mem.bytes, model) >= 0 && firstDiff(mem.bytes.subarray(0, 4096), model.subarray(0, 4096)) >= 0, 'the data device holds ciphertext');
      await assert.rejects(reencryptor.encrypt(Passphrase.fromString(PASS), { header: hdr }), InvalidArgumentError, 'already LUKS');
      // The served volume is LUKS2 with that header now: an online re-key uses it.
      let done2 = false;
      const rekey = reencryptor.run(Passphrase.fromString(PASS), { hotzoneSize: ZONE, ...FAST }).finally(() => (done2 = true));
      await clientLoad(view, model, 5, () => done2, { clients: 2 });
      assert.equal((await rekey).finished, true);
      // And decrypted online again through the same header: the data device is the model.
      let done3 = false;
      const dec = reencryptor.decrypt(Passphrase.fromString(PASS), { hotzoneSize: ZONE, header: hdr, ...FAST }).finally(() => (done3 = true));
      await clientLoad(view, model, 6, () => done3, { clients: 2 });
      assert.equal((await dec).finished, true);
      await view.flush();
      equalPlain(mem.bytes, model, 'decrypted online after the encryption');
      await view.close();
      await reencryptor.close();
      await pool.close();
    } finally {
      cleanup();
    }
  });
}

test('openReencryptingView: an encryption cut inside a hot zone is served forward (zone fenced, both sides readable) and finished online', async () => {
  const HDR = 2 * 1024 * 1024;
  const payload = 1024 * 1024;
  const plain = new Uint8Array(randomBytes(payload));
  const image = new Uint8Array(HDR + payload);
  image.set(plain, HDR);
  const split = (dev: BlockDevice) => ({ header: new SliceDevice(dev, 0, HDR), data: new SliceDevice(dev, HDR, payload) });
  let crash: MemoryDevice | undefined;
  for (let cut = 10; cut < 200 && !crash; cut += 3) {
    const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut, sectorSize: 4096 });
    const parts = split(dev);
    await encryptLuks2(parts.data, { headerDevice: parts.header, headerSize: HDR, passphrases: [Passphrase.fromString(PASS)], hotzoneSize: ZONE, ...FAST }).catch((err) => {
      if (!(err instanceof PowerCutError)) throw err;
    });
    const after = new MemoryDevice(dev.crashImage());
    const st = await readLuks2Headers(split(after).header).then((r) => decodeReencryptState(r.state.metadata), () => undefined);
    if (st?.hotId !== undefined) crash = after;
  }
  assert.ok(crash, 'a cut inside a hot zone');
  const { header, data } = split(crash);
  const pool = CryptoPool.create(0);
  const r = await openReencryptingView(data, header, Passphrase.fromString(PASS), pool);
  assert.equal(r.view.direction, 'forward');
  assert.equal(r.old.encryption, 'plain');
  assert.ok(r.hot && r.hot.offset === r.boundary, 'the hot zone starts at the boundary');
  await assert.rejects(r.view.read(new Uint8Array(512), r.hot!.offset), DeviceIoError);
  const below = new Uint8Array(r.boundary);
  await r.view.read(below, 0);
  equalPlain(below, plain.subarray(0, r.boundary), 'encrypted side');
  const from = r.hot!.offset + r.hot!.length;
  const above = new Uint8Array(payload - from);
  await r.view.read(above, from);
  equalPlain(above, plain.subarray(from), 'plaintext side');
  const tmp = tempDir('brickcrypt-online-encrypt-');
  const hdrFile = join(tmp.dir, 'stands-for.hdr');
  writeFileSync(hdrFile, '');
  const reencryptor = new OnlineReencryptor({ data, header, headerPath: hdrFile, view: r.view, pool, old: r.old });
  const report = await reencryptor.encrypt(Passphrase.fromString(PASS), { resumeOnly: true, header: hdrFile, hotzoneSize: ZONE, ...FAST });
  assert.equal(report.recovered, true);
  assert.equal(report.finished, true);
  const all = new Uint8Array(payload);
  await r.view.read(all, 0);
  equalPlain(all, plain, 'served after the online resume');
  await r.view.close();
  await pool.close();
  equalPlain(await plaintextWithHeader(split(crash).data, split(crash).header), plain, 'opened afresh');
  tmp.cleanup();
});

test('online encrypt: power cut mid-run with clients writing and flushing; an offline resume gives every acknowledged write', async () => {
  const HDR = 16 * 1024 * 1024; // the default detached header size
  const payload = 1024 * 1024;
  const tmp = tempDir('brickcrypt-online-encrypt-');
  const hdrFile = join(tmp.dir, 'stands-for.hdr');
  writeFileSync(hdrFile, '');
  const split = (dev: BlockDevice) => ({ header: new SliceDevice(dev, 0, HDR), data: new SliceDevice(dev, HDR, payload) });
  try {
    for (let seed = 1; seed <= 12; seed++) {
      const resilience: Resilience = seed % 2 === 0 ? 'checksum' : 'journal';
      const original = new Uint8Array(randomBytes(payload));
      const image = new Uint8Array(HDR + payload);
      image.set(original, HDR);
      // The cut: inside zone k, after its h-th header write (checksums or journal, commit A,
      // commit B) and j more writes of anyone's — so it falls in every phase of a zone.
      const k = 1 + (seed % 11);
      const h = 1 + (seed % 9);
      const j = seed % 4;
      const fault: { cutAfterWrite?: number; seed: number; sectorSize: number } = { seed, sectorSize: resilience === 'checksum' ? 4096 : 512 };
      const dev = new FaultInjectingDevice(image, fault);
      let armed = false;
      let headerWrites = 0;
      const watched = new Proxy(dev, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target) as unknown;
          if (prop === 'write') {
            return async (buf: Uint8Array, offset: number) => {
              if (armed && offset < HDR && ++headerWrites === h && fault.cutAfterWrite === undefined) fault.cutAfterWrite = dev.writes + 1 + j;
              return target.write(buf, offset);
            };
          }
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const { header, data } = split(yielding(watched));
      // Header and data on one fault-injecting image: the cut hits both.
      const view = new ReencryptingDevice(new SliceDevice(data, 0, payload));
      const pool = CryptoPool.create(0);
      const reencryptor = new OnlineReencryptor({ data, header, headerPath: hdrFile, view, pool, old: { encryption: 'plain', sectorSize: 512, ivTweak: 0, dataOffset: 0 } });
      const onProgress = ({ done }: { done: number }) => {
        if (done >= k * ZONE) armed = true;
      };
      const acked = new Uint8Array(original);
      const inflight: Array<{ off: number; data: Uint8Array } | undefined> = [];
      let stop = false;
      const run = reencryptor
        .encrypt(Passphrase.fromString(PASS), { resilience, hotzoneSize: ZONE, header: hdrFile, ...FAST, onProgress })
        .catch((err) => {
          if (!(err instanceof PowerCutError)) throw err;
        })
        .finally(() => (stop = true));
      const load = clientLoad(view, acked, seed, () => stop || dev.powerCut, { clients: 3, flush: true, inflight }).catch((err) => {
        if (!(err instanceof PowerCutError) && !(err instanceof DeviceIoError && dev.powerCut)) throw err;
      });
      await run;
      stop = true;
      await load;
      assert.ok(dev.powerCut, `seed ${seed}: the power was cut`);
      await pool.close();
      const after = new MemoryDevice(dev.crashImage());
      const parts = split(after);
      const r = await encryptLuks2(parts.data, { headerDevice: parts.header, passphrases: [Passphrase.fromString(PASS)], resumeOnly: true, ...FAST });
      assert.equal(r.finished, true);
      const got = await plaintextWithHeader(parts.data, parts.header);
      for (let i = 0; i < got.length; i++) {
        if (got[i] === acked[i]) continue;
        const w = inflight.find((x) => x && i >= x.off && i < x.off + x.data.length);
        if (w && w.data[i - w.off] === got[i]) continue;
        assert.fail(`${resilience} seed ${seed}: byte ${i} is neither the acknowledged nor the in-flight write`);
      }
    }
  } finally {
    tmp.cleanup();
  }
});

// ---- CLI ----

const cliSkip = needTools('cryptsetup');

function startRawAttach(img: string, sock: string): Promise<{ child: ChildProcess; exited: Promise<number | null>; stderr: () => string }> {
  const child = spawn(process.execPath, [cliPath, 'attach', img, '--online-encrypt', '--socket', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve({ child, exited, stderr: () => err }));
    void exited.then((code) => reject(new Error(`attach exited ${code}: ${err}`)));
  });
}

test('CLI: attach --online-encrypt + reencrypt --encrypt --header from another process while NBD clients read and write; cryptsetup opens the result with the header', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-encrypt-');
  try {
    const img = join(dir, 'disk.img');
    const hdr = join(dir, 'disk.hdr');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const model = new Uint8Array(randomBytes(48 << 20));
    writeFileSync(img, model);
    const sock = join(dir, 'vol.sock');
    // attach --online-encrypt takes no --header (the reencrypt command names it) and no --read-only.
    for (const extra of [['--header', hdr], ['--read-only']]) {
      const bad = runCli(['attach', img, '--online-encrypt', '--socket', sock, ...extra]);
      assert.equal(bad.status, 1, bad.stderr);
    }
    assert.equal(existsSync(hdr), false);
    const att = await startRawAttach(img, sock);
    try {
      assert.ok(existsSync(`${img}.ctl`), 'control socket');
      // The growing layout (no --header) is refused, nothing written.
      const grow = await runReencrypt([img, '--encrypt', '--type', 'luks2', '--key-file', keyFile, ...CS_FAST]).done;
      assert.equal(grow.code, 4, grow.stderr);
      assert.match(grow.stderr, /NOT_IMPLEMENTED/);
      equalPlain(readFileSync(img), model, 'untouched by the refusal');
      const client = await NbdTestClient.connect(sock);
      const reader = await NbdTestClient.connect(sock);
      let finished = false;
      const re = runReencrypt([img, '--encrypt', '--type', 'luks2', '--header', hdr, '--key-file', keyFile, '--hotzone-size', '1M', ...CS_FAST]);
      void re.done.then(() => (finished = true));
      const half = model.length / 2;
      const [ops, reads] = await Promise.all([
        nbdLoad(client, model, () => finished, {}, 31, half),
        nbdCheckedReads(reader, model, () => finished, half, model.length),
      ]);
      const r = await re.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.events.find((e) => e.event === 'done')!.finished, true);
      assert.ok(ops > 10 && reads > 10, `clients kept going (${ops}, ${reads})`);
      assert.match(att.stderr(), /online encryption finished/);
      await nbdLoad(client, model, (() => { let k = 0; return () => k++ >= 20; })(), {}, 32);
      client.close();
      reader.close();
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, '--header', hdr, img]);
    assert.equal(cryptsetupMetadata(hdr).config.requirements, undefined);
    equalPlain(await plaintextOfFiles(img, hdr), model, 'plaintext through the header');
  } finally {
    cleanup();
  }
});

for (const after of ['offline', 'online'] as const) {
test(`CLI: kill -9 of the server mid-encryption; cryptsetup reencrypt --resume-only --header finishes a copy, and ${after === 'offline' ? 'offline reencrypt --resume-only --header' : 'attach --header --serve-reencrypting (hot zone fenced) + an online --resume-only'} finishes with every acknowledged write`, { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-encrypt-');
  try {
    const img = join(dir, 'disk.img');
    const hdr = join(dir, 'disk.hdr');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const model = new Uint8Array(randomBytes(96 << 20));
    writeFileSync(img, model);
    const sock = join(dir, 'vol.sock');
    const att = await startRawAttach(img, sock);
    const { result: r, inflight } = await killServerMidRun(att, sock, [img, '--encrypt', '--type', 'luks2', '--header', hdr, '--key-file', keyFile, '--hotzone-size', '1M', ...CS_FAST], model, 41);
    const { data: vcopy, header: hcopy, check } = cryptsetupFinishesKilledRun(img, hdr, keyFile, dir, model, inflight);
    check(await plaintextOfFiles(vcopy, hcopy), 'cryptsetup resume');
    if (after === 'offline') {
      const resumed = runCli(['reencrypt', '--resume-only', '--header', hdr, img, '--key-file', keyFile]);
      assert.equal(resumed.status, 0, resumed.stderr);
    } else {
      await serveAndResumeOnline(img, hdr, keyFile, sock, model, inflight.w, /(\d+) of (\d+) bytes under the new key/, []);
    }
    check(await plaintextOfFiles(img, hdr), `${after} resume`);
    assert.equal(cryptsetupMetadata(hdr).config.requirements, undefined);
  } finally {
    cleanup();
  }
});
}

test('CLI: Ctrl-C of reencrypt --encrypt stops the server at a zone boundary (130); reencrypt --resume-only --header finishes online', { skip: cliSkip }, async () => {
  const { dir, cleanup } = tempDir('brickcrypt-online-encrypt-');
  try {
    const img = join(dir, 'disk.img');
    const hdr = join(dir, 'disk.hdr');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, PASS);
    const model = new Uint8Array(randomBytes(64 << 20));
    writeFileSync(img, model);
    const sock = join(dir, 'vol.sock');
    const att = await startRawAttach(img, sock);
    try {
      let sent = false;
      const re = runReencrypt([img, '--encrypt', '--type', 'luks2', '--header', hdr, '--key-file', keyFile, '--hotzone-size', '1M', '--resilience', 'journal', ...CS_FAST], (e) => {
        if (e.event === 'progress' && !sent) {
          sent = true;
          re.child.kill('SIGINT');
        }
      });
      const r = await re.done;
      assert.equal(r.code, 130, r.stderr);
      const mid = cryptsetupMetadata(hdr);
      assert.ok(mid.config.requirements?.mandatory?.some((x: string) => x.startsWith('online-reencrypt')), 'recorded, part-way');
      const client = await NbdTestClient.connect(sock);
      equalPlain(await client.readAll(0, model.length), model, 'served through both sides after the stop');
      const resumed = await runReencrypt(['--resume-only', '--header', hdr, img, '--key-file', keyFile]).done;
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal(resumed.events.find((e) => e.event === 'done')!.finished, true);
      equalPlain(await client.readAll(0, model.length), model, 'served after the online resume');
      client.close();
    } finally {
      att.child.kill('SIGTERM');
      assert.equal(await att.exited, 0, att.stderr());
    }
    run('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, '--header', hdr, img]);
    equalPlain(await plaintextOfFiles(img, hdr), model, 'plaintext through the header');
  } finally {
    cleanup();
  }
});
