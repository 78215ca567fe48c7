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

    /// Classifies a response by its status (headers are for pushback and, in the
    /// gRPC work, `grpc-status`).
    pub fn response(&self, status: StatusCode, _headers: &HeaderMap) -> Class {
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
