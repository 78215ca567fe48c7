//! A fixed list of `host:port`: IP literals as given, hostnames resolved once at start.

use std::net::ToSocketAddrs;

use super::error::Kind;
use super::{Endpoint, HostPort, Snapshot};

/// Resolves the list now. Hostnames go through the system resolver (getaddrinfo, so
/// `/etc/hosts` counts), which blocks this thread briefly; this runs once at start-up,
/// and a name that does not resolve is an error the user must fix.
pub(crate) fn resolve(list: &[HostPort]) -> Result<Snapshot, Kind> {
    if list.is_empty() {
        return Err(Kind::EmptyList);
    }
    let mut endpoints = Vec::with_capacity(list.len());
    for hp in list {
        if let Some(addr) = hp.socket_addr() {
            endpoints.push(Endpoint::new(addr));
            continue;
        }
        let addrs = (hp.host.as_str(), hp.port)
            .to_socket_addrs()
            .map_err(|e| Kind::Unresolvable(hp.host.clone(), e))?;
        let before = endpoints.len();
        endpoints.extend(addrs.map(Endpoint::new));
        if endpoints.len() == before {
            return Err(Kind::Unresolvable(
                hp.host.clone(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            ));
        }
    }
    Ok(Snapshot::new(endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ip_literals_are_used_as_given_sorted_and_deduplicated() {
        let list: Vec<HostPort> = ["10.0.0.2:80", "10.0.0.1:80", "[::1]:81", "10.0.0.2:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let snap = resolve(&list).unwrap();
        let addrs: Vec<String> = snap
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80", "[::1]:81"]);
        assert!(snap.endpoints().iter().all(|e| e.weight == 1));
    }

    #[test]
    fn static_localhost_is_resolved_at_start() {
        let snap = resolve(&["localhost:8080".parse().unwrap()]).unwrap();
        assert!(!snap.is_empty());
        assert!(snap
            .endpoints()
            .iter()
            .all(|e| e.addr.ip().is_loopback() && e.addr.port() == 8080));
    }

    #[test]
    fn static_unresolvable_host_and_empty_list_are_errors() {
        let err = resolve(&["no-such-host.invalid:80".parse().unwrap()]).unwrap_err();
        assert!(matches!(err, Kind::Unresolvable(ref h, _) if h == "no-such-host.invalid"));
        assert!(matches!(resolve(&[]).unwrap_err(), Kind::EmptyList));
    }
}
