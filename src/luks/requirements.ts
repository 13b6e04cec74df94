/**
 * LUKS2 mandatory requirements (config.requirements.mandatory) and the fence they put around
 * the payload.
 *
 * cryptsetup 2.6 knows "offline-reencrypt" (LUKS2 legacy), "online-reencrypt" (v1),
 * "online-reencrypt-v2" and "online-reencrypt-v3" (lib/luks2/luks2_json_metadata.c,
 * requirements_flags[]); any other string is an unknown requirement and the device is not
 * activated. While an online reencryption is recorded, the data lies partly under the old and
 * partly under the new key, so reading it through one key returns garbage: only the
 * reencryption engine may touch it.
 */
import { ReencryptionInProgressError, UnsupportedRequirementError, type BrickcryptError } from '../errors.js';
import { mandatoryRequirements, type Luks2Metadata } from '../formats/luks2/metadata.js';

/** The version cryptsetup gives an online-reencrypt requirement string, or undefined when it is not one. */
export function onlineReencryptVersion(requirement: string): number | undefined {
  if (requirement === 'online-reencrypt') return 1;
  // cryptsetup's reencrypt_candidate_flag: "online-reencrypt-v" followed by digits only.
  const m = /^online-reencrypt-v([0-9]+)$/.exec(requirement);
  return m ? Number(m[1]) : undefined;
}

/** The online-reencrypt requirement the header lists (at most one is valid), if any. */
export function onlineReencryptRequirement(metadata: Luks2Metadata): { requirement: string; version: number } | undefined {
  for (const requirement of mandatoryRequirements(metadata)) {
    const version = onlineReencryptVersion(requirement);
    if (version !== undefined) return { requirement, version };
  }
  return undefined;
}

/**
 * Why the payload of a LUKS2 volume must not be read or written, or undefined when it may: a
 * recorded reencryption (`ReencryptionInProgressError`) or any other mandatory requirement
 * (`UnsupportedRequirementError`). Header-level work (dump, test-key, header backup) is not fenced.
 */
export function payloadFence(metadata: Luks2Metadata): BrickcryptError | undefined {
  const requirements = mandatoryRequirements(metadata);
  if (requirements.length === 0) return undefined;
  const reencrypt = onlineReencryptRequirement(metadata);
  if (reencrypt !== undefined) {
    const unknown = requirements.filter((r) => r !== reencrypt.requirement);
    const extra = unknown.length > 0 ? ` It also lists requirements brickcrypt does not implement: ${unknown.join(', ')}.` : '';
    return new ReencryptionInProgressError(
      `A reencryption of this volume is in progress (${reencrypt.requirement}); its data is under two keys until it finishes. ` +
        `Finish it with \`brickcrypt reencrypt --resume-only VOLUME\`.${extra}`,
    );
  }
  return new UnsupportedRequirementError(requirements);
}
