//! What the client's errors mean for [`mesh_core::classify`]: the transport half
//! of the one classifier (status codes are classified in `mesh-core`).

use mesh_core::classify::ErrorKind;

use crate::error::{BoxError, Error};

/// Says what kind of failure a client stack error is: a connect error (nothing
/// sent), an HTTP/2 `REFUSED_STREAM` (not processed), a reset or closed connection,
/// or anything else.
pub(crate) fn error_kind(error: &BoxError) -> ErrorKind {
    if error.downcast_ref::<Error>().is_some_and(Error::is_connect) {
        return ErrorKind::Connect;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return ErrorKind::RefusedStream;
            }
            if h2.is_reset() || h2.is_go_away() || h2.is_io() {
                return ErrorKind::Reset;
            }
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() {
                return ErrorKind::Reset;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                return ErrorKind::Reset;
            }
        }
        cause = e.source();
    }
    ErrorKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_and_resets_are_told_apart_from_other_failures() {
        let connect: BoxError = Box::new(Error::connect(
            "127.0.0.1:1".parse().unwrap(),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
        assert_eq!(error_kind(&connect), ErrorKind::Connect);
        let refused: BoxError =
            Box::new(Error::request(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert_eq!(error_kind(&refused), ErrorKind::RefusedStream);
        let reset: BoxError = Box::new(Error::request(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(error_kind(&reset), ErrorKind::Reset);
        let other: BoxError = Box::new(Error::invalid_uri("no host"));
        assert_eq!(error_kind(&other), ErrorKind::Other);
    }
}
