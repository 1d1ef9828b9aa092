//! Several hosts, one PostgreSQL database: keeping every host's registry in
//! line with storage.
//!
//! Storage is the truth; each host's [`Registry`](crate::registry::Registry) is
//! a cache of it. A host that changes a tenant (spawn, deploy, rollback, stop,
//! start, env, limits, delete) writes storage first, then sends
//! `NOTIFY lodge_tenant_changes, '<tenant id>'`. Every host `LISTEN`s and
//! re-reads that tenant ([`Lodge::refresh_tenant`]): a deploy through host A is
//! served by host B within milliseconds. A reconcile every few seconds compares
//! the whole tenant table with the registry, the safety net for notices lost
//! while a connection was down. SQLite is single-host: nothing here runs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::control::ControlError;
use crate::registry::Active;
use crate::server::Lodge;
use crate::storage::StorageError;

/// The channel change notices travel on.
pub const CHANNEL: &str = "lodge_tenant_changes";

/// Sends change notices (a small pool of its own, so notices never wait for storage).
#[derive(Debug, Clone)]
pub struct Notifier {
    pool: sqlx::PgPool,
}

impl Notifier {
    /// A notifier on the database at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}

impl Lodge {
    /// Tells every host (this one included) that tenant `tenant_id` changed.
    pub(crate) async fn announce(&self, tenant_id: &str) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(tenant_id)
            .execute(&notifier.pool)
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
                    self.register(&record, env.vars).await
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
        let mut seen = std::collections::HashSet::new();
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

/// Listens for change notices while the host lives (a `jobs` job).
pub(crate) async fn listen(lodge: Weak<Lodge>, url: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "change listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if lodge.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            let notice = listener.recv().await;
            let Some(lodge) = lodge.upgrade() else { return };
            match notice {
                Ok(notice) => {
                    let id = notice.payload().to_owned();
                    if let Err(e) = lodge.refresh_tenant(&id).await {
                        tracing::warn!(tenant_id = %id, error = %e, "refresh after a change notice failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}

pub(crate) async fn reconcile_periodically(lodge: Weak<Lodge>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        match lodge.reconcile().await {
            Ok(0) => {}
            Ok(changed) => tracing::info!(changed, "reconciled tenants with the database"),
            Err(e) => tracing::warn!(error = %e, "reconcile failed"),
        }
    }
}
