/**
 * `s3://HOST:PORT/BUCKET` (`s3+https://` for TLS): the S3 API through the AWS SDK for JavaScript v3
 * (@aws-sdk/client-s3), path-style addressing, so any S3 implementation works (Swift's s3api, Ceph
 * RGW, MinIO). Credentials come from the SDK's usual environment (`AWS_ACCESS_KEY_ID`,
 * `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), the region from `AWS_REGION` (default
 * us-east-1). The SDK retries transient errors with backoff (`maxAttempts`); an S3 PUT replaces an
 * object whole, so `put` is atomic.
 */
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { InvalidArgumentError, NotFoundError, ObjectStoreError } from '../../errors.js';
import { checkObjectName, type ObjectStore } from '../object-store.js';

interface SdkError {
  name?: string;
  $metadata?: { httpStatusCode?: number };
  message?: string;
}

export class S3ObjectStore implements ObjectStore {
  readonly parallelism = 8;
  #bucketReady = false;

  private constructor(
    readonly uri: string,
    readonly bucket: string,
    private readonly client: S3Client,
  ) {}

  static fromEnvironment(endpoint: string, bucket: string, uri: string, env: NodeJS.ProcessEnv): S3ObjectStore {
    if (!env.AWS_ACCESS_KEY_ID || !env.AWS_SECRET_ACCESS_KEY) {
      throw new InvalidArgumentError(`${uri}: S3 credentials are missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.`);
    }
    const client = new S3Client({
      endpoint,
      region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1',
      forcePathStyle: true,
      credentials: {
        accessKeyId: env.AWS_ACCESS_KEY_ID,
        secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
        ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
      },
      maxAttempts: 5,
      // Plain Content-MD5-free PUTs: older S3 implementations (Swift 2.30's s3api) refuse the
      // SDK's default CRC32 trailer checksums. Integrity is ours anyway (AES-GCM per object).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    return new S3ObjectStore(uri, bucket, client);
  }

  #error(what: string, err: unknown): Error {
    const e = err as SdkError;
    const status = e?.$metadata?.httpStatusCode;
    if (e?.name === 'NoSuchKey' || e?.name === 'NotFound' || status === 404) return new NotFoundError(`${this.uri} ${what}: no such object.`);
    return new ObjectStoreError(`${this.uri} ${what}: ${e?.name ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${e?.message ?? String(err)}`, { cause: err, ...(status !== undefined ? { status } : {}) });
  }

  async #ensureBucket(): Promise<void> {
    if (this.#bucketReady) return;
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      const name = (err as SdkError)?.name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw this.#error('create bucket', err);
    }
    this.#bucketReady = true;
  }

  async put(name: string, data: Uint8Array): Promise<void> {
    checkObjectName(name);
    await this.#ensureBucket();
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: name, Body: data.buffer instanceof SharedArrayBuffer ? Buffer.from(data) : data, ContentLength: data.length }));
    } catch (err) {
      throw this.#error(`PUT ${name}`, err);
    }
  }

  async get(name: string): Promise<Uint8Array> {
    checkObjectName(name);
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: name }));
      return await r.Body!.transformToByteArray();
    } catch (err) {
      throw this.#error(`GET ${name}`, err);
    }
  }

  async exists(name: string): Promise<boolean> {
    checkObjectName(name);
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: name }));
      return true;
    } catch (err) {
      const e = this.#error(`HEAD ${name}`, err);
      if (e instanceof NotFoundError || (err as SdkError)?.name === 'NoSuchBucket') return false;
      throw e;
    }
  }

  async delete(name: string): Promise<void> {
    checkObjectName(name);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: name }));
    } catch (err) {
      const e = this.#error(`DELETE ${name}`, err);
      if (!(e instanceof NotFoundError)) throw e;
    }
  }

  async list(prefix: string): Promise<string[]> {
    const out: string[] = [];
    let token: string | undefined;
    try {
      do {
        const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
        for (const o of r.Contents ?? []) if (o.Key) out.push(o.Key);
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      if ((err as SdkError)?.name === 'NoSuchBucket') return out;
      throw this.#error(`list ${prefix}`, err);
    }
    return out;
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
