#!/usr/bin/env bash
# Drives the web console in headless Chromium against a real lodge binary.
#   tests/browser/run.sh                 # uses target/debug/lodge
#   LODGE_BIN=target/release/lodge tests/browser/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LODGE_BIN=${LODGE_BIN:-target/debug/lodge}
VENV=target/browser-venv

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt-get update && apt-get install -y chromium chromium-driver
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tests/browser/requirements.txt

for g in hello hostile; do
  [ -f "target/guests/wasm32-wasip2/guest/$g.wasm" ] || { echo "missing target/guests/wasm32-wasip2/guest/$g.wasm (build the guests first)" >&2; exit 1; }
done

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
LOG="$DATA/lodge.log"
export LODGE_ADMIN_TOKEN=sk_admin_test-token-0123456789abcdef
"$LODGE_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA/data" >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done

LODGE_URL="http://127.0.0.1:$PORT" LODGE_ROOT="$ROOT" \
  "$VENV/bin/python" tests/browser/console_test.py "$@" || { echo "--- lodge log (tail)" >&2; tail -40 "$LOG" >&2; exit 1; }
