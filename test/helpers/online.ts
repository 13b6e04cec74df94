/**
 * Shared by the online reencryption tests (test/luks/reencrypt-online*.test.ts): a seeded
 * random source, concurrent in-process clients checked against a model, a minimal NBD client,
 * and `attach` / `reencrypt` run as child processes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import type { BlockDevice } from '../../src/block-device.js';
import type { ReencryptingDevice } from '../../src/devices/reencrypting-device.js';
import { encodeRequest } from '../../src/nbd/protocol/codec.js';
import { NBD_CMD } from '../../src/nbd/protocol/constants.js';
import { RawClient } from '../nbd/raw-client.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, run } from './tools.js';
import { CS_FAST, CS_OFFLINE, cryptsetupMetadata } from './reencrypt-states.js';

export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** xorshift32, seeded, so a failing run can be replayed. */
export function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return Math.floor((x / 0x100000000) * n);
  };
}

/** `dev` with every read and write completing on a later turn of the event loop, as a file's do. */
export function yielding<D extends BlockDevice>(dev: D): D {
  const later = () => new Promise((res) => setImmediate(res));
  return new Proxy(dev, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if ((prop === 'read' || prop === 'write') && typeof v === 'function') {
        return async (...args: unknown[]) => {
          await later();
          return (v as (...a: unknown[]) => Promise<void>).apply(target, args);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

export const STRIPE = 40 * 1024; // not a multiple of the zone: requests cross the boundary

/**
 * `clients` loops, each owning the stripes i ≡ c (mod clients), doing random unaligned writes and
 * read-backs (checked against the model) until `until()` — plus a final round. Returns counts.
 */
export async function clientLoad(view: BlockDevice, model: Uint8Array, seed: number, until: () => boolean, opts: { clients?: number; flush?: boolean; onAck?: (c: number) => void; inflight?: Array<{ off: number; data: Uint8Array } | undefined> } = {}): Promise<{ ops: number; crossing: number; midRun: number }> {
  const clients = opts.clients ?? 4;
  const stripes = Math.floor(model.length / STRIPE);
  const stats = { ops: 0, crossing: 0, midRun: 0 };
  const one = async (c: number): Promise<void> => {
    const r = rng(seed * 31 + c + 1);
    const own = Array.from({ length: stripes }, (_, i) => i).filter((i) => i % clients === c);
    for (let round = 0; !until() || round === 0; round++) {
      // Half of the requests go to the client's stripe nearest the hot zone, where the races are.
      const near = own.reduce((best, i) => (Math.abs(i * STRIPE - (view as ReencryptingDevice).boundary) < Math.abs(best * STRIPE - (view as ReencryptingDevice).boundary) ? i : best), own[0]!);
      const s = (r(2) === 0 ? near : own[r(own.length)]!) * STRIPE;
      const off = s + r(STRIPE - 1);
      const len = 1 + r(Math.min(STRIPE - (off - s), 3 * 4096 + 777));
      const b = (view as ReencryptingDevice).boundary;
      if (b > 0 && b < view.size) stats.midRun++;
      if (off < b + 64 * 1024 && off + len > b) stats.crossing++;
      if (r(3) > 0) {
        const data = new Uint8Array(randomBytes(len));
        if (opts.inflight) opts.inflight[c] = { off, data };
        await view.write(data, off);
        if (opts.flush) await view.flush();
        model.set(data, off);
        if (opts.inflight) opts.inflight[c] = undefined;
        opts.onAck?.(c);
      } else {
        const got = new Uint8Array(len);
        await view.read(got, off);
        const d = firstDiff(got, model.subarray(off, off + len));
        if (d >= 0) assert.fail(`client ${c}: read ${off}+${len} differs at byte ${off + d} (boundary ${(view as ReencryptingDevice).boundary})`);
      }
      stats.ops++;
      if (r(4) === 0) await new Promise((res) => setImmediate(res));
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => one(c)));
  return stats;
}

/** A minimal NBD client (simple replies, one request at a time) over test/nbd/raw-client.ts. */
export class NbdTestClient {
  #cookie = 1n;
  private constructor(readonly raw: RawClient) {}
  static async connect(sock: string): Promise<NbdTestClient> {
    const raw = await RawClient.connect(sock);
    await raw.go('', false);
    return new NbdTestClient(raw);
  }
  async #request(type: number, offset: number, length: number, data?: Uint8Array): Promise<void> {
    const cookie = this.#cookie++;
    this.raw.write(encodeRequest({ flags: 0, type, cookie, offset: BigInt(offset), length }, data));
    const r = await this.raw.simpleReply();
    assert.equal(r.cookie, cookie);
    if (r.error !== 0) throw new Error(`NBD error ${r.error} for command ${type} at ${offset}+${length}`);
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const cookie = this.#cookie++;
    this.raw.write(encodeRequest({ flags: 0, type: NBD_CMD.READ, cookie, offset: BigInt(offset), length }));
    const r = await this.raw.simpleReply();
    if (r.error !== 0) throw new Error(`NBD read error ${r.error} at ${offset}+${length}`);
    return this.raw.read(length, 60_000);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#request(NBD_CMD.WRITE, offset, data.length, data);
  }
  /** A large range in 1 MiB reads (the raw client's buffer grows by concatenation). */
  async readAll(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    for (let p = 0; p < length; p += 1 << 20) out.set(await this.read(offset + p, Math.min(1 << 20, length - p)), p);
    return out;
  }
  flush(): Promise<void> {
    return this.#request(NBD_CMD.FLUSH, 0, 0);
  }
  close(): void {
    this.raw.close();
  }
}

export function startAttach(img: string, keyFile: string, sock: string, extra: string[] = []): Promise<{ child: ChildProcess; exited: Promise<number | null>; stderr: () => string }> {
  const child = spawn(process.execPath, [cliPath, 'attach', img, '--key-file', keyFile, '--socket', sock, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve({ child, exited, stderr: () => err });
    });
    void exited.then((code) => reject(new Error(`attach exited ${code}: ${err}`)));
  });
}

/** `brickcrypt reencrypt` as a child; `onEvent` gets its --json lines. */
export function runReencrypt(args: string[], onEvent: (e: Record<string, unknown>) => void = () => undefined): { child: ChildProcess; done: Promise<{ code: number | null; stderr: string; events: Array<Record<string, unknown>> }> } {
  const child = spawn(process.execPath, [cliPath, 'reencrypt', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const events: Array<Record<string, unknown>> = [];
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (let i = out.indexOf('\n'); i >= 0; i = out.indexOf('\n')) {
      const line = out.slice(0, i);
      out = out.slice(i + 1);
      const e = JSON.parse(line) as Record<string, unknown>;
      events.push(e);
      onEvent(e);
    }
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return { child, done: new Promise((res) => child.once('exit', (code) => res({ code, stderr: err, events }))) };
}

/** Random writes (each flushed: acknowledged = durable) and read-backs checked against `model`, in `[from, limit)`, until `until()`. */
export async function nbdLoad(client: NbdTestClient, model: Uint8Array, until: () => boolean, inflight: { w?: { off: number; data: Uint8Array } }, seed: number, limit = model.length, from = 0): Promise<number> {
  const r = rng(seed);
  let ops = 0;
  while (!until()) {
    const off = from + r(limit - from - 70_000);
    const len = 1 + r(65_536);
    if (r(2) === 0) {
      const data = new Uint8Array(randomBytes(len));
      inflight.w = { off, data };
      await client.write(off, data);
      await client.flush();
      model.set(data, off);
      inflight.w = undefined;
    } else {
      const got = await client.read(off, len);
      const d = firstDiff(got, model.subarray(off, off + len));
      if (d >= 0) assert.fail(`NBD read ${off}+${len} differs at byte ${off + d}`);
    }
    ops++;
  }
  return ops;
}

/**
 * Reads at spread offsets of `[from, to)` through `reader` until `until()`, each checked against
 * `model` (which nobody writes there meanwhile); returns how many reads were made.
 */
export async function nbdCheckedReads(reader: NbdTestClient, model: Uint8Array, until: () => boolean, from: number, to: number): Promise<number> {
  let n = 0;
  while (!until()) {
    const off = from + ((n * 997 * 1024 + n * 513) % (to - from - 70_000));
    const len = 1 + ((n * 7919) % 65_536);
    const got = await reader.read(off, len);
    n++;
    const d = firstDiff(got, model.subarray(off, off + len));
    if (d >= 0) assert.fail(`reader: ${off}+${len} differs at byte ${off + d}`);
  }
  return n;
}

/**
 * Runs `reencrypt ARGS` against the server `att` serves on `sock` and kills the server with
 * SIGKILL 400 ms after the first progress line, while a client writes (each write flushed) and
 * reads checked against `model` until the server is gone. Returns the CLI's result and the write
 * that was in flight at the kill (acknowledged writes are in `model`).
 */
export async function killServerMidRun(att: { child: ChildProcess; exited: Promise<number | null> }, sock: string, args: string[], model: Uint8Array, seed: number): Promise<{ result: { code: number | null; stderr: string; events: Array<Record<string, unknown>> }; inflight: { w?: { off: number; data: Uint8Array } } }> {
  const client = await NbdTestClient.connect(sock);
  let killed = false;
  const re = runReencrypt(args, (e) => {
    if (e.event === 'progress' && !killed) {
      killed = true;
      setTimeout(() => att.child.kill('SIGKILL'), 400);
    }
  });
  const inflight: { w?: { off: number; data: Uint8Array } } = {};
  let gone = false;
  void att.exited.then(() => (gone = true));
  await nbdLoad(client, model, () => gone, inflight, seed).catch((err: Error) => assert.ok(killed, String(err)));
  const result = await re.done;
  await att.exited;
  client.close();
  assert.ok(killed, 'the server was killed during the run');
  assert.notEqual(result.code, 0, 'the CLI reports that the server went away');
  return { result, inflight };
}

/** Fails unless every byte of `got` is `model`'s (acknowledged writes) or that of the write in flight, `inflight.w`. */
export function acknowledgedOrInFlight(got: Uint8Array, model: Uint8Array, inflight: { w?: { off: number; data: Uint8Array } }, label: string): void {
  for (let i = 0; i < got.length; i++) {
    if (got[i] === model[i]) continue;
    const w = inflight.w;
    if (w && i >= w.off && i < w.off + w.data.length && w.data[i - w.off] === got[i]) continue;
    assert.fail(`${label}: byte ${i} is neither the acknowledged nor the in-flight write`);
  }
}

/**
 * After a `kill -9` of a server that was encrypting or decrypting with the detached header `hdr`:
 * checks the header still records the run (and logs whether it stopped inside a hot zone), then
 * lets cryptsetup finish copies of data and header in `dir` (`repair` first after a crash in a hot
 * zone). Returns the copies, for the caller to read its own way, and `check`, which accepts data
 * equal to `model` except where the write in flight (`inflight.w`) landed.
 */
export function cryptsetupFinishesKilledRun(img: string, hdr: string, keyFile: string, dir: string, model: Uint8Array, inflight: { w?: { off: number; data: Uint8Array } }): { data: string; header: string; check: (got: Uint8Array, label: string) => void } {
  const mid = cryptsetupMetadata(hdr);
  assert.ok(mid.config.requirements?.mandatory?.some((x: string) => x.startsWith('online-reencrypt')), 'stopped mid-way');
  const hot = Object.values(mid.segments as Record<string, { flags?: string[] }>).some((s) => s.flags?.includes('in-reencryption'));
  process.stderr.write(`# killed ${hot ? 'inside a hot zone' : 'between zones'}\n`);
  const check = (got: Uint8Array, label: string) => acknowledgedOrInFlight(got, model, inflight, label);
  const data = join(dir, 'copy.img');
  const header = join(dir, 'copy.hdr');
  writeFileSync(data, readFileSync(img));
  writeFileSync(header, readFileSync(hdr));
  if (hot) run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', keyFile, '--header', header, data]);
  run('cryptsetup', ['reencrypt', ...CS_OFFLINE, ...CS_FAST, '--key-file', keyFile, '--header', header, '--resume-only', data]);
  return { data, header, check };
}

/**
 * After a `kill -9` of the server: `attach [--header H] --serve-reencrypting` serves the recorded
 * state (its log must match `doneLine`); reads outside the fenced hot zone (and the write that
 * was in flight, `w`) give `model`, writes there stick (into `model`), a read in the hot zone
 * fails with EIO; then an online `reencrypt --resume-only --header H` (plus `modeArgs`) recovers
 * the zone and finishes. Detaches at the end.
 */
export async function serveAndResumeOnline(img: string, hdr: string | undefined, keyFile: string, sock: string, model: Uint8Array, w: { off: number; data: Uint8Array } | undefined, doneLine: RegExp, modeArgs: string[]): Promise<void> {
  const headerArgs = hdr !== undefined ? ['--header', hdr] : [];
  const again = await startAttach(img, keyFile, sock, [...headerArgs, '--serve-reencrypting']);
  try {
    assert.match(again.stderr(), doneLine);
    const hot = /bytes (\d+)\+(\d+) \(the interrupted hot zone\)/.exec(again.stderr());
    process.stderr.write(`# re-attached after kill -9: hot zone ${hot ? `${hot[1]}+${hot[2]}` : 'none'}\n`);
    const inHot = (off: number, len: number) => hot !== null && off < Number(hot[1]) + Number(hot[2]) && Number(hot[1]) < off + len;
    const clear = (off: number, len: number) => !w || off + len <= w.off || off >= w.off + w.data.length;
    const c2 = await NbdTestClient.connect(sock);
    const r2 = rng(5);
    let checked = 0;
    for (let k = 0; k < 200; k++) {
      const off = r2(model.length - 70_000);
      const len = 1 + r2(65_536);
      if (inHot(off, len) || !clear(off, len)) continue;
      if (k % 2 === 0) {
        const data = new Uint8Array(randomBytes(len));
        await c2.write(off, data);
        model.set(data, off);
      } else {
        const got = await c2.read(off, len);
        const d = firstDiff(got, model.subarray(off, off + len));
        if (d >= 0) assert.fail(`re-attached read ${off}+${len} differs at byte ${off + d}`);
      }
      checked++;
    }
    assert.ok(checked > 100);
    if (hot) await assert.rejects(c2.read(Number(hot[1]), 4096), /NBD read error 5/, 'the hot zone is fenced');
    await c2.flush();
    const online = await runReencrypt(['--resume-only', ...headerArgs, ...modeArgs, img, '--key-file', keyFile]).done;
    assert.equal(online.code, 0, online.stderr);
    assert.equal(online.events.find((e) => e.event === 'done')!.recovered, hot !== null);
    if (hot && clear(Number(hot[1]), 4096)) {
      const got = await c2.read(Number(hot[1]), 4096);
      assert.equal(firstDiff(got, model.subarray(Number(hot[1]), Number(hot[1]) + 4096)), -1, 'hot zone after recovery');
    }
    c2.close();
  } finally {
    again.child.kill('SIGTERM');
    assert.equal(await again.exited, 0, again.stderr());
  }
}
