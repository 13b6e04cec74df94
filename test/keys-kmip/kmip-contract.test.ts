/**
 * The shared key-manager contract against a real PyKMIP 0.10 server (started by
 * scripts/key-servers.sh). Each project has its own client certificate: project A acts as
 * CN brickcrypt-a, project B as CN brickcrypt-b, so the server itself keeps them apart.
 */
import { test } from 'node:test';
import { KmipKeyManager } from '../../src/keys/kmip/kmip-key-manager.js';
import { kmipServer } from '../helpers/key-servers.js';
import { runContractSuite } from '../keys/contract-suite.js';

const server = await kmipServer();
if ('skip' in server) {
  test('key-manager contract: kmip', { skip: server.skip }, () => {});
} else {
  runContractSuite(
    'kmip',
    async () => ({
      km: new KmipKeyManager({
        host: server.host,
        port: server.port,
        caFile: server.ca,
        attempts: 2,
        projects: {
          'proj-a': { certFile: server.cert, keyFile: server.key },
          'proj-b': { certFile: server.cert2, keyFile: server.key2 },
        },
      }),
      owner: { user: 'alice', project: 'proj-a', roles: ['admin'] },
      otherProject: { user: 'eve', project: 'proj-b', roles: ['admin'] },
    }),
    // KMIP 1.x has no consumers and no per-object ACLs; PyKMIP creates AES keys of 128/192/256 bits.
    { acl: false, keyPairs: ['rsa', 'ec', 'dsa'], consumers: false, crossProject: 'forbidden', validatesDer: true, keySizes: [128, 192, 256] },
  );
}
