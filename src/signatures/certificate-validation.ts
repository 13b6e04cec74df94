/**
 * Checks on the certificate that signs an image, following OpenStack cursive
 * (certificate_utils.py) where it has a rule, and RFC 5280 where it does not:
 *
 * - the signing certificate must be inside its validity period at `now`;
 * - if it has a KeyUsage extension, digitalSignature must be set (RFC 5280 4.2.1.3;
 *   without the extension every usage is allowed);
 * - with trusted certificates given, a chain is built from the signing certificate up to a
 *   self-signed trusted certificate, as cursive does: every issuer must be one of the
 *   trusted certificates, match by name, have signed its child, be inside its validity
 *   period, be a CA (BasicConstraints cA=true), have keyCertSign when it has a KeyUsage
 *   extension, and allow the chain below it by its pathLenConstraint.
 *
 * Differences from cursive, on purpose: an issuer without a KeyUsage extension is accepted
 * (RFC 5280; `openssl req -x509` CA certificates often have none), and a problem with the
 * issuer found is reported precisely instead of as "not found".
 */
import { X509Certificate } from 'node:crypto';
import { CertificateError, InvalidObjectError } from '../errors.js';
import { decodeBasicConstraints, decodeCertificate, decodeKeyUsage, type DecodedCertificate } from './x509-der.js';

/** Longest chain followed; real PKIs stay far below. */
const MAX_CHAIN = 10;

/** A certificate parsed once, by OpenSSL (keys, signatures) and by `x509-der` (the rest). */
export interface ParsedCertificate {
  der: Uint8Array;
  x509: X509Certificate;
  decoded: DecodedCertificate;
  /** Where it came from, for messages (a key-manager id or a file name). */
  label: string;
}

/** Parses a DER certificate; malformed input is a `CertificateError('malformed')`. */
export function parseCertificate(der: Uint8Array, label: string): ParsedCertificate {
  // Own copy: `decoded` points into it, and the caller may wipe its buffer.
  const copy = new Uint8Array(der);
  let x509: X509Certificate;
  let decoded: DecodedCertificate;
  try {
    x509 = new X509Certificate(copy);
    decoded = decodeCertificate(copy);
  } catch (err) {
    throw new CertificateError('malformed', `Certificate ${label} is not a valid DER X.509 certificate: ${(err as Error).message}`, { cause: err });
  }
  return { der: copy, x509, decoded, label };
}

/**
 * Every certificate in a PEM text (a bundle may hold several).
 *
 * @example
 * const trusted = parsePemCertificates(readFileSync('ca.pem', 'utf8'), 'ca.pem');
 */
export function parsePemCertificates(pem: string, label: string): ParsedCertificate[] {
  const blocks = [...pem.matchAll(/-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g)];
  if (blocks.length === 0) throw new InvalidObjectError(`${label} holds no PEM certificate.`);
  return blocks.map((m, i) => parseCertificate(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'), blocks.length > 1 ? `${label}#${i + 1}` : label));
}

function describe(cert: ParsedCertificate): string {
  return `${cert.label} (subject "${cert.x509.subject.replace(/\n/g, ', ')}")`;
}

function checkDates(cert: ParsedCertificate, now: Date, role: string): void {
  if (now < cert.decoded.notBefore) {
    throw new CertificateError('not-yet-valid', `${role} ${describe(cert)} is not valid before ${cert.decoded.notBefore.toISOString()}.`);
  }
  if (now > cert.decoded.notAfter) {
    throw new CertificateError('expired', `${role} ${describe(cert)} expired at ${cert.decoded.notAfter.toISOString()}.`);
  }
}

/**
 * Validity period and digitalSignature key usage of the certificate that signed an image.
 *
 * @example
 * checkSigningCertificate(parseCertificate(der, id), new Date());
 */
export function checkSigningCertificate(cert: ParsedCertificate, now: Date): void {
  checkDates(cert, now, 'Signing certificate');
  const usage = decodeKeyUsage(cert.decoded);
  if (usage && !usage.has('digitalSignature')) {
    throw new CertificateError('key-usage', `Signing certificate ${describe(cert)} does not allow digitalSignature (key usage: ${[...usage].join(', ') || 'none'}).`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a).equals(b);
}

/** `issuer` signed `child`: names match and the signature verifies with the issuer's key. */
function issued(issuer: ParsedCertificate, child: ParsedCertificate): boolean {
  if (!sameBytes(issuer.decoded.subjectDer, child.decoded.issuerDer) && issuer.x509.subject !== child.x509.issuer) return false;
  try {
    return child.x509.verify(issuer.x509.publicKey);
  } catch {
    return false;
  }
}

function checkIssuer(issuer: ParsedCertificate, now: Date): void {
  checkDates(issuer, now, 'Issuing certificate');
  const constraints = decodeBasicConstraints(issuer.decoded);
  if (!constraints?.ca) {
    throw new CertificateError('not-a-ca', `Issuing certificate ${describe(issuer)} is not a CA (no BasicConstraints cA=true).`);
  }
  const usage = decodeKeyUsage(issuer.decoded);
  if (usage && !usage.has('keyCertSign')) {
    throw new CertificateError('not-a-ca', `Issuing certificate ${describe(issuer)} does not allow keyCertSign.`);
  }
}

/**
 * Builds and checks the chain from `cert` to a self-signed certificate in `trusted`.
 * Returns the chain, signing certificate first, root last.
 *
 * @example
 * const chain = verifyCertificateChain(leaf, parsePemCertificates(pem, 'ca.pem'), new Date());
 */
export function verifyCertificateChain(cert: ParsedCertificate, trusted: readonly ParsedCertificate[], now: Date): ParsedCertificate[] {
  const chain: ParsedCertificate[] = [cert];
  let current = cert;
  for (;;) {
    const candidates = trusted.filter((t) => issued(t, current));
    if (candidates.length === 0) {
      const which = current === cert ? 'the signing certificate' : `certificate ${describe(current)}`;
      throw new CertificateError('untrusted', `No trusted certificate issued ${which} (issuer "${current.x509.issuer.replace(/\n/g, ', ')}").`);
    }
    // Prefer an issuer that passes the CA checks; report the first one's problem otherwise.
    let issuer: ParsedCertificate | undefined;
    let problem: unknown;
    for (const c of candidates) {
      try {
        checkIssuer(c, now);
        issuer = c;
        break;
      } catch (err) {
        problem ??= err;
      }
    }
    if (!issuer) throw problem;
    if (sameBytes(issuer.der, current.der)) break; // self-signed and trusted: the root
    if (chain.some((c) => sameBytes(c.der, issuer!.der)) || chain.length >= MAX_CHAIN) {
      throw new CertificateError('untrusted', `Certificate chain for ${describe(cert)} loops or exceeds ${MAX_CHAIN} certificates.`);
    }
    chain.push(issuer);
    current = issuer;
  }
  // pathLenConstraint counts the non-self-issued intermediates below a CA, the signing
  // certificate not included (RFC 5280 4.2.1.9): for chain[i] that is i - 1.
  for (let i = 1; i < chain.length; i++) {
    const limit = decodeBasicConstraints(chain[i]!.decoded)?.pathLength;
    if (limit !== undefined && i - 1 > limit) {
      throw new CertificateError('path-length', `Issuing certificate ${describe(chain[i]!)} allows ${limit} intermediate CA(s) below it, the chain has ${i - 1}.`);
    }
  }
  return chain;
}
