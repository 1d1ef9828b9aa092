"""Replays the attacks of issue 11 (one tenant against its neighbours) on a real `lodge` binary.

    python3 scripts/isolation-replay.py target/debug/lodge memory_hog deploy_flood task_flood slowloris

Needs Python 3 with `requests`, and the guests built by `cargo test`
(target/guests/wasm32-wasip2/guest). Ports 39201-39204 and 39298-39299 on
127.0.0.1; data in /tmp/meas. Prints one line per attack.
"""
import concurrent.futures as cf, json, os, socket, subprocess, sys, time, requests, shutil, threading

BIN = sys.argv[1]
G = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../target/guests/wasm32-wasip2/guest")
TOKEN = "sk_admin_measure-token-0123456789abcdef"

def serve(args, port):
    os.makedirs("/tmp/meas", exist_ok=True)
    data = f"/tmp/meas/data-{port}"
    shutil.rmtree(data, ignore_errors=True)
    p = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data] + args,
                         env={**os.environ, "LODGE_ADMIN_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=open(f"{data}.log", "w"))
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError: time.sleep(0.05)
    time.sleep(0.5)
    return p, data

def api(port, method, path, key, headers=None, **kw):
    headers = {"authorization": f"Bearer {key}", **(headers or {})}
    return requests.request(method, f"http://127.0.0.1:{port}/api/v1{path}", headers=headers, **kw)

def tenant(port, name):
    org = api(port, "POST", "/orgs", TOKEN, json={"name": name + "-org"}).json()["apiKey"]
    t = api(port, "POST", "/tenant/spawn", org, json={"name": name}).json()["tenant"]
    return t["slug"], t["apiKey"]

def memory_hog():
    port = 39201
    p, _ = serve(["--app", f"hog={G}/hostile.wasm", "--app", f"hello={G}/hello.wasm", "--memory-budget-mib", "2048"], port)
    try:
        with cf.ThreadPoolExecutor(80) as ex:
            hogs = [ex.submit(requests.get, f"http://127.0.0.1:{port}/tenants/hog/hog?mb={100 if i < 20 else 4}&ms=5000") for i in range(60)]
            time.sleep(2)
            neighbour = [ex.submit(requests.get, f"http://127.0.0.1:{port}/tenants/hello/") for _ in range(10)]
            ok = sum(f.result().status_code == 200 for f in neighbour)
            statuses = [f.result().status_code for f in hogs]
        print(f"memory hog: neighbour {ok}/10 served; hog: {statuses.count(200)} x 200, {statuses.count(503)} x 503 memory_busy")
    finally:
        p.kill()

def hello_with(tag, size):
    data = bytearray(open(f"{G}/hello.wasm", "rb").read())
    payload = bytes([4]) + b"pad" + tag.encode().ljust(8, b"_") + os.urandom(size)
    n, enc = len(payload), bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        enc.append(b | (0x80 if n else 0))
        if not n: break
    return bytes(data + b"\x00" + enc + payload)

def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

def deploy_flood():
    port = 39202
    p, data = serve([], port)
    try:
        slug, key = tenant(port, "flooder")
        base = du(data)
        codes = []
        t0 = time.time()
        for i in range(25):
            r = api(port, "PUT", f"/tenant/{slug}/component", key, data=hello_with(f"v{i}", 8 << 20), headers={"content-type": "application/wasm"})
            codes.append(r.status_code)
        grew = (du(data) - base) / 2**20
        print(f"deploy flood: 25 deploys of distinct 8 MiB components: {codes.count(201)} x 201 in {time.time()-t0:.1f} s; data dir grew {grew:.0f} MiB (10 versions kept)")
        with cf.ThreadPoolExecutor(25) as ex:
            racing = [ex.submit(api, port, "PUT", f"/tenant/{slug}/component", key, data=hello_with(f"r{i}", 8 << 20), headers={"content-type": "application/wasm"}) for i in range(25)]
            rc = [f.result().status_code for f in racing]
        print(f"deploy flood, 25 at once: {rc.count(201)} x 201, {rc.count(429)} x 429 deploy_in_progress; data dir now {(du(data)-base)/2**20:.0f} MiB over the empty host")
    finally:
        p.kill()

def task_flood():
    port = 39203
    p, _ = serve(["--llm-url", "http://127.0.0.1:39299/v1"], port)
    # A model answering after 200 ms, and a webhook target that never answers.
    import http.server
    class M(http.server.BaseHTTPRequestHandler):
        n = 0
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0))); time.sleep(0.2); M.n += 1
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"pos word{M.n}"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}).encode()
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 39299), M)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    hole = socket.socket(); hole.bind(("127.0.0.1", 39298)); hole.listen(1000)
    try:
        _, a = tenant(port, "flood")
        _, b = tenant(port, "calm")
        codes = [api(port, "POST", "/converge", a, json={"prompt": "x", "maxRounds": 1, "async": True, "webhookUrl": "http://127.0.0.1:39298/h"}).status_code for _ in range(500)]
        t0 = time.time()
        tid = api(port, "POST", "/converge", b, json={"prompt": "y", "maxRounds": 1, "async": True}).json()["taskId"]
        while api(port, "GET", f"/converge/{tid}", b).json()["status"] not in ("done", "failed"):
            time.sleep(0.05)
        print(f"task flood: 500 submissions: {codes.count(202)} x 202, {codes.count(429)} x 429 too_many_tasks; the other tenant's task done in {time.time()-t0:.2f} s")
    finally:
        p.kill(); srv.shutdown()

def slowloris():
    port = 39204
    p, _ = serve(["--app", f"hello={G}/hello.wasm"], port)
    try:
        socks = []
        for _ in range(1500):
            s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n"); socks.append(s)
        t0 = time.time()
        h = requests.get(f"http://127.0.0.1:{port}/healthz").status_code
        t = requests.get(f"http://127.0.0.1:{port}/tenants/hello/").status_code
        closed_at = []
        for s in socks:
            s.settimeout(max(0.1, 30 - (time.time() - t0)))
            try:
                while s.recv(4096): pass
                closed_at.append(time.time() - t0)
            except OSError:
                closed_at.append(time.time() - t0)
        print(f"slow clients: 1500 that never finish their headers; /healthz {h}, tenant {t} meanwhile; all 1500 closed by {max(closed_at):.1f} s (header-read timeout 10 s)")
    finally:
        p.kill()

for f in sys.argv[2:]:
    globals()[f]()
