/**
 * The OpenStack Glance v2 REST API on the wire, without I/O: request bodies and headers out,
 * response bodies and headers in, and the one mapping from an HTTP failure to a typed error.
 * `glance-client.ts` is the only module that sends them.
 *
 * | request                                   | body / headers                                    | answer                      |
 * |-------------------------------------------|---------------------------------------------------|-----------------------------|
 * | `POST /v2/images`                         | JSON: name, disk_format, container_format, any custom property (strings) | 201, image (status queued) |
 * | `PUT /v2/images/{id}/file`                | `application/octet-stream` data                   | 204 (status active)         |
 * | `PUT /v2/images/{id}/stage`               | `application/octet-stream` data                   | 204 (status uploading)      |
 * | `POST /v2/images/{id}/import`             | JSON `{"method": {"name": "glance-direct"}}`      | 202 (importing, then active)|
 * | `GET /v2/images/{id}`                     |                                                   | 200, image                  |
 * | `PATCH /v2/images/{id}`                   | `application/openstack-images-v2.1-json-patch`    | 200, image                  |
 * | `GET /v2/images/{id}/file`                | optional `Range: bytes=a-b`                       | 200 / 206 `Content-Range`   |
 * | `DELETE /v2/images/{id}`                  |                                                   | 204                         |
 * | `GET /v2/images?limit=&marker=`           |                                                   | 200, `{images, next}`       |
 *
 * Identity: a Keystone token (`X-Auth-Token`), or the headers Keystone's auth_token
 * middleware sets for a service behind a trusted proxy (`X-Identity-Status: Confirmed`,
 * `X-Project-Id`, `X-User-Id`, `X-Roles`), which Glance's ContextMiddleware reads.
 */
import {
  BackendUnavailableError,
  ForbiddenError,
  InsufficientSpaceError,
  InUseError,
  InvalidArgumentError,
  InvalidObjectError,
  NotFoundError,
  OutOfRangeError,
} from '../errors.js';

/** Who calls the image service. */
export type ImageServiceIdentity =
  | { token: string }
  | { user: string; project: string; roles: readonly string[]; token?: string };

export type ImageStatus = 'queued' | 'saving' | 'uploading' | 'importing' | 'active' | 'killed' | 'deleted' | 'pending_delete' | 'deactivated';

/** An image as Glance shows it: core fields typed, every other (custom) property in `properties`. */
export interface ImageRecord {
  id: string;
  name: string | null;
  status: ImageStatus;
  diskFormat: string | null;
  containerFormat: string | null;
  visibility: string;
  owner: string | null;
  /** Bytes of image data (null before upload). */
  size: number | null;
  /** md5 hex (legacy). */
  checksum: string | null;
  /** e.g. "sha512" and its hex digest ("multihash"). */
  hashAlgo: string | null;
  hashValue: string | null;
  createdAt: string;
  updatedAt: string;
  /** Custom properties (cinder_encryption_key_id, img_signature, os_encrypt_*, ...). */
  properties: Record<string, string>;
}

/** The fields Glance's image schema defines itself; everything else is a custom property. */
const CORE_FIELDS = new Set([
  'id', 'name', 'status', 'disk_format', 'container_format', 'visibility', 'owner', 'size', 'virtual_size', 'checksum',
  'os_hash_algo', 'os_hash_value', 'created_at', 'updated_at', 'tags', 'self', 'file', 'schema', 'protected', 'min_ram',
  'min_disk', 'os_hidden', 'locations', 'direct_url', 'stores',
]);

/** Glance's `disk_format` and `container_format` values this project writes. */
export const DISK_FORMATS = ['raw', 'qcow2'] as const;
export type DiskFormat = (typeof DISK_FORMATS)[number];

export interface NewImage {
  name: string;
  diskFormat: DiskFormat;
  containerFormat?: string; // default "bare"
  visibility?: 'private' | 'shared' | 'community' | 'public';
  /** Custom properties (string values, as Glance stores them). */
  properties?: Record<string, string>;
}

export const JSON_PATCH_CONTENT_TYPE = 'application/openstack-images-v2.1-json-patch';

export type PatchOperation =
  | { op: 'add' | 'replace'; name: string; value: string }
  | { op: 'remove'; name: string };

function str(o: Record<string, unknown>, k: string, optional = true): string | null {
  const v = o[k];
  if (v === undefined || v === null) {
    if (optional) return null;
    throw new InvalidObjectError(`glance: image field ${k} is missing.`);
  }
  if (typeof v !== 'string') throw new InvalidObjectError(`glance: image field ${k} is not a string.`);
  return v;
}

/** Decodes one image document (`GET /v2/images/{id}`, `POST`, `PATCH` answers, list entries). */
export function decodeImage(json: unknown): ImageRecord {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new InvalidObjectError('glance: an image is not a JSON object.');
  const o = json as Record<string, unknown>;
  const size = o.size;
  if (size !== null && size !== undefined && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) {
    throw new InvalidObjectError('glance: image size is not a non-negative integer.');
  }
  const properties: Record<string, string> = {};
  for (const [k, v] of Object.entries(o)) {
    if (CORE_FIELDS.has(k)) continue;
    if (typeof v === 'string') properties[k] = v;
    else if (v !== null && v !== undefined) properties[k] = JSON.stringify(v);
  }
  return {
    id: str(o, 'id', false)!,
    name: str(o, 'name'),
    status: str(o, 'status', false) as ImageStatus,
    diskFormat: str(o, 'disk_format'),
    containerFormat: str(o, 'container_format'),
    visibility: str(o, 'visibility') ?? 'shared',
    owner: str(o, 'owner'),
    size: (size as number | null | undefined) ?? null,
    checksum: str(o, 'checksum'),
    hashAlgo: str(o, 'os_hash_algo'),
    hashValue: str(o, 'os_hash_value'),
    createdAt: str(o, 'created_at') ?? '',
    updatedAt: str(o, 'updated_at') ?? '',
    properties,
  };
}

/** Decodes a page of `GET /v2/images`; `next` is the relative link to the following page. */
export function decodeImageList(json: unknown): { images: ImageRecord[]; next?: string } {
  if (typeof json !== 'object' || json === null || !Array.isArray((json as { images?: unknown }).images)) {
    throw new InvalidObjectError('glance: an image list has no "images" array.');
  }
  const o = json as { images: unknown[]; next?: unknown };
  return { images: o.images.map(decodeImage), ...(typeof o.next === 'string' ? { next: o.next } : {}) };
}

/** The JSON body of `POST /v2/images`. Custom properties may not shadow core fields. */
export function encodeNewImage(image: NewImage): Record<string, string> {
  const body: Record<string, string> = {
    name: image.name,
    disk_format: image.diskFormat,
    container_format: image.containerFormat ?? 'bare',
  };
  if (image.visibility) body.visibility = image.visibility;
  for (const [k, v] of Object.entries(image.properties ?? {})) {
    if (CORE_FIELDS.has(k)) throw new InvalidArgumentError(`Image property ${k} is a core field of Glance's image schema, not a custom property.`);
    body[k] = v;
  }
  return body;
}

/** A JSON-patch document (RFC 6902 paths as Glance's v2.1 media type takes them). */
export function encodePatch(ops: readonly PatchOperation[]): Array<Record<string, string>> {
  return ops.map((op): Record<string, string> => {
    if (!/^[A-Za-z0-9_:.-]+$/.test(op.name)) throw new InvalidArgumentError(`Image property name ${JSON.stringify(op.name)} is not valid.`);
    return op.op === 'remove' ? { op: 'remove', path: `/${op.name}` } : { op: op.op, path: `/${op.name}`, value: op.value };
  });
}

/** The identity headers of every request. */
export function identityHeaders(identity: ImageServiceIdentity): Record<string, string> {
  if (!('user' in identity)) {
    if (!identity.token) throw new InvalidArgumentError('An empty image-service token was given.');
    return { 'X-Auth-Token': identity.token };
  }
  if (!identity.project || !identity.user) throw new InvalidArgumentError('Image-service header identity needs a user and a project.');
  return {
    'X-Identity-Status': 'Confirmed',
    'X-Project-Id': identity.project,
    'X-User-Id': identity.user,
    'X-Roles': identity.roles.join(','),
    // Both: a Glance behind keystonemiddleware validates the token (and replaces the X-*
    // headers with what it says), one behind a trusting proxy reads the headers.
    ...(identity.token ? { 'X-Auth-Token': identity.token } : {}),
  };
}

/** `Range` for bytes `[start, end)`; an open end reads to the end of the image. */
export function encodeRange(start: number, end?: number): string {
  return end === undefined ? `bytes=${start}-` : `bytes=${start}-${end - 1}`;
}

/** Parses `Content-Range: bytes a-b/total` into `[start, end)` and the total (null when "*"). */
export function decodeContentRange(value: string | null): { start: number; end: number; total: number | null } {
  const m = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null;
  if (!m) throw new InvalidObjectError(`glance: malformed Content-Range ${JSON.stringify(value)}.`);
  const start = Number(m[1]);
  const end = Number(m[2]) + 1;
  const total = m[3] === '*' ? null : Number(m[3]);
  if (end <= start || (total !== null && end > total)) throw new InvalidObjectError(`glance: Content-Range ${value} is not a valid range.`);
  return { start, end, total };
}

/** A short reason from Glance's error body (webob HTML or JSON); never more than a line. */
export function errorDetail(body: string): string {
  try {
    const j = JSON.parse(body) as { message?: string; title?: string; error?: { message?: string } };
    const m = j.message ?? j.error?.message ?? j.title;
    if (typeof m === 'string') return m.slice(0, 300);
  } catch {
    // webob answers text/plain or HTML
  }
  const text = body.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim();
  return text.slice(0, 300);
}

/** The typed error for a failed request; `subject` names what was asked for ("image ID"). */
export function mapGlanceError(status: number, subject: string, detail: string): Error {
  const msg = `image service: ${subject}: HTTP ${status}${detail ? `: ${detail}` : ''}`;
  if (status === 404) return new NotFoundError(msg);
  if (status === 401 || status === 403) return new ForbiddenError(msg);
  if (status === 409) return new InUseError(msg);
  // Glance answers 413 when an upload exceeds image_size_cap or the project's storage quota.
  if (status === 413) return new InsufficientSpaceError(msg);
  if (status === 416) return new OutOfRangeError(msg);
  if (status >= 500 || status === 429) return new BackendUnavailableError(msg);
  if (status === 400) return new InvalidArgumentError(msg);
  return new InvalidObjectError(msg);
}
