/** Every ObjectStore adapter against one contract: file: here, Swift and S3 against the real test Swift. */
import { randomBytes } from 'node:crypto';
import { after } from 'node:test';
import { openObjectStore } from '../../src/backup/object-store.js';
import { needObjectStore, objectStoreServer } from '../helpers/object-store-server.js';
import { tempDir } from '../helpers/tools.js';
import { storeContract } from './store-contract.js';

const tmp = tempDir('brickcrypt-store-');
after(() => tmp.cleanup());
let n = 0;
storeContract('file:', () => openObjectStore(`file:${tmp.dir}/r${n++}`));

const skip = needObjectStore();
const server = () => {
  const s = objectStoreServer();
  if (typeof s === 'string') throw new Error(s);
  return s;
};
const fresh = () => `t${randomBytes(6).toString('hex')}`;
storeContract('swift', () => openObjectStore(server().swiftUri(fresh()), { ...process.env, ...server().env }), skip);
storeContract('s3', () => openObjectStore(server().s3Uri(fresh()), { ...process.env, ...server().env }), skip);
