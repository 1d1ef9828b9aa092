//! Several hosts, one PostgreSQL database: keeping every host's registry in
//! line with storage.
//!
//! Storage is the truth; each host's [`Registry`](crate::registry::Registry) is
//! a cache of it. A host that changes a tenant (spawn, deploy, rollback, stop,
//! start, env, limits, delete) writes storage first, then sends
//! `NOTIFY lodge_tenant_changes, '<tenant id>'`. Every host `LISTEN`s and
//! re-reads that tenant ([`ControlPlane::refresh_tenant`]): a deploy through host A is
//! served by host B within milliseconds. A reconcile every few seconds compares
//! the whole tenant table with the registry, the safety net for notices lost
//! while a connection was down. SQLite is single-host: nothing here runs.
//!
//! This module is the notice channel and its sender; the listener and the
//! periodic reconcile are jobs (`jobs.rs`); the re-reads are the control
//! plane's ([`ControlPlane::refresh_tenant`], [`ControlPlane::reconcile`]).
//!
//! [`ControlPlane::refresh_tenant`]: crate::control::ControlPlane::refresh_tenant
//! [`ControlPlane::reconcile`]: crate::control::ControlPlane::reconcile

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

    /// The notifier's connections.
    pub(crate) fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}
