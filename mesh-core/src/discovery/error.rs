//! The start-up error of a discovery: something the user must fix before the service
//! can find its endpoints.

use std::fmt;

/// Why [`Discovery::spawn`](super::Discovery::spawn) refused to start.
///
/// Opaque like `hyper::Error`: branch on the `is_*` checks, never on the message. The
/// message names the service and the source, and says what to fix.
#[derive(Debug)]
pub struct DiscoveryError {
    service: String,
    source_desc: String,
    kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// Called outside a tokio runtime.
    NoRuntime,
    /// A static list with no entries.
    EmptyList,
    /// A static hostname that does not resolve.
    Unresolvable(String, std::io::Error),
    /// A file that cannot be read (missing, permissions).
    FileUnreadable(std::io::Error),
    /// A file whose content is not a valid endpoint list.
    FileInvalid(String),
    /// The file watcher could not be set up.
    Watch(notify::Error),
    /// A DNS name that is not a valid name.
    InvalidName(String, String),
    /// The DNS resolver could not be built (e.g. unreadable resolv.conf).
    Resolver(String),
}

impl DiscoveryError {
    pub(crate) fn new(service: &str, source: &super::DiscoverySource, kind: Kind) -> Self {
        DiscoveryError {
            service: service.to_owned(),
            source_desc: source.to_string(),
            kind,
        }
    }

    /// The service whose discovery failed.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// True when `spawn` was called outside a tokio runtime.
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.kind, Kind::NoRuntime)
    }

    /// True when a configured name does not resolve or is not a valid DNS name.
    pub fn is_unresolvable(&self) -> bool {
        matches!(self.kind, Kind::Unresolvable(..) | Kind::InvalidName(..))
    }

    /// True when an endpoints file is missing, unreadable, unwatchable or invalid.
    pub fn is_file(&self) -> bool {
        matches!(
            self.kind,
            Kind::FileUnreadable(_) | Kind::FileInvalid(_) | Kind::Watch(_)
        )
    }

    /// True when the configuration itself is wrong (empty list, invalid file content,
    /// invalid DNS name).
    pub fn is_invalid(&self) -> bool {
        matches!(
            self.kind,
            Kind::EmptyList | Kind::FileInvalid(_) | Kind::InvalidName(..)
        )
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery for service `{}` ({}): ",
            self.service, self.source_desc
        )?;
        match &self.kind {
            Kind::NoRuntime => f.write_str("must be started inside a tokio runtime"),
            Kind::EmptyList => f.write_str("the static list is empty; give at least one host:port"),
            Kind::Unresolvable(host, e) => write!(f, "host `{host}` does not resolve: {e}"),
            Kind::FileUnreadable(e) => write!(f, "cannot read the endpoints file: {e}"),
            Kind::FileInvalid(msg) => write!(f, "invalid endpoints file: {msg}"),
            Kind::Watch(e) => write!(f, "cannot watch the endpoints file: {e}"),
            Kind::InvalidName(name, e) => write!(f, "`{name}` is not a valid DNS name: {e}"),
            Kind::Resolver(e) => write!(
                f,
                "cannot set up the DNS resolver: {e}; set name servers explicitly or fix resolv.conf"
            ),
        }
    }
}

impl std::error::Error for DiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Unresolvable(_, e) | Kind::FileUnreadable(e) => Some(e),
            Kind::Watch(e) => Some(e),
            _ => None,
        }
    }
}
