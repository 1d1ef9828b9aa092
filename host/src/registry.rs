//! The tenants this host serves, by slug: the data plane's view of the control
//! plane's records.
//!
//! Routing looks a tenant up here on every request. A tenant's state (status,
//! active app, env) is swapped as a whole: a request takes one snapshot and
//! keeps it, so a deploy or rollback never mixes versions within a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::instance::App;
use crate::logs::TenantLogs;
use crate::storage::{TenantStatus, UsageDay};

/// The deployment serving a tenant's requests.
#[derive(Debug, Clone)]
pub struct Active {
    /// Its version number.
    pub version: i64,
    /// The compiled, pre-instantiated component.
    pub app: Arc<App>,
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

/// Usage not yet written to storage.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Requests routed to this tenant.
    pub requests: AtomicU64,
    /// Of those, the ones Lodge answered with an error.
    pub failures: AtomicU64,
    /// Fuel burnt.
    pub fuel: AtomicU64,
    /// Convergence tokens used.
    pub tokens: AtomicU64,
    /// Requests since start (never reset; for status).
    pub total_requests: AtomicU64,
    /// Failures since start (never reset; for status).
    pub total_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl TenantCounters {
    /// Counts one request and whether it failed (with a code for `lastError`).
    pub fn record(&self, failure: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = failure {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.total_failures.fetch_add(1, Ordering::Relaxed);
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(code.to_owned());
        }
    }

    /// The most recent failure's code.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the unflushed usage, leaving zeros.
    pub fn take(&self, day: String) -> UsageDay {
        UsageDay {
            day,
            requests: self.requests.swap(0, Ordering::Relaxed) as i64,
            failures: self.failures.swap(0, Ordering::Relaxed) as i64,
            fuel: self.fuel.swap(0, Ordering::Relaxed) as i64,
            tokens: self.tokens.swap(0, Ordering::Relaxed) as i64,
        }
    }
}

/// One tenant as the data plane sees it.
#[derive(Debug)]
pub struct Tenant {
    /// Its id in storage.
    pub id: Arc<str>,
    /// The slug requests address it by.
    pub slug: String,
    /// Its plan's limits.
    pub limits: Limits,
    /// Its recent logs.
    pub logs: Arc<TenantLogs>,
    /// Usage not yet flushed, and totals.
    pub counters: Arc<TenantCounters>,
    /// Serializes deploys, rollbacks, starts and stops of this tenant.
    pub changes: tokio::sync::Mutex<()>,
    concurrency: Arc<Semaphore>,
    rate: crate::limits::RateLimiter,
    state: RwLock<TenantState>,
}

impl Tenant {
    /// A tenant with no deployment yet.
    pub fn new(
        id: impl Into<Arc<str>>,
        slug: impl Into<String>,
        limits: Limits,
        logs: Arc<TenantLogs>,
    ) -> Self {
        Self {
            id: id.into(),
            slug: slug.into(),
            concurrency: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
            rate: crate::limits::RateLimiter::new(limits.rate_per_second, limits.rate_burst),
            limits,
            logs,
            counters: Arc::default(),
            changes: tokio::sync::Mutex::new(()),
            state: RwLock::new(TenantState {
                status: TenantStatus::Provisioning,
                active: None,
                env: Arc::from(Vec::new()),
            }),
        }
    }

    /// The state a request runs under.
    pub fn state(&self) -> TenantState {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the state; requests already admitted keep their snapshot.
    pub fn update(&self, change: impl FnOnce(&mut TenantState)) {
        change(&mut self.state.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// The app serving new requests, if any.
    pub fn active(&self) -> Option<Active> {
        self.state().active
    }

    /// This tenant's request-rate bucket.
    pub fn rate(&self) -> &crate::limits::RateLimiter {
        &self.rate
    }

    /// Permits for this tenant's concurrent requests.
    pub fn concurrency(&self) -> &Arc<Semaphore> {
        &self.concurrency
    }

    /// Requests running now.
    pub fn in_flight(&self) -> u64 {
        (self.limits.max_concurrency as usize).saturating_sub(self.concurrency.available_permits())
            as u64
    }
}

/// All tenants of this host.
#[derive(Debug, Default)]
pub struct Registry {
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
}

impl Registry {
    /// The tenant with `slug`.
    pub fn get(&self, slug: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(slug)
            .cloned()
    }

    /// Adds or replaces a tenant.
    pub fn insert(&self, tenant: Arc<Tenant>) {
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.slug.clone(), tenant);
    }

    /// Removes a tenant; requests already running finish.
    pub fn remove(&self, slug: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(slug)
    }

    /// The tenant with storage id `id` (a scan: control-plane paths only).
    pub fn by_id(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|t| &*t.id == id)
            .cloned()
    }

    /// Every tenant.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// How many tenants are registered.
    pub fn len(&self) -> usize {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
