//! Inbound authorization: which peers may call which methods on which paths.
//!
//! A [`Policy`] is an ordered list of [`Rule`]s and a [`Mode`]. The first rule
//! that matches the request (peer SPIFFE ID, method, canonical path) decides;
//! when none matches, the mode does:
//!
//! - [`Mode::Deny`] (the default once any rule is configured): refuse. Write
//!   `allow` rules for what may pass; `deny` rules carve exceptions out of
//!   broader allows when placed before them.
//! - [`Mode::Allow`]: let it through; only `deny` rules refuse.
//! - [`Mode::Audit`]: a dry run of `deny` mode for rolling a policy out.
//!   Everything passes, but what `deny` mode would refuse (by a deny rule or for
//!   want of an allow rule) is counted as `audit_deny` and logged.
//!
//! Why first match and not "deny wins": it reads like a firewall, top to bottom,
//! and a reader can tell what one request gets without reading every rule.
//!
//! Paths are matched in canonical form ([`path::normalize`]): encoded and
//! dot-segment spellings (`/%61dmin`, `/api/../admin`, `//admin`) are the same
//! path as `/admin`, and paths that cannot be made canonical safely (`%2F`,
//! `..` above the root) are refused before any rule is read.
//!
//! This module knows nothing of hyper: `mesh_http::server::AuthzLayer` applies a
//! policy to an inbound service.
//!
//! ```
//! use mesh_core::authz::{Mode, Policy, Verdict};
//!
//! let policy = Policy::parse(Mode::Deny, "allow spiffe://example.org/ns/prod/* GET /api/*")?;
//! let web = "spiffe://example.org/ns/prod/sa/web".parse().ok();
//! let verdict = policy.authorize(web.as_ref(), &http::Method::GET, "/api/../api/users");
//! assert!(matches!(verdict, Verdict::Allow { .. }));
//! let verdict = policy.authorize(web.as_ref(), &http::Method::GET, "/%61dmin");
//! assert!(matches!(verdict, Verdict::Deny { .. }));
//! # Ok::<(), mesh_core::authz::RuleError>(())
//! ```

pub mod path;
mod rule;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use http::Method;
use metrics::SharedString;
use parking_lot::Mutex;

pub use path::PathError;
pub use rule::{parse_action, Action, MethodMatch, PathMatch, PeerMatch, Rule, RuleError};

use crate::identity::SpiffeId;
use crate::metric_names::{self, label};

/// Distinct (rule, peer) pairs remembered for log-once; beyond it, refusals of
/// new pairs are counted but not logged, so a flood of distinct peers cannot
/// grow memory without bound.
const LOGGED_PAIRS_CAP: usize = 4096;

/// What happens to a request no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refuse it (403).
    #[default]
    Deny,
    /// Let it through.
    Allow,
    /// Let everything through, counting and logging what `Deny` would refuse.
    Audit,
}

impl Mode {
    /// Parses `deny`, `allow` or `audit`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text.trim() {
            "deny" => Ok(Mode::Deny),
            "allow" => Ok(Mode::Allow),
            "audit" => Ok(Mode::Audit),
            _ => Err("`deny`, `allow` or `audit`"),
        }
    }
}

/// Which rule (or the default) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The rule at this position (0-based) of the policy.
    Rule(usize),
    /// No rule matched; the mode decided.
    Default,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(i) => write!(f, "rule {}", i + 1),
            DecidedBy::Default => f.write_str("the default (no rule matched)"),
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Let it through. `path` is the canonical path the decision was made on:
    /// serve that one, so the rule and the router see the same path.
    Allow {
        /// Canonical path.
        path: Cow<'a, str>,
        /// What decided.
        by: DecidedBy,
        /// True in audit mode when deny mode would have refused it.
        audited_deny: bool,
    },
    /// Refuse it with 403.
    Deny {
        /// What decided.
        by: DecidedBy,
    },
    /// Refuse it with 400: the path cannot be made canonical safely.
    BadPath(PathError),
}

/// Authorization as configured (`MESH_AUTHZ_DEFAULT`, `MESH_AUTHZ_RULES` or the
/// file's `[[authz.rules]]`): the data a [`Policy`] is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzConfig {
    /// What happens when no rule matches.
    pub mode: Mode,
    /// Rules in the order they are tried.
    pub rules: Vec<Rule>,
}

impl AuthzConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy::new(self.mode, self.rules.clone())
    }
}

/// An ordered list of rules and a mode; see the [module docs](self).
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    rules: Vec<Rule>,
    /// Metric label of each rule (`"1"`, `"2"`…), shared so counting allocates nothing.
    rule_labels: Vec<SharedString>,
    logged: Mutex<HashSet<(DecidedBy, Option<SpiffeId>)>>,
}

impl Policy {
    /// A policy of `rules` in `mode`.
    pub fn new(mode: Mode, rules: Vec<Rule>) -> Self {
        let rule_labels = (1..=rules.len())
            .map(|i| SharedString::from(Arc::<str>::from(i.to_string())))
            .collect();
        Policy {
            mode,
            rules,
            rule_labels,
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// A policy from the `;`-separated text form (see [`Rule`]).
    pub fn parse(mode: Mode, rules: &str) -> Result<Self, RuleError> {
        Ok(Self::new(mode, Rule::parse_list(rules)?))
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides on a request, counts the decision (`mesh.authz.decisions`) and
    /// logs a refusal (or audited one) once per rule and peer. `peer` is `None`
    /// when the request has no verified identity; `raw_path` is the request's
    /// path as received, without the query.
    pub fn authorize<'p>(
        &self,
        peer: Option<&SpiffeId>,
        method: &Method,
        raw_path: &'p str,
    ) -> Verdict<'p> {
        let path = match path::normalize(raw_path) {
            Ok(path) => path,
            Err(error) => {
                self.count("deny", error.as_str(), None);
                tracing::debug!(%error, "authorization: refused a path that cannot be normalized safely");
                return Verdict::BadPath(error);
            }
        };
        let (action, by) = match self
            .rules
            .iter()
            .position(|r| r.matches(peer, method, &path))
        {
            Some(i) => (self.rules[i].action, DecidedBy::Rule(i)),
            None => match self.mode {
                Mode::Allow => (Action::Allow, DecidedBy::Default),
                Mode::Deny | Mode::Audit => (Action::Deny, DecidedBy::Default),
            },
        };
        let reason = match by {
            DecidedBy::Rule(_) => "rule",
            DecidedBy::Default => "default",
        };
        match (action, self.mode) {
            (Action::Allow, _) => {
                self.count("allow", reason, Some(by));
                Verdict::Allow {
                    path,
                    by,
                    audited_deny: false,
                }
            }
            (Action::Deny, Mode::Audit) => {
                self.count("audit_deny", reason, Some(by));
                self.log_once(by, peer, method, &path, true);
                Verdict::Allow {
                    path,
                    by,
                    audited_deny: true,
                }
            }
            (Action::Deny, _) => {
                self.count("deny", reason, Some(by));
                self.log_once(by, peer, method, &path, false);
                Verdict::Deny { by }
            }
        }
    }

    fn count(&self, outcome: &'static str, reason: &'static str, by: Option<DecidedBy>) {
        let rule = match by {
            Some(DecidedBy::Rule(i)) => self.rule_labels[i].clone(),
            _ => SharedString::const_str("none"),
        };
        metrics::counter!(
            metric_names::AUTHZ_DECISIONS.name,
            label::OUTCOME => outcome,
            label::REASON => reason,
            label::RULE => rule,
        )
        .increment(1);
    }

    /// Logs the first refusal of each (rule, peer): a refused client usually
    /// retries, and one line per request would drown the log.
    fn log_once(
        &self,
        by: DecidedBy,
        peer: Option<&SpiffeId>,
        method: &Method,
        path: &str,
        audit: bool,
    ) {
        {
            let mut logged = self.logged.lock();
            if logged.len() >= LOGGED_PAIRS_CAP || !logged.insert((by, peer.cloned())) {
                return;
            }
        }
        let peer = peer.map_or("(no identity)", SpiffeId::as_str);
        let rule = match by {
            DecidedBy::Rule(i) => self.rules[i].to_string(),
            DecidedBy::Default => "-".to_string(),
        };
        if audit {
            tracing::warn!(%peer, %method, %path, decided_by = %by, %rule, "authorization audit: deny mode would refuse this request (logged once per rule and peer)");
        } else {
            tracing::warn!(%peer, %method, %path, decided_by = %by, %rule, "authorization: request refused (logged once per rule and peer)");
        }
    }
}

#[cfg(test)]
mod tests;
