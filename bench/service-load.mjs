// API overhead under load: `brickcrypt serve` runs two image -> LUKS2 copy jobs while
// autocannon's clients poll the jobs' status; prints the polling latency (p50/p99) and the
// jobs' throughput against `brickcrypt convert` of the same image from the CLI, run here too.
//
//   BENCH_SIZE (default 1G), BENCH_DIR (default /tmp), BENCH_CLIENTS (default 200),
//   BENCH_CPU_PROF=DIR (profile the serve process: node --cpu-prof, .cpuprofile files in DIR)
import { spawn, spawnSync } from 'node:child_process';
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
const dir = mkdtempSync(join(process.env.BENCH_DIR ?? '/tmp', 'bc-service-bench-'));
const token = 'bench-token-0001';
const FAST = { pbkdf: 'pbkdf2', pbkdf_iterations: 1000 };

function makeImage(path) {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(4 << 20);
  for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off));
  closeSync(fd);
}

async function main() {
  const image = join(dir, 'image.raw');
  makeImage(image);
  // CLI reference: the same copy (raw -> LUKS2, cheap keyslot) from the command line.
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, 'bench-passphrase');
  const t0 = performance.now();
  const conv = spawnSync(process.execPath, [cli, 'convert', image, join(dir, 'cli.luks'), '--dst-format', 'luks2', '--dst-key-file', keyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'], { encoding: 'utf8' });
  const cliSeconds = (performance.now() - t0) / 1000;
  if (conv.status !== 0) throw new Error(`convert failed: ${conv.stderr}`);
  rmSync(join(dir, 'cli.luks'), { force: true });

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
    const jobs = [];
    const started = performance.now();
    for (const name of ['a', 'b']) {
      const r = await fetch(`${base}/v1/volumes`, { method: 'POST', headers, body: JSON.stringify({ name, format: 'luks2', source: { image_file: image }, luks: FAST }) });
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
    const load = await autocannon({
      url: base,
      connections: clients,
      duration: Math.max(5, Math.min(30, Math.round(cliSeconds * 2))),
      requests: jobs.map((id) => ({ method: 'GET', path: `/v1/jobs/${id}`, headers })),
    });
    await watch;
    for (const [id, e] of ended) if (e.state !== 'succeeded') throw new Error(`job ${id} ${e.state}`);
    const jobSeconds = Math.max(...[...ended.values()].map((e) => e.seconds));
    const mib = size / 1048576;
    const cliRate = mib / cliSeconds;
    // Two jobs run at once on the service: compare the rate of each with the CLI's single run.
    const perJob = mib / jobSeconds;
    console.log(`service bench: ${clients} clients polling job status while 2 copies of ${sizeText} run (raw -> LUKS2)`);
    console.log(`  polling: ${load.requests.total} requests, ${load.non2xx} non-2xx, latency p50 ${load.latency.p50} ms, p99 ${load.latency.p99} ms (target < 50 ms)`);
    console.log(`  jobs: ${jobSeconds.toFixed(1)} s for both, ${perJob.toFixed(0)} MiB/s each, ${(2 * perJob).toFixed(0)} MiB/s together`);
    console.log(`  cli convert: ${cliSeconds.toFixed(1)} s, ${cliRate.toFixed(0)} MiB/s`);
    console.log(`  ratio service-total/cli ${((2 * perJob) / cliRate).toFixed(2)}, service-per-job/cli ${(perJob / cliRate).toFixed(2)} (target >= 0.90)`);
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
