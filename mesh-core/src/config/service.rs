//! Typed settings of one logical service.

use std::time::Duration;

use super::error::{Origin, Problem};
use super::raw::{normalize_service_name, Entry, RawService, SettingMap};
use super::settings::SettingDef;
use super::value;
use crate::balance::{BalancerKind, BalancerSettings};
use crate::breaker::BreakerSettings;
use crate::concurrency::LimitAlgorithm;
use crate::discovery::{DiscoverySource, HostPort};
use crate::fault::{parse_abort, parse_delay, Faults};
use crate::health::{HealthCheck, HealthCheckKind, HealthCheckSettings};
use crate::identity::ExpectedIdentity;
use crate::outlier::OutlierSettings;
use crate::ratelimit::Rate;
use crate::retry::{
    parse_hedge_delay, parse_max_attempts, MethodSet, RetryBackoff, RetryBudgetSettings, RetryOn,
    RetryPolicy,
};
use crate::route::grpc::GrpcServiceConfig;
use crate::route::RouteConfig;

/// Which HTTP version the mesh speaks to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 over a pool of connections per endpoint.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge) over one multiplexed connection per endpoint.
    Http2,
    /// gRPC: HTTP/2 as [`Http2`](Protocol::Http2), for services `mesh-grpc`'s
    /// `MeshChannel` calls.
    Grpc,
}

impl Protocol {
    /// Whether connections to the service speak HTTP/2 (`http2` and `grpc`).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl std::str::FromStr for Protocol {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "http1" => Ok(Protocol::Http1),
            "http2" => Ok(Protocol::Http2),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err("`http1`, `http2` or `grpc`"),
        }
    }
}

/// Everything the mesh knows about one logical service.
///
/// Built from `MESH_SERVICE_<NAME>_*` variables and the config file by
/// [`MeshConfig`](super::MeshConfig), or in code with [`ServiceConfig::new`] and
/// then assigning fields; every field not set has the default documented in the
/// README.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The service's name, as configured.
    pub name: String,
    /// Where its endpoints come from.
    pub discovery: DiscoverySource,
    /// HTTP version spoken to its endpoints.
    pub protocol: Protocol,
    /// Load-balancing algorithm and queueing.
    pub balancer: BalancerSettings,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a request until its response headers; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Pooled connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Connections this old take no new requests; `None` keeps them forever.
    pub max_connection_age: Option<Duration>,
    /// Cap on HTTP/1.1 connections per endpoint; `None` for no cap.
    pub max_connections: Option<usize>,
    /// Interval of HTTP/2 PINGs; `None` for none.
    pub http2_keepalive: Option<Duration>,
    /// The SPIFFE ID (or trust domain) the service's servers must present over
    /// mTLS; `None` accepts any ID of our own trust domain.
    pub identity: Option<ExpectedIdentity>,
    /// Retries, hedging, replay buffer and per-try timeout.
    pub retry: RetryPolicy,
    /// The retry budget shared by every clone of a client for this service.
    pub retry_budget: RetryBudgetSettings,
    /// Passive outlier detection; `None` when turned off.
    pub outlier: Option<OutlierSettings>,
    /// The circuit breaker; `None` when turned off (the default).
    pub breaker: Option<BreakerSettings>,
    /// Outbound rate limit; `None` for none (the default).
    pub rate_limit: Option<Rate>,
    /// Outbound concurrency limit; `None` for none (the default).
    pub concurrency: Option<LimitAlgorithm>,
    /// Injected faults (none by default).
    pub faults: Faults,
    /// Active health checks; `None` when turned off (the default).
    pub health_check: Option<HealthCheck>,
    /// Routes, first match wins: the file's `[[services.<name>.routes]]`, then
    /// those of the gRPC service config; requests none matches follow the
    /// settings above.
    pub routes: Vec<RouteConfig>,
}

impl ServiceConfig {
    /// A service with every setting at its default.
    pub fn new(name: impl Into<String>, discovery: DiscoverySource) -> Self {
        let mut problems = Vec::new();
        let raw = RawService {
            name: name.into(),
            settings: SettingMap::new(),
            routes: Vec::new(),
        };
        let config = resolve(&raw, &SettingMap::new(), Some(discovery), &mut problems);
        debug_assert!(
            problems.is_empty(),
            "built-in defaults must parse: {problems:?}"
        );
        config.expect("built-in defaults parse")
    }

    /// The name as it appears in variables: upper case, `-` and `.` as `_`.
    pub fn normalized_name(&self) -> String {
        normalize_service_name(&self.name)
    }
}

/// The registered setting of this name, found while the crate compiles (a name
/// missing from [`SETTINGS`](super::settings::SETTINGS) does not build).
macro_rules! setting {
    ($name:literal) => {
        const { super::settings::registered($name) }
    };
}

/// Looks a setting up: the service's own value, then the defaults, then the
/// built-in default from the registry.
struct Lookup<'a> {
    service: &'a RawService,
    defaults: &'a SettingMap,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Lookup<'a> {
    /// A setting with no built-in default: `None` when nobody set it.
    fn optional<T, E: std::fmt::Display>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<Option<T>> {
        let Some(entry) = self.entry(name) else {
            return Some(None);
        };
        match parse(entry.value.trim()) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                self.invalid(entry, &e);
                None
            }
        }
    }

    /// Whether the service or the defaults set `name`.
    fn is_set(&self, name: &str) -> bool {
        self.service.settings.contains_key(name) || self.defaults.contains_key(name)
    }

    /// Checks that the duration `short` is no longer than `long`; otherwise
    /// records the conflict against whichever of the two was set (the shorter
    /// one when both were) and returns false.
    fn no_longer_than(
        &mut self,
        (short_name, short): (&'static str, Duration),
        (long_name, long): (&'static str, Duration),
    ) -> bool {
        if short <= long {
            return true;
        }
        if self.is_set(short_name) {
            self.conflict(
                short_name,
                &format!("a duration no longer than {long_name} ({long:?})"),
            );
        } else {
            self.conflict(
                long_name,
                &format!("a duration no shorter than {short_name} ({short:?})"),
            );
        }
        false
    }

    /// Records that the value of `name` contradicts another setting.
    fn conflict(&mut self, name: &'static str, expected: &str) {
        let entry = self
            .service
            .settings
            .get(name)
            .or_else(|| self.defaults.get(name));
        let problem = match entry {
            Some(entry) => Problem::invalid(entry.origin.clone(), &entry.value, expected),
            None => Problem::other(
                code_origin(name),
                format!("{name} (default) conflicts with another setting: expected {expected}"),
            ),
        };
        self.problems.push(problem);
    }

    /// A setting with a built-in default (`def`, from [`setting!`]): the
    /// service's value, the defaults' value, or the built-in default parsed.
    ///
    /// Generic, so instantiated once per setting: everything but the call to
    /// `parse` lives in the non-generic helpers below, which keeps `resolve`
    /// small (start-up runs it once, from cold code).
    fn get<T, E: std::fmt::Display>(
        &mut self,
        def: &'static SettingDef,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<T> {
        match self.entry(def.name) {
            Some(entry) => match parse(&entry.value) {
                Ok(v) => Some(v),
                Err(expected) => {
                    self.invalid(entry, &expected);
                    None
                }
            },
            None => match parse(built_in_default(def)) {
                Ok(v) => Some(v),
                Err(e) => bad_built_in_default(def, &e),
            },
        }
    }

    /// The service's entry for `name`, else the defaults'.
    #[inline(never)]
    fn entry(&self, name: &str) -> Option<&'a Entry> {
        self.service
            .settings
            .get(name)
            .or_else(|| self.defaults.get(name))
    }

    /// Records that `entry` does not parse.
    fn invalid(&mut self, entry: &Entry, expected: &dyn std::fmt::Display) {
        super::record_invalid(self.problems, entry, expected);
    }
}

/// A setting's documented default as its parser takes it (without the README's
/// backticks).
fn built_in_default(def: &SettingDef) -> &'static str {
    def.default.trim_matches('`')
}

#[cold]
#[inline(never)]
fn bad_built_in_default(def: &SettingDef, e: &dyn std::fmt::Display) -> ! {
    panic!(
        "default of {} ({}) must parse: {e}",
        def.name,
        built_in_default(def)
    )
}

/// Types one service's settings; `None` when a problem was recorded.
pub(crate) fn resolve(
    service: &RawService,
    defaults: &SettingMap,
    discovery: Option<DiscoverySource>,
    problems: &mut Vec<Problem>,
) -> Option<ServiceConfig> {
    let before = problems.len();
    let discovery = discovery.or_else(|| discovery_source(service, problems));
    let mut l = Lookup {
        service,
        defaults,
        problems,
    };
    let protocol = l.get(setting!("PROTOCOL"), str::parse::<Protocol>);
    let kind = l.get(setting!("BALANCER"), str::parse::<BalancerKind>);
    let connect_timeout = l.get(setting!("CONNECT_TIMEOUT"), value::duration);
    let timeout = l.get(setting!("TIMEOUT"), value::optional_duration);
    let idle_timeout = l.get(setting!("IDLE_TIMEOUT"), value::duration);
    let max_connection_age = l.get(setting!("MAX_CONNECTION_AGE"), value::optional_duration);
    let max_connections = l.get(setting!("MAX_CONNECTIONS"), value::optional_limit);
    let http2_keepalive = l.get(setting!("HTTP2_KEEPALIVE"), value::optional_duration);
    let queue_timeout = l.get(setting!("QUEUE_TIMEOUT"), value::duration);
    let max_pending = l.get(setting!("MAX_PENDING"), value::positive_count);
    let panic_threshold = l.get(setting!("PANIC_THRESHOLD"), value::percent);
    let default_rtt = l.get(setting!("EWMA_DEFAULT_RTT"), value::duration);
    let decay = l.get(setting!("EWMA_DECAY"), value::duration);
    let identity = l.optional("IDENTITY", |v| {
        v.parse::<ExpectedIdentity>()
            .map_err(|e| format!("a SPIFFE ID such as spiffe://example.org/api, or a trust domain such as example.org ({e})"))
    });
    let per_try_timeout = l.get(setting!("PER_TRY_TIMEOUT"), value::optional_duration);
    let budget_ratio = l.get(setting!("RETRY_BUDGET"), value::percent);
    let budget_window = l.get(setting!("RETRY_WINDOW"), value::duration);
    let min_per_second = l.get(setting!("RETRY_MIN_PER_SECOND"), value::count);
    let max_attempts = l.get(setting!("RETRY_MAX_ATTEMPTS"), parse_max_attempts);
    let retry_on = l.get(setting!("RETRY_ON"), str::parse::<RetryOn>);
    let methods = l.get(setting!("RETRY_METHODS"), str::parse::<MethodSet>);
    let backoff = l.get(setting!("RETRY_BACKOFF"), str::parse::<RetryBackoff>);
    let replay_buffer = l.get(setting!("REPLAY_BUFFER"), value::size);
    let hedge_delay = l.get(setting!("HEDGE_DELAY"), parse_hedge_delay);
    let outlier = outlier_settings(&mut l);
    let breaker = breaker_settings(&mut l);
    let rate_limit = l.get(setting!("RATE_LIMIT"), |v| match v.trim() {
        "off" => Ok(None),
        other => other.parse::<Rate>().map(Some),
    });
    let concurrency = l.get(setting!("CONCURRENCY"), |v| match v.trim() {
        "off" => Ok(None),
        other => other.parse::<LimitAlgorithm>().map(Some),
    });
    let fault_delay = l.get(setting!("FAULT_DELAY"), parse_delay);
    let fault_abort = l.get(setting!("FAULT_ABORT"), parse_abort);
    let health_check = health_check(&mut l, protocol);
    let grpc = grpc_service_config(&mut l);
    let budget_ratio =
        budget_ratio.map(
            |ratio| match grpc.as_ref().and_then(|g| g.retry_throttling) {
                Some(t) if !l.is_set("RETRY_BUDGET") => t.token_ratio.min(1.0),
                _ => ratio,
            },
        );
    let min_per_second =
        min_per_second.map(
            |floor| match grpc.as_ref().and_then(|g| g.retry_throttling) {
                Some(t) if !l.is_set("RETRY_MIN_PER_SECOND") => t.max_tokens / 2,
                _ => floor,
            },
        );
    let kind = kind.map(|kind| match grpc.as_ref().and_then(|g| g.balancer) {
        Some(chosen) if !l.is_set("BALANCER") => chosen,
        _ => kind,
    });
    let mut routes = super::routes::file_routes(&service.routes, problems);
    if let (Some(grpc), Some(retry_on)) = (&grpc, retry_on) {
        routes.extend(grpc.routes(retry_on));
    }
    if problems.len() > before {
        return None;
    }
    Some(ServiceConfig {
        name: service.name.clone(),
        discovery: discovery?,
        protocol: protocol?,
        balancer: BalancerSettings {
            kind: kind?,
            default_rtt: default_rtt?,
            decay: decay?,
            panic_threshold: panic_threshold?,
            queue_timeout: queue_timeout?,
            max_pending: max_pending?,
        },
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        idle_timeout: idle_timeout?,
        max_connection_age: max_connection_age?,
        max_connections: max_connections?,
        http2_keepalive: http2_keepalive?,
        identity: identity?,
        retry: RetryPolicy {
            max_attempts: max_attempts?,
            retry_on: retry_on?,
            methods: methods?,
            backoff: backoff?,
            replay_buffer: usize::try_from(replay_buffer?).unwrap_or(usize::MAX),
            per_try_timeout: per_try_timeout?,
            hedge_delay: hedge_delay?,
        },
        retry_budget: RetryBudgetSettings {
            ratio: budget_ratio?,
            min_per_second: min_per_second?,
            window: budget_window?,
        },
        outlier: outlier?,
        breaker: breaker?,
        rate_limit: rate_limit?,
        concurrency: concurrency?,
        faults: Faults {
            delay: fault_delay?,
            abort: fault_abort?,
        },
        health_check: health_check?,
        routes,
    })
}

/// The `HEALTH_CHECK_*` settings; `Some(None)` when active checks are off.
fn health_check(l: &mut Lookup<'_>, protocol: Option<Protocol>) -> Option<Option<HealthCheck>> {
    let path = l.get(setting!("HEALTH_CHECK_PATH"), parse_health_path);
    // Not trimmed: an empty name (the whole server) is a value of its own.
    let grpc = l.get(setting!("HEALTH_CHECK_GRPC_SERVICE"), |v| match v {
        "off" => Ok::<_, &str>(None),
        name => Ok(Some(name.to_owned())),
    });
    let interval = l.get(setting!("HEALTH_CHECK_INTERVAL"), value::positive_duration);
    let timeout = l.get(setting!("HEALTH_CHECK_TIMEOUT"), value::positive_duration);
    let threshold = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or("a whole number of at least 1")
    };
    let healthy = l.get(setting!("HEALTH_CHECK_HEALTHY_THRESHOLD"), threshold);
    let unhealthy = l.get(setting!("HEALTH_CHECK_UNHEALTHY_THRESHOLD"), threshold);
    let (interval, timeout) = (interval?, timeout?);
    if !l.no_longer_than(
        ("HEALTH_CHECK_TIMEOUT", timeout),
        ("HEALTH_CHECK_INTERVAL", interval),
    ) {
        return None;
    }
    let kind = match (path?, grpc?) {
        (None, None) => return Some(None),
        (Some(_), Some(_)) => {
            l.conflict(
                "HEALTH_CHECK_GRPC_SERVICE",
                "`off` while HEALTH_CHECK_PATH is set (a service has one kind of health check)",
            );
            return None;
        }
        (Some(path), None) => HealthCheckKind::Http { path },
        (None, Some(service)) => {
            if protocol? != Protocol::Grpc {
                l.conflict(
                    "HEALTH_CHECK_GRPC_SERVICE",
                    "`off` unless the service's PROTOCOL is `grpc` (gRPC health checks need a gRPC server)",
                );
                return None;
            }
            HealthCheckKind::Grpc { service }
        }
    };
    Some(Some(HealthCheck {
        kind,
        settings: HealthCheckSettings {
            interval,
            timeout,
            healthy_threshold: healthy?,
            unhealthy_threshold: unhealthy?,
            ..HealthCheckSettings::default()
        },
    }))
}

/// `off`, or an absolute path with an optional query (`/healthz?full=1`).
fn parse_health_path(v: &str) -> Result<Option<String>, &'static str> {
    const EXPECTED: &str = "`off` or a path starting with `/`, such as /healthz";
    match v.trim() {
        "off" => Ok(None),
        path if path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok() => {
            Ok(Some(path.to_owned()))
        }
        _ => Err(EXPECTED),
    }
}

/// The service's gRPC service config, parsed; what it cannot apply is logged.
/// An invalid one is a problem naming the variable and the JSON field.
fn grpc_service_config(l: &mut Lookup<'_>) -> Option<GrpcServiceConfig> {
    let entry = l
        .service
        .settings
        .get("GRPC_SERVICE_CONFIG")
        .or_else(|| l.defaults.get("GRPC_SERVICE_CONFIG"))?;
    match GrpcServiceConfig::from_json(&entry.value) {
        Ok(config) => {
            // The defaults are also checked on their own, under this name: warn once.
            if l.service.name != DEFAULTS_NAME {
                for ignored in &config.ignored {
                    tracing::warn!(service = %l.service.name, setting = %entry.origin, "{ignored}");
                }
            }
            Some(config)
        }
        Err(e) => {
            l.problems
                .push(Problem::other(entry.origin.clone(), e.to_string()));
            None
        }
    }
}

/// The name the `[defaults]` are checked under, as a service of their own.
pub(crate) const DEFAULTS_NAME: &str = "(defaults)";

/// The `OUTLIER_*` settings; `Some(None)` when outlier detection is off.
fn outlier_settings(l: &mut Lookup<'_>) -> Option<Option<OutlierSettings>> {
    let on = l.get(setting!("OUTLIER_DETECTION"), value::boolean);
    let consecutive = l.get(
        setting!("OUTLIER_CONSECUTIVE_FAILURES"),
        value::optional_positive,
    );
    let interval = l.get(setting!("OUTLIER_INTERVAL"), value::positive_duration);
    let base = l.get(setting!("OUTLIER_BASE_EJECTION"), value::positive_duration);
    let max = l.get(setting!("OUTLIER_MAX_EJECTION"), value::positive_duration);
    let max_ejected = l.get(setting!("OUTLIER_MAX_EJECTED"), value::percent);
    let (base, max) = (base?, max?);
    if !l.no_longer_than(
        ("OUTLIER_BASE_EJECTION", base),
        ("OUTLIER_MAX_EJECTION", max),
    ) {
        return None;
    }
    let settings = OutlierSettings {
        consecutive_failures: consecutive?,
        interval: interval?,
        base_ejection: base,
        max_ejection: max,
        max_ejected: max_ejected?,
        ..OutlierSettings::default()
    };
    Some(on?.then_some(settings))
}

/// The `BREAKER*` settings; `Some(None)` when there is no breaker.
fn breaker_settings(l: &mut Lookup<'_>) -> Option<Option<BreakerSettings>> {
    let on = l.get(setting!("BREAKER"), value::boolean);
    let failure_rate = l.get(setting!("BREAKER_FAILURE_RATE"), value::percent);
    let slow_call = l.get(setting!("BREAKER_SLOW_CALL"), value::optional_duration);
    let window = l.get(setting!("BREAKER_WINDOW"), value::positive_count);
    let open_time = l.get(setting!("BREAKER_OPEN_TIME"), value::positive_duration);
    let probes = l.get(setting!("BREAKER_PROBES"), value::positive_count);
    let window = window?;
    let settings = BreakerSettings {
        failure_rate: failure_rate?,
        slow_call: slow_call?,
        window,
        min_calls: window,
        open_time: open_time?,
        probes: probes?,
        ..BreakerSettings::default()
    };
    Some(on?.then_some(settings))
}

/// Exactly one of ENDPOINTS, DNS, SRV, FILE.
fn discovery_source(service: &RawService, problems: &mut Vec<Problem>) -> Option<DiscoverySource> {
    let sources: Vec<(&str, &Entry)> = ["ENDPOINTS", "DNS", "SRV", "FILE"]
        .into_iter()
        .filter_map(|name| service.settings.get(name).map(|e| (name, e)))
        .collect();
    let (name, entry) = match sources.as_slice() {
        [one] => *one,
        [] => {
            let (_, any) = service.settings.iter().next()?;
            problems.push(Problem::other(
                any.origin.clone(),
                format!("service `{}` has settings but no endpoints: set one of its ENDPOINTS, DNS, SRV or FILE settings", service.name),
            ));
            return None;
        }
        [(_, first), ..] => {
            problems.push(Problem::other(
                first.origin.clone(),
                format!("service `{}` has more than one endpoint source; keep one of ENDPOINTS, DNS, SRV and FILE", service.name),
            ));
            return None;
        }
    };
    let bad = |expected: &str| Problem::invalid(entry.origin.clone(), &entry.value, expected);
    let source = match name {
        "ENDPOINTS" => {
            let items = value::list(&entry.value);
            let parsed: Result<Vec<HostPort>, _> =
                items.iter().map(|i| i.parse::<HostPort>()).collect();
            match parsed {
                Ok(list) if !list.is_empty() => DiscoverySource::Static(list),
                _ => {
                    problems.push(bad(
                        "a comma-separated list of host:port, e.g. 10.0.0.5:8080,10.0.0.6:8080",
                    ));
                    return None;
                }
            }
        }
        "DNS" => match entry.value.trim().parse::<HostPort>() {
            Ok(hp) => DiscoverySource::Dns(hp),
            Err(_) => {
                problems.push(bad("a host:port to resolve, e.g. api.internal:8080"));
                return None;
            }
        },
        "SRV" => {
            let name = entry.value.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                problems.push(bad("an SRV name such as _http._tcp.api.example"));
                return None;
            }
            DiscoverySource::Srv(name.to_string())
        }
        _ => {
            if entry.value.trim().is_empty() {
                problems.push(bad("the path of a JSON endpoints file"));
                return None;
            }
            DiscoverySource::File(entry.value.trim().into())
        }
    };
    Some(source)
}

pub(crate) fn code_origin(what: &str) -> Origin {
    Origin::Code(what.to_string())
}
