//! SPIFFE peer verification: the peer's own trust domain picks the bundle.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::KeyUsage;

use super::PeerIdentityError;
use crate::identity::{spiffe_id_of, ExpectedIdentity, IdentitySource, SpiffeId, TrustDomain};

/// The checks both sides share: SPIFFE ID first, then the chain against that
/// ID's trust domain's bundle only.
#[derive(Debug)]
struct SpiffeChain {
    source: IdentitySource,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeChain {
    fn new(source: IdentitySource) -> Self {
        Self {
            source,
            algs: super::crypto_provider().signature_verification_algorithms,
        }
    }

    /// Verifies the chain and returns the peer's SPIFFE ID. `accept` may refuse
    /// a trust domain before the chain is checked.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        accept: impl FnOnce(&SpiffeId) -> Result<(), PeerIdentityError>,
    ) -> Result<SpiffeId, rustls::Error> {
        let presented = spiffe_id_of(end_entity).map_err(|e| refuse(e.into()))?;
        accept(&presented).map_err(refuse)?;
        let identity = self.source.current();
        let bundle = identity
            .bundle(presented.trust_domain_name())
            .ok_or_else(|| {
                refuse(PeerIdentityError::NoBundle {
                    presented: presented.clone(),
                })
            })?;
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        leaf.verify_for_usage(
            self.algs.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            // Expiry keeps rustls' own variant so the peer gets the standard
            // `certificate_expired` alert and tools show a familiar message.
            webpki::Error::CertExpired { time, not_after } => {
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                    time,
                    not_after,
                })
            }
            webpki::Error::CertNotValidYet { .. } => {
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
            }
            other => refuse(PeerIdentityError::ChainNotVerified {
                presented: presented.clone(),
                detail: format!("{other:?}"),
            }),
        })?;
        Ok(presented)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

fn refuse(error: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Client side: verifies the server against the identity expected of it.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    chain: SpiffeChain,
    expected: ExpectedIdentity,
}

impl ServerVerifier {
    pub(crate) fn new(source: IdentitySource, expected: ExpectedIdentity) -> Self {
        Self {
            chain: SpiffeChain::new(source),
            expected,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The SNI is the logical service name; SPIFFE identity replaces DNS names.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = self.chain.verify(
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
            |_| Ok(()),
        )?;
        if !self.expected.matches(&presented) {
            return Err(refuse(PeerIdentityError::WrongIdentity {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.algs.supported_schemes()
    }
}

/// Server side: requires a client certificate from an accepted trust domain.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    chain: SpiffeChain,
    /// Empty: every trust domain we hold a bundle for.
    accepted: Vec<TrustDomain>,
}

impl ClientVerifier {
    pub(crate) fn new(source: IdentitySource, accepted: Vec<TrustDomain>) -> Self {
        Self {
            chain: SpiffeChain::new(source),
            accepted,
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients hold one SVID and present it whatever we say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain.verify(
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
            |presented| {
                let domain = presented.trust_domain_name();
                if self.accepted.is_empty() || self.accepted.iter().any(|td| td.as_str() == domain)
                {
                    Ok(())
                } else {
                    Err(PeerIdentityError::NotAccepted {
                        presented: presented.clone(),
                    })
                }
            },
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.algs.supported_schemes()
    }
}
