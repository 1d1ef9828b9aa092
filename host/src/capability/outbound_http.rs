//! Outbound HTTP from guests (`wasi:http/outgoing-handler`): denied.
//!
//! Until per-plan allowlists exist, every outgoing request is refused with
//! `http-request-denied` before any connection is attempted.

use std::future::Future;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Hooks that refuse every outgoing request.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyOutbound;

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

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        tracing::debug!(uri = %request.uri(), "outbound HTTP denied");
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
