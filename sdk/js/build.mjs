#!/usr/bin/env node
// Builds one JavaScript tenant into a Lodge component with componentize-js.
//
//   node sdk/js/build.mjs <guest-dir> <out.wasm> [--entry app.js]
//
// 1. WIT: componentize-js embeds StarlingMonkey, whose wasi:http exports and
//    imports are at one fixed WASI 0.2.x (0.2.10 in componentize-js 0.23.0).
//    Lodge's wit/ vendors WASI at another 0.2.x (0.2.12), and componentize-js
//    looks the incoming handler up by its exact versioned name, so targeting
//    wit/ as is fails ("failed to find export of interface
//    `wasi:http/incoming-handler@0.2.12`"). We generate a copy of wit/ under
//    target/js-wit/ with the WASI packages at the engine's version; wasmtime
//    links any 0.2.x, so the component runs on Lodge unchanged. wit/ itself is
//    never touched.
// 2. Sources: the guest directory is staged under target/js-build/<name>/ with
//    the SDK beside it, and `'@lodge/sdk'` imports are pointed at it
//    (StarlingMonkey resolves relative module paths only).
// 3. componentize() against world lodge:platform/tenant.

import { componentize } from '@bytecodealliance/componentize-js';
import {
  cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const SDK = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(SDK, '../..');
const WORLD = 'lodge:platform/tenant';
const SPECIFIER = '@lodge/sdk';

function die(message) {
  console.error(`build-js: ${message}`);
  process.exit(1);
}

const args = process.argv.slice(2);
let entry = 'app.js';
const positional = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--entry') entry = args[++i];
  else positional.push(args[i]);
}
if (positional.length !== 2) die('usage: build.mjs <guest-dir> <out.wasm> [--entry app.js]');
const guest = resolve(positional[0]);
const out = resolve(positional[1]);
const name = basename(guest);
if (!existsSync(join(guest, entry))) die(`${guest} has no ${entry}`);

// --- 1. the WIT, at the engine's WASI version ---------------------------------

/** The wasi:http version the StarlingMonkey engine of this componentize-js speaks. */
function engineWasiVersion() {
  // npm ci installs the pinned componentize-js into sdk/js/node_modules.
  const engine = join(SDK, 'node_modules', '@bytecodealliance', 'componentize-js', 'lib', 'starlingmonkey_embedding.wasm');
  const text = readFileSync(engine).toString('latin1');
  const found = /wasi:http\/incoming-handler@(0\.2\.\d+)/.exec(text);
  if (!found) die(`cannot tell the wasi:http version of ${engine}`);
  return found[1];
}

/** The WASI version vendored in wit/deps (from wasi:http's package line). */
function vendoredWasiVersion(wit) {
  const http = readFileSync(join(wit, 'deps', 'http', 'http.wit'), 'utf8');
  const found = /package\s+wasi:http@(0\.2\.\d+)\s*;/.exec(http);
  if (!found) die('cannot find `package wasi:http@0.2.x;` in wit/deps/http/http.wit');
  return found[1];
}

const patch = (v) => Number(v.split('.')[2]);

function* witFiles(dir) {
  for (const entryName of readdirSync(dir)) {
    const path = join(dir, entryName);
    if (statSync(path).isDirectory()) yield* witFiles(path);
    else if (path.endsWith('.wit')) yield path;
  }
}

function generateWit() {
  const source = join(ROOT, 'wit');
  const target = join(ROOT, 'target', 'js-wit');
  const want = engineWasiVersion();
  const have = vendoredWasiVersion(source);
  rmSync(`${target}.tmp`, { recursive: true, force: true });
  cpSync(source, `${target}.tmp`, { recursive: true });
  if (want !== have) {
    const versioned = new RegExp(`(wasi:[a-z-]+(?:/[a-z-]+)?)@${have.replaceAll('.', '\\.')}\\b`, 'g');
    for (const file of witFiles(`${target}.tmp`)) {
      let text = readFileSync(file, 'utf8');
      text = text.replace(versioned, `$1@${want}`);
      // A gate newer than the package it is in would not parse.
      text = text.replace(/@since\(version\s*=\s*(0\.2\.\d+)\)/g, (all, v) =>
        patch(v) > patch(want) ? `@since(version = ${want})` : all,
      );
      writeFileSync(file, text);
    }
  }
  rmSync(target, { recursive: true, force: true });
  renameSync(`${target}.tmp`, target);
  return { target, want, have };
}

// --- 2. the sources -----------------------------------------------------------

function stage() {
  const dir = join(ROOT, 'target', 'js-build', name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  cpSync(guest, dir, {
    recursive: true,
    filter: (src) => !src.split(sep).includes('node_modules'),
  });
  const sdkDir = join(dir, 'lodge-sdk');
  cpSync(join(SDK, 'src'), sdkDir, { recursive: true, filter: (src) => !src.endsWith('.d.ts') });
  const pattern = new RegExp(`(from\\s*|import\\s*\\(?\\s*)(['"])${SPECIFIER.replace('/', '\\/')}\\2`, 'g');
  const rewrite = (folder) => {
    for (const entryName of readdirSync(folder)) {
      const path = join(folder, entryName);
      if (path === sdkDir) continue;
      if (statSync(path).isDirectory()) {
        rewrite(path);
      } else if (/\.m?js$/.test(path)) {
        let rel = relative(dirname(path), join(sdkDir, 'index.js')).split(sep).join('/');
        if (!rel.startsWith('./') && !rel.startsWith('../')) rel = `./${rel}`;
        const text = readFileSync(path, 'utf8');
        const next = text.replace(pattern, (_, lead, quote) => `${lead}${quote}${rel}${quote}`);
        if (next !== text) writeFileSync(path, next);
      }
    }
  };
  rewrite(dir);
  return dir;
}

// --- 3. componentize ----------------------------------------------------------

const started = Date.now();
const { target: witPath, want, have } = generateWit();
const staged = stage();
process.chdir(staged); // componentize-js maps the cwd as the module root
let result;
try {
  result = await componentize({
    sourcePath: join(staged, entry),
    witPath,
    worldName: WORLD,
  });
} catch (e) {
  die(`componentize-js failed for ${name}: ${e && e.stack ? e.stack : e}`);
}
mkdirSync(dirname(out), { recursive: true });
writeFileSync(`${out}.tmp`, result.component);
renameSync(`${out}.tmp`, out);
const note = want === have ? '' : `, WASI ${have} -> ${want} for StarlingMonkey`;
console.error(
  `build-js: ${name}: ${(result.component.length / 1048576).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s${note}`,
);
