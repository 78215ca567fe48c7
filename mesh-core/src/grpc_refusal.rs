//! The answer an inbound layer gives a gRPC call it refuses.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from the
//! HTTP status: to Google's gRPC a `403` or `429` is only "the server did not
//! speak gRPC" (mapped to `PERMISSION_DENIED` and `UNAVAILABLE` by guesswork, with
//! no message), and a retrying client cannot tell load shedding from a broken
//! server. So the inbound layers (authorization, rate and concurrency limits,
//! deadlines) answer a gRPC request ([`is_grpc`](crate::classify::is_grpc) on its
//! headers) the way a gRPC server would: HTTP 200, `content-type:
//! application/grpc`, and a *trailers-only* response whose `grpc-status` and
//! `grpc-message` are in the headers and whose body is empty. Other requests
//! keep their HTTP answers.
//!
//! ```
//! use mesh_core::classify::GrpcCode;
//! use mesh_core::grpc_refusal::GrpcRefusal;
//!
//! let response: http::Response<String> =
//!     GrpcRefusal::new(GrpcCode::PermissionDenied, "refused by authorization rule 1")
//!         .into_response();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["grpc-status"], "7");
//! assert!(response.body().is_empty());
//! ```

use std::borrow::Cow;
use std::fmt::Write;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::classify::GrpcCode;

/// A gRPC status with which a layer refuses a call before the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRefusal {
    code: GrpcCode,
    message: Cow<'static, str>,
    pushback: Option<Duration>,
}

impl GrpcRefusal {
    /// Refuses with `code` and `message` (sent as `grpc-message`, so say what the
    /// caller can do; never echo what it sent).
    pub fn new(code: GrpcCode, message: impl Into<Cow<'static, str>>) -> Self {
        GrpcRefusal {
            code,
            message: message.into(),
            pushback: None,
        }
    }

    /// Also asks the client to wait `wait` before retrying
    /// (`grpc-retry-pushback-ms`, gRFC A6), as `Retry-After` does for HTTP.
    pub fn with_pushback(mut self, wait: Duration) -> Self {
        self.pushback = Some(wait);
        self
    }

    /// The status code it refuses with.
    pub fn code(&self) -> GrpcCode {
        self.code
    }

    /// The trailers-only response: HTTP 200 with the status in its headers and
    /// an empty body (`B::default()`, which must be empty).
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.code as u16));
        if !self.message.is_empty() {
            let encoded = percent_encode(&self.message);
            // Percent-encoding leaves only visible ASCII, always a valid value.
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                headers.insert("grpc-message", value);
            }
        }
        if let Some(wait) = self.pushback {
            let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from(millis));
        }
        response
    }
}

/// `grpc-message` is percent-encoded UTF-8: every byte outside printable ASCII,
/// and `%` itself, becomes `%XX` (gRPC over HTTP/2, "Responses").
fn percent_encode(message: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'%';
    if message.bytes().all(plain) {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for b in message.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_trailers_only_grpc_response() {
        let response: Response<String> =
            GrpcRefusal::new(GrpcCode::Unavailable, "shed: too many calls").into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "shed: too many calls");
        assert!(!response.headers().contains_key("grpc-retry-pushback-ms"));
        assert!(response.body().is_empty());
    }

    #[test]
    fn pushback_is_sent_in_milliseconds() {
        let response: Response<String> = GrpcRefusal::new(GrpcCode::ResourceExhausted, "slow down")
            .with_pushback(Duration::from_millis(1500))
            .into_response();
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(response.headers()["grpc-retry-pushback-ms"], "1500");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
        let response: Response<String> =
            GrpcRefusal::new(GrpcCode::PermissionDenied, "denied\n").into_response();
        assert_eq!(response.headers()["grpc-message"], "denied%0A");
    }
}
