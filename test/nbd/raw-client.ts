/** A minimal hand-driven NBD client over a raw socket, for malformed-input tests. */
import net from 'node:net';
import * as c from '../../src/nbd/protocol/codec.js';
import { NBD_OPT, NBD_REP } from '../../src/nbd/protocol/constants.js';

export class RawClient {
  #buf = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  closed = false;
  constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    socket.on('error', () => undefined);
  }
  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }
  /** A Unix socket path, or a TCP port on 127.0.0.1. */
  static connect(to: string | number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = typeof to === 'number' ? net.connect(to, '127.0.0.1', () => resolve(new RawClient(s))) : net.connect(to, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }
  /** Reads exactly n bytes; rejects if the server closes first. */
  async read(n: number, timeoutMs = 5000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buf.length < n) {
      if (this.closed) throw new Error(`server closed (wanted ${n} bytes, have ${this.#buf.length})`);
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const out = new Uint8Array(this.#buf.subarray(0, n));
    this.#buf = this.#buf.subarray(n);
    return out;
  }
  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  write(b: Uint8Array): void {
    this.socket.write(b);
  }
  async handshake(flags = 3): Promise<void> {
    c.decodeGreeting(await this.read(18));
    this.write(c.encodeClientFlags(flags));
  }
  async optionReply(): Promise<{ option: number; type: number; data: Uint8Array }> {
    const h = c.decodeOptionReplyHeader(await this.read(20));
    return { option: h.option, type: h.type, data: await this.read(h.length) };
  }
  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<Array<{ option: number; type: number; data: Uint8Array }>> {
    this.write(c.encodeOption(option, data));
    const out = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === NBD_REP.ACK || r.type >= 0x80000000) return out;
    }
  }
  async go(name = '', structured = true): Promise<void> {
    await this.handshake();
    if (structured) await this.option(NBD_OPT.STRUCTURED_REPLY);
    const r = await this.option(NBD_OPT.GO, c.encodeInfoRequest({ name, infos: [] }));
    if (r[r.length - 1]!.type !== NBD_REP.ACK) throw new Error('GO failed');
  }
  async simpleReply(): Promise<{ error: number; cookie: bigint }> {
    const r = c.decodeSimpleReply(await this.read(16));
    return { error: r.error, cookie: r.cookie };
  }
  /** Reads one reply message of either kind. */
  async anyReply(): Promise<{ structured: boolean; error: number; cookie: bigint; type?: number; flags?: number; payload?: Uint8Array }> {
    const head = await this.read(4);
    const magic = new DataView(head.buffer).getUint32(0);
    if (magic === 0x67446698) {
      const rest = await this.read(12);
      const r = c.decodeSimpleReply(new Uint8Array([...head, ...rest]));
      return { structured: false, error: r.error, cookie: r.cookie };
    }
    const rest = await this.read(16);
    const h = c.decodeStructuredReplyHeader(new Uint8Array([...head, ...rest]));
    const payload = await this.read(h.length);
    let error = 0;
    if (h.type & 0x8000) error = c.decodeErrorChunk(payload, h.type === 0x8002).error;
    return { structured: true, error, cookie: h.cookie, type: h.type, flags: h.flags, payload };
  }
  close(): void {
    this.socket.destroy();
  }
}
