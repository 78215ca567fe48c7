//! Turning raw identity material (DER certificates, a key, bundles) into a
//! validated [`Identity`], whatever delivered it: PEM files or the Workload API.
//!
//! One set of checks for every source, so an SVID the files path would refuse is
//! refused from the Workload API too. Errors here say what is wrong but not where
//! it came from; each source adds that (a file path, the socket).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};

use super::snapshot::{Identity, TrustBundle};
use super::x509::leaf_facts;
use super::{SvidError, TrustDomain};

/// Everything one identity is made of, before any check.
pub(crate) struct Material {
    /// Our SVID chain, leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The SVID's private key.
    pub(crate) key: PrivateKeyDer<'static>,
    /// CA certificates of our own trust domain (named by the leaf's SPIFFE ID).
    pub(crate) own_bundle: Vec<CertificateDer<'static>>,
    /// Other trust domains we accept, each with its CA certificates.
    pub(crate) federated: Vec<(TrustDomain, Vec<CertificateDer<'static>>)>,
}

/// Which bundle of a [`Material`] a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BundleRef {
    /// Our own trust domain's.
    Own,
    /// `federated[i]`.
    Federated(usize),
}

/// Why material is not a usable identity.
#[derive(Debug)]
pub(crate) enum Invalid {
    NoCertificate,
    UnsupportedKey(String),
    KeyMismatch,
    NotAnSvid(SvidError),
    EmptyBundle {
        bundle: BundleRef,
        trust_domain: TrustDomain,
    },
    BadTrustAnchor {
        bundle: BundleRef,
        index: usize,
        detail: String,
    },
    DuplicateTrustDomain {
        bundle: BundleRef,
        trust_domain: TrustDomain,
    },
    Untrusted {
        trust_domain: TrustDomain,
        detail: String,
    },
}

/// Source-neutral wording, for sources without files (the Workload API).
impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NoCertificate => f.write_str("the SVID holds no certificate"),
            Invalid::UnsupportedKey(detail) => write!(
                f,
                "unsupported private key ({detail}); use ECDSA P-256/P-384, Ed25519 or RSA"
            ),
            Invalid::KeyMismatch => {
                f.write_str("the private key does not match the SVID's leaf certificate")
            }
            Invalid::NotAnSvid(e) => write!(f, "leaf certificate: {e}"),
            Invalid::EmptyBundle { trust_domain, .. } => {
                write!(f, "the trust bundle for {trust_domain} is empty")
            }
            Invalid::BadTrustAnchor { index, detail, .. } => write!(
                f,
                "certificate #{index} of a trust bundle cannot be a trust anchor ({detail})"
            ),
            Invalid::DuplicateTrustDomain { trust_domain, .. } => {
                write!(f, "trust domain {trust_domain} has more than one bundle")
            }
            Invalid::Untrusted {
                trust_domain,
                detail,
            } => write!(
                f,
                "the SVID does not verify against the {trust_domain} bundle ({detail})"
            ),
        }
    }
}

impl Material {
    /// Checks the material and builds one identity snapshot from it.
    ///
    /// Checks: a certificate chain and a private key that matches its leaf;
    /// exactly one valid SPIFFE ID in the leaf; non-empty bundles, one per trust
    /// domain; and our SVID verifying against our own bundle at this moment (so
    /// a half-rotated or expired set is refused).
    pub(crate) fn validate(self) -> Result<Identity, Invalid> {
        let provider = crate::tls::crypto_provider();
        if self.chain.is_empty() {
            return Err(Invalid::NoCertificate);
        }
        let signing_key = provider
            .key_provider
            .load_private_key(self.key)
            .map_err(|e| Invalid::UnsupportedKey(e.to_string()))?;
        let certified_key = CertifiedKey::new(self.chain, signing_key);
        if certified_key.keys_match().is_err() {
            return Err(Invalid::KeyMismatch);
        }
        let facts = leaf_facts(&certified_key.cert[0]).map_err(Invalid::NotAnSvid)?;

        let own_domain = facts.spiffe_id.trust_domain();
        let mut bundles = HashMap::new();
        let own = trust_bundle(BundleRef::Own, own_domain.clone(), self.own_bundle)?;
        bundles.insert(own_domain.clone(), own);
        for (i, (domain, certs)) in self.federated.into_iter().enumerate() {
            let which = BundleRef::Federated(i);
            if bundles.contains_key(&domain) {
                return Err(Invalid::DuplicateTrustDomain {
                    bundle: which,
                    trust_domain: domain,
                });
            }
            bundles.insert(domain.clone(), trust_bundle(which, domain, certs)?);
        }

        verify_own_chain(&certified_key, &bundles[&own_domain]).map_err(|detail| {
            Invalid::Untrusted {
                trust_domain: own_domain.clone(),
                detail,
            }
        })?;

        Ok(Identity {
            spiffe_id: facts.spiffe_id,
            certified_key: Arc::new(certified_key),
            not_after: facts.not_after,
            serial: facts.serial,
            bundles,
        })
    }
}

fn trust_bundle(
    which: BundleRef,
    trust_domain: TrustDomain,
    certs: Vec<CertificateDer<'static>>,
) -> Result<TrustBundle, Invalid> {
    if certs.is_empty() {
        return Err(Invalid::EmptyBundle {
            bundle: which,
            trust_domain,
        });
    }
    let anchors = certs
        .iter()
        .enumerate()
        .map(|(index, cert)| {
            webpki::anchor_from_trusted_cert(cert)
                .map(|a| a.to_owned())
                .map_err(|e| Invalid::BadTrustAnchor {
                    bundle: which,
                    index,
                    detail: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustBundle::new(trust_domain, certs, anchors))
}

fn verify_own_chain(key: &CertifiedKey, bundle: &TrustBundle) -> Result<(), String> {
    let leaf = webpki::EndEntityCert::try_from(&key.cert[0]).map_err(|e| e.to_string())?;
    let algs = crate::tls::crypto_provider().signature_verification_algorithms;
    leaf.verify_for_usage(
        algs.all,
        bundle.anchors(),
        &key.cert[1..],
        UnixTime::now(),
        AnyUsage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| describe_chain_error(&e))
}

/// Our own SVID serves both as client and server certificate; at load time
/// only the chain matters, the handshake checks the usage.
struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// Says what an operator should know about why our own chain failed.
fn describe_chain_error(error: &webpki::Error) -> String {
    match error {
        webpki::Error::CertExpired { not_after, .. } => format!(
            "it expired at Unix time {}; renew the SVID",
            not_after.as_secs()
        ),
        webpki::Error::CertNotValidYet { not_before, .. } => format!(
            "it is not valid before Unix time {}; check the clock",
            not_before.as_secs()
        ),
        // A CA with the same name but another key shows up as a bad signature.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            "it was not issued by a CA in that bundle (wrong bundle, or a rotation half done)"
                .to_owned()
        }
        other => format!("{other:?}"),
    }
}
