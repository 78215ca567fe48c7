//! Loading an identity from PEM files (as written by cert-manager, SPIRE's
//! helper or the dev CA).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};

use super::snapshot::{Identity, TrustBundle};
use super::x509::leaf_facts;
use super::{IdentityError, TrustDomain};

/// Where an identity's PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// Our X.509 SVID chain, leaf first (`MESH_TLS_CERT`).
    pub cert: PathBuf,
    /// The SVID's private key (`MESH_TLS_KEY`).
    pub key: PathBuf,
    /// The CA bundle of our own trust domain (`MESH_TLS_BUNDLE`).
    pub bundle: PathBuf,
    /// Bundles of other trust domains we accept, each tied to its domain
    /// (`MESH_TLS_FEDERATED_BUNDLES`): a bundle only vouches for IDs in its own domain.
    pub federated: Vec<(TrustDomain, PathBuf)>,
}

impl IdentityFiles {
    /// Files for an identity without federated trust domains.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
            federated: Vec::new(),
        }
    }

    /// Adds a federated trust domain and its bundle file.
    pub fn with_federated(mut self, trust_domain: TrustDomain, bundle: impl Into<PathBuf>) -> Self {
        self.federated.push((trust_domain, bundle.into()));
        self
    }

    /// Reads and validates every file into one identity snapshot.
    ///
    /// Checks: well-formed PEM; a certificate chain and a private key that
    /// matches its leaf; exactly one valid SPIFFE ID in the leaf; non-empty
    /// bundles, one per trust domain; and our SVID verifying against our own
    /// bundle at this moment (so a half-rotated or expired set is refused).
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let provider = crate::tls::crypto_provider();

        let chain = read_certs(&self.cert)?;
        if chain.is_empty() {
            return Err(IdentityError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = read_key(&self.key)?;
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            IdentityError::UnsupportedKey {
                path: self.key.clone(),
                detail: e.to_string(),
            }
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        if certified_key.keys_match().is_err() {
            return Err(IdentityError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        let facts =
            leaf_facts(&certified_key.cert[0]).map_err(|source| IdentityError::NotAnSvid {
                path: self.cert.clone(),
                source,
            })?;

        let own_domain = facts.spiffe_id.trust_domain();
        let mut bundles = HashMap::new();
        let own_bundle = read_bundle(&self.bundle, own_domain.clone())?;
        bundles.insert(own_domain.clone(), own_bundle);
        for (domain, path) in &self.federated {
            if bundles.contains_key(domain) {
                return Err(IdentityError::DuplicateTrustDomain {
                    trust_domain: domain.clone(),
                    path: path.clone(),
                });
            }
            bundles.insert(domain.clone(), read_bundle(path, domain.clone())?);
        }

        self.verify_own_chain(&certified_key, &bundles[&own_domain], &own_domain)?;

        Ok(Identity {
            spiffe_id: facts.spiffe_id,
            certified_key: Arc::new(certified_key),
            not_after: facts.not_after,
            serial: facts.serial,
            bundles,
        })
    }

    /// The directories holding the files. Watching directories (not files)
    /// sees atomic renames and Kubernetes' `..data` symlink swaps.
    pub(crate) fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert, &self.key, &self.bundle]
            .into_iter()
            .chain(self.federated.iter().map(|(_, p)| p))
            .map(|p| match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn verify_own_chain(
        &self,
        key: &CertifiedKey,
        bundle: &TrustBundle,
        domain: &TrustDomain,
    ) -> Result<(), IdentityError> {
        let untrusted = |detail: String| IdentityError::Untrusted {
            cert: self.cert.clone(),
            bundle: self.bundle.clone(),
            trust_domain: domain.clone(),
            detail,
        };
        let leaf =
            webpki::EndEntityCert::try_from(&key.cert[0]).map_err(|e| untrusted(e.to_string()))?;
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
        .map_err(|e| untrusted(describe_chain_error(&e)))
    }
}

/// A federated bundle list (`MESH_TLS_FEDERATED_BUNDLES`) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FederatedBundlesError {
    /// An entry is not `trust-domain=path`.
    #[error("expected `trust-domain=path` entries separated by commas, found {0:?}")]
    Malformed(String),
    /// An entry names an invalid trust domain.
    #[error(transparent)]
    TrustDomain(#[from] super::SpiffeIdError),
}

/// Parses a federated bundle list, `other.org=/etc/mesh/other.pem,partner.io=/b.pem`
/// (the format of `MESH_TLS_FEDERATED_BUNDLES`). Empty input is an empty list.
pub fn parse_federated_bundles(
    value: &str,
) -> Result<Vec<(TrustDomain, PathBuf)>, FederatedBundlesError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (domain, path) = entry
                .split_once('=')
                .filter(|(d, p)| !d.trim().is_empty() && !p.trim().is_empty())
                .ok_or_else(|| FederatedBundlesError::Malformed(entry.to_owned()))?;
            Ok((TrustDomain::new(domain.trim())?, PathBuf::from(path.trim())))
        })
        .collect()
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

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = read(path)?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::MalformedPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => IdentityError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        e => IdentityError::MalformedPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    })
}

fn read_bundle(path: &Path, trust_domain: TrustDomain) -> Result<TrustBundle, IdentityError> {
    let certs = read_certs(path)?;
    if certs.is_empty() {
        return Err(IdentityError::EmptyBundle {
            path: path.to_path_buf(),
            trust_domain,
        });
    }
    let anchors = certs
        .iter()
        .enumerate()
        .map(|(index, cert)| {
            webpki::anchor_from_trusted_cert(cert)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::BadTrustAnchor {
                    path: path.to_path_buf(),
                    index,
                    detail: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustBundle::new(trust_domain, certs, anchors))
}
