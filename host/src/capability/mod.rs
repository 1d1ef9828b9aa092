//! Stage 4 of a request: capabilities, what a guest may ask of the host.
//!
//! A request's [`Grant`] is built in one place ([`Grant::for_request`]) from
//! the host-wide [`CapabilityHost`], the tenant and its plan, and moves whole
//! into the `Store` as [`GuestState`]: the WASI context (no filesystem, no
//! environment but the tenant's own, no sockets), the `wasi:http` context whose
//! outbound requests follow the plan's policy ([`outbound_http`]), a capped
//! resource table, the memory limiter, and one context per capability.
//!
//! Every capability module has one shape, that of wasmtime's `wasi-keyvalue`:
//! a `…Ctx` (what one request may do, built by `…Ctx::new` from the host, the
//! tenant and its limits), a view (`KeyValue<'a>`, `Wallet<'a>`, …) whose
//! `Host` impls are the host functions, with trappable errors, and an
//! `add_to_linker`. Each depends on the narrow storage trait it uses
//! ([`crate::storage::KvStore`], [`crate::storage::WalletStore`]) or a narrow
//! service ([`crate::convergence::tasks::ConvergenceService`]).
//! `docs/architecture.md` lists the steps to add one.

mod bindings;
pub mod convergence;
pub mod keyvalue;
pub mod outbound_http;
pub mod wallet;

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::Limits;
use crate::convergence::tasks::ConvergenceService;
use crate::counters::TenantCounters;
use crate::limits::GuestLimiter;
use crate::logs::{LogSink, LogStream, RequestLogBudget, TenantLogs};
use crate::storage::{KvStore, WalletStore};
use crate::wallet::MasterKey;

/// A failure of a `lodge:platform` call (wallet, convergence) before it becomes
/// the guest's `types.error`: an error the guest reads, or a broken host
/// invariant that traps. Like `keyvalue::Error` for `wasi:keyvalue`: host
/// functions return `Result<T, PlatformError>` and use `?`.
#[derive(Debug)]
pub enum PlatformError {
    /// The guest's error.
    Guest(bindings::lodge::platform::types::Error),
    /// Traps the guest.
    Trap(wasmtime::Error),
}

impl From<bindings::lodge::platform::types::Error> for PlatformError {
    fn from(e: bindings::lodge::platform::types::Error) -> Self {
        Self::Guest(e)
    }
}

impl PlatformError {
    /// What `types::Host::convert_error` answers: the guest's error, or a trap.
    fn into_guest(self) -> wasmtime::Result<bindings::lodge::platform::types::Error> {
        match self {
            Self::Guest(e) => Ok(e),
            Self::Trap(e) => Err(e),
        }
    }
}

/// The host-wide handles capabilities are built from, made once by the
/// composition root.
#[derive(Debug, Clone)]
pub struct CapabilityHost {
    /// Tenants' key-value buckets.
    pub keyvalue: Arc<dyn KvStore>,
    /// Wallets and the ledger.
    pub wallets: Arc<dyn WalletStore>,
    /// Opens wallet seeds to sign.
    pub master: Arc<MasterKey>,
    /// Convergence.
    pub convergence: Arc<ConvergenceService>,
}

/// The parts of a tenant its requests' capabilities use (the registry's
/// `Tenant::parts` makes one).
#[derive(Debug, Clone, Copy)]
pub struct TenantRef<'a> {
    /// `ten_…`: every capability call is scoped to it.
    pub id: &'a Arc<str>,
    /// Its log.
    pub logs: &'a Arc<TenantLogs>,
    /// Where its usage is counted.
    pub counters: &'a Arc<TenantCounters>,
}

/// Everything one request's guest is given, besides the request itself:
/// built in one place, moved whole into the store.
#[derive(Debug)]
pub struct Grant {
    /// The tenant's log, receiving stdout and stderr.
    pub logs: Arc<TenantLogs>,
    /// The request id tagging every log line.
    pub request_id: Arc<str>,
    /// Bytes of output the request may log.
    pub log_bytes: usize,
    /// Entries the resource table may hold.
    pub max_resources: usize,
    /// Environment variables the tenant set (none by default; never the host's).
    pub env: Arc<[(String, String)]>,
    /// Where outbound HTTP may go.
    pub outbound: outbound_http::OutboundPolicy,
    /// The tenant's key-value storage.
    pub keyvalue: keyvalue::KeyValueCtx,
    /// The tenant's wallet.
    pub wallet: wallet::WalletCtx,
    /// Convergence for the tenant.
    pub convergence: convergence::ConvergenceCtx,
}

impl Grant {
    /// What a request `request_id` of `tenant` on `limits` is given.
    pub fn for_request(
        host: &CapabilityHost,
        tenant: TenantRef<'_>,
        limits: &Limits,
        env: Arc<[(String, String)]>,
        request_id: &Arc<str>,
    ) -> Self {
        Self {
            logs: tenant.logs.clone(),
            request_id: request_id.clone(),
            log_bytes: limits.log_bytes_per_request,
            max_resources: limits.max_resources,
            env,
            outbound: outbound_http::OutboundPolicy::new(
                limits,
                tenant.logs.clone(),
                request_id.clone(),
                tenant.counters.clone(),
            ),
            keyvalue: keyvalue::KeyValueCtx::new(host, tenant, limits),
            wallet: wallet::WalletCtx::new(host, tenant, limits),
            convergence: convergence::ConvergenceCtx::new(host, tenant),
        }
    }
}

/// Everything one request's instance can reach.
pub struct GuestState {
    wasi: WasiCtx,
    /// The guest's stdout and stderr (clones of the ones in `wasi`).
    sinks: [LogSink; 2],
    http: WasiHttpCtx,
    table: ResourceTable,
    grant: Grant,
    /// Memory and table limits of this instance; read back after a trap.
    pub limiter: GuestLimiter,
}

impl std::fmt::Debug for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestState")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl GuestState {
    /// A state granting nothing but what `grant` names: secure by default.
    pub fn new(grant: Grant, limiter: GuestLimiter) -> Self {
        let budget = RequestLogBudget::new(grant.log_bytes);
        let sink = |stream| {
            LogSink::new(
                grant.logs.clone(),
                grant.request_id.clone(),
                stream,
                budget.clone(),
            )
        };
        let sinks = [sink(LogStream::Stdout), sink(LogStream::Stderr)];
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(sinks[0].clone())
            .stderr(sinks[1].clone())
            .envs(&grant.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        let mut table = ResourceTable::new();
        table.set_max_capacity(grant.max_resources);
        Self {
            wasi: wasi.build(),
            sinks,
            http: WasiHttpCtx::new(),
            table,
            grant,
            limiter,
        }
    }
}

impl GuestState {
    /// Hands a kept instance to its tenant's next request: that request's
    /// grant (log tagging, log budget, outbound count, capability contexts)
    /// and a fresh memory report under `max_memory`. The environment and the
    /// resource table's cap are the deployment's and stay.
    pub fn renew(&mut self, grant: Grant, max_memory: usize) {
        let budget = RequestLogBudget::new(grant.log_bytes);
        for sink in &self.sinks {
            sink.retarget(grant.request_id.clone(), budget.clone());
        }
        self.grant = grant;
        self.limiter.renew(max_memory);
    }

    /// Whether the guest still holds a resource of the request it answered
    /// (its request, body, response, response out-parameter, or an outbound
    /// request or response): a kept instance could then hold that response
    /// open, or reach into the request, during the next one.
    pub fn holds_request_resources(&mut self) -> bool {
        use wasmtime_wasi_http::p2::body::{
            HostFutureTrailers, HostIncomingBody, HostOutgoingBody,
        };
        use wasmtime_wasi_http::p2::types::{
            HostFutureIncomingResponse, HostIncomingRequest, HostIncomingResponse,
            HostOutgoingRequest, HostOutgoingResponse, HostResponseOutparam,
        };
        self.table.iter_mut().any(|entry| {
            entry.is::<HostIncomingRequest>()
                || entry.is::<HostIncomingBody>()
                || entry.is::<HostFutureTrailers>()
                || entry.is::<HostResponseOutparam>()
                || entry.is::<HostOutgoingResponse>()
                || entry.is::<HostOutgoingBody>()
                || entry.is::<HostOutgoingRequest>()
                || entry.is::<HostFutureIncomingResponse>()
                || entry.is::<HostIncomingResponse>()
        })
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.grant.outbound,
        }
    }
}

/// Links every interface a tenant component may import.
///
/// All of WASI 0.2 is linked so components built by ordinary toolchains (whose
/// standard library imports `wasi:cli`, `wasi:filesystem` …) instantiate; the
/// context above grants none of them anything.
pub fn add_to_linker(linker: &mut Linker<GuestState>, wasi_p3: bool) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    // WASI 0.3 (`wasi:http/service`): the same contexts (stdout to the tenant's
    // log, outbound policy, no sockets or files) behind the 0.3 interfaces.
    if wasi_p3 {
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    keyvalue::add_to_linker(linker, |state: &mut GuestState| {
        keyvalue::KeyValue::new(&state.grant.keyvalue, &mut state.table)
    })?;
    wallet::add_to_linker(linker, |state: &mut GuestState| {
        wallet::Wallet::new(&state.grant.wallet)
    })?;
    convergence::add_to_linker(linker, |state: &mut GuestState| {
        convergence::Convergence::new(&state.grant.convergence)
    })?;
    Ok(())
}
