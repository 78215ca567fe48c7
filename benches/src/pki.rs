//! The one set of certificates every configuration uses: an ECDSA P-256 CA, a
//! server and a client certificate, written as PEM files so nginx, haproxy and
//! the helper processes read exactly what the in-process clients use.
//!
//! Leaves carry a single SPIFFE URI SAN (so the mesh's SPIFFE verifier accepts
//! them) plus DNS names for clients that check names: `localhost` (raw, nginx)
//! and `bench` (the logical service name the mesh sends as SNI).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_core::identity::IdentityFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Trust domain of the bench's SPIFFE IDs.
pub const TRUST_DOMAIN: &str = "bench.mesh";
/// The server's SPIFFE ID.
pub const SERVER_ID: &str = "spiffe://bench.mesh/server";
/// The client's SPIFFE ID.
pub const CLIENT_ID: &str = "spiffe://bench.mesh/client";
/// The DNS name raw and sidecar clients verify.
pub const SERVER_NAME: &str = "localhost";

/// Paths of the PEM files in one folder.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    dir: PathBuf,
}

impl PkiFiles {
    /// Generates a fresh CA and leaves into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mesh bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |id: &str, dns: &[&str], usage| -> Result<(String, String), rcgen::Error> {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params =
                CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
            params.subject_alt_names.push(SanType::URI(id.try_into()?));
            params.distinguished_name.push(DnType::CommonName, id);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            SERVER_ID,
            &[SERVER_NAME, "bench"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(CLIENT_ID, &[], ExtendedKeyUsagePurpose::ClientAuth)?;

        let files = PkiFiles {
            dir: dir.to_path_buf(),
        };
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|e| {
                rcgen::Error::PemError(format!("cannot write {}: {e}", path.display()))
            })
        };
        write(files.ca(), &ca_cert.pem())?;
        write(files.server_cert(), &server_cert)?;
        write(files.server_key(), &server_key)?;
        write(files.client_cert(), &client_cert)?;
        write(files.client_key(), &client_key)?;
        // haproxy wants the chain and key in one file.
        write(
            files.server_combined(),
            &format!("{server_cert}{server_key}"),
        )?;
        Ok(files)
    }

    /// Files generated earlier into `dir` (by another process).
    pub fn existing(dir: &Path) -> Self {
        PkiFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The CA certificate (the trust bundle).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Server certificate followed by its key (haproxy's `crt`).
    pub fn server_combined(&self) -> PathBuf {
        self.dir.join("server-combined.pem")
    }
    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    /// The client key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The server's files as the mesh's identity files (`MESH_TLS_*`).
    pub fn server_identity(&self) -> IdentityFiles {
        IdentityFiles::new(self.server_cert(), self.server_key(), self.ca())
    }

    /// The client's files as `MESH_TLS_CERT`, `MESH_TLS_KEY`, `MESH_TLS_BUNDLE`.
    pub fn client_tls_vars(&self) -> Vec<(String, String)> {
        [
            ("MESH_TLS_CERT", self.client_cert()),
            ("MESH_TLS_KEY", self.client_key()),
            ("MESH_TLS_BUNDLE", self.ca()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
    }

    fn roots(&self) -> io::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in certs(&self.ca())? {
            roots.add(cert).map_err(io::Error::other)?;
        }
        Ok(roots)
    }

    /// The raw server's rustls configuration: TLS 1.3 only, client certificate
    /// required and verified against the CA, no session tickets (as the mesh's).
    pub fn server_config(&self) -> io::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(io::Error::other)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.server_cert())?, key(&self.server_key())?)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The raw client's rustls configuration: TLS 1.3, presents the client
    /// certificate, verifies the server against the CA, no resumption.
    pub fn client_config(&self) -> io::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs(&self.client_cert())?, key(&self.client_key())?)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

fn certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io::Error::other(format!("cannot read {}: {e}", path.display())))
}

fn key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| io::Error::other(format!("cannot read {}: {e}", path.display())))
}
