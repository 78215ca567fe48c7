//! Why a peer's certificate was refused.

use std::fmt;

use crate::identity::{ExpectedIdentity, SpiffeId, SvidError};

/// A peer certificate was refused for its SPIFFE identity.
///
/// Carried inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))`;
/// expiry uses rustls' own variant so the peer receives the standard alert. Get at it with `downcast_ref` on the `OtherError`.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdentityError {
    /// The leaf is not a usable X.509 SVID.
    #[error("peer certificate is not an X.509 SVID: {0}")]
    NotAnSvid(#[from] SvidError),
    /// We hold no trust bundle for the peer's trust domain.
    #[error("peer presented {presented}, but no trust bundle is configured for trust domain {}", .presented.trust_domain_name())]
    NoBundle {
        /// The ID the peer presented.
        presented: SpiffeId,
    },
    /// The peer's trust domain is known but not accepted on this listener.
    #[error("peer presented {presented}, but trust domain {} is not accepted here", .presented.trust_domain_name())]
    NotAccepted {
        /// The ID the peer presented.
        presented: SpiffeId,
    },
    /// The chain does not verify against the bundle of the ID's trust domain
    /// (for example a CA of another domain issued it).
    #[error("peer presented {presented}, but its certificate chain does not verify against the {} trust bundle ({detail})", .presented.trust_domain_name())]
    ChainNotVerified {
        /// The ID the peer presented.
        presented: SpiffeId,
        /// What webpki reported.
        detail: String,
    },
    /// The peer is trusted but is not who this connection expects.
    #[error("expected server identity {expected}, but the peer presented {presented}")]
    WrongIdentity {
        /// What was expected.
        expected: ExpectedIdentity,
        /// What was presented.
        presented: SpiffeId,
    },
}

impl PeerIdentityError {
    /// The bounded reason word used in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAnSvid(_) => "bad_certificate",
            Self::NoBundle { .. } | Self::NotAccepted { .. } => "untrusted_domain",
            Self::ChainNotVerified { .. } => "unknown_issuer",
            Self::WrongIdentity { .. } => "wrong_identity",
        }
    }

    /// The SPIFFE ID the peer presented, when it had a valid one.
    pub fn presented(&self) -> Option<&SpiffeId> {
        match self {
            Self::NotAnSvid(_) => None,
            Self::NoBundle { presented }
            | Self::NotAccepted { presented }
            | Self::ChainNotVerified { presented, .. }
            | Self::WrongIdentity { presented, .. } => Some(presented),
        }
    }

    /// Whether the peer was trusted but not the expected identity.
    pub fn is_wrong_identity(&self) -> bool {
        matches!(self, Self::WrongIdentity { .. })
    }
}

/// rustls renders `CertificateError::Other` with `{:?}`, so Debug is the
/// readable message: that is what ends up in a handshake error's text.
impl fmt::Debug for PeerIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}
