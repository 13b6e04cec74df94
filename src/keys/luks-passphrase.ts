/**
 * The LUKS passphrase a managed object stands for, as os-brick derives it
 * (os_brick/encryptors/luks.py `_get_passphrase`): a symmetric key becomes the lowercase
 * hex of its bytes, two digits per byte so leading zero bytes are kept (os-brick bug
 * 1633518 dropped them once); a passphrase object is its bytes unchanged.
 */
import { InvalidObjectError } from '../errors.js';
import { Passphrase } from '../secret.js';
import type { ManagedObject } from './key-manager.js';

/**
 * @example
 * const obj = await km.get(caller, id);
 * const pass = passphraseForLuks(obj); // key 00 0f a0 -> "000fa0"
 * obj.secret.wipe();
 * // ... unlock, then pass.wipe()
 */
export function passphraseForLuks(object: ManagedObject): Passphrase {
  if (object.type === 'symmetric') {
    const bytes = object.secret.expose();
    const out = new Uint8Array(bytes.length * 2);
    const digits = '0123456789abcdef';
    for (let i = 0; i < bytes.length; i++) {
      out[2 * i] = digits.charCodeAt(bytes[i]! >> 4);
      out[2 * i + 1] = digits.charCodeAt(bytes[i]! & 15);
    }
    return new Passphrase(out);
  }
  if (object.type === 'passphrase') return Passphrase.copyOf(object.secret.expose());
  throw new InvalidObjectError(`A ${object.type} object cannot serve as a LUKS passphrase (symmetric or passphrase expected).`);
}
