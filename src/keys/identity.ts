/**
 * Loading the caller identity for key-manager calls: explicit user/project/roles, or a
 * profile file `{"user": "...", "project": "...", "roles": ["..."]}` named by
 * `--profile` or `$BRICKCRYPT_PROFILE`. Explicit values override the profile's.
 * Roles default to `admin` when no profile is used: the local operator is `admin` of project `default` under the OS user
 * name (a local keystore's owner can read the file anyway); services should always run
 * with a profile that grants only what they need (e.g. `creator` for a volume service).
 */
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { CallerIdentity } from './key-manager.js';

export interface IdentityOptions {
  user?: string;
  project?: string;
  /** Roles as a list or a comma-separated string. */
  roles?: string | readonly string[];
  /** Profile file path; default `$BRICKCRYPT_PROFILE`. */
  profile?: string;
  env?: NodeJS.ProcessEnv;
}

export const DEFAULT_PROJECT = 'default';

function parseRoles(roles: string | readonly string[]): string[] {
  const list = typeof roles === 'string' ? roles.split(',') : [...roles];
  return list.map((r) => String(r).trim()).filter((r) => r !== '');
}

/** Reads and validates a profile file. */
export function readProfile(path: string): Partial<CallerIdentity> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Profile ${path} does not exist.`);
    throw new InvalidArgumentError(`Cannot read profile ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`Profile ${path} is not JSON: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new InvalidArgumentError(`Profile ${path} must be a JSON object {user, project, roles}.`);
  const o = data as Record<string, unknown>;
  const out: Partial<CallerIdentity> = {};
  for (const k of ['user', 'project'] as const) {
    if (o[k] !== undefined) {
      if (typeof o[k] !== 'string' || o[k] === '') throw new InvalidArgumentError(`Profile ${path}: "${k}" must be a non-empty string.`);
      out[k] = o[k] as string;
    }
  }
  if (o.roles !== undefined) {
    if (!Array.isArray(o.roles) || !o.roles.every((r) => typeof r === 'string')) throw new InvalidArgumentError(`Profile ${path}: "roles" must be an array of strings.`);
    out.roles = parseRoles(o.roles as string[]);
  }
  return out;
}

/**
 * Builds the caller identity.
 *
 * @example
 * loadCallerIdentity({ profile: '/etc/brickcrypt/cinder.json' })
 * loadCallerIdentity({ user: 'nova', project: 'p1', roles: 'reader' })
 */
export function loadCallerIdentity(options: IdentityOptions = {}): CallerIdentity {
  const env = options.env ?? process.env;
  const profilePath = options.profile ?? (env.BRICKCRYPT_PROFILE || undefined);
  const profile = profilePath ? readProfile(profilePath) : {};
  const user = options.user ?? profile.user ?? safeUserName();
  const project = options.project ?? profile.project ?? DEFAULT_PROJECT;
  const roles = options.roles !== undefined ? parseRoles(options.roles) : (profile.roles ?? (profilePath ? [] : ['admin']));
  if (!user) throw new InvalidArgumentError('The caller identity needs a user (--user or a profile).');
  if (!project) throw new InvalidArgumentError('The caller identity needs a project (--project or a profile).');
  return { user, project, roles };
}

function safeUserName(): string {
  try {
    return userInfo().username;
  } catch {
    return 'local';
  }
}
