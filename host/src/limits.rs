//! Stage 2 of a request: limits.
//!
//! Admission (a tenant's concurrency and the host's instance slots) happens
//! before any instance exists; the request-body cap wraps the body the guest
//! reads; [`GuestLimiter`] caps linear memory per instance and charges it to the
//! host-wide [`MemoryBudget`] while the instance lives.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Linear memory all live instances together may hold.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a memory or table growth was refused, kept for the error report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowthDenied {
    /// The instance reached its plan's memory limit.
    InstanceMemory,
    /// The host-wide memory budget is spent.
    HostBudget,
    /// A table grew past the element limit.
    Table,
}

/// A per-store [`wasmtime::ResourceLimiter`]: the plan's memory cap plus the host budget.
#[derive(Debug)]
pub struct GuestLimiter {
    max_memory: usize,
    max_table_elements: usize,
    charged: u64,
    budget: Arc<MemoryBudget>,
    /// Set when a growth was refused; explains a trap that follows.
    pub denied: Option<GrowthDenied>,
}

impl GuestLimiter {
    /// A limiter granting `max_memory` bytes per memory, charged to `budget`.
    pub fn new(max_memory: usize, budget: Arc<MemoryBudget>) -> Self {
        Self {
            max_memory,
            max_table_elements: 100_000,
            charged: 0,
            budget,
            denied: None,
        }
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory || maximum.is_some_and(|max| desired > max) {
            self.denied = Some(GrowthDenied::InstanceMemory);
            return Ok(false);
        }
        let extra = desired.saturating_sub(current) as u64;
        if !self.budget.try_charge(extra) {
            self.denied = Some(GrowthDenied::HostBudget);
            return Ok(false);
        }
        self.charged += extra;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements || maximum.is_some_and(|max| desired > max) {
            self.denied = Some(GrowthDenied::Table);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A Rust or wstd component has a handful of core instances; generous but finite.
        100
    }

    fn tables(&self) -> usize {
        100
    }

    fn memories(&self) -> usize {
        10
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

/// A token bucket: `rate` requests per second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimiter {
    /// A full bucket; `rate` ≤ 0 means unlimited.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), std::time::Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let refilled =
            (state.0 + now.duration_since(state.1).as_secs_f64() * self.rate).min(self.burst);
        *state = (refilled, now);
        if refilled >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (1.0 - refilled) / self.rate,
            ))
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The tenant already runs its maximum of concurrent requests.
    TenantBusy,
    /// Every instance slot of the host is in use.
    HostBusy,
}

/// Permits held for as long as a request's instance lives.
#[derive(Debug)]
pub struct Admission {
    _tenant: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
}

/// Admits a request or says why not, never waiting: overload is an answer, not a queue.
pub fn admit(tenant: &Arc<Semaphore>, host: &Arc<Semaphore>) -> Result<Admission, Rejected> {
    let tenant = tenant.clone().try_acquire_owned().map_err(|e| match e {
        TryAcquireError::NoPermits | TryAcquireError::Closed => Rejected::TenantBusy,
    })?;
    let host = host
        .clone()
        .try_acquire_owned()
        .map_err(|_| Rejected::HostBusy)?;
    Ok(Admission {
        _tenant: tenant,
        _host: host,
    })
}

/// A request body that fails once more than `limit` bytes have passed.
///
/// The guest reads an `http-request-body-size` error; `tripped` tells the data
/// plane to answer 413 whatever the guest then does.
#[derive(Debug)]
pub struct CappedBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> CappedBody<B> {
    /// Wraps `inner`; `tripped` is set when the cap is exceeded.
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            tripped,
        }
    }
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use wasmtime::ResourceLimiter;

    fn never(never: std::convert::Infallible) -> wasmtime_wasi_http::Error {
        match never {}
    }

    #[test]
    fn memory_is_capped_per_instance_and_charged_to_the_host() {
        let budget = MemoryBudget::new(3 << 20);
        let mut a = GuestLimiter::new(2 << 20, budget.clone());
        assert!(a.memory_growing(0, 1 << 20, None).unwrap_or(false));
        assert!(!a.memory_growing(1 << 20, 3 << 20, None).unwrap_or(true));
        assert_eq!(a.denied, Some(GrowthDenied::InstanceMemory));

        let mut b = GuestLimiter::new(2 << 20, budget.clone());
        assert!(b.memory_growing(0, 2 << 20, None).unwrap_or(false));
        let mut c = GuestLimiter::new(2 << 20, budget.clone());
        assert!(!c.memory_growing(0, 1 << 20, None).unwrap_or(true));
        assert_eq!(c.denied, Some(GrowthDenied::HostBudget));

        drop(b);
        assert_eq!(budget.used(), 1 << 20);
        assert!(c.memory_growing(0, 1 << 20, None).unwrap_or(false));
        drop((a, c));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn admission_never_waits() {
        let tenant = Arc::new(Semaphore::new(1));
        let host = Arc::new(Semaphore::new(1));
        let first = admit(&tenant, &host);
        assert!(first.is_ok());
        assert_eq!(admit(&tenant, &host).err(), Some(Rejected::TenantBusy));
        let other_tenant = Arc::new(Semaphore::new(5));
        assert_eq!(admit(&other_tenant, &host).err(), Some(Rejected::HostBusy));
        assert_eq!(other_tenant.available_permits(), 5);
        drop(first);
        assert!(admit(&tenant, &host).is_ok());
    }

    #[test]
    fn the_token_bucket_allows_bursts_then_says_when() {
        let bucket = RateLimiter::new(2.0, 3);
        for _ in 0..3 {
            assert!(bucket.try_acquire().is_ok());
        }
        let wait = bucket.try_acquire().expect_err("empty");
        assert!(
            wait > std::time::Duration::from_millis(300)
                && wait <= std::time::Duration::from_millis(500),
            "{wait:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(520));
        assert!(bucket.try_acquire().is_ok(), "refilled");
        assert!(
            RateLimiter::new(0.0, 1).try_acquire().is_ok(),
            "0 = unlimited"
        );
    }

    #[tokio::test]
    async fn body_cap_trips_past_the_limit() {
        let tripped = Arc::new(AtomicBool::new(false));
        let body = Full::new(Bytes::from(vec![0u8; 11])).map_err(never);
        let capped = CappedBody::new(body, 10, tripped.clone());
        assert!(capped.collect().await.is_err());
        assert!(tripped.load(Ordering::Acquire));

        let tripped = Arc::new(AtomicBool::new(false));
        let body = Full::new(Bytes::from(vec![0u8; 10])).map_err(never);
        let capped = CappedBody::new(body, 10, tripped.clone());
        assert_eq!(
            capped.collect().await.map(|c| c.to_bytes().len()).ok(),
            Some(10)
        );
        assert!(!tripped.load(Ordering::Acquire));
    }
}
