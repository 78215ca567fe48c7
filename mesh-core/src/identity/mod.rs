//! Workload identity: SPIFFE IDs, X.509 SVIDs and trust bundles.
//!
//! A workload proves who it is with an X.509 SVID: a certificate whose single
//! URI SAN is its SPIFFE ID (`spiffe://example.org/ns/prod/sa/web`). It trusts
//! peers through **one bundle per trust domain**: a peer's chain is checked only
//! against the bundle of the trust domain its own ID names, so a CA of domain A
//! can never vouch for an ID in domain B (see [`crate::tls`]).
//!
//! [`IdentitySource`] holds the current [`Identity`] and swaps it atomically
//! when the files change, or when the SPIFFE Workload API streams a new SVID
//! (`IdentitySource::from_workload_api`, cargo feature `workload-api`).
//! From files:
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_core::identity::IdentityError> {
//! use mesh_core::identity::{IdentityFiles, IdentitySource};
//! let source = IdentitySource::from_files(IdentityFiles::new("svid.pem", "key.pem", "bundle.pem"))?;
//! let _watch = source.watch()?; // reload on change while this lives
//! println!("we are {}", source.current().spiffe_id());
//! # Ok(()) }
//! ```

mod der;
#[cfg(any(test, feature = "dev-ca"))]
pub mod dev;
mod error;
mod files;
mod snapshot;
mod source;
mod spiffe_id;
mod validate;
mod workload_api;
mod x509;

pub use error::IdentityError;
pub use files::{parse_federated_bundles, FederatedBundlesError, IdentityFiles};
pub use snapshot::{Identity, TrustBundle};
pub use source::{IdentitySource, IdentityWatch, Reload};
pub use spiffe_id::{ExpectedIdentity, SpiffeId, SpiffeIdError, SpiffeIdErrorReason, TrustDomain};
pub use workload_api::WorkloadApiConfig;
pub use x509::{spiffe_id_of, SvidError};

#[cfg(test)]
mod tests;
