#!/usr/bin/env node
// Build the `token_mint` example plugin into an Outpost auth component.
//
//   npm ci                          # once, in this folder
//   node build.mjs <out.wasm>       # from any directory
//
// The component is built against the `module` world of `wit/outpost.wit` (three folders
// up). StarlingMonkey's default features are trimmed so the component imports nothing
// Outpost refuses:
//   - `http` and `fetch-event` would pull in wasi:http (the world has its own
//     `outpost:auth/http` instead);
//   - `stdio` would keep wasi:filesystem (the WASI preview1 adapter reaches stdio through
//     preopens); with it off, console.* and uncaught-error output go nowhere — use
//     `outpost:auth/log` instead;
//   - `random` and `clocks` stay: wasi:random and wasi:clocks are allowed.

import { existsSync } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const witPath = resolve(here, '../../../wit');
const sourcePath = resolve(here, 'token_mint.js');
const DISABLED_FEATURES = ['http', 'fetch-event', 'stdio'];

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

const outArg = process.argv[2];
if (!outArg || process.argv.length > 3 || outArg === '-h' || outArg === '--help') {
  fail('usage: node build.mjs <out.wasm>');
}
const outPath = resolve(process.cwd(), outArg);

if (!existsSync(resolve(here, 'node_modules/@bytecodealliance/componentize-js'))) {
  fail(`node_modules is missing: run \`npm ci\` in ${here} first.`);
}
if (!existsSync(resolve(witPath, 'outpost.wit'))) {
  fail(`WIT not found at ${witPath}/outpost.wit`);
}

const { componentize } = await import('@bytecodealliance/componentize-js');

// componentize-js maps the source's folder into the engine relative to the current
// directory, and gets the path wrong for some working directories (e.g. `/`): build
// from this folder, whatever the caller's cwd (the output path is already absolute).
process.chdir(here);

const started = performance.now();
let component;
try {
  ({ component } = await componentize({
    sourcePath,
    witPath,
    worldName: 'module',
    disableFeatures: DISABLED_FEATURES,
  }));
} catch (err) {
  fail(`componentize failed:\n${err?.stack ?? err}`);
}

await mkdir(dirname(outPath), { recursive: true });
await writeFile(outPath, component);
const { size } = await stat(outPath);
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(`built ${outPath} (${(size / 1024 / 1024).toFixed(1)} MiB) in ${seconds}s`);
