//! Write Lodge tenant apps in Rust.
//!
//! A tenant app is a `wasi:http/proxy` component built with
//! `--target wasm32-wasip2`. This crate builds on [`wstd`]: you write one async
//! handler from [`Request`] to [`Response`] and export it with [`serve!`];
//! [`router::Route`] matches methods and path patterns, [`json`] and [`text`]
//! build responses.
//!
//! ```no_run
//! use lodge_sdk::{Body, Error, Request, Response};
//!
//! async fn handle(req: Request<Body>) -> Result<Response<Body>, Error> {
//!     Ok(lodge_sdk::text(200, format!("hello from {}\n", req.uri().path())))
//! }
//!
//! lodge_sdk::serve!(handle);
//! ```
//!
//! Everything a guest prints to stdout or stderr becomes a line of the tenant's
//! log, tagged with the request id.
//!
//! Host capabilities: [`kv`] (tenant-scoped key-value storage,
//! `wasi:keyvalue@0.2.0-draft2`), [`wallet`] (the tenant's custodial wallet) and
//! [`convergence`] (two agents converging on an answer).

pub use wstd;
pub use wstd::http::{Body, Error, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

/// Header carrying the id Lodge gave this request (also in the tenant's log).
pub const REQUEST_ID: &str = "x-request-id";
/// Header naming the path prefix Lodge stripped (`/tenants/SLUG`), if any.
pub const FORWARDED_PREFIX: &str = "x-forwarded-prefix";

/// The id Lodge gave this request.
pub fn request_id<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(REQUEST_ID)?.to_str().ok()
}

/// The path prefix Lodge stripped before the app saw the request, e.g. `/tenants/acme`.
///
/// Prepend it to links the app generates so they work under path routing too.
pub fn forwarded_prefix<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(FORWARDED_PREFIX)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A `text/plain` response.
pub fn text(status: u16, body: impl Into<String>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.into().into())
}

/// An `application/json` response with `value` serialized.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => respond(status, "application/json", bytes.into()),
        Err(e) => text(500, format!("cannot serialize the response: {e}")),
    }
}

fn respond(status: u16, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

/// Exports `handler` as the component's `wasi:http/incoming-handler`.
///
/// `handler` is an `async fn(Request<Body>) -> Result<Response<B>, E>` where
/// `B: Into<Body>` and `E: Into<Error>`; an `Err` answers the request with an
/// error, which Lodge turns into a 500 and records in the tenant's log.
#[macro_export]
macro_rules! serve {
    ($handler:path) => {
        struct __LodgeApp;

        impl $crate::__internal::wasip2::exports::http::incoming_handler::Guest for __LodgeApp {
            fn handle(
                request: $crate::__internal::wasip2::http::types::IncomingRequest,
                response_out: $crate::__internal::wasip2::http::types::ResponseOutparam,
            ) {
                let responder = $crate::wstd::http::server::Responder::new(response_out);
                $crate::wstd::runtime::block_on(async move {
                    match $crate::wstd::http::request::try_from_incoming(request) {
                        Ok(request) => match $handler(request).await {
                            Ok(response) => {
                                if let Err(e) = responder.respond(response).await {
                                    eprintln!("sending the response failed: {e}");
                                }
                            }
                            Err(err) => responder.fail(err.into()),
                        },
                        Err(err) => responder.fail(err),
                    }
                })
            }
        }

        $crate::__internal::wasip2::http::proxy::export!(__LodgeApp with_types_in $crate::__internal::wasip2);

        fn main() {
            unreachable!("a Lodge app is called through wasi:http/incoming-handler, not main");
        }
    };
}

#[doc(hidden)]
pub mod __internal {
    pub use wstd::__internal::wasip2;
}

/// Bindings generated from `wit/` (world `lodge:platform/guest-imports`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "lodge:platform/guest-imports",
        generate_all,
    });
}

// `lodge_sdk::…` paths in generated code resolve inside this crate too.
extern crate self as lodge_sdk;

pub mod convergence;
pub mod kv;
#[cfg(feature = "p3")]
pub mod p3;
pub mod router;
pub mod wallet;
