//! rustls configurations for mTLS between SPIFFE workloads.
//!
//! Both sides present the current SVID of an [`IdentitySource`] (read at each
//! handshake, so rotation applies to new connections without rebuilding
//! configs) and verify the peer the SPIFFE way:
//!
//! 1. read the SPIFFE ID from the peer leaf's single URI SAN;
//! 2. pick **only the bundle of that ID's trust domain** (a CA of domain A can
//!    never vouch for an ID in domain B);
//! 3. verify the chain against it with webpki;
//! 4. match the ID against what is expected of this peer.
//!
//! DNS names are not checked: SNI carries the logical service name, and the
//! SPIFFE ID is the identity. Only TLS 1.3 is offered; ALPN is `h2`, `http/1.1`;
//! the crypto provider is always ring, never the process default.
//!
//! ```no_run
//! # fn run(source: mesh_core::identity::IdentitySource) {
//! use mesh_core::tls;
//! let expected = "spiffe://example.org/api".parse().unwrap();
//! let client = tls::client_config(&source, expected);
//! let server = tls::server_config(&source, [source.own_trust_domain()]);
//! # let _ = (client, server); }
//! ```

mod error;
mod resolve;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::identity::{spiffe_id_of, ExpectedIdentity, IdentitySource, SpiffeId, TrustDomain};

pub use error::PeerIdentityError;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The one crypto provider the mesh uses (ring). Never the process default:
/// two providers compiled in make rustls' default builders panic.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A client configuration that presents our SVID and accepts only a server
/// whose SPIFFE ID matches `expected` and verifies against its own trust
/// domain's bundle.
///
/// Session resumption is off: a resumed session skips certificate
/// verification, which would let a rotated-out or revoked peer certificate
/// live on and hide rotation from the peer. Connections are pooled, so full
/// handshakes are rare.
pub fn client_config(source: &IdentitySource, expected: ExpectedIdentity) -> Arc<ClientConfig> {
    let verifier = verify::ServerVerifier::new(source.clone(), expected);
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(resolve::CurrentSvid::new(source.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// A server configuration that presents our SVID and requires a client
/// certificate whose SPIFFE ID is in one of `accepted` trust domains and
/// verifies against that domain's bundle.
///
/// An empty `accepted` means every trust domain the source holds a bundle
/// for (our own and the federated ones). Session resumption is off for the
/// reason given in [`client_config`].
pub fn server_config(
    source: &IdentitySource,
    accepted: impl IntoIterator<Item = TrustDomain>,
) -> Arc<ServerConfig> {
    let verifier = verify::ClientVerifier::new(source.clone(), accepted.into_iter().collect());
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolve::CurrentSvid::new(source.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// The SPIFFE ID the peer of an established connection presented.
///
/// Pass the rustls connection (`tls_stream.get_ref().1` for tokio-rustls).
/// `None` before the handshake completes or when the peer sent no certificate.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    spiffe_id_of(leaf).ok()
}

/// Classifies a failed handshake into a bounded reason word for the
/// `mesh.tls.handshake.failures` metric.
pub fn failure_reason(error: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match error {
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => "expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PeerIdentityError>() {
                Some(e) => e.reason(),
                None => "bad_certificate",
            }
        }
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => "expired",
        Error::AlertReceived(rustls::AlertDescription::UnknownCA) => "unknown_issuer",
        Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "no_client_certificate"
        }
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
