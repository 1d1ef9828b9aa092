//! The one JSON error shape every failure answers with.
//!
//! `{"error":{"code","message"}}`: the code is stable for machines, the message
//! is for people and never carries internals (traps, paths, backtraces); those
//! go to the tenant's log and the host's traces.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::instance::GuestFailure;
use crate::limits::Rejected;

/// Errors a response body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response Lodge sends.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Everything the data plane can answer instead of a guest's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataPlaneError {
    /// No tenant has this slug, or none was addressed.
    #[error("no app is deployed at this address")]
    TenantNotFound,
    /// The tenant exists but has no active deployment.
    #[error("this app has no active deployment")]
    NoDeployment,
    /// The tenant was stopped by its owner.
    #[error("this app is stopped")]
    Stopped,
    /// The tenant is over its request rate; retry after this many seconds.
    #[error("this app is receiving too many requests; retry later")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after_secs: u64,
    },
    /// The tenant is at its concurrency limit.
    #[error("this app is handling too many requests; retry shortly")]
    OverConcurrency,
    /// Every instance slot of the host is taken.
    #[error("the host is at capacity; retry shortly")]
    HostBusy,
    /// The host refused the app memory: the tenant holds its fair share of the
    /// host memory budget while others need it (or the budget is spent).
    #[error("the host's memory is in demand; retry shortly")]
    MemoryBusy,
    /// The request body is larger than the plan allows.
    #[error("request body too large")]
    BodyTooLarge,
    /// The request ran past its wall-clock deadline.
    #[error("the app did not answer in time")]
    Deadline,
    /// The request burnt its fuel budget.
    #[error("the app ran out of its compute budget for this request")]
    FuelExhausted,
    /// The guest trapped or answered with an error.
    #[error("the app failed while handling this request")]
    AppFailed,
    /// The guest returned without a response.
    #[error("the app returned no response")]
    NoResponse,
    /// The active version's code could not be loaded (details in the tenant's log).
    #[error("this app's code could not be loaded; see its logs")]
    Unloadable,
    /// The host failed.
    #[error("internal error")]
    Internal,
}

impl DataPlaneError {
    /// The HTTP status for this failure.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TenantNotFound => StatusCode::NOT_FOUND,
            Self::NoDeployment
            | Self::Stopped
            | Self::OverConcurrency
            | Self::HostBusy
            | Self::MemoryBusy
            | Self::FuelExhausted
            | Self::Unloadable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Self::AppFailed | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoResponse => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the request was refused before it ran (a limit, not a failure).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::OverConcurrency | Self::RateLimited { .. } | Self::HostBusy
        )
    }

    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::TenantNotFound => "tenant_not_found",
            Self::NoDeployment => "no_deployment",
            Self::Stopped => "tenant_stopped",
            Self::OverConcurrency => "over_concurrency",
            Self::RateLimited { .. } => "rate_limited",
            Self::HostBusy => "host_busy",
            Self::MemoryBusy => "memory_busy",
            Self::BodyTooLarge => "body_too_large",
            Self::Deadline => "deadline_exceeded",
            Self::FuelExhausted => "fuel_exhausted",
            Self::AppFailed => "app_failed",
            Self::NoResponse => "no_response",
            Self::Unloadable => "app_unloadable",
            Self::Internal => "internal",
        }
    }

    /// The response for this failure.
    pub fn into_response(self) -> http::Response<ResponseBody> {
        let mut response = json_error(self.status(), self.code(), &self.to_string());
        let retry_after = match self {
            Self::OverConcurrency | Self::HostBusy | Self::MemoryBusy => Some(1),
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<GuestFailure> for DataPlaneError {
    fn from(failure: GuestFailure) -> Self {
        match failure {
            GuestFailure::Deadline => Self::Deadline,
            GuestFailure::FuelExhausted => Self::FuelExhausted,
            GuestFailure::Trap | GuestFailure::GuestError => Self::AppFailed,
            GuestFailure::MemoryBusy => Self::MemoryBusy,
            GuestFailure::NoResponse => Self::NoResponse,
            GuestFailure::Internal => Self::Internal,
        }
    }
}

impl From<Rejected> for DataPlaneError {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::TenantBusy => Self::OverConcurrency,
            Rejected::HostBusy => Self::HostBusy,
        }
    }
}

/// The error body every failure answers with, the data plane's and the API's alike.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human message.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `not_found`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    /// `{"error":{"code","message"}}`.
    pub fn new(code: &str, message: &str) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.to_owned(),
            },
        }
    }
}

/// A `{"error":{"code","message"}}` response.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> http::Response<ResponseBody> {
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default();
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
