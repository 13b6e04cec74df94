/** Image signatures compatible with OpenStack Glance/cursive, and signing-certificate checks. */
export * from './image-signature.js';
export * from './certificate-validation.js';
export { decodeCertificate, decodeKeyUsage, decodeBasicConstraints, type DecodedCertificate, type KeyUsageName, type BasicConstraints } from './x509-der.js';
