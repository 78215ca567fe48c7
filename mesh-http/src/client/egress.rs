//! Egress passthrough: requests for hosts the mesh does not know, when
//! `MESH_EGRESS=allow`. Each `scheme://host:port` becomes an ad-hoc service found
//! through plain DNS, over plain TCP for `http` and web PKI TLS for `https`, with
//! the same pooling and balancing as mesh services.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use mesh_core::config::{AccessLog, ServiceConfig};
use mesh_core::discovery::{DiscoverySource, DnsSettings, HostPort};
use mesh_core::metric_names::{self, label};
use parking_lot::Mutex;

use super::service::ServiceClient;
use crate::body::{RequestBody, ResponseBody};
use crate::connect::{Connect, TcpConnector, WebPkiConnector};
use crate::error::Error;

/// Distinct external origins kept at once; beyond it the least recently added is
/// dropped (its connections close), so a caller reaching many hosts stays bounded.
const MAX_ORIGINS: usize = 256;

#[derive(Debug)]
pub(super) struct EgressClients {
    dns: DnsSettings,
    access_log: AccessLog,
    origins: Mutex<Origins>,
    web_pki: OnceLock<Arc<dyn Connect>>,
}

#[derive(Debug, Default)]
struct Origins {
    by_key: HashMap<(bool, String, u16), Arc<ServiceClient>>,
    order: std::collections::VecDeque<(bool, String, u16)>,
}

pub(super) fn count(host: &str, outcome: &'static str) {
    metrics::counter!(
        metric_names::EGRESS_REQUESTS.name,
        label::SERVER_ADDRESS => host.to_string(),
        label::OUTCOME => outcome,
    )
    .increment(1);
}

impl EgressClients {
    pub(super) fn new(dns: DnsSettings, access_log: AccessLog) -> Self {
        EgressClients {
            dns,
            access_log,
            origins: Mutex::default(),
            web_pki: OnceLock::new(),
        }
    }

    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, Error> {
        let uri = request.uri();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(other) => {
                return Err(Error::invalid_uri(format!(
                    "egress supports http and https, not {other}"
                )))
            }
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let client = self
            .origin(https, host.clone(), port)
            .map_err(Error::request)?;
        let result = client.send(request).await.map_err(Error::from_stack);
        count(&host, if result.is_ok() { "ok" } else { "error" });
        result
    }

    fn origin(
        &self,
        https: bool,
        host: String,
        port: u16,
    ) -> Result<Arc<ServiceClient>, crate::error::BoxError> {
        let key = (https, host, port);
        let mut origins = self.origins.lock();
        if let Some(client) = origins.by_key.get(&key) {
            return Ok(client.clone());
        }
        let connector: Arc<dyn Connect> = if https {
            self.web_pki
                .get_or_init(|| Arc::new(WebPkiConnector::with_native_roots()))
                .clone()
        } else {
            Arc::new(TcpConnector)
        };
        let target = HostPort {
            host: key.1.clone(),
            port,
        };
        let source = match key.1.parse::<std::net::IpAddr>() {
            Ok(_) => DiscoverySource::Static(vec![target]),
            Err(_) => DiscoverySource::Dns(target),
        };
        let config = ServiceConfig::new(key.1.clone(), source);
        let client = Arc::new(ServiceClient::spawn(
            &config,
            &self.dns,
            self.access_log,
            connector,
            None,
        )?);
        if origins.order.len() >= MAX_ORIGINS {
            if let Some(oldest) = origins.order.pop_front() {
                origins.by_key.remove(&oldest);
            }
        }
        origins.order.push_back(key.clone());
        origins.by_key.insert(key, client.clone());
        Ok(client)
    }
}
