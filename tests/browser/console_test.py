"""Drives the Lodge web console (/console) in headless Chromium.

Run through tests/browser/run.sh, which starts a lodge binary and sets
LODGE_URL and LODGE_ROOT. Setup goes through the API; everything checked is
what the browser shows.
"""

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["LODGE_URL"].rstrip("/")
ROOT = os.environ.get("LODGE_ROOT", os.getcwd())
ADMIN = os.environ.get("LODGE_ADMIN_TOKEN", "sk_admin_test-token-0123456789abcdef")
GUESTS = os.path.join(ROOT, "target/guests/wasm32-wasip2/guest")
SHOTS = os.path.join(ROOT, "docs/console")
HOSTILE_NAME = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
SCRIPT = "<script>window.__pwned=1</script>"

passed = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    passed.append(what)
    print(f"ok  {what}", flush=True)


def call(method, path, key, body=None, ctype="application/json", headers=None):
    data = None
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    hdrs.update(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["Content-Type"] = ctype
    req = urllib.request.Request(URL + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.headers.get_content_type() == "application/json" else raw.decode(errors="replace"))
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def ok(method, path, key, body=None, **kw):
    status, answer = call(method, path, key, body, **kw)
    assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
    return answer


def evil_component():
    """hostile.wasm with one function renamed to a script tag: a tenant's own
    name section, which the host copies verbatim into the trap backtrace it
    writes to the tenant's log."""
    blob = open(os.path.join(GUESTS, "hostile.wasm"), "rb").read()
    old = b"_RNvCsfLfy6EI15iL_7___rustc10rust_panic"
    assert blob.count(old) == 1, "hostile.wasm changed: pick another symbol"
    new = SCRIPT.encode()
    return blob.replace(old, new + b"_" * (len(old) - len(new)))


def setup():
    s = {}
    acme = ok("POST", "/api/v1/orgs", ADMIN, {"name": "Acme"})
    s["org_id"], s["org_key"] = acme["org"]["id"], acme["apiKey"]
    shop = ok("POST", "/api/v1/tenant/spawn", s["org_key"], {"name": "Acme Shop"})["tenant"]
    s["shop"], s["shop_key"] = shop["slug"], shop["apiKey"]
    other = ok("POST", "/api/v1/tenant/spawn", s["org_key"], {"name": "Acme Other"})["tenant"]
    s["other"] = other["slug"]
    ok("PUT", f"/api/v1/tenant/{s['other']}/component", s["org_key"],
       open(os.path.join(GUESTS, "hello.wasm"), "rb").read(), ctype="application/wasm")
    mallory = ok("POST", "/api/v1/orgs", ADMIN, {"name": "Mallory"})
    evil = ok("POST", "/api/v1/tenant/spawn", mallory["apiKey"], {"name": HOSTILE_NAME})["tenant"]
    s["evil"], s["evil_id"], s["evil_org"] = evil["slug"], evil["id"], mallory["org"]["id"]
    # An organization without tenants: only GET /orgs can list it.
    s["empty_org"] = ok("POST", "/api/v1/orgs", ADMIN, {"name": "Empty Org"})["org"]["id"]
    # Convergence tasks (the offline provider): one of the shop's, and one of
    # the hostile tenant's whose prompt is markup.
    s["shop_task"] = ok("POST", "/api/v1/converge", s["shop_key"],
                        {"prompt": "pick a queue for the shop", "async": True})["taskId"]
    s["evil_task"] = ok("POST", "/api/v1/converge", evil["apiKey"],
                        {"prompt": SCRIPT, "async": True})["taskId"]
    ok("PUT", f"/api/v1/tenant/{s['evil']}/component", mallory["apiKey"], evil_component(), ctype="application/wasm")
    status, _ = call("GET", f"/tenants/{s['evil']}/panic", None)
    assert status == 500, status
    lines = ok("GET", f"/api/v1/tenant/{s['evil']}/logs?limit=50", ADMIN)["lines"]
    assert any(SCRIPT in l["message"] for l in lines), "the trap line should carry the function name"
    status, answer = call("PUT", f"/api/v1/tenant/{s['evil']}/env", mallory["apiKey"], {"vars": {SCRIPT: "x"}})
    s["evil_env"] = status == 200
    print(f"note: an env name {SCRIPT!r} is {'accepted' if s['evil_env'] else 'refused: ' + str(answer)}")
    ok("POST", f"/api/v1/tenant/{s['evil']}/wallet/fund", ADMIN, {"amount": 5, "memo": SCRIPT})
    return s


def browser():
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000", "--disable-gpu"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class Console:
    def __init__(self, driver):
        self.d = driver

    def wait(self, fn, what, timeout=20):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.2).until(lambda d: fn())
        except Exception as e:  # noqa: BLE001
            self.d.save_screenshot(os.path.join(tempfile.gettempdir(), "console-failure.png"))
            raise AssertionError(f"timed out waiting for: {what}") from e

    def q(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def one(self, css, what=None):
        return self.wait(lambda: (self.q(css) or [None])[0], what or css)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def sign_in(self, key, expect_role=True):
        self.d.get(URL + "/console")  # a fresh page: signed out
        self.wait(lambda: self.js("return document.body.dataset.ready === 'true'"), "console loaded")
        self.one("#key").send_keys(key)
        self.one("#signin-button").click()
        if expect_role:
            return self.wait(lambda: self.js("return document.body.dataset.role || null"), "signed in")
        return self.wait(lambda: self.one("#signin-status").text if "error" in self.one("#signin-status").get_attribute("class") else None, "sign-in refusal")

    def tab(self, name):
        self.one(f"button.tab[data-tab='{name}']").click()
        self.wait(lambda: self.js(f"return document.querySelector('.panel').dataset.tab === '{name}'"), f"tab {name}")

    def text(self):
        return self.js("return document.getElementById('app').innerText")

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        time.sleep(0.4)
        self.d.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

    def key_hygiene(self, key, who):
        leaks = self.js("""
            const key = arguments[0];
            const urls = [location.href, ...performance.getEntriesByType('resource').map(e => e.name)];
            return {
              storage: localStorage.length + sessionStorage.length,
              cookie: document.cookie,
              url: urls.some(u => u.includes(key)),
              dom: document.documentElement.outerHTML.includes(key),
            };""", key)
        check(leaks == {"storage": 0, "cookie": "", "url": False, "dom": False},
              f"{who}: the key is in no storage, cookie, URL or DOM")


def usage_total(slug, key, frm, to):
    return ok("GET", f"/api/v1/tenant/{slug}/usage?from={frm}&to={to}&granularity=hour", key)["total"]


def main():
    s = setup()
    d = browser()
    c = Console(d)
    try:
        run(c, s)
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
        csp = [e for e in errors if "Content Security Policy" in e["message"]]
        check(not csp, f"no Content-Security-Policy violation in the browser log ({csp[:2]})")
        uncaught = [e for e in errors if "Uncaught" in e["message"]]
        check(not uncaught, f"no uncaught script error ({uncaught[:3]})")
    finally:
        d.quit()
    print(f"\nPASS: {len(passed)} checks")


def run(c, s):
    d = c.d
    # A wrong key, and a well-formed key the host does not know.
    check("refused" in c.sign_in("sk_tenant_nope_0000", expect_role=False), "a bad key is refused")
    unknown = "sk_tenant_" + "0" * 12 + "_" + "0" * 64
    check("refused" in c.sign_in(unknown, expect_role=False), "an unknown key is refused")
    check(not c.q("#scope"), "the sign-in form asks for the key only")

    # ---- Operator
    check(c.sign_in(ADMIN) == "admin", "the admin token signs in as the operator")
    c.key_hygiene(ADMIN, "admin")
    # Two readings a second apart, then every 5 s; a clean-clone CI run timed
    # out at 20 s here once (chromium just installed, the machine loaded).
    c.wait(lambda: c.q("[data-testid=metric-rps] .metric-value") and c.q("[data-testid=metric-rps] .metric-value")[0].text != "…", "requests/s from two /metrics readings", timeout=60)
    health = c.one("[data-testid=health]").text
    for label in ("REQUESTS / S", "INSTANCES IN USE", "MEMORY BUDGET", "COMPILE QUEUE", "TIERS", "DATABASE", "LOG ARCHIVE QUEUE"):
        check(label in health.upper(), f"host health shows {label.lower()}")
    check(c.one("[data-testid=metric-database] .metric-value").text == "up", "the database is up (lodge_database_up)")
    c.wait(lambda: c.q("[data-testid=rps-chart] canvas"), "requests/s chart drawn")
    c.shot("operator-health")
    c.tab("tenants")
    c.one("[data-testid=tenant-table]")
    for slug in (s["shop"], s["other"], s["evil"]):
        check(c.q(f"tr[data-tenant='{slug}']"), f"operator sees tenant {slug}")
    shown = c.one(f"tr[data-tenant='{s['evil']}'] button").text
    check(shown == HOSTILE_NAME, "a hostile tenant name is shown as text")
    c.shot("operator-tenants")
    c.tab("orgs")
    c.one("[data-testid=org-table]")
    c.wait(lambda: c.q(f"tr[data-org='{s['empty_org']}']"), "the organization without tenants listed")
    counts = {o: c.one(f"tr[data-org='{o}'] [data-testid=org-tenants]").text
              for o in (s["org_id"], s["evil_org"], s["empty_org"])}
    check(counts == {s["org_id"]: "2", s["evil_org"]: "1", s["empty_org"]: "0"},
          f"every organization listed from GET /orgs, with its tenant count ({counts})")
    check(c.one(f"tr[data-org='{s['org_id']}'] [data-testid=open-org]").text == "Acme", "organizations listed by name")
    c.shot("operator-orgs")
    c.one(f"tr[data-org='{s['empty_org']}'] [data-testid=open-org]").click()
    c.wait(lambda: c.q("[data-testid=org-name]"), "organization opened from the list")
    check(c.one("[data-testid=org-name]").text == "Empty Org", "an organization opens from the list")
    c.one("button.back").click()
    c.wait(lambda: c.q("button.tab[data-tab='plans']"), "back to the operator view")
    c.tab("plans")
    check("fuel" in c.one("[data-testid=plans-table]").text, "plans and limits listed")
    c.tab("limits")
    notes = c.one("[data-testid=host-notes]")
    c.wait(lambda: SCRIPT in notes.text, "recent host notes include the hostile trap line")
    check(SCRIPT in notes.text, "operator's limit events show the hostile trap line as text")
    c.shot("operator-limits")

    # ---- Organization
    check(c.sign_in(s["org_key"]) == "org", "an org key signs in as its organization")
    check(c.one("#whoami").text == "Organization Acme", "the org key is named by GET /whoami")
    c.key_hygiene(s["org_key"], "org")
    c.one("[data-testid=tenant-table]")
    c.wait(lambda: c.q(f"tr[data-tenant='{s['other']}']"), "org tenants listed")
    check(c.q(f"tr[data-tenant='{s['shop']}']") and not c.q(f"tr[data-tenant='{s['evil']}']"), "the org sees its tenants and no other's")
    check(not c.q("[data-tab=health]") and "Operator" not in c.text(), "the org sees no operator panel")
    c.tab("usage")
    c.one("[data-testid=org-usage] tr.total")
    check(c.q("[data-testid=cost-total]"), "org usage roll-up with a cost")
    c.shot("org-usage")
    c.tab("keys")
    check(c.q("[data-testid=rotate-org-key]"), "org key rotation offered")

    # ---- Tenant
    check(c.sign_in(s["shop_key"]) == "tenant", "a tenant key signs in as its tenant, without its slug")
    check(c.one("#whoami").text == f"Tenant {s['shop']}", "the tenant key is named by GET /whoami")
    c.key_hygiene(s["shop_key"], "tenant")
    check(s["other"] not in c.text() and not c.q("[data-tab=health]") and not c.q("[data-tab=orgs]"),
          "the tenant sees no other tenant and no operator panel")
    c.one("[data-testid=status]")
    c.shot("tenant-status")

    c.tab("deploy")
    inp = c.one("[data-testid=wasm-input]")
    check(inp.get_attribute("type") == "file" and c.one("[data-testid=dropzone]").get_attribute("for") == inp.get_attribute("id"),
          "the drop zone and the file input are one control")

    def deploy(path, expect_version):
        c.one("[data-testid=wasm-input]").send_keys(path)
        c.wait(lambda: c.q(f"tr[data-version='{expect_version}'] [data-testid=active]"), f"v{expect_version} active")
        return c.one("[data-testid=deploy-result]").text

    res = deploy(os.path.join(GUESTS, "hello.wasm"), 1)
    check("version 1" in res, f"deploy by file drop answers with the compile result ({res})")
    status, body = call("GET", f"/tenants/{s['shop']}/", None)
    check(status == 200 and "Hello from Lodge" in body, "the deployed version serves")
    res = deploy(os.path.join(GUESTS, "hostile.wasm"), 2)
    check("version 2" in res, "a second version deployed")
    c.one("[data-testid=wasm-input]").send_keys(os.path.join(ROOT, "README.md"))
    refused = c.one("[data-testid=deploy-refused]").text
    check("WebAssembly" in refused, f"a refused upload shows the host's message ({refused})")
    c.shot("tenant-deployments")

    c.tab("logs")
    c.wait(lambda: c.js("return document.querySelector('.panel').dataset.following === 'true'"), "following the log")
    rid = f"console-test-{uuid.uuid4().hex[:8]}"
    other_rid = f"console-other-{uuid.uuid4().hex[:8]}"
    c.one("[data-testid=log-filter]").send_keys(rid)
    time.sleep(0.5)
    for r in (rid, other_rid):
        status, _ = call("GET", f"/tenants/{s['shop']}/log", None, headers={"x-request-id": r})
        assert status == 200
    c.wait(lambda: c.js("""return [...document.querySelectorAll('[data-testid=log-lines] li')]
        .some(li => li.dataset.requestId === arguments[0] && !li.hidden && li.querySelector('.msg').textContent === 'hello on stdout')""", rid),
        "the request's log line arrives live")
    check(True, "a request's log line arrives on the live log")
    c.wait(lambda: c.js("return [...document.querySelectorAll('[data-testid=log-lines] li')].some(li => li.dataset.requestId === arguments[0])", other_rid), "the other line")
    hidden = c.js("return [...document.querySelectorAll('[data-testid=log-lines] li')].filter(li => li.dataset.requestId === arguments[0]).every(li => li.hidden)", other_rid)
    check(hidden, "the request-id filter hides other requests' lines")
    c.shot("tenant-logs")

    c.tab("deploy")
    c.one("[data-testid=rollback][data-version='1']").click()
    c.wait(lambda: c.q("tr[data-version='1'] [data-testid=active]"), "v1 active after rollback")
    status, body = call("GET", f"/tenants/{s['shop']}/", None)
    check(status == 200 and "Hello from Lodge" in body, "one-click rollback serves version 1 again")

    c.tab("env")
    c.one("[data-testid=env-name]").send_keys("GREETING")
    secret = f"value-{uuid.uuid4().hex}"
    c.one("[data-testid=env-value]").send_keys(secret)
    c.one("[data-testid=env-value]").submit()
    c.wait(lambda: c.q("tr[data-env='GREETING']"), "env name listed")
    check(secret not in d.page_source, "an env value is never shown")
    c.one("tr[data-env='GREETING'] [data-testid=unset-env]").click()
    c.wait(lambda: not c.q("tr[data-env='GREETING']"), "env name removed")
    check(True, "env names set and unset")

    # Usage: wait until the host's 5 s flush has settled, then compare.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    prev, stable_since = None, time.time()
    while True:
        tot = usage_total(s["shop"], s["shop_key"], yesterday, today)
        if tot != prev:
            prev, stable_since = tot, time.time()
        elif time.time() - stable_since > 6 and tot["requests"] > 0:
            break
        time.sleep(1)
    c.tab("usage")
    c.wait(lambda: c.q("[data-testid=chart-requests] canvas"), "usage chart drawn")
    shown = {f: float(c.one(f"[data-testid=usage-total-{f}]").get_attribute("data-value")) for f in ("requests", "status2xx", "status5xx", "fuel", "wallMs", "bytesOut")}
    check(all(shown[f] == tot[f] for f in shown), f"usage totals in the console match the API ({shown} vs {tot})")
    chart = json.loads(c.one("[data-testid=chart-requests]").get_attribute("data-sum"))
    check(chart["2xx"] == tot["status2xx"] and chart["5xx"] == tot["status5xx"], f"the requests chart plots the API's numbers ({chart})")
    fuel = json.loads(c.one("[data-testid=chart-fuel]").get_attribute("data-sum"))
    check(fuel["fuel"] == tot["fuel"], "the fuel chart plots the API's fuel")
    check(c.q("[data-testid=cost-total]"), "a cost estimate is shown")
    c.shot("tenant-usage")
    c.tab("wallet")
    c.one("[data-testid=wallet-balance]")
    c.tab("tasks")
    c.wait(lambda: c.q(f"tr[data-task='{s['shop_task']}']"), "the submitted task listed")
    check(not c.q(f"tr[data-task='{s['evil_task']}']"), "the tasks panel lists the tenant's own tasks only")
    row = c.one(f"tr[data-task='{s['shop_task']}']").text
    check("pick a queue for the shop" in row and "custom" in row, f"a listed task shows its kind and prompt ({row})")
    c.one(f"tr[data-task='{s['shop_task']}'] [data-testid=open-task]").click()
    c.wait(lambda: s["shop_task"] in c.one("[data-testid=task-detail]").text and '"status"' in c.one("[data-testid=task-detail]").text,
           "the task read whole")
    check(True, "clicking a listed task reads it with GET /converge/{taskId}")
    c.shot("tenant-tasks")

    # ---- Hostile text, as the operator looking at the hostile tenant
    c.sign_in(ADMIN)
    c.tab("tenants")
    c.one(f"tr[data-tenant='{s['evil']}'] [data-testid=open-tenant]").click()
    c.wait(lambda: c.q("[data-testid=tenant-name]"), "hostile tenant opened")
    check(c.one("[data-testid=tenant-name]").text == HOSTILE_NAME, "the hostile name is text in the tenant view")
    c.tab("logs")
    c.wait(lambda: c.js("return [...document.querySelectorAll('[data-testid=log-lines] .msg')].some(m => m.textContent.includes(arguments[0]))", SCRIPT),
           "the hostile log line shown")
    check(True, "a log line containing <script> is shown as text")
    c.shot("tenant-logs-hostile")
    c.tab("wallet")
    c.wait(lambda: SCRIPT in c.one("[data-testid=wallet-history]").text, "hostile memo shown")
    check(True, "a wallet memo containing <script> is shown as text")
    c.tab("tasks")
    c.wait(lambda: c.q(f"tr[data-task='{s['evil_task']}']"), "the operator lists the hostile tenant's task")
    check(SCRIPT in c.one(f"tr[data-task='{s['evil_task']}']").text, "a task prompt containing <script> is shown as text")
    if s["evil_env"]:
        c.tab("env")
        c.wait(lambda: SCRIPT in c.one("[data-testid=env-names]").text, "hostile env name shown")
        check(True, "an env name containing <script> is shown as text")
    state = c.js("return {pwned: window.__pwned === undefined ? null : window.__pwned, title: document.title, scripts: document.querySelectorAll('#app script, #app img').length}")
    check(state == {"pwned": None, "title": "Lodge console", "scripts": 0}, f"no hostile script ran and no element was injected ({state})")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
