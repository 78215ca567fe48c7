//! Every metric the mesh emits: name, instrument, unit, attributes, description.
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`http.client.request.duration`, `rpc.client.call.duration`); mesh-specific
//! metrics carry the `mesh.` prefix. The Prometheus exporter renders dots as
//! underscores, adds the unit (`_seconds`) and `_total` on counters, so
//! `mesh.discovery.updates` is scraped as `mesh_discovery_updates_total`.
//!
//! Attribute values must stay bounded: service names, route templates, status
//! codes, fixed reason words. Never raw paths, IDs or strings a peer sent.
//! Later features add entries here and nowhere else.

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instrument {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down (OpenTelemetry's UpDownCounter or gauge).
    Gauge,
    /// Distribution of values.
    Histogram,
}

/// The unit of a metric's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count (`{request}`, `{endpoint}` in OpenTelemetry terms).
    Count,
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
}

impl From<Unit> for metrics::Unit {
    fn from(unit: Unit) -> Self {
        match unit {
            Unit::Count => metrics::Unit::Count,
            Unit::Seconds => metrics::Unit::Seconds,
            Unit::Bytes => metrics::Unit::Bytes,
        }
    }
}

/// One metric's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Dotted OpenTelemetry-style name.
    pub name: &'static str,
    /// Instrument kind.
    pub instrument: Instrument,
    /// Unit of the values.
    pub unit: Unit,
    /// Attribute keys it may carry.
    pub labels: &'static [&'static str],
    /// One line for Prometheus' HELP and OpenTelemetry's description.
    pub description: &'static str,
}

impl MetricDef {
    /// The name as the Prometheus exporter renders it with recommended naming
    /// (`http.client.request.duration` → `http_client_request_duration_seconds`).
    pub fn prometheus_name(&self) -> String {
        let mut name = self.name.replace('.', "_");
        if self.unit == Unit::Seconds && !name.ends_with("_seconds") {
            name.push_str("_seconds");
        }
        if self.unit == Unit::Bytes && !name.ends_with("_bytes") {
            name.push_str("_bytes");
        }
        if self.instrument == Instrument::Counter {
            name.push_str("_total");
        }
        name
    }
}

/// Attribute keys (OpenTelemetry semantic conventions, then the mesh's own).
pub mod label {
    /// HTTP method, normalised to the known methods or `_OTHER`.
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// Response status code.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Route template (never the raw path).
    pub const HTTP_ROUTE: &str = "http.route";
    /// `http` or `https`.
    pub const URL_SCHEME: &str = "url.scheme";
    /// Logical server name the client addressed.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// Port the client addressed.
    pub const SERVER_PORT: &str = "server.port";
    /// Low-cardinality error class.
    pub const ERROR_TYPE: &str = "error.type";
    /// `grpc`.
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    /// Full gRPC method, `package.Service/Method`, or `_OTHER` for a method the
    /// server does not serve (a peer must not mint label values).
    pub const RPC_METHOD: &str = "rpc.method";
    /// gRPC status code name (`OK`, `UNAVAILABLE`), from headers or trailers
    /// (OpenTelemetry RPC conventions, release candidate; older versions called
    /// it `rpc.grpc.status_code` and held the number).
    pub const RPC_STATUS_CODE: &str = "rpc.response.status_code";
    /// Logical service (as configured) the metric is about.
    pub const SERVICE: &str = "mesh.service";
    /// Discovery source kind: `static`, `dns`, `srv`, `file`.
    pub const SOURCE: &str = "mesh.source";
    /// Endpoint state: `known`, `ready`, `ejected`, `unhealthy`.
    pub const STATE: &str = "mesh.state";
    /// Fixed reason word for a failure or decision.
    pub const REASON: &str = "mesh.reason";
    /// Outcome word: `ok`, `error`, `rejected`.
    pub const OUTCOME: &str = "mesh.outcome";
    /// Our own SPIFFE ID (one per process, so bounded).
    pub const IDENTITY: &str = "mesh.identity";
    /// An endpoint's `ip:port`, as discovery published it (bounded by the
    /// endpoint set, never taken from a peer).
    pub const ENDPOINT: &str = "mesh.endpoint";
    /// Position of the authorization rule that decided (`1`, `2`…, bounded by
    /// the configuration), or `none`.
    pub const RULE: &str = "mesh.authz.rule";
}

use label::*;
use Instrument::{Counter, Gauge, Histogram};

macro_rules! metrics {
    ($($(#[$doc:meta])* $ident:ident = $name:literal, $instrument:expr, $unit:expr, [$($label:expr),*], $description:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $ident: MetricDef = MetricDef {
                name: $name,
                instrument: $instrument,
                unit: $unit,
                labels: &[$($label),*],
                description: $description,
            };
        )*
        /// Every metric the mesh defines, for describing them to a recorder and for
        /// checking dashboards and alert rules against the code.
        pub const ALL: &[MetricDef] = &[$($ident),*];
    };
}

metrics! {
    /// Duration of outbound HTTP requests (OpenTelemetry stable convention).
    HTTP_CLIENT_REQUEST_DURATION = "http.client.request.duration", Histogram, Unit::Seconds,
        [HTTP_REQUEST_METHOD, SERVER_ADDRESS, SERVER_PORT, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Duration of outbound HTTP requests";
    /// Outbound HTTP requests in flight.
    HTTP_CLIENT_ACTIVE_REQUESTS = "http.client.active_requests", Gauge, Unit::Count,
        [HTTP_REQUEST_METHOD, SERVER_ADDRESS, SERVER_PORT],
        "Outbound HTTP requests in flight";
    /// Duration of inbound HTTP requests (OpenTelemetry stable convention).
    HTTP_SERVER_REQUEST_DURATION = "http.server.request.duration", Histogram, Unit::Seconds,
        [HTTP_REQUEST_METHOD, HTTP_ROUTE, URL_SCHEME, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Duration of inbound HTTP requests";
    /// Inbound HTTP requests in flight.
    HTTP_SERVER_ACTIVE_REQUESTS = "http.server.active_requests", Gauge, Unit::Count,
        [HTTP_REQUEST_METHOD, URL_SCHEME],
        "Inbound HTTP requests in flight";
    /// Duration of outbound gRPC calls.
    RPC_CLIENT_CALL_DURATION = "rpc.client.call.duration", Histogram, Unit::Seconds,
        [RPC_SYSTEM_NAME, RPC_METHOD, RPC_STATUS_CODE, SERVER_ADDRESS],
        "Duration of outbound gRPC calls";
    /// Duration of inbound gRPC calls.
    RPC_SERVER_CALL_DURATION = "rpc.server.call.duration", Histogram, Unit::Seconds,
        [RPC_SYSTEM_NAME, RPC_METHOD, RPC_STATUS_CODE],
        "Duration of inbound gRPC calls";
    /// Snapshots a discovery source published.
    DISCOVERY_UPDATES = "mesh.discovery.updates", Counter, Unit::Count,
        [SERVICE, SOURCE],
        "Endpoint snapshots published by service discovery";
    /// Discovery failures; the last good snapshot stays in use.
    DISCOVERY_ERRORS = "mesh.discovery.errors", Counter, Unit::Count,
        [SERVICE, SOURCE, REASON],
        "Service discovery failures (the last good endpoint set stays in use)";
    /// Endpoints per service by state.
    ENDPOINTS = "mesh.endpoints", Gauge, Unit::Count,
        [SERVICE, STATE],
        "Endpoints of a service by state (known, ready, ejected, unhealthy)";
    /// Requests that found no ready endpoint within the queue timeout.
    NO_ENDPOINT = "mesh.balancer.no_endpoint", Counter, Unit::Count,
        [SERVICE, REASON],
        "Requests that failed because no endpoint was ready in time";
    /// Connections opened to endpoints, by outcome.
    CONNECTIONS = "mesh.connections", Counter, Unit::Count,
        [SERVICE, OUTCOME, REASON],
        "Connection attempts to endpoints by outcome";
    /// Requests sent outside the mesh through egress passthrough, or refused.
    EGRESS_REQUESTS = "mesh.egress.requests", Counter, Unit::Count,
        [SERVER_ADDRESS, OUTCOME],
        "Requests to hosts the mesh does not know (egress), by outcome";
    /// Bytes of outbound request bodies whose size was known up front (an exact
    /// size hint or `Content-Length`); bodies streamed without a length are not
    /// counted.
    HTTP_CLIENT_REQUEST_BODY_SIZE = "http.client.request.body.size", Histogram, Unit::Bytes,
        [HTTP_REQUEST_METHOD, SERVER_ADDRESS, SERVER_PORT, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Size of outbound HTTP request bodies (those with a known length)";
    /// Bytes of inbound response bodies whose size was known when headers
    /// arrived.
    HTTP_CLIENT_RESPONSE_BODY_SIZE = "http.client.response.body.size", Histogram, Unit::Bytes,
        [HTTP_REQUEST_METHOD, SERVER_ADDRESS, SERVER_PORT, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Size of HTTP response bodies the client received (those with a known length)";
    /// Bytes of inbound request bodies whose size was known up front.
    HTTP_SERVER_REQUEST_BODY_SIZE = "http.server.request.body.size", Histogram, Unit::Bytes,
        [HTTP_REQUEST_METHOD, HTTP_ROUTE, URL_SCHEME, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Size of inbound HTTP request bodies (those with a known length)";
    /// Bytes of response bodies the server sent whose size was known when the
    /// handler answered.
    HTTP_SERVER_RESPONSE_BODY_SIZE = "http.server.response.body.size", Histogram, Unit::Bytes,
        [HTTP_REQUEST_METHOD, HTTP_ROUTE, URL_SCHEME, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE],
        "Size of HTTP response bodies the server sent (those with a known length)";
    /// Attempts sent to endpoints (first tries, retries and hedges alike).
    ATTEMPTS = "mesh.client.attempts", Counter, Unit::Count,
        [SERVICE, OUTCOME],
        "Attempts sent to endpoints by outcome (first tries, retries and hedges)";
    /// Duration of single attempts per endpoint, for per-endpoint latency.
    ATTEMPT_DURATION = "mesh.client.attempt.duration", Histogram, Unit::Seconds,
        [SERVICE, ENDPOINT],
        "Duration of single attempts, by the endpoint that answered";
    /// Retries by the failure that caused them.
    RETRIES = "mesh.client.retries", Counter, Unit::Count,
        [SERVICE, REASON],
        "Retries sent, by the failure that caused them";
    /// Hedged attempts sent.
    HEDGES = "mesh.client.hedges", Counter, Unit::Count,
        [SERVICE],
        "Hedged attempts sent because the first was slow";
    /// Retries or hedges the budget refused.
    RETRY_BUDGET_EXHAUSTED = "mesh.client.retry_budget.exhausted", Counter, Unit::Count,
        [SERVICE],
        "Retries and hedges not sent because the retry budget was spent";
    /// Breaker state per service: 1 for the current state, 0 for the others.
    BREAKER_STATE = "mesh.breaker.state", Gauge, Unit::Count,
        [SERVICE, STATE],
        "Circuit breaker state (1 for the current one of closed, open, half_open)";
    /// Breaker transitions, by the state entered.
    BREAKER_TRANSITIONS = "mesh.breaker.transitions", Counter, Unit::Count,
        [SERVICE, STATE],
        "Circuit breaker transitions by the state entered";
    /// Endpoints ejected by outlier detection.
    OUTLIER_EJECTIONS = "mesh.outlier.ejections", Counter, Unit::Count,
        [SERVICE, REASON],
        "Endpoints ejected by outlier detection, by method (consecutive_failures, success_rate, failure_percentage)";
    /// Active health checks of endpoints: outcome `ok` or `error`; reason `none`,
    /// `connect`, `timeout`, `unhealthy` (the endpoint answered that it is not
    /// healthy) or `error` (any other failure).
    HEALTH_CHECKS = "mesh.health_checks", Counter, Unit::Count,
        [SERVICE, OUTCOME, REASON],
        "Active health checks of endpoints, by outcome and reason";
    /// Configuration reloads by outcome.
    CONFIG_RELOADS = "mesh.config.reloads", Counter, Unit::Count,
        [SOURCE, OUTCOME],
        "Configuration reloads by outcome";
    /// When our own certificate expires, as a Unix timestamp.
    TLS_CERTIFICATE_EXPIRATION = "mesh.tls.certificate.expiration", Gauge, Unit::Seconds,
        [IDENTITY],
        "Expiry of the workload's own X.509 SVID as a Unix timestamp";
    /// TLS handshakes that failed, by reason: `expired`, `unknown_issuer`,
    /// `untrusted_domain`, `wrong_identity`, `bad_certificate`,
    /// `no_client_certificate`, `timeout`, `other`.
    TLS_HANDSHAKE_FAILURES = "mesh.tls.handshake.failures", Counter, Unit::Count,
        [REASON, SERVICE],
        "TLS handshakes that failed, by reason (outbound ones also by service)";
    /// Requests refused without touching the network because the breaker is open.
    BREAKER_REJECTED = "mesh.breaker.rejected", Counter, Unit::Count,
        [SERVICE],
        "Requests failed fast because the service's circuit breaker was open";
    /// Requests refused by a rate limit (`mesh.source`: inbound or outbound).
    RATE_LIMITED = "mesh.rate_limited", Counter, Unit::Count,
        [SOURCE, SERVICE],
        "Requests refused by a rate limit (inbound: answered 429; outbound: failed before sending)";
    /// Requests shed by a concurrency limit (`mesh.source`: inbound or outbound).
    SHED = "mesh.concurrency.shed", Counter, Unit::Count,
        [SOURCE, SERVICE],
        "Requests shed by a concurrency limit (inbound: answered 503; outbound: failed before sending)";
    /// The current adaptive concurrency limit.
    CONCURRENCY_LIMIT = "mesh.concurrency.limit", Gauge, Unit::Count,
        [SOURCE, SERVICE],
        "Current concurrency limit (adaptive limits move between their minimum and maximum)";
    /// Inbound authorization decisions: outcome `allow`, `deny` or `audit_deny`
    /// (audit mode let through what deny mode would refuse); reason `rule`,
    /// `default` (no rule matched) or why the path was refused (`encoded_separator`,
    /// `above_root`, `bad_escape`, `encoded_nul`, `backslash`, `not_absolute`);
    /// the rule's position.
    AUTHZ_DECISIONS = "mesh.authz.decisions", Counter, Unit::Count,
        [OUTCOME, REASON, RULE],
        "Inbound authorization decisions by outcome (allow, deny, audit_deny), reason and rule";
}

/// Describes every metric to the installed `metrics` recorder, so exporters print
/// HELP lines and units.
pub fn describe_all() {
    for def in ALL {
        let unit = metrics::Unit::from(def.unit);
        match def.instrument {
            Counter => metrics::describe_counter!(def.name, unit, def.description),
            Gauge => metrics::describe_gauge!(def.name, unit, def.description),
            Histogram => metrics::describe_histogram!(def.name, unit, def.description),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<_> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a metric name is defined twice");
        for def in ALL {
            assert!(
                ["http.", "rpc.", "mesh."]
                    .iter()
                    .any(|p| def.name.starts_with(p)),
                "{} has no known prefix",
                def.name
            );
        }
    }

    #[test]
    fn prometheus_names_follow_recommended_naming() {
        assert_eq!(
            HTTP_CLIENT_REQUEST_DURATION.prometheus_name(),
            "http_client_request_duration_seconds"
        );
        assert_eq!(
            DISCOVERY_UPDATES.prometheus_name(),
            "mesh_discovery_updates_total"
        );
        assert_eq!(ENDPOINTS.prometheus_name(), "mesh_endpoints");
    }
}
