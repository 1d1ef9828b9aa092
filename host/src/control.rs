//! Control-plane operations: what the REST API, the CLI's `--app` and the
//! restart path do to tenants. Storage first, then the in-memory registry, so a
//! crash between the two leaves storage right and the next start rebuilds the
//! registry from it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::auth::{self, AdminToken};
use crate::config::{HostConfig, Limits, Tier};
use crate::instance::{App, LoadError, Runtime};
use crate::logs::{ArchiveSender, TenantLogs};
use crate::metrics::Metrics;
use crate::plans::{LimitsPatch, PlanBook};
use crate::registry::{Active, Registry, Tenant};
use crate::storage::Storage;
use crate::storage::{Deployment, Org, StorageError, TenantRecord, TenantStatus, now_rfc3339};
use crate::wallet::MasterKey;
use crate::wallet::Purpose;

/// The control plane: tenants' life cycle (spawn, deploy, rollback, stop and
/// start, env, keys, limits, delete), restore at start, usage flushes, and
/// keeping this host's registry in line with storage (with `sync`). Built
/// by the composition root (`Lodge::open`) with only the handles it uses.
#[derive(Debug)]
pub struct ControlPlane {
    /// Host-wide settings.
    pub config: HostConfig,
    /// The engine, linker and artifact cache.
    pub runtime: Arc<Runtime>,
    /// The tenants served.
    pub registry: Arc<Registry>,
    /// Everything that survives a restart.
    pub storage: Arc<dyn Storage>,
    /// The operator's token.
    pub admin: AdminToken,
    /// The key sealing wallet seeds, env values and webhook secrets.
    pub master: Arc<MasterKey>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Sends change notices to other hosts (PostgreSQL only).
    pub(crate) notifier: Option<crate::sync::Notifier>,
    plans: arc_swap::ArcSwap<PlanBook>,
    me: Weak<ControlPlane>,
    /// Where tenants' log lines go to be archived.
    pub(crate) log_archive: ArchiveSender,
    /// Compilations running at once (one per core): a burst of cold tenants
    /// after an engine upgrade queues instead of exhausting memory.
    compiles: Arc<tokio::sync::Semaphore>,
    /// Deploy uploads received or compiled at once (`--max-uploads`).
    pub(crate) uploads: Uploads,
}

/// What [`ControlPlane::new`] is built from.
#[derive(Debug)]
pub struct ControlParts {
    /// Host-wide settings.
    pub config: HostConfig,
    /// The engine.
    pub runtime: Arc<Runtime>,
    /// The tenants served.
    pub registry: Arc<Registry>,
    /// Storage.
    pub storage: Arc<dyn Storage>,
    /// The operator's token.
    pub admin: AdminToken,
    /// The master key.
    pub master: Arc<MasterKey>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Change notices (PostgreSQL).
    pub notifier: Option<crate::sync::Notifier>,
    /// The plans in force.
    pub plans: PlanBook,
    /// The log archive's queue.
    pub log_archive: ArchiveSender,
}

impl ControlPlane {
    /// The control plane over `parts`.
    pub fn new(parts: ControlParts) -> Arc<Self> {
        let uploads = Uploads::new(parts.config.max_uploads);
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            uploads,
            config: parts.config,
            runtime: parts.runtime,
            registry: parts.registry,
            storage: parts.storage,
            admin: parts.admin,
            master: parts.master,
            metrics: parts.metrics,
            notifier: parts.notifier,
            plans: arc_swap::ArcSwap::from_pointee(parts.plans),
            log_archive: parts.log_archive,
            compiles: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
    }

    /// The plans in force.
    pub fn plans(&self) -> Arc<PlanBook> {
        self.plans.load_full()
    }

    pub(crate) fn set_plans(&self, book: PlanBook) {
        self.plans.store(Arc::new(book));
    }

    /// A weak handle to this control plane, for work that outlives a call.
    pub fn weak(&self) -> Weak<Self> {
        self.me.clone()
    }

    /// Where end users reach tenant `slug`.
    pub fn tenant_url(&self, slug: &str) -> String {
        match &self.config.base_domain {
            Some(domain) => format!("http://{slug}.{}/", domain.trim_matches('.')),
            None => format!("http://{slug}.localhost:{}/", self.config.listen.port()),
        }
    }

    /// Compiles `wasm` off the async threads (validation only; nothing is stored).
    pub async fn load(&self, wasm: impl Into<Bytes>) -> Result<Arc<App>, LoadError> {
        let wasm: Bytes = wasm.into();
        let _permit = self
            .compiles
            .acquire()
            .await
            .map_err(|e| LoadError::Internal(e.into()))?;
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load(wasm).map(Arc::new))
            .await
            .map_err(|e| LoadError::Internal(e.into()))?
    }

    /// Creates (or updates) tenant `slug` in the `local` organization serving
    /// `wasm`; `limits`, if given, become the tenant's own (stored) limits.
    pub async fn add_app(
        &self,
        slug: &str,
        wasm: Vec<u8>,
        limits: Option<Limits>,
    ) -> anyhow::Result<Arc<Tenant>> {
        anyhow::ensure!(
            crate::routing::is_valid_slug(slug),
            "invalid tenant slug {slug:?}: use 1-63 of a-z, 0-9 and '-', not at either end"
        );
        let tenant = self.ensure_local_app(slug, wasm).await?;
        if let Some(limits) = limits {
            let _change = tenant.changes.lock().await;
            let (plan, _) = tenant.plan();
            let overrides = LimitsPatch::full(&limits);
            self.storage
                .set_tenant_limits(&tenant.id, &plan, &overrides)
                .await?;
            tenant.set_plan(plan, overrides);
            // Exactly these limits (the stored form rounds memory to MiB).
            tenant.set_limits(limits);
        }
        Ok(tenant)
    }

    /// Adds tenant `slug` from a `.wasm` file (`lodge serve --app`).
    pub async fn add_app_file(&self, slug: &str, path: &Path) -> anyhow::Result<Arc<Tenant>> {
        let wasm = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        self.add_app(slug, wasm, None)
            .await
            .with_context(|| format!("loading {} as tenant {slug:?}", path.display()))
    }
}

/// Why a control-plane operation failed, in terms the API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such live tenant (or version).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule refused it.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request was wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    /// The version existed and was pruned.
    #[error("{0}")]
    Gone(String),
    /// The upload is larger than the plan allows.
    #[error("{0}")]
    TooLarge(String),
    /// Compiling took longer than the plan allows.
    #[error(
        "compiling the component took longer than this plan's limit of {} s \
         (compile_timeout_ms); make it smaller or ask for a larger limit",
        .0.as_secs_f64()
    )]
    CompileTimeout(Duration),
    /// Another upload is in progress (the tenant's own, or the host's limit).
    #[error("{}", match .0 {
        UploadBusy::Tenant => "another deploy of this tenant is in progress; retry when it ends",
        UploadBusy::Host => "the host is receiving as many deploys as it can; retry shortly",
    })]
    UploadBusy(UploadBusy),
    /// The component was refused.
    #[error(transparent)]
    Component(#[from] LoadError),
    /// Storage failed.
    #[error("storage failed")]
    Storage(#[source] StorageError),
}

impl From<StorageError> for ControlError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => Self::NotFound("tenant"),
            StorageError::Conflict(what) => Self::Conflict(what.to_owned()),
            other => Self::Storage(other),
        }
    }
}

/// How a sealed env value starts in storage (then hex of nonce and ciphertext).
const SEALED_ENV: &str = "sealed:v1:";

/// A tenant's environment as read from storage.
#[derive(Debug, Default)]
pub(crate) struct StoredEnv {
    /// Name and value, opened.
    pub vars: Vec<(String, String)>,
    /// Whether some value was stored in plaintext (before values were sealed).
    pub plaintext: bool,
}

/// Why an upload was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadBusy {
    /// The tenant already has an upload in progress.
    Tenant,
    /// The host has `--max-uploads` in progress.
    Host,
}

/// Deploy uploads in progress: one per tenant and a few per host, taken before
/// the body is read and held until its compilation really ends (even past the
/// compile time limit), so a tenant cannot pile up uploads in memory or
/// compilations on the cores.
#[derive(Debug)]
pub struct Uploads {
    host: Arc<tokio::sync::Semaphore>,
    tenants: Arc<Mutex<HashSet<String>>>,
}

/// One upload in progress; dropping it lets the next one in.
#[derive(Debug)]
pub struct UploadSlot {
    _host: tokio::sync::OwnedSemaphorePermit,
    tenant: String,
    tenants: Arc<Mutex<HashSet<String>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.tenant);
    }
}

impl Uploads {
    /// At most `max` uploads at once across the host.
    pub fn new(max: usize) -> Self {
        Self {
            host: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            tenants: Arc::default(),
        }
    }

    /// Starts an upload for `tenant_id`, or says why not (never waits).
    pub fn try_start(&self, tenant_id: &str) -> Result<UploadSlot, UploadBusy> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if tenants.contains(tenant_id) {
            return Err(UploadBusy::Tenant);
        }
        let permit = self
            .host
            .clone()
            .try_acquire_owned()
            .map_err(|_| UploadBusy::Host)?;
        tenants.insert(tenant_id.to_owned());
        Ok(UploadSlot {
            _host: permit,
            tenant: tenant_id.to_owned(),
            tenants: self.tenants.clone(),
        })
    }
}

/// Tenants read per page when every tenant is read (restart, reconcile), by
/// id. 500: sqlx-sqlite looks up every `$N` by name, so the cost of a
/// restart page's `IN (…)` lists grows with their square (1,000 measured 1.8x
/// slower overall).
const RESTORE_PAGE: i64 = 500;

/// Result of [`ControlPlane::deploy`]: the new version and the code it went live on.
#[derive(Debug)]
pub struct Deployed {
    /// The new active version.
    pub deployment: Deployment,
    /// The compile tier serving it now.
    pub tier: Tier,
    /// When it runs on baseline code: about how long until the optimised code
    /// replaces it (ms, an estimate from this host's optimised compiles so far).
    pub optimized_in_ms: Option<u64>,
}

/// Result of [`ControlPlane::spawn_tenant`].
#[derive(Debug)]
pub struct Spawned {
    /// The stored tenant.
    pub tenant: TenantRecord,
    /// Its first tenant key, shown once.
    pub api_key: String,
}

/// Derives a slug from a display name: lowercase, `[a-z0-9-]`, at most 63.
pub fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let mut slug: String = slug.chars().take(63).collect();
    while slug.ends_with('-') {
        slug.pop();
    }
    slug
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

impl ControlPlane {
    /// `plan`, or `default`, if this host knows it.
    fn check_plan(&self, plan: Option<String>) -> Result<String, ControlError> {
        let plan = plan.unwrap_or_else(|| crate::plans::DEFAULT_PLAN.to_owned());
        let book = self.plans();
        if book.get(&plan).is_some() {
            Ok(plan)
        } else {
            Err(ControlError::Invalid(format!(
                "unknown plan {plan:?}; known plans: {}",
                book.names().join(", ")
            )))
        }
    }

    /// Changes a tenant's plan and/or replaces its own overrides; applies to new requests at once.
    pub async fn set_tenant_limits(
        &self,
        record: &TenantRecord,
        plan: Option<String>,
        overrides: Option<LimitsPatch>,
    ) -> Result<Limits, ControlError> {
        let tenant = self.live(record).await?;
        let _change = tenant.changes.lock().await;
        let (current_plan, current_overrides) = tenant.plan();
        let plan = match plan {
            Some(plan) => self.check_plan(Some(plan))?,
            None => current_plan,
        };
        let overrides = overrides.unwrap_or(current_overrides);
        overrides
            .validate(self.config.max_memory_per_instance)
            .map_err(ControlError::Invalid)?;
        self.storage
            .set_tenant_limits(&record.id, &plan, &overrides)
            .await?;
        let limits = self.plans().effective(&plan, &overrides);
        tenant.set_plan(plan, overrides);
        tenant.set_limits(limits.clone());
        tracing::info!(tenant = %record.slug, "limits changed");
        self.announce(&record.id).await;
        Ok(limits)
    }

    /// Re-reads the config file; on a change, every tenant's limits follow at once.
    /// A broken file is reported and the plans in force stay.
    pub fn reload_plans(&self) -> Result<bool, String> {
        let Some(path) = &self.config.config_file else {
            return Ok(false);
        };
        let book = PlanBook::load(
            path,
            &self.config.default_limits,
            self.config.max_memory_per_instance,
        )?;
        if *self.plans() == book {
            return Ok(false);
        }
        self.set_plans(book);
        for tenant in self.registry.all() {
            let (plan, overrides) = tenant.plan();
            tenant.set_limits(self.plans().effective(&plan, &overrides));
        }
        tracing::info!(path = %path.display(), "plans reloaded");
        Ok(true)
    }

    /// Moves an organization to `plan`; its tenants that were on its old plan
    /// move with it (tenants the operator put on another plan stay there).
    pub async fn set_org_plan(&self, org_id: &str, plan: &str) -> Result<Org, ControlError> {
        let org = self.storage.get_org(org_id).await.map_err(|e| match e {
            StorageError::NotFound => ControlError::NotFound("organization"),
            other => other.into(),
        })?;
        let plan = self.check_plan(Some(plan.to_owned()))?;
        self.storage.set_org_plan(org_id, &plan).await?;
        let mut offset = 0;
        loop {
            let page = self.storage.list_tenants(Some(org_id), 500, offset).await?;
            for record in page.iter().filter(|t| t.plan == org.plan) {
                self.set_tenant_limits(record, Some(plan.clone()), None)
                    .await?;
            }
            if page.len() < 500 {
                break;
            }
            offset += 500;
        }
        Ok(Org { plan, ..org })
    }

    /// Revokes an organization's keys (not its tenants') and, with
    /// `replace`, makes a new one (returned).
    pub async fn rotate_org_keys(
        &self,
        org_id: &str,
        replace: bool,
    ) -> Result<Option<String>, ControlError> {
        self.storage.get_org(org_id).await.map_err(|e| match e {
            StorageError::NotFound => ControlError::NotFound("organization"),
            other => other.into(),
        })?;
        self.storage.revoke_org_keys(org_id).await?;
        if !replace {
            return Ok(None);
        }
        let key = auth::new_key(org_id, None);
        self.storage.insert_key(&key.record).await?;
        Ok(Some(key.plaintext))
    }

    /// Creates an organization and its first key.
    pub async fn create_org(
        &self,
        name: &str,
        plan: Option<String>,
    ) -> Result<(Org, String), ControlError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ControlError::Invalid(
                "name must be 1-200 characters".into(),
            ));
        }
        let org = Org {
            id: new_id("org"),
            name: name.to_owned(),
            plan: self.check_plan(plan)?,
            created_at: now_rfc3339(),
        };
        self.storage.create_org(&org).await?;
        let key = auth::new_key(&org.id, None);
        self.storage.insert_key(&key.record).await?;
        Ok((org, key.plaintext))
    }

    /// Creates a tenant of `org_id` named `name`, with its first key; the slug
    /// is derived. Only the operator (`by_operator`) may give it a plan other
    /// than its organization's.
    pub async fn spawn_tenant(
        &self,
        org_id: &str,
        name: &str,
        plan: Option<String>,
        by_operator: bool,
    ) -> Result<Spawned, ControlError> {
        let org = self.storage.get_org(org_id).await.map_err(|e| match e {
            StorageError::NotFound => ControlError::NotFound("organization"),
            other => other.into(),
        })?;
        // An unknown plan is a mistake (400) before it is a privilege (403).
        let plan = plan.map(|p| self.check_plan(Some(p))).transpose()?;
        if let Some(asked) = plan.as_deref().filter(|p| *p != org.plan && !by_operator) {
            return Err(ControlError::Forbidden(format!(
                "only the operator may give a tenant a plan other than its organization's \
                 ({:?}); {asked:?} was asked",
                org.plan
            )));
        }
        let slug = slugify(name);
        if slug.is_empty() {
            return Err(ControlError::Invalid(
                "name must contain at least one letter or digit".into(),
            ));
        }
        let now = now_rfc3339();
        let tenant = TenantRecord {
            id: new_id("ten"),
            org_id: org.id.clone(),
            name: name.trim().to_owned(),
            slug,
            status: TenantStatus::Provisioning,
            plan: self.check_plan(plan.or(Some(org.plan)))?,
            limits: LimitsPatch::default(),
            active_version: None,
            last_error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        self.storage
            .create_tenant(&tenant)
            .await
            .map_err(|e| match e {
                StorageError::Conflict(_) => ControlError::Conflict(format!(
                    "the slug {:?} is taken; choose another name",
                    tenant.slug
                )),
                other => other.into(),
            })?;
        let key = auth::new_key(&org.id, Some(&tenant.id));
        self.storage.insert_key(&key.record).await?;
        crate::wallet::ensure(self.storage.as_ref(), &self.master, &tenant.id).await?;
        // New: no log lines yet.
        self.register_with(&tenant, Vec::new(), None);
        self.announce(&tenant.id).await;
        Ok(Spawned {
            tenant,
            api_key: key.plaintext,
        })
    }

    /// Puts `record` into the registry (no deployment yet), continuing its archived logs.
    pub(crate) async fn register(
        &self,
        record: &TenantRecord,
        env: Vec<(String, String)>,
    ) -> Result<Arc<Tenant>, StorageError> {
        // Not knowing it would number new lines from 1 over the archived ones.
        let last_seq = self
            .storage
            .last_log_seqs(std::slice::from_ref(&record.id))
            .await?
            .first()
            .map(|(_, seq)| *seq as u64);
        Ok(self.register_with(record, env, last_seq))
    }

    /// [`ControlPlane::register`] with the newest archived log line's seq known.
    fn register_with(
        &self,
        record: &TenantRecord,
        env: Vec<(String, String)>,
        last_seq: Option<u64>,
    ) -> Arc<Tenant> {
        let metrics = self.metrics.tenant(&record.slug);
        let logs = Arc::new(TenantLogs::archived(
            record.slug.clone(),
            self.config.log_lines_per_tenant,
            record.id.clone(),
            self.log_archive.clone(),
            last_seq,
            metrics.clone(),
        ));
        let tenant = Arc::new(
            Tenant::new(
                record.id.clone(),
                record.slug.clone(),
                self.plans().effective(&record.plan, &record.limits),
                logs,
            )
            .with_metrics(metrics),
        );
        tenant.set_plan(record.plan.clone(), record.limits.clone());
        tenant.set_synced(&record.updated_at);
        let status = record.status;
        tenant.update(|state| {
            state.status = status;
            state.env = Arc::from(env);
        });
        self.registry.insert(tenant.clone());
        tenant
    }

    /// The registry entry of a stored tenant; with several hosts, one created
    /// through another host is loaded here first.
    pub async fn live(&self, record: &TenantRecord) -> Result<Arc<Tenant>, ControlError> {
        let cached = || {
            self.registry
                .get(&record.slug)
                .filter(|t| *t.id == *record.id)
        };
        if let Some(tenant) = cached() {
            return Ok(tenant);
        }
        if self.notifier.is_some() {
            self.refresh_tenant(&record.id).await?;
        }
        cached().ok_or(ControlError::NotFound("tenant"))
    }

    /// Validates, compiles, stores and activates a new version of `record`'s component.
    ///
    /// Nothing changes unless every step succeeds: the active version keeps
    /// serving through a refused upload, and requests already running finish on
    /// the version they started with. `slot` (from [`Uploads::try_start`]) is
    /// held until the compilation ends. Afterwards the tenant's oldest versions
    /// past its plan's `max_versions` / `max_stored_component_mib` are pruned.
    pub async fn deploy(
        &self,
        record: &TenantRecord,
        wasm: Bytes,
        slot: Option<UploadSlot>,
    ) -> Result<Deployed, ControlError> {
        let tenant = self.live(record).await?;
        let limits = tenant.governor().limits.clone();
        if wasm.len() as u64 > limits.max_stored_component_bytes {
            return Err(ControlError::TooLarge(format!(
                "the component is {} bytes; this plan stores at most {} bytes of components \
                 (max_stored_component_mib)",
                wasm.len(),
                limits.max_stored_component_bytes
            )));
        }
        let _change = tenant.changes.lock().await;
        let started = Instant::now();
        let sha256 = hex::encode(Sha256::digest(&wasm));
        let app = self
            .compile_within(wasm.clone(), limits.compile_timeout, slot)
            .await?;
        let compiled = started.elapsed();
        let compile_ms = compiled.as_millis() as i64;
        let deployment = self
            .storage
            .add_deployment(&record.id, &sha256, &wasm, compile_ms)
            .await?;
        let version = deployment.version;
        let deployed = self.went_live(deployment, &app, compiled);
        tenant.update(|state| {
            state.active = Some(Active::loaded(version, app));
            if state.status != TenantStatus::Stopped {
                state.status = TenantStatus::Running;
            }
        });
        tracing::info!(tenant = %record.slug, version, %sha256, compile_ms, tier = deployed.tier.as_str(), "deployed");
        if let Err(e) = self.prune_versions(&tenant, Some(version), &limits).await {
            tracing::warn!(tenant = %record.slug, error = %e, "pruning old versions failed; the next deploy retries");
        }
        self.announce(&record.id).await;
        Ok(deployed)
    }

    /// What a deploy or rollback of `deployment` to `app` (compiled or loaded
    /// in `compiled`) answers: its tier, and when the optimised code is due.
    fn went_live(&self, deployment: Deployment, app: &App, compiled: Duration) -> Deployed {
        Deployed {
            deployment,
            tier: app.tier(),
            optimized_in_ms: self
                .runtime
                .wants_optimized(app)
                .then(|| self.runtime.optimize_estimate_ms(app.size, compiled)),
        }
    }

    /// Compiles `wasm` within `limit`. A compilation cannot be interrupted:
    /// past the limit the deploy is refused, and the compilation finishes in
    /// the background still holding `slot` and its compile permit.
    async fn compile_within(
        &self,
        wasm: Bytes,
        limit: Duration,
        slot: Option<UploadSlot>,
    ) -> Result<Arc<App>, ControlError> {
        let Some(me) = self.weak().upgrade() else {
            return Err(ControlError::Invalid("the host is shutting down".into()));
        };
        let compile = tokio::spawn(async move {
            let _slot = slot;
            me.load(wasm).await
        });
        match tokio::time::timeout(limit, compile).await {
            Ok(Ok(loaded)) => Ok(loaded?),
            Ok(Err(e)) => Err(ControlError::Component(LoadError::Internal(e.into()))),
            Err(_) => Err(ControlError::CompileTimeout(limit)),
        }
    }

    /// Deletes a tenant's versions past its plan's caps (never `active`), the
    /// components no version of any tenant uses any more, and their artifacts.
    async fn prune_versions(
        &self,
        tenant: &Tenant,
        active: Option<i64>,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let versions = self.storage.list_deployments(&tenant.id).await?;
        let prune = crate::storage::versions_to_prune(
            &versions,
            active,
            limits.max_versions,
            limits.max_stored_component_bytes,
        );
        if prune.is_empty() {
            return Ok(());
        }
        self.remove_versions(&tenant.id, &prune).await?;
        let list: Vec<String> = prune.iter().map(i64::to_string).collect();
        tenant.logs.push(
            "",
            crate::logs::LogStream::Host,
            format!(
                "version(s) {} pruned: this plan keeps {} versions and {} MiB of components",
                list.join(", "),
                limits.max_versions,
                limits.max_stored_component_bytes / (1024 * 1024)
            ),
        );
        Ok(())
    }

    /// Deletes versions, then each component they used that nothing uses any more.
    async fn remove_versions(&self, tenant_id: &str, versions: &[i64]) -> Result<(), StorageError> {
        let digests = self.storage.delete_deployments(tenant_id, versions).await?;
        for digest in digests {
            if self.storage.delete_blob_if_unused(&digest).await? {
                if self.config.prune_artifacts {
                    self.runtime.remove_artifacts(&digest);
                }
                tracing::info!(%digest, "component deleted: no version uses it");
            }
        }
        Ok(())
    }

    /// Deletes the artifacts of components no longer stored (pruned through
    /// another host, or left by a crash between the two steps).
    pub(crate) async fn sweep_artifacts(&self) {
        if !self.config.prune_artifacts {
            return;
        }
        for digest in self.runtime.artifact_digests() {
            if matches!(self.storage.blob_exists(&digest).await, Ok(false)) {
                self.runtime.remove_artifacts(&digest);
            }
        }
    }

    /// Loads a stored version: from the artifact cache if possible, else from its blob.
    pub(crate) async fn load_version(
        &self,
        deployment: &Deployment,
    ) -> Result<Arc<App>, ControlError> {
        self.load_component(&deployment.sha256, deployment.size as usize)
            .await
    }

    /// Makes sure the artifact cache holds component `digest` (compiling its
    /// stored blob if not), without keeping it in memory; failures are logged.
    pub(crate) async fn warm(&self, digest: &str) {
        if self.runtime.has_artifact(digest) {
            return;
        }
        let compiled = match self.storage.get_blob(digest).await {
            Ok(wasm) => self
                .load(Bytes::from(wasm))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = compiled {
            tracing::warn!(digest, error = %e, "component not precompiled; its tenants load it on demand");
        }
    }

    /// Loads the component `digest`: shared with a tenant that has it in memory,
    /// else from the artifact cache, else compiled from its stored blob.
    pub(crate) async fn load_component(
        &self,
        digest: &str,
        size: usize,
    ) -> Result<Arc<App>, ControlError> {
        let runtime = self.runtime.clone();
        let wanted = digest.to_owned();
        let cached = tokio::task::spawn_blocking(move || runtime.load_cached(&wanted, size))
            .await
            .ok()
            .flatten();
        if let Some(app) = cached {
            let app = Arc::new(app);
            if self.runtime.wants_optimized(&app) && !self.runtime.join_optimizing(&app) {
                // Its baseline artifact was cached, the optimised one not (yet):
                // the optimiser needs the component's bytes.
                let (storage, runtime, queued) =
                    (self.storage.clone(), self.runtime.clone(), app.clone());
                tokio::spawn(async move {
                    match storage.get_blob(&queued.digest).await {
                        Ok(wasm) => runtime.optimize_later(&queued, Bytes::from(wasm)),
                        Err(e) => {
                            tracing::warn!(digest = %queued.digest, error = %e, "component not read for its optimised build")
                        }
                    }
                });
            }
            return Ok(app);
        }
        let wasm = self.storage.get_blob(digest).await?;
        Ok(self.load(Bytes::from(wasm)).await?)
    }

    /// Makes a previous version active again.
    pub async fn rollback(
        &self,
        record: &TenantRecord,
        version: i64,
    ) -> Result<Deployed, ControlError> {
        let tenant = self.live(record).await?;
        let _change = tenant.changes.lock().await;
        let deployment = match self.storage.get_deployment(&record.id, version).await {
            Ok(deployment) => deployment,
            Err(StorageError::NotFound)
                if version >= 1 && version <= self.storage.last_version(&record.id).await? =>
            {
                let keep = tenant.governor().limits.max_versions;
                return Err(ControlError::Gone(format!(
                    "version {version} was pruned: this plan keeps the newest {keep} versions \
                     (see `lodge tenant deployments`); deploy its component again"
                )));
            }
            Err(StorageError::NotFound) => return Err(ControlError::NotFound("version")),
            Err(e) => return Err(e.into()),
        };
        let app = self.load_version(&deployment).await?;
        self.storage.set_active_version(&record.id, version).await?;
        let deployed = self.went_live(deployment, &app, app.compile_time);
        tenant.update(|state| {
            state.active = Some(Active::loaded(version, app));
            if state.status != TenantStatus::Stopped {
                state.status = TenantStatus::Running;
            }
        });
        self.announce(&record.id).await;
        Ok(deployed)
    }

    /// Stops (503 on the data plane) or starts a tenant.
    pub async fn set_running(
        &self,
        record: &TenantRecord,
        running: bool,
    ) -> Result<TenantStatus, ControlError> {
        let tenant = self.live(record).await?;
        let _change = tenant.changes.lock().await;
        let status = match (running, tenant.state().active.is_some()) {
            (false, _) => TenantStatus::Stopped,
            (true, true) => TenantStatus::Running,
            (true, false) => TenantStatus::Provisioning,
        };
        self.storage.set_status(&record.id, status, None).await?;
        tenant.update(|state| state.status = status);
        self.announce(&record.id).await;
        Ok(status)
    }

    /// Sets (or, with `None`, removes) environment variables; the rest stay.
    pub async fn update_env(
        &self,
        record: &TenantRecord,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<Vec<String>, ControlError> {
        for (name, value) in &changes {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                // Environment values are C strings to most guests, and text to PostgreSQL.
                return Err(ControlError::Invalid(format!(
                    "the value of {name:?} contains a NUL character"
                )));
            }
            let valid = !name.is_empty()
                && name.len() <= 256
                && !name.contains('=')
                && !name.contains('\0')
                && name.chars().all(|c| !c.is_control());
            if !valid {
                return Err(ControlError::Invalid(format!(
                    "invalid variable name {name:?}"
                )));
            }
        }
        let tenant = self.live(record).await?;
        let _change = tenant.changes.lock().await;
        let mut vars = self.stored_env(&record.id).await?.vars;
        for (name, value) in changes {
            vars.retain(|(n, _)| *n != name);
            if let Some(value) = value {
                vars.push((name, value));
            }
        }
        vars.sort();
        self.store_env(&record.id, &vars).await?;
        let names = vars.iter().map(|(n, _)| n.clone()).collect();
        tenant.update(|state| state.env = Arc::from(vars));
        self.announce(&record.id).await;
        Ok(names)
    }

    /// A tenant's environment, its values opened with the master key.
    pub(crate) async fn stored_env(&self, tenant_id: &str) -> Result<StoredEnv, StorageError> {
        self.open_env(tenant_id, self.storage.get_env(tenant_id).await?)
    }

    /// A tenant's stored environment rows, opened with the master key.
    fn open_env(
        &self,
        tenant_id: &str,
        rows: Vec<(String, String)>,
    ) -> Result<StoredEnv, StorageError> {
        let mut env = StoredEnv::default();
        for (name, value) in rows {
            let value = match value.strip_prefix(SEALED_ENV) {
                Some(sealed) => hex::decode(sealed)
                    .ok()
                    .and_then(|sealed| {
                        let context = format!("{tenant_id}\0{name}");
                        self.master.open(Purpose::Env, &context, &sealed).ok()
                    })
                    .and_then(|value| String::from_utf8(value).ok())
                    .ok_or_else(|| {
                        StorageError::Backend(anyhow::anyhow!(
                            "the env value {name:?} does not open with this host's master key"
                        ))
                    })?,
                None => {
                    env.plaintext = true;
                    value
                }
            };
            env.vars.push((name, value));
        }
        Ok(env)
    }

    /// Stores a tenant's environment, each value sealed (bound to the tenant and the name).
    async fn store_env(
        &self,
        tenant_id: &str,
        vars: &[(String, String)],
    ) -> Result<(), StorageError> {
        let sealed: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| {
                let context = format!("{tenant_id}\0{name}");
                let sealed = self.master.seal(Purpose::Env, &context, value.as_bytes());
                (name.clone(), format!("{SEALED_ENV}{}", hex::encode(sealed)))
            })
            .collect();
        self.storage.set_env(tenant_id, &sealed).await
    }

    /// Revokes a tenant's keys and makes a new one.
    pub async fn rotate_key(&self, record: &TenantRecord) -> Result<String, ControlError> {
        self.storage.revoke_tenant_keys(&record.id).await?;
        let key = auth::new_key(&record.org_id, Some(&record.id));
        self.storage.insert_key(&key.record).await?;
        Ok(key.plaintext)
    }

    /// Soft-deletes a tenant: the data plane answers 404 at once, the slug is freed.
    pub async fn delete_tenant(&self, record: &TenantRecord) -> Result<(), ControlError> {
        self.storage.delete_tenant(&record.id).await?;
        // Its secrets go at once.
        self.storage.set_env(&record.id, &[]).await?;
        // Its waiting convergence tasks will not run, nor post their webhooks.
        let cancelled = self
            .storage
            .task_cancel_pending(&record.id, "cancelled: the tenant was deleted")
            .await?;
        // Its components go unless another tenant runs them too.
        let versions: Vec<i64> = self
            .storage
            .list_deployments(&record.id)
            .await?
            .iter()
            .map(|d| d.version)
            .collect();
        self.remove_versions(&record.id, &versions).await?;
        tracing::info!(tenant = %record.slug, cancelled, versions = versions.len(), "tenant deleted");
        if let Some(tenant) = self
            .registry
            .get(&record.slug)
            .filter(|t| *t.id == *record.id)
        {
            self.registry.remove(&record.slug);
            tenant.update(|state| {
                state.status = TenantStatus::Destroyed;
                state.active = None;
            });
            self.flush_usage_of(&tenant).await;
        }
        self.announce(&record.id).await;
        Ok(())
    }

    /// Rebuilds the registry from storage at start: every live tenant, its env
    /// and its active version, whose component loads on the tenant's first
    /// request. Four queries per page of tenants, not per tenant; log history
    /// is read on the first read of each tenant's log.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let mut restored = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .tenants_after(after.as_deref(), RESTORE_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let ids: Vec<String> = page.iter().map(|r| r.id.clone()).collect();
            let mut envs: HashMap<String, Vec<(String, String)>> = HashMap::new();
            for (tenant, name, value) in self.storage.env_of(&ids).await? {
                envs.entry(tenant).or_default().push((name, value));
            }
            let mut actives: HashMap<String, Deployment> = self
                .storage
                .active_deployments(&ids)
                .await?
                .into_iter()
                .collect();
            let seqs: HashMap<String, i64> = self
                .storage
                .last_log_seqs(&ids)
                .await?
                .into_iter()
                .collect();
            for record in &page {
                let env = self.open_env(&record.id, envs.remove(&record.id).unwrap_or_default())?;
                if env.plaintext {
                    // Stored before values were sealed: sealed now.
                    self.store_env(&record.id, &env.vars).await?;
                }
                let last_seq = seqs.get(&record.id).map(|seq| *seq as u64);
                let tenant = self.register_with(record, env.vars, last_seq);
                let Some(version) = record.active_version else {
                    continue;
                };
                // Only what the version is: its component loads on the first request.
                if let Some(d) = actives.remove(&record.id) {
                    let active = Active::unloaded(version, &d.sha256, d.size as usize);
                    tenant.update(|state| state.active = Some(active));
                    restored += 1;
                } else {
                    let message =
                        format!("version {version} could not be loaded: it is not stored");
                    tracing::error!(tenant = %record.slug, error = %message, "restore failed");
                    self.storage
                        .set_status(&record.id, TenantStatus::Error, Some(&message))
                        .await?;
                    tenant.update(|state| state.status = TenantStatus::Error);
                }
            }
            if (page.len() as i64) < RESTORE_PAGE {
                break;
            }
        }
        Ok(restored)
    }

    /// Reads back, once, the log lines `tenant` archived before this host
    /// started (its log holds only newer lines until then).
    pub async fn read_log_history(&self, tenant: &Tenant) {
        let storage = self.storage.clone();
        let id = tenant.id.clone();
        let read = tenant
            .logs
            .merge_history(|lines| async move { storage.recent_logs(&id, lines as i64).await })
            .await;
        if let Err(e) = read {
            tracing::warn!(tenant = %tenant.slug, error = %e, "archived log lines not read; the next read tries again");
        }
    }

    /// Every live tenant's stored record, read a page at a time.
    pub(crate) async fn all_tenant_records(&self) -> Result<Vec<TenantRecord>, StorageError> {
        let mut all: Vec<TenantRecord> = Vec::new();
        loop {
            let after = all.last().map(|r| r.id.as_str());
            let page = self.storage.tenants_after(after, RESTORE_PAGE).await?;
            let last = (page.len() as i64) < RESTORE_PAGE;
            all.extend(page);
            if last {
                return Ok(all);
            }
        }
    }

    /// Writes one tenant's unflushed usage.
    pub async fn flush_usage_of(&self, tenant: &Tenant) {
        let delta = tenant.counters.take();
        if delta.is_empty() {
            return;
        }
        let hour = crate::storage::this_hour();
        if let Err(e) = self.storage.add_usage(&tenant.id, &hour, &delta).await {
            tracing::warn!(tenant = %tenant.slug, error = %e, "usage not recorded; kept for the next flush");
            tenant.counters.restore(&delta);
        }
    }

    /// Writes every tenant's unflushed usage.
    pub async fn flush_usage(&self) {
        for tenant in self.registry.all() {
            self.flush_usage_of(&tenant).await;
        }
    }

    /// Creates (once) the `local` organization and a tenant `slug` in it, and
    /// deploys `wasm` unless it is already the active version: `serve --app`.
    pub async fn ensure_local_app(
        &self,
        slug: &str,
        wasm: Vec<u8>,
    ) -> Result<Arc<Tenant>, ControlError> {
        let org = match self.storage.find_org_by_name("local").await? {
            Some(org) => org,
            None => self.create_org("local", None).await?.0,
        };
        let record = match self.storage.get_tenant(slug).await {
            Ok(record) if record.org_id == org.id => record,
            Ok(_) => {
                return Err(ControlError::Conflict(format!(
                    "the slug {slug:?} belongs to a tenant of another organization"
                )));
            }
            Err(StorageError::NotFound) => {
                let spawned = self.spawn_tenant(&org.id, slug, None, true).await?;
                if spawned.tenant.slug != slug {
                    return Err(ControlError::Invalid(format!(
                        "{slug:?} is not a valid slug"
                    )));
                }
                spawned.tenant
            }
            Err(e) => return Err(e.into()),
        };
        let sha256 = hex::encode(Sha256::digest(&wasm));
        let tenant = self.live(&record).await?;
        let current = match record.active_version {
            Some(version) => Some(
                self.storage
                    .get_deployment(&record.id, version)
                    .await?
                    .sha256,
            ),
            None => None,
        };
        if current.as_deref() != Some(sha256.as_str()) || tenant.active().is_none() {
            self.deploy(&record, Bytes::from(wasm), None).await?;
        }
        Ok(tenant)
    }
}

/// Keeping this host in line with the others (see `sync`).
impl ControlPlane {
    /// Tells every host (this one included) that tenant `tenant_id` changed.
    pub(crate) async fn announce(&self, tenant_id: &str) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::sync::CHANNEL)
            .bind(tenant_id)
            .execute(notifier.pool())
            .await;
        if let Err(e) = sent {
            // The reconcile loop catches up within its interval.
            tracing::warn!(tenant_id, error = %e, "change notice not sent");
        }
    }

    /// Brings tenant `id` in this host's registry in line with storage: adds it,
    /// updates its status, env, limits and active version, or removes it.
    pub async fn refresh_tenant(&self, id: &str) -> Result<(), ControlError> {
        let tenant = match self.registry.by_id(id) {
            Some(tenant) => tenant,
            None => match self.storage.get_tenant(id).await {
                Ok(record) => {
                    let env = self.stored_env(&record.id).await?;
                    self.register(&record, env.vars).await?
                }
                Err(StorageError::NotFound) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        // Read storage under the tenant's change lock, so a change this host is
        // making right now is either fully in what we read or not started.
        let _change = tenant.changes.lock().await;
        let record = match self.storage.get_tenant(id).await {
            Ok(record) => record,
            Err(StorageError::NotFound) => {
                self.flush_usage_of(&tenant).await;
                if self
                    .registry
                    .get(&tenant.slug)
                    .is_some_and(|t| t.id == tenant.id)
                {
                    self.registry.remove(&tenant.slug);
                    tracing::info!(tenant = %tenant.slug, "removed (deleted through another host)");
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let env = self.stored_env(&record.id).await?.vars;
        let active = match record.active_version {
            Some(version) if tenant.active().map(|a| a.version) != Some(version) => {
                let deployment = self.storage.get_deployment(&record.id, version).await?;
                // Compiled here (into the artifact cache, not memory) so the
                // first request on this host only loads it.
                self.warm(&deployment.sha256).await;
                Some(Active::unloaded(
                    version,
                    &deployment.sha256,
                    deployment.size as usize,
                ))
            }
            Some(_) => tenant.active(),
            None => None,
        };
        tenant.update(|state| {
            state.status = record.status;
            state.env = Arc::from(env);
            state.active = active;
        });
        if tenant.plan() != (record.plan.clone(), record.limits.clone()) {
            let limits = self.plans().effective(&record.plan, &record.limits);
            tenant.set_plan(record.plan.clone(), record.limits.clone());
            tenant.set_limits(limits);
        }
        tenant.set_synced(&record.updated_at);
        Ok(())
    }

    /// Refreshes every tenant whose stored record differs from the registry or
    /// changed since this host last applied it (env changes show only there),
    /// and drops tenants storage no longer has.
    pub async fn reconcile(&self) -> Result<usize, ControlError> {
        let mut seen = HashSet::new();
        let mut changed = 0;
        for record in self.all_tenant_records().await? {
            seen.insert(record.id.clone());
            let differs = match self.registry.by_id(&record.id) {
                None => true,
                Some(tenant) => {
                    let state = tenant.state();
                    state.status != record.status
                        || state.active.map(|a| a.version) != record.active_version
                        || tenant.plan() != (record.plan.clone(), record.limits.clone())
                        || tenant.synced() != record.updated_at
                }
            };
            if differs {
                self.refresh_tenant(&record.id).await?;
                changed += 1;
            }
        }
        for tenant in self.registry.all() {
            if !seen.contains(&*tenant.id) {
                self.refresh_tenant(&tenant.id).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::slugify;

    #[test]
    fn slugs_from_names() {
        assert_eq!(slugify("Acme Corp AI"), "acme-corp-ai");
        assert_eq!(slugify("  --Hello__World!!  "), "hello-world");
        assert_eq!(slugify("Ünïcode Café"), "n-code-caf");
        assert_eq!(slugify("!!!"), "");
        assert_eq!(slugify(&"a".repeat(100)).len(), 63);
        assert_eq!(slugify(&format!("{}-b", "a".repeat(62))), "a".repeat(62));
    }
}
