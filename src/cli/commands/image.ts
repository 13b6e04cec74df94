/**
 * `brickcrypt image sign|verify`: image signatures as OpenStack Glance/Nova/Cinder check
 * them (cursive's img_signature* properties), with keys and certificates from a key manager.
 * `brickcrypt image upload|download|delete|list|show`: volumes to and from an OpenStack
 * Glance v2 image service (src/workflows/image-upload.ts, image-download.ts).
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import { addKeyManagerOptions, callerIdentity, KEY_MANAGER_HELP, managerOptions, passphraseFromKeyManager, withKeyManager, type KeyManagerCliOptions } from '../key-manager-options.js';
import { parseChoice, parseInteger, parseSize } from '../parse.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import type { GlanceClient } from '../../image-service/glance-client.js';
import { DISK_FORMATS, type ImageRecord } from '../../image-service/glance-wire.js';
import { CACHE_MODES, type LuksTargetOptions } from '../../workflows/convert.js';
import { IMAGE_FORMATS, type PassphraseSource } from '../../workflows/open-source.js';
import { withCancellation } from '../cancellation.js';
import { passphraseSource, progressReporter, type CreatedKey, type KeyOptions } from './convert.js';
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
  const image = program
    .command('image')
    .description('Images in an OpenStack Glance v2 image service (upload, download, delete, list, show) and image signatures (sign, verify).');
  registerImageService(image);

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

interface ImageServiceCliOptions extends KeyManagerCliOptions {
  imageService?: string;
  tokenFile?: string;
  json?: boolean;
}

const IMAGE_SERVICE_HELP = `
Image service: --image-service URL (default $BRICKCRYPT_IMAGE_SERVICE), e.g. http://glance:9292.
Identity: a Keystone token from --token-file FILE or $OS_AUTH_TOKEN (sent as X-Auth-Token), else
the caller identity (--user, --project, --roles or --profile, as for the key manager) sent as
the headers Keystone's middleware sets (X-Project-Id, X-User-Id, X-Roles) - for a service
behind a trusted proxy. The same identity calls the key manager.

Exit codes: 0 ok, 1 usage, 2 forbidden, 4 image or file not found, 5 target exists / conflict,
6 key manager or image service unavailable, 7 checksum or signature does not match
(nothing is left behind), 130 cancelled (the half-made image or target is removed).`;

function addImageService(cmd: Command): Command {
  return addKeyManagerOptions(cmd, { help: false })
    .option('--image-service <url>', 'Glance endpoint (default $BRICKCRYPT_IMAGE_SERVICE)')
    .option('--token-file <file>', 'file holding a Keystone token (default $OS_AUTH_TOKEN)')
    .option('--json', 'JSON output')
    .addHelpText('after', IMAGE_SERVICE_HELP + '\n' + KEY_MANAGER_HELP);
}

async function imageClient(o: ImageServiceCliOptions): Promise<GlanceClient> {
  const url = o.imageService ?? process.env.BRICKCRYPT_IMAGE_SERVICE;
  if (!url) throw new InvalidArgumentError('Give the image service: --image-service URL (or $BRICKCRYPT_IMAGE_SERVICE).');
  const token = o.tokenFile ? readFile(o.tokenFile, 'Token file').toString('utf8').trim() : process.env.OS_AUTH_TOKEN;
  const { GlanceClient } = await import('../../image-service/glance-client.js');
  const caller = token ? undefined : callerIdentity(o);
  const identity = caller ? { user: caller.user, project: caller.project, roles: caller.roles } : { token: token! };
  return new GlanceClient({ url, identity, ...(o.timeout ? { timeoutMs: parseInteger(o.timeout, 'timeout', 1) } : {}) });
}

function parseProperty(text: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError(`--property ${JSON.stringify(text)}: use KEY=VALUE.`);
  return [text.slice(0, i), text.slice(i + 1)];
}

function describeImage(img: ImageRecord): string {
  const lines = [
    `id:               ${img.id}`,
    `name:             ${img.name ?? ''}`,
    `status:           ${img.status}`,
    `disk_format:      ${img.diskFormat ?? ''}`,
    `container_format: ${img.containerFormat ?? ''}`,
    `size:             ${img.size ?? ''}`,
    `owner:            ${img.owner ?? ''}`,
    `visibility:       ${img.visibility}`,
    `os_hash_algo:     ${img.hashAlgo ?? ''}`,
    `os_hash_value:    ${img.hashValue ?? ''}`,
  ];
  for (const [k, v] of Object.entries(img.properties).sort()) lines.push(`${k}: ${v}`);
  return lines.join('\n') + '\n';
}

function registerImageService(image: Command): void {
  addImageService(
    image
      .command('upload')
      .description('Upload a volume to the image service in one streaming pass; prints the image id.')
      .argument('<volume>', 'volume file or block device (LUKS1/LUKS2, raw or qcow2)')
      .requiredOption('--name <name>', 'image name')
      .option('--key-id <id>', "the volume's managed key: cloned for the image (as-is), or opens the volume (--decrypt)")
      .option('--key-file <file>', "--decrypt: the volume's LUKS passphrase file ('-' = stdin)")
      .option('--decrypt', 'upload the plaintext instead of the encrypted container')
      .option('--disk-format <format>', '--decrypt: image format, raw (default) or qcow2 (zero clusters unallocated)')
      .option('--compress', '--decrypt with qcow2: deflate-compress clusters, as qemu-img convert -c (compresses each cluster twice: once to plan the tables)')
      .option('--import <method>', "upload with stage + import (method 'glance-direct') instead of PUT .../file")
      .option('--visibility <v>', 'private, shared, community or public')
      .option('--property <key=value>', 'extra image property; repeatable', collect, [])
      .option('--private-key-id <id>', 'sign while uploading: a private key (PKCS#8) in the key manager')
      .option('--sign-key <file>', 'sign while uploading: a PEM private key file')
      .option('--hash-method <name>', `signature hash: ${Object.keys(HASH_METHODS).join(', ')} (default SHA-256)`)
      .option('--key-type <type>', `signature key type: ${Object.keys(KEY_TYPES).join(', ')} (default RSA-PSS)`)
      .option('--certificate-id <id>', "signer's certificate in the key manager (img_signature_certificate_uuid)")
      .addHelpText(
        'after',
        `
As-is (default for a LUKS volume): the container bytes unchanged, disk_format raw, container_format
bare, and the volume's key cloned inside the key manager (a "creator" can do it; no key bytes are
read). Properties set: cinder_encryption_key_id=<clone>, cinder_encryption_key_deletion_policy=
on_image_deletion, os_encrypt_format=LUKSv1|LUKSv2, os_encrypt_cipher, os_encrypt_key_id=<clone>,
os_encrypt_key_deletion_policy=on_image_deletion, os_decrypt_size.
--decrypt: the plaintext, as a raw image or (--disk-format qcow2) a qcow2 image whose tables are
sent first: a first pass over the volume finds the clusters with data. The sha512 Glance records (os_hash_value) is checked
against the one computed while streaming; with a signing key the img_signature* properties are
computed in the same pass.

Examples:
  brickcrypt image upload vol.luks --image-service http://127.0.0.1:9292 --name backup-1 \\
      --key-id $KEY_ID --project p1 --user cinder --roles creator,member
  brickcrypt image upload vol.luks --image-service $GLANCE --name disk-1 --decrypt --disk-format qcow2 --key-id $KEY_ID
  brickcrypt image upload vol.luks --image-service $GLANCE --name plain-1 --decrypt --disk-format raw \\
      --key-id $KEY_ID --sign-key signer.key --certificate-id $CERT_ID --import glance-direct`,
      ),
  ).action(async (volume: string, o: ImageServiceCliOptions & { name: string; keyId?: string; keyFile?: string; decrypt?: boolean; diskFormat?: string; compress?: boolean; import?: string; visibility?: string; property: string[]; privateKeyId?: string; signKey?: string; hashMethod?: string; keyType?: string; certificateId?: string }) => {
    if (o.privateKeyId !== undefined && o.signKey !== undefined) throw new InvalidArgumentError('Give one of --private-key-id or --sign-key.');
    if (o.import !== undefined && o.import !== 'glance-direct') throw new InvalidArgumentError(`--import ${o.import}: only glance-direct is supported.`);
    if (!o.decrypt && o.keyFile) throw new InvalidArgumentError('--key-file applies to --decrypt (an as-is upload clones --key-id).');
    const signs = o.privateKeyId !== undefined || o.signKey !== undefined;
    if (!signs && (o.hashMethod || o.keyType || o.certificateId)) throw new InvalidArgumentError('Signature options need --private-key-id or --sign-key.');
    const client = await imageClient(o);
    const { uploadVolume } = await import('../../workflows/image-upload.js');
    const diskFormat = o.diskFormat === undefined ? undefined : parseChoice(o.diskFormat, 'disk-format', DISK_FORMATS);
    const visibility = o.visibility === undefined ? undefined : parseChoice(o.visibility, 'visibility', ['private', 'shared', 'community', 'public'] as const);
    const properties = Object.fromEntries(o.property.map(parseProperty));
    const json = o.json === true;
    const progress = progressReporter(json, 'upload');
    let pem: Buffer | undefined;
    try {
      const report = await withKeyManager(o, async (km, caller) => {
        if (o.signKey) pem = readFile(o.signKey, 'Signing key');
        const sign = signs
          ? {
              hashMethod: o.hashMethod ?? 'SHA-256',
              keyType: o.keyType ?? 'RSA-PSS',
              key: o.privateKeyId !== undefined ? { privateKeyId: o.privateKeyId } : { privateKeyPem: pem! },
              ...(o.certificateId ? { certificateId: o.certificateId } : {}),
            }
          : undefined;
        const passphrase = o.decrypt ? (o.keyFile ? () => readKeyFile({ keyFile: o.keyFile! }) : o.keyId ? () => passphraseFromKeyManager(o, o.keyId!) : undefined) : undefined;
        return withCancellation((signal) =>
          uploadVolume({
            volume,
            client,
            name: o.name,
            mode: o.decrypt ? 'decrypt' : 'as-is',
            ...(diskFormat ? { diskFormat } : {}),
            compress: o.compress === true,
            flow: o.import ? 'glance-direct' : 'file',
            ...(visibility ? { visibility } : {}),
            properties,
            keyManager: km,
            caller,
            ...(o.keyId && !o.decrypt ? { volumeKeyId: o.keyId } : {}),
            ...(passphrase ? { passphrase } : {}),
            ...(sign ? { sign } : {}),
            signal,
            onProgress: (p) => progress.update(p),
          }),
        );
      });
      if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report }) + '\n');
      else {
        process.stdout.write(`${report.imageId}\n`);
        process.stderr.write(
          `Uploaded ${volume} (${report.volumeFormat}, ${report.mode}) as image ${report.imageId}: ${report.bytes} bytes in ${report.seconds.toFixed(2)} s` +
            `${report.clonedKeyId ? `; key clone ${report.clonedKeyId}` : ''}.\n`,
        );
      }
    } finally {
      progress.stop();
      pem?.fill(0);
    }
  });

  const download = addImageService(
    image
      .command('download')
      .description('Create a volume from an image in the image service, in one streaming pass.')
      .argument('<image-id>', 'image id')
      .argument('<target>', 'volume file to create')
      .requiredOption('--dst-format <format>', `target format: ${IMAGE_FORMATS.join(', ')}`)
      .option('--dst-key-file <file>', "target LUKS passphrase file ('-' = stdin)")
      .option('--dst-key-id <id>', 'managed key whose LUKS passphrase the target gets')
      .option('--create-key', 'create a new key in the key manager for the LUKS target')
      .option('--require-signature', 'refuse images without img_signature properties (exit 7)')
      .option('--trusted-cert <pem>', "the signer's certificate must chain to these CA certificates; repeatable", collect, [])
      .option('--cipher <spec>', 'LUKS cipher, e.g. aes-xts-plain64')
      .option('--key-size <bits>', 'LUKS volume key size in bits')
      .option('--pbkdf <type>', 'pbkdf2, argon2i or argon2id')
      .option('--iter-time <ms>', 'keyslot unlock time target in milliseconds')
      .option('--pbkdf-force-iterations <n>', 'fixed PBKDF iterations / Argon2 time cost (no benchmark)')
      .option('--pbkdf-memory <kib>', 'Argon2 memory cost in KiB')
      .option('--sector-size <bytes>', 'LUKS2 encryption sector size (512 or 4096)')
      .option('--size <size>', 'usable payload size of the target (default: the image size)')
      .option('--force', 'replace an existing target file')
      .option('--compress', 'qcow2 targets: compress clusters')
      .option('--cache <mode>', 'none, writeback, unsafe or auto (as for convert)')
      .option('--workers <n>', 'crypto worker threads')
      .addHelpText(
        'after',
        `
A raw or qcow2 image is converted while it downloads (qcow2 tables are fetched with range
requests, no temporary file). An image uploaded as-is from an encrypted volume
(cinder_encryption_key_id / os_encrypt_key_id) becomes a volume of the same LUKS version with
its ciphertext copied unchanged and a fresh clone of the image's key (printed); with a target
key (or another format) it is re-keyed instead (decrypted with its key, which the caller must be
allowed to read, and encrypted under the new key). A signed image
is verified while streaming; a bad signature or checksum fails with exit 7 and leaves no target.

Examples:
  brickcrypt image download $IMAGE_ID vol.luks --image-service $GLANCE --dst-format luks2 --create-key
  brickcrypt image download $IMAGE_ID vol.luks --image-service $GLANCE --dst-format luks2 \\
      --dst-key-file pass.txt --require-signature --trusted-cert ca.pem`,
      ),
  );
  download.action(async (imageId: string, target: string, o: ImageServiceCliOptions & KeyOptions & Record<string, unknown>) => {
    const created: CreatedKey = {};
    const targetFormat = parseChoice(String(o.dstFormat), 'dst-format', IMAGE_FORMATS);
    const luks: LuksTargetOptions = {};
    if (o.cipher !== undefined) luks.cipher = String(o.cipher);
    if (o.keySize !== undefined) luks.keySizeBits = parseInteger(String(o.keySize), 'key-size', 128, 4096);
    if (o.pbkdf !== undefined) luks.pbkdf = parseChoice(String(o.pbkdf), 'pbkdf', ['pbkdf2', 'argon2i', 'argon2id'] as const);
    if (o.iterTime !== undefined) luks.iterTimeMs = parseInteger(String(o.iterTime), 'iter-time', 1);
    if (o.pbkdfForceIterations !== undefined) luks.iterations = parseInteger(String(o.pbkdfForceIterations), 'pbkdf-force-iterations', 1);
    if (o.pbkdfMemory !== undefined) luks.memoryKiB = parseInteger(String(o.pbkdfMemory), 'pbkdf-memory', 8);
    if (o.sectorSize !== undefined) {
      const ss = parseInteger(String(o.sectorSize), 'sector-size');
      if (ss !== 512 && ss !== 4096) throw new InvalidArgumentError('--sector-size: must be 512 or 4096.');
      luks.sectorSize = ss;
    }
    const trusted = (o.trustedCert as string[]).flatMap((f) => parsePemCertificates(readFile(f, 'Trusted certificate file').toString('latin1'), f));
    const client = await imageClient(o);
    const { downloadImage } = await import('../../workflows/image-download.js');
    const json = o.json === true;
    const progress = progressReporter(json, 'download');
    const lock = await VolumeLock.acquire(target);
    try {
      const report = await withKeyManager(o, (km, caller) =>
        withCancellation((signal) =>
          downloadImage({
            client,
            imageId,
            target,
            targetFormat,
            keyManager: km,
            caller,
            requireSignature: o.requireSignature === true,
            ...(trusted.length > 0 ? { trustedCertificates: trusted } : {}),
            ...((): { targetPassphrase?: PassphraseSource } => {
              const source = passphraseSource(o, 'target', created);
              return source ? { targetPassphrase: source } : {};
            })(),
            ...(Object.keys(luks).length > 0 ? { luks } : {}),
            ...(o.size !== undefined ? { size: parseSize(String(o.size), 'size') } : {}),
            force: o.force === true,
            compress: o.compress === true,
            ...(o.cache !== undefined ? { cache: parseChoice(String(o.cache), 'cache', CACHE_MODES) } : {}),
            ...(o.workers !== undefined ? { workers: parseInteger(String(o.workers), 'workers', 0, 64) } : {}),
            signal,
            onProgress: (p) => progress.update(p),
          }),
        ),
      ).catch(async (err: unknown) => {
        if (created.id !== undefined) await withKeyManager(o, (km, caller) => km.delete(caller, created.id!, { force: true })).catch(() => undefined);
        throw err;
      });
      const keyId = report.clonedKeyId ?? created.id;
      if (json) process.stdout.write(JSON.stringify({ event: 'done', ...report, ...(created.id ? { createdKeyId: created.id } : {}) }) + '\n');
      else {
        if (keyId) process.stdout.write(`${keyId}\n`);
        process.stderr.write(
          `Created ${target} (${report.targetFormat}, ${report.mode === 'as-is' ? 'encrypted image copied as-is' : report.mode === 're-key' ? 're-keyed' : 'converted'}) from image ${imageId}: ` +
            `${report.imageBytes} image bytes in ${report.seconds.toFixed(2)} s; sha512 matches` +
            `${report.signature ? `; signature verified (${report.signature.keyType}, ${report.signature.hashMethod})` : ''}` +
            `${report.clonedKeyId ? `; volume key ${report.clonedKeyId} (a clone of the image's)` : ''}.\n`,
        );
      }
    } finally {
      progress.stop();
      await lock.release();
    }
  });

  addImageService(
    image
      .command('delete')
      .description("Delete an image; with on_image_deletion, also the key it owns.")
      .argument('<image-id>', 'image id')
      .addHelpText('after', '\nExample:\n  brickcrypt image delete $IMAGE_ID --image-service $GLANCE'),
  ).action(async (imageId: string, o: ImageServiceCliOptions) => {
    const client = await imageClient(o);
    const { deleteImage } = await import('../../workflows/image-upload.js');
    // The key manager is opened only when the image owns a key.
    let opened: { close: () => Promise<void> } | undefined;
    const { deletedKeyId: deletedKey } = await deleteImage({
      client,
      imageId,
      keyManager: async () => {
        const { openKeyManager, defaultKeyManagerUri } = await import('../../keys/open-key-manager.js');
        const km = await openKeyManager(o.keyManager ?? defaultKeyManagerUri(), await managerOptions(o));
        opened = km;
        return { keyManager: km, caller: callerIdentity(o) };
      },
    }).finally(() => opened?.close());
    if (o.json) process.stdout.write(JSON.stringify({ deleted: imageId, ...(deletedKey ? { deletedKeyId: deletedKey } : {}) }) + '\n');
    else process.stderr.write(`Deleted image ${imageId}${deletedKey ? ` and its key ${deletedKey}` : ''}.\n`);
  });

  addImageService(
    image
      .command('list')
      .description('List the images the caller can see.')
      .addHelpText('after', '\nExample:\n  brickcrypt image list --image-service $GLANCE --json'),
  ).action(async (o: ImageServiceCliOptions) => {
    const client = await imageClient(o);
    const images = await client.list();
    if (o.json) {
      process.stdout.write(JSON.stringify(images, null, 2) + '\n');
      return;
    }
    const rows = images.map((i) => [i.id, i.name ?? '', i.status, i.diskFormat ?? '', String(i.size ?? ''), i.properties.os_encrypt_format ?? (i.properties.cinder_encryption_key_id ? 'encrypted' : '')]);
    const head = ['ID', 'NAME', 'STATUS', 'FORMAT', 'SIZE', 'ENCRYPTION'];
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
    const line = (r: string[]) => r.map((v, c) => v.padEnd(widths[c]!)).join('  ').trimEnd();
    process.stdout.write([line(head), ...rows.map(line)].join('\n') + '\n');
  });

  addImageService(
    image
      .command('show')
      .description("Show an image's fields and properties.")
      .argument('<image-id>', 'image id')
      .addHelpText('after', '\nExample:\n  brickcrypt image show $IMAGE_ID --image-service $GLANCE --json'),
  ).action(async (imageId: string, o: ImageServiceCliOptions) => {
    const client = await imageClient(o);
    const img = await client.show(imageId);
    process.stdout.write(o.json ? JSON.stringify(img, null, 2) + '\n' : describeImage(img));
  });
}
