//! Plans and prices: `lodge.toml`, environment overrides, live reload.
//!
//! A plan is a named set of [`Limits`]. The `default` plan comes from the
//! command line (`lodge serve --fuel …`); every other plan in the file starts
//! from it and changes only the fields it names. A tenant runs under its plan
//! plus its own overrides (`PATCH /api/v1/tenant/{id}/limits`).
//!
//! Any value can also come from the environment, which wins over the file:
//! `LODGE__PLANS__FREE__RATE_PER_SECOND=5`, `LODGE__PRICES__PER_MILLION_REQUESTS=0.2`
//! (`__` separates the path; names are matched lowercased; values are TOML).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Limits;

/// The plan every tenant gets unless it names another.
pub const DEFAULT_PLAN: &str = "default";
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "LODGE__";

/// Some or all of a plan's limits, as written in `lodge.toml` and the API.
///
/// Every field is optional; absent fields keep the value they override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Fuel (about one per WebAssembly instruction) one request may burn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory per instance, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Wall-clock time per request, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Requests running at once; more are answered 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Largest request body, bytes; more is answered 413.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<u64>,
    /// Average requests per second (token bucket); 0 = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// Requests allowed at once above the average rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
    /// Hosts outbound HTTP may reach: `api.example.com` or `*.example.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_allow: Option<Vec<String>>,
    /// Whether outbound HTTP may reach private and loopback addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_allow_private: Option<bool>,
    /// Outbound requests per incoming request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_max_requests: Option<u32>,
    /// Time cap of each outbound request phase, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_timeout_ms: Option<u64>,
    /// Key-value keys across all buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_max_keys: Option<i64>,
    /// Key-value bytes (keys + values) across all buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_max_bytes: Option<i64>,
    /// Convergence tokens per UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_tokens_per_day: Option<u64>,
    /// Largest single wallet transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_max_per_transfer: Option<i64>,
    /// Most a wallet may send per UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_max_per_day: Option<i64>,
    /// CPU share when tenants compete (1 = one fair share, 2 = twice that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Deployed versions kept (older ones are pruned; never the active one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_versions: Option<u32>,
    /// MiB of components the kept versions may take together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stored_component_mib: Option<u64>,
    /// Longest a deploy may spend compiling, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_timeout_ms: Option<u64>,
    /// Asynchronous convergence tasks waiting or running at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_max_pending: Option<u32>,
    /// Keys one key-value batch call may name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_batch_max_keys: Option<u32>,
    /// Bytes (keys + values) one key-value batch call may carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_batch_max_bytes: Option<u64>,
    /// Days archived log lines are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_days: Option<u32>,
    /// Archived log lines kept (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_lines: Option<u32>,
    /// Requests one instance serves in turn (0 or 1: a fresh instance each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
}

/// The slowest request rate a plan may set (above 0, which is unlimited).
pub const MIN_RATE: f64 = 0.001;

/// The most keys one key-value batch may name: a batch reads in one statement
/// with a parameter per key, well under both databases' limits.
pub const MAX_KV_BATCH_KEYS: u32 = 10_000;

/// The most requests one instance may serve in turn.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;

/// Reads the JSON a tenant's overrides are stored as.
impl TryFrom<String> for LimitsPatch {
    type Error = serde_json::Error;

    fn try_from(json: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&json)
    }
}

impl LimitsPatch {
    /// `base` with this patch's fields applied.
    pub fn apply(&self, base: &Limits) -> Limits {
        let mut l = base.clone();
        if let Some(v) = self.fuel {
            l.fuel = v;
        }
        if let Some(v) = self.memory_mib {
            l.memory_bytes = usize::try_from(v.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.timeout_ms {
            l.timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.max_concurrency {
            l.max_concurrency = v;
        }
        if let Some(v) = self.max_request_body {
            l.max_request_body = v;
        }
        if let Some(v) = self.rate_per_second {
            l.rate_per_second = v;
        }
        if let Some(v) = self.rate_burst {
            l.rate_burst = v;
        }
        if let Some(v) = &self.outbound_allow {
            l.outbound_allow = v.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        }
        if let Some(v) = self.outbound_allow_private {
            l.outbound_allow_private = v;
        }
        if let Some(v) = self.outbound_max_requests {
            l.outbound_max_requests = v;
        }
        if let Some(v) = self.outbound_timeout_ms {
            l.outbound_timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.kv_max_keys {
            l.kv_max_keys = v;
        }
        if let Some(v) = self.kv_max_bytes {
            l.kv_max_bytes = v;
        }
        if let Some(v) = self.convergence_tokens_per_day {
            l.convergence_tokens_per_day = v;
        }
        if let Some(v) = self.wallet_max_per_transfer {
            l.wallet_max_per_transfer = v;
        }
        if let Some(v) = self.wallet_max_per_day {
            l.wallet_max_per_day = v;
        }
        if let Some(v) = self.weight {
            l.weight = v;
        }
        if let Some(v) = self.max_versions {
            l.max_versions = v;
        }
        if let Some(v) = self.max_stored_component_mib {
            l.max_stored_component_bytes = v.saturating_mul(1024 * 1024);
        }
        if let Some(v) = self.compile_timeout_ms {
            l.compile_timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.convergence_max_pending {
            l.convergence_max_pending = v;
        }
        if let Some(v) = self.kv_batch_max_keys {
            l.kv_batch_max_keys = v;
        }
        if let Some(v) = self.kv_batch_max_bytes {
            l.kv_batch_max_bytes = v;
        }
        if let Some(v) = self.log_retention_days {
            l.log_retention_days = v;
        }
        if let Some(v) = self.log_retention_lines {
            l.log_retention_lines = v;
        }
        if let Some(v) = self.instance_reuse {
            l.instance_reuse = v;
        }
        l
    }

    /// Every field of `limits`, as a patch (how the API shows effective limits).
    pub fn full(limits: &Limits) -> Self {
        Self {
            fuel: Some(limits.fuel),
            memory_mib: Some((limits.memory_bytes / (1024 * 1024)) as u64),
            timeout_ms: Some(limits.timeout.as_millis() as u64),
            max_concurrency: Some(limits.max_concurrency),
            max_request_body: Some(limits.max_request_body),
            rate_per_second: Some(limits.rate_per_second),
            rate_burst: Some(limits.rate_burst),
            outbound_allow: Some(limits.outbound_allow.clone()),
            outbound_allow_private: Some(limits.outbound_allow_private),
            outbound_max_requests: Some(limits.outbound_max_requests),
            outbound_timeout_ms: Some(limits.outbound_timeout.as_millis() as u64),
            kv_max_keys: Some(limits.kv_max_keys),
            kv_max_bytes: Some(limits.kv_max_bytes),
            convergence_tokens_per_day: Some(limits.convergence_tokens_per_day),
            wallet_max_per_transfer: Some(limits.wallet_max_per_transfer),
            wallet_max_per_day: Some(limits.wallet_max_per_day),
            weight: Some(limits.weight),
            max_versions: Some(limits.max_versions),
            max_stored_component_mib: Some(limits.max_stored_component_bytes / (1024 * 1024)),
            compile_timeout_ms: Some(limits.compile_timeout.as_millis() as u64),
            convergence_max_pending: Some(limits.convergence_max_pending),
            kv_batch_max_keys: Some(limits.kv_batch_max_keys),
            kv_batch_max_bytes: Some(limits.kv_batch_max_bytes),
            log_retention_days: Some(limits.log_retention_days),
            log_retention_lines: Some(limits.log_retention_lines),
            instance_reuse: Some(limits.instance_reuse),
        }
    }

    /// Checks the values against what this host can grant; the message says what is wrong.
    pub fn validate(&self, max_memory_per_instance: usize) -> Result<(), String> {
        let max_mib = (max_memory_per_instance / (1024 * 1024)) as u64;
        if self.memory_mib.is_some_and(|m| m == 0 || m > max_mib) {
            return Err(format!("memory_mib must be 1..={max_mib} on this host"));
        }
        if self.fuel == Some(0) {
            return Err("fuel must be above 0".into());
        }
        if self.timeout_ms == Some(0) {
            return Err("timeout_ms must be above 0".into());
        }
        if self.max_concurrency == Some(0) {
            return Err("max_concurrency must be above 0 (stop the tenant instead)".into());
        }
        if self
            .rate_per_second
            .is_some_and(|r| !r.is_finite() || r < 0.0 || (r > 0.0 && r < MIN_RATE))
        {
            return Err(format!(
                "rate_per_second must be 0 (unlimited) or at least {MIN_RATE} (one request in 1,000 s)"
            ));
        }
        if self.max_versions.is_some_and(|v| v == 0) {
            return Err("max_versions must be at least 1 (the active version)".into());
        }
        if self.compile_timeout_ms == Some(0) {
            return Err("compile_timeout_ms must be above 0".into());
        }
        if self.kv_batch_max_keys == Some(0) || self.kv_batch_max_bytes == Some(0) {
            return Err("kv_batch_max_keys and kv_batch_max_bytes must be above 0".into());
        }
        if self
            .kv_batch_max_keys
            .is_some_and(|n| n > MAX_KV_BATCH_KEYS)
        {
            return Err(format!(
                "kv_batch_max_keys may be at most {MAX_KV_BATCH_KEYS}: a batch is one statement, \
                 one parameter per key"
            ));
        }
        if self.instance_reuse.is_some_and(|n| n > MAX_INSTANCE_REUSE) {
            return Err(format!(
                "instance_reuse must be 0..={MAX_INSTANCE_REUSE} (0 or 1: a fresh instance per request)"
            ));
        }
        if self.weight.is_some_and(|w| w == 0 || w > 100) {
            return Err("weight must be 1..=100".into());
        }
        if self.kv_max_keys.is_some_and(|v| v < 0)
            || self.kv_max_bytes.is_some_and(|v| v < 0)
            || self.wallet_max_per_transfer.is_some_and(|v| v < 0)
            || self.wallet_max_per_day.is_some_and(|v| v < 0)
        {
            return Err("quotas and caps cannot be negative".into());
        }
        for host in self.outbound_allow.iter().flatten() {
            if !is_valid_pattern(host) {
                return Err(format!(
                    "outbound_allow entry {host:?} is not a host name, `*.domain` or an IP address"
                ));
            }
        }
        Ok(())
    }
}

fn is_valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Unit prices for the cost estimate (`[prices]` in `lodge.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PriceTable {
    /// Currency code shown with every amount.
    pub currency: String,
    /// Per million requests.
    pub per_million_requests: f64,
    /// Per billion units of fuel.
    pub per_billion_fuel: f64,
    /// Per hour of request wall time.
    pub per_wall_hour: f64,
    /// Per GiB received or sent.
    pub per_gib_transferred: f64,
    /// Per thousand outbound HTTP requests.
    pub per_thousand_outbound: f64,
    /// Per million convergence tokens.
    pub per_million_tokens: f64,
    /// Per million key-value operations.
    pub per_million_kv_ops: f64,
    /// Per thousand wallet transfers.
    pub per_thousand_wallet_txs: f64,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            per_million_requests: 0.30,
            per_billion_fuel: 0.02,
            per_wall_hour: 0.05,
            per_gib_transferred: 0.05,
            per_thousand_outbound: 0.01,
            per_million_tokens: 2.0,
            per_million_kv_ops: 0.50,
            per_thousand_wallet_txs: 0.10,
        }
    }
}

/// The contents of `lodge.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    plans: BTreeMap<String, LimitsPatch>,
    #[serde(default)]
    prices: PriceTable,
}

/// Every plan this host knows, resolved to limits, and the price table.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanBook {
    plans: BTreeMap<String, Limits>,
    /// Prices for cost estimates.
    pub prices: PriceTable,
}

impl PlanBook {
    /// Parses `text` (TOML) over `default`, then applies `env` overrides.
    pub fn parse(
        text: &str,
        default: &Limits,
        env: impl IntoIterator<Item = (String, String)>,
        max_memory_per_instance: usize,
    ) -> Result<Self, String> {
        let mut table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &path, parse_env_value(&value))
                .map_err(|e| format!("environment variable {name}: {e}"))?;
        }
        let file: FileConfig = table.try_into().map_err(|e| format!("{e}"))?;
        let default_patch = file.plans.get(DEFAULT_PLAN).cloned().unwrap_or_default();
        let base = default_patch.apply(default);
        let mut plans = BTreeMap::from([(DEFAULT_PLAN.to_owned(), base.clone())]);
        for (name, patch) in &file.plans {
            if !crate::routing::is_valid_slug(name) {
                return Err(format!(
                    "plan name {name:?}: use 1-63 of a-z, 0-9 and '-', not at either end"
                ));
            }
            patch
                .validate(max_memory_per_instance)
                .map_err(|e| format!("plan {name:?}: {e}"))?;
            plans.insert(name.clone(), patch.apply(&base));
        }
        Ok(Self {
            plans,
            prices: file.prices,
        })
    }

    /// Reads `path` (see [`PlanBook::parse`]) with the process environment.
    pub fn load(
        path: &Path,
        default: &Limits,
        max_memory_per_instance: usize,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text, default, std::env::vars(), max_memory_per_instance)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The limits of plan `name`.
    pub fn get(&self, name: &str) -> Option<&Limits> {
        self.plans.get(name)
    }

    /// The names of every plan.
    pub fn names(&self) -> Vec<String> {
        self.plans.keys().cloned().collect()
    }

    /// Every plan and its limits.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Limits)> {
        self.plans.iter()
    }

    /// `plan` plus `overrides`; an unknown plan (removed from the file) falls back to `default`.
    pub fn effective(&self, plan: &str, overrides: &LimitsPatch) -> Limits {
        let base = self
            .plans
            .get(plan)
            .or_else(|| self.plans.get(DEFAULT_PLAN))
            .cloned()
            .unwrap_or_default();
        overrides.apply(&base)
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty path".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a table")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [plans.free]
        fuel = 1_000_000
        memory_mib = 32
        rate_per_second = 5
        outbound_allow = ["api.example.com", "*.example.org"]

        [plans.pro]
        max_concurrency = 200
        weight = 4

        [prices]
        per_million_requests = 0.25
    "#;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn plans_start_from_the_default_and_change_only_what_they_name() {
        let base = Limits::default();
        let book = PlanBook::parse(FILE, &base, vars(&[]), 1 << 30).expect("parses");
        assert_eq!(book.names(), ["default", "free", "pro"]);
        let free = book.get("free").expect("free");
        assert_eq!(free.fuel, 1_000_000);
        assert_eq!(free.memory_bytes, 32 << 20);
        assert_eq!(free.outbound_allow, ["api.example.com", "*.example.org"]);
        assert_eq!(free.timeout, base.timeout, "unnamed fields inherit");
        assert_eq!(book.get("pro").map(|p| p.weight), Some(4));
        assert!((book.prices.per_million_requests - 0.25).abs() < 1e-9);
        assert_eq!(book.prices.currency, "USD");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let env = vars(&[
            ("LODGE__PLANS__FREE__FUEL", "42"),
            ("LODGE__PLANS__TEAM__MAX_CONCURRENCY", "7"),
            ("LODGE__PRICES__CURRENCY", "EUR"),
            ("UNRELATED", "x"),
        ]);
        let book = PlanBook::parse(FILE, &Limits::default(), env, 1 << 30).expect("parses");
        assert_eq!(book.get("free").map(|p| p.fuel), Some(42));
        assert_eq!(book.get("team").map(|p| p.max_concurrency), Some(7));
        assert_eq!(book.prices.currency, "EUR");
    }

    #[test]
    fn mistakes_are_reported_with_where_they_are() {
        let base = Limits::default();
        let typo = PlanBook::parse("[plans.free]\nfule = 1\n", &base, vars(&[]), 1 << 30);
        assert!(typo.is_err_and(|e| e.contains("fule")));
        let big = PlanBook::parse("[plans.x]\nmemory_mib = 4096\n", &base, vars(&[]), 1 << 30);
        assert!(big.is_err_and(|e| e.contains("memory_mib")));
        let env = vars(&[("LODGE__PLANS__FREE__FUEL", "lots")]);
        assert!(PlanBook::parse(FILE, &base, env, 1 << 30).is_err());
        let name = PlanBook::parse("[plans.\"Bad Name\"]\n", &base, vars(&[]), 1 << 30);
        assert!(name.is_err_and(|e| e.contains("Bad Name")));
        // A rate so slow its period overflows, and a batch past one statement's parameters.
        let slow = PlanBook::parse(
            "[plans.x]\nrate_per_second = 1e-30\n",
            &base,
            vars(&[]),
            1 << 30,
        );
        assert!(slow.is_err_and(|e| e.contains("rate_per_second")));
        let wide = PlanBook::parse(
            "[plans.x]\nkv_batch_max_keys = 100000\n",
            &base,
            vars(&[]),
            1 << 30,
        );
        assert!(wide.is_err_and(|e| e.contains("kv_batch_max_keys")));
        assert!(
            PlanBook::parse(
                "[plans.x]\nrate_per_second = 0.001\n",
                &base,
                vars(&[]),
                1 << 30
            )
            .is_ok()
        );
    }

    #[test]
    fn the_shipped_lodge_toml_parses() {
        let book = PlanBook::parse(
            include_str!("../../lodge.toml"),
            &Limits::default(),
            vars(&[]),
            1 << 30,
        )
        .expect("lodge.toml parses");
        assert_eq!(book.names(), ["basic", "default", "free", "pro"]);
    }

    #[test]
    fn overrides_apply_over_the_plan() {
        let book = PlanBook::parse(FILE, &Limits::default(), vars(&[]), 1 << 30).expect("ok");
        let patch = LimitsPatch {
            fuel: Some(9),
            ..LimitsPatch::default()
        };
        let limits = book.effective("free", &patch);
        assert_eq!(limits.fuel, 9);
        assert_eq!(limits.memory_bytes, 32 << 20);
        let gone = book.effective("removed-plan", &LimitsPatch::default());
        assert_eq!(&gone, book.get("default").expect("default"));
        assert_eq!(LimitsPatch::full(&limits).apply(&Limits::default()), limits);
    }
}
