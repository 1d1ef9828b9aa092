//! Stage 2 of a request: limits.
//!
//! Admission (a tenant's concurrency and the host's instance slots) happens
//! before any instance exists; the request-body cap wraps the body the guest
//! reads; [`GuestLimiter`] caps linear memory per instance and charges it to the
//! host-wide [`MemoryBudget`] while the instance lives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Linear memory all live instances together may hold, shared fairly.
///
/// Like the instance [`Pool`], the budget keeps a reserve: the first three
/// quarters are first come, first served; the last quarter only goes to a
/// tenant holding less than its fair share, `limit / (active tenants + 1)`.
/// So a tenant whose instances hoard memory stops at the shared part (or at its
/// fair share), its own growths are refused, and a neighbour still finds memory
/// for its requests.
pub struct MemoryBudget {
    limit: u64,
    reserve: u64,
    used: AtomicU64,
    pool: Arc<Pool>,
    /// Frees memory held by no request (drops a kept instance); whether it did.
    reclaim: std::sync::OnceLock<Reclaim>,
}

type Reclaim = Box<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("used", &self.used())
            .finish_non_exhaustive()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes; `pool` tells how many tenants are active.
    pub fn new(limit: u64, pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            reserve: limit / 4,
            used: AtomicU64::new(0),
            pool,
            reclaim: std::sync::OnceLock::new(),
        })
    }

    /// Sets what frees memory no request holds when a growth would be refused
    /// (once; later calls are ignored).
    pub fn set_reclaim(&self, reclaim: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.reclaim.set(Box::new(reclaim));
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes in the budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What one tenant may hold while others may need memory: the budget split
    /// among the active tenants and one more about to arrive.
    pub fn fair_share(&self) -> u64 {
        self.limit / (u64::from(self.pool.active_tenants()) + 1)
    }

    /// Charges `bytes` to `tenant`, or says why not, after freeing what kept
    /// instances hold if that is what stands in the way.
    fn charge(&self, bytes: u64, tenant: &TenantLoad) -> Result<(), GrowthDenied> {
        loop {
            match self.try_charge(bytes, tenant) {
                Err(_) if self.reclaim.get().is_some_and(|reclaim| reclaim()) => {}
                result => return result,
            }
        }
    }

    /// Charges `bytes` to `tenant`, or says why not.
    fn try_charge(&self, bytes: u64, tenant: &TenantLoad) -> Result<(), GrowthDenied> {
        let held = tenant.memory.load(Ordering::Acquire);
        let within_share = held.saturating_add(bytes) <= self.fair_share();
        let shared = self.limit - self.reserve;
        let mut over_share = false;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.checked_add(bytes)?;
                over_share = total > shared && !within_share;
                (total <= self.limit && !over_share).then_some(total)
            })
            .map_err(|_| {
                if over_share {
                    GrowthDenied::TenantShare {
                        held,
                        share: self.fair_share(),
                    }
                } else {
                    GrowthDenied::HostBudget
                }
            })?;
        tenant.memory.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    fn release(&self, bytes: u64, tenant: &TenantLoad) {
        tenant.memory.fetch_sub(bytes, Ordering::AcqRel);
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a memory or table growth was refused, kept for the error report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowthDenied {
    /// The instance reached its plan's memory limit.
    InstanceMemory,
    /// The tenant holds its fair share of the host memory budget while the
    /// shared part is spent: its own growths wait, its neighbours' do not.
    TenantShare {
        /// Bytes the tenant's instances held.
        held: u64,
        /// Its fair share then.
        share: u64,
    },
    /// The host-wide memory budget is spent.
    HostBudget,
    /// A table grew past the element limit.
    Table,
}

impl GrowthDenied {
    /// Whether the refusal was about the host's memory rather than the app's own limits.
    pub fn is_host_memory(self) -> bool {
        matches!(self, Self::TenantShare { .. } | Self::HostBudget)
    }
}

/// A per-store [`wasmtime::ResourceLimiter`]: the plan's memory cap plus the
/// tenant's share of the host budget.
#[derive(Debug)]
pub struct GuestLimiter {
    max_memory: usize,
    max_table_elements: usize,
    charged: u64,
    peak: u64,
    budget: Arc<MemoryBudget>,
    tenant: Arc<TenantLoad>,
    /// Set when a growth was refused; explains a trap that follows.
    pub denied: Option<GrowthDenied>,
}

impl GuestLimiter {
    /// A limiter granting `max_memory` bytes per memory, charged to `tenant`'s share of `budget`.
    pub fn new(max_memory: usize, budget: Arc<MemoryBudget>, tenant: Arc<TenantLoad>) -> Self {
        Self {
            max_memory,
            max_table_elements: 100_000,
            charged: 0,
            peak: 0,
            budget,
            tenant,
            denied: None,
        }
    }
}

impl GuestLimiter {
    /// The largest linear memory this instance reached, in bytes (since its
    /// current request began, for a kept instance).
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Linear memory this instance holds now, in bytes.
    pub fn held(&self) -> u64 {
        self.charged
    }

    /// Starts a kept instance's next request: no refusal on record, the peak
    /// from what it holds, the (possibly changed) plan cap.
    pub fn renew(&mut self, max_memory: usize) {
        self.denied = None;
        self.peak = self.charged;
        self.max_memory = max_memory;
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
        if let Err(denied) = self.budget.charge(extra, &self.tenant) {
            self.denied = Some(denied);
            return Ok(false);
        }
        self.charged += extra;
        self.peak = self.peak.max(desired as u64);
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
        self.budget.release(self.charged, &self.tenant);
    }
}

/// A tenant's request rate: `rate` requests per second on average, bursts up
/// to `burst` — governor's GCRA (a token bucket without a refill task), on a
/// clock that tests replace.
#[derive(Debug, Clone)]
pub struct RateLimiter<C: governor::clock::Clock = governor::clock::DefaultClock> {
    /// `None`: unlimited.
    bucket: Option<Arc<DirectLimiter<C>>>,
    clock: C,
}

type DirectLimiter<C> = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    C,
    governor::middleware::NoOpMiddleware<<C as governor::clock::Clock>::Instant>,
>;

impl RateLimiter {
    /// A full bucket; `rate` ≤ 0 means unlimited.
    pub fn new(rate: f64, burst: u32) -> Self {
        // One clock for the process: making one calibrates the TSC (~15 µs),
        // which was a third of a 100,000-tenant restart.
        static CLOCK: std::sync::LazyLock<governor::clock::DefaultClock> =
            std::sync::LazyLock::new(Default::default);
        Self::with_clock(rate, burst, CLOCK.clone())
    }
}

impl<C: governor::clock::Clock + Clone> RateLimiter<C> {
    /// A full bucket on `clock`; `rate` ≤ 0 (or too high to tell from
    /// unlimited) means unlimited.
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Self {
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        // Plans refuse rates under `MIN_RATE`; clamped here too, so no rate panics.
        let bucket = (rate > 0.0 && rate.is_finite())
            .then(|| {
                let rate = rate.max(crate::plans::MIN_RATE);
                governor::Quota::with_period(std::time::Duration::from_secs_f64(1.0 / rate))
            })
            .flatten()
            .map(|quota| {
                Arc::new(governor::RateLimiter::direct_with_clock(
                    quota.allow_burst(burst),
                    clock.clone(),
                ))
            });
        Self { bucket, clock }
    }

    /// Takes one request's place, or says how long until one is free.
    pub fn try_acquire(&self) -> Result<(), std::time::Duration> {
        match &self.bucket {
            None => Ok(()),
            Some(bucket) => bucket
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The tenant already runs its maximum of concurrent requests.
    TenantBusy,
    /// Every instance slot the tenant may use is taken.
    HostBusy,
}

/// The host's instance slots, shared fairly among tenants.
///
/// Most of the pool is first come, first served. The last `reserve` slots are
/// open only to tenants holding fewer than their fair share (`capacity` divided
/// by the tenants with requests in flight), so a tenant flooding the host cannot
/// take the slots another tenant needs for its first requests.
#[derive(Debug)]
pub struct Pool {
    capacity: u32,
    reserve: u32,
    in_use: AtomicU32,
    /// Slots held by instances kept between requests (part of `in_use`).
    parked: AtomicU32,
    active_tenants: AtomicU32,
}

impl Pool {
    /// A pool of `capacity` slots keeping a tenth in reserve.
    pub fn new(capacity: u32) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            capacity,
            reserve: capacity / 10,
            in_use: AtomicU32::new(0),
            parked: AtomicU32::new(0),
            active_tenants: AtomicU32::new(0),
        })
    }

    /// Slots in use now (by running instances and kept ones).
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Slots held by instances kept between requests ([`Slot::park`]).
    pub fn parked(&self) -> u32 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Slots running a request now.
    pub fn running(&self) -> u32 {
        self.in_use().saturating_sub(self.parked())
    }

    /// Slots in the pool.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Tenants with at least one request in flight.
    pub fn active_tenants(&self) -> u32 {
        self.active_tenants.load(Ordering::Relaxed)
    }
}

/// What one tenant is using right now: requests in flight and CPU lanes.
#[derive(Debug, Default)]
pub struct TenantLoad {
    in_flight: AtomicU32,
    memory: AtomicU64,
    cpu: std::sync::Mutex<CpuState>,
}

impl TenantLoad {
    /// Requests of this tenant running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Linear memory this tenant's live instances hold, in bytes.
    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }
}

/// A request's permits: one of its tenant's concurrent requests, and the
/// host instance slot its instance occupies ([`Admission::take_slot`], or the
/// slot of a kept instance it reuses, [`Admission::adopt`]).
#[derive(Debug)]
pub struct Admission {
    pool: Arc<Pool>,
    tenant: Arc<TenantLoad>,
    slot: Option<Slot>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.slot = None;
        if self.tenant.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pool.active_tenants.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One instance slot of the host pool, held while an instance exists: while
/// it serves a request, or while it is kept between requests (parked).
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    parked: bool,
}

impl Slot {
    /// Marks the slot as held by an instance kept between requests.
    pub fn park(mut self) -> Self {
        if !self.parked {
            self.parked = true;
            self.pool.parked.fetch_add(1, Ordering::AcqRel);
        }
        self
    }

    fn unpark(&mut self) {
        if self.parked {
            self.parked = false;
            self.pool.parked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.unpark();
        self.pool.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Takes a free instance slot for this request, if its tenant may have one.
    pub fn take_slot(&mut self) -> Result<(), Rejected> {
        if self.slot.is_some() {
            return Ok(());
        }
        let pool = &self.pool;
        // This request is counted: its tenant holds `held` others.
        let held = self.tenant.in_flight().saturating_sub(1);
        // Fair share as if one more tenant were about to arrive, so one alone
        // cannot take the reserve either.
        let fair_share = (pool.capacity / (pool.active_tenants() + 1)).max(1);
        let shared = pool.capacity - pool.reserve;
        pool.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let open = used < shared || (used < pool.capacity && held < fair_share);
                open.then_some(used + 1)
            })
            .map_err(|_| Rejected::HostBusy)?;
        self.slot = Some(Slot {
            pool: pool.clone(),
            parked: false,
        });
        Ok(())
    }

    /// Serves this request in a kept instance, which brings its own slot.
    pub fn adopt(&mut self, mut slot: Slot) {
        slot.unpark();
        self.slot = Some(slot);
    }

    /// The slot, for an instance kept after this request.
    pub fn release_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }
}

/// Admits one more concurrent request of `tenant`, without a slot yet; never
/// waits: overload is an answer, not a queue.
pub fn admit_tenant(
    pool: &Arc<Pool>,
    tenant: &Arc<TenantLoad>,
    max_concurrency: u32,
) -> Result<Admission, Rejected> {
    let held = tenant
        .in_flight
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max_concurrency).then_some(n + 1)
        })
        .map_err(|_| Rejected::TenantBusy)?;
    if held == 0 {
        pool.active_tenants.fetch_add(1, Ordering::AcqRel);
    }
    Ok(Admission {
        pool: pool.clone(),
        tenant: tenant.clone(),
        slot: None,
    })
}

/// Admits a request and takes its instance slot, or says why not (a refused
/// request holds nothing).
pub fn admit(
    pool: &Arc<Pool>,
    tenant: &Arc<TenantLoad>,
    max_concurrency: u32,
) -> Result<Admission, Rejected> {
    let mut admission = admit_tenant(pool, tenant, max_concurrency)?;
    admission.take_slot()?;
    Ok(admission)
}

/// Waits of guests for a CPU lane since start (for `/metrics`).
pub static CPU_WAITS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
struct CpuState {
    running: u32,
    next_id: u64,
    queue: std::collections::VecDeque<(u64, std::task::Waker)>,
    granted: Vec<u64>,
}

/// A guest's execution, scheduled fairly against other tenants' guests.
///
/// A guest runs (is polled) only while it holds one of its tenant's CPU lanes
/// (`lanes` = worker threads × the plan's weight). When it yields at a fuel
/// interval while another guest of the same tenant waits, the lane passes to
/// that guest and the yielder queues behind it; when it waits for I/O it gives
/// the lane back. Guests without a lane wait off the executor's run queue, in
/// FIFO order per tenant. So a tenant has at most `lanes` guests competing for
/// the executor whatever its requests in flight: one flooding the host with
/// CPU-bound requests gets its share of the cores, and another tenant's request
/// waits behind at most one time slice per core.
#[derive(Debug)]
pub struct Fair<F> {
    inner: Pin<Box<F>>,
    load: Arc<TenantLoad>,
    lanes: u32,
    id: u64,
    holding: bool,
    queued: bool,
    wake: Arc<SelfWake>,
    waker: std::task::Waker,
}

/// Forwards wakes to the task and notes that one happened (a yield, if during a poll).
#[derive(Debug, Default)]
struct SelfWake {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Fair<F> {
    /// Schedules `inner` on `load`'s lanes.
    pub fn new(load: Arc<TenantLoad>, lanes: u32, inner: F) -> Self {
        let id = {
            let mut cpu = lock(&load.cpu);
            cpu.next_id += 1;
            cpu.next_id
        };
        let wake = Arc::new(SelfWake::default());
        Self {
            inner: Box::pin(inner),
            load,
            lanes: lanes.max(1),
            id,
            holding: false,
            queued: false,
            waker: std::task::Waker::from(wake.clone()),
            wake,
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives a lane back: to the first waiter if there is one.
fn release(cpu: &mut CpuState) {
    match cpu.queue.pop_front() {
        Some((id, waker)) => {
            cpu.granted.push(id);
            waker.wake();
        }
        None => cpu.running = cpu.running.saturating_sub(1),
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.holding {
            let mut cpu = lock(&this.load.cpu);
            if let Some(at) = cpu.granted.iter().position(|g| *g == this.id) {
                cpu.granted.swap_remove(at);
            } else if !this.queued && cpu.running < this.lanes {
                cpu.running += 1;
            } else {
                match cpu.queue.iter_mut().find(|(id, _)| *id == this.id) {
                    Some((_, waker)) => waker.clone_from(cx.waker()),
                    None => {
                        cpu.queue.push_back((this.id, cx.waker().clone()));
                        CPU_WAITS.fetch_add(1, Ordering::Relaxed);
                    }
                }
                this.queued = true;
                return Poll::Pending;
            }
            this.queued = false;
            this.holding = true;
        }
        {
            let mut task = lock(&this.wake.task);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        this.wake.woken.store(false, Ordering::Release);
        let result = this
            .inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        let yielded = this.wake.woken.load(Ordering::Acquire);
        let mut cpu = lock(&this.load.cpu);
        match result {
            Poll::Pending if yielded => {
                // Still runnable: keep the lane unless a sibling waits for it.
                if !cpu.queue.is_empty() {
                    release(&mut cpu);
                    cpu.queue.push_back((this.id, cx.waker().clone()));
                    this.holding = false;
                    this.queued = true;
                }
            }
            _ => {
                release(&mut cpu);
                this.holding = false;
            }
        }
        result
    }
}

impl<F> Drop for Fair<F> {
    fn drop(&mut self) {
        if !self.holding && !self.queued {
            return;
        }
        let mut cpu = lock(&self.load.cpu);
        if self.holding {
            release(&mut cpu);
            return;
        }
        cpu.queue.retain(|(id, _)| *id != self.id);
        if let Some(at) = cpu.granted.iter().position(|g| *g == self.id) {
            cpu.granted.swap_remove(at);
            release(&mut cpu);
        }
    }
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
    counters: Option<Arc<crate::counters::TenantCounters>>,
}

impl<B> CappedBody<B> {
    /// Wraps `inner`; `tripped` is set when the cap is exceeded.
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            tripped,
            counters: None,
        }
    }

    /// Also counts the bytes read as the tenant's `bytes_in`.
    pub fn metered(mut self, counters: Arc<crate::counters::TenantCounters>) -> Self {
        self.counters = Some(counters);
        self
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
                    if let Some(counters) = &this.counters {
                        counters
                            .bytes_in
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
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
        // One tenant alone: capped per instance, and by the whole budget.
        let budget = MemoryBudget::new(3 << 20, Pool::new(10));
        let load = Arc::new(TenantLoad::default());
        let mut a = GuestLimiter::new(2 << 20, budget.clone(), load.clone());
        assert!(a.memory_growing(0, 1 << 20, None).unwrap_or(false));
        assert!(!a.memory_growing(1 << 20, 3 << 20, None).unwrap_or(true));
        assert_eq!(a.denied, Some(GrowthDenied::InstanceMemory));

        let mut b = GuestLimiter::new(4 << 20, budget.clone(), load.clone());
        assert!(!b.memory_growing(0, 3 << 20, None).unwrap_or(true));
        assert!(b.denied.is_some_and(GrowthDenied::is_host_memory));
        assert_eq!(load.memory(), 1 << 20, "a refused growth holds nothing");

        drop(b);
        drop(a);
        assert_eq!((budget.used(), load.memory()), (0, 0));
    }

    #[test]
    fn a_memory_hog_stops_at_its_share_and_its_neighbour_is_served() {
        let pool = Pool::new(100);
        let budget = MemoryBudget::new(100 << 20, pool.clone());
        let hog = Arc::new(TenantLoad::default());
        let neighbour = Arc::new(TenantLoad::default());
        let _hog_requests: Vec<_> = (0..20)
            .filter_map(|_| admit(&pool, &hog, 100).ok())
            .collect();
        // The hog's instances grow 10 MiB each until refused.
        let mut hoard = Vec::new();
        loop {
            let mut limiter = GuestLimiter::new(64 << 20, budget.clone(), hog.clone());
            let grew = limiter.memory_growing(0, 10 << 20, None).unwrap_or(false);
            if !grew {
                assert!(
                    matches!(limiter.denied, Some(GrowthDenied::TenantShare { .. })),
                    "{:?}",
                    limiter.denied
                );
                break;
            }
            hoard.push(limiter);
        }
        assert_eq!(hog.memory(), 70 << 20, "the shared three quarters, no more");
        // The neighbour arrives and gets memory from the reserve.
        let _its_request = admit(&pool, &neighbour, 100);
        let mut served = Vec::new();
        for _ in 0..10 {
            let mut limiter = GuestLimiter::new(64 << 20, budget.clone(), neighbour.clone());
            assert!(limiter.memory_growing(0, 2 << 20, None).unwrap_or(false));
            served.push(limiter);
        }
        assert_eq!(neighbour.memory(), 20 << 20);
        drop((hoard, served));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn admission_never_waits_and_keeps_a_reserve() {
        let pool = Pool::new(10);
        let flood = Arc::new(TenantLoad::default());
        let held: Vec<_> = (0..9)
            .filter_map(|_| admit(&pool, &flood, 100).ok())
            .collect();
        assert_eq!(
            held.len(),
            9,
            "the shared part plus its fair share of the reserve"
        );
        assert_eq!(admit(&pool, &flood, 100).err(), Some(Rejected::HostBusy));
        assert_eq!(flood.in_flight(), 9, "a refused request holds nothing");
        let other = Arc::new(TenantLoad::default());
        let first = admit(&pool, &other, 5);
        assert!(first.is_ok(), "the reserve serves a newcomer");
        assert_eq!(admit(&pool, &other, 5).err(), Some(Rejected::HostBusy));
        assert_eq!(pool.active_tenants(), 2);
        drop(held);
        assert_eq!(pool.active_tenants(), 1);
        let capped = Arc::new(TenantLoad::default());
        let one = admit(&pool, &capped, 1);
        assert!(one.is_ok());
        assert_eq!(admit(&pool, &capped, 1).err(), Some(Rejected::TenantBusy));
        drop((one, first));
        assert_eq!((pool.in_use(), pool.active_tenants()), (0, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooding_tenant_cannot_queue_ahead_of_another() {
        // One lane per tenant: A's three spinners take turns; B's one request
        // does not wait behind all of them.
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let a = Arc::new(TenantLoad::default());
        let b = Arc::new(TenantLoad::default());
        let spinner = |name: &'static str, load: &Arc<TenantLoad>, slices: u32| {
            let order = order.clone();
            tokio::spawn(Fair::new(load.clone(), 1, async move {
                for _ in 0..slices {
                    lock(&order).push(name);
                    // Yields the way wasmtime's fuel interval does: woken during the poll.
                    let mut yielded = false;
                    std::future::poll_fn(|cx| {
                        if yielded {
                            return Poll::Ready(());
                        }
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    })
                    .await;
                }
            }))
        };
        let tasks = vec![
            spinner("a1", &a, 3),
            spinner("a2", &a, 3),
            spinner("a3", &a, 3),
            spinner("b", &b, 1),
        ];
        for task in tasks {
            assert!(task.await.is_ok());
        }
        let order = lock(&order).clone();
        assert_eq!(order.len(), 10);
        let b_at = order.iter().position(|n| *n == "b");
        assert!(b_at.is_some_and(|at| at <= 2), "{order:?}");
        let a2_first = order.iter().position(|n| *n == "a2").unwrap_or(99);
        let a1_last = order.iter().rposition(|n| *n == "a1").unwrap_or(0);
        assert!(a2_first < a1_last, "A's guests take turns: {order:?}");
        assert_eq!(lock(&a.cpu).running, 0);
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

    #[test]
    fn the_rate_limiter_allows_the_burst_then_the_rate() {
        use governor::clock::FakeRelativeClock;
        use std::time::Duration;
        let clock = FakeRelativeClock::default();
        let bucket = RateLimiter::with_clock(2.0, 3, clock.clone());
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire(), Ok(()), "the burst");
        }
        assert_eq!(bucket.try_acquire(), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(499));
        assert_eq!(bucket.try_acquire(), Err(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(bucket.try_acquire(), Ok(()), "one more after half a second");
        assert!(bucket.try_acquire().is_err());
        // A long pause refills the burst, not more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire(), Ok(()));
        }
        assert!(bucket.try_acquire().is_err());
        // No rate: unlimited.
        let free = RateLimiter::with_clock(0.0, 1, clock);
        for _ in 0..1000 {
            assert_eq!(free.try_acquire(), Ok(()));
        }
    }
}
