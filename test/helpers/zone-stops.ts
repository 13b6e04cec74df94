/**
 * Runs an in-place operation again and again, each run stopped by its signal at its second
 * progress report (a zone boundary), until one run completes: the way the signal tests show
 * that a stop leaves a resumable state at every boundary.
 */
import assert from 'node:assert/strict';
import { CancelledError } from '../../src/errors.js';

/**
 * `run` gets the signal and progress callback to pass to the operation; `afterStop` checks the
 * state each stop left. Returns how many runs were stopped.
 *
 * @example
 * const stops = await stopAtEveryOtherZone((o) => encryptLuks2(dev, opts(o)));
 */
export async function stopAtEveryOtherZone(
  run: (o: { signal: AbortSignal; onProgress: () => void }) => Promise<unknown>,
  afterStop?: () => Promise<void> | void,
): Promise<number> {
  let stops = 0;
  for (;;) {
    const ac = new AbortController();
    let zones = 0;
    try {
      await run({ signal: ac.signal, onProgress: () => (++zones === 2 ? ac.abort() : undefined) });
      return stops;
    } catch (err) {
      assert.ok(err instanceof CancelledError, String(err));
      stops++;
      await afterStop?.();
    }
  }
}
