#!/usr/bin/env bash
# Checks deploy/prometheus and deploy/grafana against promtool and a running host:
#   (a) promtool check rules deploy/prometheus/lodge-alerts.yml
#   (b) promtool test rules deploy/prometheus/lodge-alerts.test.yml
#   (c) every metric name (and label) used by the dashboard's and the rules'
#       expressions is exported by `GET /metrics` of a real Lodge host, started
#       here from $LODGE_BIN on a temporary data dir and sent a few requests
#       (successes, a 413 over the body limit, a guest trap, a flood of log lines)
#       so that the lazily created series (limits hit, guest failures, dropped
#       log lines) exist.
# Exits non-zero with the list of what failed.
#
#   LODGE_BIN=target/release/lodge scripts/check-deploy.sh
#
# Environment: LODGE_BIN (default target/debug/lodge), GUEST_DIR (default
# target/guests/wasm32-wasip2/guest, needs hello.wasm and hostile.wasm, built
# by `cargo test` / `make guests`). promtool comes from Debian's `prometheus`
# package; it is installed when missing and the script runs as root.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
RULES=deploy/prometheus/lodge-alerts.yml
RULE_TESTS=deploy/prometheus/lodge-alerts.test.yml
DASHBOARD=deploy/grafana/lodge-dashboard.json
LODGE_BIN=${LODGE_BIN:-target/debug/lodge}
GUEST_DIR=${GUEST_DIR:-target/guests/wasm32-wasip2/guest}
TOKEN=sk_admin_test-token-0123456789abcdef

failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
step() { printf '\n== %s\n' "$*"; }

# ---------------------------------------------------------------- promtool
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing promtool (Debian package prometheus)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
    fi
    command -v promtool >/dev/null || {
        echo "promtool is missing: install Debian's 'prometheus' package (apt-get install prometheus) or put promtool on PATH" >&2
        exit 2
    }
fi
promtool --version 2>&1 | head -1

step "(a) promtool check rules $RULES"
promtool check rules "$RULES" || fail "promtool check rules $RULES"

step "(b) promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS" || fail "promtool test rules $RULE_TESTS"

step "(a') the dashboard's PromQL parses (promtool check rules on its expressions as recording rules)"
WORK_PARSE=$(mktemp -d)
if python3 - "$DASHBOARD" >"$WORK_PARSE/dashboard-rules.yml" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
# Grafana's variables as a dashboard showing everything would expand them.
subst = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h", "job": "lodge",
         "instance": ".*", "tenant": ".*"}
def expand(expr):
    return re.sub(r'\$\{?(\w+)\}?', lambda m: subst[m.group(1)], expr)
rules = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                rules.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": expand(t["expr"])})
        walk(p.get("panels", []))
walk(dash["panels"])
for v in dash["templating"]["list"]:
    if v.get("type") == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        inner = re.fullmatch(r'\s*label_values\((.*),\s*\w+\s*\)\s*', q).group(1)
        rules.append({"record": f"dashboard:variable_{v['name']}", "expr": expand(inner)})
print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
PY
then
    promtool check rules "$WORK_PARSE/dashboard-rules.yml" || fail "PromQL of $DASHBOARD does not parse (see above)"
else
    fail "reading $DASHBOARD"
fi
rm -rf "$WORK_PARSE"

# ---------------------------------------------------------------- a live host
step "(c) metric names against a running host ($LODGE_BIN)"
have_inputs=1
for f in "$LODGE_BIN" "$GUEST_DIR/hello.wasm" "$GUEST_DIR/hostile.wasm"; do
    [ -e "$f" ] || { have_inputs=; fail "missing $f (build it first: cargo build -p lodge-host; cargo test builds the guests)"; }
done
[ -e "$DASHBOARD" ] || fail "missing $DASHBOARD"

WORK=$(mktemp -d)
LODGE_PID=
cleanup() {
    if [ -n "$LODGE_PID" ] && kill -0 "$LODGE_PID" 2>/dev/null; then
        kill "$LODGE_PID" 2>/dev/null
        wait "$LODGE_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -n "$have_inputs" ]; then
    PORT=$(free_port)
    SCRAPE_PORT=$(free_port)
    BASE=http://127.0.0.1:$PORT
    # A small body limit so that a 4 KiB POST is refused (limits hit); nothing
    # of the caller's environment (database, config, listen addresses) leaks in.
    env -u DATABASE_URL -u LODGE_CONFIG -u LODGE_LISTEN -u LODGE_DATA_DIR \
        -u LODGE_METRICS_LISTEN -u LODGE_ADMIN_TOKEN_FILE -u LODGE_BASE_DOMAIN \
        LODGE_ADMIN_TOKEN=$TOKEN LODGE_LOG=warn \
        LODGE__PLANS__DEFAULT__MAX_REQUEST_BODY=1024 \
        "$LODGE_BIN" serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$SCRAPE_PORT" \
        --data-dir "$WORK/data" \
        --app "hello=$GUEST_DIR/hello.wasm" --app "hostile=$GUEST_DIR/hostile.wasm" \
        >"$WORK/lodge.log" 2>&1 &
    LODGE_PID=$!
    up=
    for _ in $(seq 1 600); do  # up to 5 min: a debug build compiles slowly
        if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then up=1; break; fi
        kill -0 "$LODGE_PID" 2>/dev/null || break
        sleep 0.5
    done
    if [ -z "$up" ]; then
        fail "the host did not start; its log:"
        tail -20 "$WORK/lodge.log" >&2
    else
        echo "host $LODGE_PID up on $BASE (scrape port $SCRAPE_PORT), data in $WORK/data"
        code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
        expect() { # expect STATUS WHAT CURL-ARGS…
            local want=$1 what=$2; shift 2
            local got; got=$(code "$@")
            if [ "$got" = "$want" ]; then echo "  $what: $got"; else fail "$what: expected $want, got $got"; fi
        }
        for i in 1 2 3; do expect 200 "GET hello/ ($i)" "$BASE/tenants/hello/"; done
        expect 413 "POST hello/ with 4 KiB over the 1 KiB body limit" \
            --data-binary @<(head -c 4096 /dev/zero) "$BASE/tenants/hello/"
        expect 500 "GET hostile/panic (a guest trap)" "$BASE/tenants/hostile/panic"
        expect 200 "GET hostile/ok" "$BASE/tenants/hostile/ok"
        expect 200 "GET /readyz without a token (what a blackbox probe sees)" "$BASE/readyz"
        expect 401 "GET /metrics without a token on the main address" "$BASE/metrics"
        # Log lines past the tenant's share of the archive queue are dropped
        # (lodge_log_lines_dropped_total): eight requests printing at once.
        for attempt in 1 2 3; do
            printers=()
            for _ in 1 2 3 4 5 6 7 8; do
                curl -s -o /dev/null "$BASE/tenants/hostile/print?lines=6000" &
                printers+=($!)
            done
            wait "${printers[@]}"
            curl -s -H "Authorization: Bearer $TOKEN" "$BASE/metrics" | grep -q '^lodge_log_lines_dropped_total' && break
        done
        echo "  8 x GET hostile/print?lines=6000 at once (log archive overflow)"
        curl -sS -H "Authorization: Bearer $TOKEN" "$BASE/metrics" >"$WORK/metrics.txt" \
            || fail "GET /metrics with the admin token"
        curl -sS "http://127.0.0.1:$SCRAPE_PORT/metrics" >"$WORK/scrape-port.txt" \
            || fail "GET /metrics on the scrape port (--metrics-listen) without a token"
        echo "  /metrics: $(grep -c '^lodge_' "$WORK/metrics.txt") samples; scrape port: $(grep -c '^lodge_' "$WORK/scrape-port.txt") samples"

        python3 - "$WORK/metrics.txt" "$WORK/scrape-port.txt" "$DASHBOARD" "$RULES" <<'PY' || fail "metric names used by $DASHBOARD / $RULES that /metrics does not export (listed above)"
import json, re, sys
import yaml

metrics_path, scrape_path, dashboard_path, rules_path = sys.argv[1:5]

# Series written by Prometheus or by another exporter, not by Lodge: allowed,
# and listed so that nobody takes them for Lodge's.
EXTERNAL = {
    "up": "Prometheus, per scrape target",
    "probe_success": "blackbox_exporter probing /readyz (job lodge-readyz)",
}
# Labels Prometheus adds to every series of a target.
TARGET_LABELS = {"job", "instance"}

def exposition(path):
    """Sample names -> label names, and family name -> type."""
    samples, types = {}, {}
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ", 1)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r'([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s', line)
            if m:
                labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(3) or ""))
                samples.setdefault(m.group(1), set()).update(labels)
    return samples, types

samples, types = exposition(metrics_path)
scrape_samples, _ = exposition(scrape_path)

def family(name):
    """The family a sample name belongs to (histogram suffixes; counters' _total)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base
    return name

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}

def analyse(expr):
    """(metric names, {metric: matcher labels}, grouping labels) of a PromQL expression."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r'`[^`]*`', '""', e)
    e = re.sub(r'\$\{[^}]*\}|\$[A-Za-z_]\w*', '', e)    # Grafana variables
    e = re.sub(r'\[[^\]]*\]', '', e)                        # ranges, subqueries
    grouping = set()
    def take_group(m):
        grouping.update(re.findall(r'[A-Za-z_]\w*', m.group(2)))
        return " "
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)', take_group, e)
    names, matchers = set(), {}
    def take_selector(m):
        name = m.group(1)
        labels = set(re.findall(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)', m.group(2)))
        if name:
            matchers.setdefault(name, set()).update(labels)
            names.add(name)
        elif "__name__" in labels:
            raise SystemExit(f"selector by __name__ not checked: {expr}")
        return " "
    e = re.sub(r'([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}', take_selector, e)
    for m in re.finditer(r'(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?', e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names, matchers, grouping

uses = []  # (where, expr)
dash = json.load(open(dashboard_path))
def walk_panels(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                uses.append((f'dashboard panel {p.get("id")} "{p.get("title")}"', t["expr"]))
        walk_panels(p.get("panels", []))
walk_panels(dash.get("panels", []))
for v in dash.get("templating", {}).get("list", []):
    if v.get("type") != "query":
        continue
    q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
    m = re.fullmatch(r'\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*', q)
    if not m:
        raise SystemExit(f"dashboard variable {v['name']}: only label_values(expr, label) is checked, got {q!r}")
    uses.append((f'dashboard variable ${v["name"]}', m.group(1)))
    uses.append((f'dashboard variable ${v["name"]} (label)', f'x by ({m.group(2)}) (x)'))
for group in yaml.safe_load(open(rules_path))["groups"]:
    for rule in group["rules"]:
        uses.append((f'rule {rule.get("alert") or rule.get("record")}', rule["expr"]))

problems, used, external = [], set(), {}
for where, expr in uses:
    names, matchers, grouping = analyse(expr)
    names.discard("x")
    known_labels = set(TARGET_LABELS)
    for name in sorted(names):
        if name in EXTERNAL:
            external.setdefault(name, set()).add(where)
            continue
        used.add(family(name))
        if name not in samples:
            hint = ""
            if name + "_total" in samples:
                hint = f" (a counter: its samples are {name}_total)"
            elif types.get(name) == "histogram":
                hint = f" (a histogram: query {name}_bucket, _sum or _count)"
            problems.append(f"{where}: metric {name} is not exported{hint}")
            continue
        exported = samples[name] | TARGET_LABELS
        known_labels |= exported
        for label in sorted(matchers.get(name, set()) - exported):
            problems.append(f"{where}: {name} has no label {label!r} (it has: {', '.join(sorted(samples[name])) or 'none'})")
    if names and not (set(names) & set(EXTERNAL)):
        for label in sorted(grouping - known_labels):
            problems.append(f"{where}: groups by label {label!r}, which none of its metrics has")

lodge_families = {family(n) for n in samples if n.startswith("lodge_")}
print(f"  {len(uses)} expressions; {len(used)} Lodge metric families used, all checked against /metrics:")
for name in sorted(used):
    print(f"    {name}")
for name, wheres in sorted(external.items()):
    print(f"  not from Lodge, allowed: {name} ({EXTERNAL[name]}), used by {len(wheres)} expression(s)")
unused = sorted(lodge_families - used)
if unused:
    print("  exported but used nowhere (information only): " + ", ".join(unused))
missing_on_scrape_port = sorted(set(samples) - set(scrape_samples))
if missing_on_scrape_port:
    problems.append("the scrape port (--metrics-listen) lacks: " + ", ".join(missing_on_scrape_port))
if problems:
    print("\nMISMATCHES:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print("  every metric and label used is exported (main address with the token, and the scrape port)")
PY
    fi
fi

echo
if [ ${#failures[@]} -ne 0 ]; then
    echo "check-deploy: ${#failures[@]} failure(s):" >&2
    for f in "${failures[@]}"; do echo "  - $f" >&2; done
    exit 1
fi
echo "check-deploy: OK"
