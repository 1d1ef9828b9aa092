//! Outbound HTTP from guests (`wasi:http/outgoing-handler`), under the plan's policy.
//!
//! A request leaves only if its host matches the plan's allowlist (exact names,
//! or `*.example.com` for any subdomain), the request has not used up its
//! outbound count, and every address the name resolves to is public (private,
//! loopback, link-local and similar ranges need `outbound_allow_private`). Each
//! phase (connect, first byte, between bytes) is capped by the plan's
//! `outbound_timeout`. Refusals reach the guest as the `error-code` that says
//! why (`HTTP-request-denied`, `destination-IP-prohibited`, …) and a line in the
//! tenant's log; nothing is connected. The name is resolved once and the
//! connection goes to the checked addresses (`crate::egress`, shared with
//! webhooks), so DNS rebinding cannot slip a private address in between.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::counters::TenantCounters;
use crate::egress::{Refused, resolve_checked, send_pinned};
use crate::logs::{LogStream, TenantLogs};

/// One request's outbound HTTP policy and what it has used.
#[derive(Debug)]
pub struct OutboundPolicy {
    allow: Arc<[String]>,
    allow_private: bool,
    remaining: u32,
    timeout: Duration,
    logs: Arc<TenantLogs>,
    request_id: Arc<str>,
    counters: Arc<TenantCounters>,
}

impl OutboundPolicy {
    /// The policy of a request of a tenant on `limits`.
    pub fn new(
        limits: &crate::config::Limits,
        logs: Arc<TenantLogs>,
        request_id: Arc<str>,
        counters: Arc<TenantCounters>,
    ) -> Self {
        Self {
            allow: limits.outbound_allow.clone().into(),
            allow_private: limits.outbound_allow_private,
            remaining: limits.outbound_max_requests,
            timeout: limits.outbound_timeout,
            logs,
            request_id,
            counters,
        }
    }

    fn refuse(&self, why: String, error: Error) -> SendFuture {
        tracing::debug!(%why, "outbound HTTP refused");
        self.logs.push(
            &self.request_id,
            LogStream::Host,
            format!("outbound HTTP {why}"),
        );
        Box::new(async move { Err(error) })
    }
}

/// Whether `host` (lowercase, no port) matches an allowlist entry.
pub fn allowed(allow: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.');
    allow
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => pattern == host,
        })
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

fn cap(asked: Option<Duration>, plan: Duration) -> Option<Duration> {
    Some(asked.map_or(plan, |asked| asked.min(plan)))
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let Some(host) = request.uri().host().map(str::to_ascii_lowercase) else {
            return self.refuse("refused: no host".into(), Error::HttpRequestUriInvalid);
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !allowed(&self.allow, &host) {
            return self.refuse(
                format!("to {host} denied: not in the plan's outbound allowlist"),
                Error::HttpRequestDenied,
            );
        }
        if self.remaining == 0 {
            return self.refuse(
                format!("to {host} denied: this request used its outbound request limit"),
                Error::HttpRequestDenied,
            );
        }
        self.remaining -= 1;
        self.counters.outbound.fetch_add(1, Ordering::Relaxed);
        let secure = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let options = RequestOptions {
            connect_timeout: cap(options.and_then(|o| o.connect_timeout), self.timeout),
            first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout), self.timeout),
            between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout), self.timeout),
        };
        let allow_private = self.allow_private;
        let timeout = self.timeout;
        let logs = self.logs.clone();
        let request_id = self.request_id.clone();
        // Like wasmtime's default hooks, errors reach the guest through the result,
        // not through `fut`.
        drop(fut);
        Box::new(async move {
            // Resolve once; check (unless private addresses are allowed) and
            // connect to exactly what was checked.
            let addrs = match resolve_checked(&host, port, allow_private, timeout).await {
                Ok(addrs) => addrs,
                Err(Refused::Timeout(_)) => return Err(Error::DnsTimeout),
                Err(Refused::NotFound(_)) => return Err(Error::DestinationNotFound),
                Err(Refused::Private { ip, .. }) => {
                    logs.push(
                        &request_id,
                        LogStream::Host,
                        format!(
                            "outbound HTTP to {host} refused: it resolves to {ip}, a private address"
                        ),
                    );
                    return Err(Error::DestinationIpProhibited);
                }
            };
            send_pinned(request, &host, secure, &addrs, options).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_exact_names_and_subdomains_only() {
        let allow = vec!["api.example.com".to_owned(), "*.example.org".to_owned()];
        assert!(allowed(&allow, "api.example.com"));
        assert!(allowed(&allow, "api.example.com."));
        assert!(!allowed(&allow, "example.com"));
        assert!(!allowed(&allow, "evil-api.example.com"));
        assert!(allowed(&allow, "a.example.org"));
        assert!(allowed(&allow, "a.b.example.org"));
        assert!(
            !allowed(&allow, "example.org"),
            "*.d matches subdomains only"
        );
        assert!(!allowed(&allow, "badexample.org"));
        assert!(!allowed(&[], "api.example.com"));
    }
}
