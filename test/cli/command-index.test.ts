import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { COMMAND_GROUPS, commandRegistrars } from '../../src/cli/commands/index.js';
import { buildProgram } from '../../src/cli/main.js';

test('each command group registers exactly the commands the index names for it', async () => {
  for (const group of COMMAND_GROUPS) {
    const program = new Command('brickcrypt');
    (await group.load()).register(program);
    assert.deepEqual(program.commands.map((c) => c.name()), [...group.commands]);
  }
  const all = await buildProgram();
  assert.deepEqual(all.commands.map((c) => c.name()), COMMAND_GROUPS.flatMap((g) => g.commands), 'help lists every group, in order');
});

test('a run that names a command loads only its group; help, version and unknown commands load all', async () => {
  assert.equal((await commandRegistrars(['convert', 'a', 'b', '--dst-format', 'raw'])).length, 1);
  assert.deepEqual((await buildProgram(['detach', '--pid-file', 'x'])).commands.map((c) => c.name()), ['attach', 'detach']);
  for (const args of [[], ['--help'], ['--version'], ['help', 'convert'], ['no-such-command']]) {
    assert.equal((await commandRegistrars(args)).length, COMMAND_GROUPS.length, JSON.stringify(args));
  }
});
