/**
 * brickcrypt's own access policy, shared by the local and memory backends.
 *
 * Permissions are the union over the caller's recognised roles; unknown roles grant
 * nothing. Objects of another project never exist for the caller: the decision is
 * `hidden`, reported as KeyNotFoundError, exactly as for an id that does not exist.
 *
 * | operation            | admin | member | creator            | reader           |
 * |----------------------|-------|--------|--------------------|------------------|
 * | createKey/KeyPair/store | yes | yes   | yes                | no               |
 * | get (bytes)          | yes   | yes    | never (even own)   | if in read ACL   |
 * | getMetadata          | yes   | yes    | yes                | if in read ACL   |
 * | list                 | all   | all    | all                | only ACL-granted |
 * | clone                | yes   | yes    | yes                | no               |
 * | delete               | yes   | yes    | yes                | no               |
 * | add/removeConsumer   | yes   | yes    | yes                | if in read ACL   |
 * | grantRead/revokeRead | yes   | if owner user | if owner user | no             |
 * | audit                | yes   | no     | no                 | no               |
 *
 * (all within the caller's project only)
 */
import type { CallerIdentity, Role } from './key-manager.js';

export type Operation =
  | 'createKey'
  | 'createKeyPair'
  | 'store'
  | 'get'
  | 'getMetadata'
  | 'clone'
  | 'delete'
  | 'list'
  | 'addConsumer'
  | 'removeConsumer'
  | 'grantRead'
  | 'revokeRead'
  | 'audit'
  | 'rotateKek';

export const KNOWN_ROLES: readonly Role[] = ['admin', 'member', 'creator', 'reader'];

/** What the policy needs to know about an object. */
export interface PolicySubject {
  owner: { user: string; project: string };
  readers: readonly string[];
}

export type Decision = { allowed: true } | { allowed: false; hidden: boolean; reason: string };

const CREATE: readonly Role[] = ['admin', 'member', 'creator'];
const MANAGE: readonly Role[] = ['admin', 'member', 'creator'];

/**
 * Decides one operation; `subject` is the object for per-object operations.
 *
 * @example
 * decide({ user: 'cinder', project: 'p', roles: ['creator'] }, 'get', obj) // { allowed: false, ... }
 */
export function decide(caller: CallerIdentity, op: Operation, subject?: PolicySubject): Decision {
  const roles = new Set(caller.roles.filter((r): r is Role => (KNOWN_ROLES as readonly string[]).includes(r)));
  const has = (list: readonly Role[]) => list.some((r) => roles.has(r));
  if (subject && subject.owner.project !== caller.project) {
    return { allowed: false, hidden: true, reason: 'object belongs to another project' };
  }
  const granted = subject !== undefined && roles.has('reader') && subject.readers.includes(caller.user);
  const deny = (reason: string): Decision => ({ allowed: false, hidden: false, reason });
  switch (op) {
    case 'createKey':
    case 'createKeyPair':
    case 'store':
      return has(CREATE) ? { allowed: true } : deny(`${op} needs role admin, member or creator`);
    case 'get':
      if (has(['admin', 'member']) || granted) return { allowed: true };
      return deny(roles.has('creator') ? 'role creator may never read existing key bytes' : 'not granted read on this object');
    case 'getMetadata':
    case 'addConsumer':
    case 'removeConsumer':
      return has(MANAGE) || granted ? { allowed: true } : deny(`${op} needs role admin, member or creator, or a read grant`);
    case 'list':
      return roles.size > 0 ? { allowed: true } : deny('list needs a recognised role');
    case 'clone':
    case 'delete':
      return has(MANAGE) ? { allowed: true } : deny(`${op} needs role admin, member or creator`);
    case 'grantRead':
    case 'revokeRead':
      if (roles.has('admin')) return { allowed: true };
      if (has(['member', 'creator']) && subject !== undefined && subject.owner.user === caller.user) return { allowed: true };
      return deny(`${op} needs role admin, or the owning user with role member or creator`);
    case 'audit':
    case 'rotateKek':
      return roles.has('admin') ? { allowed: true } : deny(`${op} needs role admin`);
  }
}

/** Whether `list` shows this object to the caller (same project, and ACL-granted for a reader-only caller). */
export function visibleInList(caller: CallerIdentity, subject: PolicySubject): boolean {
  if (subject.owner.project !== caller.project) return false;
  return decide(caller, 'getMetadata', subject).allowed;
}
