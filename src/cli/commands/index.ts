/** Every command group of the CLI, in the order `--help` lists them. */
import type { Command } from 'commander';
import { register as registerInfo } from './info.js';
import { register as registerConvert } from './convert.js';
import { register as registerKey } from './key.js';
import { register as registerImage } from './image.js';
import { register as registerLuks } from './luks.js';
import { register as registerAttach } from './attach.js';

export const commandModules: Array<(program: Command) => void> = [registerInfo, registerLuks, registerConvert, registerKey, registerImage, registerAttach];
