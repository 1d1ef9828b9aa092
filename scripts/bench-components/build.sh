#!/usr/bin/env bash
# Builds the large real-world components `lodge bench` measures deploys with:
# a Python app (componentize-py, ~18 MB) and a JavaScript app (componentize-js,
# ~13 MB), both plain `wasi:http/proxy`. Toolchains are installed at pinned
# versions under target/bench-components/ (needs python3 with venv, and node/npm).
#
#   scripts/bench-components/build.sh   # → target/bench-components/{python,javascript}.wasm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/bench-components"
mkdir -p "$out"

# Python: componentize-py 0.25.1 against the repo's own wasi:http WIT.
if [ ! -x "$out/venv/bin/componentize-py" ]; then
    python3 -m venv "$out/venv"
    "$out/venv/bin/pip" install -q componentize-py==0.25.1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/python/app.py" "$work/"
(cd "$work" && "$out/venv/bin/componentize-py" -d "$repo/wit" -w wasi:http/proxy@0.2.12 bindings . \
    && "$out/venv/bin/componentize-py" -d "$repo/wit" -w wasi:http/proxy@0.2.12 componentize app -o "$out/python.wasm")

# JavaScript: componentize-js 0.23.0 (StarlingMonkey exports wasi:http@0.2.10,
# so the WIT is given at that version).
if [ ! -x "$out/node/node_modules/.bin/componentize-js" ]; then
    mkdir -p "$out/node"
    (cd "$out/node" && npm init -y >/dev/null && npm install --silent @bytecodealliance/componentize-js@0.23.0)
fi
mkdir -p "$work/js/wit"
cp -r "$repo/wit/deps" "$work/js/wit/"
find "$work/js/wit/deps" -name '*.wit' -exec sed -i 's/0\.2\.12/0.2.10/g' {} +
printf 'package local:hello;\nworld hello {\n  export wasi:http/incoming-handler@0.2.10;\n}\n' > "$work/js/wit/world.wit"
"$out/node/node_modules/.bin/componentize-js" "$here/javascript/app.js" --wit "$work/js/wit" -n hello -o "$out/javascript.wasm"

ls -l "$out"/*.wasm
