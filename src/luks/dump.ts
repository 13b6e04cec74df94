/**
 * Header dumps in the layout of `cryptsetup luksDump` (text) and as JSON. They show public
 * header fields only (salts and digests, as cryptsetup does); a volume key never reaches them.
 */
import { LUKS1_KEY_ENABLED, type Luks1Header } from '../formats/luks1/header.js';
import type { Luks2BinaryHeader } from '../formats/luks2/binary-header.js';
import type { Luks2Metadata } from '../formats/luks2/metadata.js';
import { decodeReencryptState, newDataOffset, reencryptProgress } from '../formats/luks2/reencrypt-state.js';

export type DumpInput =
  | { version: 1; hdr: Luks1Header; readOnlyReason: undefined; unbound: number[] }
  | { version: 2; bin: Luks2BinaryHeader; metadata: Luks2Metadata; readOnlyReason: string | undefined; unbound: number[]; dataDeviceSize?: number };

/** A recorded reencryption as dump shows it (undefined when none, or when its state does not decode). */
export interface ReencryptionSummary {
  mode: string;
  direction: string;
  resilience: string;
  requirement: string;
  /** A zone was being rewritten when it stopped: the next run recovers it first. */
  interrupted: boolean;
  /** Bytes finished and total; undefined without the data device. */
  done?: number;
  total?: number;
}

export function reencryptionSummary(m: Luks2Metadata, dataDeviceSize: number | undefined): ReencryptionSummary | undefined {
  try {
    const s = decodeReencryptState(m);
    if (!s) return undefined;
    const out: ReencryptionSummary = { mode: s.keyslot.mode, direction: s.keyslot.direction, resilience: s.keyslot.resilience, requirement: s.requirement, interrupted: s.hotId !== undefined };
    const offset = newDataOffset(m, s);
    if (dataDeviceSize !== undefined && dataDeviceSize > offset) {
      const p = reencryptProgress(m, s, dataDeviceSize - offset);
      out.done = p.done;
      out.total = p.total;
    }
    return out;
  } catch {
    return undefined;
  }
}

function hexLines(bytes: Uint8Array, indent: string): string {
  const lines: string[] = [];
  for (let i = 0; i < bytes.length; i += 16) {
    lines.push(Array.from(bytes.subarray(i, i + 16), (b) => b.toString(16).padStart(2, '0') + ' ').join(''));
  }
  return lines.join(`\n${indent}`);
}

function b64hex(value: unknown, indent: string): string {
  return typeof value === 'string' ? hexLines(new Uint8Array(Buffer.from(value, 'base64')), indent) : '(invalid)';
}

export function dumpText(d: DumpInput): string {
  const out: string[] = [];
  if (d.version === 1) {
    const h = d.hdr;
    out.push('LUKS header information', '');
    out.push(`Version:       \t${h.version}`);
    out.push(`Cipher name:   \t${h.cipherName}`);
    out.push(`Cipher mode:   \t${h.cipherMode}`);
    out.push(`Hash spec:     \t${h.hashSpec}`);
    out.push(`Payload offset:\t${h.payloadOffset}`);
    out.push(`MK bits:       \t${h.keyBytes * 8}`);
    out.push(`MK digest:     \t${hexLines(h.mkDigest, '               \t')}`);
    out.push(`MK salt:       \t${hexLines(h.mkDigestSalt, '               \t')}`);
    out.push(`MK iterations: \t${h.mkDigestIterations}`);
    out.push(`UUID:          \t${h.uuid}`, '');
    h.keyslots.forEach((k, i) => {
      if (k.state !== LUKS1_KEY_ENABLED) {
        out.push(`Key Slot ${i}: DISABLED`);
        return;
      }
      out.push(`Key Slot ${i}: ENABLED`);
      out.push(`\tIterations:         \t${k.iterations}`);
      out.push(`\tSalt:               \t${hexLines(k.salt, '\t                      \t')}`);
      out.push(`\tKey material offset:\t${k.keyMaterialOffset}`);
      out.push(`\tAF stripes:            \t${k.stripes}`);
    });
    return out.join('\n') + '\n';
  }
  const { bin, metadata: m } = d;
  out.push('LUKS header information');
  out.push(`Version:       \t${bin.version}`);
  out.push(`Epoch:         \t${bin.seqid}`);
  out.push(`Metadata area: \t${bin.hdrSize} [bytes]`);
  out.push(`Keyslots area: \t${m.config.keyslots_size} [bytes]`);
  out.push(`UUID:          \t${bin.uuid}`);
  out.push(`Label:         \t${bin.label || '(no label)'}`);
  out.push(`Subsystem:     \t${bin.subsystem || '(no subsystem)'}`);
  out.push(`Flags:       \t${m.config.flags?.length ? m.config.flags.join(' ') : '(no flags)'}`);
  const req = m.config.requirements?.mandatory;
  if (req && req.length > 0) out.push(`Requirements:\t${req.join(' ')}`);
  if (d.readOnlyReason) out.push(`Read-only:     \t${d.readOnlyReason}`);
  const re = reencryptionSummary(m, d.dataDeviceSize);
  if (re) {
    out.push(`Reencryption:  \t${re.mode}, ${re.direction}, resilience ${re.resilience}${re.interrupted ? ' (interrupted inside a hot zone)' : ''}`);
    if (re.done !== undefined && re.total !== undefined) {
      const pct = re.total > 0 ? ((100 * re.done) / re.total).toFixed(1) : '100.0';
      out.push(`Progress:      \t${re.done} of ${re.total} bytes (${pct}%); finish with: brickcrypt reencrypt --resume-only`);
    }
  }
  out.push('', 'Data segments:');
  for (const [id, s] of Object.entries(m.segments)) {
    out.push(`  ${id}: ${s.type}`);
    out.push(`\toffset: ${s.offset} [bytes]`);
    out.push(`\tlength: ${s.size === 'dynamic' ? '(whole device)' : `${s.size} [bytes]`}`);
    if (s.encryption) out.push(`\tcipher: ${s.encryption}`);
    if (s.sector_size) out.push(`\tsector: ${s.sector_size} [bytes]`);
    if (s.iv_tweak && s.iv_tweak !== '0') out.push(`\tIV tweak: ${s.iv_tweak}`);
    if (s.flags?.length) out.push(`\tflags : ${s.flags.join(' ')}`);
  }
  out.push('', 'Keyslots:');
  for (const [id, k] of Object.entries(m.keyslots)) {
    out.push(`  ${id}: ${k.type}${d.unbound.includes(Number(id)) ? ' (unbound)' : ''}`);
    out.push(`\tKey:        ${k.key_size * 8} bits`);
    const pr = k.priority === 0 ? 'ignored' : k.priority === 2 ? 'preferred' : 'normal';
    out.push(`\tPriority:   ${pr}`);
    if (k.area?.encryption) out.push(`\tCipher:     ${k.area.encryption}`);
    if (typeof k.area?.key_size === 'number') out.push(`\tCipher key: ${k.area.key_size * 8} bits`);
    const kdf = k.kdf;
    if (kdf) {
      out.push(`\tPBKDF:      ${kdf.type}`);
      if (kdf.type === 'pbkdf2') {
        out.push(`\tHash:       ${kdf.hash}`);
        out.push(`\tIterations: ${kdf.iterations}`);
      } else {
        out.push(`\tTime cost:  ${kdf.time}`);
        out.push(`\tMemory:     ${kdf.memory}`);
        out.push(`\tThreads:    ${kdf.cpus}`);
      }
      out.push(`\tSalt:       ${b64hex(kdf.salt, '\t            ')}`);
    }
    if (k.af) {
      out.push(`\tAF stripes: ${k.af.stripes}`);
      out.push(`\tAF hash:    ${k.af.hash}`);
    }
    out.push(`\tArea offset:${k.area?.offset} [bytes]`);
    out.push(`\tArea length:${k.area?.size} [bytes]`);
    const dig = Object.entries(m.digests).find(([, dd]) => dd.keyslots.includes(id));
    out.push(`\tDigest ID:  ${dig ? dig[0] : '(none)'}`);
  }
  out.push('Tokens:');
  for (const [id, t] of Object.entries(m.tokens)) {
    out.push(`  ${id}: ${t.type}`);
    out.push(`\tKeyslot:    ${t.keyslots.join(', ')}`);
  }
  out.push('Digests:');
  for (const [id, g] of Object.entries(m.digests)) {
    out.push(`  ${id}: ${g.type}`);
    if (g.hash) out.push(`\tHash:       ${g.hash}`);
    if (g.iterations !== undefined) out.push(`\tIterations: ${g.iterations}`);
    if (g.salt) out.push(`\tSalt:       ${b64hex(g.salt, '\t            ')}`);
    if (g.digest) out.push(`\tDigest:     ${b64hex(g.digest, '\t            ')}`);
  }
  return out.join('\n') + '\n';
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export function dumpJson(d: DumpInput): Record<string, unknown> {
  if (d.version === 1) {
    const h = d.hdr;
    return {
      version: 1,
      uuid: h.uuid,
      cipherName: h.cipherName,
      cipherMode: h.cipherMode,
      hashSpec: h.hashSpec,
      payloadOffset: h.payloadOffset,
      keyBytes: h.keyBytes,
      mkDigest: hex(h.mkDigest),
      mkDigestSalt: hex(h.mkDigestSalt),
      mkDigestIterations: h.mkDigestIterations,
      keyslots: h.keyslots.map((k, i) => ({
        id: i,
        enabled: k.state === LUKS1_KEY_ENABLED,
        iterations: k.iterations,
        salt: hex(k.salt),
        keyMaterialOffset: k.keyMaterialOffset,
        stripes: k.stripes,
      })),
    };
  }
  const out: Record<string, unknown> = {
    version: 2,
    uuid: d.bin.uuid,
    label: d.bin.label,
    subsystem: d.bin.subsystem,
    seqid: d.bin.seqid.toString(),
    hdrSize: d.bin.hdrSize,
    unboundKeyslots: d.unbound,
    metadata: d.metadata,
  };
  if (d.readOnlyReason !== undefined) out.readOnlyReason = d.readOnlyReason;
  const re = reencryptionSummary(d.metadata, d.dataDeviceSize);
  if (re) out.reencryption = re;
  return out;
}
