//! DNS sources: A/AAAA for a hostname, SRV for a service name, re-resolved when the
//! answer's TTL runs out.
//!
//! The TTL is clamped to `[min_ttl, max_ttl]` of [`DnsSettings`]: the floor keeps a TTL
//! of 0 from becoming a query loop, the ceiling keeps a day-long TTL from hiding a
//! change. Failed lookups are retried with exponential backoff inside the same bounds,
//! and never remove endpoints: the last good set stays until an answer replaces it.
//!
//! The resolver's own cache is cleared before each round, because the schedule here is
//! already driven by the TTL; a cached answer would only delay what the TTL allows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use super::error::Kind;
use super::publish::Publisher;
use super::{DnsSettings, Endpoint, HostPort, Snapshot};
use crate::backoff::ExponentialBackoff;

/// How long one query to one server may take before it counts as timed out.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What to resolve.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A/AAAA records of `host`, each address with `port`.
    Host(HostPort),
    /// SRV records of a name; targets resolved to addresses.
    Srv(String),
}

/// A failed resolution: a fixed reason word for the metric and a detail for the log.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    detail: String,
}

impl Failure {
    fn from_net(err: &NetError, what: &str) -> Self {
        let reason = if err.is_nx_domain() {
            "nxdomain"
        } else if err.is_no_records_found() {
            "no_records"
        } else {
            match err {
                NetError::Timeout => "timeout",
                NetError::Io(_) | NetError::NoConnections => "unreachable",
                NetError::Dns(DnsError::ResponseCode(_)) => "server_error",
                _ => "resolve",
            }
        };
        Failure {
            reason,
            detail: format!("{what}: {err}"),
        }
    }
}

/// An answer: the endpoints and how long they may be trusted.
#[derive(Debug)]
struct Answer {
    endpoints: Vec<Endpoint>,
    ttl: Duration,
}

/// Builds a resolver from the settings: the given servers over UDP and TCP, or the
/// system configuration when none are given.
fn build_resolver(settings: &DnsSettings) -> Result<TokioResolver, String> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| e.to_string())?
    } else {
        let servers = settings
            .servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for conn in &mut config.connections {
                    conn.port = server.port();
                }
                config
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Explicit servers are the whole truth; /etc/hosts would shadow them.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let opts = builder.options_mut();
    // A dead server otherwise costs 5 s per try, three tries per lookup: 15 s before the
    // failure is even noticed. Discovery is off the request path, but a stale set should
    // be reported promptly; 2 s is plenty for a cluster or local resolver.
    opts.timeout = QUERY_TIMEOUT;
    // Both families, in parallel: a dual-stack service publishes all its addresses.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| e.to_string())
}

/// Checks the name and builds the resolver now (errors are start-up errors), then
/// returns the task that keeps the name resolved.
pub(crate) fn start(
    target: Target,
    settings: &DnsSettings,
    publisher: Publisher,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Kind> {
    let name = match &target {
        Target::Host(hp) => &hp.host,
        Target::Srv(name) => name,
    };
    if name.parse::<IpAddr>().is_err() {
        Name::from_utf8(name).map_err(|e| Kind::InvalidName(name.clone(), e.to_string()))?;
    }
    let resolver = build_resolver(settings).map_err(Kind::Resolver)?;
    let min_ttl = settings.min_ttl;
    let max_ttl = settings.max_ttl.max(min_ttl);
    Ok(run(resolver, target, min_ttl, max_ttl, publisher))
}

async fn run(
    resolver: TokioResolver,
    target: Target,
    min_ttl: Duration,
    max_ttl: Duration,
    mut publisher: Publisher,
) {
    let backoff = ExponentialBackoff::new(min_ttl, max_ttl, 0.1);
    let mut failures: u32 = 0;
    loop {
        resolver.clear_cache();
        let result = match &target {
            Target::Host(hp) => resolve_host(&resolver, &hp.host, hp.port).await,
            Target::Srv(name) => resolve_srv(&resolver, name).await,
        };
        let wait = match result {
            Ok(answer) if !answer.endpoints.is_empty() => {
                failures = 0;
                publisher.good(Snapshot::new(answer.endpoints));
                answer.ttl.clamp(min_ttl, max_ttl)
            }
            Ok(_) => {
                publisher.failed("empty", &"the answer held no usable address");
                failures = failures.saturating_add(1);
                backoff.delay(failures - 1)
            }
            Err(failure) => {
                publisher.failed(failure.reason, &failure.detail);
                failures = failures.saturating_add(1);
                backoff.delay(failures - 1)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A/AAAA of `host`, each address with `port`; the TTL is the smallest of the records'.
async fn resolve_host(resolver: &TokioResolver, host: &str, port: u16) -> Result<Answer, Failure> {
    let lookup = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| Failure::from_net(&e, host))?;
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .filter(|r| r.data.ip_addr().is_some())
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0);
    let endpoints = lookup
        .iter()
        .map(|ip| Endpoint::new(SocketAddr::new(ip, port)))
        .collect();
    Ok(Answer {
        endpoints,
        ttl: Duration::from_secs(u64::from(ttl)),
    })
}

/// One SRV record as far as discovery cares.
#[derive(Debug, Clone)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: Name,
}

/// SRV of `name`, published by one rule: the lowest priority class with at least one
/// resolvable target, its SRV weights as endpoint weights (all-zero weights become equal
/// weights of 1, as RFC 2782 treats them). Every endpoint records its priority, so a
/// later failover feature can change the rule without changing the data.
async fn resolve_srv(resolver: &TokioResolver, name: &str) -> Result<Answer, Failure> {
    let lookup = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| Failure::from_net(&e, name))?;
    let mut ttl = u32::MAX;
    let mut records = Vec::new();
    for record in lookup.answers() {
        if let RData::SRV(srv) = &record.data {
            ttl = ttl.min(record.ttl);
            // A target of "." says the service is decidedly not available there.
            if !srv.target.is_root() {
                records.push(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.clone(),
                });
            }
        }
    }
    if records.is_empty() {
        return Err(Failure {
            reason: "no_records",
            detail: format!("{name}: no usable SRV records"),
        });
    }
    records.sort_by_key(|r| r.priority);

    let mut last_error = None;
    let mut start = 0;
    while start < records.len() {
        let priority = records[start].priority;
        let end = records[start..]
            .iter()
            .position(|r| r.priority != priority)
            .map_or(records.len(), |n| start + n);
        let class = &records[start..end];
        start = end;

        let all_zero = class.iter().all(|r| r.weight == 0);
        let answers = join_all(class.iter().map(|r| async move {
            let target = r.target.to_ascii();
            (r, resolve_host(resolver, &target, r.port).await)
        }))
        .await;
        let mut endpoints = Vec::new();
        let mut class_ttl = ttl;
        for (record, answer) in answers {
            match answer {
                Ok(answer) => {
                    class_ttl = class_ttl.min(answer.ttl.as_secs().try_into().unwrap_or(u32::MAX));
                    let weight = if all_zero {
                        1
                    } else {
                        u32::from(record.weight)
                    };
                    endpoints.extend(
                        answer
                            .endpoints
                            .into_iter()
                            .map(|e| e.with_weight(weight).with_priority(record.priority)),
                    );
                }
                Err(failure) => last_error = Some(failure),
            }
        }
        if !endpoints.is_empty() {
            return Ok(Answer {
                endpoints,
                ttl: Duration::from_secs(u64::from(class_ttl)),
            });
        }
    }
    let cause = last_error.map_or_else(String::new, |f| format!(" (last: {})", f.detail));
    Err(Failure {
        reason: "target_unresolved",
        detail: format!("{name}: no SRV target resolved to an address{cause}"),
    })
}
