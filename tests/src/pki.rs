//! A throw-away PKI for end-to-end mTLS tests: a dev CA per trust domain and
//! SVID files in a temporary folder that is removed when the value is dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_core::identity::dev::{DevCa, Svid, SvidOptions};
use mesh_core::identity::{IdentityFiles, IdentitySource, SpiffeId};

/// The host name server SVIDs carry as a DNS SAN, so curl and openssl can
/// check the name as well as the chain (pair it with `curl --resolve`).
pub const SERVER_DNS_NAME: &str = "api.mesh.test";

/// One trust domain's CA and a folder of PEM files.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
}

/// Paths of one workload's SVID, key and bundle.
#[derive(Debug, Clone)]
pub struct PemFiles {
    /// The SVID (leaf certificate) in PEM.
    pub cert: PathBuf,
    /// Its private key in PEM.
    pub key: PathBuf,
    /// The issuing CA's bundle in PEM.
    pub bundle: PathBuf,
    /// The serial of the SVID, lowercase hex.
    pub serial: String,
}

impl PemFiles {
    /// The same files as an [`IdentityFiles`].
    pub fn identity_files(&self) -> IdentityFiles {
        IdentityFiles::new(&self.cert, &self.key, &self.bundle)
    }
}

impl Pki {
    /// A new CA for `trust_domain`, with its bundle written to `<dir>/bundle.pem`.
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let ca = DevCa::new(trust_domain).expect("create dev CA");
        ca.write_bundle(&dir.path().join("bundle.pem"))
            .expect("write bundle");
        Self { dir, ca }
    }

    /// The CA.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of this domain's bundle.
    pub fn bundle(&self) -> PathBuf {
        self.dir().join("bundle.pem")
    }

    /// Writes `svid` as `<name>.pem` / `<name>.key`.
    pub fn write(&self, name: &str, svid: &Svid) -> PemFiles {
        let files = PemFiles {
            cert: self.dir().join(format!("{name}.pem")),
            key: self.dir().join(format!("{name}.key")),
            bundle: self.bundle(),
            serial: svid.serial.clone(),
        };
        svid.write(&files.cert, &files.key).expect("write SVID");
        files
    }

    /// Issues and writes a one-day client SVID for `id`.
    pub fn client(&self, name: &str, id: &str) -> PemFiles {
        self.write(name, &self.ca.issue(&spiffe_id(id)).expect("issue SVID"))
    }

    /// Issues and writes a server SVID for `id` that also names
    /// [`SERVER_DNS_NAME`] and 127.0.0.1, for foreign clients that check names.
    pub fn server(&self, name: &str, id: &str) -> PemFiles {
        let options = SvidOptions::new(id)
            .dns_name(SERVER_DNS_NAME)
            .ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.write(name, &self.ca.issue_with(options).expect("issue SVID"))
    }

    /// Issues and writes an SVID that expired an hour ago.
    pub fn expired(&self, name: &str, id: &str) -> PemFiles {
        let options = SvidOptions::new(id).expired();
        self.write(name, &self.ca.issue_with(options).expect("issue SVID"))
    }

    /// An identity source over a freshly issued server SVID for `id`.
    pub fn server_source(&self, name: &str, id: &str) -> (PemFiles, IdentitySource) {
        let files = self.server(name, id);
        let source = IdentitySource::from_files(files.identity_files()).expect("load identity");
        (files, source)
    }
}

/// Parses a SPIFFE ID a test spells out.
pub fn spiffe_id(id: &str) -> SpiffeId {
    id.parse().expect("a valid SPIFFE ID")
}

/// Fails the test with the install command when a foreign tool is missing,
/// so a bare machine never passes silently.
pub fn require_tool(tool: &str, debian_package: &str) {
    let found = Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is needed by this test; install it with `apt-get install -y {debian_package}`"
    );
}
