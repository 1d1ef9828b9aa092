//! Convergence for tenants: metering against the daily token budget, durable
//! asynchronous tasks run by a bounded worker pool, and signed webhooks.
//!
//! Tasks live in the database: `submit` inserts one `pending`; workers claim the
//! oldest with a single `UPDATE … RETURNING` (so each runs once), run it, store
//! the outcome and post it to the webhook, if any. A claim is a lease
//! ([`HostConfig::task_lease`](crate::config::HostConfig::task_lease)) renewed
//! every third of it while the task runs; a task whose lease lapsed (its host
//! died) goes back to `pending` and another host (or this one, restarted) runs
//! it. Only the current claim may store a result, so a task ends once and its
//! webhook is posted once, even when a slow host loses its lease.
//!
//! Webhooks are `POST`ed as JSON with `X-Lodge-Signature: t=<unix seconds>,v1=<hex>`,
//! the HMAC-SHA256 of `<t>.<exact body>` under the tenant's webhook secret
//! (`GET /api/v1/tenant/{id}/webhook-secret`, rotated with `…/rotate`): a
//! receiver checks the MAC and refuses old timestamps, so a captured delivery
//! cannot be replayed later. They leave through `crate::egress`, like guests'
//! outbound HTTP: public addresses only (unless the operator allows private
//! ones), the checked address connected to, no redirects followed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use http_body_util::BodyExt as _;

use super::{
    ConvergeError, ConvergeRequest, Outcome, Preset, ProviderError, converge_metered, validate,
};
use crate::background::Jobs;
use crate::config::Limits;
use crate::convergence::provider::Provider;
use crate::counters::TenantCounters;
use crate::egress::{Refused as EgressRefused, resolve_checked, send_pinned};
use crate::storage::{
    MetaStore, Storage, StorageError, TaskEntry, TaskRecord, TaskStore, TenantStore, Usage,
    UsageStore, today,
};
use crate::wallet::{MasterKey, Purpose};

/// What a tenant is told when the model provider fails (the detail goes to the host's log).
pub const PROVIDER_UNAVAILABLE: &str = "the model provider is unavailable; retry later";

/// Header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-lodge-signature";

/// Why a tenant's convergence did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ConvergenceFailure {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The tenant has as many asynchronous tasks waiting or running as its plan allows.
    #[error(
        "this tenant has {pending} convergence tasks waiting or running, the plan's limit \
         (convergence_max_pending = {max}); poll them to completion before submitting more"
    )]
    TooManyTasks {
        /// Tasks waiting or running.
        pending: u64,
        /// The plan's cap.
        max: u32,
    },
    /// The tenant's daily token budget is spent.
    #[error("the daily convergence token budget of {budget} is spent ({used} used today)")]
    QuotaExceeded {
        /// Tokens used today.
        used: u64,
        /// The plan's budget.
        budget: u64,
    },
    /// The model provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// No such task of this tenant.
    #[error("no task {0}")]
    UnknownTask(String),
    /// Storage failed.
    #[error("storage failed")]
    Storage(#[from] StorageError),
}

impl From<ConvergeError> for ConvergenceFailure {
    fn from(e: ConvergeError) -> Self {
        match e {
            ConvergeError::Invalid(m) => Self::Invalid(m),
            ConvergeError::Provider(p) => Self::Provider(p),
        }
    }
}

/// A task as its owner sees it.
#[derive(Debug, Clone)]
pub enum TaskState {
    /// Waiting.
    Pending,
    /// Running.
    Running,
    /// Finished.
    Done(Box<Outcome>),
    /// Failed, with why.
    Failed(String),
}

/// A task as its owner's list shows it: its state, what it was asked and how
/// it went, without the outcome itself (that is [`ConvergenceService::task_state`]).
#[derive(Debug, Clone)]
pub struct TaskSummary {
    /// `task_…`
    pub id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// The preset it was asked through; `None`: roles of the caller's own.
    pub preset: Option<Preset>,
    /// The start of its prompt (a preset's framing left out), at most
    /// [`PROMPT_EXCERPT`] characters and `…`.
    pub prompt: String,
    /// RFC 3339: when it was queued.
    pub created_at: String,
    /// RFC 3339: its last change.
    pub updated_at: String,
    /// Rounds run, when done.
    pub rounds: Option<u32>,
    /// Agreement of the last two positions (0-100), when done.
    pub score: Option<u32>,
    /// Whether the threshold was reached, when done.
    pub converged: Option<bool>,
    /// Tokens used, prompt and completion, when done.
    pub tokens: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// How its webhook delivery went, once tried.
    pub webhook_status: Option<String>,
}

/// The longest start of a prompt a task list shows, in characters.
pub const PROMPT_EXCERPT: usize = 120;

/// What a task list reads of a stored outcome (its answer and transcript are skipped).
#[derive(Debug, serde::Deserialize)]
struct OutcomeFigures {
    rounds: u32,
    score: u32,
    converged: bool,
    usage: super::Usage,
}

impl TaskSummary {
    fn of(task: TaskEntry) -> Self {
        let request = serde_json::from_str::<ConvergeRequest>(&task.request).ok();
        let (preset, prompt) = match &request {
            Some(request) => match Preset::made(request) {
                Some((preset, prompt)) => (Some(preset), excerpt(prompt)),
                None => (None, excerpt(&request.prompt)),
            },
            None => (None, String::new()),
        };
        let figures = match (task.status.as_str(), task.outcome.as_deref()) {
            ("done", Some(outcome)) => serde_json::from_str::<OutcomeFigures>(outcome).ok(),
            _ => None,
        };
        Self {
            id: task.id,
            status: task.status,
            preset,
            prompt,
            created_at: task.created_at,
            updated_at: task.updated_at,
            rounds: figures.as_ref().map(|f| f.rounds),
            score: figures.as_ref().map(|f| f.score),
            converged: figures.as_ref().map(|f| f.converged),
            tokens: figures.as_ref().map(|f| f.usage.total()),
            error: task.error,
            webhook_status: task.webhook_status,
        }
    }
}

/// `text` cut to [`PROMPT_EXCERPT`] characters, marked with `…` when cut.
fn excerpt(text: &str) -> String {
    let mut cut: String = text.chars().take(PROMPT_EXCERPT).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// What convergence needs of a tenant this host holds: its plan's
/// convergence limits and where its usage is counted.
#[derive(Debug, Clone)]
pub struct HeldTenant {
    /// `convergence_tokens_per_day` in force.
    pub tokens_per_day: u64,
    /// `convergence_max_pending` in force.
    pub max_pending: u32,
    /// Its usage counters.
    pub counters: Arc<TenantCounters>,
}

/// The tenants this host holds, as convergence sees them (the registry
/// implements it; convergence does not depend on the registry).
pub trait HeldTenants: Send + Sync + std::fmt::Debug {
    /// `tenant_id`, if this host holds it.
    fn held(&self, tenant_id: &str) -> Option<HeldTenant>;
}

/// Convergence as a service of the host: what the API and the guest
/// capability call, and what the task workers run. It holds only the handles
/// it uses, not the host.
#[derive(Debug)]
pub struct ConvergenceService {
    provider: Arc<dyn Provider>,
    tasks: Arc<dyn TaskStore>,
    usage: Arc<dyn UsageStore>,
    meta: Arc<dyn MetaStore>,
    tenants: Arc<dyn TenantStore>,
    /// Tenants this host holds: their limits and usage counters.
    tenants_held: Arc<dyn HeldTenants>,
    master: Arc<MasterKey>,
    /// Limits of tenants this host does not hold.
    defaults: Limits,
    task_lease: Duration,
    allow_private: bool,
    /// Wakes the workers when a task is queued.
    wakeup: Arc<tokio::sync::Notify>,
    webhooks: Webhooks,
    jobs: Jobs,
}

/// What [`ConvergenceService::new`] needs from the composition root.
#[derive(Debug)]
pub struct ConvergenceParts {
    /// The model provider.
    pub provider: Arc<dyn Provider>,
    /// The host's storage (the service keeps the parts it uses).
    pub storage: Arc<dyn Storage>,
    /// The tenants this host holds (the registry).
    pub held: Arc<dyn HeldTenants>,
    /// Seals webhook secrets.
    pub master: Arc<MasterKey>,
    /// Limits of tenants this host does not hold.
    pub defaults: Limits,
    /// How long a claim holds a task without renewal.
    pub task_lease: Duration,
    /// Webhook deliveries in flight at once across the host.
    pub webhook_workers: usize,
    /// Whether webhooks may reach private addresses.
    pub allow_private: bool,
    /// Where webhook deliveries run.
    pub jobs: Jobs,
}

impl ConvergenceService {
    /// The service over `parts`.
    pub fn new(parts: ConvergenceParts) -> Self {
        let storage = parts.storage;
        Self {
            provider: parts.provider,
            tasks: storage.clone(),
            usage: storage.clone(),
            meta: storage.clone(),
            tenants: storage,
            tenants_held: parts.held,
            master: parts.master,
            defaults: parts.defaults,
            task_lease: parts.task_lease,
            allow_private: parts.allow_private,
            wakeup: Arc::default(),
            webhooks: Webhooks::new(parts.webhook_workers),
            jobs: parts.jobs,
        }
    }

    /// The model provider.
    pub fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }

    /// Wakes every idle worker (tasks were requeued).
    pub fn wake_workers(&self) {
        self.wakeup.notify_waiters();
    }

    /// Tokens `tenant_id` used today (stored plus not yet flushed).
    async fn tokens_today(&self, tenant_id: &str) -> Result<u64, StorageError> {
        let day = today();
        let stored: i64 = self
            .usage
            .usage(tenant_id, &format!("{day}T00"), &format!("{day}T23"))
            .await?
            .iter()
            .map(|(_, u)| u.tokens)
            .sum();
        let stored = stored.max(0) as u64;
        let pending = self.tenants_held.held(tenant_id).map_or(0, |t| {
            t.counters.tokens.load(std::sync::atomic::Ordering::Relaxed)
        });
        Ok(stored + pending)
    }

    async fn check_budget(&self, tenant_id: &str) -> Result<(), ConvergenceFailure> {
        let budget = self
            .tenants_held
            .held(tenant_id)
            .map_or(self.defaults.convergence_tokens_per_day, |t| {
                t.tokens_per_day
            });
        let used = self.tokens_today(tenant_id).await?;
        if used >= budget {
            return Err(ConvergenceFailure::QuotaExceeded { used, budget });
        }
        Ok(())
    }

    /// Meters tokens to `tenant_id` as each provider call returns.
    fn token_meter(&self, tenant_id: &str) -> TokenMeter {
        TokenMeter {
            counters: self.tenants_held.held(tenant_id).map(|t| t.counters),
            unflushed: std::sync::atomic::AtomicU64::new(0),
            usage: self.usage.clone(),
            tenant_id: tenant_id.to_owned(),
        }
    }

    /// Runs a convergence for `tenant_id` now, within its daily token budget.
    pub async fn converge_for(
        &self,
        tenant_id: &str,
        request: &ConvergeRequest,
    ) -> Result<Outcome, ConvergenceFailure> {
        validate(request)?;
        self.check_budget(tenant_id).await?;
        let meter = self.token_meter(tenant_id);
        Ok(converge_metered(self.provider.as_ref(), request, &|n| meter.add(n)).await?)
    }

    /// Queues a convergence for `tenant_id`; returns the task id.
    pub async fn submit_task(
        &self,
        tenant_id: &str,
        request: &ConvergeRequest,
        webhook_url: Option<String>,
    ) -> Result<String, ConvergenceFailure> {
        validate(request)?;
        if let Some(url) = &webhook_url {
            check_webhook_url(url, self.allow_private).await?;
        }
        self.check_budget(tenant_id).await?;
        let max = self
            .tenants_held
            .held(tenant_id)
            .map_or(self.defaults.convergence_max_pending, |t| t.max_pending);
        let pending = self.tasks.task_count_active(tenant_id).await?;
        if pending >= u64::from(max) {
            return Err(ConvergenceFailure::TooManyTasks { pending, max });
        }
        let id = format!("task_{}", uuid::Uuid::now_v7().simple());
        let task = TaskRecord {
            id: id.clone(),
            tenant_id: tenant_id.to_owned(),
            status: "pending".into(),
            request: serde_json::to_string(request)
                .map_err(|e| ConvergenceFailure::Invalid(e.to_string()))?,
            outcome: None,
            error: None,
            webhook_url,
            attempts: 0,
        };
        self.tasks.task_insert(&task).await?;
        self.wakeup.notify_one();
        Ok(id)
    }

    /// The state of one of `tenant_id`'s tasks.
    pub async fn task_state(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<TaskState, ConvergenceFailure> {
        let task = self
            .tasks
            .task_get(tenant_id, id)
            .await?
            .ok_or_else(|| ConvergenceFailure::UnknownTask(id.to_owned()))?;
        Ok(match task.status.as_str() {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "done" => match task.outcome.as_deref().map(serde_json::from_str::<Outcome>) {
                Some(Ok(outcome)) => TaskState::Done(Box::new(outcome)),
                _ => TaskState::Failed("the stored outcome is unreadable".into()),
            },
            _ => TaskState::Failed(task.error.unwrap_or_default()),
        })
    }

    /// A page of `tenant_id`'s tasks, newest first (`limit` from `offset`),
    /// summarised: no outcome.
    pub async fn list_tasks(
        &self,
        tenant_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TaskSummary>, StorageError> {
        let tasks = self.tasks.task_list(tenant_id, limit, offset).await?;
        Ok(tasks.into_iter().map(TaskSummary::of).collect())
    }

    /// The secret webhooks of `tenant_id` are signed with (hex): random, made
    /// on first use, stored sealed under the master key's webhook subkey.
    pub async fn webhook_secret(&self, tenant_id: &str) -> Result<String, StorageError> {
        let name = format!("webhook_secret:{tenant_id}");
        let stored = self
            .meta
            .meta_claim(&name, &self.seal_webhook_secret(tenant_id))
            .await?;
        self.open_webhook_secret(tenant_id, &stored)
    }

    /// Replaces `tenant_id`'s webhook secret with a new one and returns it; the
    /// old one signs nothing from now on.
    pub async fn rotate_webhook_secret(&self, tenant_id: &str) -> Result<String, StorageError> {
        let sealed = self.seal_webhook_secret(tenant_id);
        self.meta
            .meta_set(&format!("webhook_secret:{tenant_id}"), &sealed)
            .await?;
        self.open_webhook_secret(tenant_id, &sealed)
    }

    /// A new random secret, sealed (hex).
    fn seal_webhook_secret(&self, tenant_id: &str) -> String {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source works");
        let plain = hex::encode(secret);
        hex::encode(
            self.master
                .seal(Purpose::Webhook, tenant_id, plain.as_bytes()),
        )
    }

    fn open_webhook_secret(&self, tenant_id: &str, sealed: &str) -> Result<String, StorageError> {
        hex::decode(sealed)
            .ok()
            .and_then(|sealed| self.master.open(Purpose::Webhook, tenant_id, &sealed).ok())
            .and_then(|plain| String::from_utf8(plain).ok())
            .ok_or_else(|| {
                StorageError::Backend(anyhow::anyhow!(
                    "a webhook secret does not open with this host's master key"
                ))
            })
    }
}

/// Checks a webhook URL at submit: http(s), and (unless `allow_private`) a
/// host that resolves to public addresses only. The message says why not.
async fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), ConvergenceFailure> {
    let invalid = |why: String| ConvergenceFailure::Invalid(format!("webhookUrl refused: {why}"));
    let (_, host, port) = webhook_target(url).map_err(invalid)?;
    resolve_checked(&host, port, allow_private, Duration::from_secs(5))
        .await
        .map_err(|e| match e {
            EgressRefused::Private { .. } => invalid(format!(
                "{e}; webhooks reach public addresses only (an operator may allow private \
                 ones with --webhook-allow-private)"
            )),
            other => invalid(other.to_string()),
        })?;
    Ok(())
}

/// A webhook URL, the host to resolve (brackets of an IPv6 literal removed)
/// and the port; or why it cannot be one.
fn webhook_target(url: &str) -> Result<(reqwest::Url, String, u16), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("it must be an http(s) URL".into());
    }
    let host = parsed
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .ok_or_else(|| "it has no host".to_owned())?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok((parsed, host, port))
}

/// `t=<timestamp>,v1=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn sign_webhook(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length works");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// One task worker (a `jobs` job): claims and runs tasks while the service lives.
pub(crate) async fn work(service: Weak<ConvergenceService>) {
    loop {
        let Some(service) = service.upgrade() else {
            return;
        };
        let task = match service.tasks.task_claim().await {
            Ok(Some(task)) => task,
            Ok(None) => {
                let wakeup = service.wakeup.clone();
                drop(service);
                let _ = tokio::time::timeout(Duration::from_secs(1), wakeup.notified()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a convergence task failed");
                drop(service);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        service.run(task).await;
    }
}

impl ConvergenceService {
    /// Runs one claimed task to its end: the outcome stored, the webhook queued.
    async fn run(self: &Arc<Self>, task: TaskRecord) {
        let request = serde_json::from_str::<ConvergeRequest>(&task.request);
        let meter = self.token_meter(&task.tenant_id);
        let converged = async {
            // The budget is checked again now: tasks queued before it was spent fail.
            if let Err(e) = self.check_budget(&task.tenant_id).await {
                return Err(match e {
                    e @ ConvergenceFailure::QuotaExceeded { .. } => format!("quota-exceeded: {e}"),
                    other => other.to_string(),
                });
            }
            match request {
                Ok(request) => {
                    converge_metered(self.provider.as_ref(), &request, &|n| meter.add(n))
                        .await
                        .map_err(|e| match e {
                            ConvergeError::Provider(e) => {
                                tracing::warn!(task = %task.id, tenant_id = %task.tenant_id, error = %e, "the model provider failed");
                                PROVIDER_UNAVAILABLE.to_owned()
                            }
                            other => other.to_string(),
                        })
                }
                Err(e) => Err(format!("unreadable request: {e}")),
            }
        };
        let Some(result) = self.holding_lease(&task, converged).await else {
            tracing::warn!(task = %task.id, "task lease lost to another host; this run stops");
            return;
        };
        let json = result
            .as_ref()
            .map(|outcome| serde_json::to_string(outcome).unwrap_or_default());
        let stored = self
            .tasks
            .task_finish(
                &task.id,
                task.attempts,
                json.as_deref().map_err(|e| e.as_str()),
            )
            .await;
        match stored {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(task = %task.id, "task finished elsewhere meanwhile; result dropped");
                return;
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, "task result not stored; it will run again");
                return;
            }
        }
        if let Some(url) = &task.webhook_url {
            let body = serde_json::json!({
                "taskId": task.id,
                "status": if result.is_ok() { "done" } else { "failed" },
                "outcome": result.as_ref().ok(),
                "error": result.as_ref().err(),
            })
            .to_string();
            let secret = match self.webhook_secret(&task.tenant_id).await {
                Ok(secret) => secret,
                Err(e) => {
                    tracing::error!(task = %task.id, error = %e, "webhook not posted: no secret to sign it");
                    return;
                }
            };
            self.post_webhook(Webhook {
                task_id: task.id.clone(),
                tenant_id: task.tenant_id.clone(),
                url: url.clone(),
                body,
                secret,
            });
        }
    }

    /// Runs `work` while renewing the task's lease every third of it; `None`
    /// when the lease was lost (another host requeued and claimed the task),
    /// which stops `work`.
    async fn holding_lease<T>(
        &self,
        task: &TaskRecord,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let every = (self.task_lease / 3).max(Duration::from_millis(10));
        let mut beat = tokio::time::interval(every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Some(done),
                _ = beat.tick() => match self.tasks.task_heartbeat(&task.id, task.attempts).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    // The database is away: keep working; finishing will tell.
                    Err(e) => tracing::warn!(task = %task.id, error = %e, "task lease not renewed"),
                },
            }
        }
    }

    /// Queues `hook` for delivery (a `jobs` job); never waits.
    fn post_webhook(self: &Arc<Self>, hook: Webhook) {
        use std::sync::atomic::Ordering::AcqRel;
        let service = Arc::downgrade(self);
        let queue = self.webhooks.tenant(&hook.tenant_id);
        if queue.queued.fetch_add(1, AcqRel) >= WEBHOOKS_QUEUED_PER_TENANT {
            queue.queued.fetch_sub(1, AcqRel);
            tracing::warn!(tenant_id = %hook.tenant_id, task = %hook.task_id, "webhook dropped: too many queued for this tenant");
            self.jobs.spawn("webhook", async move {
                if let Some(service) = service.upgrade() {
                    let status = format!(
                        "failed: more than {WEBHOOKS_QUEUED_PER_TENANT} of this tenant's webhooks were waiting"
                    );
                    let _ = service.tasks.task_webhook(&hook.task_id, &status).await;
                }
            });
            return;
        }
        let slots = self.webhooks.host.clone();
        let allow_private = self.allow_private;
        self.jobs.spawn("webhook", async move {
            let _tenant_slot = queue.running.acquire().await;
            let _host_slot = slots.acquire().await;
            let status = match service.upgrade() {
                // A deleted tenant's webhooks are not posted.
                Some(s) => match s.tenants.get_tenant(&hook.tenant_id).await {
                    Err(StorageError::NotFound) => Some("cancelled: the tenant was deleted".into()),
                    _ => None,
                },
                None => return,
            };
            let status = match status {
                Some(status) => status,
                None => deliver(&hook, allow_private).await,
            };
            queue.queued.fetch_sub(1, AcqRel);
            if let Some(service) = service.upgrade() {
                let _ = service.tasks.task_webhook(&hook.task_id, &status).await;
                service.webhooks.forget_if_idle(&hook.tenant_id, &queue);
            }
        });
    }
}

/// Tokens metered to one tenant: into its usage counters (flushed with the
/// rest of its usage), or, for a tenant this host does not hold, straight to
/// storage when the meter is dropped.
struct TokenMeter {
    counters: Option<Arc<TenantCounters>>,
    unflushed: std::sync::atomic::AtomicU64,
    usage: Arc<dyn UsageStore>,
    tenant_id: String,
}

impl TokenMeter {
    fn add(&self, tokens: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.counters {
            Some(counters) => counters.tokens.fetch_add(tokens, Relaxed),
            None => self.unflushed.fetch_add(tokens, Relaxed),
        };
    }
}

impl Drop for TokenMeter {
    fn drop(&mut self) {
        let tokens = *self.unflushed.get_mut();
        if tokens == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(tenant_id = %self.tenant_id, tokens, "convergence tokens not recorded");
            return;
        };
        let (usage, tenant_id) = (self.usage.clone(), std::mem::take(&mut self.tenant_id));
        runtime.spawn(async move {
            let delta = Usage {
                tokens: tokens as i64,
                ..Usage::default()
            };
            let hour = crate::storage::this_hour();
            if let Err(e) = usage.add_usage(&tenant_id, &hour, &delta).await {
                tracing::warn!(tenant_id, error = %e, "convergence tokens not recorded");
            }
        });
    }
}

/// A webhook to post.
#[derive(Debug)]
pub(crate) struct Webhook {
    task_id: String,
    tenant_id: String,
    url: String,
    body: String,
    /// Signed at each try, so the timestamp is the time of sending.
    secret: String,
}

/// Webhook deliveries queued per tenant at most; past it a delivery fails at once.
const WEBHOOKS_QUEUED_PER_TENANT: usize = 100;
/// Webhook deliveries of one tenant in flight at once.
const WEBHOOKS_RUNNING_PER_TENANT: usize = 2;

/// Webhook delivery, apart from the task workers: a bounded number in flight
/// host-wide, at most two per tenant, at most a hundred queued per tenant, so a
/// tenant whose webhooks never answer delays only its own deliveries.
#[derive(Debug)]
struct Webhooks {
    host: Arc<tokio::sync::Semaphore>,
    tenants: std::sync::Mutex<std::collections::HashMap<String, Arc<TenantWebhooks>>>,
}

#[derive(Debug)]
struct TenantWebhooks {
    running: tokio::sync::Semaphore,
    queued: std::sync::atomic::AtomicUsize,
}

impl Webhooks {
    /// `workers` deliveries in flight at once across the host.
    fn new(workers: usize) -> Self {
        Self {
            host: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            tenants: std::sync::Mutex::default(),
        }
    }

    fn tenant(&self, tenant_id: &str) -> Arc<TenantWebhooks> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant_id.to_owned())
            .or_insert_with(|| {
                Arc::new(TenantWebhooks {
                    running: tokio::sync::Semaphore::new(WEBHOOKS_RUNNING_PER_TENANT),
                    queued: Default::default(),
                })
            })
            .clone()
    }

    /// Forgets `tenant_id`'s queue once nothing of it waits.
    fn forget_if_idle(&self, tenant_id: &str, queue: &TenantWebhooks) {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
            tenants.remove(tenant_id);
        }
    }
}

/// Posts a webhook, three tries with backoff (backon); returns how it went.
async fn deliver(hook: &Webhook, allow_private: bool) -> String {
    use backon::Retryable as _;
    // `Ok`: how it ended; `Err`: a failure worth another try.
    let attempt = || async {
        match post_once(hook, allow_private).await {
            Ok(status) if status.is_success() => Ok(format!("delivered: {status}")),
            Ok(status) if status.is_redirection() => {
                Ok(format!("failed: {status} (redirects are not followed)"))
            }
            Ok(status) => Err(format!("failed: {status}")),
            Err(Refused(why)) => Ok(format!("refused: {why}")),
            Err(Failed(why)) => Err(format!("failed: {why}")),
        }
    };
    let policy = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_factor(2.0)
        .with_max_times(2);
    attempt
        .retry(policy)
        .sleep(tokio::time::sleep)
        .await
        .unwrap_or_else(|last| last)
}

/// Why one try did not get a status: refused by the egress rule (no retry),
/// or failed on the way (retried).
enum TryError {
    Refused(String),
    Failed(String),
}
use TryError::{Failed, Refused};

/// One `POST`: resolve and check, connect to the checked address (5 s), send,
/// read the status (10 s for the whole try).
async fn post_once(hook: &Webhook, allow_private: bool) -> Result<http::StatusCode, TryError> {
    let (url, host, port) = webhook_target(&hook.url).map_err(Refused)?;
    let secure = url.scheme() == "https";
    let addrs = resolve_checked(&host, port, allow_private, Duration::from_secs(5))
        .await
        .map_err(|e| match e {
            EgressRefused::Private { .. } => Refused(e.to_string()),
            other => Failed(other.to_string()),
        })?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = sign_webhook(&hook.secret, timestamp, hook.body.as_bytes());
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let body = http_body_util::Full::new(bytes::Bytes::from(hook.body.clone()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = http::Request::post(url.as_str())
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .map_err(|e| Refused(e.to_string()))?;
    let options = wasmtime_wasi_http::RequestOptions {
        connect_timeout: Some(Duration::from_secs(5)),
        first_byte_timeout: Some(Duration::from_secs(10)),
        between_bytes_timeout: Some(Duration::from_secs(10)),
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        send_pinned(request, &host, secure, &addrs, options),
    )
    .await
    .map_err(|_| Failed("no answer within 10 s".into()))?
    .map_err(|e| Failed(e.to_string()))?;
    Ok(sent.0.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: &str, request: &ConvergeRequest, outcome: Option<&str>) -> TaskEntry {
        TaskEntry {
            id: "task_1".into(),
            status: status.into(),
            request: serde_json::to_string(request).expect("serializes"),
            outcome: outcome.map(str::to_owned),
            error: None,
            webhook_status: None,
            created_at: "2025-01-01T00:00:00.000Z".into(),
            updated_at: "2025-01-01T00:00:01.000Z".into(),
        }
    }

    #[test]
    fn a_listed_task_keeps_its_figures_not_its_outcome() {
        let request = Preset::Plan.request("a launch", None);
        let outcome = r#"{"answer":"a long answer","score":90,"rounds":2,"converged":true,
            "transcript":[],"usage":{"promptTokens":30,"completionTokens":12},
            "provider":"offline","model":"offline"}"#;
        let done = TaskSummary::of(entry("done", &request, Some(outcome)));
        assert_eq!(done.preset, Some(Preset::Plan));
        assert_eq!(done.prompt, "a launch", "the preset's framing is left out");
        assert_eq!(
            (done.rounds, done.score, done.converged, done.tokens),
            (Some(2), Some(90), Some(true), Some(42))
        );
        let own = ConvergeRequest {
            prompt: "é".repeat(PROMPT_EXCERPT + 80),
            agent_a_role: "DBA".into(),
            agent_b_role: "SRE".into(),
            context: None,
            max_rounds: None,
            threshold: None,
        };
        let pending = TaskSummary::of(entry("pending", &own, None));
        assert_eq!(pending.preset, None);
        assert_eq!(pending.prompt.chars().count(), PROMPT_EXCERPT + 1);
        assert!(pending.prompt.ends_with('…'), "{}", pending.prompt);
        assert_eq!((pending.rounds, pending.tokens), (None, None));
        let short = TaskSummary::of(entry("failed", &Preset::Review.request("x", None), None));
        assert_eq!(short.prompt, "x");
    }
}
