#!/usr/bin/env bash
# The control plane's contract, checked by tools nobody here wrote:
#   1. openapi-spec-validator on /api-docs/openapi.json;
#   2. schemathesis (checks not_a_server_error, status_code_conformance,
#      content_type_conformance) with a tenant key, an organization key and the
#      admin token, each with a fresh organization;
#   3. promtool check metrics on /metrics;
#   4. a client generated from the document (openapi-python-client) driving one
#      tenant's lifecycle (lifecycle.py beside this file).
#
#   scripts/contract/check.sh              # starts $LODGE_BIN (default target/debug/lodge)
#                                          # on a free port with a temporary data dir
#   scripts/contract/check.sh URL TOKEN    # checks a running host; TOKEN is its admin token
#
# Needs python3 (the pinned tools in requirements.txt go into target/contract-venv
# on first use, again when the pins change) and promtool (Debian: apt-get
# install prometheus). The lifecycle deploys CONTRACT_WASM, by default the hello
# guest that `cargo test` builds.
# Environment: LODGE_BIN; CONTRACT_WASM; CONTRACT_MAX_EXAMPLES (per operation and
# phase, default 50); CONTRACT_SEED (default 1, `random` for a new one each run);
# CONTRACT_SCHEMA (a file to check instead of the host's document, e.g. to try
# an edit of it before a rebuild).
# Prints each tool's findings and exits non-zero on any; its last line is
# "contract: N passed, N failed". Logs and reports are in target/contract/run/.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

here=$root/scripts/contract
work=$root/target/contract/run
venv=target/contract-venv
examples=${CONTRACT_MAX_EXAMPLES:-50}
seed=${CONTRACT_SEED:-1}
wasm=${CONTRACT_WASM:-target/guests/wasm32-wasip2/guest/hello.wasm}
checks=not_a_server_error,status_code_conformance,content_type_conformance
rm -rf "$work"
mkdir -p "$work"

die() {
    echo "contract: $*" >&2
    echo "contract: 0 passed, 1 failed"
    exit 1
}

# The pinned tools.
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
    echo "== installing $here/requirements.txt into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" &&
        echo "$want" >"$venv/.requirements" ||
        die "could not install $here/requirements.txt"
fi
export PATH="$root/$venv/bin:$PATH"
command -v promtool >/dev/null || die "promtool is missing (Debian: apt-get install -y prometheus)"

# The host.
if [ $# -ge 2 ]; then
    url=${1%/}
    admin=$2
else
    bin=${LODGE_BIN:-target/debug/lodge}
    [ -x "$bin" ] || die "no $bin: build it (cargo build -p lodge-host) or set LODGE_BIN"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    data=$(mktemp -d)
    admin=sk_admin_contract-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    LODGE_ADMIN_TOKEN=$admin "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$work/lodge.log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
    url=http://127.0.0.1:$port
    for _ in $(seq 300); do
        curl -sf "$url/healthz" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "$bin exited at start: $(tail -5 "$work/lodge.log")"
        sleep 0.1
    done
    curl -sf "$url/healthz" >/dev/null || die "$bin did not answer /healthz within 30 s"
fi
echo "== host $url"

passed=0
failed=0
step() { # NAME COMMAND...: runs one check and counts it
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "ok: $name"
    else
        failed=$((failed + 1))
        echo "FAILED: $name"
    fi
}

# A value out of JSON on stdin: `field org.id`.
field() {
    python3 -c 'import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[key]
print(value)' "$1"
}

api() { # METHOD PATH TOKEN [JSON BODY]
    curl -sSf -X "$1" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' \
        ${4:+--data "$4"} "$url/api/v1$2"
}

doc=$work/openapi.json
if [ -n "${CONTRACT_SCHEMA:-}" ]; then
    cp "$CONTRACT_SCHEMA" "$doc"
else
    curl -sSf "$url/api-docs/openapi.json" -o "$doc" || die "no OpenAPI document at $url/api-docs/openapi.json"
fi

step "openapi-spec-validator" openapi-spec-validator "$doc"

# Makes the run labelled $1 send $3 as the `{id}` of the paths matching $2 (a
# key's own tenant or organization, which schemathesis cannot discover).
own_id() { # LABEL PATH_REGEX ID
    printf '[[operations]]\ninclude-path-regex = %s\n[operations.parameters]\n"path.id" = "%s"\n' \
        "'$2'" "$3" >"$work/schemathesis-$1.toml"
}

schemathesis() { # LABEL TOKEN [OPERATION ID TO LEAVE OUT]...
    local label=$1 token=$2 report=$work/schemathesis-$1.txt
    shift 2
    local leave_out=() config=()
    for operation in "$@"; do leave_out+=(--exclude-operation-id "$operation"); done
    if [ -f "$work/schemathesis-$label.toml" ]; then config=(--config-file "$work/schemathesis-$label.toml"); fi
    # From $work: schemathesis keeps a cache of what it found in ./.schemathesis.
    (cd "$work" && PYTHONPATH=$here SCHEMATHESIS_HOOKS=schemathesis_hooks st "${config[@]}" run "$doc" --url "$url" \
        --header "Authorization: Bearer $token" --checks "$checks" \
        --max-examples "$examples" --seed "$seed" --generation-database none \
        --request-timeout 20 --no-color "${leave_out[@]}" >"$report" 2>&1)
    local status=$?
    if [ "$status" -ne 0 ]; then
        sed -n '/^=* \(FAILURES\|ERRORS\) =*$/,$p' "$report"
        return "$status"
    fi
    tail -3 "$report"
    # A key the run revoked would have left most of it at 401: say so.
    if ! api GET /plans "$token" >/dev/null; then
        echo "the $label key stopped working during the run"
        return 1
    fi
}

if [ "$seed" = random ]; then seed=$RANDOM$RANDOM; fi
echo "== schemathesis seed $seed, at most $examples examples per operation"

# Each role gets its own organization, so one run cannot revoke another's key.
# A run leaves out the calls that would end its own key: a tenant key rotating
# its keys or deleting its tenant, an organization key rotating or revoking its
# own; the admin run makes them.
org_a=$(api POST /orgs "$admin" '{"name": "Contract tenant role"}') || die "cannot create an organization"
tenant=$(api POST /tenant/spawn "$(field apiKey <<<"$org_a")" '{"name": "contract-tenant"}') ||
    die "cannot spawn a tenant"
own_id tenant '^/api/v1/tenant/\{id\}' "$(field tenant.id <<<"$tenant")"
step "schemathesis as a tenant key" \
    schemathesis tenant "$(field tenant.apiKey <<<"$tenant")" rotate_key delete_tenant
org_b=$(api POST /orgs "$admin" '{"name": "Contract org role"}') || die "cannot create an organization"
own_id org '^/api/v1/orgs?/\{id\}' "$(field org.id <<<"$org_b")"
step "schemathesis as an organization key" \
    schemathesis org "$(field apiKey <<<"$org_b")" rotate_org_keys revoke_org_keys
step "schemathesis as the admin token" schemathesis admin "$admin"

promtool_check() {
    curl -sSf -H "Authorization: Bearer $admin" "$url/metrics" -o "$work/metrics.txt" &&
        promtool check metrics <"$work/metrics.txt"
}
step "promtool check metrics" promtool_check

generated_client_lifecycle() {
    [ -f "$wasm" ] || {
        echo "no component at $wasm: run cargo test (it builds the guests) or set CONTRACT_WASM"
        return 1
    }
    local out=$work/client
    mkdir -p "$out"
    openapi-python-client generate --path "$doc" --meta none --output-path "$out/lodge_client" \
        --config "$here/openapi-python-client.yaml" >"$work/generate.txt" 2>&1 || {
        cat "$work/generate.txt"
        return 1
    }
    # The generator has no model for application/wasm; it takes the component
    # as application/octet-stream, which the document lists too. Any other
    # warning is a finding.
    if grep -v -e '^Generating' -e 'Unsupported content type application/wasm' \
        -e '^WARNING parsing PUT /api/v1/tenant/{id}/component within deployments' \
        -e 'Client was generated, but some pieces may be missing' \
        -e '^If you believe this was a mistake' "$work/generate.txt" |
        awk '/^[[:space:]]*[{}"]/ {next} NF' | grep -q .; then
        cat "$work/generate.txt"
        return 1
    fi
    python "$here/lifecycle.py" "$url" "$admin" "$wasm" "$out"
}
step "generated client (openapi-python-client) drives a tenant's lifecycle" generated_client_lifecycle

echo "contract: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
