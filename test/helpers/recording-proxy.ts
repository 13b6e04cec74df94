/**
 * A small HTTP proxy for tests that puts itself in front of a real server (Glance, Barbican) and
 * records every request's method, path and headers, so a test can see exactly what reached the
 * server (e.g. which X-Auth-Token) while the real server still answers. Bodies stream through
 * unchanged, except that JSON answers can have the server's own origin rewritten to the proxy's
 * (Barbican's `host_href` puts absolute references in its answers).
 */
import http from 'node:http';
import { Transform } from 'node:stream';

export interface RecordedRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

export interface RecordingProxy {
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

export interface RecordingProxyOptions {
  rewriteOrigin?: boolean;
  /** Milliseconds to hold each chunk of an answer to a GET whose path matches (a slow download to kill mid-way). */
  slowDownload?: { path: RegExp; msPerChunk: number };
}

export async function recordingProxy(target: string, options: RecordingProxyOptions = {}): Promise<RecordingProxy> {
  const to = new URL(target);
  const requests: RecordedRequest[] = [];
  const agent = new http.Agent({ keepAlive: true });
  let self = '';
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method ?? '', path: req.url ?? '', headers: { ...req.headers } });
    const headers = { ...req.headers, host: to.host };
    const up = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers, agent }, (answer) => {
      const json = String(answer.headers['content-type'] ?? '').includes('json');
      if (!options.rewriteOrigin || !json) {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        const slow = options.slowDownload;
        if (slow && req.method === 'GET' && slow.path.test(req.url ?? '')) {
          answer
            .pipe(new Transform({ transform: (chunk, _enc, done) => void setTimeout(() => done(null, chunk), slow.msPerChunk) }))
            .pipe(res);
        } else answer.pipe(res);
        return;
      }
      const chunks: Buffer[] = [];
      answer.on('data', (c: Buffer) => chunks.push(c));
      answer.on('end', () => {
        const body = Buffer.from(Buffer.concat(chunks).toString('utf8').split(to.origin).join(self), 'utf8');
        const h = { ...answer.headers, 'content-length': String(body.length) };
        delete h['transfer-encoding'];
        res.writeHead(answer.statusCode ?? 502, h);
        res.end(body);
      });
    });
    up.on('error', (err) => {
      res.writeHead(502);
      res.end(String(err));
    });
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  self = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    url: self,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
