/**
 * libvirt XML for a LUKS1 volume that QEMU decrypts itself: the `<secret>` definition
 * (usage type 'volume', keyed by the volume path; libvirt formatsecret) and the domain
 * `<disk>` whose `<source>` carries `<encryption format='luks'>` pointing at that secret
 * (libvirt formatdomain and formatstorageencryption; libvirt turns it into QEMU's `luks`
 * driver with a `secret` object).
 *
 * Pure: strings in, XML text out.
 */
import { InvalidArgumentError } from '../errors.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Escapes text for an XML attribute (single or double quoted) or element content. */
export function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** Refuses text XML 1.0 cannot carry, and line breaks (they would also break the printed here-documents). */
export function checkXmlSafe(text: string, what: string): void {
  // XML 1.0 Char production: no C0 controls except tab/LF/CR; LF/CR are refused too.
  if (/[\u0000-\u001f\u007f\ufffe\uffff]/.test(text)) {
    throw new InvalidArgumentError(`${what} contains control characters or line breaks; libvirt XML cannot name it safely.`);
  }
}

export interface LibvirtSecretOptions {
  /** Lowercase UUID of the libvirt secret. */
  uuid: string;
  /** Absolute volume path: the secret's usage id (must equal the disk's source path). */
  volumePath: string;
  description?: string;
}

/**
 * The secret definition for `virsh secret-define`. `private='yes'` keeps libvirt from
 * handing the value back out; `ephemeral='no'` keeps it across libvirtd restarts.
 *
 * @example
 * libvirtSecretXml({ uuid: '0a81f5b2-8403-4b23-a8d6-21ccc2f80d6f', volumePath: '/srv/vol.img' });
 */
export function libvirtSecretXml(o: LibvirtSecretOptions): string {
  checkUuid(o.uuid);
  checkXmlSafe(o.volumePath, 'The volume path');
  const description = o.description ?? `brickcrypt LUKS passphrase for ${o.volumePath}`;
  checkXmlSafe(description, 'The secret description');
  return [
    `<secret ephemeral='no' private='yes'>`,
    `  <uuid>${o.uuid}</uuid>`,
    `  <description>${xmlEscape(description)}</description>`,
    `  <usage type='volume'>`,
    `    <volume>${xmlEscape(o.volumePath)}</volume>`,
    `  </usage>`,
    `</secret>`,
    '',
  ].join('\n');
}

export interface LibvirtDiskOptions {
  volumePath: string;
  isBlockDevice: boolean;
  secretUuid: string;
  /** Guest device name, e.g. `vdb`. */
  targetDev: string;
  /** Guest bus, e.g. `virtio`, `scsi`, `sata`. */
  targetBus: string;
  readOnly?: boolean;
}

/**
 * The `<disk>` element for `virsh attach-device` or a domain definition.
 *
 * @example
 * libvirtDiskXml({ volumePath: '/srv/vol.img', isBlockDevice: false, secretUuid: UUID, targetDev: 'vdb', targetBus: 'virtio' });
 */
export function libvirtDiskXml(o: LibvirtDiskOptions): string {
  checkUuid(o.secretUuid);
  checkXmlSafe(o.volumePath, 'The volume path');
  if (!/^[a-z]+[a-z0-9]*$/.test(o.targetDev)) throw new InvalidArgumentError(`Target device '${o.targetDev}' is not a libvirt disk name (e.g. vdb, sdb).`);
  if (!/^[a-z][a-z0-9]*$/.test(o.targetBus)) throw new InvalidArgumentError(`Target bus '${o.targetBus}' is not a libvirt bus name (e.g. virtio, scsi).`);
  const type = o.isBlockDevice ? 'block' : 'file';
  const sourceAttr = o.isBlockDevice ? 'dev' : 'file';
  const lines = [
    `<disk type='${type}' device='disk'>`,
    `  <driver name='qemu' type='raw'/>`,
    `  <source ${sourceAttr}='${xmlEscape(o.volumePath)}'>`,
    `    <encryption format='luks'>`,
    `      <secret type='passphrase' uuid='${o.secretUuid}'/>`,
    `    </encryption>`,
    `  </source>`,
    `  <target dev='${o.targetDev}' bus='${o.targetBus}'/>`,
  ];
  if (o.readOnly) lines.push(`  <readonly/>`);
  lines.push(`</disk>`, '');
  return lines.join('\n');
}

function checkUuid(uuid: string): void {
  if (!UUID.test(uuid)) throw new InvalidArgumentError(`'${uuid}' is not a lowercase UUID.`);
}
