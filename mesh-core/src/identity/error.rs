//! Why an identity could not be loaded. Every error names the file at fault.

use std::path::PathBuf;
use std::time::Duration;

use super::{SvidError, TrustDomain};

/// An identity (SVID, key, trust bundles) could not be loaded or watched.
///
/// Each variant names the file at fault and says what was expected, so the
/// message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM (for example cut off half-way through a write).
    #[error("{}: malformed PEM ({detail}); expected complete PEM blocks", path.display())]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        detail: String,
    },
    /// The SVID file holds no certificate.
    #[error("{}: no CERTIFICATE block; expected the X.509 SVID chain in PEM, leaf first", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("{}: no private key; expected a PEM PRIVATE KEY (PKCS#8), EC PRIVATE KEY or RSA PRIVATE KEY block", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind the crypto provider cannot use.
    #[error("{}: unsupported private key ({detail}); use ECDSA P-256/P-384, Ed25519 or RSA", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What the provider reported.
        detail: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("{}: private key does not match the leaf certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The SVID file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate is not a usable X.509 SVID.
    #[error("{}: leaf certificate: {source}", path.display())]
    NotAnSvid {
        /// The SVID file.
        path: PathBuf,
        /// What is wrong with it.
        source: SvidError,
    },
    /// A trust bundle file holds no certificate.
    #[error("{}: trust bundle for {trust_domain} is empty; expected one or more CA certificates in PEM", path.display())]
    EmptyBundle {
        /// The bundle file.
        path: PathBuf,
        /// The trust domain it is for.
        trust_domain: TrustDomain,
    },
    /// A certificate in a bundle cannot serve as a trust anchor.
    #[error("{}: certificate #{index} cannot be a trust anchor ({detail})", path.display())]
    BadTrustAnchor {
        /// The bundle file.
        path: PathBuf,
        /// Position of the certificate in the file, from 0.
        index: usize,
        /// What webpki reported.
        detail: String,
    },
    /// A trust domain was given more than one bundle.
    #[error("trust domain {trust_domain} has more than one bundle ({}); give each trust domain exactly one", path.display())]
    DuplicateTrustDomain {
        /// The repeated domain.
        trust_domain: TrustDomain,
        /// The second file naming it.
        path: PathBuf,
    },
    /// Our own SVID does not verify against our own trust domain's bundle
    /// (wrong bundle, expired, or a rotation half done).
    #[error("{}: the SVID does not verify against the {trust_domain} bundle in {} ({detail})", cert.display(), bundle.display())]
    Untrusted {
        /// The SVID file.
        cert: PathBuf,
        /// The bundle file.
        bundle: PathBuf,
        /// Our trust domain.
        trust_domain: TrustDomain,
        /// What webpki reported.
        detail: String,
    },
    /// The file watcher could not be started.
    #[error("cannot watch {} for changes: {source}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// What notify reported.
        source: notify::Error,
    },
    /// `SPIFFE_ENDPOINT_SOCKET` is not a Workload API address.
    #[error("SPIFFE_ENDPOINT_SOCKET={socket:?} is not a Workload API address ({detail}); expected `unix:///path/to/agent.sock` (or `tcp:ip:port`)")]
    WorkloadApiAddress {
        /// The value given.
        socket: String,
        /// What the address parser reported.
        detail: String,
    },
    /// No valid X.509 SVID came from the Workload API within the start-up timeout.
    #[error("no valid X.509 SVID from the SPIFFE Workload API at {socket} (SPIFFE_ENDPOINT_SOCKET) within {waited:?}{}; check that the SPIRE agent serves that socket and this workload is registered, or raise MESH_WORKLOAD_API_TIMEOUT", last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    WorkloadApiTimeout {
        /// The Workload API address.
        socket: String,
        /// How long start-up waited.
        waited: Duration,
        /// The last thing that went wrong, if anything did (as opposed to silence).
        last_error: Option<String>,
    },
    /// An update from the Workload API is not a usable identity; the last good
    /// one stays.
    #[error("the SPIFFE Workload API at {socket} sent an unusable identity: {detail}")]
    WorkloadApiUpdate {
        /// The Workload API address.
        socket: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl IdentityError {
    /// The file at fault, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Read { path, .. }
            | Self::MalformedPem { path, .. }
            | Self::NoCertificate { path }
            | Self::NoPrivateKey { path }
            | Self::UnsupportedKey { path, .. }
            | Self::NotAnSvid { path, .. }
            | Self::EmptyBundle { path, .. }
            | Self::BadTrustAnchor { path, .. }
            | Self::DuplicateTrustDomain { path, .. }
            | Self::Watch { path, .. } => Some(path),
            Self::KeyMismatch { key, .. } => Some(key),
            Self::Untrusted { cert, .. } => Some(cert),
            Self::WorkloadApiAddress { .. }
            | Self::WorkloadApiTimeout { .. }
            | Self::WorkloadApiUpdate { .. } => None,
        }
    }
}
