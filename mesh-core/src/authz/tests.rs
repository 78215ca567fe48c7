use std::collections::HashMap;
use std::sync::Arc;

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, Unit};

use super::*;

/// Counter totals by `outcome/reason/rule`.
#[derive(Default, Clone)]
struct Counts(Arc<Mutex<HashMap<String, u64>>>);

struct Cell(Arc<Mutex<HashMap<String, u64>>>, String);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        *self.0.lock().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().insert(self.1.clone(), value);
    }
}

impl Recorder for Counts {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        assert_eq!(key.name(), metric_names::AUTHZ_DECISIONS.name);
        let get = |k: &str| {
            key.labels()
                .find(|l| l.key() == k)
                .unwrap()
                .value()
                .to_string()
        };
        let id = format!(
            "{}/{}/{}",
            get(label::OUTCOME),
            get(label::REASON),
            get(label::RULE)
        );
        Counter::from_arc(Arc::new(Cell(self.0.clone(), id)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counts {
    fn get(&self, id: &str) -> u64 {
        self.0.lock().get(id).copied().unwrap_or(0)
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

const RULES: &str =
    "deny * * /admin/*; allow spiffe://example.org/ns/prod/* GET,HEAD /api/*; allow * GET /health";

#[test]
fn first_matching_rule_decides_and_default_deny_refuses_the_rest() {
    let policy = Policy::parse(Mode::Deny, RULES).unwrap();
    let web = id("spiffe://example.org/ns/prod/sa/web");
    let dev = id("spiffe://example.org/ns/dev/sa/web");
    let allowed = policy.authorize(Some(&web), &Method::GET, "/api/users");
    assert!(matches!(
        allowed,
        Verdict::Allow {
            by: DecidedBy::Rule(1),
            audited_deny: false,
            ..
        }
    ));
    assert_eq!(
        policy.authorize(Some(&web), &Method::GET, "/admin/users"),
        Verdict::Deny {
            by: DecidedBy::Rule(0)
        }
    );
    assert_eq!(
        policy.authorize(Some(&dev), &Method::GET, "/api/users"),
        Verdict::Deny {
            by: DecidedBy::Default
        }
    );
    assert_eq!(
        policy.authorize(Some(&web), &Method::POST, "/api/users"),
        Verdict::Deny {
            by: DecidedBy::Default
        }
    );
    assert!(matches!(
        policy.authorize(None, &Method::GET, "/health"),
        Verdict::Allow { .. }
    ));
}

#[test]
fn encoded_and_dot_segment_paths_do_not_bypass_a_deny_rule() {
    let policy = Policy::parse(Mode::Allow, "deny * * /admin/*").unwrap();
    let web = id("spiffe://example.org/ns/prod/sa/web");
    for path in [
        "/%61dmin",
        "/api/../admin/x",
        "//admin",
        "/./admin",
        "/api/%2e%2e/admin",
        "/%61%64%6D%69%6E/",
    ] {
        assert_eq!(
            policy.authorize(Some(&web), &Method::GET, path),
            Verdict::Deny {
                by: DecidedBy::Rule(0)
            },
            "{path}"
        );
    }
    for (path, error) in [
        ("/admin%2Fx", PathError::EncodedSeparator),
        ("/api%2F..%2Fadmin", PathError::EncodedSeparator),
        ("/../admin", PathError::AboveRoot),
    ] {
        assert_eq!(
            policy.authorize(Some(&web), &Method::GET, path),
            Verdict::BadPath(error),
            "{path}"
        );
    }
}

#[test]
fn allowed_requests_carry_the_canonical_path_to_serve() {
    let policy = Policy::parse(Mode::Allow, "").unwrap();
    let Verdict::Allow { path, .. } = policy.authorize(None, &Method::GET, "/api//v1/./x") else {
        panic!("allow mode refused");
    };
    assert_eq!(path, "/api/v1/x");
}

#[test]
fn decisions_are_counted_by_outcome_reason_and_rule() {
    let counts = Counts::default();
    metrics::with_local_recorder(&counts, || {
        let policy = Policy::parse(Mode::Deny, RULES).unwrap();
        let web = id("spiffe://example.org/ns/prod/sa/web");
        policy.authorize(Some(&web), &Method::GET, "/api/x");
        policy.authorize(Some(&web), &Method::GET, "/admin");
        policy.authorize(Some(&web), &Method::GET, "/admin/y");
        policy.authorize(Some(&web), &Method::DELETE, "/api/x");
        policy.authorize(Some(&web), &Method::GET, "/x%2fy");
    });
    assert_eq!(counts.get("allow/rule/2"), 1);
    assert_eq!(counts.get("deny/rule/1"), 2);
    assert_eq!(counts.get("deny/default/none"), 1);
    assert_eq!(counts.get("deny/encoded_separator/none"), 1);
}

#[test]
fn audit_mode_allows_and_counts_what_deny_mode_would_refuse() {
    let counts = Counts::default();
    metrics::with_local_recorder(&counts, || {
        let policy = Policy::parse(Mode::Audit, RULES).unwrap();
        let dev = id("spiffe://example.org/ns/dev/sa/web");
        let by_rule = policy.authorize(Some(&dev), &Method::GET, "/admin/x");
        assert!(matches!(
            by_rule,
            Verdict::Allow {
                by: DecidedBy::Rule(0),
                audited_deny: true,
                ..
            }
        ));
        let by_default = policy.authorize(Some(&dev), &Method::GET, "/api/x");
        assert!(matches!(
            by_default,
            Verdict::Allow {
                by: DecidedBy::Default,
                audited_deny: true,
                ..
            }
        ));
        let allowed = policy.authorize(None, &Method::GET, "/health");
        assert!(matches!(
            allowed,
            Verdict::Allow {
                audited_deny: false,
                ..
            }
        ));
    });
    assert_eq!(counts.get("audit_deny/rule/1"), 1);
    assert_eq!(counts.get("audit_deny/default/none"), 1);
    assert_eq!(counts.get("allow/rule/3"), 1);
    assert_eq!(
        counts.get("deny/rule/1") + counts.get("deny/default/none"),
        0
    );
}

#[test]
fn refusals_are_logged_once_per_rule_and_peer() {
    let policy = Policy::parse(Mode::Deny, RULES).unwrap();
    let a = id("spiffe://example.org/a");
    let b = id("spiffe://example.org/b");
    for _ in 0..10 {
        policy.authorize(Some(&a), &Method::GET, "/admin");
        policy.authorize(Some(&b), &Method::GET, "/admin");
        policy.authorize(Some(&a), &Method::GET, "/nowhere");
    }
    assert_eq!(policy.logged.lock().len(), 3);
}
