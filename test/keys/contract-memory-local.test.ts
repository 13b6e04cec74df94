import { join } from 'node:path';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import { LocalKeyManager } from '../../src/keys/local-key-manager.js';
import { tempDir } from '../helpers/tools.js';
import { runContractSuite, type ContractCapabilities } from './contract-suite.js';

const owner = { user: 'alice', project: 'p1', roles: ['admin'] };
const otherProject = { user: 'eve', project: 'p2', roles: ['admin'] };
const reader = { user: 'nova-compute', project: 'p1', roles: ['reader'] };
const caps: ContractCapabilities = { acl: true, keyPairs: ['rsa', 'ec', 'dsa'], consumers: true, crossProject: 'not-found', validatesDer: true };

runContractSuite('memory', async () => ({ km: new MemoryKeyManager(), owner, otherProject, reader }), caps);

runContractSuite(
  'local (key-file KEK)',
  async () => {
    const t = tempDir();
    const km = await LocalKeyManager.init(join(t.dir, 'keystore.db'));
    return { km, owner, otherProject, reader, cleanup: async () => t.cleanup() };
  },
  caps,
);
