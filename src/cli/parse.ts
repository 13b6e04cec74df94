/** Parsers for CLI option values; each throws `InvalidArgumentError` with the option's name. */
import { InvalidArgumentError } from '../errors.js';

const SIZE_SUFFIX: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4, P: 1024 ** 5 };

/** `10G`, `512M`, `4096`, `1.5T`, `16KiB` -> bytes (binary units, as cryptsetup and qemu-img). */
export function parseSize(text: string, option = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new InvalidArgumentError(`--${option}: '${text}' is not a size (use e.g. 4096, 512K, 10M, 2G, 1T).`);
  const value = Number(m[1]) * SIZE_SUFFIX[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(Math.round(value)) || value < 0) throw new InvalidArgumentError(`--${option}: '${text}' is out of range.`);
  if (!Number.isInteger(value)) throw new InvalidArgumentError(`--${option}: '${text}' is not a whole number of bytes.`);
  return value;
}

export function parseInteger(text: string, option: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new InvalidArgumentError(`--${option}: '${text}' is not a whole number.`);
  const value = Number(text);
  if (value < min || value > max) throw new InvalidArgumentError(`--${option}: ${value} is outside ${min}..${max}.`);
  return value;
}

export function parseChoice<T extends string>(text: string, option: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(text)) {
    throw new InvalidArgumentError(`--${option}: '${text}' is not one of ${choices.join(', ')}.`);
  }
  return text as T;
}
