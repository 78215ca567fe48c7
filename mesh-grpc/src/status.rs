//! What a mesh client error means to a gRPC caller: the `tonic::Status` a
//! generated client returns when the mesh could not get an answer.

use mesh_http::Error;
use tonic::{Code, Status};

/// The gRPC status for a mesh error, as gRPC's own clients report the same
/// failures: `DEADLINE_EXCEEDED` when the deadline passed, `UNAVAILABLE` when no
/// endpoint could be reached (retryable elsewhere), `INTERNAL` for a channel
/// misconfiguration, `UNKNOWN` otherwise. The message is the mesh error's, which
/// says what to fix; the error stays reachable as the status's `source()`.
pub fn status_from_error(error: Error) -> Status {
    let code = if error.is_timeout() {
        Code::DeadlineExceeded
    } else if error.is_connect() || error.is_no_endpoint() {
        Code::Unavailable
    } else if error.is_unknown_service() || error.is_invalid_uri() {
        Code::Internal
    } else {
        // A reset or a closed connection mid-call: gRPC reports these as
        // UNAVAILABLE too; anything else we cannot name is UNKNOWN.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut code = Code::Unknown;
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>().is_some() {
                code = Code::Unavailable;
                break;
            }
            cause = e.source();
        }
        code
    };
    let mut status = Status::new(code, error.to_string());
    status.set_source(std::sync::Arc::new(error));
    status
}
