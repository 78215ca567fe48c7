//! Configuration from `MESH_` environment variables, an optional file, or code.
//!
//! Environment variables are the mesh's main user interface: in a serverless
//! function or a pod spec they are often the only one. Every setting is listed in
//! [`settings::SETTINGS`] and in the README's table. The rules:
//!
//! - Process-wide settings are `MESH_<SETTING>`; per service,
//!   `MESH_SERVICE_<NAME>_<SETTING>`, where `<NAME>` is the service name upper-cased
//!   with `-` and `.` as `_`, and the setting is the longest known suffix; every
//!   service's default is `MESH_DEFAULT_<SETTING>`. A service exists for the mesh
//!   once it has an endpoint source (`ENDPOINTS`, `DNS`, `SRV` or `FILE`).
//! - `MESH_CONFIG_FILE` names a TOML or JSON file with the same settings in lower
//!   case (`timeout = "2s"` under `[services.api]` or `[defaults]`). Precedence, most
//!   specific first: the service's variable, the service's file entry, the
//!   `MESH_DEFAULT_` variable, the file's `[defaults]`, the built-in default.
//!   The file also holds what a variable cannot: a service's routes,
//!   `[[services.api.routes]]`, each matching methods and a path and overriding
//!   the service's timeouts, retries, hedging and faults (see [`crate::route`]).
//! - A bad value, an unknown `MESH_` variable or file key, or a setting reserved for
//!   a later feature is a start-up error naming the variable (or file and key), the
//!   value and what was expected. Every problem is reported at once. Variables that
//!   Kubernetes injects for a Service named `mesh…` are recognised and left alone.
//!
//! ```
//! use mesh_core::config::MeshConfig;
//!
//! let env = [
//!     ("MESH_SERVICE_NAME", "checkout"),
//!     ("MESH_SERVICE_PAYMENTS_ENDPOINTS", "127.0.0.1:8081,127.0.0.1:8082"),
//!     ("MESH_SERVICE_PAYMENTS_TIMEOUT", "2s"),
//! ];
//! let config = MeshConfig::from_source(&env)?;
//! let payments = config.service_for_host("payments").unwrap();
//! assert_eq!(payments.timeout, Some(std::time::Duration::from_secs(2)));
//! # Ok::<(), mesh_core::config::ConfigError>(())
//! ```

mod error;
mod raw;
mod routes;
mod service;
pub mod settings;
mod source;
pub mod value;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use error::{ConfigError, Origin, Problem, ProblemKind};
pub use raw::normalize_service_name;
pub use service::{Protocol, ServiceConfig};
pub use source::{Env, Layered, Source};

use crate::authz::{AuthzConfig, Mode, Rule};
use crate::concurrency::LimitAlgorithm;
use crate::discovery::DnsSettings;
use crate::identity::{parse_federated_bundles, IdentityFiles, WorkloadApiConfig};
use crate::ratelimit::Rate;
use raw::{Entry, RawSettings};

/// What happens to a request for a host the mesh does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Refuse it with an error (the default: a typo in a service name fails loudly).
    #[default]
    Deny,
    /// Send it straight out: plain DNS, and web PKI TLS for `https`.
    Allow,
}

/// How the inbound listener treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundMode {
    /// Every connection must complete mTLS with an accepted SPIFFE identity.
    #[default]
    Strict,
}

/// Whether inbound requests are logged, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// One JSON object per request on stdout.
    Json,
}

impl AccessLog {
    /// Parses `off` / `json`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s.trim() {
            "off" => Ok(AccessLog::Off),
            "json" => Ok(AccessLog::Json),
            _ => Err("`off` or `json`"),
        }
    }
}

/// Limits on what the inbound server lets into the handler
/// (`MESH_INBOUND_RATE_LIMIT`, `MESH_INBOUND_PEER_RATE_LIMIT`, `MESH_INBOUND_CONCURRENCY`);
/// all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InboundLimits {
    /// Requests per unit of time from all peers together (429 beyond).
    pub rate: Option<Rate>,
    /// Requests per unit of time from each peer SPIFFE ID (429 beyond).
    pub peer_rate: Option<Rate>,
    /// Requests in the handler at once (503 beyond).
    pub concurrency: Option<LimitAlgorithm>,
}

/// The whole mesh configuration, parsed and validated once at start-up.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    service_name: String,
    identity: Option<IdentityFiles>,
    workload_api: Option<WorkloadApiConfig>,
    inbound_addr: Option<SocketAddr>,
    inbound_mode: InboundMode,
    authz: Option<AuthzConfig>,
    inbound_limits: InboundLimits,
    zone: Option<String>,
    egress: Egress,
    dns: DnsSettings,
    metrics_addr: Option<SocketAddr>,
    access_log: AccessLog,
    services: Vec<ServiceConfig>,
    /// Normalized service names with their index into `services`, sorted by
    /// name: looked up by binary search, comparing the host as it is
    /// normalized, so a request's lookup neither copies nor hashes it.
    index: Vec<(String, usize)>,
}

impl MeshConfig {
    /// Reads the process environment (and `MESH_CONFIG_FILE` if set).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env)
    }

    /// Reads `source` (and the file it names in `MESH_CONFIG_FILE`, if any).
    pub fn from_source(source: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut raw = RawSettings::default();
        if let Some(path) = source
            .get("MESH_CONFIG_FILE")
            .filter(|p| !p.trim().is_empty())
        {
            raw.read_file(&PathBuf::from(path), &mut problems);
        }
        raw.read_variables(source, &mut problems);
        let config = Self::resolve(&raw, source, &mut problems);
        // A bad default is found once for itself and again for each service using it.
        let mut seen = Vec::new();
        problems.retain(|p| {
            let new = !seen.contains(p);
            if new {
                seen.push(p.clone());
            }
            new
        });
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::new(problems)),
        }
    }

    fn resolve(
        raw: &RawSettings,
        source: &(impl Source + ?Sized),
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let global = |name: &'static str| raw.global.get(name);
        let service_name = global("SERVICE_NAME")
            .map(|e| e.value.trim().to_string())
            .or_else(|| source.get("OTEL_SERVICE_NAME"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown_service".to_string());
        let zone = global("ZONE")
            .map(|e| e.value.trim().to_string())
            .filter(|z| !z.is_empty());
        let egress = typed(global("EGRESS"), problems, |v| match v.trim() {
            "deny" => Ok(Egress::Deny),
            "allow" => Ok(Egress::Allow),
            _ => Err("`allow` or `deny`"),
        })
        .unwrap_or_default();
        let metrics_addr = typed(
            global("METRICS_ADDR"),
            problems,
            value::optional_socket_addr,
        )
        .unwrap_or_else(|| {
            value::optional_socket_addr(default_of("METRICS_ADDR"))
                .expect("documented default parses")
        });
        let access_log =
            typed(global("ACCESS_LOG"), problems, AccessLog::parse).unwrap_or_else(|| {
                AccessLog::parse(default_of("ACCESS_LOG")).expect("documented default parses")
            });
        let mut dns = DnsSettings::default();
        if let Some(servers) = typed(global("DNS_SERVERS"), problems, |v| {
            value::list(v)
                .iter()
                .map(|s| s.parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "comma-separated ip:port name servers, e.g. 127.0.0.1:53")
        }) {
            dns.servers = servers;
        }
        dns.min_ttl =
            typed(global("DNS_MIN_TTL"), problems, value::duration).unwrap_or(dns.min_ttl);
        dns.max_ttl =
            typed(global("DNS_MAX_TTL"), problems, value::duration).unwrap_or(dns.max_ttl);
        if dns.min_ttl > dns.max_ttl {
            let entry = global("DNS_MIN_TTL").or(global("DNS_MAX_TTL"))?;
            problems.push(Problem::invalid(
                entry.origin.clone(),
                &entry.value,
                "MESH_DNS_MIN_TTL no greater than MESH_DNS_MAX_TTL",
            ));
        }

        let workload_api = workload_api_config(raw, source, problems);
        let identity = identity_files(&raw.global, workload_api.is_some(), problems);
        let has_identity = identity.is_some() || workload_api.is_some();
        let inbound_addr = typed(global("INBOUND_ADDR"), problems, |v| {
            v.trim()
                .parse::<SocketAddr>()
                .map_err(|_| "an ip:port to listen on, e.g. 0.0.0.0:8443")
        });
        let inbound_mode = typed(global("INBOUND_MODE"), problems, |v| match v.trim() {
            "strict" => Ok(InboundMode::Strict),
            _ => Err("`strict` (permissive mode is not supported yet)"),
        })
        .unwrap_or_default();
        if let (Some(entry), false) = (global("INBOUND_ADDR"), has_identity) {
            problems.push(Problem::other(
                entry.origin.clone(),
                "the inbound listener is strict mTLS and needs an identity: set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE, or SPIFFE_ENDPOINT_SOCKET for the SPIFFE Workload API",
            ));
        }

        let authz = authz_config(raw, problems);
        let mut rate = |name| {
            typed(global(name), problems, |v| match v.trim() {
                "off" => Ok(None),
                other => other.parse::<Rate>().map(Some),
            })
            .flatten()
        };
        let inbound_limits = InboundLimits {
            rate: rate("INBOUND_RATE_LIMIT"),
            peer_rate: rate("INBOUND_PEER_RATE_LIMIT"),
            concurrency: typed(global("INBOUND_CONCURRENCY"), problems, |v| {
                match v.trim() {
                    "off" => Ok(None),
                    other => other.parse::<LimitAlgorithm>().map(Some),
                }
            })
            .flatten(),
        };

        // Defaults are checked even when no service uses them yet. Without any,
        // there is nothing to check: the built-in defaults parse and agree
        // (`ServiceConfig::new` relies on it, and the tests build one).
        if !raw.defaults.is_empty() {
            let placeholder = raw::RawService {
                name: service::DEFAULTS_NAME.into(),
                ..Default::default()
            };
            let any_source = crate::discovery::DiscoverySource::Static(Vec::new());
            service::resolve(&placeholder, &raw.defaults, Some(any_source), problems);
        }
        let services: Vec<ServiceConfig> = raw
            .services
            .values()
            .filter_map(|svc| service::resolve(svc, &raw.defaults, None, problems))
            .collect();

        if !has_identity {
            for svc in raw.services.values() {
                if let Some(entry) = svc
                    .settings
                    .get("IDENTITY")
                    .or_else(|| raw.defaults.get("IDENTITY"))
                {
                    problems.push(Problem::other(
                        entry.origin.clone(),
                        format!("service `{}` expects a server identity, but mTLS is off: set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE, or SPIFFE_ENDPOINT_SOCKET", svc.name),
                    ));
                }
            }
        }
        let mut builder = MeshConfig::builder(service_name).egress(egress).dns(dns);
        builder.zone = zone;
        builder.identity = identity;
        builder.workload_api = workload_api;
        builder.inbound_addr = inbound_addr;
        builder.inbound_mode = inbound_mode;
        builder.metrics_addr = metrics_addr;
        builder.access_log = access_log;
        builder.authz = authz;
        builder.inbound_limits = inbound_limits;
        builder.services = services;
        match builder.build() {
            Ok(config) => Some(config),
            Err(e) => {
                problems.extend(e.problems().iter().cloned());
                None
            }
        }
    }

    /// Starts a configuration in code.
    pub fn builder(service_name: impl Into<String>) -> MeshConfigBuilder {
        MeshConfigBuilder {
            service_name: service_name.into(),
            identity: None,
            workload_api: None,
            inbound_addr: None,
            inbound_mode: InboundMode::Strict,
            authz: None,
            inbound_limits: InboundLimits::default(),
            zone: None,
            egress: Egress::Deny,
            dns: DnsSettings::default(),
            metrics_addr: None,
            access_log: AccessLog::Off,
            services: Vec::new(),
        }
    }

    /// This service's own name.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The files of this workload's SPIFFE identity, when mTLS is on with
    /// identity files (`MESH_TLS_*`).
    pub fn identity(&self) -> Option<&IdentityFiles> {
        self.identity.as_ref()
    }

    /// The SPIFFE Workload API to take this workload's identity from, when
    /// `SPIFFE_ENDPOINT_SOCKET` is set and `MESH_TLS_*` are not. At most one of
    /// this and [`identity`](Self::identity) is set.
    pub fn workload_api(&self) -> Option<&WorkloadApiConfig> {
        self.workload_api.as_ref()
    }

    /// Whether mTLS is on: an identity comes from files or the Workload API.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some() || self.workload_api.is_some()
    }

    /// Where the inbound mTLS listener binds, if configured.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// How the inbound listener treats connections.
    pub fn inbound_mode(&self) -> InboundMode {
        self.inbound_mode
    }

    /// Inbound authorization, when rules or `MESH_AUTHZ_DEFAULT` are set
    /// (`None`: any peer of an accepted trust domain is let in).
    pub fn authz(&self) -> Option<&AuthzConfig> {
        self.authz.as_ref()
    }

    /// The limits `Mesh::serve` puts in front of the handler.
    pub fn inbound_limits(&self) -> &InboundLimits {
        &self.inbound_limits
    }

    /// This instance's zone, if configured.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// What happens to requests for unknown hosts.
    pub fn egress(&self) -> Egress {
        self.egress
    }

    /// Settings shared by DNS and SRV discovery.
    pub fn dns(&self) -> &DnsSettings {
        &self.dns
    }

    /// Where the Prometheus scrape endpoint listens (`MESH_METRICS_ADDR`), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether inbound requests are logged (`MESH_ACCESS_LOG`).
    pub fn access_log(&self) -> AccessLog {
        self.access_log
    }

    /// Every configured service.
    pub fn services(&self) -> &[ServiceConfig] {
        &self.services
    }

    /// The service a request's host names, matched after normalization
    /// (`my-api`, `MY_API` and `my.api` are one service).
    pub fn service_for_host(&self, host: &str) -> Option<&ServiceConfig> {
        self.service_index(host).map(|i| &self.services[i])
    }

    /// The position in [`services`](Self::services) of the service `host` names.
    /// Does not allocate: it runs on every request.
    pub fn service_index(&self, host: &str) -> Option<usize> {
        let normalized = || host.bytes().map(raw::normalize_byte);
        self.index
            .binary_search_by(|(key, _)| key.bytes().cmp(normalized()))
            .ok()
            .map(|found| self.index[found].1)
    }
}

/// The standard variable naming the SPIFFE Workload API (not ours, so not `MESH_`).
const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// The identity files' variables, which the Workload API excludes.
const TLS_FILE_PARTS: [&str; 3] = ["TLS_CERT", "TLS_KEY", "TLS_BUNDLE"];

/// `SPIFFE_ENDPOINT_SOCKET` (read through `source`, like every variable) turns
/// on the Workload API. Together with `MESH_TLS_*` files it is an error rather
/// than a silent precedence: which identity a workload presents must never
/// depend on a rule the operator has to remember.
fn workload_api_config(
    raw: &RawSettings,
    source: &(impl Source + ?Sized),
    problems: &mut Vec<Problem>,
) -> Option<WorkloadApiConfig> {
    // Checked even without a socket, so a typo is found before it matters.
    let timeout = typed(
        raw.global.get("WORKLOAD_API_TIMEOUT"),
        problems,
        value::duration,
    );
    let socket = source
        .get(SPIFFE_ENDPOINT_SOCKET)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())?;
    let origin = Origin::Variable(SPIFFE_ENDPOINT_SOCKET.into());
    if !(socket.starts_with("unix:") || socket.starts_with("tcp:")) {
        problems.push(Problem::invalid(
            origin,
            &socket,
            "a Workload API address, `unix:///path/to/agent.sock` (or `tcp:ip:port`)",
        ));
        return None;
    }
    let files: Vec<String> = TLS_FILE_PARTS
        .iter()
        .filter(|p| raw.global.contains_key(*p))
        .map(|p| format!("MESH_{p}"))
        .collect();
    if !files.is_empty() {
        problems.push(Problem::other(
            origin,
            format!(
                "both SPIFFE_ENDPOINT_SOCKET ({socket}) and {} choose where the workload identity comes from: unset SPIFFE_ENDPOINT_SOCKET to use the files, or remove {} to use the SPIFFE Workload API",
                files.join(", "),
                files.join(", ")
            ),
        ));
        return None;
    }
    let mut config = WorkloadApiConfig::new(socket);
    if let Some(timeout) = timeout {
        config.startup_timeout = timeout;
    }
    Some(config)
}

/// `MESH_TLS_CERT`, `MESH_TLS_KEY` and `MESH_TLS_BUNDLE` go together (plus any
/// federated bundles); a partial set is an error naming what is missing.
fn identity_files(
    global: &raw::SettingMap,
    workload_api: bool,
    problems: &mut Vec<Problem>,
) -> Option<IdentityFiles> {
    const PARTS: [&str; 3] = TLS_FILE_PARTS;
    let present: Vec<&Entry> = PARTS.iter().filter_map(|p| global.get(p)).collect();
    let federated = global.get("TLS_FEDERATED_BUNDLES");
    if present.is_empty() {
        if let (Some(entry), true) = (federated, workload_api) {
            problems.push(Problem::other(
                entry.origin.clone(),
                "the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET) delivers federated bundles itself: remove MESH_TLS_FEDERATED_BUNDLES",
            ));
        } else if let Some(entry) = federated {
            problems.push(Problem::other(entry.origin.clone(), "federated bundles need our own identity: set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE"));
        }
        return None;
    }
    if present.len() < PARTS.len() {
        let missing: Vec<String> = PARTS
            .iter()
            .filter(|p| !global.contains_key(*p))
            .map(|p| format!("MESH_{p}"))
            .collect();
        problems.push(Problem::other(
            present[0].origin.clone(),
            format!(
                "mTLS needs MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE together; missing {}",
                missing.join(", ")
            ),
        ));
        return None;
    }
    let path = |p: &str| global[p].value.trim().to_string();
    let mut files = IdentityFiles::new(path("TLS_CERT"), path("TLS_KEY"), path("TLS_BUNDLE"));
    if let Some(entry) = federated {
        match parse_federated_bundles(&entry.value) {
            Ok(list) => files.federated = list,
            Err(e) => {
                problems.push(Problem::invalid(
                    entry.origin.clone(),
                    &entry.value,
                    format!("`trust-domain=path,…` ({e})"),
                ));
                return None;
            }
        }
    }
    Some(files)
}

/// The documented default of a registered setting: the one source of truth.
/// The documented default of the setting `name` (without its backticks): typed
/// defaults are parsed from it, so the documentation cannot drift from the code.
pub(crate) fn default_of(name: &str) -> &'static str {
    settings::SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.default.trim_matches('`'))
        .expect("the setting is registered")
}

/// Authorization is on when rules or a default are given. `MESH_AUTHZ_RULES`
/// replaces the file's rules as a whole (variables override the file).
fn authz_config(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<AuthzConfig> {
    let default_entry = raw.global.get("AUTHZ_DEFAULT");
    let default_text = settings::find(settings::Scope::Global, "AUTHZ_DEFAULT")
        .expect("registered")
        .default
        .trim_matches('`');
    let mode = typed(default_entry, problems, Mode::parse)
        .unwrap_or_else(|| Mode::parse(default_text).expect("the documented default parses"));
    let rules = match (raw.global.get("AUTHZ_RULES"), &raw.authz_file_rules) {
        (Some(entry), Some((_, file_origin))) if matches!(entry.origin, Origin::File { .. }) => {
            problems.push(Problem::other(
                file_origin.clone(),
                "give the file's rules either as `authz_rules` or as `[[authz.rules]]`, not both",
            ));
            return None;
        }
        (Some(entry), _) => match Rule::parse_list(&entry.value) {
            Ok(rules) => Some(rules),
            Err(e) => {
                problems.push(Problem::invalid(
                    entry.origin.clone(),
                    &entry.value,
                    format!("rules `<allow|deny> <peer> <methods> <path>` separated by `;`; the offending part is {e}"),
                ));
                return None;
            }
        },
        (None, Some((rules, _))) => Some(rules.clone()),
        (None, None) => None,
    };
    if rules.is_none() && default_entry.is_none() {
        return None;
    }
    Some(AuthzConfig {
        mode,
        rules: rules.unwrap_or_default(),
    })
}

/// Parses a global setting if it is set; records a problem when it does not parse.
fn typed<T, E: std::fmt::Display>(
    entry: Option<&Entry>,
    problems: &mut Vec<Problem>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<T> {
    let entry = entry?;
    parse(&entry.value)
        .map_err(|expected| record_invalid(problems, entry, &expected))
        .ok()
}

/// Records that `entry` does not parse. Not generic, so the code of each
/// setting's typing (instantiated once per parser) stays small.
#[inline(never)]
pub(crate) fn record_invalid(
    problems: &mut Vec<Problem>,
    entry: &Entry,
    expected: &dyn std::fmt::Display,
) {
    problems.push(Problem::invalid(
        entry.origin.clone(),
        &entry.value,
        expected.to_string(),
    ));
}

/// Builds a [`MeshConfig`] in code.
#[derive(Debug, Clone)]
pub struct MeshConfigBuilder {
    service_name: String,
    identity: Option<IdentityFiles>,
    workload_api: Option<WorkloadApiConfig>,
    inbound_addr: Option<SocketAddr>,
    inbound_mode: InboundMode,
    authz: Option<AuthzConfig>,
    inbound_limits: InboundLimits,
    zone: Option<String>,
    egress: Egress,
    dns: DnsSettings,
    metrics_addr: Option<SocketAddr>,
    access_log: AccessLog,
    services: Vec<ServiceConfig>,
}

impl MeshConfigBuilder {
    /// Turns on mTLS with the SPIFFE identity in these files.
    pub fn identity(mut self, files: IdentityFiles) -> Self {
        self.identity = Some(files);
        self
    }

    /// Turns on mTLS with the SPIFFE identity the Workload API hands out
    /// (exclusive with [`identity`](Self::identity)).
    pub fn workload_api(mut self, workload_api: WorkloadApiConfig) -> Self {
        self.workload_api = Some(workload_api);
        self
    }

    /// Where the inbound mTLS listener binds.
    pub fn inbound_addr(mut self, addr: SocketAddr) -> Self {
        self.inbound_addr = Some(addr);
        self
    }

    /// Serves Prometheus metrics on `addr` (see [`MeshConfig::metrics_addr`]).
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Logs inbound requests (see [`MeshConfig::access_log`]).
    pub fn access_log(mut self, access_log: AccessLog) -> Self {
        self.access_log = access_log;
        self
    }

    /// Turns on inbound authorization with these settings.
    pub fn authz(mut self, authz: AuthzConfig) -> Self {
        self.authz = Some(authz);
        self
    }

    /// Limits the inbound server (see [`MeshConfig::inbound_limits`]).
    pub fn inbound_limits(mut self, limits: InboundLimits) -> Self {
        self.inbound_limits = limits;
        self
    }

    /// This instance's locality.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// What happens to requests for unknown hosts.
    pub fn egress(mut self, egress: Egress) -> Self {
        self.egress = egress;
        self
    }

    /// DNS resolver settings.
    pub fn dns(mut self, dns: DnsSettings) -> Self {
        self.dns = dns;
        self
    }

    /// Adds a service.
    pub fn service(mut self, service: ServiceConfig) -> Self {
        self.services.push(service);
        self
    }

    /// Checks that no two services share a normalized name.
    pub fn build(self) -> Result<MeshConfig, ConfigError> {
        let mut index: Vec<(String, usize)> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, svc)| (svc.normalized_name(), i))
            .collect();
        index.sort();
        let mut problems = Vec::new();
        for pair in index.windows(2) {
            let ((key, first), (next, second)) = (&pair[0], &pair[1]);
            if key == next {
                problems.push(Problem::other(
                    service::code_origin(&self.services[*second].name),
                    format!(
                        "services `{}` and `{}` both normalize to `{key}`; rename one",
                        self.services[*first].name, self.services[*second].name
                    ),
                ));
            }
        }
        if let (Some(_), Some(api)) = (&self.identity, &self.workload_api) {
            problems.push(Problem::other(
                Origin::Code("identity and workload_api".into()),
                format!(
                    "both identity files and the SPIFFE Workload API ({}) are configured; choose one",
                    api.socket
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError::new(problems));
        }
        Ok(MeshConfig {
            service_name: self.service_name,
            identity: self.identity,
            workload_api: self.workload_api,
            inbound_addr: self.inbound_addr,
            inbound_mode: self.inbound_mode,
            authz: self.authz,
            inbound_limits: self.inbound_limits,
            zone: self.zone,
            egress: self.egress,
            dns: self.dns,
            metrics_addr: self.metrics_addr,
            access_log: self.access_log,
            services: self.services,
            index,
        })
    }
}

#[cfg(test)]
mod tests;
