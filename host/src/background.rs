//! The handle on the host's background jobs: one `TaskTracker` and one
//! `CancellationToken`, so shutdown stops them together and waits for them.
//! A leaf module: whatever spawns a job (the composition root, `jobs`,
//! convergence's webhook deliveries) depends on this, not on the host.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The host's background jobs.
#[derive(Debug, Default, Clone)]
pub struct Jobs {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Jobs {
    /// Runs `job` until it ends or the host stops.
    pub fn spawn(&self, name: &'static str, job: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = job => {}
                () = stop.cancelled() => tracing::debug!(job = name, "stopped"),
            }
        });
    }

    /// Runs `job`, which watches [`Jobs::stopping`] itself and finishes its
    /// work when the host stops (rather than being dropped mid-way); shutdown
    /// waits for it.
    pub fn spawn_finishing(&self, job: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(job);
    }

    /// A token that is cancelled when the host stops (for a job that must
    /// finish its work rather than be dropped).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// Stops every job and waits for them, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tracker.len(),
                "background jobs still running after {grace:?}; leaving them"
            );
        }
    }
}
