//! One authorization rule and its compact text form.
//!
//! ```text
//! <allow|deny> <peer> <methods> <path>
//! ```
//!
//! - `peer`: `*` (anyone, even a request without a peer identity),
//!   `spiffe://td/ns/prod/sa/web` (exactly this ID), `spiffe://td` or
//!   `spiffe://td/*` (any ID of trust domain `td`), `spiffe://td/ns/prod/*`
//!   (IDs under that path, segment by segment: `/ns/prod/x` but not `/ns/production`).
//! - `methods`: `*` or a comma-separated list, `GET,HEAD`.
//! - `path`: `*` (any), `/exact`, or `/prefix/*` (`/prefix` itself and everything
//!   under it, segment by segment). Rule paths are canonical (see
//!   [`path::normalize`](super::path::normalize)).
//!
//! Several rules are separated by `;` in `MESH_AUTHZ_RULES`.

use std::fmt;
use std::str::FromStr;

use http::Method;

use super::path;
use crate::identity::{SpiffeId, TrustDomain};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

impl Action {
    /// `allow` or `deny`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Which peers a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// Anyone, with or without an identity.
    Any,
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Any ID of this trust domain.
    TrustDomain(TrustDomain),
    /// IDs of `trust_domain` whose path is `prefix` or lies under it.
    PathPrefix {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// Path without the trailing `/*`, e.g. `/ns/prod`.
        prefix: String,
    },
}

impl PeerMatch {
    /// Whether a request from `peer` (`None`: no identity) is covered.
    pub fn matches(&self, peer: Option<&SpiffeId>) -> bool {
        match (self, peer) {
            (PeerMatch::Any, _) => true,
            (_, None) => false,
            (PeerMatch::Exact(id), Some(peer)) => id == peer,
            (PeerMatch::TrustDomain(td), Some(peer)) => td.as_str() == peer.trust_domain_name(),
            (
                PeerMatch::PathPrefix {
                    trust_domain,
                    prefix,
                },
                Some(peer),
            ) => {
                trust_domain.as_str() == peer.trust_domain_name()
                    && under_prefix(peer.path(), prefix)
            }
        }
    }
}

/// Which methods a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodMatch {
    /// Every method.
    Any,
    /// Only these.
    OneOf(Vec<Method>),
}

impl MethodMatch {
    /// Whether `method` is covered.
    pub fn matches(&self, method: &Method) -> bool {
        match self {
            MethodMatch::Any => true,
            MethodMatch::OneOf(list) => list.contains(method),
        }
    }
}

/// Which (canonical) paths a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This path and everything under it; stored without the trailing `/*`
    /// (empty for `/*`).
    Prefix(String),
}

impl PathMatch {
    /// Whether the canonical `path` is covered.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => exact == path,
            PathMatch::Prefix(prefix) => under_prefix(path, prefix),
        }
    }
}

/// `path` is `prefix` or lies under it, whole segments only.
fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One rule: an action for requests from some peers, with some methods, to some paths.
///
/// Its text form is `<action> <peer> <methods> <path>`:
///
/// - `action`: `allow` or `deny`;
/// - `peer`: `*` (anyone, even a request without a peer identity),
///   `spiffe://td/ns/prod/sa/web` (exactly this ID), `spiffe://td` or
///   `spiffe://td/*` (any ID of trust domain `td`), `spiffe://td/ns/prod/*`
///   (IDs under that path, segment by segment: `/ns/prod/x` but not `/ns/production`);
/// - `methods`: `*` or a comma-separated list, `GET,HEAD`;
/// - `path`: `*` (any), `/exact`, or `/prefix/*` (`/prefix` itself and everything
///   under it, segment by segment), written in canonical form (see
///   [`normalize`](super::path::normalize)).
///
/// Several rules are separated by `;` ([`Rule::parse_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What a match does.
    pub action: Action,
    /// Peers covered.
    pub peer: PeerMatch,
    /// Methods covered.
    pub methods: MethodMatch,
    /// Paths covered.
    pub path: PathMatch,
    /// The rule as written, for logs and start-up messages.
    text: String,
}

impl Rule {
    /// Builds a rule from its four parts (`peer`, `methods` and `path` in the
    /// text form described on [`Rule`]).
    pub fn new(action: Action, peer: &str, methods: &str, path: &str) -> Result<Self, RuleError> {
        let peer = parse_peer(peer)?;
        let methods = parse_methods(methods)?;
        let path_match = parse_path(path)?;
        let text = format!(
            "{} {} {} {}",
            action.as_str(),
            peer_text(&peer),
            methods_text(&methods),
            path_text(&path_match)
        );
        Ok(Rule {
            action,
            peer,
            methods,
            path: path_match,
            text,
        })
    }

    /// Whether the rule covers this request (`path` canonical).
    pub fn matches(&self, peer: Option<&SpiffeId>, method: &Method, path: &str) -> bool {
        self.peer.matches(peer) && self.methods.matches(method) && self.path.matches(path)
    }

    /// Parses a list of rules separated by `;` (empty parts are skipped).
    pub fn parse_list(text: &str) -> Result<Vec<Rule>, RuleError> {
        text.split(';')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [action, peer, methods, path] = parts.as_slice() else {
            return Err(RuleError::new(
                text,
                "a rule has four parts: `<allow|deny> <peer> <methods> <path>`, e.g. `allow spiffe://example.org/web GET,HEAD /api/*`",
            ));
        };
        Rule::new(parse_action(action)?, peer, methods, path)
    }
}

/// A rule that does not parse: the offending part and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{part}`: {expected}")]
pub struct RuleError {
    part: String,
    expected: String,
}

impl RuleError {
    fn new(part: &str, expected: impl Into<String>) -> Self {
        RuleError {
            part: part.to_string(),
            expected: expected.into(),
        }
    }

    /// The part of the rule that is wrong.
    pub fn part(&self) -> &str {
        &self.part
    }
}

/// Parses `allow` or `deny`.
pub fn parse_action(text: &str) -> Result<Action, RuleError> {
    match text {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(RuleError::new(text, "the action is `allow` or `deny`")),
    }
}

fn parse_peer(text: &str) -> Result<PeerMatch, RuleError> {
    const EXPECTED: &str = "the peer is `*`, a SPIFFE ID, a trust domain (`spiffe://td` or `spiffe://td/*`) or an ID path prefix (`spiffe://td/ns/prod/*`)";
    if text == "*" {
        return Ok(PeerMatch::Any);
    }
    if !text.starts_with("spiffe://") {
        return Err(RuleError::new(text, EXPECTED));
    }
    let bad = |e: &dyn fmt::Display| RuleError::new(text, format!("{EXPECTED}; {e}"));
    if let Some(prefix) = text.strip_suffix("/*") {
        return match SpiffeId::new(prefix) {
            Ok(id) if id.path().is_empty() => Ok(PeerMatch::TrustDomain(id.trust_domain())),
            Ok(id) => Ok(PeerMatch::PathPrefix {
                trust_domain: id.trust_domain(),
                prefix: id.path().to_string(),
            }),
            Err(e) => Err(bad(&e)),
        };
    }
    if text.contains('*') {
        return Err(RuleError::new(
            text,
            format!("{EXPECTED}; `*` may only end it, as `/*`"),
        ));
    }
    match SpiffeId::new(text) {
        Ok(id) if id.path().is_empty() => Ok(PeerMatch::TrustDomain(id.trust_domain())),
        Ok(id) => Ok(PeerMatch::Exact(id)),
        Err(e) => Err(bad(&e)),
    }
}

fn parse_methods(text: &str) -> Result<MethodMatch, RuleError> {
    if text == "*" {
        return Ok(MethodMatch::Any);
    }
    let mut list = Vec::new();
    for name in text.split(',') {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase());
        let method = valid
            .then(|| Method::from_bytes(name.as_bytes()).ok())
            .flatten();
        match method {
            Some(m) => list.push(m),
            None => {
                return Err(RuleError::new(
                    name,
                    "methods are `*` or upper-case names separated by commas, e.g. `GET,HEAD`",
                ))
            }
        }
    }
    Ok(MethodMatch::OneOf(list))
}

fn parse_path(text: &str) -> Result<PathMatch, RuleError> {
    if text == "*" {
        return Ok(PathMatch::Any);
    }
    let (base, prefix) = match text.strip_suffix("/*") {
        Some(base) => (if base.is_empty() { "/" } else { base }, true),
        None => (text, false),
    };
    if base.contains('*') {
        return Err(RuleError::new(
            text,
            "`*` may only end a path, as `/prefix/*`",
        ));
    }
    let canonical = path::normalize(base).map_err(|e| {
        RuleError::new(
            text,
            format!("the path is `*`, `/exact` or `/prefix/*`, and {e}"),
        )
    })?;
    if canonical != base {
        return Err(RuleError::new(
            text,
            format!("write the path in canonical form, `{canonical}`: requests are matched after normalization"),
        ));
    }
    Ok(if prefix {
        PathMatch::Prefix(base.trim_end_matches('/').to_string())
    } else {
        PathMatch::Exact(base.to_string())
    })
}

fn peer_text(peer: &PeerMatch) -> String {
    match peer {
        PeerMatch::Any => "*".into(),
        PeerMatch::Exact(id) => id.to_string(),
        PeerMatch::TrustDomain(td) => format!("{}/*", td.id_string()),
        PeerMatch::PathPrefix {
            trust_domain,
            prefix,
        } => format!("{}{prefix}/*", trust_domain.id_string()),
    }
}

fn methods_text(methods: &MethodMatch) -> String {
    match methods {
        MethodMatch::Any => "*".into(),
        MethodMatch::OneOf(list) => list
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn path_text(path: &PathMatch) -> String {
    match path {
        PathMatch::Any => "*".into(),
        PathMatch::Exact(p) => p.clone(),
        PathMatch::Prefix(p) => format!("{p}/*"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn peer_forms_match_what_they_say() {
        let web = id("spiffe://example.org/ns/prod/sa/web");
        let other_ns = id("spiffe://example.org/ns/production/sa/web");
        let foreign = id("spiffe://other.org/ns/prod/sa/web");
        let exact = parse_peer("spiffe://example.org/ns/prod/sa/web").unwrap();
        let domain = parse_peer("spiffe://example.org").unwrap();
        let domain_star = parse_peer("spiffe://example.org/*").unwrap();
        let prefix = parse_peer("spiffe://example.org/ns/prod/*").unwrap();
        assert!(exact.matches(Some(&web)) && !exact.matches(Some(&other_ns)));
        assert_eq!(domain, domain_star);
        assert!(domain.matches(Some(&web)) && !domain.matches(Some(&foreign)));
        assert!(prefix.matches(Some(&web)));
        assert!(
            !prefix.matches(Some(&other_ns)),
            "prefixes match whole segments"
        );
        assert!(!prefix.matches(Some(&foreign)));
        assert!(!exact.matches(None) && PeerMatch::Any.matches(None));
    }

    #[test]
    fn path_prefix_matches_whole_segments() {
        let admin = parse_path("/admin/*").unwrap();
        assert!(admin.matches("/admin") && admin.matches("/admin/") && admin.matches("/admin/x"));
        assert!(!admin.matches("/administrator"));
        assert!(parse_path("/*").unwrap().matches("/anything"));
        assert!(parse_path("/health").unwrap().matches("/health"));
        assert!(!parse_path("/health").unwrap().matches("/health/x"));
    }

    #[test]
    fn a_rule_round_trips_through_its_text() {
        let rule: Rule = "allow  spiffe://example.org/web GET,HEAD /api/*"
            .parse()
            .unwrap();
        assert_eq!(
            rule.to_string(),
            "allow spiffe://example.org/web GET,HEAD /api/*"
        );
        assert!(rule.matches(
            Some(&id("spiffe://example.org/web")),
            &Method::HEAD,
            "/api/x"
        ));
        assert!(!rule.matches(
            Some(&id("spiffe://example.org/web")),
            &Method::POST,
            "/api/x"
        ));
    }

    #[test]
    fn bad_rules_name_the_offending_part() {
        let cases = [
            ("permit * * /", "permit"),
            ("allow * get /", "get"),
            ("allow * GET,,HEAD /", ""),
            ("allow web * /", "web"),
            ("allow spiffe://Example.org/x * /", "spiffe://Example.org/x"),
            ("allow spiffe://td/a*b * /", "spiffe://td/a*b"),
            ("allow * * /api/../admin", "/api/../admin"),
            ("allow * * /a*/b", "/a*/b"),
            ("allow * * admin", "admin"),
            ("allow * *", "allow * *"),
        ];
        for (text, part) in cases {
            let err = text.parse::<Rule>().unwrap_err();
            assert_eq!(err.part(), part, "{text}: {err}");
        }
    }

    #[test]
    fn a_list_is_split_on_semicolons() {
        let rules = Rule::parse_list("allow * GET /health; deny * * /admin/*;").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].action, Action::Deny);
    }
}
