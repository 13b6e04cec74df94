/**
 * A Glance that dies in the middle of an upload: the upload fails with a typed error and no
 * active half image is left. Runs its own Glance (scripts/servers/glance.sh on a private
 * state directory and port) so killing it disturbs no other test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { glanceAs, glanceInstalled, privateGlance, reachable, uniqueProject } from '../helpers/glance.js';
import { uploadVolume } from '../../src/workflows/image-upload.js';
import { BackendUnavailableError } from '../../src/errors.js';

const skip = glanceInstalled();
// Glance's port + 101: fixed, so a leftover of an earlier run is found and replaced by the script.
const PORT = 9393;

test('the image service killed mid-upload: BackendUnavailableError, and no active half image', { skip, timeout: 180_000 }, async () => {
  if (await reachable('127.0.0.1', PORT)) assert.fail(`port ${PORT} is taken; the test needs it for its own Glance`);
  const dir = mkdtempSync(join(tmpdir(), 'brickcrypt-glance-kill-'));
  const state = join(dir, 'glance');
  try {
    privateGlance('start', state, PORT);
    const url = `http://127.0.0.1:${PORT}`;
    const project = uniqueProject('kill');
    const glance = glanceAs(url, project);
    const volume = join(dir, 'vol.raw');
    writeFileSync(volume, randomBytes(64 * 1024 * 1024));
    const pid = Number(readFileSync(join(state, 'pid'), 'utf8'));
    let killed = false;
    await assert.rejects(
      uploadVolume({
        volume,
        client: glance,
        name: 'dies',
        onProgress: (p) => {
          if (!killed && p.bytes >= 8 * 1024 * 1024) {
            killed = true;
            process.kill(-pid, 'SIGKILL'); // its process group: setsid in the script
          }
        },
      }),
      (err: Error) => err instanceof BackendUnavailableError,
    );
    assert.ok(killed, 'the server was killed during the upload');
    // Back on its old database: whatever the upload left is not an active image.
    privateGlance('start', state, PORT, true);
    const images = await glance.list();
    process.stderr.write(`left after the kill: ${JSON.stringify(images.map((i) => i.status))}\n`);
    assert.ok(images.every((i) => i.status !== 'active'), `statuses: ${images.map((i) => i.status).join(', ')}`);
  } finally {
    try {
      privateGlance('stop', state, PORT);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
