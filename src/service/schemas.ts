/**
 * JSON schemas of the API, used twice: fastify validates requests with them (unknown fields
 * are refused, never dropped) and /openapi.json is generated from them.
 */
import { HASH_METHODS, KEY_TYPES } from '../signatures/image-signature.js';

const luksOptions = {
  type: 'object',
  additionalProperties: false,
  description: "LUKS format options (cryptsetup luksFormat's names).",
  properties: {
    cipher: { type: 'string', description: 'dm-crypt cipher, default aes-xts-plain64' },
    key_size: { type: 'integer', enum: [128, 256, 512] },
    sector_size: { type: 'integer', enum: [512, 4096] },
    pbkdf: { type: 'string', enum: ['pbkdf2', 'argon2i', 'argon2id'] },
    pbkdf_iterations: { type: 'integer', minimum: 1 },
    pbkdf_memory_kib: { type: 'integer', minimum: 8 },
    pbkdf_parallel: { type: 'integer', minimum: 1, maximum: 16 },
    iter_time_ms: { type: 'integer', minimum: 1 },
  },
} as const;

export const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: { type: 'object', required: ['code', 'message'], properties: { code: { type: 'string' }, message: { type: 'string' } } },
  },
} as const;

export const volumeSchema = {
  type: 'object',
  required: ['id', 'name', 'status', 'size', 'format', 'path', 'encryption_key_id'],
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    status: { type: 'string', enum: ['creating', 'available', 'in-use', 'maintenance', 'error', 'deleting'] },
    size: { type: 'integer', description: 'usable (plaintext) bytes' },
    format: { type: 'string', enum: ['luks1', 'luks2', 'raw'] },
    path: { type: 'string' },
    encryption_key_id: { type: ['string', 'null'] },
    cipher: { type: ['string', 'null'] },
    project: { type: 'string' },
    user: { type: 'string' },
    attachment: { type: ['object', 'null'], additionalProperties: true },
    created_at: { type: 'string' },
    updated_at: { type: 'string' },
  },
} as const;

export const jobSchema = {
  type: 'object',
  required: ['id', 'type', 'state', 'progress', 'error'],
  properties: {
    id: { type: 'string' },
    type: { type: 'string' },
    state: { type: 'string', enum: ['queued', 'running', 'succeeded', 'failed', 'cancelled'] },
    volume_id: { type: ['string', 'null'] },
    progress: {
      type: 'object',
      properties: {
        bytes_done: { type: 'integer' },
        bytes_total: { type: 'integer' },
        rate: { type: 'number', description: 'bytes per second' },
        eta_seconds: { type: ['number', 'null'] },
      },
    },
    result: { type: ['object', 'null'], additionalProperties: true },
    error: { type: ['object', 'null'], properties: { code: { type: 'string' }, message: { type: 'string' } } },
    created_at: { type: 'string' },
    started_at: { type: ['string', 'null'] },
    finished_at: { type: ['string', 'null'] },
  },
} as const;

export const createVolumeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'format'],
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 255 },
    format: { type: 'string', enum: ['luks1', 'luks2', 'raw'] },
    size: { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'string', pattern: '^\\s*\\d+\\s*([KMGTkmgt](i?[Bb])?)?\\s*$' }], description: 'bytes, or "8M", "2G"' },
    source: {
      type: 'object',
      additionalProperties: false,
      description: 'exactly one of image_file, image_id, backup_id; require_signature goes with image_id',
      oneOf: [{ required: ['image_file'] }, { required: ['image_id'] }, { required: ['backup_id'] }],
      properties: {
        image_file: { type: 'string', minLength: 1 },
        image_id: { type: 'string', minLength: 1 },
        require_signature: { type: 'boolean', description: 'image_id: refuse an image without img_signature properties (422 INTEGRITY); a signed image is verified either way' },
        backup_id: { type: 'string', minLength: 1 },
      },
    },
    key: {
      description: 'an existing managed key id (default: a new managed key is created)',
      anyOf: [{ type: 'string', minLength: 1 }, { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', minLength: 1 } } }],
    },
    luks: luksOptions,
  },
} as const;

const empty = { type: 'object', additionalProperties: false, properties: {} } as const;
const withKdf = { type: 'object', additionalProperties: false, properties: { luks: luksOptions } } as const;

export const actionBody = {
  type: 'object',
  minProperties: 1,
  maxProperties: 1,
  additionalProperties: false,
  description: 'exactly one action',
  properties: {
    change_key: withKdf,
    migrate: { type: 'object', additionalProperties: false, required: ['format'], properties: { format: { type: 'string', enum: ['luks1', 'luks2', 'raw'] }, luks: luksOptions } },
    attach: empty,
    detach: empty,
    reencrypt: {
      type: 'object',
      additionalProperties: false,
      description:
        'in place, resumable, in cryptsetup 2.6 on-disk state: mode reencrypt (default) re-keys a LUKS2 or LUKS1 volume under a new volume key and managed key; encrypt makes a raw volume LUKS2 (or LUKS1) under a new managed key; decrypt makes a LUKS2 volume raw',
      properties: {
        mode: { type: 'string', enum: ['reencrypt', 'encrypt', 'decrypt'], description: 'reencrypt (default): new volume key; encrypt: raw -> LUKS2, or LUKS1 with format (the file grows by the header, the usable size stays); decrypt: LUKS2 -> raw (no key options)' },
        format: { type: 'string', enum: ['luks2', 'luks1'], description: 'mode encrypt: the format to make (default luks2; luks1: 512-byte sectors, pbkdf2, made as LUKS2 and converted in place)' },
        hotzone_size: { anyOf: [{ type: 'integer', minimum: 4096 }, { type: 'string', pattern: '^\\s*\\d+\\s*([KMGTkmgt](i?[Bb])?)?\\s*$' }], description: 'largest hot zone, bytes or "16M" (default: the engine\'s); a cancel waits at most one zone' },
        resume: { type: 'boolean', description: 'true: continue the reencryption a failed or cancelled job left on this volume (status error); no other field' },
        cipher: { type: 'string', minLength: 1, description: 'new dm-crypt cipher (default: the current one)' },
        key_size: { type: 'integer', enum: [128, 256, 512], description: 'new volume key size in bits (default: the current one)' },
        sector_size: { type: 'integer', enum: [512, 1024, 2048, 4096], description: 'new encryption sector size (default: the current one)' },
        resilience: { type: 'string', enum: ['checksum', 'journal', 'none'], description: 'hot zone protection (default checksum)' },
        key: {
          description: 'the new managed key: {create: true} (default) or an existing key {id}',
          anyOf: [
            { type: 'object', additionalProperties: false, required: ['create'], properties: { create: { type: 'boolean', enum: [true] } } },
            { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', minLength: 1 } } },
          ],
        },
        luks: { ...luksOptions, description: 'KDF of the new keyslot (pbkdf, pbkdf_iterations, pbkdf_memory_kib, pbkdf_parallel, iter_time_ms)' },
      },
    },
    resize: {
      type: 'object',
      additionalProperties: false,
      required: ['size'],
      description: 'to `size` usable bytes (LUKS: rounded up to whole encryption sectors); shrinking needs allow_truncate',
      properties: {
        size: { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'string', pattern: '^\\s*\\d+\\s*([KMGTkmgt](i?[Bb])?)?\\s*$' }], description: 'bytes, or "16M", "2G"' },
        allow_truncate: { type: 'boolean', description: 'allow a smaller size (the data past it is lost); default false: SHRINK_REFUSED' },
      },
    },
    upload_to_image: {
      type: 'object',
      additionalProperties: false,
      description: 'to the image service (serve --image-service): as-is (container bytes; a LUKS key is cloned for the image) or decrypted',
      properties: {
        image_name: { type: 'string', minLength: 1, maxLength: 255 },
        mode: { type: 'string', enum: ['as-is', 'decrypted'] },
        disk_format: { type: 'string', enum: ['raw', 'qcow2'], description: 'mode decrypted only (default raw)' },
        visibility: { type: 'string', enum: ['private', 'shared', 'community', 'public'] },
        properties: { type: 'object', additionalProperties: { type: 'string' }, maxProperties: 64 },
        import_method: { type: 'string', enum: ['glance-direct'], description: "stage + import (Glance's interoperable import) instead of PUT .../file" },
        sign: {
          type: 'object',
          additionalProperties: false,
          required: ['private_key_id'],
          description: "sign the uploaded bytes while they stream (cursive's img_signature* properties); the private key is read from the key manager as the caller",
          properties: {
            private_key_id: { type: 'string', minLength: 1, description: 'a private key (PKCS#8) in the key manager' },
            certificate_id: { type: 'string', minLength: 1, description: "the signer's certificate in the key manager (img_signature_certificate_uuid), checked against the key" },
            hash_method: { type: 'string', enum: [...Object.keys(HASH_METHODS)], description: 'default SHA-256' },
            key_type: { type: 'string', enum: [...Object.keys(KEY_TYPES)], description: 'default RSA-PSS' },
          },
        },
      },
    },
    backup: {
      type: 'object',
      additionalProperties: false,
      description: 'into the backup repository (serve --backup-repo); the result names backup_id',
      properties: { name: { type: 'string', minLength: 1, maxLength: 255 } },
    },
  },
} as const;

export const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 64 } } } as const;
