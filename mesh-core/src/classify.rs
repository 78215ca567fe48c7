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
    /// Another gRPC status code the service's policy retries (its number).
    GrpcStatus(u16),
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
            RetryReason::GrpcStatus(_) => "grpc_status",
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
    grpc_retry_on: GrpcCodes,
}

impl Classifier {
    /// A classifier retrying what `retry_on` names, gRPC status codes included
    /// (`UNAVAILABLE` by default; a route or gRPC service config may name others).
    pub fn new(retry_on: RetryOn) -> Self {
        Classifier {
            retry_on,
            grpc_retry_on: retry_on.grpc_codes(),
        }
    }

    /// The same classifier retrying exactly the gRPC status codes `codes` (a gRPC
    /// service config's `retryableStatusCodes`).
    pub fn with_grpc_codes(mut self, codes: GrpcCodes) -> Self {
        self.grpc_retry_on = codes;
        self
    }

    /// Classifies a response by its status and headers.
    ///
    /// A gRPC response (`content-type: application/grpc…`) is classified by the
    /// `grpc-status` in its headers when it is *trailers-only*; a gRPC response
    /// whose headers carry no status has **committed** (gRFC A6: once response
    /// headers arrive the call is never retried) and is a success at this point:
    /// the status in its trailers is classified by [`grpc_trailers`](Self::grpc_trailers).
    pub fn response(&self, status: StatusCode, headers: &HeaderMap) -> Class {
        if status == StatusCode::OK && is_grpc(headers) {
            return match grpc_status(headers) {
                Some(code) => self.grpc_code(code),
                None => Class::Success,
            };
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

    /// Classifies the trailers that end a gRPC response (a missing or unreadable
    /// `grpc-status` is `UNKNOWN`, as gRPC clients read it).
    pub fn grpc_trailers(&self, trailers: &HeaderMap) -> Class {
        self.grpc_code(grpc_status(trailers).unwrap_or(GrpcCode::Unknown as u16))
    }

    /// Classifies a gRPC status code: retryable when the policy says so; the codes
    /// that say the server (not the caller) failed — `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` — are failures;
    /// the rest (`NOT_FOUND`, `INVALID_ARGUMENT`, …) are the caller's business.
    pub fn grpc_code(&self, code: u16) -> Class {
        if code == GrpcCode::Ok as u16 {
            return Class::Success;
        }
        if self.grpc_retry_on.contains(code) {
            return Class::Retryable(if code == GrpcCode::Unavailable as u16 {
                RetryReason::Unavailable
            } else {
                RetryReason::GrpcStatus(code)
            });
        }
        match GrpcCode::from_u16(code) {
            Some(
                GrpcCode::Unknown
                | GrpcCode::DeadlineExceeded
                | GrpcCode::ResourceExhausted
                | GrpcCode::Internal
                | GrpcCode::Unavailable
                | GrpcCode::DataLoss,
            )
            | None => Class::Failure,
            Some(_) => Class::Success,
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

/// Whether a response (or request) is gRPC: `content-type: application/grpc`,
/// possibly with a `+proto`-style suffix.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_grpc_content_type)
}

/// Whether a `content-type` value is gRPC's (the rule of [`is_grpc`]).
pub(crate) fn is_grpc_content_type(value: &str) -> bool {
    value
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// The `grpc-status` in `headers` (a trailers-only response's headers, or a
/// response's trailers), when present and a number.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How long a gRPC server asked the client to wait before retrying
/// (`grpc-retry-pushback-ms`, gRFC A6): `Some(Ok(wait))`, or `Some(Err(()))` when
/// the value is negative or unreadable, which means "do not retry"; `None` when
/// the header is absent.
pub fn grpc_pushback(headers: &HeaderMap) -> Option<Result<std::time::Duration, ()>> {
    let value = headers.get("grpc-retry-pushback-ms")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
            .ok_or(()),
    )
}

/// The gRPC status codes (the numbers on the wire, and the names a gRPC service
/// config uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // The names are gRPC's own, documented there.
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const GRPC_CODES: [(GrpcCode, &str); 17] = [
    (GrpcCode::Ok, "OK"),
    (GrpcCode::Cancelled, "CANCELLED"),
    (GrpcCode::Unknown, "UNKNOWN"),
    (GrpcCode::InvalidArgument, "INVALID_ARGUMENT"),
    (GrpcCode::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (GrpcCode::NotFound, "NOT_FOUND"),
    (GrpcCode::AlreadyExists, "ALREADY_EXISTS"),
    (GrpcCode::PermissionDenied, "PERMISSION_DENIED"),
    (GrpcCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (GrpcCode::FailedPrecondition, "FAILED_PRECONDITION"),
    (GrpcCode::Aborted, "ABORTED"),
    (GrpcCode::OutOfRange, "OUT_OF_RANGE"),
    (GrpcCode::Unimplemented, "UNIMPLEMENTED"),
    (GrpcCode::Internal, "INTERNAL"),
    (GrpcCode::Unavailable, "UNAVAILABLE"),
    (GrpcCode::DataLoss, "DATA_LOSS"),
    (GrpcCode::Unauthenticated, "UNAUTHENTICATED"),
];

impl GrpcCode {
    /// The code numbered `n`, if gRPC defines one.
    pub fn from_u16(n: u16) -> Option<GrpcCode> {
        GRPC_CODES.get(usize::from(n)).map(|(c, _)| *c)
    }

    /// Its name, as in a service config (`UNAVAILABLE`).
    pub fn name(self) -> &'static str {
        GRPC_CODES[self as usize].1
    }
}

impl std::str::FromStr for GrpcCode {
    type Err = &'static str;
    /// A name (`UNAVAILABLE`, any case) or a number (`14`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str =
            "a gRPC status code name such as UNAVAILABLE or RESOURCE_EXHAUSTED, or its number 0-16";
        let s = s.trim();
        if let Ok(n) = s.parse::<u16>() {
            return GrpcCode::from_u16(n).ok_or(EXPECTED);
        }
        GRPC_CODES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
            .map(|(c, _)| *c)
            .ok_or(EXPECTED)
    }
}

/// A set of gRPC status codes (those a policy retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// No code.
    pub const NONE: GrpcCodes = GrpcCodes(0);

    /// The set holding `codes`.
    pub fn of(codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        GrpcCodes(codes.into_iter().fold(0, |set, c| set | 1 << c as u32))
    }

    /// Whether the code numbered `code` is in the set.
    pub fn contains(self, code: u16) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set whose bit `n` stands for the code numbered `n`.
    pub const fn from_bits(bits: u32) -> Self {
        GrpcCodes(bits)
    }

    /// The set as bits (bit `n` for the code numbered `n`).
    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// `UNAVAILABLE` only (gRFC A6's usual policy; Istio's default).
impl Default for GrpcCodes {
    fn default() -> Self {
        GrpcCodes::of([GrpcCode::Unavailable])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_conditions_retry_503_resets_and_unsent_requests_only() {
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
        assert_eq!(
            c.error(ErrorKind::Reset),
            Class::Retryable(RetryReason::Reset)
        );
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

    fn grpc(status: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/grpc".parse().unwrap());
        if let Some(s) = status {
            h.insert("grpc-status", s.parse().unwrap());
        }
        h
    }

    #[test]
    fn trailers_only_unavailable_is_retryable_and_other_codes_are_not() {
        let c = Classifier::new(RetryOn::default());
        assert_eq!(
            c.response(StatusCode::OK, &grpc(Some("14"))),
            Class::Retryable(RetryReason::Unavailable)
        );
        assert_eq!(
            c.response(StatusCode::OK, &grpc(Some("13"))),
            Class::Failure
        );
        assert_eq!(c.response(StatusCode::OK, &grpc(Some("5"))), Class::Success);
        assert_eq!(c.response(StatusCode::OK, &grpc(Some("0"))), Class::Success);
        // An unknown number is a failure, not a success.
        assert_eq!(
            c.response(StatusCode::OK, &grpc(Some("99"))),
            Class::Failure
        );
    }

    #[test]
    fn grpc_headers_without_status_commit_the_call() {
        let c = Classifier::new(RetryOn::default());
        assert_eq!(c.response(StatusCode::OK, &grpc(None)), Class::Success);
        // ...and the trailers then carry the outcome.
        assert_eq!(
            c.grpc_trailers(&grpc(Some("14"))),
            Class::Retryable(RetryReason::Unavailable)
        );
        assert_eq!(c.grpc_trailers(&HeaderMap::new()), Class::Failure);
    }

    #[test]
    fn grpc_status_on_a_plain_http_response_is_ignored() {
        let c = Classifier::new(RetryOn::default());
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(c.response(StatusCode::OK, &h), Class::Success);
    }

    #[test]
    fn configured_grpc_codes_replace_unavailable() {
        let c = Classifier::new(RetryOn::default())
            .with_grpc_codes(GrpcCodes::of([GrpcCode::ResourceExhausted]));
        assert_eq!(
            c.response(StatusCode::OK, &grpc(Some("8"))),
            Class::Retryable(RetryReason::GrpcStatus(8))
        );
        assert_eq!(
            c.response(StatusCode::OK, &grpc(Some("14"))),
            Class::Failure
        );
        let off = Classifier::new(RetryOn::UNAVAILABLE_503);
        assert_eq!(
            off.response(StatusCode::OK, &grpc(Some("14"))),
            Class::Failure
        );
    }

    #[test]
    fn grpc_code_names_and_numbers_parse_and_unknown_ones_are_refused() {
        assert_eq!("unavailable".parse::<GrpcCode>(), Ok(GrpcCode::Unavailable));
        assert_eq!("8".parse::<GrpcCode>(), Ok(GrpcCode::ResourceExhausted));
        assert_eq!(GrpcCode::DataLoss.name(), "DATA_LOSS");
        assert!("UNAVAILABEL"
            .parse::<GrpcCode>()
            .unwrap_err()
            .contains("UNAVAILABLE"));
        assert!("17".parse::<GrpcCode>().is_err());
    }

    #[test]
    fn pushback_is_read_in_milliseconds_and_garbage_means_stop() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_pushback(&h), None);
        h.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(
            grpc_pushback(&h),
            Some(Ok(std::time::Duration::from_millis(250)))
        );
        h.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(grpc_pushback(&h), Some(Err(())));
    }

    #[test]
    fn grpc_content_type_variants_are_recognised() {
        for (ct, yes) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", ct.parse().unwrap());
            assert_eq!(is_grpc(&h), yes, "{ct}");
        }
    }
}
