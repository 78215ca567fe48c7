//! The client's error: opaque, with `is_*` checks to branch on.

use std::fmt;

use mesh_core::balance::PickError;

/// A boxed error, as tower boundaries carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request through the mesh failed.
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug)]
enum Kind {
    UnknownService(String),
    InvalidUri(String),
    NoEndpoint(String),
    Connect(std::net::SocketAddr),
    Timeout,
    Request,
    /// An error a layer of the stack produced; checks look into `source`.
    Layer,
}

impl Error {
    pub(crate) fn unknown_service(host: &str) -> Self {
        Error {
            kind: Kind::UnknownService(host.to_string()),
            source: None,
        }
    }

    pub(crate) fn invalid_uri(why: impl Into<String>) -> Self {
        Error {
            kind: Kind::InvalidUri(why.into()),
            source: None,
        }
    }

    pub(crate) fn no_endpoint(service: &str, source: PickError) -> Self {
        Error {
            kind: Kind::NoEndpoint(service.to_string()),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn connect(addr: std::net::SocketAddr, source: impl Into<BoxError>) -> Self {
        Error {
            kind: Kind::Connect(addr),
            source: Some(source.into()),
        }
    }

    /// Turns what a client stack returned into the client's error: our own errors
    /// pass through; others are kept as the source, for the `is_*` checks.
    pub(crate) fn from_stack(error: BoxError) -> Self {
        match error.downcast::<Error>() {
            Ok(own) => *own,
            Err(other) if other.is::<tower::timeout::error::Elapsed>() => Error {
                kind: Kind::Timeout,
                source: None,
            },
            Err(other) if other.is::<mesh_core::deadline::DeadlineExceeded>() => Error {
                kind: Kind::Timeout,
                source: Some(other),
            },
            Err(other) => Error {
                kind: Kind::Layer,
                source: Some(other),
            },
        }
    }

    pub(crate) fn request(source: impl Into<BoxError>) -> Self {
        Error {
            kind: Kind::Request,
            source: Some(source.into()),
        }
    }

    /// The request named a host the mesh does not know, and egress is denied.
    pub fn is_unknown_service(&self) -> bool {
        matches!(self.kind, Kind::UnknownService(_))
    }

    /// The request's URI has no host, or one that is not usable.
    pub fn is_invalid_uri(&self) -> bool {
        matches!(self.kind, Kind::InvalidUri(_))
    }

    /// No endpoint of the service was ready within the queue timeout.
    pub fn is_no_endpoint(&self) -> bool {
        matches!(self.kind, Kind::NoEndpoint(_))
    }

    /// No connection could be opened (the request was never sent).
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, Kind::Connect(_))
    }

    /// The request timed out: its deadline (the service's timeout, the caller's
    /// [`RequestTimeout`](mesh_core::deadline::RequestTimeout), or a deadline
    /// inherited from an inbound request) passed, or its last attempt ran out of
    /// the per-try timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout) || self.source_is::<mesh_core::retry::PerTryTimeout>()
    }

    /// The request body had to be sent again but was larger than the replay buffer
    /// (`MESH_SERVICE_<NAME>_REPLAY_BUFFER`).
    pub fn is_body_not_replayable(&self) -> bool {
        self.source_is::<mesh_core::replay::NotReplayable>()
    }

    /// The service's circuit breaker is open: the request was not sent (and not
    /// retried). Try later, or fall back.
    pub fn is_breaker_open(&self) -> bool {
        self.source_is::<mesh_core::breaker::BreakerOpen>()
    }

    /// The service's outbound rate limit (`MESH_SERVICE_<NAME>_RATE_LIMIT`) was
    /// reached: the request was not sent.
    pub fn is_rate_limited(&self) -> bool {
        self.source_is::<mesh_core::ratelimit::RateLimited>()
    }

    /// The service's outbound concurrency limit (`MESH_SERVICE_<NAME>_CONCURRENCY`)
    /// was reached: the request was shed before sending.
    pub fn is_overloaded(&self) -> bool {
        self.source_is::<mesh_core::concurrency::Overloaded>()
    }

    fn source_is<E: std::error::Error + 'static>(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            if e.is::<E>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("mesh_http::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::UnknownService(host) => write!(
                f,
                "no service `{host}` is configured (set MESH_SERVICE_<NAME>_ENDPOINTS, or MESH_EGRESS=allow to send unknown hosts out)"
            )?,
            Kind::InvalidUri(why) => write!(f, "invalid request URI: {why}")?,
            Kind::NoEndpoint(service) => write!(f, "no endpoint of `{service}` is available")?,
            Kind::Connect(addr) => write!(f, "could not connect to {addr}")?,
            Kind::Timeout => f.write_str("request timed out")?,
            Kind::Request => f.write_str("request failed")?,
            Kind::Layer => return write!(f, "{}", self.source.as_ref().expect("a layer error has a source")),
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
