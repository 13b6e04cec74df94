/**
 * The key-manager URI a LUKS2 `brickcrypt-key-manager` token records (docs/luks.md "Tokens").
 *
 * A header is readable by anyone who can read the volume, and copied into every header
 * backup, so the token keeps only where the key manager is:
 * - `local:PATH` becomes `local:/absolute/path` (the token must mean the same file from any
 *   working directory); `memory:` stays `memory:`.
 * - `barbican+http(s)://HOST:PORT/PATH` and `kmip://HOST:PORT` keep scheme, host, port and path.
 *   Their query (`?ca=`, `?cert=`, `?key=`, `?token-file=`, tuning) is dropped and reported:
 *   it names files of the host that wrote the token, and the host opening the volume gives its
 *   own (`--tls-ca`, `--tls-cert`, ...).
 * - A user name or password (`https://user:pw@host`) is refused, not dropped: it is a
 *   credential, and silently recording a URI that works differently from the one given
 *   would surprise.
 */
import { InvalidArgumentError } from '../errors.js';
import { tokenUriProblem } from '../formats/luks2/key-manager-token.js';
import { parseKeyManagerUri } from './open-key-manager.js';

export interface TokenUri {
  uri: string;
  /** Query parameter names that were not recorded. */
  dropped: string[];
}

/**
 * @example
 * keyManagerUriForToken('barbican+https://kms:9311?ca=/etc/ca.pem') // { uri: 'barbican+https://kms:9311', dropped: ['ca'] }
 */
export function keyManagerUriForToken(uri: string, env: NodeJS.ProcessEnv = process.env): TokenUri {
  const parsed = parseKeyManagerUri(uri, env);
  let out: string;
  let dropped: string[] = [];
  if (parsed.kind === 'local') out = `local:${parsed.path}`;
  else if (parsed.kind === 'memory') out = 'memory:';
  else {
    const url = new URL(parsed.kind === 'barbican' ? parsed.url : uri);
    if (url.username !== '' || url.password !== '') {
      throw new InvalidArgumentError(
        `--key-manager: '${url.protocol}//…@${url.host}' carries a user name or password; a LUKS token is readable by anyone who can read the volume, so credentials are never recorded (use --profile and the TLS options instead).`,
      );
    }
    dropped = [...new Set(url.searchParams.keys())];
    const path = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
    out = parsed.kind === 'barbican' ? `barbican+${url.protocol}//${url.host}${path}` : `kmip://${url.host}`;
  }
  const problem = tokenUriProblem(out);
  if (problem) throw new InvalidArgumentError(`--key-manager: the URI ${problem}.`);
  return { uri: out, dropped };
}
