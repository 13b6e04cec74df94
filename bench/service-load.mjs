// API overhead under load: `brickcrypt serve` runs two image -> LUKS2 copy jobs while 200
// clients poll the jobs' status; prints the polling latency (p50/p99) and the jobs' throughput
// against the same two copies run at once by `brickcrypt convert` from the CLI, in this run.
//
// Two rounds, each with two fresh jobs and lasting exactly as long as they run:
//  - closed loop (the target): every client sends its next poll the moment the answer
//    arrives, so 200 polls are always outstanding; latency is queueing plus any stall;
//  - paced (for information): every client polls BENCH_POLL_RATE times a second. autocannon
//    starts all connections' seconds together, so the polls arrive in bursts of 200; its
//    coordinated-omission correction is off because it assumes a 1 ms interval (autocannon
//    9 records latencies with an expected interval of ceil(1 / rate) ms).
//
//   BENCH_SIZE (default 1G), BENCH_DIR (default /tmp), BENCH_CLIENTS (default 200),
//   BENCH_POLL_RATE (default 1), BENCH_PACED=0 (skip the paced round),
//   BENCH_CPU_PROF=DIR (profile the serve process: node --cpu-prof, .cpuprofile files in DIR)
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'bin', 'brickcrypt');
const sizeText = process.env.BENCH_SIZE ?? '1G';
const units = { K: 1024, M: 1024 ** 2, G: 1024 ** 3 };
const m = /^(\d+)([KMG]?)$/i.exec(sizeText);
if (!m) throw new Error(`BENCH_SIZE ${sizeText}: use e.g. 512M or 1G`);
const size = Number(m[1]) * (units[m[2].toUpperCase()] ?? 1);
const clients = Number(process.env.BENCH_CLIENTS ?? 200);
const pollRate = Number(process.env.BENCH_POLL_RATE ?? 1);
const paced = process.env.BENCH_PACED !== '0';
const dir = mkdtempSync(join(process.env.BENCH_DIR ?? '/tmp', 'bc-service-bench-'));
const token = 'bench-token-0001';
const FAST = { pbkdf: 'pbkdf2', pbkdf_iterations: 1000 };
const mib = size / 1048576;

function makeImage(path) {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(4 << 20);
  for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off));
  closeSync(fd);
}

function run(args) {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.once('exit', (code) => (code === 0 ? res() : rej(new Error(`${args[0]} exited ${code}: ${err}`))));
  });
}

/** Two converts of the image at once, as the service runs its two jobs; seconds until both end. */
async function cliPair(image, keyFile) {
  const targets = ['cli-a.luks', 'cli-b.luks'].map((n) => join(dir, n));
  const t0 = performance.now();
  await Promise.all(targets.map((t) => run(['convert', image, t, '--dst-format', 'luks2', '--dst-key-file', keyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'])));
  const seconds = (performance.now() - t0) / 1000;
  for (const t of targets) rmSync(t, { force: true });
  return seconds;
}

/** Two copy jobs on the service while `clients` connections poll them; job time and load result. */
async function serviceRound(base, headers, image, names, loadOptions) {
  const jobs = [];
  const started = performance.now();
  for (const name of names) {
    const r = await fetch(`${base}/v1/volumes`, { method: 'POST', headers, body: JSON.stringify({ name, format: 'luks2', source: { image_file: image }, luks: FAST }) });
    if (r.status !== 202) throw new Error(`POST /v1/volumes: ${r.status} ${await r.text()}`);
    jobs.push((await r.json()).job.id);
  }
  const ended = new Map();
  const watch = (async () => {
    while (ended.size < jobs.length) {
      for (const id of jobs) {
        if (ended.has(id)) continue;
        const j = (await (await fetch(`${base}/v1/jobs/${id}`, { headers })).json()).job;
        if (j.state !== 'queued' && j.state !== 'running') ended.set(id, { state: j.state, seconds: (performance.now() - started) / 1000 });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const load = autocannon({
    url: base,
    connections: clients,
    duration: 600,
    requests: jobs.map((id) => ({ method: 'GET', path: `/v1/jobs/${id}`, headers })),
    ...loadOptions,
  });
  await watch;
  // The load lasts exactly as long as the jobs: stop it when the last one ends.
  load.stop();
  const result = await load;
  for (const [id, e] of ended) if (e.state !== 'succeeded') throw new Error(`job ${id} ${e.state}`);
  return { jobSeconds: Math.max(...[...ended.values()].map((e) => e.seconds)), load: result };
}

async function main() {
  const image = join(dir, 'image.raw');
  makeImage(image);
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, 'bench-passphrase');
  const cliSeconds = await cliPair(image, keyFile);

  writeFileSync(join(dir, 'tokens.json'), JSON.stringify({ [token]: { user: 'bench', project: 'bench', roles: ['admin'] } }));
  const port = 18700 + Math.floor(Math.random() * 90);
  const base = `http://127.0.0.1:${port}`;
  const profArgs = process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
  const serve = spawn(process.execPath, [...profArgs, cli, 'serve', '--listen', `127.0.0.1:${port}`, '--state', join(dir, 'state'), '--tokens', join(dir, 'tokens.json'), '--image-dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((res, rej) => {
    serve.stdout.on('data', (d) => String(d).includes('listening') && res());
    serve.once('exit', (c) => rej(new Error(`serve exited ${c}`)));
  });
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  try {
    console.log(`service bench: ${clients} clients polling job status while 2 copies of ${sizeText} run (raw -> LUKS2)`);
    console.log(`  cli: two converts at once ${cliSeconds.toFixed(1)} s (${((2 * mib) / cliSeconds).toFixed(0)} MiB/s together)`);
    const closed = await serviceRound(base, headers, image, ['a', 'b'], {});
    const polls = closed.load.requests.total / Math.max(closed.jobSeconds, 1e-3);
    console.log(`  closed loop: ${closed.load.requests.total} polls (${polls.toFixed(0)}/s), ${closed.load.non2xx} non-2xx, ${closed.load.errors} errors, latency p50 ${closed.load.latency.p50} ms, p99 ${closed.load.latency.p99} ms (target < 50 ms)`);
    console.log(`    service jobs: ${closed.jobSeconds.toFixed(1)} s for both (${((2 * mib) / closed.jobSeconds).toFixed(0)} MiB/s together), ratio service/cli ${(cliSeconds / closed.jobSeconds).toFixed(2)} (target >= 0.90)`);
    if (paced) {
      const r = await serviceRound(base, headers, image, ['c', 'd'], { connectionRate: pollRate, ignoreCoordinatedOmission: true });
      console.log(`  paced ${pollRate}/s per client: ${r.load.requests.total} polls, ${r.load.non2xx} non-2xx, latency p50 ${r.load.latency.p50} ms, p99 ${r.load.latency.p99} ms; jobs ${r.jobSeconds.toFixed(1)} s, ratio service/cli ${(cliSeconds / r.jobSeconds).toFixed(2)}`);
    }
  } finally {
    serve.kill('SIGTERM');
    await new Promise((r) => serve.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  rmSync(dir, { recursive: true, force: true });
  process.exit(1);
});
