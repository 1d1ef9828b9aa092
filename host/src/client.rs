//! The `lodge` CLI's client side: org, tenant (incl. usage and limits), deploy,
//! logs, env, rollback and keys commands, talking to a host's REST API.
//!
//! Human output by default, `--json` for scripts. Exit codes: 0 success,
//! 1 failure (network, server), 2 bad usage, 3 refused credentials (401/403),
//! 4 not found, 5 rejected request (400, 409, 413, 415).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::deployments::{DeploymentCreated, DeploymentList};
use crate::api::logs::LogPage;
use crate::api::orgs::{OrgCreated, OrgEnvelope};
use crate::api::tenants::{
    EnvNames, EnvUpdate, KeyRotated, TenantEnvelope, TenantList, TenantStatusView,
};
use crate::api::usage::{LimitsEnvelope, UsageView};
use crate::logs::LogLine;
use crate::storage::Usage;

/// Where the host is and who we are.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The host's URL.
    #[arg(
        long,
        env = "LODGE_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub url: String,
    /// An admin token, organization key or tenant key.
    #[arg(long, env = "LODGE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `lodge org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization (admin token) and print its key once.
    Create {
        /// Display name.
        name: String,
        /// Plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Move an organization to another plan (admin token); its tenants on the old plan follow.
    SetPlan {
        /// Organization id.
        org: String,
        /// The new plan.
        plan: String,
    },
    /// Manage an organization's own keys.
    #[command(subcommand)]
    Keys(OrgKeysCommand),
}

/// `lodge org keys …`
#[derive(Debug, Subcommand)]
pub enum OrgKeysCommand {
    /// Revoke the organization's keys and print a new one (admin token or the org's key).
    Rotate {
        /// Organization id.
        org: String,
    },
    /// Revoke every key of the organization, leaving none (its tenants' keys stay).
    Revoke {
        /// Organization id.
        org: String,
    },
}

/// `lodge tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its key once.
    Create {
        /// Display name; the slug is derived from it.
        name: String,
        /// Plan.
        #[arg(long)]
        plan: Option<String>,
        /// Organization (required with the admin token).
        #[arg(long)]
        org: Option<String>,
    },
    /// List tenants.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
    /// Show a tenant's status, active version, limits and counts.
    Status {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Stop a tenant (its requests get 503).
    Stop {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Start a stopped tenant.
    Start {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Delete a tenant (soft: logs and usage are archived).
    Delete {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Show a tenant's versions.
    Deployments {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Show what a tenant used (requests, fuel, time, transfer, tokens…) and
    /// what it costs under the host's prices.
    Usage {
        /// Tenant id or slug.
        tenant: String,
        /// First day or hour included: `YYYY-MM-DD` or `YYYY-MM-DDTHH` (UTC); default 30 days ago.
        #[arg(long)]
        from: Option<String>,
        /// Last day or hour included; default now.
        #[arg(long)]
        to: Option<String>,
        /// One line per `day` or per `hour`.
        #[arg(long, default_value = "day", value_parser = ["day", "hour"])]
        granularity: String,
    },
    /// Show a tenant's plan, overrides and limits in force; with options, change
    /// them (admin token).
    Limits {
        /// Tenant id or slug.
        tenant: String,
        /// Move the tenant to this plan.
        #[arg(long)]
        plan: Option<String>,
        /// Override a limit: `FIELD=VALUE` with a field of `lodge.toml`
        /// (`rate_per_second=5`, `outbound_allow=["api.example.com"]`); repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
        /// Drop an override (back to the plan's value); repeatable.
        #[arg(long = "unset", value_name = "FIELD")]
        unset: Vec<String>,
        /// Drop every override.
        #[arg(long, conflicts_with_all = ["set", "unset"])]
        clear: bool,
    },
}

/// `lodge env …`
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set variables: `K=V` (an empty `K=` still sets an empty value).
    Set {
        /// Tenant id or slug.
        tenant: String,
        /// `NAME=VALUE` pairs.
        #[arg(required = true)]
        vars: Vec<String>,
    },
    /// Remove variables.
    Unset {
        /// Tenant id or slug.
        tenant: String,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `lodge keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Revoke a tenant's keys and print a new one.
    Rotate {
        /// Tenant id or slug.
        tenant: String,
    },
}

/// A client command.
#[derive(Debug)]
pub enum ClientCommand {
    /// `lodge org …`
    Org(OrgCommand),
    /// `lodge tenant …`
    Tenant(TenantCommand),
    /// `lodge deploy TENANT FILE`
    Deploy {
        /// Tenant id or slug.
        tenant: String,
        /// The component.
        file: PathBuf,
    },
    /// `lodge logs TENANT [-f]`
    Logs {
        /// Tenant id or slug.
        tenant: String,
        /// Keep streaming.
        follow: bool,
        /// Lines of backlog.
        limit: usize,
    },
    /// `lodge env …`
    Env(EnvCommand),
    /// `lodge rollback TENANT VERSION`
    Rollback {
        /// Tenant id or slug.
        tenant: String,
        /// Version.
        version: i64,
    },
    /// `lodge keys …`
    Keys(KeysCommand),
}

/// A failed call, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct CallError {
    code: u8,
    message: String,
}

fn exit_code_for(status: reqwest::StatusCode) -> u8 {
    match status.as_u16() {
        401 | 403 => 3,
        404 => 4,
        400 | 409 | 413 | 415 | 422 => 5,
        _ => 1,
    }
}

struct Client {
    http: reqwest::Client,
    conn: Connection,
}

impl Client {
    fn new(conn: Connection) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, conn })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.conn.url.trim_end_matches('/'))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.conn.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = builder
            .send()
            .await
            .with_context(|| format!("cannot reach the host at {}", self.conn.url))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await.unwrap_or(Value::Null));
        }
        Err(call_error(status, response).await.into())
    }

    /// Calls the API; the answer as the JSON it came as, to be read as the
    /// API's own type `T` (the host and this client share it) when shown to a
    /// person. `--json` passes the JSON through untouched, so scripts keep
    /// working across versions of host and client.
    async fn call<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<Answer<T>> {
        Ok(Answer {
            json: self.send(builder).await?,
            kind: std::marker::PhantomData,
        })
    }
}

/// A successful answer: JSON, readable as the API's type `T`.
struct Answer<T> {
    json: Value,
    kind: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> Answer<T> {
    /// The answer as the API's type.
    fn typed(&self) -> anyhow::Result<T> {
        T::deserialize(&self.json)
            .context("the host's answer does not match this client's version of the API")
    }
}

/// A failed call: the message of the API's error body (`ErrorBody`), and the
/// exit code for its status.
async fn call_error(status: reqwest::StatusCode, response: reqwest::Response) -> CallError {
    let message = match response.json::<crate::error::ErrorBody>().await {
        Ok(body) => body.error.message,
        Err(_) => format!("the host answered {status}"),
    };
    CallError {
        code: exit_code_for(status),
        message,
    }
}

fn tenant_path(tenant: &str, rest: &str) -> String {
    format!("/tenant/{}{rest}", urlencode(tenant))
}

/// `s` as one path segment or query value: everything but `A-Z a-z 0-9 - _ .` escaped.
fn urlencode(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// A usage report as a table: one line per period, the total, the cost.
fn usage_table(v: &UsageView) -> String {
    type Column = (&'static str, fn(&Usage) -> i64);
    const COLUMNS: [Column; 8] = [
        ("REQUESTS", |u| u.requests),
        ("FAILED", |u| u.failures),
        ("FUEL", |u| u.fuel),
        ("WALL_MS", |u| u.wall_ms),
        ("BYTES_IN", |u| u.bytes_in),
        ("BYTES_OUT", |u| u.bytes_out),
        ("TOKENS", |u| u.tokens),
        ("KV_OPS", |u| u.kv_ops),
    ];
    let line = |label: &str, usage: &Usage| {
        let mut line = format!("{label:<22}");
        for (_, field) in COLUMNS {
            line.push_str(&format!(" {:>12}", field(usage)));
        }
        line
    };
    let mut out = format!("{:<22}", "PERIOD (UTC)");
    for (title, _) in COLUMNS {
        out.push_str(&format!(" {title:>12}"));
    }
    for bucket in &v.buckets {
        out.push('\n');
        out.push_str(&line(&bucket.start, &bucket.usage));
    }
    out.push('\n');
    out.push_str(&line("total", &v.total));
    out.push_str(&format!(
        "\nestimated cost: {:.4} {} ({} to {})",
        v.cost.total, v.cost.currency, v.from, v.to,
    ));
    out
}

/// Runs a client command; returns the process exit code.
pub async fn run(conn: Connection, command: ClientCommand) -> ExitCode {
    match execute(conn, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.downcast_ref::<CallError>().map_or(1, |c| c.code))
        }
    }
}

async fn execute(conn: Connection, command: ClientCommand) -> anyhow::Result<()> {
    let json_out = conn.json;
    let client = Client::new(conn)?;
    let print_json = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    };
    // The answer as JSON with `--json`, else as `human` writes it.
    macro_rules! show {
        ($answer:expr, $human:expr) => {{
            let answer = $answer;
            if json_out {
                print_json(&answer.json);
            } else {
                let human = $human;
                println!("{}", human(&answer.typed()?));
            }
        }};
    }
    use reqwest::Method;
    match command {
        ClientCommand::Org(OrgCommand::Create { name, plan }) => {
            let body = json!({ "name": name, "plan": plan });
            let answer: Answer<OrgCreated> = client
                .call(client.request(Method::POST, "/orgs").json(&body))
                .await?;
            show!(answer, |v: &OrgCreated| format!(
                "organization {} ({})\napi key (shown once): {}",
                v.org.name, v.org.id, v.api_key
            ));
        }
        ClientCommand::Org(OrgCommand::SetPlan { org, plan }) => {
            let body = json!({ "plan": plan });
            let answer: Answer<OrgEnvelope> = client
                .call(
                    client
                        .request(Method::PATCH, &format!("/orgs/{}", urlencode(&org)))
                        .json(&body),
                )
                .await?;
            show!(answer, |v: &OrgEnvelope| format!(
                "organization {} now on plan {}",
                v.org.id, v.org.plan
            ));
        }
        ClientCommand::Org(OrgCommand::Keys(OrgKeysCommand::Rotate { org })) => {
            let path = format!("/orgs/{}/keys/rotate", urlencode(&org));
            let answer: Answer<KeyRotated> =
                client.call(client.request(Method::POST, &path)).await?;
            show!(answer, |v: &KeyRotated| format!(
                "new organization key (shown once; the old ones no longer work): {}",
                v.api_key
            ));
        }
        ClientCommand::Org(OrgCommand::Keys(OrgKeysCommand::Revoke { org })) => {
            let path = format!("/orgs/{}/keys/revoke", urlencode(&org));
            client.send(client.request(Method::POST, &path)).await?;
            if json_out {
                print_json(&json!({ "revoked": org }));
            } else {
                println!("every key of organization {org} revoked");
            }
        }
        ClientCommand::Tenant(TenantCommand::Create { name, plan, org }) => {
            let body = json!({ "name": name, "plan": plan, "orgId": org });
            let answer: Answer<TenantEnvelope> = client
                .call(client.request(Method::POST, "/tenant/spawn").json(&body))
                .await?;
            show!(answer, |v: &TenantEnvelope| {
                let t = &v.tenant;
                format!(
                    "tenant {} ({}), status {}\nurl: {}\napi key (shown once): {}",
                    t.slug,
                    t.id,
                    t.status,
                    t.url,
                    t.api_key.as_deref().unwrap_or("")
                )
            });
        }
        ClientCommand::Tenant(TenantCommand::List { limit, offset }) => {
            let path = format!("/tenant?limit={limit}&offset={offset}");
            let answer: Answer<TenantList> =
                client.call(client.request(Method::GET, &path)).await?;
            show!(answer, |v: &TenantList| {
                let mut out = format!("{:<24} {:<14} {:>7}  {}", "SLUG", "STATUS", "VERSION", "ID");
                for t in &v.tenants {
                    out.push_str(&format!(
                        "\n{:<24} {:<14} {:>7}  {}",
                        t.slug,
                        t.status.as_str(),
                        version(t.active_version),
                        t.id
                    ));
                }
                if let Some(next) = v.next_offset {
                    out.push_str(&format!("\n(more: --offset {next})"));
                }
                out
            });
        }
        ClientCommand::Tenant(TenantCommand::Status { tenant }) => {
            let answer: Answer<TenantStatusView> = client
                .call(client.request(Method::GET, &tenant_path(&tenant, "/status")))
                .await?;
            show!(answer, |v: &TenantStatusView| {
                let (t, l) = (&v.tenant, &v.limits);
                format!(
                    "{} ({})\nstatus:   {}\nversion:  {}{}\nurl:      {}\nrequests: {} ({} failed, {} running)\nlimits:   fuel {}, memory {} bytes, timeout {} ms, concurrency {}, body {} bytes\nenv:      {}\nlast error: {}",
                    t.slug,
                    t.id,
                    t.status,
                    version(v.active_version),
                    v.tier
                        .map(|t| format!(" ({} code)", t.as_str()))
                        .unwrap_or_default(),
                    t.url,
                    v.counts.requests,
                    v.counts.failures,
                    v.counts.in_flight,
                    l.fuel,
                    l.memory_bytes,
                    l.timeout_ms,
                    l.max_concurrency,
                    l.max_request_body,
                    join(&v.env),
                    v.last_error.as_deref().unwrap_or("none"),
                )
            });
        }
        ClientCommand::Tenant(
            command @ (TenantCommand::Stop { .. } | TenantCommand::Start { .. }),
        ) => {
            let (tenant, action) = match &command {
                TenantCommand::Stop { tenant } => (tenant, "/stop"),
                TenantCommand::Start { tenant } => (tenant, "/start"),
                _ => unreachable!("matched above"),
            };
            let answer: Answer<TenantEnvelope> = client
                .call(client.request(Method::POST, &tenant_path(tenant, action)))
                .await?;
            show!(answer, |v: &TenantEnvelope| format!(
                "{} is {}",
                v.tenant.slug, v.tenant.status
            ));
        }
        ClientCommand::Tenant(TenantCommand::Delete { tenant }) => {
            let answer: Answer<TenantEnvelope> = client
                .call(client.request(Method::DELETE, &tenant_path(&tenant, "")))
                .await?;
            show!(answer, |v: &TenantEnvelope| format!(
                "{} deleted (logs and usage archived)",
                v.tenant.slug
            ));
        }
        ClientCommand::Tenant(TenantCommand::Deployments { tenant }) => {
            let answer: Answer<DeploymentList> = client
                .call(client.request(Method::GET, &tenant_path(&tenant, "/deployments")))
                .await?;
            show!(answer, |v: &DeploymentList| {
                let mut out = format!(
                    "{:>7}  {:<12} {:>10} {:>8}  {}",
                    "VERSION", "SHA256", "SIZE", "COMPILE", "CREATED"
                );
                for d in &v.deployments {
                    out.push_str(&format!(
                        "\n{:>7}{} {:<12} {:>10} {:>6}ms  {}",
                        d.version,
                        if d.active { "*" } else { " " },
                        d.sha256.get(..12).unwrap_or(""),
                        d.size,
                        d.compile_ms,
                        d.created_at
                    ));
                }
                out
            });
        }
        ClientCommand::Tenant(TenantCommand::Usage {
            tenant,
            from,
            to,
            granularity,
        }) => {
            let mut query = vec![format!("granularity={granularity}")];
            query.extend(from.map(|f| format!("from={}", urlencode(&f))));
            query.extend(to.map(|t| format!("to={}", urlencode(&t))));
            let path = tenant_path(&tenant, &format!("/usage?{}", query.join("&")));
            let answer: Answer<UsageView> = client.call(client.request(Method::GET, &path)).await?;
            show!(answer, usage_table);
        }
        ClientCommand::Tenant(TenantCommand::Limits {
            tenant,
            plan,
            set,
            unset,
            clear,
        }) => {
            let path = tenant_path(&tenant, "/limits");
            let mut answer: Answer<LimitsEnvelope> =
                client.call(client.request(Method::GET, &path)).await?;
            if plan.is_some() || !set.is_empty() || !unset.is_empty() || clear {
                let mut overrides = match answer.json["overrides"].take() {
                    Value::Object(map) if !clear => map,
                    _ => serde_json::Map::new(),
                };
                for name in unset {
                    if answer.json["effective"].get(&name).is_none() {
                        return Err(CallError {
                            code: 2,
                            message: format!("{name:?} is not a limit (see `lodge tenant limits`)"),
                        }
                        .into());
                    }
                    overrides.remove(&name);
                }
                for pair in set {
                    let (name, value) = pair.split_once('=').ok_or_else(|| CallError {
                        code: 2,
                        message: format!("expected FIELD=VALUE, got {pair:?}"),
                    })?;
                    // Numbers, booleans and lists as JSON; anything else as text.
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| Value::String(value.to_owned()));
                    overrides.insert(name.to_owned(), value);
                }
                let body = json!({ "plan": plan, "overrides": overrides });
                answer = client
                    .call(client.request(Method::PATCH, &path).json(&body))
                    .await?;
            }
            // Shown from the JSON, like the editor above: a limit this client
            // does not know yet is shown (and kept) rather than refused.
            if json_out {
                print_json(&answer.json);
            } else {
                let v = &answer.json;
                let mut out = format!(
                    "plan:      {}\noverrides: {}\nin force:",
                    v["plan"].as_str().unwrap_or_default(),
                    v["overrides"]
                );
                for (name, value) in v["effective"].as_object().into_iter().flatten() {
                    out.push_str(&format!("\n  {name:<28} {value}"));
                }
                println!("{out}");
            }
        }
        ClientCommand::Deploy { tenant, file } => deploy(&client, json_out, &tenant, &file).await?,
        ClientCommand::Logs {
            tenant,
            follow,
            limit,
        } => logs(&client, json_out, &tenant, follow, limit).await?,
        ClientCommand::Env(command) => {
            let (tenant, vars) = match command {
                EnvCommand::Set { tenant, vars } => {
                    let mut set = std::collections::BTreeMap::new();
                    for pair in vars {
                        let (name, value) = pair.split_once('=').ok_or_else(|| CallError {
                            code: 2,
                            message: format!("expected NAME=VALUE, got {pair:?}"),
                        })?;
                        set.insert(name.to_owned(), Some(value.to_owned()));
                    }
                    (tenant, set)
                }
                EnvCommand::Unset { tenant, names } => {
                    (tenant, names.into_iter().map(|n| (n, None)).collect())
                }
            };
            let answer: Answer<EnvNames> = client
                .call(
                    client
                        .request(Method::PUT, &tenant_path(&tenant, "/env"))
                        .json(&EnvUpdate { vars }),
                )
                .await?;
            show!(answer, |v: &EnvNames| format!(
                "variables now set: {}",
                join(&v.names)
            ));
        }
        ClientCommand::Rollback { tenant, version } => {
            let body = json!({ "version": version });
            let answer: Answer<DeploymentCreated> = client
                .call(
                    client
                        .request(Method::POST, &tenant_path(&tenant, "/rollback"))
                        .json(&body),
                )
                .await?;
            show!(answer, |v: &DeploymentCreated| format!(
                "version {} is active again",
                v.deployment.version
            ));
        }
        ClientCommand::Keys(KeysCommand::Rotate { tenant }) => {
            let answer: Answer<KeyRotated> = client
                .call(client.request(Method::POST, &tenant_path(&tenant, "/keys/rotate")))
                .await?;
            show!(answer, |v: &KeyRotated| format!(
                "new api key (shown once; the old ones no longer work): {}",
                v.api_key
            ));
        }
    }
    Ok(())
}

fn join(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// A version number, or `-` for none.
fn version(v: Option<i64>) -> String {
    v.map_or("-".to_owned(), |n| n.to_string())
}

async fn deploy(
    client: &Client,
    json_out: bool,
    tenant: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let wasm = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let total = wasm.len() as u64;
    let bar = if json_out {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:10} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(wasm)
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        if progress.position() >= total {
            progress.set_message("compiling");
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let request = client
        .request(reqwest::Method::PUT, &tenant_path(tenant, "/component"))
        .header("content-type", "application/wasm")
        .header("content-length", total)
        .body(reqwest::Body::wrap_stream(stream));
    let result = client.call::<DeploymentCreated>(request).await;
    bar.finish_and_clear();
    let answer = result?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer.json).unwrap_or_default()
        );
        return Ok(());
    }
    // The upload succeeded: whatever follows, this exits 0.
    match answer.typed() {
        Ok(DeploymentCreated {
            deployment: d,
            tier,
            optimized_in_ms,
        }) => println!(
            "deployed {} as version {} ({} bytes, sha256 {}…, compiled in {} ms; live on {} code{})",
            file.display(),
            d.version,
            d.size,
            d.sha256.get(..12).unwrap_or(""),
            d.compile_ms,
            tier.as_str(),
            optimized_in_ms
                .map(|ms| format!(", optimised code in about {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default()
        ),
        Err(e) => println!("deployed {} ({e:#})", file.display()),
    }
    let status = client
        .call::<TenantStatusView>(
            client.request(reqwest::Method::GET, &tenant_path(tenant, "/status")),
        )
        .await
        .and_then(|answer| answer.typed());
    match status {
        Ok(status) => println!("url: {}", status.tenant.url),
        Err(e) => eprintln!("(the tenant's URL is unknown: {e:#})"),
    }
    Ok(())
}

async fn logs(
    client: &Client,
    json_out: bool,
    tenant: &str,
    follow: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let show = |json: &Value| {
        if json_out {
            println!("{json}");
            return;
        }
        match LogLine::deserialize(json) {
            // Guest text is escaped: a terminal sequence in a tenant's log
            // must not reach the operator's terminal.
            Ok(line) => println!(
                "{} {:<6} [{}] {}",
                jiff::Timestamp::from_millisecond(line.timestamp_ms as i64)
                    .map(|at| format!("{at:.3}"))
                    .unwrap_or_default(),
                line.stream.as_str(),
                escape_controls(&line.request_id),
                escape_controls(&line.message)
            ),
            // A line of a newer host: shown as it came, escaped.
            Err(_) => println!("{}", escape_controls(&json.to_string())),
        }
    };
    let path = tenant_path(tenant, &format!("/logs?limit={limit}&follow={follow}"));
    if !follow {
        let answer: Answer<LogPage> = client
            .call(client.request(reqwest::Method::GET, &path))
            .await?;
        for line in answer.json["lines"].as_array().into_iter().flatten() {
            show(line);
        }
        return Ok(());
    }
    let response = client
        .request(reqwest::Method::GET, &path)
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot reach the host at {}", client.conn.url))?;
    if !response.status().is_success() {
        return Err(call_error(response.status(), response).await.into());
    }
    // Server-sent events, parsed by eventsource-stream (which keeps a UTF-8
    // character split across chunks whole).
    let mut events = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| anyhow::anyhow!("the log stream broke: {e}"))?;
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        if event.event == "end" {
            let reason = value["reason"].as_str().unwrap_or("the host ended it");
            eprintln!("log stream ended: {}", escape_controls(reason));
            return Ok(());
        }
        show(&value);
    }
    Ok(())
}

/// `text` with control characters (C0, DEL, C1: terminal escape sequences
/// included) written as `\u{…}` escapes; tabs stay.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_in_logs_are_escaped() {
        assert_eq!(escape_controls("plain\ttext"), "plain\ttext");
        let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2Jgone\u{9b}31m";
        let shown = escape_controls(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(shown.contains("\\u{1b}") && shown.contains("gone"));
    }
}
