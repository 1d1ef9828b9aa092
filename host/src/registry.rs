//! The tenants this host serves, by slug: the data plane's view of the control
//! plane's records.
//!
//! Routing looks a tenant up here on every request. A tenant's state (status,
//! active app, env) is swapped as a whole: a request takes one snapshot and
//! keeps it, so a deploy or rollback never mixes versions within a request.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::config::Limits;
use crate::instance::App;
use crate::instance::warm::WarmSet;
use crate::limits::{RateLimiter, TenantLoad};
use crate::logs::TenantLogs;
use crate::metrics::TenantMetrics;
use crate::plans::LimitsPatch;
use crate::storage::TenantStatus;

/// The deployment serving a tenant's requests. Its component is in memory
/// only while the tenant is in use: loaded on the first request (from the
/// precompiled artifact, a few ms), dropped again after the tenant sat idle
/// (`HostConfig::idle_unload`), so an idle tenant costs kilobytes.
#[derive(Debug, Clone)]
pub struct Active {
    /// Its version number.
    pub version: i64,
    /// SHA-256 of its `.wasm`, lowercase hex.
    pub digest: Arc<str>,
    /// Size of its `.wasm` in bytes.
    pub size: usize,
    code: Arc<Code>,
}

/// The loaded component of an [`Active`] version, if loaded.
#[derive(Debug, Default)]
struct Code {
    app: Mutex<Option<Arc<App>>>,
    loading: tokio::sync::Mutex<()>,
    /// When a request last used it ([`now_ms`]).
    last_used: AtomicU64,
    /// The last failed load: when ([`now_ms`]) and why. Requests within
    /// [`RETRY_LOAD_AFTER`] get the same answer instead of loading again.
    failed: Mutex<Option<(u64, String)>>,
}

/// How long a failed load is answered from memory before it is tried again.
const RETRY_LOAD_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Milliseconds on a monotonic clock (since the first call).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Active {
    /// Version `version` with its component already loaded.
    pub fn loaded(version: i64, app: Arc<App>) -> Self {
        let active = Self::unloaded(version, &app.digest, app.size);
        *active
            .code
            .app
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(app);
        active
    }

    /// Version `version` of the component `digest`, loaded on first use.
    pub fn unloaded(version: i64, digest: &str, size: usize) -> Self {
        let code = Code::default();
        code.last_used.store(now_ms(), Ordering::Relaxed);
        Self {
            version,
            digest: digest.into(),
            size,
            code: Arc::new(code),
        }
    }

    /// The component, if it is in memory now.
    pub fn app(&self) -> Option<Arc<App>> {
        self.code
            .app
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The component, loaded by `load` if it is not in memory (one load at a
    /// time; requests arriving meanwhile wait for it). A failure is answered
    /// from memory for [`RETRY_LOAD_AFTER`], so a broken version does not load
    /// again on every request.
    pub async fn app_or_load<E, F>(&self, load: impl FnOnce() -> F) -> Result<Arc<App>, String>
    where
        E: std::fmt::Display,
        F: Future<Output = Result<Arc<App>, E>>,
    {
        let now = now_ms();
        self.code.last_used.store(now, Ordering::Relaxed);
        if let Some(app) = self.app() {
            return Ok(app);
        }
        let _loading = self.code.loading.lock().await;
        if let Some(app) = self.app() {
            return Ok(app);
        }
        if let Some((at, why)) = &*self
            .code
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            && now.saturating_sub(*at) < RETRY_LOAD_AFTER.as_millis() as u64
        {
            return Err(why.clone());
        }
        match load().await {
            Ok(app) => {
                *self.code.app.lock().unwrap_or_else(PoisonError::into_inner) = Some(app.clone());
                *self
                    .code
                    .failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                Ok(app)
            }
            Err(e) => {
                let why = e.to_string();
                *self
                    .code
                    .failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((now_ms(), why.clone()));
                Err(why)
            }
        }
    }

    /// Drops the component if no request used it for `idle`; whether it did.
    /// Requests running now keep their own reference.
    pub fn unload_if_idle(&self, idle: std::time::Duration) -> bool {
        let idle_since = now_ms().saturating_sub(idle.as_millis() as u64);
        if self.code.last_used.load(Ordering::Relaxed) > idle_since {
            return false;
        }
        self.code
            .app
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
    }
}

/// What a request needs to know about its tenant, taken once per request.
#[derive(Debug, Clone)]
pub struct TenantState {
    /// Life-cycle status.
    pub status: TenantStatus,
    /// The active deployment, if any.
    pub active: Option<Active>,
    /// Environment variables the guest sees.
    pub env: Arc<[(String, String)]>,
}

pub use crate::counters::TenantCounters;

/// A tenant's effective limits and the rate bucket they configure, swapped as one.
#[derive(Debug)]
pub struct Governor {
    /// The limits requests run under.
    pub limits: Limits,
    /// The request-rate bucket.
    pub rate: RateLimiter,
}

/// One tenant as the data plane sees it.
#[derive(Debug)]
pub struct Tenant {
    /// Its id in storage.
    pub id: Arc<str>,
    /// The slug requests address it by.
    pub slug: String,
    /// Its recent logs.
    pub logs: Arc<TenantLogs>,
    /// Usage not yet flushed, and totals.
    pub counters: Arc<TenantCounters>,
    /// Serializes deploys, rollbacks, starts and stops of this tenant.
    pub changes: tokio::sync::Mutex<()>,
    /// Requests in flight and CPU lanes in use.
    pub load: Arc<TenantLoad>,
    /// Its series in `/metrics`.
    pub metrics: TenantMetrics,
    /// When a flood of refusals was last written to its log (ms since the epoch).
    pub last_limit_log: AtomicU64,
    /// Instances kept between its requests (plan `instance_reuse`), emptied
    /// whenever its state or plan changes.
    pub warm: Arc<WarmSet>,
    governor: ArcSwap<Governor>,
    plan: ArcSwap<(String, LimitsPatch)>,
    synced: ArcSwap<String>,
    state: ArcSwap<TenantState>,
    /// Serializes writers of `state` (readers never wait).
    state_writer: Mutex<()>,
}

impl Tenant {
    /// A tenant with no deployment yet, on plan `default` with `limits`.
    pub fn new(
        id: impl Into<Arc<str>>,
        slug: impl Into<String>,
        limits: Limits,
        logs: Arc<TenantLogs>,
    ) -> Self {
        let slug = slug.into();
        Self {
            id: id.into(),
            metrics: TenantMetrics::default(),
            last_limit_log: AtomicU64::new(0),
            synced: ArcSwap::default(),
            slug,
            governor: ArcSwap::from_pointee(Governor {
                rate: RateLimiter::new(limits.rate_per_second, limits.rate_burst),
                limits,
            }),
            plan: ArcSwap::from_pointee((
                crate::plans::DEFAULT_PLAN.to_owned(),
                LimitsPatch::default(),
            )),
            load: Arc::default(),
            logs,
            counters: Arc::default(),
            changes: tokio::sync::Mutex::new(()),
            state: ArcSwap::from_pointee(TenantState {
                status: TenantStatus::Provisioning,
                active: None,
                env: Arc::from(Vec::new()),
            }),
            state_writer: Mutex::new(()),
            warm: Arc::default(),
        }
    }

    /// This tenant with its `/metrics` series.
    pub fn with_metrics(mut self, metrics: TenantMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The state a request runs under.
    pub fn state(&self) -> TenantState {
        TenantState::clone(&self.state.load())
    }

    /// Changes the state; requests already admitted keep their snapshot.
    pub fn update(&self, change: impl FnOnce(&mut TenantState)) {
        let _one_writer = self
            .state_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = self.state();
        change(&mut next);
        let current = self.state.load();
        let same = next.status == current.status
            && next.active.as_ref().map(|a| (a.version, &a.digest))
                == current.active.as_ref().map(|a| (a.version, &a.digest))
            && next.env == current.env;
        self.state.store(Arc::new(next));
        if !same {
            // After the store: a request that read the old generation cannot
            // park an instance of the old state.
            self.warm.invalidate();
        }
    }

    /// The app serving new requests, if any.
    pub fn active(&self) -> Option<Active> {
        self.state().active
    }

    /// The parts of this tenant its requests' capabilities use.
    pub fn parts(&self) -> crate::capability::TenantRef<'_> {
        crate::capability::TenantRef {
            id: &self.id,
            logs: &self.logs,
            counters: &self.counters,
        }
    }

    /// The limits (and rate bucket) new requests run under.
    pub fn governor(&self) -> Arc<Governor> {
        self.governor.load_full()
    }

    /// The limits new requests run under.
    pub fn limits(&self) -> Limits {
        self.governor().limits.clone()
    }

    /// Applies new limits to new requests; running ones finish under the old.
    /// The rate bucket is kept (with its tokens) unless the rate changed.
    pub fn set_limits(&self, limits: Limits) {
        let governor = self.governor.load();
        if governor.limits == limits {
            return;
        }
        let same_rate = governor.limits.rate_per_second == limits.rate_per_second
            && governor.limits.rate_burst == limits.rate_burst;
        let rate = if same_rate {
            governor.rate.clone()
        } else {
            RateLimiter::new(limits.rate_per_second, limits.rate_burst)
        };
        self.governor.store(Arc::new(Governor { limits, rate }));
        // Kept instances were made under the old plan (memory cap, table cap).
        self.warm.invalidate();
    }

    /// Its plan's name and its own overrides.
    pub fn plan(&self) -> (String, LimitsPatch) {
        <(String, LimitsPatch)>::clone(&self.plan.load())
    }

    /// Records its plan and overrides (the caller then applies the limits).
    pub fn set_plan(&self, plan: String, overrides: LimitsPatch) {
        self.plan.store(Arc::new((plan, overrides)));
    }

    /// The `updated_at` of the stored record this host last applied (several
    /// hosts: the reconcile refreshes a tenant whose record moved past it).
    pub fn synced(&self) -> String {
        String::clone(&self.synced.load())
    }

    /// Records that the stored record of `updated_at` is applied.
    pub fn set_synced(&self, updated_at: &str) {
        self.synced.store(Arc::new(updated_at.to_owned()));
    }

    /// Requests running now.
    pub fn in_flight(&self) -> u64 {
        u64::from(self.load.in_flight())
    }
}

/// All tenants of this host, by slug and by storage id.
#[derive(Debug, Default)]
pub struct Registry {
    tenants: RwLock<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    by_slug: HashMap<String, Arc<Tenant>>,
    by_id: HashMap<Arc<str>, Arc<Tenant>>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.tenants.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant with `slug`.
    pub fn get(&self, slug: &str) -> Option<Arc<Tenant>> {
        self.read().by_slug.get(slug).cloned()
    }

    /// Adds or replaces a tenant (by slug; a tenant it replaces leaves the id map too).
    pub fn insert(&self, tenant: Arc<Tenant>) {
        let mut maps = self.write();
        if let Some(old) = maps.by_slug.insert(tenant.slug.clone(), tenant.clone())
            && old.id != tenant.id
            && maps
                .by_id
                .get(&old.id)
                .is_some_and(|t| Arc::ptr_eq(t, &old))
        {
            maps.by_id.remove(&old.id);
        }
        maps.by_id.insert(tenant.id.clone(), tenant);
    }

    /// Removes a tenant; requests already running finish.
    pub fn remove(&self, slug: &str) -> Option<Arc<Tenant>> {
        let mut maps = self.write();
        let tenant = maps.by_slug.remove(slug)?;
        if maps
            .by_id
            .get(&tenant.id)
            .is_some_and(|t| Arc::ptr_eq(t, &tenant))
        {
            maps.by_id.remove(&tenant.id);
        }
        Some(tenant)
    }

    /// The tenant with storage id `id`.
    pub fn by_id(&self, id: &str) -> Option<Arc<Tenant>> {
        self.read().by_id.get(id).cloned()
    }

    /// Every tenant.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.read().by_slug.values().cloned().collect()
    }

    /// How many tenants are registered.
    pub fn len(&self) -> usize {
        self.read().by_slug.len()
    }

    /// Whether no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::convergence::tasks::HeldTenants for Registry {
    fn held(&self, tenant_id: &str) -> Option<crate::convergence::tasks::HeldTenant> {
        let tenant = self.by_id(tenant_id)?;
        let governor = tenant.governor();
        Some(crate::convergence::tasks::HeldTenant {
            tokens_per_day: governor.limits.convergence_tokens_per_day,
            max_pending: governor.limits.convergence_max_pending,
            counters: tenant.counters.clone(),
        })
    }
}

/// Each tenant's code tier, read at scrape time for `/metrics`: a series per
/// labelled tenant whose active code is in memory; `_other` counts the rest.
#[derive(Debug)]
pub struct TierCollector {
    /// The tenants read. Weak: tenants hold the metrics that hold this collector.
    pub registry: std::sync::Weak<Registry>,
}

impl prometheus_client::collector::Collector for TierCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let mut counts: std::collections::BTreeMap<(Arc<str>, &'static str), i64> =
            std::collections::BTreeMap::new();
        let tenants = self
            .registry
            .upgrade()
            .map(|registry| registry.all())
            .unwrap_or_default();
        for tenant in tenants {
            if let Some(app) = tenant.active().and_then(|active| active.app()) {
                let key = (tenant.metrics.label.clone(), app.tier().as_str());
                *counts.entry(key).or_default() += 1;
            }
        }
        let series: Vec<(crate::metrics::Labels, i64)> = counts
            .into_iter()
            .map(|((tenant, tier), n)| {
                (
                    vec![("tenant", tenant.to_string()), ("tier", tier.to_owned())],
                    n,
                )
            })
            .collect();
        crate::metrics::gauges(
            &mut encoder,
            "tenant_code_tier",
            "Tenants whose active code is in memory, by its compile tier (`_other`: how many of the unlabelled tenants)",
            &series,
        )
    }
}
