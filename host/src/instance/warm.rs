//! Instances kept between requests of one tenant (plan `instance_reuse = N`).
//!
//! With reuse on, an instance that answered a request cleanly is parked in its
//! tenant's [`WarmSet`] instead of being dropped, and the tenant's next request
//! runs in it: no instantiation, and what the guest kept in memory is still
//! there (the trade-off `wasmtime serve --max-instance-reuse-count`, Spin's
//! WASIp3 mode and Cloudflare's isolates make). Never another tenant's: the
//! set belongs to one tenant, and to one deployment of it — a deploy, rollback,
//! env or plan change [`WarmSet::invalidate`]s it. Each request gets fresh fuel,
//! its own deadline, log tagging, log budget and metering
//! ([`crate::capability::GuestState::renew`]).
//!
//! An instance is dropped instead of parked after a trap, a timeout, a limit
//! refusal, when it still holds a resource of
//! the request it served, when its memory grew past [`memory_bound`], after N
//! requests, when the code it runs is replaced (tier-up, trim), and after
//! sitting idle for the host's `reuse_idle` ([`WarmSets::sweep`]). A parked
//! instance keeps its host instance slot and its memory charged to the budget;
//! when either runs short, parked instances are evicted first
//! ([`WarmSets::evict_one`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::tiers::Prepared;
use crate::capability::GuestState;
use crate::limits::Slot;

/// An instance that served a request and may serve its tenant's next one.
pub struct Kept {
    pub(super) store: Store<GuestState>,
    pub(super) proxy: Proxy,
    /// The code it runs (reused only while it is still the code in force).
    pub(super) code: Arc<Prepared>,
    /// Requests it served.
    pub(super) uses: u32,
    /// Linear memory it held right after instantiation.
    pub(super) base_memory: u64,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("uses", &self.uses)
            .field("base_memory", &self.base_memory)
            .finish_non_exhaustive()
    }
}

/// What a request of a tenant with reuse on needs to park its instance after.
#[derive(Debug, Clone)]
pub struct Reuse {
    /// The tenant's parked instances.
    pub set: Arc<WarmSet>,
    /// [`WarmSet::generation`], read before the tenant's state.
    pub generation: u64,
    /// The plan's `instance_reuse`: requests one instance serves at most.
    pub max_uses: u32,
}

/// A [`Kept`] instance parked with its host instance slot.
pub(super) struct WarmInstance {
    pub(super) kept: Kept,
    pub(super) slot: Slot,
    /// The [`WarmSet`] generation it was made in.
    generation: u64,
    parked_at: Instant,
}

impl WarmInstance {
    pub(super) fn new(kept: Kept, slot: Slot, generation: u64) -> Self {
        Self {
            kept,
            slot: slot.park(),
            generation,
            parked_at: Instant::now(),
        }
    }
}

/// The most memory a kept instance may hold and still be kept: twice what it
/// held after instantiation, and at least 1 MiB more. An instance whose
/// memory grows request after request (a leak, a cache) is replaced by a
/// fresh one instead of growing to its plan's cap.
pub fn memory_bound(base: u64) -> u64 {
    base.saturating_mul(2).max(base.saturating_add(1 << 20))
}

/// One tenant's parked instances.
#[derive(Default)]
pub struct WarmSet {
    inner: Mutex<Inner>,
    /// Bumped by [`WarmSet::invalidate`]; read (before the tenant's state) by
    /// a request, whose instance is parked only if it has not moved since.
    generation: AtomicU64,
    /// Whether the host's [`WarmSets`] knows this set.
    listed: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Most recently parked last (taken first: its memory is warmest).
    idle: Vec<WarmInstance>,
}

impl std::fmt::Debug for WarmSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmSet")
            .field("idle", &self.len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl WarmSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current generation: read it before the tenant's state snapshot.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Parked instances now.
    pub fn len(&self) -> usize {
        self.lock().idle.len()
    }

    /// Whether no instance is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every parked instance and refuses those of requests that began
    /// before (a deploy, rollback, env or plan change).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.drop_all();
    }

    /// Drops every parked instance (outside the lock).
    fn drop_all(&self) {
        let dropped = std::mem::take(&mut self.lock().idle);
        drop(dropped);
    }

    /// A parked instance of `generation` running `code`, if any (the most
    /// recently parked). Instances of older code are dropped on the way.
    pub(super) fn take(&self, generation: u64, code: &Arc<Prepared>) -> Option<WarmInstance> {
        let mut stale = Vec::new();
        let mut inner = self.lock();
        let found = loop {
            let instance = inner.idle.pop()?;
            if instance.generation == generation && Arc::ptr_eq(&instance.kept.code, code) {
                break Some(instance);
            }
            stale.push(instance);
        };
        drop(inner);
        drop(stale);
        found
    }

    /// Parks `instance` if its generation is still current; else drops it.
    pub(super) fn put(&self, instance: WarmInstance) {
        let mut inner = self.lock();
        if instance.generation == self.generation() {
            inner.idle.push(instance);
        } else {
            drop(inner);
            drop(instance);
        }
    }

    /// Drops the instances parked for longer than `idle`; how many.
    fn drop_idle(&self, idle: Duration) -> usize {
        let mut inner = self.lock();
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.idle)
            .into_iter()
            .partition(|i| i.parked_at.elapsed() >= idle);
        inner.idle = kept;
        drop(inner);
        old.len()
    }

    /// Drops the instance parked longest; whether there was one.
    fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        if inner.idle.is_empty() {
            return false;
        }
        let oldest = inner.idle.remove(0);
        drop(inner);
        drop(oldest);
        true
    }
}

/// The host's warm sets that ever held an instance: for the idle sweep and
/// for eviction when slots or memory run short.
#[derive(Default)]
pub struct WarmSets {
    sets: Mutex<Vec<Weak<WarmSet>>>,
    /// Requests served by a parked instance.
    pub reuses: AtomicU64,
    /// Parked instances dropped to free a slot or memory for another request.
    pub evictions: AtomicU64,
}

impl std::fmt::Debug for WarmSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmSets").finish_non_exhaustive()
    }
}

impl WarmSets {
    fn sets(&self) -> std::sync::MutexGuard<'_, Vec<Weak<WarmSet>>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks `instance` in `set`, which this list learns of.
    pub(super) fn park(&self, set: &Arc<WarmSet>, instance: WarmInstance) {
        if !set.listed.swap(true, Ordering::AcqRel) {
            let mut sets = self.sets();
            sets.retain(|s| s.strong_count() > 0);
            sets.push(Arc::downgrade(set));
        }
        set.put(instance);
    }

    fn live(&self) -> Vec<Arc<WarmSet>> {
        self.sets().iter().filter_map(Weak::upgrade).collect()
    }

    /// Drops the instances parked for longer than `idle`; how many.
    pub fn sweep(&self, idle: Duration) -> usize {
        self.live().iter().map(|set| set.drop_idle(idle)).sum()
    }

    /// Drops every parked instance (before the engines are replaced).
    pub fn clear(&self) {
        for set in self.live() {
            set.drop_all();
        }
    }

    /// Drops one parked instance, the longest parked of any tenant; whether
    /// there was one.
    pub fn evict_one(&self) -> bool {
        let oldest = self
            .live()
            .into_iter()
            .filter_map(|set| {
                let since = set.lock().idle.first()?.parked_at;
                Some((since, set))
            })
            .min_by_key(|(since, _)| *since);
        let evicted = oldest.is_some_and(|(_, set)| set.evict_oldest());
        if evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }
}
