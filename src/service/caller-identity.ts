/**
 * Who calls the API: a Bearer token looked up in the tokens file, or (opt-in, behind a proxy
 * that authenticates, e.g. keystonemiddleware's auth_token) Keystone's identity headers
 * `X-Identity-Status: Confirmed`, `X-User-Name`/`X-User-Id`, `X-Project-Id`/`X-Project-Name`,
 * `X-Roles` (comma-separated), as keystonemiddleware sets them, and its `X-Auth-Token` (the
 * caller's token, forwarded to Barbican and Glance; never stored).
 *
 * Tokens file: `{"TOKEN": {"user": "cinder", "project": "p1", "roles": ["creator"]}, ...}`.
 */
import { readFileSync } from 'node:fs';
import { timingSafeEqual, createHash } from 'node:crypto';
import { InvalidArgumentError, UnauthenticatedError } from '../errors.js';
import type { CallerIdentity } from '../keys/key-manager.js';
import { ForwardedToken } from '../keys/forwarded-token.js';

export interface IdentitySource {
  tokens: Map<string, CallerIdentity>;
  trustProxyIdentity: boolean;
}

export function loadTokensFile(path: string): Map<string, CallerIdentity> {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`--tokens ${path}: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new InvalidArgumentError(`--tokens ${path}: expected {"TOKEN": {user, project, roles}}.`);
  const out = new Map<string, CallerIdentity>();
  for (const [token, v] of Object.entries(data as Record<string, unknown>)) {
    const o = v as Partial<CallerIdentity> | null;
    if (token.length < 8) throw new InvalidArgumentError(`--tokens ${path}: tokens must have at least 8 characters.`);
    if (!o || typeof o.user !== 'string' || !o.user || typeof o.project !== 'string' || !o.project || !Array.isArray(o.roles) || !o.roles.every((r) => typeof r === 'string')) {
      throw new InvalidArgumentError(`--tokens ${path}: the entry of a token needs user, project (non-empty strings) and roles (strings).`);
    }
    out.set(hashToken(token), { user: o.user, project: o.project, roles: [...o.roles] });
  }
  return out;
}

/** Tokens are kept and compared as SHA-256 digests (constant-time, no token in memory dumps of the map). */
function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** The tokens map's digests as buffers, made once per map rather than on every request. */
const digestBuffers = new WeakMap<Map<string, CallerIdentity>, Array<[Buffer, CallerIdentity]>>();
function knownDigests(tokens: Map<string, CallerIdentity>): Array<[Buffer, CallerIdentity]> {
  let list = digestBuffers.get(tokens);
  if (!list || list.length !== tokens.size) {
    list = [...tokens].map(([digest, who]) => [Buffer.from(digest), who]);
    digestBuffers.set(tokens, list);
  }
  return list;
}

type Headers = Record<string, string | string[] | undefined>;
const header = (h: Headers, name: string): string | undefined => {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
};

/** The caller of a request; UnauthenticatedError without valid credentials. */
export function identify(source: IdentitySource, headers: Headers): CallerIdentity {
  const auth = header(headers, 'authorization');
  if (auth !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) throw new UnauthenticatedError('Authorization must be "Bearer TOKEN".');
    const digest = Buffer.from(hashToken(m[1]!));
    for (const [known, who] of knownDigests(source.tokens)) {
      if (timingSafeEqual(known, digest)) return { ...who, roles: [...who.roles] };
    }
    throw new UnauthenticatedError('Unknown token.');
  }
  if (source.trustProxyIdentity && header(headers, 'x-identity-status')?.toLowerCase() === 'confirmed') {
    const user = header(headers, 'x-user-name') ?? header(headers, 'x-user-id');
    const project = header(headers, 'x-project-id') ?? header(headers, 'x-project-name');
    const roles = (header(headers, 'x-roles') ?? '').split(',').map((r) => r.trim()).filter(Boolean);
    if (!user || !project) throw new UnauthenticatedError('The identity headers name no user or project.');
    // keystonemiddleware passes the caller's token on: it goes to Barbican and Glance as the
    // caller's (memory only; a Bearer token of the tokens file is the service's own, never sent).
    const token = header(headers, 'x-auth-token');
    return { user, project, roles, ...(token !== undefined && token !== '' ? { token: new ForwardedToken(token) } : {}) };
  }
  throw new UnauthenticatedError();
}

/** Service-level rule: changing anything needs admin, member or creator (the key manager decides the rest). */
export function mayWrite(caller: CallerIdentity): boolean {
  return caller.roles.some((r) => r === 'admin' || r === 'member' || r === 'creator');
}
