/**
 * The read-only status page at `/` in headless Chromium (Debian's, driven by playwright-core):
 * it lists the volumes and shows a running job's progress bar moving over the SSE stream;
 * a screenshot is taken and checked to be a PNG.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createService } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { needTools, whichTool } from '../helpers/tools.js';
import { TOKENS, client, setupState, waitFor, waitJob } from './service-helpers.js';

test('status page: volumes and live job progress over SSE, in headless Chromium, with a screenshot', { skip: needTools('chromium') }, async () => {
  const env = setupState();
  const service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: false },
    copyBytesPerSecond: 4 << 20,
    checkpointBytes: 1 << 20,
    imageDirs: [env.dir],
  });
  const { chromium } = await import('playwright-core');
  let browser: Awaited<ReturnType<typeof chromium.launch>> | undefined;
  try {
    await service.start();
    const base = await service.app.listen({ host: '127.0.0.1', port: 0 });
    const call = client(base);
    const image = join(env.dir, 'page.raw');
    writeFileSync(image, randomBytes(12 << 20));
    const done = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'page-blank', format: 'raw', size: '1M' } });
    await waitJob(call, done.json.job.id);

    browser = await chromium.launch({
      executablePath: whichTool('chromium')!,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage', '--no-first-run'],
    });
    const page = await browser.newPage({ viewport: { width: 1100, height: 600 } });
    // The token travels in the fragment: it is never sent to the server in a URL.
    await page.goto(`${base}/#token=${TOKENS.admin.token}`);
    await page.waitForSelector('#volumes tbody tr');
    assert.match((await page.textContent('#volumes tbody')) ?? '', /page-blank/);

    const slow = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'page-copy', format: 'raw', source: { image_file: image } } });
    const jobId = slow.json.job.id as string;
    const row = `#jobs tr[data-job="${jobId}"]`;
    await page.waitForSelector(row, { timeout: 20_000 });
    await waitFor(call, jobId, (j) => j.progress.bytes_done > 2 << 20);
    // The bar follows the SSE stream without a reload.
    await page.waitForFunction((sel) => {
      const fill = document.querySelector(`${sel} .fill`) as HTMLElement | null;
      return fill !== null && parseFloat(fill.style.width) > 0;
    }, row, { timeout: 20_000 });
    const shot = join(env.dir, 'status-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = readFileSync(shot);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.ok(png.length > 5000, 'a real rendering, not an empty image');
    if (process.env.BRICKCRYPT_SCREENSHOT) writeFileSync(process.env.BRICKCRYPT_SCREENSHOT, png);
    await waitJob(call, jobId);
    await page.waitForFunction((sel) => document.querySelector(`${sel} .state-succeeded`) !== null, row, { timeout: 20_000 });
  } finally {
    await browser?.close();
    await service.close();
    env.cleanup();
  }
});
