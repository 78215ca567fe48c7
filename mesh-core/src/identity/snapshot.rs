//! One consistent identity: our SVID and key, and the trust bundles we accept.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::{SpiffeId, TrustDomain};

/// The CA certificates of one trust domain: the only anchors allowed to vouch
/// for IDs in that domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub(crate) fn new(
        trust_domain: TrustDomain,
        certs: Vec<CertificateDer<'static>>,
        anchors: Vec<TrustAnchor<'static>>,
    ) -> Self {
        Self {
            trust_domain,
            certs,
            anchors,
        }
    }

    /// The trust domain this bundle vouches for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates, as loaded.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The trust anchors derived from the certificates, for chain verification.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

/// A validated identity snapshot: our X.509 SVID chain and its key, our SPIFFE
/// ID, its expiry, and one trust bundle per trust domain we accept.
///
/// Snapshots are immutable; rotation swaps in a whole new one, so a handshake
/// never sees a certificate from one generation with a key or bundle from another.
pub struct Identity {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) certified_key: Arc<CertifiedKey>,
    pub(crate) not_after: SystemTime,
    pub(crate) serial: String,
    pub(crate) bundles: HashMap<TrustDomain, TrustBundle>,
}

impl Identity {
    /// Our own SPIFFE ID, from the leaf certificate's URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Our own trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        self.spiffe_id.trust_domain()
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf certificate's serial number in lowercase hex, for logs and tests.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The SVID chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// The chain and signing key in the form rustls presents in a handshake.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The bundle of the named trust domain, if we accept that domain.
    pub fn bundle(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// Every trust domain we hold a bundle for (ours and federated ones).
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    /// Whether `other` holds the same certificates and bundles (a re-read of
    /// unchanged files is not a rotation).
    pub(crate) fn same_material(&self, other: &Identity) -> bool {
        self.certified_key.cert == other.certified_key.cert
            && self.bundles.len() == other.bundles.len()
            && self.bundles.iter().all(|(td, b)| {
                other
                    .bundles
                    .get(td)
                    .is_some_and(|o| o.certificates() == b.certificates())
            })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut domains: Vec<_> = self.bundles.keys().map(TrustDomain::as_str).collect();
        domains.sort_unstable();
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("trust_domains", &domains)
            .finish_non_exhaustive()
    }
}
