//! SPIFFE IDs, trust domains, and the identity a peer is expected to present.
//!
//! Parsing follows the SPIFFE ID specification: `spiffe://<trust domain>/<path>`,
//! a lowercase trust domain of `[a-z0-9.-_]`, path segments of `[a-zA-Z0-9.-_]`
//! that are neither empty nor `.`/`..`, no port, user info, query or fragment, and
//! at most 2048 bytes in all. Being strict here matters: two spellings of one ID
//! would let an authorization rule be bypassed.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// What is wrong with a string that was meant to be a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct SpiffeIdError {
    input: String,
    reason: SpiffeIdErrorReason,
}

impl SpiffeIdError {
    fn new(input: &str, reason: SpiffeIdErrorReason) -> Self {
        // Bound the echoed input: it may come from a peer's certificate.
        let input = input.chars().take(300).collect();
        Self { input, reason }
    }

    /// The rule the input broke.
    pub fn reason(&self) -> &SpiffeIdErrorReason {
        &self.reason
    }
}

/// The rule of the SPIFFE ID specification an input broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdErrorReason {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("it must start with \"spiffe://\" (lowercase)")]
    WrongScheme,
    /// `spiffe://` is not followed by a trust domain.
    #[error("the trust domain is missing after \"spiffe://\"")]
    MissingTrustDomain,
    /// The trust domain holds a character outside `[a-z0-9.-_]`.
    #[error("the trust domain may only contain lowercase letters, digits, '.', '-' and '_', found {0:?}")]
    TrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A `:port` follows the trust domain.
    #[error("a port is not allowed in a SPIFFE ID")]
    Port,
    /// `user@` precedes the trust domain.
    #[error("user info ('@') is not allowed in a SPIFFE ID")]
    UserInfo,
    /// A `?query` is present.
    #[error("a query ('?') is not allowed in a SPIFFE ID")]
    Query,
    /// A `#fragment` is present.
    #[error("a fragment ('#') is not allowed in a SPIFFE ID")]
    Fragment,
    /// Two slashes in a row, or a trailing slash.
    #[error("path segments must not be empty (no \"//\" and no trailing '/')")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    /// The path holds a character outside `[a-zA-Z0-9.-_]`.
    #[error("path segments may only contain letters, digits, '.', '-' and '_', found {0:?}")]
    PathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("it is longer than {MAX_ID_LEN} bytes")]
    TooLong,
}

/// A SPIFFE trust domain, such as `example.org`: the authority whose CA bundle
/// vouches for every ID in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`example.org`) or trust domain ID
    /// (`spiffe://example.org`).
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        let name = input.strip_prefix(SCHEME).unwrap_or(input);
        if name.is_empty() {
            let reason = if input.is_empty() {
                SpiffeIdErrorReason::Empty
            } else {
                SpiffeIdErrorReason::MissingTrustDomain
            };
            return Err(SpiffeIdError::new(input, reason));
        }
        if name.contains('/') {
            // A path means this is a workload ID, not a trust domain.
            return Err(SpiffeIdError::new(
                input,
                SpiffeIdErrorReason::TrustDomainChar('/'),
            ));
        }
        validate_trust_domain(name).map_err(|reason| SpiffeIdError::new(input, reason))?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl Borrow<str> for TrustDomain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID, `spiffe://trust-domain/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID as given (it is already canonical once validated). Shared,
    /// so the inbound server's per-request copy of the peer's ID costs no
    /// allocation.
    id: Arc<str>,
    /// Byte offset where the path starts (the end of the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        let err = |reason| SpiffeIdError::new(input, reason);
        if input.is_empty() {
            return Err(err(SpiffeIdErrorReason::Empty));
        }
        if input.len() > MAX_ID_LEN {
            return Err(err(SpiffeIdErrorReason::TooLong));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| err(SpiffeIdErrorReason::WrongScheme))?;
        // Query and fragment are reported as such wherever they appear.
        if rest.contains('?') {
            return Err(err(SpiffeIdErrorReason::Query));
        }
        if rest.contains('#') {
            return Err(err(SpiffeIdErrorReason::Fragment));
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        if td.is_empty() {
            return Err(err(SpiffeIdErrorReason::MissingTrustDomain));
        }
        validate_trust_domain(td).map_err(err)?;
        validate_path(path).map_err(err)?;
        Ok(Self {
            id: input.into(),
            path_start: SCHEME.len() + td_len,
        })
    }

    /// The full ID, `spiffe://example.org/ns/prod/sa/web`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain's name, `example.org`.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, `/ns/prod/sa/web` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The identity a peer must present: one exact SPIFFE ID, or any ID of a trust
/// domain.
///
/// Parsed from `spiffe://example.org/ns/prod/sa/api` (exact) or from
/// `example.org` / `spiffe://example.org` (any ID in that trust domain).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExpectedIdentity {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID in this trust domain.
    TrustDomain(TrustDomain),
}

impl ExpectedIdentity {
    /// Whether `presented` satisfies this expectation.
    pub fn matches(&self, presented: &SpiffeId) -> bool {
        match self {
            Self::Exact(id) => id == presented,
            Self::TrustDomain(td) => td.as_str() == presented.trust_domain_name(),
        }
    }

    /// The trust domain the expected peer belongs to.
    pub fn trust_domain_name(&self) -> &str {
        match self {
            Self::Exact(id) => id.trust_domain_name(),
            Self::TrustDomain(td) => td.as_str(),
        }
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::TrustDomain(td) => write!(f, "any ID in trust domain {td}"),
        }
    }
}

impl FromStr for ExpectedIdentity {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(SCHEME) {
            Some(rest) if rest.contains('/') => SpiffeId::new(s).map(Self::Exact),
            _ => TrustDomain::new(s).map(Self::TrustDomain),
        }
    }
}

impl From<SpiffeId> for ExpectedIdentity {
    fn from(id: SpiffeId) -> Self {
        Self::Exact(id)
    }
}

impl From<TrustDomain> for ExpectedIdentity {
    fn from(td: TrustDomain) -> Self {
        Self::TrustDomain(td)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdErrorReason> {
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdErrorReason::TrustDomainTooLong);
    }
    if td.contains('@') {
        return Err(SpiffeIdErrorReason::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdErrorReason::Port);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdErrorReason::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdErrorReason> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty prefix.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(SpiffeIdErrorReason::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdErrorReason::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdErrorReason::PathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> SpiffeIdErrorReason {
        SpiffeId::new(input).unwrap_err().reason().clone()
    }

    #[test]
    fn valid_ids_parse_into_trust_domain_and_path() {
        let id = SpiffeId::new("spiffe://example.org/ns/prod/sa/web-1_x.y").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web-1_x.y");
        assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
        let root = SpiffeId::new("spiffe://my_domain-1.test").unwrap();
        assert_eq!(root.path(), "");
    }

    #[test]
    fn invalid_ids_are_rejected_with_the_broken_rule() {
        use SpiffeIdErrorReason as R;
        assert_eq!(reason(""), R::Empty);
        assert_eq!(reason("http://example.org/a"), R::WrongScheme);
        assert_eq!(reason("SPIFFE://example.org/a"), R::WrongScheme);
        assert_eq!(reason("spiffe:///a"), R::MissingTrustDomain);
        assert_eq!(reason("spiffe://Example.org/a"), R::TrustDomainChar('E'));
        assert_eq!(reason("spiffe://example.org:443/a"), R::Port);
        assert_eq!(reason("spiffe://user@example.org/a"), R::UserInfo);
        assert_eq!(reason("spiffe://example.org/a?x=1"), R::Query);
        assert_eq!(reason("spiffe://example.org/a#f"), R::Fragment);
        assert_eq!(reason("spiffe://example.org/a//b"), R::EmptySegment);
        assert_eq!(reason("spiffe://example.org/a/"), R::EmptySegment);
        assert_eq!(reason("spiffe://example.org/a/../b"), R::DotSegment);
        assert_eq!(reason("spiffe://example.org/./b"), R::DotSegment);
        assert_eq!(reason("spiffe://example.org/a%2fb"), R::PathChar('%'));
        assert_eq!(
            reason("spiffe://example.org/caf\u{e9}"),
            R::PathChar('\u{e9}')
        );
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(reason(&long), R::TooLong);
    }

    #[test]
    fn error_message_names_input_and_rule() {
        let msg = SpiffeId::new("spiffe://example.org/a/../b")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("spiffe://example.org/a/../b"), "{msg}");
        assert!(msg.contains("'.' or '..'"), "{msg}");
    }

    #[test]
    fn expected_identity_parses_exact_ids_and_trust_domains() {
        let id = SpiffeId::new("spiffe://example.org/api").unwrap();
        let other = SpiffeId::new("spiffe://example.org/web").unwrap();
        let foreign = SpiffeId::new("spiffe://other.org/api").unwrap();

        let exact: ExpectedIdentity = "spiffe://example.org/api".parse().unwrap();
        assert!(exact.matches(&id));
        assert!(!exact.matches(&other));

        for domain in ["example.org", "spiffe://example.org"] {
            let td: ExpectedIdentity = domain.parse().unwrap();
            assert!(td.matches(&id) && td.matches(&other), "{domain}");
            assert!(!td.matches(&foreign), "{domain}");
        }
        assert!("Example.org".parse::<ExpectedIdentity>().is_err());
        assert!("".parse::<ExpectedIdentity>().is_err());
    }
}
