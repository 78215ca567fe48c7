//! What the mesh reads out of an X.509 SVID: its SPIFFE ID, expiry and serial.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

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
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let spiffe_id = spiffe_id_of_parsed(&cert)?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    };
    Ok(LeafFacts {
        spiffe_id,
        not_after,
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Reads only the SPIFFE ID of a certificate (the per-handshake path).
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    spiffe_id_of_parsed(&cert)
}

fn spiffe_id_of_parsed(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let first = uris.next().ok_or(SvidError::NoSpiffeId)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(SvidError::MultipleUris(extra + 1));
    }
    Ok(SpiffeId::new(first)?)
}
