/**
 * The shared key-manager contract against a real Barbican 15 (started by scripts/key-servers.sh).
 */
import { test } from 'node:test';
import { randomUUID } from 'node:crypto';
import { BarbicanKeyManager } from '../../src/keys/barbican/barbican-key-manager.js';
import { barbicanServer } from '../helpers/key-servers.js';
import { runContractSuite } from '../keys/contract-suite.js';

const server = await barbicanServer();
if ('skip' in server) {
  test('key-manager contract: barbican', { skip: server.skip }, () => {});
} else {
  // Fresh projects per run: the server's database outlives test runs.
  const run = randomUUID().slice(0, 8);
  runContractSuite(
    'barbican',
    async () => ({
      km: new BarbicanKeyManager({ url: server.url, attempts: 2 }),
      owner: { user: 'alice', project: `proj-a-${run}`, roles: ['member'] },
      otherProject: { user: 'eve', project: `proj-b-${run}`, roles: ['member'] },
      reader: { user: 'nova-compute', project: `proj-a-${run}`, roles: ['reader'] },
    }),
    { acl: true, keyPairs: ['rsa', 'dsa', 'ec'], consumers: true, crossProject: 'forbidden', validatesDer: true },
  );
}
