//! One logical service: its discovery, its balancer, and the request path to an
//! endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response};
use mesh_core::balance::{Balancer, Picked};
use mesh_core::config::{Protocol, ServiceConfig};
use mesh_core::discovery::{Discovery, DnsSettings};
use tokio::time::Instant;

use crate::body::{Lease, RequestBody, ResponseBody};
use crate::connect::Connect;
use crate::error::{BoxError, Error};
use crate::pool::{give_back, Conn, EndpointPool, Http1Conn, PoolInner, PoolSettings};

/// Distinct endpoints tried when connections cannot be opened. Nothing was sent on
/// a failed connect, so moving to another endpoint is always safe.
const CONNECT_ATTEMPTS: usize = 3;
/// Times a request is moved off a pooled connection that closed before the request
/// was written to it.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

pub(crate) struct ServiceClient {
    config: ServiceConfig,
    balancer: Arc<Balancer<EndpointPool>>,
    discovery: Discovery,
    follow: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("service", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ServiceClient {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

impl ServiceClient {
    pub(crate) fn spawn(
        config: &ServiceConfig,
        dns: &DnsSettings,
        connector: Arc<dyn Connect>,
    ) -> Result<Self, BoxError> {
        let discovery = Discovery::spawn(&config.name, &config.discovery, dns)?;
        Ok(Self::with_discovery(config, discovery, connector))
    }

    pub(crate) fn with_discovery(
        config: &ServiceConfig,
        discovery: Discovery,
        connector: Arc<dyn Connect>,
    ) -> Self {
        let pool_settings = Arc::new(PoolSettings::new(config, connector));
        let balancer = Balancer::new(
            config.name.as_str(),
            config.balancer.clone(),
            move |endpoint, handle| {
                let reachable = handle.clone();
                let removed = handle;
                EndpointPool::new(
                    endpoint.addr,
                    pool_settings.clone(),
                    move |up| reachable.set_reachable(up),
                    move || removed.is_removed(),
                )
            },
        );
        let follow = balancer.follow(discovery.subscribe());
        ServiceClient {
            config: config.clone(),
            balancer,
            discovery,
            follow,
        }
    }

    pub(crate) async fn initialized(&self) {
        self.discovery.initialized().await;
    }

    pub(crate) async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, Error> {
        match self.config.timeout {
            Some(limit) => tokio::time::timeout(limit, self.send_to_endpoint(request))
                .await
                .map_err(|_| Error::timeout(limit))?,
            None => self.send_to_endpoint(request).await,
        }
    }

    async fn send_to_endpoint(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, Error> {
        let mut request = into_wire_form(request, self.config.protocol)?;
        let mut failed_connects: Vec<SocketAddr> = Vec::new();
        let mut stale = 0;
        loop {
            let picked = self
                .balancer
                .pick(&failed_connects)
                .await
                .map_err(|e| Error::no_endpoint(&self.config.name, e))?;
            let conn = match picked.endpoint().checkout().await {
                Ok(conn) => conn,
                Err(e) if e.is_connect() && failed_connects.len() + 1 < CONNECT_ATTEMPTS => {
                    failed_connects.push(picked.addr());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let started = Instant::now();
            let sent = match conn {
                Conn::Http1(mut conn) => match conn.sender.try_send_request(request).await {
                    Ok(response) => {
                        picked.record_rtt(started.elapsed());
                        let lease = Http1Lease {
                            conn: Some(conn),
                            pool: picked.endpoint().downgrade(),
                            _picked: picked,
                        };
                        return Ok(response
                            .map(|body| ResponseBody::incoming(body, Some(Box::new(lease)))));
                    }
                    Err(e) => e,
                },
                Conn::Http2(mut sender) => match sender.try_send_request(request).await {
                    Ok(response) => {
                        picked.record_rtt(started.elapsed());
                        let lease = Http2Lease { _picked: picked };
                        return Ok(response
                            .map(|body| ResponseBody::incoming(body, Some(Box::new(lease)))));
                    }
                    Err(e) => {
                        picked.endpoint().forget_closed_http2();
                        e
                    }
                },
            };
            let mut sent = sent;
            // The connection closed before our request was written to it: the
            // request comes back untouched and may go out on another connection.
            match sent.take_message() {
                Some(unsent) if stale < STALE_CONNECTION_ATTEMPTS => {
                    stale += 1;
                    request = unsent;
                }
                _ => return Err(Error::request(sent.into_error())),
            }
        }
    }
}

/// HTTP/1.1 sends the path in the request line and the logical name in `Host`;
/// HTTP/2 keeps the absolute URI, whose authority becomes `:authority`.
fn into_wire_form(
    mut request: Request<RequestBody>,
    protocol: Protocol,
) -> Result<Request<RequestBody>, Error> {
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| Error::invalid_uri("the URI has no authority"))?
        .clone();
    match protocol {
        Protocol::Http1 => {
            if !request.headers().contains_key(HOST) {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|e| Error::invalid_uri(e.to_string()))?;
                request.headers_mut().insert(HOST, host);
            }
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        Protocol::Http2 => {
            if request.uri().scheme().is_none() {
                return Err(Error::invalid_uri("the URI has no scheme"));
            }
        }
    }
    Ok(request)
}

/// Keeps the endpoint's in-flight count and the HTTP/1.1 connection until the
/// response body has been read; a fully read response frees the connection for
/// the next request.
struct Http1Lease {
    conn: Option<Http1Conn>,
    pool: Weak<PoolInner>,
    _picked: Picked<EndpointPool>,
}

impl Lease for Http1Lease {
    fn release(mut self: Box<Self>, complete: bool) {
        if let (true, Some(conn)) = (complete, self.conn.take()) {
            give_back(&self.pool, conn);
        }
    }
}

struct Http2Lease {
    _picked: Picked<EndpointPool>,
}

impl Lease for Http2Lease {
    fn release(self: Box<Self>, _complete: bool) {}
}
