//! Types the `[[services.<name>.routes]]` tables of the config file: what each
//! route matches, and the settings it overrides (parsed as the service's own).

use http::Method;

use super::error::Problem;
use super::raw::{Entry, RawRoute};
use super::value;
use crate::fault::{parse_abort, parse_delay};
use crate::retry::{parse_hedge_delay, parse_max_attempts, MethodSet, RetryBackoff, RetryOn};
use crate::route::{PathMatch, RouteConfig, RouteMatch, RouteOverrides};

/// The routes of one service, in file order; a bad route is reported and left out.
pub(crate) fn file_routes(raw: &[RawRoute], problems: &mut Vec<Problem>) -> Vec<RouteConfig> {
    raw.iter()
        .filter_map(|route| file_route(route, problems))
        .collect()
}

fn file_route(raw: &RawRoute, problems: &mut Vec<Problem>) -> Option<RouteConfig> {
    let before = problems.len();
    let field = |key: &str| raw.matching.get(key);
    let methods = field("methods").and_then(|e| {
        typed(e, problems, |v| {
            value::list(v)
                .iter()
                .map(|m| method(m))
                .collect::<Result<Vec<_>, _>>()
        })
    });
    let path = match (field("path"), field("path_prefix")) {
        (Some(_), Some(prefix)) => {
            problems.push(Problem::other(
                prefix.origin.clone(),
                "a route matches a `path` or a `path_prefix`, not both",
            ));
            None
        }
        (Some(exact), None) => typed(exact, problems, absolute_path).map(PathMatch::Exact),
        (None, Some(prefix)) => typed(prefix, problems, absolute_path).map(PathMatch::Prefix),
        (None, None) => Some(PathMatch::Any),
    };
    let name = field("name")
        .map(|e| e.value.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| match &path {
            Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) => Some(p.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "*".to_string());

    let mut o = RouteOverrides::default();
    let setting = |name: &str| raw.settings.get(name);
    if let Some(e) = setting("TIMEOUT") {
        o.timeout = typed(e, problems, value::optional_duration);
    }
    if let Some(e) = setting("PER_TRY_TIMEOUT") {
        o.per_try_timeout = typed(e, problems, value::optional_duration);
    }
    if let Some(e) = setting("RETRY_MAX_ATTEMPTS") {
        o.max_attempts = typed(e, problems, parse_max_attempts);
    }
    if let Some(e) = setting("RETRY_ON") {
        o.retry_on = typed(e, problems, str::parse::<RetryOn>);
    }
    if let Some(e) = setting("RETRY_METHODS") {
        o.retry_methods = typed(e, problems, str::parse::<MethodSet>);
    }
    if let Some(e) = setting("RETRY_BACKOFF") {
        o.backoff = typed(e, problems, str::parse::<RetryBackoff>);
    }
    if let Some(e) = setting("HEDGE_DELAY") {
        o.hedge_delay = typed(e, problems, parse_hedge_delay);
    }
    if let Some(e) = setting("FAULT_DELAY") {
        o.fault_delay = typed(e, problems, parse_delay);
    }
    if let Some(e) = setting("FAULT_ABORT") {
        o.fault_abort = typed(e, problems, parse_abort);
    }
    if problems.len() > before {
        return None;
    }
    let mut route = RouteConfig::new(
        name,
        RouteMatch {
            methods,
            path: path?,
        },
    );
    route.overrides = o;
    Some(route)
}

/// Parses an entry, recording a problem naming its key when it does not parse.
fn typed<T, E: std::fmt::Display>(
    entry: &Entry,
    problems: &mut Vec<Problem>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<T> {
    match parse(entry.value.trim()) {
        Ok(v) => Some(v),
        Err(expected) => {
            problems.push(Problem::invalid(
                entry.origin.clone(),
                &entry.value,
                expected.to_string(),
            ));
            None
        }
    }
}

fn method(m: &str) -> Result<Method, &'static str> {
    const EXPECTED: &str = "a comma-separated list of HTTP methods such as GET,POST";
    match m.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "HEAD" => Ok(Method::HEAD),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "DELETE" => Ok(Method::DELETE),
        "PATCH" => Ok(Method::PATCH),
        "OPTIONS" => Ok(Method::OPTIONS),
        "TRACE" => Ok(Method::TRACE),
        "CONNECT" => Ok(Method::CONNECT),
        _ => Err(EXPECTED),
    }
}

fn absolute_path(p: &str) -> Result<String, &'static str> {
    if p.starts_with('/') && !p.contains(['?', '#', ' ']) {
        Ok(p.to_string())
    } else {
        Err("a path starting with `/`, without query, such as /pay or /pkg.Service/")
    }
}
