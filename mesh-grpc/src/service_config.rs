//! gRPC service config JSON (the format gRPC users know: gRFC A2 / A6), parsed
//! with errors that point at the field, and mapped onto the mesh's own policies.
//!
//! Read today: `methodConfig` (`name`, `timeout`, `retryPolicy`) and
//! `retryThrottling`; `hedgingPolicy`, `waitForReady`, `loadBalancingConfig` and
//! `healthCheckConfig` are accepted and not yet applied.

use std::time::Duration;

use mesh_core::classify::{GrpcCode, GrpcCodes};
use mesh_core::retry::{RetryBackoff, RetryPolicy, MAX_ATTEMPTS_CAP};
use serde_json::Value;

/// A parsed gRPC service config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcServiceConfig {
    /// The `methodConfig` entries, in order.
    pub method_configs: Vec<MethodConfig>,
    /// `retryThrottling`, when present.
    pub retry_throttling: Option<RetryThrottling>,
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
}

/// A `retryPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcRetryPolicy {
    /// `maxAttempts`, clamped to 5 as gRPC does.
    pub max_attempts: u32,
    /// `initialBackoff`.
    pub initial_backoff: Duration,
    /// `maxBackoff`.
    pub max_backoff: Duration,
    /// `backoffMultiplier` (the mesh's backoff doubles; kept for reference).
    pub backoff_multiplier: f64,
    /// `retryableStatusCodes`.
    pub retryable_codes: GrpcCodes,
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
        if let Some(t) = root.get("retryThrottling") {
            config.retry_throttling = Some(throttling(t)?);
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
}

impl GrpcRetryPolicy {
    /// The mesh's retry policy `base` with this policy's attempts and backoff.
    /// Its status codes go to `Classifier::with_grpc_codes`.
    pub fn apply_to(&self, base: &RetryPolicy) -> RetryPolicy {
        let mut policy = base.clone();
        policy.max_attempts = self.max_attempts;
        policy.backoff = RetryBackoff {
            base: self.initial_backoff,
            max: self.max_backoff,
        };
        policy
    }
}

fn object<'a>(path: &str, v: &'a Value) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| ServiceConfigError::at(path, "expected a JSON object"))
}

fn method_config(path: &str, v: &Value) -> Result<MethodConfig> {
    let o = object(path, v)?;
    let mut m = MethodConfig::default();
    if let Some(names) = o.get("name") {
        let names = names
            .as_array()
            .ok_or_else(|| ServiceConfigError::at(format!("{path}.name"), "expected an array"))?;
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
            let method = text("method")?;
            if service.is_empty() && method.is_some() {
                return Err(ServiceConfigError::at(
                    format!("{p}.method"),
                    "a method needs its service",
                ));
            }
            m.names.push((service, method));
        }
    }
    if let Some(t) = o.get("timeout") {
        m.timeout = Some(duration(&format!("{path}.timeout"), t)?);
    }
    if let Some(r) = o.get("retryPolicy") {
        m.retry = Some(retry_policy(&format!("{path}.retryPolicy"), r)?);
    }
    Ok(m)
}

fn retry_policy(path: &str, v: &Value) -> Result<GrpcRetryPolicy> {
    let o = object(path, v)?;
    let field = |key: &str| {
        o.get(key)
            .ok_or_else(|| ServiceConfigError::at(format!("{path}.{key}"), "is required"))
    };
    let p = format!("{path}.maxAttempts");
    let max_attempts = field("maxAttempts")?
        .as_u64()
        .ok_or_else(|| ServiceConfigError::at(&p, "expected a whole number"))?;
    if max_attempts < 2 {
        return Err(ServiceConfigError::at(
            p,
            format!("{max_attempts} is below 2: a retry policy needs at least 2 attempts (leave retryPolicy out for none)"),
        ));
    }
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
    let backoff_multiplier = field("backoffMultiplier")?
        .as_f64()
        .filter(|m| *m > 0.0)
        .ok_or_else(|| ServiceConfigError::at(&p, "expected a number above 0"))?;
    let p = format!("{path}.retryableStatusCodes");
    let codes = field("retryableStatusCodes")?
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ServiceConfigError::at(&p, "expected a non-empty array of status codes"))?;
    let mut parsed = Vec::new();
    for (i, c) in codes.iter().enumerate() {
        let p = format!("{p}[{i}]");
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
        parsed.push(code);
    }
    Ok(GrpcRetryPolicy {
        max_attempts: (max_attempts as u32).min(MAX_ATTEMPTS_CAP),
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        retryable_codes: GrpcCodes::of(parsed),
    })
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
        .filter(|r| *r > 0.0)
        .ok_or_else(|| {
            ServiceConfigError::at(format!("{path}.tokenRatio"), "expected a number above 0")
        })?;
    Ok(RetryThrottling {
        max_tokens,
        token_ratio,
    })
}

/// A protobuf JSON duration: `"1.5s"`.
fn duration(path: &str, v: &Value) -> Result<Duration> {
    v.as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ServiceConfigError::at(path, format!("{v} is not a duration such as \"0.5s\""))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "methodConfig": [
        {"name": [{"service": "mesh.test.greeter.Greeter"}], "timeout": "1.5s",
         "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 8]}},
        {"name": [{}], "timeout": "10s"}
      ],
      "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
    }"#;

    #[test]
    fn a_service_config_maps_onto_timeouts_and_retry_policies() {
        let config = GrpcServiceConfig::from_json(GOOD).unwrap();
        let greeter = config
            .for_method("mesh.test.greeter.Greeter", "SayHello")
            .unwrap();
        assert_eq!(greeter.timeout, Some(Duration::from_millis(1500)));
        let retry = greeter.retry.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 5, "clamped to gRPC's cap");
        assert!(retry.retryable_codes.contains(14) && retry.retryable_codes.contains(8));
        let policy = retry.apply_to(&RetryPolicy::default());
        assert_eq!(policy.max_attempts, 5);
        assert_eq!(policy.backoff.base, Duration::from_millis(100));
        let other = config.for_method("other.Service", "Call").unwrap();
        assert_eq!(other.timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.retry_throttling.unwrap().max_tokens, 10);
    }

    fn error(doc: &str) -> ServiceConfigError {
        GrpcServiceConfig::from_json(doc).unwrap_err()
    }

    fn policy(fields: &str) -> String {
        format!(r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {{{fields}}}}}]}}"#)
    }

    #[test]
    fn max_attempts_below_two_is_an_error_pointing_at_the_field() {
        let e = error(&policy(
            r#""maxAttempts": 1, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]"#,
        ));
        assert_eq!(e.path(), "methodConfig[0].retryPolicy.maxAttempts");
        assert!(e.to_string().contains("below 2"), "{e}");
    }

    #[test]
    fn unknown_status_codes_are_errors_naming_the_code() {
        let e = error(&policy(
            r#""maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABEL"]"#,
        ));
        assert_eq!(
            e.path(),
            "methodConfig[0].retryPolicy.retryableStatusCodes[0]"
        );
        assert!(e.to_string().contains("\"UNAVAILABEL\" is not"), "{e}");
    }

    #[test]
    fn malformed_documents_and_fields_are_errors() {
        assert_eq!(error("{").path(), "$");
        assert_eq!(error("[]").path(), "$");
        assert_eq!(
            error(r#"{"methodConfig": [{"timeout": "soon"}]}"#).path(),
            "methodConfig[0].timeout"
        );
        assert_eq!(
            error(&policy(r#""maxAttempts": 3"#)).path(),
            "methodConfig[0].retryPolicy.initialBackoff"
        );
        assert_eq!(
            error(r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#).path(),
            "retryThrottling.maxTokens"
        );
    }
}
