//! What a user configures: where a service's endpoints come from, and how DNS is asked.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A `host:port` pair as a user writes it: `10.0.0.5:8080`, `orders.internal:80`, or an
/// IPv6 literal in brackets, `[::1]:80`.
///
/// `host` is kept without brackets; [`Display`](fmt::Display) puts them back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Hostname or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, never 0.
    pub port: u16,
}

impl HostPort {
    /// A `host:port` from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// The address when `host` is an IP literal; `None` for a hostname.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `host:port` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHostPortError {
    input: String,
    problem: &'static str,
}

impl fmt::Display for ParseHostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid address `{}`: {}; expected host:port, e.g. 10.0.0.5:8080 (IPv6 as [::1]:80)",
            self.input, self.problem
        )
    }
}

impl std::error::Error for ParseHostPortError {}

impl FromStr for HostPort {
    type Err = ParseHostPortError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |problem| ParseHostPortError {
            input: input.to_owned(),
            problem,
        };
        let s = input.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or(err("`[` without `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err("brackets hold something that is not an IPv6 address"));
            }
            let port = after.strip_prefix(':').ok_or(err("missing port"))?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(err("missing port"))?;
            if host.contains(':') {
                return Err(err("an IPv6 address needs brackets"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(err("host contains a space or `/`"));
        }
        if port.is_empty() {
            return Err(err("missing port"));
        }
        let port: u32 = port.parse().map_err(|_| err("port is not a number"))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(err("port must be between 1 and 65535"))?;
        Ok(HostPort::new(host, port))
    }
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// A fixed list. IP literals are used as given; hostnames are resolved once, at start.
    Static(Vec<HostPort>),
    /// A hostname whose A and AAAA records are re-resolved whenever their TTL runs out;
    /// every address gets the given port.
    Dns(HostPort),
    /// An SRV name (e.g. `_http._tcp.orders.internal`); each target is resolved to
    /// addresses. Only the lowest priority class that has a resolvable target is published
    /// (RFC 2782: clients use the lowest priority they can reach); SRV weights become
    /// endpoint weights.
    Srv(String),
    /// A JSON file, watched and re-read when it changes: either `["10.0.0.1:80", ...]` or
    /// `[{"addr": "10.0.0.1:80", "weight": 2, "zone": "a", "identity": "spiffe://td/x"}]`.
    File(PathBuf),
}

impl DiscoverySource {
    /// The source's kind as a metric label: `static`, `dns`, `srv` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoverySource::Static(_) => "static",
            DiscoverySource::Dns(_) => "dns",
            DiscoverySource::Srv(_) => "srv",
            DiscoverySource::File(_) => "file",
        }
    }
}

impl fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoverySource::Static(list) => {
                f.write_str("static ")?;
                for (i, hp) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{hp}")?;
                }
                Ok(())
            }
            DiscoverySource::Dns(hp) => write!(f, "dns {hp}"),
            DiscoverySource::Srv(name) => write!(f, "srv {name}"),
            DiscoverySource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Resolver settings shared by the DNS sources ([`DiscoverySource::Dns`] and
/// [`DiscoverySource::Srv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask over UDP and TCP; empty means the system's `resolv.conf`
    /// (and `/etc/hosts`).
    pub servers: Vec<SocketAddr>,
    /// Shortest wait between two resolutions, whatever the TTL says (default 5 s), so a
    /// TTL of 0 does not turn into a query loop. Also the first retry delay after a
    /// failed lookup.
    pub min_ttl: Duration,
    /// Longest wait between two resolutions (default 300 s), so a long TTL does not hide
    /// a change for hours. Also the cap of the retry backoff.
    pub max_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_ipv4_hostname_and_bracketed_ipv6() {
        let hp: HostPort = "10.0.0.5:8080".parse().unwrap();
        assert_eq!(hp, HostPort::new("10.0.0.5", 8080));
        assert_eq!(hp.socket_addr(), Some("10.0.0.5:8080".parse().unwrap()));

        let hp: HostPort = "orders.internal:80".parse().unwrap();
        assert_eq!(hp, HostPort::new("orders.internal", 80));
        assert_eq!(hp.socket_addr(), None);

        let hp: HostPort = "[::1]:80".parse().unwrap();
        assert_eq!(hp, HostPort::new("::1", 80));
        assert_eq!(hp.socket_addr(), Some("[::1]:80".parse().unwrap()));
        assert_eq!(hp.to_string(), "[::1]:80");
    }

    #[test]
    fn host_port_without_port_is_rejected_with_an_example() {
        for input in ["10.0.0.5", "10.0.0.5:", "[::1]", "orders"] {
            let err = input.parse::<HostPort>().unwrap_err().to_string();
            assert!(err.contains("missing port"), "{input}: {err}");
            assert!(
                err.contains("expected host:port, e.g. 10.0.0.5:8080"),
                "{err}"
            );
        }
    }

    #[test]
    fn host_port_out_of_range_port_is_rejected() {
        for input in ["a:70000", "a:0", "a:-1", "a:http"] {
            let err = input.parse::<HostPort>().unwrap_err().to_string();
            assert!(
                err.contains("port must be between 1 and 65535") || err.contains("not a number"),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn host_port_unbracketed_ipv6_and_empty_host_are_rejected() {
        let err = "::1:80".parse::<HostPort>().unwrap_err().to_string();
        assert!(err.contains("needs brackets"), "{err}");
        let err = ":80".parse::<HostPort>().unwrap_err().to_string();
        assert!(err.contains("missing host"), "{err}");
        let err = "[nothost]:80".parse::<HostPort>().unwrap_err().to_string();
        assert!(err.contains("not an IPv6"), "{err}");
    }

    #[test]
    fn source_kind_is_the_metric_label() {
        let hp = HostPort::new("a", 1);
        assert_eq!(DiscoverySource::Static(vec![hp.clone()]).kind(), "static");
        assert_eq!(DiscoverySource::Dns(hp).kind(), "dns");
        assert_eq!(DiscoverySource::Srv("_x._tcp.a".into()).kind(), "srv");
        assert_eq!(DiscoverySource::File("/x".into()).kind(), "file");
    }
}
