//! One answer to "how did this call go?", read by retries, hedging and (later)
//! outlier detection, breakers and metrics, so they never disagree.
//!
//! A [`Class`] comes from a response's status and headers ([`Classifier::response`])
//! or from an error a transport reports ([`Classifier::error`], which each transport
//! crate fills in through [`ErrorKind`]). The gRPC work adds the gRPC status from
//! headers and trailers by producing the same [`Class`].

use http::{HeaderMap, StatusCode};

use crate::retry::RetryOn;

/// How a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The call succeeded (or failed in a way that is the caller's business, such
    /// as a 404).
    Success,
    /// The call failed and must not be tried again.
    Failure,
    /// The call failed in a way the retry policy allows trying again.
    Retryable(RetryReason),
}

impl Class {
    /// Whether breakers, outlier detection and metrics should count it as a failure.
    pub fn is_failure(self) -> bool {
        !matches!(self, Class::Success)
    }
}

/// Why a failure may be retried; also the `mesh.reason` word on retry metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection could be opened: nothing was sent.
    ConnectFailure,
    /// HTTP/2 `REFUSED_STREAM`: the server did not process the request.
    RefusedStream,
    /// The connection was reset after the request was (maybe) sent.
    Reset,
    /// A retryable HTTP status (503 by default).
    Status(u16),
    /// gRPC `UNAVAILABLE`.
    Unavailable,
    /// The attempt ran out of its per-try timeout.
    PerTryTimeout,
}

impl RetryReason {
    /// A fixed word for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::Reset => "reset",
            RetryReason::Status(_) => "status",
            RetryReason::Unavailable => "unavailable",
            RetryReason::PerTryTimeout => "per_try_timeout",
        }
    }

    /// Whether nothing reached the server, so retrying is safe whatever the method
    /// (a transparent retry).
    pub fn nothing_sent(self) -> bool {
        matches!(
            self,
            RetryReason::ConnectFailure | RetryReason::RefusedStream
        )
    }
}

/// What a transport says about an error, for [`Classifier::error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be opened.
    Connect,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// The connection reset or closed mid-request.
    Reset,
    /// The attempt's own (per-try) timeout.
    PerTryTimeout,
    /// Anything else: a failure that is not retried.
    Other,
}

/// Turns responses and errors into a [`Class`], under the retry conditions of one
/// service or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classifier {
    retry_on: RetryOn,
}

impl Classifier {
    /// A classifier retrying what `retry_on` names.
    pub fn new(retry_on: RetryOn) -> Self {
        Classifier { retry_on }
    }

    /// Classifies a response by its status and, for a gRPC "trailers-only"
    /// answer, the `grpc-status` in its headers (`UNAVAILABLE` is retryable when
    /// the conditions name `unavailable`). A `grpc-status` that only arrives in
    /// trailers is classified by the gRPC layer through [`Classifier::grpc_status`].
    pub fn response(&self, status: StatusCode, headers: &HeaderMap) -> Class {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            return self.grpc_status(code);
        }
        let code = status.as_u16();
        let r = self.retry_on;
        let retryable = (code == 503 && r.contains(RetryOn::UNAVAILABLE_503))
            || (status.is_server_error() && r.contains(RetryOn::SERVER_ERROR))
            || (matches!(code, 502..=504) && r.contains(RetryOn::GATEWAY_ERROR));
        if retryable {
            Class::Retryable(RetryReason::Status(code))
        } else if status.is_server_error() {
            Class::Failure
        } else {
            Class::Success
        }
    }

    /// Classifies a gRPC status code: 0 is success, 14 (`UNAVAILABLE`) retryable
    /// when the conditions say so; the codes Envoy and gRPC count as server
    /// failures (`UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`,
    /// `UNAVAILABLE`, `DATA_LOSS`) are failures; the rest are the caller's business.
    pub fn grpc_status(&self, code: u32) -> Class {
        match code {
            0 => Class::Success,
            14 if self.retry_on.contains(RetryOn::GRPC_UNAVAILABLE) => {
                Class::Retryable(RetryReason::Unavailable)
            }
            2 | 4 | 8 | 13 | 14 | 15 => Class::Failure,
            _ => Class::Success,
        }
    }

    /// Classifies an error a transport described as `kind`.
    pub fn error(&self, kind: ErrorKind) -> Class {
        let r = self.retry_on;
        let (reason, flag) = match kind {
            // Nothing reached the server: always safe to try again (a transparent
            // retry), whatever the conditions say; it still draws on the budget.
            ErrorKind::Connect => return Class::Retryable(RetryReason::ConnectFailure),
            ErrorKind::RefusedStream => return Class::Retryable(RetryReason::RefusedStream),
            ErrorKind::Reset => (RetryReason::Reset, RetryOn::RESET),
            ErrorKind::PerTryTimeout => (RetryReason::PerTryTimeout, RetryOn::PER_TRY_TIMEOUT),
            ErrorKind::Other => return Class::Failure,
        };
        if r.contains(flag) {
            Class::Retryable(reason)
        } else {
            Class::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_conditions_retry_503_and_unsent_requests_only() {
        let c = Classifier::new(RetryOn::default());
        let h = HeaderMap::new();
        assert_eq!(
            c.response(StatusCode::SERVICE_UNAVAILABLE, &h),
            Class::Retryable(RetryReason::Status(503))
        );
        assert_eq!(
            c.response(StatusCode::INTERNAL_SERVER_ERROR, &h),
            Class::Failure
        );
        assert_eq!(c.response(StatusCode::NOT_FOUND, &h), Class::Success);
        assert_eq!(c.response(StatusCode::OK, &h), Class::Success);
        assert_eq!(
            c.error(ErrorKind::Connect),
            Class::Retryable(RetryReason::ConnectFailure)
        );
        assert_eq!(
            c.error(ErrorKind::RefusedStream),
            Class::Retryable(RetryReason::RefusedStream)
        );
        assert_eq!(c.error(ErrorKind::Reset), Class::Failure);
        assert_eq!(c.error(ErrorKind::Other), Class::Failure);
    }

    #[test]
    fn grpc_status_in_headers_decides_over_the_http_status() {
        let c = Classifier::new(RetryOn::default());
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            c.response(StatusCode::OK, &h),
            Class::Retryable(RetryReason::Unavailable)
        );
        h.insert("grpc-status", "13".parse().unwrap());
        assert_eq!(c.response(StatusCode::OK, &h), Class::Failure);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(c.response(StatusCode::OK, &h), Class::Success);
        let no_unavailable = Classifier::new(RetryOn::UNAVAILABLE_503);
        assert_eq!(no_unavailable.grpc_status(14), Class::Failure);
    }

    #[test]
    fn configured_conditions_widen_what_is_retried() {
        let c = Classifier::new("5xx,reset".parse().unwrap());
        let h = HeaderMap::new();
        assert_eq!(
            c.response(StatusCode::INTERNAL_SERVER_ERROR, &h),
            Class::Retryable(RetryReason::Status(500))
        );
        assert_eq!(
            c.error(ErrorKind::Reset),
            Class::Retryable(RetryReason::Reset)
        );
        // Unsent requests are retried whatever the conditions.
        assert_eq!(
            c.error(ErrorKind::Connect),
            Class::Retryable(RetryReason::ConnectFailure)
        );
    }
}
