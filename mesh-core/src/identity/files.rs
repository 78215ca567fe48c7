//! Loading an identity from PEM files (as written by cert-manager, SPIRE's
//! helper or the dev CA).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::snapshot::Identity;
use super::validate::{BundleRef, Invalid, Material};
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
        let chain = read_certs(&self.cert)?;
        if chain.is_empty() {
            return Err(IdentityError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = read_key(&self.key)?;
        let own_bundle = read_certs(&self.bundle)?;
        let federated = self
            .federated
            .iter()
            .map(|(domain, path)| Ok((domain.clone(), read_certs(path)?)))
            .collect::<Result<Vec<_>, IdentityError>>()?;
        let material = Material {
            chain,
            key,
            own_bundle,
            federated,
        };
        material.validate().map_err(|e| self.locate(e))
    }

    /// Whether the certificate and bundle files still hold what `identity` was
    /// loaded from: a cheap read and PEM decode, no validation. Any problem
    /// reading them counts as a change, so the caller's full reload reports it.
    ///
    /// For the watcher's catch-up after it starts: a change written between
    /// loading and the watch being in place raised no event. The key file is
    /// not compared: a new key without a new certificate is not a usable
    /// identity, and the certificate that goes with it changes the chain.
    pub(crate) fn hold(&self, identity: &Identity) -> bool {
        let same = |path: &Path, certs: Option<&[CertificateDer<'static>]>| matches!((read_certs(path), certs), (Ok(read), Some(held)) if read == held);
        let own = identity.trust_domain();
        same(&self.cert, Some(identity.cert_chain()))
            && same(
                &self.bundle,
                identity.bundle(own.as_str()).map(|b| b.certificates()),
            )
            && self.federated.iter().all(|(domain, path)| {
                same(
                    path,
                    identity.bundle(domain.as_str()).map(|b| b.certificates()),
                )
            })
    }

    /// Names the file a validation problem is about.
    fn locate(&self, invalid: Invalid) -> IdentityError {
        let bundle_path = |which: BundleRef| match which {
            BundleRef::Own => self.bundle.clone(),
            BundleRef::Federated(i) => self.federated[i].1.clone(),
        };
        match invalid {
            Invalid::NoCertificate => IdentityError::NoCertificate {
                path: self.cert.clone(),
            },
            Invalid::UnsupportedKey(detail) => IdentityError::UnsupportedKey {
                path: self.key.clone(),
                detail,
            },
            Invalid::KeyMismatch => IdentityError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
            Invalid::NotAnSvid(source) => IdentityError::NotAnSvid {
                path: self.cert.clone(),
                source,
            },
            Invalid::EmptyBundle {
                bundle,
                trust_domain,
            } => IdentityError::EmptyBundle {
                path: bundle_path(bundle),
                trust_domain,
            },
            Invalid::BadTrustAnchor {
                bundle,
                index,
                detail,
            } => IdentityError::BadTrustAnchor {
                path: bundle_path(bundle),
                index,
                detail,
            },
            Invalid::DuplicateTrustDomain {
                bundle,
                trust_domain,
            } => IdentityError::DuplicateTrustDomain {
                trust_domain,
                path: bundle_path(bundle),
            },
            Invalid::Untrusted {
                trust_domain,
                detail,
            } => IdentityError::Untrusted {
                cert: self.cert.clone(),
                bundle: self.bundle.clone(),
                trust_domain,
                detail,
            },
        }
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
