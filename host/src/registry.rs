//! The tenants this host serves, by slug.
//!
//! Routing looks a tenant up here on every request; `--app` fills it at start,
//! and the control plane changes it at runtime. A tenant's active [`App`] is
//! swapped atomically: requests already running keep the `Arc` they took.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::instance::App;
use crate::logs::TenantLogs;

/// One tenant as the data plane sees it.
#[derive(Debug)]
pub struct Tenant {
    /// The slug requests address it by.
    pub slug: String,
    /// Its plan.
    pub limits: Limits,
    /// Its recent logs.
    pub logs: Arc<TenantLogs>,
    /// Environment variables its guest sees.
    pub env: Vec<(String, String)>,
    concurrency: Arc<Semaphore>,
    active: RwLock<Option<Arc<App>>>,
}

impl Tenant {
    /// A tenant with no deployment yet.
    pub fn new(slug: impl Into<String>, limits: Limits, log_lines: usize) -> Self {
        let slug = slug.into();
        Self {
            logs: Arc::new(TenantLogs::new(slug.clone(), log_lines)),
            concurrency: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
            slug,
            limits,
            env: Vec::new(),
            active: RwLock::new(None),
        }
    }

    /// The app serving new requests, if any.
    pub fn active(&self) -> Option<Arc<App>> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `app` serve every request admitted from now on.
    pub fn activate(&self, app: Arc<App>) {
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = Some(app);
    }

    /// Permits for this tenant's concurrent requests.
    pub fn concurrency(&self) -> &Arc<Semaphore> {
        &self.concurrency
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

    /// Slugs of all tenants, sorted.
    pub fn slugs(&self) -> Vec<String> {
        let mut slugs: Vec<String> = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        slugs.sort();
        slugs
    }
}
