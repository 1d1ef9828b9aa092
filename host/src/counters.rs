//! What is counted per tenant on the hot path, lock-free: usage not yet
//! written to storage. A leaf module: the stages that count (limits, instance,
//! capabilities, convergence) depend on it, not on the registry.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::Usage;

/// Usage not yet written to storage, counted lock-free on the hot path.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Requests routed to this tenant.
    pub requests: AtomicU64,
    /// Of those, the ones Lodge answered with an error.
    pub failures: AtomicU64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub status: [AtomicU64; 4],
    /// Fuel burnt.
    pub fuel: AtomicU64,
    /// Guest wall time, microseconds.
    pub wall_us: AtomicU64,
    /// Largest linear memory of one instance since the last flush.
    pub peak_memory: AtomicU64,
    /// Request body bytes read.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent.
    pub bytes_out: AtomicU64,
    /// Outbound HTTP requests.
    pub outbound: AtomicU64,
    /// Convergence tokens used (guests, the API and tasks), added as each provider call returns.
    pub tokens: AtomicU64,
    /// Key-value operations.
    pub kv_ops: AtomicU64,
    /// Wallet transfers.
    pub wallet_txs: AtomicU64,
    /// Requests since start (never reset; for status).
    pub total_requests: AtomicU64,
    /// Failures since start (never reset; for status).
    pub total_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl TenantCounters {
    /// Counts one request, its status and whether Lodge failed it (with a code for `lastError`).
    pub fn record(&self, status: u16, failure: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(class) = (status / 100).checked_sub(2).filter(|c| *c < 4) {
            self.status[usize::from(class)].fetch_add(1, Ordering::Relaxed);
        }
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
    pub fn take(&self) -> Usage {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) as i64;
        let wall_us = self.wall_us.swap(0, Ordering::Relaxed);
        // Keep the sub-millisecond remainder for the next flush.
        self.wall_us.fetch_add(wall_us % 1000, Ordering::Relaxed);
        Usage {
            requests: take(&self.requests),
            failures: take(&self.failures),
            status_2xx: take(&self.status[0]),
            status_3xx: take(&self.status[1]),
            status_4xx: take(&self.status[2]),
            status_5xx: take(&self.status[3]),
            fuel: take(&self.fuel),
            wall_ms: (wall_us / 1000) as i64,
            peak_memory_bytes: take(&self.peak_memory),
            bytes_in: take(&self.bytes_in),
            bytes_out: take(&self.bytes_out),
            outbound_requests: take(&self.outbound),
            tokens: take(&self.tokens),
            kv_ops: take(&self.kv_ops),
            wallet_txs: take(&self.wallet_txs),
        }
    }

    /// Puts back usage that could not be written, so the next flush retries it.
    pub fn restore(&self, usage: &Usage) {
        let add = |c: &AtomicU64, v: i64| {
            c.fetch_add(v.max(0) as u64, Ordering::Relaxed);
        };
        add(&self.requests, usage.requests);
        add(&self.failures, usage.failures);
        add(&self.status[0], usage.status_2xx);
        add(&self.status[1], usage.status_3xx);
        add(&self.status[2], usage.status_4xx);
        add(&self.status[3], usage.status_5xx);
        add(&self.fuel, usage.fuel);
        add(&self.wall_us, usage.wall_ms.saturating_mul(1000));
        self.peak_memory
            .fetch_max(usage.peak_memory_bytes.max(0) as u64, Ordering::Relaxed);
        add(&self.bytes_in, usage.bytes_in);
        add(&self.bytes_out, usage.bytes_out);
        add(&self.outbound, usage.outbound_requests);
        add(&self.tokens, usage.tokens);
        add(&self.kv_ops, usage.kv_ops);
        add(&self.wallet_txs, usage.wallet_txs);
    }
}
