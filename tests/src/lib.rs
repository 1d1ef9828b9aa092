//! Shared helpers for Lodge's end-to-end tests.
//!
//! [`guests`] names every guest component `build.rs` built; [`TestHost`] runs a
//! real Lodge host in-process on a loopback port; [`LodgeProcess`] runs the
//! real `lodge` binary.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lodge_host::{HostConfig, Limits, Lodge};

/// Paths of the guest components, one constant per guest.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub mod polyglot;

/// The admin token every in-process test host uses.
pub const ADMIN_TOKEN: &str = "sk_admin_test-token-0123456789abcdef";

/// Reads a guest component.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The directory where tests share precompiled artifacts (compiling is the slow part).
pub fn shared_artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}

/// A Lodge host running in this process on `127.0.0.1:<random>`.
/// With `LODGE_TEST_DATABASE_URL` set (a PostgreSQL database), the URL of a
/// schema of its own for the data dir `dir`: hosts restarted on the same dir
/// find their data again, and two hosts given the same key share it. `None`
/// (SQLite in the data dir) when the variable is unset.
pub async fn postgres_url_for(dir: &Path) -> Option<String> {
    use sqlx::Connection as _;
    use std::hash::{Hash, Hasher};
    let base = std::env::var("LODGE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let schema = format!("lodge_t{:016x}", hasher.finish());
    let mut conn = sqlx::postgres::PgConnection::connect(&base)
        .await
        .expect("LODGE_TEST_DATABASE_URL is set but PostgreSQL is unreachable");
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut conn)
        .await
        .expect("creating the test schema");
    let _ = conn.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// Runs one statement on the database of the host on data dir `dir`:
/// `sqlite` on SQLite, `postgres` on PostgreSQL (their dialects differ).
pub async fn db_execute(dir: &Path, sqlite: &str, postgres: &str) {
    match postgres_url_for(dir).await {
        Some(url) => {
            let pool = sqlx::PgPool::connect(&url).await.expect("database");
            sqlx::query(postgres)
                .execute(&pool)
                .await
                .expect("executed");
        }
        None => {
            let url = format!("sqlite:{}", dir.join("lodge.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.expect("database");
            sqlx::query(sqlite).execute(&pool).await.expect("executed");
        }
    }
}

/// Whether the tests run on PostgreSQL (`LODGE_TEST_DATABASE_URL`).
pub fn on_postgres() -> bool {
    std::env::var("LODGE_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty())
}

/// A Lodge host running in this process on `127.0.0.1:<random>`.
#[derive(Debug)]
pub struct TestHost {
    /// The host itself, to inspect tenants, logs and the memory budget.
    pub lodge: Arc<Lodge>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client with no connection limit and no proxy.
    pub client: reqwest::Client,
    _data: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestHost {
    /// Starts a host configured by `configure`, with no tenants, in a fresh data dir.
    pub async fn start_with(configure: impl FnOnce(&mut HostConfig)) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut host = Self::start_in(data.path(), configure).await;
        host._data = Some(data);
        host
    }

    /// Starts a host on the data dir `dir` (which may hold an earlier host's state).
    pub async fn start_in(dir: &Path, configure: impl FnOnce(&mut HostConfig)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = HostConfig {
            listen: addr,
            data_dir: dir.to_owned(),
            database_url: postgres_url_for(dir).await,
            artifacts_dir: Some(shared_artifacts()),
            // Other tests' hosts, on other databases, use that directory too.
            prune_artifacts: false,
            max_instances: 300,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            ..HostConfig::default()
        };
        // CI runs the suite a second time with every guest on baseline code.
        if let Ok(tiers) = std::env::var("LODGE_TEST_COMPILE_TIERS") {
            config.engine.tiers = clap::ValueEnum::from_str(&tiers, true)
                .unwrap_or_else(|e| panic!("LODGE_TEST_COMPILE_TIERS={tiers}: {e}"));
        }
        configure(&mut config);
        let lodge = Lodge::open(config).await.expect("host starts");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(lodge_host::serve(lodge.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = Api::new(addr).client;
        Self {
            lodge,
            addr,
            client,
            _data: None,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops serving and waits until the host has let go of its port and data.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// The HTTP API of this host.
    pub fn http(&self) -> Api {
        Api {
            client: self.client.clone(),
            addr: self.addr,
        }
    }

    /// Calls the control plane (`path` under `/api/v1`) with `token` and an
    /// optional JSON body; returns the status and the JSON answer (`Null` if none).
    pub async fn api_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.http().json(method, path, token, body).await
    }

    /// A request to the control plane, `path` under `/api/v1`, with `token`.
    pub fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        self.http().request(method, path, token)
    }

    /// Starts a host with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Adds tenant `slug` serving the guest at `path` under `limits`.
    pub async fn app(&self, slug: &str, path: &str, limits: Limits) -> &Self {
        self.lodge
            .add_app(slug, wasm(path), Some(limits))
            .await
            .unwrap_or_else(|e| panic!("deploying {path} as {slug}: {e:#}"));
        self
    }

    /// `http://127.0.0.1:PORT/tenants/SLUG` + `path`.
    pub fn path_url(&self, slug: &str, path: &str) -> String {
        self.http().tenant_url(slug, path)
    }

    /// A GET to tenant `slug` by path routing.
    pub async fn get(&self, slug: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.path_url(slug, path))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /metrics` with the admin token: the text exposition.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.addr))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// The tenant's log messages, oldest first.
    pub fn log_messages(&self, slug: &str) -> Vec<String> {
        self.lodge
            .registry
            .get(slug)
            .map(|t| t.logs.snapshot().into_iter().map(|l| l.message).collect())
            .unwrap_or_default()
    }
}

/// Sends the `n` requests `request(i)` builds, at most `at_once` in flight,
/// and returns each one's index, status and JSON body (`null` if not JSON), in
/// order.
pub async fn fan_out(
    n: usize,
    at_once: usize,
    request: impl Fn(usize) -> reqwest::RequestBuilder,
) -> Vec<(usize, u16, serde_json::Value)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(at_once));
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let (request, gate) = (request(i), gate.clone());
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.expect("open");
                let response = request.send().await.expect("sent");
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(serde_json::Value::Null);
                (i, status, body)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for request in requests {
        results.push(request.await.expect("joined"));
    }
    results
}

/// POSTs `{}` to `url` `n` times, `at_once` at a time, each answered 200 with
/// `{"value": N}` (an atomic counter); returns the values, sorted.
pub async fn concurrent_increments(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    at_once: usize,
) -> Vec<i64> {
    let results = fan_out(n, at_once, |_| {
        client.post(url).json(&serde_json::json!({}))
    })
    .await;
    let mut values: Vec<i64> = results
        .into_iter()
        .map(|(i, status, body)| {
            assert_eq!(status, 200, "request {i}: {body}");
            body["value"].as_i64().expect("value")
        })
        .collect();
    values.sort_unstable();
    values
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `within`,
/// and returns that; panics naming `what` if it never does. The one way the
/// tests wait for something to happen: a deadline to fail by, never a timing
/// to assert.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(done) = check().await {
            return done;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts `response` is Lodge's JSON error with `status` and `code`.
pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

/// A host's HTTP API, whether the host runs in this process or as a `lodge` process.
#[derive(Debug, Clone)]
pub struct Api {
    /// A client with no proxy.
    pub client: reqwest::Client,
    /// Where the host listens.
    pub addr: SocketAddr,
}

impl Api {
    /// The API of the host at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        Self { client, addr }
    }

    /// A request to the control plane, `path` under `/api/v1`, with `token`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("http://{}/api/v1{path}", self.addr));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Calls the control plane with an optional JSON body; returns the status
    /// and the JSON answer (`Null` if none).
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Creates org `name` with the admin token; returns the org's API key.
    pub async fn org(&self, name: &str) -> String {
        let (status, org) = self
            .json(
                reqwest::Method::POST,
                "/orgs",
                Some(ADMIN_TOKEN),
                Some(&serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{org}");
        org["apiKey"].as_str().expect("key").to_owned()
    }

    /// Creates tenant `name` with an organization's key; returns the tenant's key.
    pub async fn spawn_tenant(&self, org_key: &str, name: &str) -> String {
        let (status, spawned) = self
            .json(
                reqwest::Method::POST,
                "/tenant/spawn",
                Some(org_key),
                Some(&serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{spawned}");
        spawned["tenant"]["apiKey"]
            .as_str()
            .expect("key")
            .to_owned()
    }

    /// An organization `NAME-org` and a tenant `name` in it (with the org's
    /// key); returns (org id, org key, tenant slug, tenant key).
    pub async fn org_and_tenant(&self, name: &str) -> (String, String, String, String) {
        let (status, org) = self
            .json(
                reqwest::Method::POST,
                "/orgs",
                Some(ADMIN_TOKEN),
                Some(&serde_json::json!({ "name": format!("{name}-org") })),
            )
            .await;
        assert_eq!(status, 201, "{org}");
        let org_key = org["apiKey"].as_str().expect("key").to_owned();
        let (status, spawned) = self
            .json(
                reqwest::Method::POST,
                "/tenant/spawn",
                Some(&org_key),
                Some(&serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{spawned}");
        let tenant = &spawned["tenant"];
        (
            org["org"]["id"].as_str().expect("id").to_owned(),
            org_key,
            tenant["slug"].as_str().expect("slug").to_owned(),
            tenant["apiKey"].as_str().expect("key").to_owned(),
        )
    }

    /// A GET to tenant `slug`'s `path`; returns the status and the JSON answer
    /// (`Null` if none).
    pub async fn tenant_json(&self, slug: &str, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .get(self.tenant_url(slug, path))
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// `http://ADDR/tenants/SLUG` + `path`.
    pub fn tenant_url(&self, slug: &str, path: &str) -> String {
        format!("http://{}/tenants/{slug}{path}", self.addr)
    }
}

/// Path of the `lodge` binary that `cargo test` built.
pub fn lodge_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("lodge");
    assert!(
        bin.exists(),
        "{} is missing: run the tests from the workspace root with `cargo test`",
        bin.display()
    );
    bin
}

/// A `lodge serve` process, killed on drop.
#[derive(Debug)]
pub struct LodgeProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stderr, captured.
    pub stderr_path: PathBuf,
    _data: Option<tempfile::TempDir>,
}

impl LodgeProcess {
    /// Runs `lodge serve --listen 127.0.0.1:<free port> --data-dir <temp> ARGS…` and waits until it answers.
    pub fn serve(args: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join("data");
        let mut process = Self::serve_in(&dir, args);
        process._data = Some(data);
        process
    }

    /// Like [`LodgeProcess::serve`], with extra environment variables.
    pub fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join("data");
        let mut process = Self::spawn(&dir, args, env);
        process._data = Some(data);
        process
    }

    /// Like [`LodgeProcess::serve`] on the data dir `dir`, with the admin token [`ADMIN_TOKEN`].
    pub fn serve_in(dir: &Path, args: &[&str]) -> Self {
        Self::spawn(dir, args, &[])
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let logs = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stderr_path = logs.keep().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(lodge_bin())
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("LODGE_LOG", "info")
            .env("LODGE_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("lodge starts");
        let mut process = Self {
            child,
            addr,
            stderr_path,
            _data: None,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("lodge exited with {status}: {}", process.stderr());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "lodge did not listen: {}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// The HTTP API of this process.
    pub fn http(&self) -> Api {
        Api::new(self.addr)
    }

    /// What the process printed to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl LodgeProcess {
    /// Kills the process (SIGKILL: no chance to clean up) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a `lodge` client command against this host with `token`; returns (exit code, stdout, stderr).
    pub fn cli(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(lodge_bin())
            .args(args)
            .env("LODGE_URL", format!("http://{}", self.addr))
            .env("LODGE_TOKEN", token)
            .output()
            .expect("lodge runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for LodgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `router` over HTTPS on `127.0.0.1:<random>` with a fresh self-signed
/// certificate for `localhost`; returns the address and the certificate (PEM),
/// which clients trust only if told to (e.g. `SSL_CERT_FILE`).
pub async fn tls_server(router: axum::Router) -> (SocketAddr, String) {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                // Handshakes a client refuses end here, as they should.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, cert.cert.pem())
}
