/** Child process for the two-process keystore test: creates N keys, prints their ids. */
import { LocalKeyManager } from '../../src/keys/local-key-manager.js';

const [path, count, tag] = process.argv.slice(2);
const km = await LocalKeyManager.open(path!);
const caller = { user: `worker-${tag}`, project: 'p1', roles: ['admin'] };
for (let i = 0; i < Number(count); i++) {
  const { id, key } = await km.createKey(caller, { name: `${tag}-${i}` });
  key.wipe();
  process.stdout.write(id + '\n');
}
await km.close();
