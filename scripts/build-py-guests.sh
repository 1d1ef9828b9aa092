#!/usr/bin/env bash
# Builds every Python tenant example into target/guests/py/<name>.wasm.
#
# A Python guest is a directory tenant-examples/<name>/ holding app.py (and no
# Cargo.toml). It is built with componentize-py against world
# lodge:platform/tenant (wit/), with the SDK in sdk/python on its path.
#
# componentize-py (pinned, with hashes, in sdk/python/requirements-build.txt)
# is installed into target/py-tools on first use. A guest whose .wasm is newer
# than its sources, the SDK (sdk/python/lodge), the WIT files, the pins and
# this script is not rebuilt. Works from any directory; safe to run
# concurrently (a lock). Exits non-zero, saying why, on any failure.
#
# Environment: PYTHON (default python3.11, then python3) runs pip and
# componentize-py (needs Python >= 3.9 with pip). LODGE_PY_TOOLS overrides
# where the tools go.
set -euo pipefail

die() { echo "build-py-guests: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXAMPLES="$ROOT/tenant-examples"
SDK="$ROOT/sdk/python"
WIT="$ROOT/wit"
PINS="$SDK/requirements-build.txt"
OUT="$ROOT/target/guests/py"
TOOLS="${LODGE_PY_TOOLS:-$ROOT/target/py-tools}"
SELF="$ROOT/scripts/build-py-guests.sh"

if [[ -n "${PYTHON:-}" ]]; then
    command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not a command"
elif command -v python3.11 >/dev/null; then
    PYTHON=python3.11
elif command -v python3 >/dev/null; then
    PYTHON=python3
else
    die "no python3 on PATH (Python >= 3.9 with pip is needed to run componentize-py); set PYTHON=/path/to/python3"
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); componentize-py needs Python >= 3.9 (set PYTHON=…)"

mkdir -p "$OUT" "$ROOT/target"

# One build at a time (cargo test may start several test binaries at once).
if command -v flock >/dev/null; then
    exec 9>"$ROOT/target/.build-py-guests.lock"
    flock 9
fi

# --- the tools -----------------------------------------------------------------
PIN_SUM="$(cksum <"$PINS" | cut -d' ' -f1)"
STAMP="$TOOLS/.installed-$PIN_SUM"
if [[ ! -f "$STAMP" ]]; then
    echo "build-py-guests: installing $(grep -m1 -o 'componentize-py==[^ ]*' "$PINS") into $TOOLS" >&2
    "$PYTHON" -m pip --version >/dev/null 2>&1 \
        || die "$PYTHON has no pip (install it, e.g. $PYTHON -m ensurepip, or set PYTHON=…)"
    rm -rf "$TOOLS.tmp"
    if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input \
        --require-hashes --only-binary=:all: --target "$TOOLS.tmp" -r "$PINS" >&2; then
        rm -rf "$TOOLS.tmp"
        die "pip could not install componentize-py (pins in $PINS); is PyPI reachable?"
    fi
    rm -rf "$TOOLS"
    mv "$TOOLS.tmp" "$TOOLS"
    touch "$STAMP"
fi

componentize_py() {
    PYTHONPATH="$TOOLS" "$PYTHON" -c \
        'import sys, componentize_py; sys.argv[0] = "componentize-py"; sys.exit(componentize_py.script())' "$@"
}

# --- the guests ----------------------------------------------------------------
shopt -s nullglob
built=0
found=0
for dir in "$EXAMPLES"/*/; do
    dir="${dir%/}"
    [[ -f "$dir/app.py" && ! -f "$dir/Cargo.toml" ]] || continue
    found=$((found + 1))
    name="$(basename "$dir")"
    wasm="$OUT/$name.wasm"
    if [[ -f "$wasm" ]]; then
        newer="$(find "$dir" "$SDK/lodge" "$WIT" "$SELF" "$STAMP" -newer "$wasm" -type f \
            -not -path '*/__pycache__/*' -not -name '*.md' -print -quit)"
        if [[ -z "$newer" ]]; then
            continue
        fi
    fi
    echo "build-py-guests: building $name -> ${wasm#"$ROOT"/}" >&2
    start=$SECONDS
    rm -f "$wasm.tmp"
    if ! (cd "$dir" && componentize_py -q -d "$WIT" -w lodge:platform/tenant \
        componentize -p "$dir" -p "$SDK" -o "$wasm.tmp" app) >&2; then
        rm -f "$wasm.tmp"
        die "componentize-py failed for $name (tenant-examples/$name/app.py); see above"
    fi
    mv -f "$wasm.tmp" "$wasm"
    echo "build-py-guests: built $name ($(( $(wc -c <"$wasm") / 1024 )) KiB, $((SECONDS - start)) s)" >&2
    built=$((built + 1))
done
[[ $found -gt 0 ]] || die "no Python guests (tenant-examples/*/app.py) found"
echo "build-py-guests: $found guest(s), $built built, $((found - built)) up to date in ${OUT#"$ROOT"/}" >&2
