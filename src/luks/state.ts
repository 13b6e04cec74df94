/** What the engine knows of a LUKS header once read: the LUKS1 header, or both LUKS2 copies' state. */
import type { Luks1Header } from '../formats/luks1/header.js';
import type { Luks2HeaderState } from './luks2-io.js';

export type LuksHeaderState = { version: 1; hdr: Luks1Header } | { version: 2; h2: Luks2HeaderState };
