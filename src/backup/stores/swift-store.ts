/**
 * `swift+http(s)://HOST:PORT/CONTAINER`: OpenStack Swift's object API (PUT/GET/HEAD/DELETE object,
 * GET container listing with `prefix`/`marker`), authenticated as python-swiftclient does:
 *
 * | environment                                                     | auth                         |
 * |-----------------------------------------------------------------|------------------------------|
 * | `ST_AUTH`, `ST_USER`, `ST_KEY`                                  | v1 (tempauth, swauth)        |
 * | `OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`  | Keystone v3 password         |
 * |   (+ `OS_USER_DOMAIN_NAME`, `OS_PROJECT_DOMAIN_NAME`, `OS_REGION_NAME`) |                      |
 * | `OS_STORAGE_URL` + `OS_AUTH_TOKEN`                              | a token the caller already has |
 *
 * Without ST_AUTH, v1 auth goes to `http(s)://HOST:PORT/auth/v1.0`. The storage URL is the one the
 * auth answer names. A 401 re-authenticates once (tokens expire); transient errors are retried.
 */
import { InvalidArgumentError, NotFoundError, ObjectStoreError } from '../../errors.js';
import { checkObjectName, type ObjectStore } from '../object-store.js';
import { withStoreRetry } from './http-retry.js';

type Auth = () => Promise<{ storageUrl: string; token: string }>;

function v1Auth(url: string, user: string, key: string): Auth {
  return async () => {
    const r = await withStoreRetry(`swift auth ${url}`, async (signal) => {
      const res = await fetch(url, { headers: { 'X-Auth-User': user, 'X-Auth-Key': key }, signal });
      await res.arrayBuffer();
      if (res.status >= 500) throw new ObjectStoreError(`swift auth ${url}: HTTP ${res.status}`, { status: res.status });
      return res;
    });
    const storageUrl = r.headers.get('x-storage-url');
    const token = r.headers.get('x-auth-token');
    if (!r.ok || !storageUrl || !token) throw new ObjectStoreError(`swift auth ${url} as ${user}: HTTP ${r.status} (check ST_USER/ST_KEY).`, { status: r.status });
    return { storageUrl, token };
  };
}

interface Catalog {
  token?: { catalog?: Array<{ type: string; endpoints: Array<{ interface: string; region?: string; region_id?: string; url: string }> }> };
}

function keystoneAuth(env: NodeJS.ProcessEnv): Auth {
  const base = env.OS_AUTH_URL!.replace(/\/+$/, '');
  const url = `${/\/v3$/.test(base) ? base : `${base}/v3`}/auth/tokens`;
  const body = {
    auth: {
      identity: { methods: ['password'], password: { user: { name: env.OS_USERNAME, domain: { name: env.OS_USER_DOMAIN_NAME ?? 'Default' }, password: env.OS_PASSWORD } } },
      scope: { project: { name: env.OS_PROJECT_NAME ?? env.OS_TENANT_NAME, domain: { name: env.OS_PROJECT_DOMAIN_NAME ?? 'Default' } } },
    },
  };
  return async () => {
    const { res, json } = await withStoreRetry(`keystone ${url}`, async (signal) => {
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), signal });
      const text = await res.text();
      if (res.status >= 500) throw new ObjectStoreError(`keystone ${url}: HTTP ${res.status}`, { status: res.status });
      return { res, json: (res.ok ? JSON.parse(text) : {}) as Catalog };
    });
    const token = res.headers.get('x-subject-token');
    if (!res.ok || !token) throw new ObjectStoreError(`keystone ${url} as ${String(env.OS_USERNAME)}: HTTP ${res.status}.`, { status: res.status });
    const service = json.token?.catalog?.find((s) => s.type === 'object-store');
    const ep = service?.endpoints.find((e) => e.interface === (env.OS_INTERFACE ?? 'public') && (!env.OS_REGION_NAME || e.region === env.OS_REGION_NAME || e.region_id === env.OS_REGION_NAME));
    if (!ep) throw new ObjectStoreError(`keystone ${url}: the catalog has no object-store endpoint.`);
    return { storageUrl: ep.url, token };
  };
}

export class SwiftObjectStore implements ObjectStore {
  readonly parallelism = 8;
  #session: { storageUrl: string; token: string } | undefined;
  #containerReady = false;

  constructor(
    readonly uri: string,
    readonly container: string,
    private readonly auth: Auth,
  ) {}

  static fromEnvironment(endpoint: string, container: string, uri: string, env: NodeJS.ProcessEnv): SwiftObjectStore {
    let auth: Auth;
    if (env.OS_STORAGE_URL && env.OS_AUTH_TOKEN) {
      const session = { storageUrl: env.OS_STORAGE_URL, token: env.OS_AUTH_TOKEN };
      auth = async () => session;
    } else if (env.ST_USER && env.ST_KEY) {
      auth = v1Auth(env.ST_AUTH || `${endpoint}/auth/v1.0`, env.ST_USER, env.ST_KEY);
    } else if (env.OS_AUTH_URL && env.OS_USERNAME && env.OS_PASSWORD) {
      auth = keystoneAuth(env);
    } else {
      throw new InvalidArgumentError(`${uri}: Swift credentials are missing: set ST_AUTH/ST_USER/ST_KEY (tempauth) or OS_AUTH_URL/OS_USERNAME/OS_PASSWORD/OS_PROJECT_NAME (Keystone).`);
    }
    return new SwiftObjectStore(uri, container, auth);
  }

  async #request(method: string, path: string, shared?: Uint8Array, query = ''): Promise<{ status: number; body: Uint8Array }> {
    // fetch refuses bodies in shared memory (where the sealing workers leave chunks): copy those.
    const body = shared && shared.buffer instanceof SharedArrayBuffer ? Buffer.from(shared) : shared;
    const what = `${this.uri} ${method} ${path || '(container)'}`;
    for (let reauth = 0; ; reauth++) {
      this.#session ??= await this.auth();
      const { storageUrl, token } = this.#session;
      const url = `${storageUrl.replace(/\/+$/, '')}/${encodeURIComponent(this.container)}${path ? `/${path.split('/').map(encodeURIComponent).join('/')}` : ''}${query}`;
      const r = await withStoreRetry(what, async (signal) => {
        const res = await fetch(url, { method, headers: { 'X-Auth-Token': token }, ...(body ? { body: body as unknown as BodyInit } : {}), signal });
        const bytes = new Uint8Array(await res.arrayBuffer());
        if (res.status >= 500 || res.status === 408 || res.status === 429) throw new ObjectStoreError(`${what}: HTTP ${res.status}`, { status: res.status });
        return { status: res.status, body: bytes };
      });
      if (r.status === 401 && reauth === 0) {
        this.#session = undefined;
        continue;
      }
      return r;
    }
  }

  async #ensureContainer(): Promise<void> {
    if (this.#containerReady) return;
    const r = await this.#request('PUT', '');
    if (r.status !== 201 && r.status !== 202 && r.status !== 204) throw new ObjectStoreError(`${this.uri}: creating the container answered HTTP ${r.status}.`, { status: r.status });
    this.#containerReady = true;
  }

  async put(name: string, data: Uint8Array): Promise<void> {
    checkObjectName(name);
    await this.#ensureContainer();
    const r = await this.#request('PUT', name, data);
    if (r.status !== 201) throw new ObjectStoreError(`${this.uri} PUT ${name}: HTTP ${r.status}.`, { status: r.status });
  }

  async get(name: string): Promise<Uint8Array> {
    checkObjectName(name);
    const r = await this.#request('GET', name);
    if (r.status === 404) throw new NotFoundError(`${this.uri} ${name}: no such object.`);
    if (r.status !== 200) throw new ObjectStoreError(`${this.uri} GET ${name}: HTTP ${r.status}.`, { status: r.status });
    return r.body;
  }

  async exists(name: string): Promise<boolean> {
    checkObjectName(name);
    const r = await this.#request('HEAD', name);
    if (r.status === 404) return false;
    if (r.status >= 200 && r.status < 300) return true;
    throw new ObjectStoreError(`${this.uri} HEAD ${name}: HTTP ${r.status}.`, { status: r.status });
  }

  async delete(name: string): Promise<void> {
    checkObjectName(name);
    const r = await this.#request('DELETE', name);
    if (r.status !== 204 && r.status !== 200 && r.status !== 404) throw new ObjectStoreError(`${this.uri} DELETE ${name}: HTTP ${r.status}.`, { status: r.status });
  }

  async list(prefix: string): Promise<string[]> {
    const out: string[] = [];
    let marker = '';
    for (;;) {
      const q = `?format=json&limit=10000&prefix=${encodeURIComponent(prefix)}${marker ? `&marker=${encodeURIComponent(marker)}` : ''}`;
      const r = await this.#request('GET', '', undefined, q);
      if (r.status === 404) return out; // no container yet: no objects
      if (r.status === 204) return out;
      if (r.status !== 200) throw new ObjectStoreError(`${this.uri} list ${prefix}: HTTP ${r.status}.`, { status: r.status });
      const page = JSON.parse(Buffer.from(r.body).toString('utf8')) as Array<{ name: string }>;
      for (const o of page) out.push(o.name);
      if (page.length < 10000) return out;
      marker = page[page.length - 1]!.name;
    }
  }

  async close(): Promise<void> {
    this.#session = undefined;
  }
}

