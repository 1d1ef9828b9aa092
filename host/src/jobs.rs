//! The host's background jobs, in one place: started by [`start`] when the
//! host opens, each tracked by one `TaskTracker` and stopped together by one
//! `CancellationToken` ([`Jobs::shutdown`]), so a shutdown is deterministic:
//! the log archive writes what is queued, and nothing runs after `serve`
//! returns.
//!
//! | job | every | does |
//! |---|---|---|
//! | log archive | as lines come | batches tenants' log lines into storage |
//! | database check | 15 s | `SELECT 1` (5 s to answer): `lodge_database_up` |
//! | task workers (`convergence_workers`) | as tasks come | run queued convergence tasks |
//! | usage flush | 5 s | adds usage counters to `usage_hourly` |
//! | housekeeping | `housekeeping_interval` (10 min) | prunes archived log lines, sweeps artifacts |
//! | lapsed leases | `reconcile_interval` | requeues tasks whose host died |
//! | idle unload | `idle_unload / 4` | drops components of idle tenants |
//! | kept instances | `reuse_idle / 4` | drops instances kept between requests that waited `reuse_idle` |
//! | idle trim | `idle_trim / 4` | gives warm instance slots' memory back once the host is quiet |
//! | precompile | once at start | compiles active components missing from the artifact cache |
//! | config watch | `config_poll`, SIGHUP | reloads `lodge.toml` |
//! | change notices, reconcile | as notices come, `reconcile_interval` | PostgreSQL: other hosts' changes (`sync`) |

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::ControlPlane;
use crate::convergence::tasks::ConvergenceService;
use crate::storage::Storage;

pub use crate::background::Jobs;

/// Starts every periodic job of the host's services (see the table above).
pub(crate) fn start(jobs: &Jobs, lodge: &Arc<ControlPlane>, convergence: &Arc<ConvergenceService>) {
    let weak = || Arc::downgrade(lodge);
    for _ in 0..lodge.config.convergence_workers {
        jobs.spawn(
            "task worker",
            crate::convergence::tasks::work(Arc::downgrade(convergence)),
        );
    }
    jobs.spawn("precompile", warm_missing_artifacts(weak()));
    jobs.spawn("database check", check_database_periodically(weak()));
    jobs.spawn("usage flush", flush_usage_periodically(weak()));
    jobs.spawn("housekeeping", housekeeping_periodically(weak()));
    jobs.spawn(
        "lapsed leases",
        requeue_lapsed_tasks_periodically(weak(), Arc::downgrade(convergence)),
    );
    jobs.spawn(
        "idle unload",
        unload_idle_periodically(weak(), lodge.config.idle_unload),
    );
    jobs.spawn("idle trim", trim_when_quiet(weak(), lodge.config.idle_trim));
    jobs.spawn(
        "kept instances",
        drop_kept_instances(weak(), lodge.config.reuse_idle),
    );
    if lodge.config.config_file.is_some() {
        jobs.spawn("config watch", watch_config(weak()));
    }
    if let (Some(url), Some(_)) = (&lodge.config.database_url, &lodge.notifier) {
        jobs.spawn("change notices", listen(weak(), url.clone()));
        jobs.spawn(
            "reconcile",
            reconcile_periodically(weak(), lodge.config.reconcile_interval),
        );
    }
}

/// Lines written to the archive in one transaction at most.
const ARCHIVE_BATCH: usize = 2048;
/// How long the archive waits for more lines before it writes a partial batch.
const ARCHIVE_LINGER: Duration = Duration::from_millis(50);

/// Writes archived log lines in batches; lines are dropped, never blocking
/// guests, if it falls behind (`lodge_log_lines_dropped_total`, counted where
/// they are queued). Lines of a batch whose write fails are counted in `lost`.
/// When the host stops it writes what is queued.
pub(crate) async fn archive_logs(
    storage: Arc<dyn Storage>,
    mut lines: tokio::sync::mpsc::Receiver<crate::logs::Archived>,
    lost: prometheus_client::metrics::counter::Counter,
    stopping: CancellationToken,
) {
    let mut batch = Vec::with_capacity(ARCHIVE_BATCH);
    loop {
        let received = if stopping.is_cancelled() {
            // Stopping: write what is queued, a batch at a time, then end.
            take_queued(&mut lines, &mut batch);
            batch.len()
        } else {
            let first = tokio::select! {
                received = lines.recv_many(&mut batch, ARCHIVE_BATCH) => received,
                () = stopping.cancelled() => continue,
            };
            if first > 0 && batch.len() < ARCHIVE_BATCH {
                // Gather what comes in the next moment into the same
                // transaction: a guest logging on every request otherwise
                // costs one transaction per line or two.
                tokio::select! {
                    () = tokio::time::sleep(ARCHIVE_LINGER) => {}
                    () = stopping.cancelled() => {}
                }
                take_queued(&mut lines, &mut batch);
            }
            batch.len()
        };
        if received == 0 {
            return;
        }
        let rows: Vec<(&str, &crate::logs::LogLine)> =
            batch.iter().map(|a| (&*a.tenant_id, &*a.line)).collect();
        if let Err(e) = storage.append_logs(&rows).await {
            tracing::warn!(error = %e, lines = rows.len(), "log lines not archived");
            lost.inc_by(rows.len() as u64);
        }
        drop(rows);
        batch.drain(..).for_each(crate::logs::Archived::done);
    }
}

/// Moves the lines queued now into `batch`, up to [`ARCHIVE_BATCH`].
fn take_queued(
    lines: &mut tokio::sync::mpsc::Receiver<crate::logs::Archived>,
    batch: &mut Vec<crate::logs::Archived>,
) {
    while batch.len() < ARCHIVE_BATCH {
        match lines.try_recv() {
            Ok(line) => batch.push(line),
            Err(_) => break,
        }
    }
}

/// How often the database check runs.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(15);
/// How long the database has to answer a check.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the database one `SELECT 1` every [`DATABASE_CHECK_EVERY`] and sets
/// `lodge_database_up` by the answer (none within [`DATABASE_CHECK_TIMEOUT`]
/// is a failure); logs when the database goes away and when it is back.
async fn check_database_periodically(lodge: std::sync::Weak<ControlPlane>) {
    let mut tick = every_after_first(DATABASE_CHECK_EVERY).await;
    let mut was_up = true;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        let failure = match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, lodge.storage.ping()).await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{:#}", anyhow::Error::new(e))),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(DATABASE_CHECK_TIMEOUT)
            )),
        };
        lodge.metrics.database_up.set(i64::from(failure.is_none()));
        match (was_up, failure) {
            (true, Some(error)) => {
                tracing::error!(error = %error, "the database check failed: the database is unreachable");
                was_up = false;
            }
            (false, None) => {
                tracing::info!("the database answers again");
                was_up = true;
            }
            _ => {}
        }
    }
}

/// Re-reads the config file every `config_poll` (and on SIGHUP) while the host lives.
async fn watch_config(lodge: std::sync::Weak<ControlPlane>) {
    let poll = match lodge.upgrade() {
        Some(lodge) => lodge.config.config_poll,
        None => return,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_error = None;
    loop {
        let signal = async {
            match &mut hangup {
                Some(hangup) => {
                    hangup.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = signal => tracing::info!("SIGHUP: reloading the config file"),
        }
        let Some(lodge) = lodge.upgrade() else { return };
        match lodge.reload_plans() {
            Ok(_) => last_error = None,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "config file not reloaded; the plans in force stay");
                }
                last_error = Some(e);
            }
        }
    }
}

/// An interval of `every` whose first tick has passed, delaying missed ticks.
async fn every_after_first(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tick
}

/// Drops the components of tenants idle for `HostConfig::idle_unload`.
async fn unload_idle_periodically(lodge: std::sync::Weak<ControlPlane>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    let mut tick = every_after_first(every).await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        let unloaded = lodge
            .registry
            .all()
            .iter()
            .filter_map(|tenant| tenant.active())
            .filter(|active| active.unload_if_idle(idle))
            .count();
        if unloaded > 0 {
            tracing::debug!(
                unloaded,
                in_memory = lodge.runtime.components_loaded(),
                "unloaded idle tenants"
            );
        }
    }
}

/// Drops the instances kept between requests that waited `idle` for one.
async fn drop_kept_instances(lodge: std::sync::Weak<ControlPlane>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let mut tick = every_after_first(every).await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        let dropped = lodge.runtime.warm().sweep(idle);
        if dropped > 0 {
            tracing::debug!(dropped, "kept instances idle too long dropped");
        }
    }
}

/// Once no request ran for `quiet`, replaces the engines so the memory their
/// pools keep resident in warm slots goes back (once per quiet period: the
/// fresh pools hold nothing until requests come again).
async fn trim_when_quiet(lodge: std::sync::Weak<ControlPlane>, quiet: Duration) {
    let every = (quiet / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let mut tick = every_after_first(every).await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        let runtime = lodge.runtime.clone();
        if runtime.quiet_for().is_none_or(|q| q < quiet) {
            continue;
        }
        let resident = runtime.idle_resident_bytes();
        if resident == 0 {
            continue;
        }
        match tokio::task::spawn_blocking(move || runtime.trim()).await {
            Ok(Ok(moved)) => tracing::info!(
                resident_mib = resident >> 20,
                components = moved,
                "host quiet: idle instance memory given back"
            ),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "idle memory not given back"),
            Err(e) => tracing::warn!(error = %e, "idle memory not given back"),
        }
    }
}

/// After a start, compiles (one per core, in the background) the active
/// components whose artifact is missing, e.g. after an upgrade changed the
/// engine, so their tenants' first requests only load.
async fn warm_missing_artifacts(lodge: std::sync::Weak<ControlPlane>) {
    let digests: std::collections::BTreeSet<String> = match lodge.upgrade() {
        Some(lodge) => lodge
            .registry
            .all()
            .iter()
            .filter_map(|t| t.active())
            .map(|a| a.digest.to_string())
            .filter(|d| !lodge.runtime.has_artifact(d))
            .collect(),
        None => return,
    };
    if !digests.is_empty() {
        tracing::info!(
            components = digests.len(),
            "compiling components missing from the artifact cache"
        );
    }
    for digest in digests {
        let Some(lodge) = lodge.upgrade() else { return };
        lodge.warm(&digest).await;
    }
}

/// Puts tasks whose lease lapsed back in the queue: their host died (several
/// hosts) or could not store their result.
async fn requeue_lapsed_tasks_periodically(
    lodge: std::sync::Weak<ControlPlane>,
    convergence: std::sync::Weak<ConvergenceService>,
) {
    let every = match lodge.upgrade() {
        Some(lodge) => lodge.config.reconcile_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        match lodge
            .storage
            .task_requeue_running(Some(lodge.config.task_lease))
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(tasks = n, "requeued convergence tasks whose lease lapsed");
                if let Some(convergence) = convergence.upgrade() {
                    convergence.wake_workers();
                }
            }
            Err(e) => tracing::warn!(error = %e, "requeueing lapsed tasks failed"),
        }
    }
}

/// Prunes archived log lines by each tenant's plan (age and count) and
/// deletes artifacts of components no longer stored: at start, then every
/// `housekeeping_interval`.
async fn housekeeping_periodically(lodge: std::sync::Weak<ControlPlane>) {
    let every = match lodge.upgrade() {
        Some(lodge) => lodge.config.housekeeping_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        housekeeping(&lodge).await;
    }
}

/// One round of housekeeping (see [`housekeeping_periodically`]).
pub async fn housekeeping(lodge: &ControlPlane) {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    let now = crate::storage::now_ms();
    let mut pruned = 0;
    for tenant in lodge.registry.all() {
        let limits = tenant.governor().limits.clone();
        let before = now - i64::from(limits.log_retention_days) * DAY_MS;
        let kept = i64::from(limits.log_retention_lines);
        match lodge.storage.prune_logs(&tenant.id, before, kept).await {
            Ok(n) => pruned += n,
            Err(e) => tracing::warn!(tenant = %tenant.slug, error = %e, "pruning logs failed"),
        }
    }
    let before = now - i64::from(lodge.config.default_limits.log_retention_days) * DAY_MS;
    match lodge.storage.prune_deleted_tenants_logs(before).await {
        Ok(n) => pruned += n,
        Err(e) => tracing::warn!(error = %e, "pruning deleted tenants' logs failed"),
    }
    if pruned > 0 {
        tracing::info!(lines = pruned, "archived log lines pruned");
    }
    lodge.sweep_artifacts().await;
}

async fn flush_usage_periodically(lodge: std::sync::Weak<ControlPlane>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(lodge) = lodge.upgrade() else { return };
        lodge.flush_usage().await;
    }
}

/// Listens for change notices while the host lives (a `jobs` job).
pub(crate) async fn listen(lodge: std::sync::Weak<ControlPlane>, url: String) {
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
        if let Err(e) = listener.listen(crate::sync::CHANNEL).await {
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

pub(crate) async fn reconcile_periodically(
    lodge: std::sync::Weak<ControlPlane>,
    interval: Duration,
) {
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
