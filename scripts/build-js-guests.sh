#!/usr/bin/env bash
# Builds every JavaScript tenant example into target/guests/js/<name>.wasm.
#
# A JavaScript guest is a directory tenant-examples/<name>/ holding app.js (and
# no Cargo.toml). It is built with componentize-js against world
# lodge:platform/tenant, with the SDK in sdk/js (imported as '@lodge/sdk'), by
# sdk/js/build.mjs (which explains the WASI version it targets).
#
# The tools (componentize-js, pinned exactly in sdk/js/package.json and
# package-lock.json) are installed with `npm ci` into sdk/js/node_modules on
# first use and again when the lock file changes. A guest whose .wasm is newer
# than its sources, the SDK, the WIT files, the lock file and this script is not
# rebuilt. Works from any directory; safe to run concurrently (a lock).
#
# Environment: NODE (default node) and NPM (default npm); Node.js >= 20.
set -euo pipefail

die() { echo "build-js-guests: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXAMPLES="$ROOT/tenant-examples"
SDK="$ROOT/sdk/js"
WIT="$ROOT/wit"
LOCK="$SDK/package-lock.json"
OUT="$ROOT/target/guests/js"
SELF="$ROOT/scripts/build-js-guests.sh"
NODE="${NODE:-node}"
NPM="${NPM:-npm}"

command -v "$NODE" >/dev/null || die "no '$NODE' on PATH: Node.js >= 20 is needed to run componentize-js (set NODE=/path/to/node)"
"$NODE" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "$NODE is $("$NODE" --version); componentize-js needs Node.js >= 20 (set NODE=…)"
[[ -f "$LOCK" ]] || die "missing $LOCK"

mkdir -p "$OUT" "$ROOT/target"

# One build at a time (cargo test may start several test binaries at once).
if command -v flock >/dev/null; then
    exec 9>"$ROOT/target/.build-js-guests.lock"
    flock 9
fi

# --- the tools -----------------------------------------------------------------
LOCK_SUM="$(cksum <"$LOCK" | cut -d' ' -f1)"
STAMP="$SDK/node_modules/.lodge-installed-$LOCK_SUM"
if [[ ! -f "$STAMP" || ! -d "$SDK/node_modules/@bytecodealliance/componentize-js" ]]; then
    command -v "$NPM" >/dev/null || die "no '$NPM' on PATH: npm is needed to install componentize-js (set NPM=…)"
    echo "build-js-guests: installing the pinned tools (npm ci) into ${SDK#"$ROOT"/}/node_modules" >&2
    if ! (cd "$SDK" && "$NPM" ci --no-audit --no-fund --loglevel=error) >&2; then
        die "npm ci failed in sdk/js (pins in sdk/js/package-lock.json); is the npm registry reachable?"
    fi
    touch "$STAMP"
fi

# --- the guests ----------------------------------------------------------------
shopt -s nullglob
built=0
found=0
for dir in "$EXAMPLES"/*/; do
    dir="${dir%/}"
    [[ -f "$dir/app.js" && ! -f "$dir/Cargo.toml" ]] || continue
    found=$((found + 1))
    name="$(basename "$dir")"
    wasm="$OUT/$name.wasm"
    if [[ -f "$wasm" ]]; then
        newer="$(find "$dir" "$SDK/src" "$SDK/build.mjs" "$SDK/package.json" "$LOCK" "$WIT" "$SELF" \
            -newer "$wasm" -type f -not -path '*/node_modules/*' -print -quit)"
        if [[ -z "$newer" ]]; then
            continue
        fi
    fi
    echo "build-js-guests: building $name -> ${wasm#"$ROOT"/}" >&2
    start=$SECONDS
    if ! "$NODE" "$SDK/build.mjs" "$dir" "$wasm" >&2; then
        rm -f "$wasm.tmp"
        die "componentize-js failed for $name (tenant-examples/$name/app.js); see above"
    fi
    [[ -s "$wasm" ]] || die "componentize-js wrote no component for $name"
    echo "build-js-guests: built $name ($(( $(wc -c <"$wasm") / 1024 )) KiB, $((SECONDS - start)) s)" >&2
    built=$((built + 1))
done
[[ $found -gt 0 ]] || die "no JavaScript guests (tenant-examples/*/app.js) found"
echo "build-js-guests: $found guest(s), $built built, $((found - built)) up to date in ${OUT#"$ROOT"/}" >&2
