#!/usr/bin/env node
// Builds the native module (native/xts.c: the AES-XTS kernel, native/copy-bytes.c: a memcpy into
// shared memory, native/align.c: buffer addresses for O_DIRECT,
// native/af-chain.c: the LUKS AF-splitter hash chain, native/block-digests.c: a digest per block -> build/Release/brickcrypt_xts.node) with
// node-gyp against Node's own headers (which carry OpenSSL's). brickcrypt works without it
// (the WebAssembly kernel takes over, about half as fast), so a failed build only warns -
// except under CI=true, where the fast path must be there and tested.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// Strict under CI, except as npm's `prepare` step: `npm ci` runs before scripts/test.sh has
// installed the compiler, and test.sh builds again (strictly) once it has.
const strict = process.env.CI === 'true' && process.env.npm_lifecycle_event !== 'prepare';

/** node-gyp: the one npm hands to scripts, else the copy bundled with npm next to this node. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((p) => p && existsSync(p));
}

/** Where Node's headers are: npm's nodedir setting, else the prefix of this node if it has them. */
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const r = spawnSync('npm', ['config', 'get', 'nodedir'], { encoding: 'utf8' });
  const configured = r.status === 0 ? r.stdout.trim() : '';
  if (configured && configured !== 'undefined' && configured !== 'null') return configured;
  const prefix = resolve(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined;
}

function fail(why) {
  const msg = `build-native: the native module was NOT built (${why}); brickcrypt falls back to the slower WebAssembly AES-XTS kernel and JavaScript copies.`;
  console.error(`\n*** ${msg}\n`);
  process.exit(strict ? 1 : 0);
}

const output = join(root, 'build', 'Release', 'brickcrypt_xts.node');
const sources = ['native/xts.c', 'native/copy-bytes.c', 'native/align.c', 'native/seek-data.c', 'native/syncfs.c', 'native/af-chain.c', 'native/block-digests.c', 'native/addon.h', 'binding.gyp'].map((f) => join(root, f));
if (existsSync(output) && sources.every((f) => statSync(f).mtimeMs <= statSync(output).mtimeMs)) process.exit(0); // up to date

const gyp = nodeGyp();
if (!gyp) fail('node-gyp not found');
const dir = nodeDir();
const args = [gyp, 'rebuild', '--silent', ...(dir ? [`--nodedir=${dir}`] : [])];
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (r.status !== 0) fail(`node-gyp exited with ${r.status ?? r.signal}`);
if (!existsSync(output)) fail('no module was produced');
