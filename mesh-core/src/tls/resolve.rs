//! Presents the current SVID in each handshake.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::identity::IdentitySource;

/// Hands rustls whatever SVID the source holds at handshake time, so rotation
/// reaches new connections without rebuilding any config.
#[derive(Debug)]
pub(crate) struct CurrentSvid {
    source: IdentitySource,
}

impl CurrentSvid {
    pub(crate) fn new(source: IdentitySource) -> Self {
        Self { source }
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.source.current().certified_key().clone()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
