/**
 * The NBD URI of an export, in the syntax libnbd and QEMU accept
 * (github.com/NetworkBlockDevice/nbd doc/uri.md).
 *
 * Example: `nbdUri({ socket: '/run/a.sock', exportName: 'disk' })` -> `nbd+unix:///disk?socket=/run/a.sock`
 */

export type UriTarget = { socket: string } | { host: string; port: number };

const encName = (name: string): string => name.split('/').map(encodeURIComponent).join('/');
const hostPart = (host: string): string => (host.includes(':') ? `[${host}]` : host);

/** The NBD URI of an export (`nbds` schemes when TLS is required). */
export function nbdUri(o: UriTarget & { exportName: string; tls?: boolean }): string {
  const s = o.tls ? 'nbds' : 'nbd';
  if ('socket' in o) return `${s}+unix:///${encName(o.exportName)}?socket=${encodeURI(o.socket)}`;
  return `${s}://${hostPart(o.host)}:${o.port}/${encName(o.exportName)}`;
}
