//! The registry of every `MESH_` setting: its name, scope, default and meaning.
//!
//! One list drives the parser (which settings exist, the longest-suffix rule for
//! per-service names), the unknown-variable check, and the README table (a test
//! keeps the two in step). Settings of features still to come are registered as
//! planned: they are rejected with a clear "not supported yet" error rather than
//! taken for part of a service name.

/// Where a setting applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `MESH_<NAME>`: the process as a whole.
    Global,
    /// `MESH_SERVICE_<SVC>_<NAME>`, with `MESH_DEFAULT_<NAME>` as every service's default.
    Service,
    /// `MESH_SERVICE_<SVC>_<NAME>` only: where a service's endpoints come from (one
    /// per service, no default).
    Discovery,
}

/// Whether a setting does something in this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Read and applied.
    Supported,
    /// Reserved for a feature still to come; setting it is a start-up error.
    Planned,
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingDef {
    /// Name without the `MESH_` / `MESH_SERVICE_<SVC>_` prefix, e.g. `CONNECT_TIMEOUT`.
    pub name: &'static str,
    /// Where it applies.
    pub scope: Scope,
    /// Default, as documented (`-` for none).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Supported or planned.
    pub status: Status,
}

impl SettingDef {
    /// The key of this setting in `MESH_CONFIG_FILE` (`connect_timeout`).
    pub fn file_key(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    /// The variable as the README writes it.
    pub fn variable(&self) -> String {
        match self.scope {
            Scope::Global => format!("MESH_{}", self.name),
            Scope::Service | Scope::Discovery => format!("MESH_SERVICE_<NAME>_{}", self.name),
        }
    }
}

const fn def(
    name: &'static str,
    scope: Scope,
    default: &'static str,
    doc: &'static str,
) -> SettingDef {
    SettingDef {
        name,
        scope,
        default,
        doc,
        status: Status::Supported,
    }
}

// No setting is planned in this version; kept for the next one.
#[allow(dead_code)]
const fn planned(name: &'static str, scope: Scope, doc: &'static str) -> SettingDef {
    SettingDef {
        name,
        scope,
        default: "-",
        doc,
        status: Status::Planned,
    }
}

use Scope::{Discovery, Global, Service};

/// Every setting the mesh knows.
pub const SETTINGS: &[SettingDef] = &[
    def("SERVICE_NAME", Global, "`$OTEL_SERVICE_NAME`, else `unknown_service`", "This service's own name."),
    def("ZONE", Global, "-", "This instance's locality (zone), for zone-aware routing."),
    def("CONFIG_FILE", Global, "-", "A TOML or JSON file with the same settings; variables override it."),
    def("EGRESS", Global, "`deny`", "`allow` sends requests for hosts the mesh does not know straight out (plain DNS, web PKI for https); `deny` refuses them."),
    def("DNS_SERVERS", Global, "system resolver", "Name servers (`ip:port`, comma-separated) for DNS and SRV discovery."),
    def("DNS_MIN_TTL", Global, "`5s`", "Shortest time between two resolutions of a name."),
    def("DNS_MAX_TTL", Global, "`5m`", "Longest time a resolved answer is kept before resolving again."),
    def("ENDPOINTS", Discovery, "-", "Static endpoints, `host:port,host:port`."),
    def("DNS", Discovery, "-", "A `host:port` resolved through DNS A/AAAA, again as its TTL runs out."),
    def("SRV", Discovery, "-", "A DNS SRV name (`_http._tcp.api.example`); priority and weight are kept."),
    def("FILE", Discovery, "-", "A JSON file of endpoints, re-read when it changes."),
    def("PROTOCOL", Service, "`http1`", "`http1` (pooled HTTP/1.1 connections), `http2` (one multiplexed connection per endpoint) or `grpc` (HTTP/2, for `mesh_grpc::MeshChannel`)."),
    def("BALANCER", Service, "`p2c-ewma`", "`p2c-ewma`, `least-request` or `round-robin`; all honour endpoint weights."),
    def("CONNECT_TIMEOUT", Service, "`1s`", "Time allowed to open a connection to an endpoint."),
    def("TIMEOUT", Service, "`15s`", "Time allowed for a whole request, until the response headers (`off` for none)."),
    def("IDLE_TIMEOUT", Service, "`90s`", "A pooled connection idle this long is closed."),
    def("MAX_CONNECTION_AGE", Service, "`10m`", "A connection this old takes no new requests, so rotated certificates and new DNS answers are picked up (`off` for none)."),
    def("MAX_CONNECTIONS", Service, "`unlimited`", "Cap on HTTP/1.1 connections per endpoint; requests beyond it wait for a free connection."),
    def("HTTP2_KEEPALIVE", Service, "`20s`", "Interval of HTTP/2 PING keep-alives on idle connections (`off` for none)."),
    def("QUEUE_TIMEOUT", Service, "`1s`", "How long a request waits for a ready endpoint before failing."),
    def("MAX_PENDING", Service, "`1000`", "Requests that may wait for a ready endpoint at once; more fail at once."),
    def("PANIC_THRESHOLD", Service, "`50%`", "Below this share of healthy endpoints, the balancer ignores ejections and uses all reachable ones."),
    def("EWMA_DEFAULT_RTT", Service, "`30ms`", "PeakEWMA's latency estimate before the service has answered at all; afterwards an endpoint not yet measured starts at the service's average, so it is not starved."),
    def("EWMA_DECAY", Service, "`10s`", "PeakEWMA's decay time."),
    def("TLS_CERT", Global, "-", "PEM file of this workload's X.509 SVID chain, leaf first; with `TLS_KEY` and `TLS_BUNDLE` it turns on mTLS. Without them, `SPIFFE_ENDPOINT_SOCKET` (the SPIFFE Workload API) turns it on; with neither, traffic is plaintext. Setting both is an error."),
    def("TLS_KEY", Global, "-", "PEM file of the SVID's private key."),
    def("TLS_BUNDLE", Global, "-", "PEM file of our own trust domain's CA bundle."),
    def("TLS_FEDERATED_BUNDLES", Global, "-", "Other trust domains we accept, each with its own bundle: `domain=path,…` (a CA only vouches for IDs of its own domain)."),
    def("WORKLOAD_API_TIMEOUT", Global, "`30s`", "With `SPIFFE_ENDPOINT_SOCKET` set (and no `TLS_*` files), how long start-up waits for the first valid SVID from the SPIFFE Workload API before failing with an error naming the socket."),
    def("INBOUND_ADDR", Global, "-", "Address of the inbound mTLS listener (`ip:port`), for `Mesh::serve`."),
    def("INBOUND_MODE", Global, "`strict`", "`strict`: every inbound connection must present a certificate from an accepted trust domain (permissive mode is planned)."),
    def("INBOUND_RATE_LIMIT", Global, "`off`", "Requests `Mesh::serve` admits from all peers together: `1000/s`, `60000/m`, with an optional `,burst=N` (default one second's worth); beyond it it answers `429` with `Retry-After` (gRPC calls: `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`) and the handler never sees the request."),
    def("INBOUND_PEER_RATE_LIMIT", Global, "`off`", "The same limit for each peer SPIFFE ID on its own, so one noisy caller cannot use up the server's share."),
    def("INBOUND_CONCURRENCY", Global, "`off`", "Requests `Mesh::serve` lets into the handler at once: `adaptive` (Gradient2: 20 to 200), `aimd`, or a fixed number; beyond it it sheds with `503` (gRPC calls: `UNAVAILABLE`), which a mesh client retries on another endpoint."),
    def("AUTHZ_DEFAULT", Global, "`deny`", "What `Mesh::serve` does with an inbound request no rule matches: `deny` (403; gRPC calls: `PERMISSION_DENIED`), `allow`, or `audit` (let everything through, count and log what `deny` would refuse). Authorization is on once rules or this setting are given; with neither, any peer of an accepted trust domain is let in."),
    def("AUTHZ_RULES", Global, "-", "Inbound authorization rules, first match wins, separated by `;`, each `<action> <peer> <methods> <path>` with action `allow` or `deny`, e.g. `deny * * /admin/*; allow spiffe://td/ns/prod/* GET,HEAD /api/*` (see the README's Authorization section; in `MESH_CONFIG_FILE` also as `[[authz.rules]]`)."),
    def("METRICS_ADDR", Global, "`off`", "Address (`ip:port`) of the Prometheus scrape endpoint `/metrics`; `off` serves none (metrics still reach an app-installed recorder or OTLP)."),
    def("ACCESS_LOG", Global, "`off`", "`json` writes one JSON line per inbound request to stdout; `off` writes none."),
    def("IDENTITY", Service, "any ID of our own trust domain", "SPIFFE ID (`spiffe://td/path`), or trust domain, the service's servers must present."),
    def("PER_TRY_TIMEOUT", Service, "`off`", "Time allowed for one attempt; a retry may follow when `RETRY_ON` has `per-try-timeout` (`off` for none: only `TIMEOUT` bounds attempts)."),
    def("RETRY_BUDGET", Service, "`20%`", "Retries and hedges as a share of the requests of the last `RETRY_WINDOW`, shared by every clone of the client (Finagle, linkerd)."),
    def("RETRY_WINDOW", Service, "`10s`", "The window over which `RETRY_BUDGET` counts requests and retries."),
    def("RETRY_MIN_PER_SECOND", Service, "`10`", "Retries allowed in any one second whatever the budget, so a quiet service can still retry (it does not accumulate; `0` for none)."),
    def("RETRY_MAX_ATTEMPTS", Service, "`3`", "Attempts per request, counting the first, from 1 (no retries) to 5 (gRPC's cap). Requests nothing was sent for (connect failures, refused streams) may make 3 whatever this says."),
    def("RETRY_ON", Service, "`503,reset,unavailable`", "Failures retried, comma-separated: `503`, `5xx`, `gateway-error`, `reset` (the connection broke after the request was sent: safe for the idempotent methods of `RETRY_METHODS`, and what a rolling restart does to requests in flight), `per-try-timeout`, gRPC status names (`unavailable`, `resource-exhausted`, …), `none`. Connect failures and HTTP/2 refused streams are always retried (nothing was sent)."),
    def("RETRY_METHODS", Service, "`GET,HEAD,OPTIONS,TRACE,PUT,DELETE`", "HTTP methods retried and hedged without the caller marking the request (`mesh_core::retry::Retryable`); `none` for none."),
    def("REPLAY_BUFFER", Service, "`64KiB`", "Largest request body kept so it can be sent again; a larger body is sent once and its request is not retried (linkerd2-proxy)."),
    def("HEDGE_DELAY", Service, "`off`", "Delay after which a retryable request that has not been answered is also sent to another endpoint; the first good answer wins. A duration, or a percentile of the service's recent answers such as `p95` (hedging starts after 50 answers); `off` for no hedging."),
    def("OUTLIER_CONSECUTIVE_FAILURES", Service, "`5`", "Failed calls in a row that eject an endpoint at once (Envoy, gRFC A50); `off` for none."),
    def("OUTLIER_INTERVAL", Service, "`10s`", "How often the success-rate (1.9σ below the mean, ≥ 5 endpoints with ≥ 100 calls) and failure-percentage (≥ 85%, ≥ 5 endpoints with ≥ 50 calls) methods judge endpoints, and how often an endpoint's ejection multiplier decays (Envoy)."),
    def("OUTLIER_BASE_EJECTION", Service, "`30s`", "First ejection time; each further ejection lasts that much longer (Envoy)."),
    def("OUTLIER_MAX_EJECTION", Service, "`300s`", "Longest ejection time (Envoy)."),
    def("OUTLIER_MAX_EJECTED", Service, "`10%`", "Largest share of a service's endpoints ejected at once; one endpoint may always be (Envoy)."),
    def("OUTLIER_DETECTION", Service, "`on`", "`off` turns passive outlier detection off for the service."),
    def("BREAKER", Service, "`off`", "`on` puts a circuit breaker in front of the service's retries: it fails requests fast (`Error::is_breaker_open`), without sending them, while the service keeps failing."),
    def("BREAKER_FAILURE_RATE", Service, "`50%`", "Share of failed requests in the window that opens the breaker (Resilience4j)."),
    def("BREAKER_SLOW_CALL", Service, "`60s`", "A request slower than this counts as slow; the breaker also opens when every request in the window is slow (Resilience4j); `off` for none."),
    def("BREAKER_WINDOW", Service, "`100`", "Requests in the breaker's sliding window; rates are judged once it is full (Resilience4j)."),
    def("BREAKER_OPEN_TIME", Service, "`60s`", "Time the breaker stays open before letting probes through (Resilience4j)."),
    def("BREAKER_PROBES", Service, "`10`", "Requests let through while half-open; their rates decide between closed and open again (Resilience4j)."),
    def("RATE_LIMIT", Service, "`off`", "Requests this client may send to the service, shared by every clone of the client: `100/s`, `6000/m`, with an optional `,burst=N` (default one second's worth); beyond it requests fail at once (`Error::is_rate_limited`)."),
    def("CONCURRENCY", Service, "`off`", "Requests this client may have in flight to the service: `adaptive` (Gradient2: 20 to 200, Netflix concurrency-limits), `aimd`, or a fixed number; beyond it requests fail at once (`Error::is_overloaded`)."),
    def("FAULT_DELAY", Service, "`off`", "Chaos testing: delay this share of requests, `50ms@10%`."),
    def("FAULT_ABORT", Service, "`off`", "Chaos testing: answer this share of requests with this status without sending them, `503@5%` (the breaker counts them; retries do not see them)."),
    def("HEALTH_CHECK_PATH", Service, "`off`", "Active HTTP health checks: `GET` this path (`/healthz`) on every endpoint, through the same connection setup as requests (mTLS when an identity is configured); any 2xx answer is healthy. Endpoints failing them leave rotation until they pass again; new endpoints join once their first check passes. `off`: no active checks."),
    def("HEALTH_CHECK_GRPC_SERVICE", Service, "`off`", "Active gRPC health checks (`PROTOCOL=grpc`): call `grpc.health.v1.Health/Check` with this service name on every endpoint (an empty value asks about the whole server); only `SERVING` is healthy. Needs the gRPC probe: start the mesh with `mesh_grpc::start_mesh_from_env()` or `mesh_grpc::mesh_builder(config)` (a bare client: `MeshClient::builder(..).grpc_health_probe(mesh_grpc::health::GrpcHealthProbe)`). Exclusive with `HEALTH_CHECK_PATH`."),
    def("HEALTH_CHECK_INTERVAL", Service, "`10s`", "Time between two health checks of one endpoint, jittered by ±10% (Kubernetes `periodSeconds`)."),
    def("HEALTH_CHECK_TIMEOUT", Service, "`1s`", "Time a health check may take before it counts as failed; at most `HEALTH_CHECK_INTERVAL` (Kubernetes `timeoutSeconds`)."),
    def("HEALTH_CHECK_HEALTHY_THRESHOLD", Service, "`2`", "Passing health checks in a row that bring an endpoint back (Google Cloud load balancing); a new endpoint needs one (Envoy)."),
    def("HEALTH_CHECK_UNHEALTHY_THRESHOLD", Service, "`3`", "Failing health checks in a row that take an endpoint out of rotation (Kubernetes `failureThreshold`)."),
    def("RETRY_BACKOFF", Service, "`25ms..250ms`", "Wait before each retry: exponential from `<base>` to `<max>` with full jitter (Envoy, gRFC A6), doubling unless `,multiplier=1.6` (1 to 10) says otherwise, e.g. `100ms..1s`. A longer `Retry-After` or `grpc-retry-pushback-ms` wins."),
    def("GRPC_SERVICE_CONFIG", Service, "-", "A gRPC service-config JSON document (`methodConfig` timeouts, retry and hedging policies; `retryThrottling`; `loadBalancingConfig`), mapped onto routes and the service's retry budget and balancer at start-up (see the README's gRPC section). In `MESH_CONFIG_FILE` also as a table."),
];

/// The setting named `name` in `scope`.
pub fn find(scope: Scope, name: &str) -> Option<&'static SettingDef> {
    SETTINGS.iter().find(|d| {
        d.name == name
            && match scope {
                Global => d.scope == Global,
                Service | Discovery => d.scope != Global,
            }
    })
}

/// The setting named `name`, whatever its scope, for code that names settings
/// in its source: called in a `const` context it is looked up while the crate
/// compiles (an unregistered name fails the build), so reading a setting's
/// built-in default costs no search at run time.
pub const fn registered(name: &str) -> &'static SettingDef {
    let mut i = 0;
    while i < SETTINGS.len() {
        if const_str_eq(SETTINGS[i].name, name) {
            return &SETTINGS[i];
        }
        i += 1;
    }
    panic!("the setting is not registered in SETTINGS")
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Splits `<SVC>_<SETTING>` at the longest per-service setting it ends with,
/// leaving a non-empty service part.
pub fn split_service_setting(rest: &str) -> Option<(&str, &'static SettingDef)> {
    SETTINGS
        .iter()
        .filter(|d| d.scope != Global)
        .filter_map(|d| {
            let service = rest.strip_suffix(d.name)?.strip_suffix('_')?;
            (!service.is_empty()).then_some((service, d))
        })
        .max_by_key(|(_, d)| d.name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_known_suffix_wins() {
        let (svc, d) = split_service_setting("API_CONNECT_TIMEOUT").unwrap();
        assert_eq!((svc, d.name), ("API", "CONNECT_TIMEOUT"));
        let (svc, d) = split_service_setting("MY_API_PER_TRY_TIMEOUT").unwrap();
        assert_eq!((svc, d.name), ("MY_API", "PER_TRY_TIMEOUT"));
        let (svc, d) = split_service_setting("TIMEOUT_TIMEOUT").unwrap();
        assert_eq!((svc, d.name), ("TIMEOUT", "TIMEOUT"));
        assert!(split_service_setting("TIMEOUT").is_none());
        assert!(split_service_setting("API_NOT_A_SETTING").is_none());
    }

    #[test]
    fn registered_finds_the_setting_of_that_name() {
        assert_eq!(registered("TIMEOUT").name, "TIMEOUT");
        assert_eq!(registered("PER_TRY_TIMEOUT").name, "PER_TRY_TIMEOUT");
        assert_eq!(registered("SERVICE_NAME").scope, Global);
        const CONNECT: &SettingDef = registered("CONNECT_TIMEOUT");
        assert_eq!(CONNECT.default, "`1s`");
    }

    #[test]
    #[should_panic(expected = "not registered")]
    fn registered_refuses_an_unknown_name() {
        let name = String::from("NOT_A_SETTING");
        registered(&name);
    }

    #[test]
    fn setting_names_are_unique() {
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert_ne!(a.name, b.name, "{} registered twice", a.name);
            }
        }
    }
}
