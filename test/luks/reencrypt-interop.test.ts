/**
 * Cross-resume with cryptsetup 2.6 on image files, both directions: a reencryption cryptsetup
 * recorded or was killed in is finished by brickcrypt; one brickcrypt recorded, stopped, or lost
 * power in (inside a hot zone) is finished by `cryptsetup reencrypt --resume-only` (after
 * `cryptsetup repair` for an interrupted hot zone, as cryptsetup requires). Each time the
 * plaintext is compared byte for byte and cryptsetup's view of the final key is checked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../../src/devices/file-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { reencryptLuks2, type ReencryptOptions, type Resilience } from '../../src/luks/reencrypt/engine.js';
import { Passphrase } from '../../src/secret.js';
import { CancelledError } from '../../src/errors.js';
import { FaultInjectingDevice, PowerCutError } from '../helpers/fault-injecting-device.js';
import { cryptsetupVolumeKeyHex, needTools, run, runStatus, tempDir } from '../helpers/tools.js';
import { CS_OFFLINE, cryptsetupInitOnly, cryptsetupKilled, cryptsetupMetadata, cryptsetupVolumeWithData, readPlaintext } from '../helpers/reencrypt-states.js';
import { brickcryptVolumeKeyHex, equalPlain } from '../helpers/plaintext.js';

const skip = needTools('cryptsetup');
const PASS = 'interop pass';
const SIZE = 48 << 20;

function opts(extra: Partial<ReencryptOptions> = {}): ReencryptOptions {
  return { passphrases: [Passphrase.fromString(PASS)], pbkdf: 'pbkdf2', iterations: 1000, hotzoneSize: 1 << 20, ...extra };
}

async function onFile<T>(path: string, fn: (dev: FileDevice) => Promise<T>): Promise<T> {
  const dev = await FileDevice.open(path);
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

const same = equalPlain;

/** cryptsetup accepts the volume: no requirement left, the passphrase opens it, one digest. */
function cryptsetupAccepts(img: string, keyFile: string): void {
  const m = cryptsetupMetadata(img);
  assert.equal(m.config.requirements, undefined);
  assert.equal(Object.keys(m.segments).length, 1);
  assert.equal(Object.keys(m.digests).length, 1);
  run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', keyFile, img]);
}

async function setup(dir: string, resilience?: string): Promise<{ img: string; keyFile: string; plain: Uint8Array }> {
  const img = join(dir, 'vol.img');
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, PASS);
  const plain = await cryptsetupVolumeWithData(img, SIZE, keyFile);
  void resilience;
  return { img, keyFile, plain };
}

for (const resilience of ['checksum', 'journal', 'none']) {
  test(`cryptsetup --init-only (${resilience}) -> brickcrypt finishes; cryptsetup accepts the result`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const { img, keyFile, plain } = await setup(dir);
      cryptsetupInitOnly(img, keyFile, ['--resilience', resilience]);
      const report = await onFile(img, (dev) => reencryptLuks2(dev, opts({ resumeOnly: true })));
      assert.equal(report.finished, true);
      assert.equal(report.resilience, resilience);
      same(await readPlaintext(img, PASS), plain, resilience);
      cryptsetupAccepts(img, keyFile);
    } finally {
      cleanup();
    }
  });
}

test('cryptsetup killed with SIGKILL mid-run (checksum and journal) -> brickcrypt recovers and finishes', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    for (const resilience of ['checksum', 'journal']) {
      const { img, keyFile, plain } = await setup(dir);
      let killed = false;
      for (const ms of [600, 300, 150]) if ((killed = await cryptsetupKilled(img, keyFile, ms, ['--resilience', resilience, '--hotzone-size', '256K']))) break;
      assert.ok(killed, 'cryptsetup finished before the kill');
      const report = await onFile(img, (dev) => reencryptLuks2(dev, opts({ resumeOnly: true })));
      assert.equal(report.finished, true);
      same(await readPlaintext(img, PASS), plain, resilience);
      cryptsetupAccepts(img, keyFile);
    }
  } finally {
    cleanup();
  }
});

for (const resilience of ['checksum', 'journal', 'none'] as Resilience[]) {
  test(`brickcrypt --init-only and brickcrypt stopped part-way (${resilience}) -> cryptsetup reencrypt --resume-only finishes`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const { img, keyFile, plain } = await setup(dir);
      await onFile(img, (dev) => reencryptLuks2(dev, opts({ resilience, initOnly: true })));
      // cryptsetup verifies the state (its digest included) and can resume it...
      const copy = join(dir, 'copy.img');
      writeFileSync(copy, readFileSync(img));
      run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, copy]);
      same(await readPlaintext(copy, PASS), plain, 'cryptsetup resumed brickcrypt --init-only');
      cryptsetupAccepts(copy, keyFile);
      // ...and a run stopped after a few zones.
      const ac = new AbortController();
      let zones = 0;
      await assert.rejects(onFile(img, (dev) => reencryptLuks2(dev, opts({ signal: ac.signal, onProgress: () => (++zones === 5 ? ac.abort() : undefined) }))), CancelledError);
      const m = cryptsetupMetadata(img);
      assert.equal(Object.keys(m.segments).length, 4);
      run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
      same(await readPlaintext(img, PASS), plain, 'cryptsetup resumed brickcrypt stopped');
      cryptsetupAccepts(img, keyFile);
    } finally {
      cleanup();
    }
  });
}

for (const resilience of ['checksum', 'journal'] as Resilience[]) {
  test(`brickcrypt loses power inside a hot zone (${resilience}) -> cryptsetup repair + reencrypt --resume-only finish it`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const { img, keyFile, plain } = await setup(dir);
      const image = new Uint8Array(readFileSync(img));
      // Find a cut that leaves an in-reencryption segment: right after the hot-zone commit, within the data write.
      let found = false;
      for (let cut = 20; cut < 200 && !found; cut += 3) {
        const dev = new FaultInjectingDevice(image, { cutAfterWrite: cut, seed: cut, sectorSize: 4096 });
        try {
          await reencryptLuks2(dev, opts({ resilience }));
          break;
        } catch (err) {
          assert.ok(err instanceof PowerCutError, String(err));
        }
        const crashed = dev.crashImage();
        const meta = await LuksVolume.open(new MemoryDevice(crashed)).then((v) => v.dumpJson().metadata as Record<string, any>);
        if (!Object.values(meta.segments).some((s: any) => s.flags?.includes('in-reencryption'))) continue;
        found = true;
        writeFileSync(img, crashed);
      }
      assert.ok(found, 'no crash inside a hot zone found');
      const r = runStatus('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
      assert.notEqual(r.status, 0, 'cryptsetup resumes an interrupted hot zone only after repair');
      run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', keyFile, img]);
      run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, img]);
      same(await readPlaintext(img, PASS), plain, 'cryptsetup recovered brickcrypt');
      cryptsetupAccepts(img, keyFile);
    } finally {
      cleanup();
    }
  });
}

test('a volume brickcrypt re-keyed opens in cryptsetup with the key brickcrypt reads (cipher and sector size changed)', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { img, keyFile, plain } = await setup(dir);
    await onFile(img, (dev) => reencryptLuks2(dev, opts({ cipher: 'aes-xts-plain64', keySizeBits: 256, sectorSize: 512 })));
    same(await readPlaintext(img, PASS), plain, 'brickcrypt');
    cryptsetupAccepts(img, keyFile);
    const csKey = cryptsetupVolumeKeyHex(img, keyFile);
    const ours = await brickcryptVolumeKeyHex(img, PASS);
    assert.equal(ours, csKey);
    assert.equal(csKey.length, 64);
    assert.match(run('cryptsetup', ['luksDump', img]), /sector: 512 \[bytes\]/);
  } finally {
    cleanup();
  }
});
