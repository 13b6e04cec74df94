import { UnsupportedError } from '../../errors.js';
import type { ObjectStore } from '../object-store.js';

export class S3ObjectStore {
  static fromEnvironment(_endpoint: string, _bucket: string, uri: string, _env: NodeJS.ProcessEnv): ObjectStore {
    throw new UnsupportedError(`${uri}: the S3 store is not built yet.`);
  }
}
