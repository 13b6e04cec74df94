/**
 * `brickcrypt image sign|verify`: image signatures as OpenStack Glance/Nova/Cinder check
 * them (cursive's img_signature* properties), with keys and certificates from a key manager.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import { addKeyManagerOptions, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { readKeyFile } from '../key-input.js';
import type { CallerIdentity, KeyManager } from '../../keys/key-manager.js';
import {
  HASH_METHODS,
  KEY_TYPES,
  SIGNATURE_PROPERTY,
  parsePemCertificates,
  signImage,
  verifyImageSignature,
  type ParsedCertificate,
  type SigningKeySource,
} from '../../signatures/index.js';

type CommonOptions = KeyManagerCliOptions;

const COMMON_HELP = `
Image properties (Glance, checked by Nova/Cinder/Glance through cursive):
  ${SIGNATURE_PROPERTY.signature}                   base64 signature over the whole image file
  ${SIGNATURE_PROPERTY.hashMethod}       ${Object.keys(HASH_METHODS).join(', ')}
  ${SIGNATURE_PROPERTY.keyType}          ${Object.keys(KEY_TYPES).join(', ')}
  ${SIGNATURE_PROPERTY.certificateUuid}  key-manager id of the signer's X.509 certificate
RSA-PSS uses MGF1 with the same hash and the maximum salt length (openssl rsa_pss_saltlen:max).

Exit codes: 0 ok, 1 usage, 4 file not found, 6 key-manager error (object not found or of the
wrong type), 7 signature does not verify or certificate refused (expired, not yet valid, no
digitalSignature key usage, wrong key type, not chained to a trusted certificate).`;

function addCommon(cmd: Command): Command {
  return addKeyManagerOptions(cmd).addHelpText('after', COMMON_HELP);
}

function readFile(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`${what} ${file} does not exist.`);
    throw new InvalidArgumentError(`Cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

/** A properties file: a flat JSON object, or `openstack image show -f json` output (nested `properties`). */
function readPropertiesFile(file: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = JSON.parse(readFile(file, 'Properties file').toString('utf8'));
  } catch (err) {
    if (err instanceof NotFoundError || err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`Properties file ${file} is not JSON: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new InvalidArgumentError(`Properties file ${file} must hold a JSON object.`);
  const o = data as Record<string, unknown>;
  const nested = o.properties;
  return typeof nested === 'object' && nested !== null && !Array.isArray(nested) ? { ...o, ...(nested as Record<string, unknown>) } : o;
}

const collect = (value: string, previous: string[]) => [...previous, value];

export function register(program: Command): void {
  const image = program.command('image').description('Sign images and verify image signatures (OpenStack Glance img_signature properties).');

  addCommon(
    image
      .command('sign')
      .description('Sign an image file; prints the img_signature* properties to set on the image.')
      .argument('<image>', 'image file, exactly as uploaded to the image service')
      .option('--private-key-id <id>', 'signing key: a private key (PKCS#8) in the key manager')
      .option('--private-key <file>', 'signing key: a PEM private key file')
      .option('--private-key-passphrase-file <file>', 'passphrase of an encrypted --private-key (every byte counts)')
      .requiredOption('--hash-method <name>', `hash method: ${Object.keys(HASH_METHODS).join(', ')}`)
      .requiredOption('--key-type <type>', `key type: ${Object.keys(KEY_TYPES).join(', ')}`)
      .option('--certificate-id <id>', 'key-manager id of the signer\'s certificate; checked against the key and recorded')
      .option('--json', 'print the properties as a JSON object')
      .addHelpText(
        'after',
        `
Examples:
  brickcrypt image sign cirros.qcow2 --private-key signer.key --hash-method SHA-256 --key-type RSA-PSS \\
      --certificate-id $CERT_ID
  brickcrypt image sign cirros.qcow2 --private-key-id $KEY_ID --hash-method SHA-384 \\
      --key-type ECC_SECP384R1 --certificate-id $CERT_ID --json > props.json
  openstack image create cirros --file cirros.qcow2 --disk-format qcow2 \\
      $(brickcrypt image sign cirros.qcow2 ... | sed 's/^/--property /')`,
      ),
  ).action(async (file: string, o: CommonOptions & { privateKeyId?: string; privateKey?: string; privateKeyPassphraseFile?: string; hashMethod: string; keyType: string; certificateId?: string; json?: boolean }) => {
    if ((o.privateKeyId === undefined) === (o.privateKey === undefined)) throw new InvalidArgumentError('Give exactly one of --private-key-id ID or --private-key FILE.');
    if (o.privateKeyPassphraseFile && !o.privateKey) throw new InvalidArgumentError('--private-key-passphrase-file applies to --private-key only.');
    const needsManager = o.privateKeyId !== undefined || o.certificateId !== undefined;
    const sign = async (km?: KeyManager, caller?: CallerIdentity) => {
      let key: SigningKeySource;
      let pem: Buffer | undefined;
      const passphrase = o.privateKeyPassphraseFile ? await readKeyFile({ keyFile: o.privateKeyPassphraseFile }) : undefined;
      try {
        if (o.privateKeyId !== undefined) key = { privateKeyId: o.privateKeyId };
        else {
          pem = readFile(o.privateKey!, 'Private key');
          key = { privateKeyPem: pem, ...(passphrase ? { passphrase: passphrase.expose() } : {}) };
        }
        return await signImage({
          image: file,
          hashMethod: o.hashMethod,
          keyType: o.keyType,
          key,
          ...(o.certificateId !== undefined ? { certificateId: o.certificateId } : {}),
          ...(km ? { keyManager: km } : {}),
          ...(caller ? { caller } : {}),
        });
      } finally {
        pem?.fill(0);
        passphrase?.wipe();
      }
    };
    const props = needsManager ? await withKeyManager(o, sign) : await sign();
    process.stdout.write(o.json ? JSON.stringify(props, null, 2) + '\n' : Object.entries(props).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
  });

  addCommon(
    image
      .command('verify')
      .description('Verify an image file against its signature properties and the signer\'s certificate.')
      .argument('<image>', 'image file')
      .option('--signature <base64>', `signature (${SIGNATURE_PROPERTY.signature})`)
      .option('--hash-method <name>', `hash method (${SIGNATURE_PROPERTY.hashMethod})`)
      .option('--key-type <type>', `key type (${SIGNATURE_PROPERTY.keyType})`)
      .option('--certificate-id <id>', `certificate id (${SIGNATURE_PROPERTY.certificateUuid})`)
      .option('--properties <file>', 'JSON file with the properties (flat, or "openstack image show -f json" output); options override it')
      .option('--trusted-cert <pem>', 'trusted CA certificate(s), PEM; repeatable. With it the certificate must chain to a trusted self-signed root', collect, [])
      .option('--json', 'print the result as JSON')
      .addHelpText(
        'after',
        `
Without --trusted-cert only the certificate's validity period and key usage are checked
(as Glance does unless certificate validation is enabled); give the CA certificates to
also require a chain to a trusted root (as Nova's verify_glance_signatures with trusted
certificate ids).

Examples:
  brickcrypt image verify cirros.qcow2 --signature "$SIG" --hash-method SHA-256 \\
      --key-type RSA-PSS --certificate-id $CERT_ID --trusted-cert ca.pem
  openstack image show cirros -f json > image.json
  brickcrypt image verify cirros.qcow2 --properties image.json --trusted-cert ca.pem --json`,
      ),
  ).action(async (file: string, o: CommonOptions & { signature?: string; hashMethod?: string; keyType?: string; certificateId?: string; properties?: string; trustedCert: string[]; json?: boolean }) => {
    const properties: Record<string, unknown> = o.properties ? readPropertiesFile(o.properties) : {};
    if (o.signature !== undefined) properties[SIGNATURE_PROPERTY.signature] = o.signature;
    if (o.hashMethod !== undefined) properties[SIGNATURE_PROPERTY.hashMethod] = o.hashMethod;
    if (o.keyType !== undefined) properties[SIGNATURE_PROPERTY.keyType] = o.keyType;
    if (o.certificateId !== undefined) properties[SIGNATURE_PROPERTY.certificateUuid] = o.certificateId;
    let trusted: ParsedCertificate[] | undefined;
    if (o.trustedCert.length > 0) trusted = o.trustedCert.flatMap((f) => parsePemCertificates(readFile(f, 'Trusted certificate file').toString('latin1'), f));
    const result = await withKeyManager(o, (km, caller) =>
      verifyImageSignature({ image: file, properties, keyManager: km, caller, ...(trusted ? { trustedCertificates: trusted } : {}) }),
    );
    if (o.json) {
      process.stdout.write(JSON.stringify({ verified: true, ...result }, null, 2) + '\n');
      return;
    }
    const lines = [
      `Signature verified: ${result.keyType} with ${result.hashMethod} over ${result.bytes} bytes.`,
      `Certificate ${result.certificate.id}: ${result.certificate.subject} (issuer ${result.certificate.issuer}), valid ${result.certificate.notBefore} .. ${result.certificate.notAfter}`,
    ];
    if (result.chain) lines.push(`Chain: ${result.chain.join(', issued by ')}`);
    else lines.push('Chain: not checked (no --trusted-cert).');
    process.stdout.write(lines.join('\n') + '\n');
  });
}
