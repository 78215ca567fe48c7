//! A local certificate authority for development and tests (feature `dev-ca`).
//!
//! It creates a trust domain's CA and issues X.509 SVIDs (ECDSA P-256) for SPIFFE
//! IDs, including deliberately bad ones (expired, foreign trust domains, odd URI
//! SANs), so tests exercise real certificates instead of turning verification
//! off. It is not a production CA: keys live in memory and in plain files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::{IdentityFiles, SpiffeId, SpiffeIdError, TrustDomain};

/// A dev CA could not create or write a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCaError {
    /// The trust domain name is invalid.
    #[error(transparent)]
    TrustDomain(#[from] SpiffeIdError),
    /// rcgen refused the parameters (for example a URI that is not IA5).
    #[error("cannot create certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A self-signed CA for one trust domain.
#[derive(Debug)]
pub struct DevCa {
    trust_domain: TrustDomain,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What to put in an SVID the dev CA issues.
#[derive(Debug, Clone)]
pub struct SvidOptions {
    /// URI SANs; an SVID has exactly one SPIFFE ID, tests may give zero or several.
    pub uris: Vec<String>,
    /// Extra DNS SANs (so plain TLS clients such as curl can check a host name).
    pub dns_names: Vec<String>,
    /// Extra IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl SvidOptions {
    /// An SVID for `id`, valid from a minute ago (clock skew) for one day.
    pub fn new(id: impl Into<String>) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![id.into()],
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(24 * 3600),
        }
    }

    /// Makes the SVID one that expired an hour ago.
    pub fn expired(mut self) -> Self {
        let now = SystemTime::now();
        self.not_before = now - Duration::from_secs(48 * 3600);
        self.not_after = now - Duration::from_secs(3600);
        self
    }

    /// Adds a DNS SAN.
    pub fn dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Adds an IP SAN.
    pub fn ip_address(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }
}

/// An issued SVID: certificate chain and key in PEM, and the serial number.
#[derive(Debug, Clone)]
pub struct Svid {
    /// The leaf certificate in PEM (the dev CA has no intermediates).
    pub cert_pem: String,
    /// The PKCS#8 private key in PEM.
    pub key_pem: String,
    /// The serial number in lowercase hex, as [`Identity::serial`](super::Identity::serial) shows it.
    pub serial: String,
}

impl Svid {
    /// Writes the certificate and key files.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), DevCaError> {
        write(cert, &self.cert_pem)?;
        write(key, &self.key_pem)
    }
}

impl DevCa {
    /// Creates a CA (ECDSA P-256, valid ten years) for `trust_domain`.
    pub fn new(trust_domain: &str) -> Result<Self, DevCaError> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "mesh dev CA");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mesh dev CA {trust_domain}"));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        params.serial_number = Some(random_serial().0);
        params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            trust_domain,
            issuer,
        })
    }

    /// The trust domain this CA vouches for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate in PEM: the trust bundle of this domain.
    pub fn bundle_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the bundle file.
    pub fn write_bundle(&self, path: &Path) -> Result<(), DevCaError> {
        write(path, &self.bundle_pem())
    }

    /// Issues a one-day SVID for `id`.
    pub fn issue(&self, id: &SpiffeId) -> Result<Svid, DevCaError> {
        self.issue_with(SvidOptions::new(id.as_str()))
    }

    /// Issues an SVID exactly as `options` say, without checking that its URI
    /// belongs to this trust domain (tests need foreign and invalid ones).
    pub fn issue_with(&self, options: SvidOptions) -> Result<Svid, DevCaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "mesh dev workload");
        params.not_before = options.not_before.into();
        params.not_after = options.not_after.into();
        let (serial_number, serial) = random_serial();
        params.serial_number = Some(serial_number);
        for uri in options.uris {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        for name in options.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.try_into()?));
        }
        for ip in options.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Svid {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Issues an SVID for `id` and writes `<dir>/<name>.pem`, `<dir>/<name>.key`
    /// and this CA's bundle as `<dir>/<name>-bundle.pem`; returns the file set.
    pub fn write_identity(
        &self,
        dir: &Path,
        name: &str,
        id: &SpiffeId,
    ) -> Result<IdentityFiles, DevCaError> {
        let files = IdentityFiles::new(
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}-bundle.pem")),
        );
        self.issue(id)?.write(&files.cert, &files.key)?;
        self.write_bundle(&files.bundle)?;
        Ok(files)
    }
}

/// A random positive 127-bit serial, with its hex form.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so DER keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn write(path: &Path, contents: &str) -> Result<(), DevCaError> {
    std::fs::write(path, contents).map_err(|source| DevCaError::Write {
        path: path.to_path_buf(),
        source,
    })
}
