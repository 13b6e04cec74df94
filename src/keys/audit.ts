/**
 * The append-only audit log of key operations, chained by SHA-256 so that editing,
 * deleting or reordering a row breaks verification from that row on.
 *
 * hash(n) = sha256( hash(n-1) || "\n" || canonical JSON of row n's fields ), with
 * hash(0) = 64 zeros. Entries never carry key bytes: only who, what, which id,
 * outcome, when, and a short non-secret detail.
 */
import { createHash } from 'node:crypto';

export type AuditOutcome = 'allowed' | 'denied' | 'failed';

/** One event before it is chained. */
export interface AuditEvent {
  time: string;
  user: string;
  project: string;
  roles: string[];
  backend: string;
  operation: string;
  objectId?: string;
  outcome: AuditOutcome;
  /** Error code for denied/failed events (FORBIDDEN, KEY_NOT_FOUND, IN_USE, ...). */
  code?: string;
  /** Non-secret extra facts (clone source, consumer, ACL user, list filter). */
  detail?: string;
}

/** A chained, stored entry. */
export interface AuditEntry extends AuditEvent {
  seq: number;
  prevHash: string;
  hash: string;
}

export const GENESIS_HASH = '0'.repeat(64);

function canonical(seq: number, e: AuditEvent): string {
  return JSON.stringify([
    seq,
    e.time,
    e.user,
    e.project,
    e.roles,
    e.backend,
    e.operation,
    e.objectId ?? null,
    e.outcome,
    e.code ?? null,
    e.detail ?? null,
  ]);
}

/** The chain hash of an entry with sequence number `seq` following `prevHash`. */
export function chainHash(prevHash: string, seq: number, event: AuditEvent): string {
  return createHash('sha256').update(prevHash).update('\n').update(canonical(seq, event)).digest('hex');
}

export interface AuditVerification {
  ok: boolean;
  entries: number;
  /** Hash of the last entry: record it elsewhere to detect a rewritten chain later. */
  head: string;
  /** Sequence number of the first entry that does not verify. */
  firstBad?: number;
  reason?: string;
}

/**
 * Verifies a full chain in sequence order.
 *
 * @example
 * const v = verifyAuditChain(entries); if (!v.ok) console.error(`audit broken at #${v.firstBad}`);
 */
export function verifyAuditChain(entries: readonly AuditEntry[]): AuditVerification {
  let prev = GENESIS_HASH;
  let expectedSeq = entries.length > 0 ? entries[0]!.seq : 1;
  if (entries.length > 0 && entries[0]!.seq !== 1) {
    return { ok: false, entries: entries.length, head: prev, firstBad: entries[0]!.seq, reason: 'chain does not start at entry 1' };
  }
  for (const e of entries) {
    if (e.seq !== expectedSeq) return { ok: false, entries: entries.length, head: prev, firstBad: e.seq, reason: `expected entry ${expectedSeq}, found ${e.seq}` };
    if (e.prevHash !== prev) return { ok: false, entries: entries.length, head: prev, firstBad: e.seq, reason: 'previous-hash link broken' };
    if (chainHash(prev, e.seq, e) !== e.hash) return { ok: false, entries: entries.length, head: prev, firstBad: e.seq, reason: 'entry content does not match its hash' };
    prev = e.hash;
    expectedSeq++;
  }
  return { ok: true, entries: entries.length, head: prev };
}

/** Backends that keep an audit log expose it through this additional interface. */
export interface AuditableKeyManager {
  /** Entries of the caller's project (role admin). With `all`, every project (keystore operator view). */
  readAudit(caller: import('./key-manager.js').CallerIdentity, options?: { all?: boolean }): Promise<AuditEntry[]>;
  /** Verifies the whole chain (role admin). */
  verifyAudit(caller: import('./key-manager.js').CallerIdentity): Promise<AuditVerification>;
}

export function isAuditable(km: object): km is AuditableKeyManager {
  return typeof (km as Partial<AuditableKeyManager>).readAudit === 'function' && typeof (km as Partial<AuditableKeyManager>).verifyAudit === 'function';
}
