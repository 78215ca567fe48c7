//! What the mesh reads out of an X.509 SVID: its SPIFFE ID, expiry and serial.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::der;
use super::{SpiffeId, SpiffeIdError};

/// Why a certificate does not carry a usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("not a valid X.509 certificate ({0})")]
    Malformed(String),
    /// No URI SAN: this is not an X.509 SVID.
    #[error("it has no URI SAN, so it carries no SPIFFE ID (is it an X.509 SVID?)")]
    NoSpiffeId,
    /// An X.509 SVID has exactly one URI SAN.
    #[error("it has {0} URI SANs; an X.509 SVID has exactly one")]
    MultipleUris(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("its URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidId(#[from] SpiffeIdError),
}

/// The facts of a leaf certificate the mesh needs.
#[derive(Debug, Clone)]
pub(crate) struct LeafFacts {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) not_after: SystemTime,
    pub(crate) serial: String,
}

/// Reads the SPIFFE ID, expiry and serial of a leaf certificate.
pub(crate) fn leaf_facts(der: &CertificateDer<'_>) -> Result<LeafFacts, SvidError> {
    let fields = der::cert_fields(der.as_ref()).map_err(malformed)?;
    Ok(LeafFacts {
        spiffe_id: the_one_spiffe_id(&fields.uris)?,
        not_after: fields.not_after,
        serial: fields.serial,
    })
}

/// Reads only the SPIFFE ID of a certificate (the per-handshake path).
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let uris = der::uri_sans(der.as_ref()).map_err(malformed)?;
    the_one_spiffe_id(&uris)
}

fn malformed(detail: &str) -> SvidError {
    SvidError::Malformed(detail.to_owned())
}

fn the_one_spiffe_id(uris: &[&str]) -> Result<SpiffeId, SvidError> {
    match uris {
        [] => Err(SvidError::NoSpiffeId),
        [uri] => Ok(SpiffeId::new(uri)?),
        more => Err(SvidError::MultipleUris(more.len())),
    }
}
