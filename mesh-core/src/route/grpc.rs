//! gRPC service config JSON (the format gRPC users know: gRFC A2, A6), parsed at
//! start-up with errors that point at the field, and mapped onto the mesh's own
//! policies (`MESH_SERVICE_<NAME>_GRPC_SERVICE_CONFIG`, or `grpc_service_config`
//! in `MESH_CONFIG_FILE`).
//!
//! How each part maps:
//!
//! | service config | mesh |
//! |---|---|
//! | `methodConfig[].name` `{service, method}` | a route on path `/<service>/<method>` |
//! | `name` `{service}` | a route on the prefix `/<service>/` |
//! | `name` `{}` | a route matching every call of the service |
//! | `timeout` | the route's `TIMEOUT` (a shorter deadline the caller sets still wins) |
//! | `retryPolicy.maxAttempts` | `RETRY_MAX_ATTEMPTS` (2 or more; above 5 clamped to 5, as gRPC does) |
//! | `initialBackoff`, `maxBackoff`, `backoffMultiplier` | `RETRY_BACKOFF` (full jitter, as gRPC) |
//! | `retryableStatusCodes` | the gRPC codes in the route's `RETRY_ON` (replacing `unavailable`) |
//! | `hedgingPolicy.hedgingDelay`, `maxAttempts` | `HEDGE_DELAY`, `RETRY_MAX_ATTEMPTS` (at most one hedge in flight) |
//! | `hedgingPolicy.nonFatalStatusCodes` | the gRPC codes in the route's `RETRY_ON` |
//! | `retryThrottling` | the service's retry budget: `RETRY_BUDGET` = `tokenRatio` (at most 100%), `RETRY_MIN_PER_SECOND` = `maxTokens / 2`, unless those are set |
//! | `loadBalancingConfig` | the first of `round_robin` (`round-robin`) and `least_request_experimental` (`least-request`) listed sets `BALANCER` unless it is set; others, such as `pick_first`, are ignored with a warning |
//! | `waitForReady`, `healthCheckConfig` | parsed, not applied (a warning says so): the mesh always waits `QUEUE_TIMEOUT` for a ready endpoint |
//!
//! Precedence follows gRPC: a method's own entry, then its service's, then the
//! default (`{}`), whatever their order in the document. These routes come after
//! the routes of the configuration file. A method entry without `retryPolicy` or
//! `hedgingPolicy` keeps the service's retries (in gRPC it would have none): the
//! mesh retries `UNAVAILABLE` within its budget by default.
//!
//! gRPC's `retryThrottling` is a token bucket (each failure takes a token, each
//! success gives back `tokenRatio`, retries stop while half the tokens are gone);
//! the mesh's budget instead lets retries be a share of recent requests, which is
//! what the bucket converges to: retries stay possible while failures are no
//! more than about `tokenRatio` of the successes. The bucket's head room of
//! `maxTokens / 2` failures becomes the per-second floor.

use std::time::Duration;

use serde_json::Value;

use super::{PathMatch, RouteConfig, RouteMatch};
use crate::balance::BalancerKind;
use crate::classify::{GrpcCode, GrpcCodes};
use crate::retry::{HedgeDelay, RetryBackoff, RetryOn, MAX_ATTEMPTS_CAP};

/// A parsed gRPC service config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcServiceConfig {
    /// The `methodConfig` entries, in order.
    pub method_configs: Vec<MethodConfig>,
    /// `retryThrottling`, when present.
    pub retry_throttling: Option<RetryThrottling>,
    /// The balancer `loadBalancingConfig` (or the older `loadBalancingPolicy`)
    /// chose, when it names one the mesh has.
    pub balancer: Option<BalancerKind>,
    /// Parts read but not applied, each with why (logged as warnings at start-up).
    pub ignored: Vec<String>,
}

/// One `methodConfig` entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MethodConfig {
    /// The `name`s it applies to: (`service`, `method`); an empty service is every
    /// service, a missing method every method of the service.
    pub names: Vec<(String, Option<String>)>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `retryPolicy`.
    pub retry: Option<GrpcRetryPolicy>,
    /// `hedgingPolicy`.
    pub hedging: Option<GrpcHedgingPolicy>,
    /// `waitForReady` (read, not applied).
    pub wait_for_ready: Option<bool>,
}

/// A `retryPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcRetryPolicy {
    /// `maxAttempts`, clamped to 5 as gRPC does.
    pub max_attempts: u32,
    /// `initialBackoff`, `maxBackoff` and `backoffMultiplier`.
    pub backoff: RetryBackoff,
    /// `retryableStatusCodes`.
    pub retryable_codes: GrpcCodes,
}

/// A `hedgingPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcHedgingPolicy {
    /// `maxAttempts`, clamped to 5.
    pub max_attempts: u32,
    /// `hedgingDelay` (0 when absent).
    pub delay: Duration,
    /// `nonFatalStatusCodes`: answers that let another attempt win.
    pub non_fatal_codes: GrpcCodes,
}

/// `retryThrottling` (gRFC A6 token bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryThrottling {
    /// `maxTokens`, 1..=1000.
    pub max_tokens: u32,
    /// `tokenRatio`, above 0.
    pub token_ratio: f64,
}

/// An invalid service config: where (a JSON path such as
/// `methodConfig[0].retryPolicy.maxAttempts`) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfigError {
    path: String,
    message: String,
}

impl ServiceConfigError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The JSON path of the offending field.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl std::fmt::Display for ServiceConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gRPC service config: `{}`: {}", self.path, self.message)
    }
}

impl std::error::Error for ServiceConfigError {}

type Result<T> = std::result::Result<T, ServiceConfigError>;

impl GrpcServiceConfig {
    /// Parses a service config document.
    pub fn from_json(text: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| ServiceConfigError::at("$", format!("not valid JSON ({e})")))?;
        let root = doc
            .as_object()
            .ok_or_else(|| ServiceConfigError::at("$", "expected a JSON object"))?;
        let mut config = GrpcServiceConfig::default();
        if let Some(list) = root.get("methodConfig") {
            let list = list
                .as_array()
                .ok_or_else(|| ServiceConfigError::at("methodConfig", "expected an array"))?;
            for (i, entry) in list.iter().enumerate() {
                config
                    .method_configs
                    .push(method_config(&format!("methodConfig[{i}]"), entry)?);
            }
        }
        config.check_duplicate_names()?;
        if let Some(t) = root.get("retryThrottling") {
            config.retry_throttling = Some(throttling(t)?);
        }
        if let Some(lb) = root.get("loadBalancingConfig") {
            config.balancer = load_balancing(lb, &mut config.ignored)?;
        } else if let Some(lb) = root.get("loadBalancingPolicy") {
            let name = lb.as_str().ok_or_else(|| {
                ServiceConfigError::at("loadBalancingPolicy", "expected a string")
            })?;
            config.balancer = balancer_named(&name.to_ascii_lowercase(), &mut config.ignored);
        }
        if root.contains_key("healthCheckConfig") {
            object("healthCheckConfig", &root["healthCheckConfig"])?;
            config.ignored.push(
                "`healthCheckConfig` is not applied: the mesh does not run gRPC health checks from a service config".into(),
            );
        }
        if config
            .method_configs
            .iter()
            .any(|m| m.wait_for_ready.is_some())
        {
            config.ignored.push("`waitForReady` is not applied: the mesh always waits up to QUEUE_TIMEOUT for a ready endpoint".into());
        }
        Ok(config)
    }

    /// The entry that applies to `method` of `service` (gRPC's precedence: the
    /// exact method, then the whole service, then the default with an empty name).
    pub fn for_method(&self, service: &str, method: &str) -> Option<&MethodConfig> {
        let find = |svc: &str, meth: Option<&str>| {
            self.method_configs.iter().find(|m| {
                m.names
                    .iter()
                    .any(|(s, m)| s == svc && m.as_deref() == meth)
            })
        };
        find(service, Some(method))
            .or_else(|| find(service, None))
            .or_else(|| find("", None))
    }

    /// The routes the `methodConfig` entries make, most specific first (methods,
    /// then services, then the default), so the first match is gRPC's choice.
    /// `retry_on` is the service's: its HTTP conditions are kept, its gRPC codes
    /// replaced by a policy's.
    pub fn routes(&self, retry_on: RetryOn) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        // Three passes keep gRPC's precedence whatever the document's order.
        for rank in 0..3 {
            for m in &self.method_configs {
                for (service, method) in &m.names {
                    let (name, path) = match (service.as_str(), method) {
                        (s, Some(method)) if rank == 0 => {
                            let p = format!("/{s}/{method}");
                            (p.clone(), PathMatch::Exact(p))
                        }
                        ("", None) if rank == 2 => ("grpc-default".to_string(), PathMatch::Any),
                        (s, None) if rank == 1 && !s.is_empty() => {
                            let p = format!("/{s}/");
                            (p.clone(), PathMatch::Prefix(p))
                        }
                        _ => continue,
                    };
                    let mut route = RouteConfig::new(
                        name,
                        RouteMatch {
                            methods: None,
                            path,
                        },
                    );
                    m.apply(&mut route, retry_on);
                    routes.push(route);
                }
            }
        }
        routes
    }

    fn check_duplicate_names(&self) -> Result<()> {
        let mut seen: Vec<&(String, Option<String>)> = Vec::new();
        for (i, m) in self.method_configs.iter().enumerate() {
            for (j, name) in m.names.iter().enumerate() {
                if seen.contains(&name) {
                    return Err(ServiceConfigError::at(
                        format!("methodConfig[{i}].name[{j}]"),
                        "this name already appears in an earlier methodConfig (gRPC allows each name once)",
                    ));
                }
                seen.push(name);
            }
        }
        Ok(())
    }
}

impl MethodConfig {
    fn apply(&self, route: &mut RouteConfig, retry_on: RetryOn) {
        let o = &mut route.overrides;
        if let Some(timeout) = self.timeout {
            o.timeout = Some(Some(timeout));
        }
        if let Some(r) = &self.retry {
            o.max_attempts = Some(r.max_attempts);
            o.backoff = Some(r.backoff);
            o.retry_on = Some(retry_on.with_grpc_codes(r.retryable_codes));
            o.hedge_delay = Some(None);
        }
        if let Some(h) = &self.hedging {
            o.max_attempts = Some(h.max_attempts);
            o.hedge_delay = Some(Some(HedgeDelay::Fixed(h.delay)));
            o.retry_on = Some(retry_on.with_grpc_codes(h.non_fatal_codes));
        }
    }
}

fn object<'a>(path: &str, v: &'a Value) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| ServiceConfigError::at(path, "expected a JSON object"))
}

fn method_config(path: &str, v: &Value) -> Result<MethodConfig> {
    let o = object(path, v)?;
    let mut m = MethodConfig::default();
    let names = o
        .get("name")
        .ok_or_else(|| {
            ServiceConfigError::at(
                format!("{path}.name"),
                "is required (`[{}]` for every method)",
            )
        })?
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ServiceConfigError::at(format!("{path}.name"), "expected a non-empty array")
        })?;
    for (i, n) in names.iter().enumerate() {
        let p = format!("{path}.name[{i}]");
        let n = object(&p, n)?;
        let text = |key: &str| -> Result<Option<String>> {
            match n.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ServiceConfigError::at(
                    format!("{p}.{key}"),
                    "expected a string",
                )),
            }
        };
        let service = text("service")?.unwrap_or_default();
        let method = text("method")?.filter(|m| !m.is_empty());
        if service.is_empty() && method.is_some() {
            return Err(ServiceConfigError::at(
                format!("{p}.method"),
                "a method needs its service",
            ));
        }
        if service.contains('/') || method.as_deref().is_some_and(|m| m.contains('/')) {
            return Err(ServiceConfigError::at(
                p,
                "names hold no `/`: `{\"service\": \"pkg.Service\", \"method\": \"Method\"}`",
            ));
        }
        m.names.push((service, method));
    }
    if let Some(t) = o.get("timeout") {
        m.timeout = Some(duration(&format!("{path}.timeout"), t)?);
    }
    if let Some(r) = o.get("retryPolicy") {
        m.retry = Some(retry_policy(&format!("{path}.retryPolicy"), r)?);
    }
    if let Some(h) = o.get("hedgingPolicy") {
        if m.retry.is_some() {
            return Err(ServiceConfigError::at(
                format!("{path}.hedgingPolicy"),
                "a methodConfig has a retryPolicy or a hedgingPolicy, not both",
            ));
        }
        m.hedging = Some(hedging_policy(&format!("{path}.hedgingPolicy"), h)?);
    }
    if let Some(w) = o.get("waitForReady") {
        m.wait_for_ready = Some(w.as_bool().ok_or_else(|| {
            ServiceConfigError::at(format!("{path}.waitForReady"), "expected true or false")
        })?);
    }
    Ok(m)
}

/// `maxAttempts`: 2 or more, clamped to gRPC's cap of 5.
fn max_attempts(path: &str, o: &serde_json::Map<String, Value>, what: &str) -> Result<u32> {
    let p = format!("{path}.maxAttempts");
    let n = o
        .get("maxAttempts")
        .ok_or_else(|| ServiceConfigError::at(&p, "is required"))?
        .as_u64()
        .ok_or_else(|| ServiceConfigError::at(&p, "expected a whole number"))?;
    if n < 2 {
        return Err(ServiceConfigError::at(
            p,
            format!("{n} is below 2: a {what} needs at least 2 attempts (leave it out for none)"),
        ));
    }
    Ok(u32::try_from(n).unwrap_or(u32::MAX).min(MAX_ATTEMPTS_CAP))
}

fn retry_policy(path: &str, v: &Value) -> Result<GrpcRetryPolicy> {
    let o = object(path, v)?;
    let field = |key: &str| {
        o.get(key)
            .ok_or_else(|| ServiceConfigError::at(format!("{path}.{key}"), "is required"))
    };
    let max_attempts = max_attempts(path, o, "retry policy")?;
    let initial_backoff = duration(&format!("{path}.initialBackoff"), field("initialBackoff")?)?;
    let max_backoff = duration(&format!("{path}.maxBackoff"), field("maxBackoff")?)?;
    for (key, d) in [
        ("initialBackoff", initial_backoff),
        ("maxBackoff", max_backoff),
    ] {
        if d.is_zero() {
            return Err(ServiceConfigError::at(
                format!("{path}.{key}"),
                "must be above 0s",
            ));
        }
    }
    let p = format!("{path}.backoffMultiplier");
    let multiplier = field("backoffMultiplier")?
        .as_f64()
        .filter(|m| *m > 0.0 && m.is_finite())
        .ok_or_else(|| ServiceConfigError::at(&p, "expected a number above 0"))?;
    let p = format!("{path}.retryableStatusCodes");
    let codes = field("retryableStatusCodes")?;
    if codes.as_array().is_none_or(Vec::is_empty) {
        return Err(ServiceConfigError::at(
            p,
            "expected a non-empty array of status codes",
        ));
    }
    Ok(GrpcRetryPolicy {
        max_attempts,
        backoff: RetryBackoff {
            base: initial_backoff,
            // gRPC lets maxBackoff sit below initialBackoff; the cap then wins.
            max: max_backoff,
            multiplier,
        },
        retryable_codes: status_codes(&p, codes)?,
    })
}

fn hedging_policy(path: &str, v: &Value) -> Result<GrpcHedgingPolicy> {
    let o = object(path, v)?;
    let max_attempts = max_attempts(path, o, "hedging policy")?;
    let delay = match o.get("hedgingDelay") {
        Some(d) => duration(&format!("{path}.hedgingDelay"), d)?,
        None => Duration::ZERO,
    };
    let non_fatal_codes = match o.get("nonFatalStatusCodes") {
        Some(codes) => status_codes(&format!("{path}.nonFatalStatusCodes"), codes)?,
        None => GrpcCodes::NONE,
    };
    Ok(GrpcHedgingPolicy {
        max_attempts,
        delay,
        non_fatal_codes,
    })
}

/// A list of status codes, by name (`"UNAVAILABLE"`) or number.
fn status_codes(path: &str, v: &Value) -> Result<GrpcCodes> {
    let list = v
        .as_array()
        .ok_or_else(|| ServiceConfigError::at(path, "expected an array of status codes"))?;
    let mut parsed = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let code = match c {
            Value::String(s) => s.parse::<GrpcCode>(),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .and_then(GrpcCode::from_u16)
                .ok_or("a gRPC status code number 0-16"),
            _ => Err("a gRPC status code name or number"),
        }
        .map_err(|expected| ServiceConfigError::at(&p, format!("{c} is not {expected}")))?;
        if code == GrpcCode::Ok {
            return Err(ServiceConfigError::at(p, "OK is not a failure to retry"));
        }
        parsed.push(code);
    }
    Ok(GrpcCodes::of(parsed))
}

fn throttling(v: &Value) -> Result<RetryThrottling> {
    let path = "retryThrottling";
    let o = object(path, v)?;
    let max_tokens = o
        .get("maxTokens")
        .and_then(Value::as_u64)
        .filter(|t| (1..=1000).contains(t))
        .ok_or_else(|| {
            ServiceConfigError::at(
                format!("{path}.maxTokens"),
                "expected a whole number from 1 to 1000",
            )
        })? as u32;
    let token_ratio = o
        .get("tokenRatio")
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| {
            ServiceConfigError::at(format!("{path}.tokenRatio"), "expected a number above 0")
        })?;
    Ok(RetryThrottling {
        max_tokens,
        token_ratio,
    })
}

/// `loadBalancingConfig`: a list of `{"policy_name": {config}}`; the first the
/// mesh has wins, as in gRPC.
fn load_balancing(v: &Value, ignored: &mut Vec<String>) -> Result<Option<BalancerKind>> {
    let list = v
        .as_array()
        .ok_or_else(|| ServiceConfigError::at("loadBalancingConfig", "expected an array"))?;
    for (i, entry) in list.iter().enumerate() {
        let p = format!("loadBalancingConfig[{i}]");
        let o = object(&p, entry)?;
        let mut keys = o.keys();
        let (Some(name), None) = (keys.next(), keys.next()) else {
            return Err(ServiceConfigError::at(
                p,
                "expected an object with exactly one policy name, such as {\"round_robin\": {}}",
            ));
        };
        if let Some(kind) = balancer_named(name, ignored) {
            return Ok(Some(kind));
        }
    }
    Ok(None)
}

fn balancer_named(name: &str, ignored: &mut Vec<String>) -> Option<BalancerKind> {
    match name {
        "round_robin" => Some(BalancerKind::RoundRobin),
        "least_request_experimental" => Some(BalancerKind::LeastRequest),
        other => {
            ignored.push(format!(
                "load-balancing policy `{other}` is not applied: the mesh balances with round_robin, least_request_experimental or its own p2c-ewma (BALANCER)"
            ));
            None
        }
    }
}

/// A protobuf JSON duration: `"1.5s"`.
fn duration(path: &str, v: &Value) -> Result<Duration> {
    v.as_str()
        .and_then(|s| s.strip_suffix('s'))
        .filter(|s| !s.starts_with(['+', '-']))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            ServiceConfigError::at(path, format!("{v} is not a duration such as \"0.5s\""))
        })
}

#[cfg(test)]
mod tests;
